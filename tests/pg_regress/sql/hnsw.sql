-- hnsw index: planner use, small exact cases, inserts, options and errors
CREATE TABLE items (id int PRIMARY KEY, v vector(3));
INSERT INTO items VALUES (1, '[1,1,1]'), (2, '[2,2,2]'), (3, '[1,1,2]'), (4, NULL), (5, '[0,0,0]');
CREATE INDEX items_l2 ON items USING hnsw (v vector_l2_ops);

-- used for ORDER BY distance LIMIT, not for other queries
SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT id FROM items ORDER BY v <-> '[3,3,3]' LIMIT 5;
RESET enable_seqscan;
EXPLAIN (COSTS OFF) SELECT id FROM items WHERE v = '[1,1,1]';
EXPLAIN (COSTS OFF) SELECT id FROM items ORDER BY v <=> '[3,3,3]' LIMIT 5;

SET enable_seqscan = off;
-- NULL rows are not indexed; a NULL query (as a parameter) matches nothing
SELECT id FROM items ORDER BY v <-> '[3,3,3]' LIMIT 5;
PREPARE nearest(vector) AS SELECT id FROM items ORDER BY v <-> $1 LIMIT 5;
SET plan_cache_mode = force_generic_plan;
EXPLAIN (COSTS OFF) EXECUTE nearest(NULL);
EXECUTE nearest(NULL);
RESET plan_cache_mode;
-- inserts after the build are found
INSERT INTO items VALUES (6, '[3,3,3]'), (7, '[3,3,3]'), (8, '[2.9,3,3]');
SELECT id FROM items ORDER BY v <-> '[3,3,3]', id LIMIT 3;

-- every operator class
CREATE INDEX items_ip ON items USING hnsw (v vector_ip_ops);
-- (ties in distance are ordered by id outside the index scan)
SELECT id FROM (SELECT id, v <#> '[1,1,1]' AS d FROM items ORDER BY v <#> '[1,1,1]' LIMIT 3) s ORDER BY d, id;
DROP INDEX items_ip;
-- zero vectors have no direction: they stay out of a cosine index, and a zero query
-- (whose cosine distance to anything is NaN) finds nothing through it
CREATE INDEX items_cosine ON items USING hnsw (v vector_cosine_ops);
EXPLAIN (COSTS OFF) SELECT id, v <=> '[1,1,1]' AS d FROM items ORDER BY v <=> '[1,1,1]' LIMIT 10;
SELECT id FROM (SELECT id, v <=> '[1,1,1]' AS d FROM items ORDER BY v <=> '[1,1,1]' LIMIT 10) s ORDER BY d, id;
SELECT id FROM items ORDER BY v <=> '[0,0,0]' LIMIT 10;
DROP INDEX items_cosine;
CREATE INDEX items_l1 ON items USING hnsw (v vector_l1_ops);
SELECT id FROM items ORDER BY v <+> '[1,1,1]' LIMIT 3;
DROP INDEX items_l1;
SELECT elements, deleted, heap_tids, unreachable, problems FROM hnsw_verify('items_l2');
RESET enable_seqscan;

-- halfvec
CREATE TABLE half_items (id int, v halfvec(3));
INSERT INTO half_items SELECT i, ARRAY[i, i * 2, 1]::halfvec(3) FROM generate_series(1, 100) i;
CREATE INDEX ON half_items USING hnsw (v halfvec_l2_ops);
SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT id FROM half_items ORDER BY v <-> '[10,20,1]' LIMIT 3;
SELECT id FROM (SELECT id, v <-> '[10,20,1]' AS d FROM half_items ORDER BY v <-> '[10,20,1]' LIMIT 3) s ORDER BY d, id;
RESET enable_seqscan;

-- beyond pgvector's 2,000-dimension limit: vectors larger than a page live in chunks
CREATE TABLE wide (id int, v vector(16000));
INSERT INTO wide SELECT i, array_fill(i::real, ARRAY[16000])::vector(16000) FROM generate_series(1, 20) i;
CREATE INDEX wide_idx ON wide USING hnsw (v vector_l2_ops);
INSERT INTO wide SELECT 100, array_fill(7.25::real, ARRAY[16000])::vector(16000);
SET enable_seqscan = off;
SELECT id FROM wide ORDER BY v <-> array_fill(7.3::real, ARRAY[16000])::vector(16000) LIMIT 3;
RESET enable_seqscan;
SELECT elements, heap_tids, unreachable, problems FROM hnsw_verify('wide_idx');
CREATE TABLE wide_half (id int, v halfvec(4000));
INSERT INTO wide_half SELECT i, array_fill(i::real, ARRAY[4000])::halfvec(4000) FROM generate_series(1, 20) i;
CREATE INDEX ON wide_half USING hnsw (v halfvec_cosine_ops);

-- unlogged tables, REINDEX, CREATE INDEX CONCURRENTLY, an empty table
CREATE UNLOGGED TABLE scratch (id int, v vector(2));
CREATE INDEX scratch_idx ON scratch USING hnsw (v vector_l2_ops);
INSERT INTO scratch SELECT i, ARRAY[i, 0] FROM generate_series(1, 50) i;
SET enable_seqscan = off;
SELECT id FROM scratch ORDER BY v <-> '[10.2,0]' LIMIT 2;
REINDEX INDEX scratch_idx;
SELECT id FROM scratch ORDER BY v <-> '[10.2,0]' LIMIT 2;
DROP INDEX scratch_idx;
CREATE INDEX CONCURRENTLY scratch_idx ON scratch USING hnsw (v vector_l2_ops);
SELECT id FROM scratch ORDER BY v <-> '[40.9,0]' LIMIT 2;
RESET enable_seqscan;

-- options and errors
CREATE INDEX ON items USING hnsw (v vector_l2_ops) WITH (m = 1);
CREATE INDEX ON items USING hnsw (v vector_l2_ops) WITH (m = 101);
CREATE INDEX ON items USING hnsw (v vector_l2_ops) WITH (ef_construction = 1001);
CREATE INDEX ON items USING hnsw (v vector_l2_ops) WITH (m = 32, ef_construction = 40);
CREATE INDEX ON items USING hnsw (v vector_l2_ops) WITH (nonsense = 1);
CREATE TABLE no_dims (v vector);
CREATE INDEX ON no_dims USING hnsw (v vector_l2_ops);
CREATE INDEX ON items USING hnsw (id);
SET hnsw.ef_search = 0;
SET hnsw.ef_search = 1001;
SET enable_seqscan = off;
SELECT id FROM items ORDER BY v <-> '[1,2]' LIMIT 1;
RESET enable_seqscan;
SELECT * FROM hnsw_verify('items_pkey');

DROP TABLE items, half_items, wide, wide_half, scratch, no_dims;
