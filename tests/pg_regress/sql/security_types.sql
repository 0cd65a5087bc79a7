-- No statement an unprivileged role can run crashes the server through vector or halfvec:
-- every malformed aggregate state and every out-of-bounds constructor ends in an ERROR,
-- and the session keeps working after each one.

CREATE ROLE security_types_user;
SET ROLE security_types_user;

-- once crashed the backend (a 32769-dimension vector overflowed the int16 header)
SELECT vector_avg(array_fill(1::float8, ARRAY[32770]));
SELECT halfvec_avg(array_fill(1::float8, ARRAY[32770]));
SELECT 'session still works' AS after_crash_case;

-- avg final functions: state is {count, sum_1, ..., sum_dim}
SELECT vector_avg('{3,3,6,9}'), halfvec_avg('{3,3,6,9}');
SELECT vector_avg('{0}') IS NULL AS no_rows, halfvec_avg('{0}') IS NULL AS no_rows_half;
SELECT vector_avg('{2}');
SELECT halfvec_avg('{2}');
SELECT vector_avg('{{3,3,6,9}}');
SELECT halfvec_avg('{{3,3,6,9}}');
SELECT vector_avg('{3,NULL,6,9}');
SELECT halfvec_avg('{3,NULL,6,9}');
SELECT vector_avg('{}');
SELECT halfvec_avg('{}');
SELECT vector_avg('{-1,2}');
SELECT halfvec_avg('{NaN,2}');
SELECT vector_avg('{Infinity,2}');
SELECT vector_avg(array_fill(1::float8, ARRAY[16002]));
SELECT halfvec_avg(array_fill(1::float8, ARRAY[16002]));
SELECT vector_dims(vector_avg(array_fill(1::float8, ARRAY[16001]))) AS most_dims;

-- transition functions
SELECT vector_accum('{0}', '[1,2]'), halfvec_accum('{0}', '[1,2]');
SELECT vector_accum('{0,0,0}', '[1,2]'), halfvec_accum('{1,1,1}', '[1,2]');
SELECT vector_accum('{{0}}', '[1,2]');
SELECT halfvec_accum('{{0}}', '[1,2]');
SELECT vector_accum('{NULL}', '[1,2]');
SELECT halfvec_accum('{NULL}', '[1,2]');
SELECT vector_accum('{}', '[1,2]');
SELECT halfvec_accum('{}', '[1,2]');
SELECT vector_accum('{0,0}', '[1,2]');
SELECT halfvec_accum('{0,0}', '[1,2]');
SELECT vector_accum('{-3,0,0}', '[1,2]');
SELECT halfvec_accum('{NaN,0,0}', '[1,2]');
SELECT vector_accum(array_fill(0::float8, ARRAY[40000]), '[1,2]');
SELECT halfvec_accum(array_fill(0::float8, ARRAY[40000]), '[1,2]');

-- combine function (parallel aggregation; shared by vector and halfvec)
SELECT vector_combine('{1,2}', '{3,4}');
SELECT vector_combine('{0}', '{0}');
SELECT vector_combine('{0}', '{2,4}'), vector_combine('{2,4}', '{0}');
SELECT vector_combine('{1,2}', '{1,2,3}');
SELECT vector_combine('{{1,2}}', '{1,2}');
SELECT vector_combine('{1,2}', '{{1,2}}');
SELECT vector_combine('{NULL,2}', '{1,2}');
SELECT vector_combine('{1,2}', '{1,NULL}');
SELECT vector_combine('{}', '{0}');
SELECT vector_combine('{0}', '{}');
SELECT vector_combine('{-1,2}', '{1,2}');
SELECT vector_combine('{1,2}', '{-Infinity,2}');
SELECT vector_combine('{0}', array_fill(1::float8, ARRAY[32770]));
SELECT vector_combine(array_fill(1::float8, ARRAY[32770]), '{0}');
SELECT vector_combine(array_fill(1::float8, ARRAY[16002]), array_fill(1::float8, ARRAY[16002]));

-- text input
SELECT '[]'::vector;
SELECT '[ ]'::halfvec;
SELECT ('[' || array_to_string(array_fill(0, ARRAY[16001]), ',') || ']')::vector;
SELECT ('[' || array_to_string(array_fill(0, ARRAY[16001]), ',') || ']')::halfvec;
SELECT ('[' || array_to_string(array_fill(0, ARRAY[40000]), ',') || ']')::vector;
SELECT vector_dims(('[' || array_to_string(array_fill(0, ARRAY[16000]), ',') || ']')::vector) AS most_dims;

-- casts from arrays
SELECT '{}'::real[]::vector;
SELECT '{}'::int[]::halfvec;
SELECT array_fill(1, ARRAY[16001])::vector;
SELECT array_fill(1::float8, ARRAY[40000])::halfvec;
SELECT array_fill(1::numeric, ARRAY[16001])::vector;
SELECT '{{1,2},{3,4}}'::real[]::vector;
SELECT '{1,NULL}'::real[]::halfvec;

-- typmods and typmod casts
SELECT '[1,2]'::vector(0);
SELECT '[1,2]'::halfvec(16001);
SELECT '[1,2]'::vector(3);
SELECT '[1,2]'::halfvec(1);
SELECT vector('[1,2]', -7, true);
SELECT halfvec('[1,2]', 40000, true);
SELECT array_to_vector('{1,2}'::int[], 3, true);
SELECT vector_to_halfvec('[1,2]', 3, true);
SELECT halfvec_to_vector('[1,2]', 3, true);

-- concatenation, subvector, arithmetic
SELECT array_fill(0, ARRAY[16000])::vector || '[1]';
SELECT array_fill(0, ARRAY[16000])::halfvec || '[1]';
SELECT array_fill(0, ARRAY[8000])::vector || array_fill(0, ARRAY[8001])::vector;
SELECT vector_dims(array_fill(0, ARRAY[8000])::vector || array_fill(0, ARRAY[8000])::vector) AS most_dims;
SELECT subvector('[1,2,3]'::vector, 1, 0);
SELECT subvector('[1,2,3]'::halfvec, 4, 1);
SELECT subvector('[1,2,3]'::vector, -2147483648, 2147483647);
SELECT subvector('[1,2,3]'::halfvec, 2147483647, 2147483647);
SELECT '[1,2]'::vector + '[1,2,3]';
SELECT '[1,2]'::halfvec * '[1]';
SELECT '[3e38]'::vector + '[3e38]';
SELECT '[60000]'::halfvec + '[60000]';

-- functions of a valid vector stay within bounds
SELECT l2_normalize(array_fill(1, ARRAY[16000])::vector) = l2_normalize(array_fill(2, ARRAY[16000])::vector) AS normalized;
SELECT length(binary_quantize(array_fill(1, ARRAY[16000])::halfvec)) AS quantized_bits;

-- an aggregate over a table whose rows disagree
CREATE TEMP TABLE security_types_rows (v vector);
INSERT INTO security_types_rows VALUES ('[1,2]'), ('[1,2,3]');
SELECT avg(v) FROM security_types_rows;
SELECT avg(v::halfvec) FROM security_types_rows;
DROP TABLE security_types_rows;

SELECT avg(v), sum(v) FROM (VALUES ('[1,2]'::vector), ('[3,4]')) t(v);
RESET ROLE;
DROP ROLE security_types_user;
