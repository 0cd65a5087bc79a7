-- avg and sum over vector and halfvec

SELECT avg(v), sum(v) FROM (VALUES ('[1,2,3]'::vector), ('[3,5,7]'), (NULL)) t(v);
SELECT avg(v), sum(v) FROM (VALUES ('[1,2,3]'::halfvec), ('[3,5,7]'), (NULL)) t(v);
SELECT avg(v), sum(v) FROM (SELECT '[1]'::vector AS v WHERE false) t;
SELECT avg(v) IS NULL AS empty_halfvec_avg FROM (SELECT '[1]'::halfvec AS v WHERE false) t;

-- grouped, and checked against the element-wise mean computed on plain arrays
CREATE TABLE points AS
  SELECT i % 3 AS grp, ARRAY[i, i * 2, -i]::vector(3) AS v FROM generate_series(1, 3000) i;
SELECT grp, avg(v), sum(v) FROM points GROUP BY grp ORDER BY grp;
SELECT bool_and(mean = expected) AS matches_scalar_mean FROM (
  SELECT avg(v)::real[] AS mean,
         ARRAY[avg((v::real[])[1]::float8), avg((v::real[])[2]::float8), avg((v::real[])[3]::float8)]::real[] AS expected
  FROM points GROUP BY grp) s;

-- parallel aggregation combines partial states
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
ALTER TABLE points SET (parallel_workers = 2);
EXPLAIN (COSTS OFF) SELECT avg(v) FROM points;
SELECT avg(v), sum(v) FROM points;
RESET ALL;
DROP TABLE points;
