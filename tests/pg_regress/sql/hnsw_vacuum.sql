-- VACUUM after heavy deletes: dead rows leave the graph, the graph is repaired, and
-- recall against exact search holds.
CREATE TABLE items (id int PRIMARY KEY, v vector(16));
INSERT INTO items SELECT i, ARRAY(SELECT (sin(i * 12.9898 + d * 78.233) * 43758.5453 - floor(sin(i * 12.9898 + d * 78.233) * 43758.5453) - 0.5) FROM generate_series(1, 16) d)::vector(16)
FROM generate_series(1, 10000) i;
CREATE INDEX items_idx ON items USING hnsw (v vector_l2_ops);
DELETE FROM items WHERE id % 2 = 0;
VACUUM items;
SELECT elements, deleted, heap_tids, unreachable, problems FROM hnsw_verify('items_idx');

-- recall@10 at ef_search 100 over 100 queries
CREATE TEMP TABLE queries AS
  SELECT q, ARRAY(SELECT cos(q * 3.1 + d * 1.7) FROM generate_series(1, 16) d)::vector(16) AS v FROM generate_series(1, 100) q;
SET enable_indexscan = off;
CREATE TEMP TABLE exact AS
  SELECT q, ARRAY(SELECT id FROM items ORDER BY items.v <-> queries.v LIMIT 10) AS ids FROM queries;
RESET enable_indexscan;
SET enable_seqscan = off;
SET hnsw.ef_search = 100;
CREATE TEMP TABLE approximate AS
  SELECT q, ARRAY(SELECT id FROM items ORDER BY items.v <-> queries.v LIMIT 10) AS ids FROM queries;
SELECT CASE WHEN recall >= 0.99 THEN 'recall ok' ELSE 'recall ' || recall END AS recall_after_vacuum
FROM (SELECT avg(cardinality(ARRAY(SELECT unnest(a.ids) INTERSECT SELECT unnest(e.ids))))::numeric / 10 AS recall
      FROM exact e JOIN approximate a USING (q)) s;

-- inserts after the vacuum still link into the repaired graph
INSERT INTO items SELECT i, ARRAY(SELECT (sin(i * 12.9898 + d * 78.233) * 43758.5453 - floor(sin(i * 12.9898 + d * 78.233) * 43758.5453) - 0.5) FROM generate_series(1, 16) d)::vector(16)
FROM generate_series(20001, 21000) i;
SELECT elements, deleted, heap_tids, unreachable, problems FROM hnsw_verify('items_idx');

-- everything deleted: the index empties out cleanly
DELETE FROM items;
VACUUM items;
SELECT elements = deleted AS all_deleted, heap_tids, unreachable, problems FROM hnsw_verify('items_idx');
SELECT count(*) FROM (SELECT id FROM items ORDER BY v <-> (SELECT v FROM queries LIMIT 1) LIMIT 5) s;
INSERT INTO items VALUES (1, (SELECT v FROM queries WHERE q = 1));
SELECT id FROM items ORDER BY v <-> (SELECT v FROM queries WHERE q = 1) LIMIT 5;
RESET ALL;
DROP TABLE items;
