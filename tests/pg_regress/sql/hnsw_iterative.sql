-- iterative scans: filtered queries get all their rows once hnsw.iterative_scan is on
CREATE TABLE docs (id int PRIMARY KEY, category int, v vector(4));
INSERT INTO docs SELECT i, i % 50, ARRAY[sin(i * 0.13), cos(i * 0.71), sin(i * 1.7 + 1), cos(i * 0.037)]::vector
  FROM generate_series(1, 5000) i;
CREATE INDEX ON docs USING hnsw (v vector_l2_ops) WITH (m = 8, ef_construction = 40);
ANALYZE docs;
SET enable_seqscan = off;
SET hnsw.ef_search = 20;
SHOW hnsw.iterative_scan;
SHOW hnsw.max_scan_tuples;
-- exact answers, for comparison
CREATE TEMP TABLE exact AS
  SELECT id, row_number() OVER (ORDER BY v <-> '[0.5,0.5,0.5,0.5]', id) AS rank FROM docs WHERE category = 3
  ORDER BY v <-> '[0.5,0.5,0.5,0.5]', id LIMIT 10;
CREATE VIEW filtered AS
  SELECT id, v <-> '[0.5,0.5,0.5,0.5]' AS d FROM docs WHERE category = 3 ORDER BY v <-> '[0.5,0.5,0.5,0.5]' LIMIT 10;
EXPLAIN (COSTS OFF) SELECT * FROM filtered;
-- off: one batch of ef_search elements, of which about 1 in 50 passes the filter
SELECT count(*) < 10 AS too_few FROM filtered;
SET hnsw.iterative_scan = relaxed_order;
SELECT count(*) AS found, count(*) FILTER (WHERE id IN (SELECT id FROM exact)) AS exact_matches FROM filtered;
SET hnsw.iterative_scan = strict_order;
SELECT count(*) AS found, count(*) FILTER (WHERE id IN (SELECT id FROM exact)) AS exact_matches FROM filtered;
-- strict order: distances never decrease
SELECT bool_and(d >= prev) AS ordered FROM (SELECT d, lag(d, 1, 0) OVER () AS prev FROM filtered) s;
-- a filter nothing passes ends at max_scan_tuples, or when the graph is exhausted
SELECT count(*) FROM (SELECT id FROM docs WHERE category = 99 ORDER BY v <-> '[0,0,0,0]' LIMIT 10) s;
SET hnsw.max_scan_tuples = 100;
SELECT count(*) < 10 AS stopped_early FROM filtered;
RESET hnsw.max_scan_tuples;
-- a filter that keeps every row returns the same rows as without iterative scans
SET hnsw.iterative_scan = relaxed_order;
CREATE TEMP TABLE relaxed AS SELECT id FROM docs ORDER BY v <-> '[0.1,0.2,0.3,0.4]' LIMIT 15;
RESET hnsw.iterative_scan;
SET hnsw.ef_search = 15;
SELECT count(*) AS same FROM (SELECT id FROM docs ORDER BY v <-> '[0.1,0.2,0.3,0.4]' LIMIT 15) s WHERE id IN (SELECT id FROM relaxed);
-- bad settings
SET hnsw.iterative_scan = sideways;
SET hnsw.max_scan_tuples = 0;
DROP TABLE docs CASCADE;
