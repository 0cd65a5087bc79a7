-- every bad input gets a pgvector-style ERROR with its SQLSTATE, never a crash

CREATE FUNCTION pg_temp.error_of(statement text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  detail text;
BEGIN
  EXECUTE statement;
  RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
  RETURN SQLSTATE || ': ' || SQLERRM || coalesce(' / ' || nullif(detail, ''), '');
END $$;

-- malformed text
SELECT pg_temp.error_of(s) FROM (VALUES
  ($$SELECT '1,2'::vector$$), ($$SELECT '[1,2'::vector$$), ($$SELECT '[1,,2]'::vector$$),
  ($$SELECT '[1 2]'::vector$$), ($$SELECT '[a]'::vector$$), ($$SELECT '[1]x'::vector$$),
  ($$SELECT '[1,]'::vector$$), ($$SELECT ''::vector$$), ($$SELECT '[1,2'::halfvec$$),
  ($$SELECT '[1]]'::halfvec$$)) AS c(s);

-- empty vector, NaN, infinity, out of range
SELECT pg_temp.error_of(s) FROM (VALUES
  ($$SELECT '[]'::vector$$), ($$SELECT '[ ]'::halfvec$$),
  ($$SELECT '[NaN]'::vector$$), ($$SELECT '[1,nan]'::halfvec$$),
  ($$SELECT '[Infinity]'::vector$$), ($$SELECT '[-inf]'::halfvec$$),
  ($$SELECT '[1e39]'::vector$$), ($$SELECT '[1e39]'::halfvec$$), ($$SELECT '[65520]'::halfvec$$),
  ($$SELECT ARRAY['NaN']::real[]::vector$$), ($$SELECT ARRAY['Infinity']::float8[]::vector$$),
  ($$SELECT ARRAY[1e300]::float8[]::vector$$), ($$SELECT ARRAY[1e300]::numeric[]::vector$$),
  ($$SELECT ARRAY[70000]::halfvec$$), ($$SELECT '[70000]'::vector::halfvec$$)) AS c(s);

-- dimensions: too many, typmod limits and mismatches
SELECT pg_temp.error_of(s) FROM (VALUES
  ($$SELECT array_fill(1, ARRAY[16001])::vector$$), ($$SELECT array_fill(1, ARRAY[16001])::halfvec$$),
  ($$SELECT ('[' || repeat('1,', 16000) || '1]')::vector$$),
  ($$SELECT '[1]'::vector(16001)$$), ($$SELECT '[1]'::halfvec(0)$$), ($$SELECT '[1]'::vector(2, 3)$$),
  ($$SELECT '[1,2]'::vector(3)$$), ($$SELECT '[1,2]'::halfvec(3)$$),
  ($$SELECT ARRAY[1,2]::vector(3)$$), ($$SELECT '[1,2]'::vector::halfvec(3)$$),
  ($$SELECT array_fill(1, ARRAY[8000])::vector || array_fill(1, ARRAY[8001])::vector$$),
  ($$CREATE TEMP TABLE x (v vector(3)); INSERT INTO x VALUES ('[1,2]')$$),
  ($$SELECT subvector('[1,2,3]'::vector, 1, 0)$$), ($$SELECT subvector('[1,2,3]'::vector, 4, 1)$$)) AS c(s);

-- operands of different dimensions
SELECT pg_temp.error_of(s) FROM (VALUES
  ($$SELECT '[1,2]'::vector <-> '[1,2,3]'$$), ($$SELECT '[1,2]'::vector <#> '[1,2,3]'$$),
  ($$SELECT '[1,2]'::vector <=> '[1,2,3]'$$), ($$SELECT '[1,2]'::vector <+> '[1,2,3]'$$),
  ($$SELECT '[1,2]'::vector + '[1,2,3]'$$), ($$SELECT '[1,2]'::halfvec * '[1,2,3]'$$),
  ($$SELECT '[1,2]'::halfvec <-> '[1]'$$),
  ($$SELECT avg(v) FROM (VALUES ('[1,2]'::vector), ('[1,2,3]')) t(v)$$)) AS c(s);

-- arithmetic overflow and underflow
SELECT pg_temp.error_of(s) FROM (VALUES
  ($$SELECT '[3e38]'::vector + '[3e38]'$$), ($$SELECT '[1e-30]'::vector * '[1e-30]'$$),
  ($$SELECT '[60000]'::halfvec + '[60000]'$$), ($$SELECT '[0.0001]'::halfvec * '[0.0001]'$$),
  ($$SELECT sum(v) FROM (VALUES ('[3e38]'::vector), ('[3e38]')) t(v)$$),
  ($$SELECT sum(v) FROM (VALUES ('[60000]'::halfvec), ('[60000]')) t(v)$$)) AS c(s);

-- arrays that are not vectors
SELECT pg_temp.error_of(s) FROM (VALUES
  ($$SELECT ARRAY[[1,2],[3,4]]::vector$$), ($$SELECT ARRAY[1,NULL]::vector$$),
  ($$SELECT ARRAY[1,NULL]::halfvec$$), ($$SELECT '{}'::real[]::vector$$)) AS c(s);

-- the session survives all of the above
SELECT '[1,2,3]'::vector <-> '[1,2,4]' AS still_working;
