-- HNSW builds and hnsw_verify() as ordinary roles (issue 17, items 3 and 9): a wildly
-- wrong row estimate does not size the build, cancel stops a build, and verifying an index
-- needs the right to read its table.
SET client_min_messages = warning;
CREATE ROLE security_hnsw_owner;
CREATE ROLE security_hnsw_other;
CREATE SCHEMA security_hnsw;
GRANT USAGE, CREATE ON SCHEMA security_hnsw TO security_hnsw_owner;
GRANT USAGE ON SCHEMA security_hnsw TO security_hnsw_other;
RESET client_min_messages;
SET ROLE security_hnsw_owner;
CREATE TABLE security_hnsw.items (id int PRIMARY KEY, v vector(16));
INSERT INTO security_hnsw.items
  SELECT i, ARRAY(SELECT sin(i * 0.37 + d * 1.3) FROM generate_series(1, 16) d)::vector FROM generate_series(1, 30000) i;
RESET ROLE;
-- The planner's estimate says a billion rows (a build that trusted it would reserve ~100 GB).
UPDATE pg_class SET reltuples = 1e9 WHERE oid = 'security_hnsw.items'::regclass;
SET ROLE security_hnsw_owner;
CREATE INDEX items_v ON security_hnsw.items USING hnsw (v vector_l2_ops);
SELECT elements, deleted, unreachable, problems FROM hnsw_verify('security_hnsw.items_v');
-- statement_timeout stops a build
DROP INDEX security_hnsw.items_v;
SET statement_timeout = '100ms';
CREATE INDEX items_v ON security_hnsw.items USING hnsw (v vector_l2_ops) WITH (ef_construction = 200);
RESET statement_timeout;
SELECT count(*) AS hnsw_indexes FROM pg_indexes WHERE schemaname = 'security_hnsw' AND indexname = 'items_v';
CREATE INDEX items_v ON security_hnsw.items USING hnsw (v vector_l2_ops);
-- another role may not look into the index of a table it cannot read
SET ROLE security_hnsw_other;
SELECT * FROM hnsw_verify('security_hnsw.items_v');
RESET ROLE;
GRANT SELECT ON security_hnsw.items TO security_hnsw_other;
SET ROLE security_hnsw_other;
SELECT elements, unreachable, problems FROM hnsw_verify('security_hnsw.items_v');
-- the index still answers like exact search
SET enable_seqscan = off;
CREATE TEMP TABLE by_index AS
  SELECT array_agg(id) AS ids FROM (SELECT id FROM security_hnsw.items ORDER BY v <-> (SELECT v FROM security_hnsw.items WHERE id = 7) LIMIT 5) s;
RESET enable_seqscan;
SET enable_indexscan = off;
SELECT ids[1] AS nearest, ids = (SELECT array_agg(id) FROM (SELECT id FROM security_hnsw.items
  ORDER BY v <-> (SELECT v FROM security_hnsw.items WHERE id = 7) LIMIT 5) s) AS same_as_exact FROM by_index;
RESET enable_indexscan;
DROP TABLE by_index;
RESET ROLE;
DROP TABLE security_hnsw.items;
DROP SCHEMA security_hnsw;
DROP ROLE security_hnsw_owner, security_hnsw_other;
