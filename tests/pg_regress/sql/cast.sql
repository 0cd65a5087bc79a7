-- casts between arrays, vector and halfvec

SELECT ARRAY[1,2,3]::vector, ARRAY[1.5,2.5]::real[]::vector, ARRAY[1.5,2.5]::double precision[]::vector, ARRAY[1.5,2.5]::numeric[]::vector;
SELECT ARRAY[1,2,3]::halfvec, ARRAY[1.5,2.5]::real[]::halfvec, ARRAY[1.5,2.5]::double precision[]::halfvec, ARRAY[1.5,2.5]::numeric[]::halfvec;
SELECT '[1,2,3]'::vector::real[], '[1,2,3]'::halfvec::real[];
SELECT '[1.5,2.5]'::vector::halfvec, '[1.5,2.5]'::halfvec::vector;
SELECT '[0.1]'::vector::halfvec::vector;
SELECT ARRAY[1,2,3]::vector(3), '[1,2]'::halfvec::vector(2), '[1,2]'::vector::halfvec(2);

-- assignment casts into typed columns
CREATE TABLE t (v vector(2), h halfvec(2), r real[]);
INSERT INTO t (v, h) VALUES (ARRAY[1,2], ARRAY[3,4]);
INSERT INTO t (v, h) VALUES ('[5,6]'::halfvec, '[7,8]'::vector);
UPDATE t SET r = v;
SELECT * FROM t ORDER BY v;
DROP TABLE t;

-- element text output matches float4 output for many values
SELECT setseed(0.42);
SELECT count(*) AS mismatches
FROM (SELECT (random() * 10 ^ (random() * 60 - 30) * sign(random() - 0.5))::real AS x FROM generate_series(1, 20000)) s
WHERE ('[' || x::text || ']')::vector::text <> '[' || x::text || ']';
