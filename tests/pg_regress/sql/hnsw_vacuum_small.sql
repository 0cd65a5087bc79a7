-- VACUUM of graphs with a small m after half their rows are deleted: every live
-- element stays reachable from the entry point (hnsw_verify's unreachable), and a
-- search as wide as the graph returns exactly what exact search returns. At m = 2 the
-- repair alone used to leave 99 of 101 live elements unreachable, and the build
-- itself stranded 40% of these 128-d elements at m = 2 (4% at m = 4).
CREATE FUNCTION small_point(i int) RETURNS vector LANGUAGE sql IMMUTABLE AS $$
  SELECT ARRAY(SELECT sin(i * 12.9898 + d * 78.233) * 43758.5453 - floor(sin(i * 12.9898 + d * 78.233) * 43758.5453) - 0.5
               FROM generate_series(1, 128) d)::vector(128) $$;

-- Rows whose index scan, wide enough to visit every reachable element, gives the
-- exact nearest 10 for each of 20 queries; and recall@10 at the default ef_search.
CREATE FUNCTION small_exact_matches(t regclass) RETURNS TABLE (exact_queries int, recall_at_40 numeric)
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE q int; exact int[]; wide int[]; narrow int[]; hits int := 0;
BEGIN
  exact_queries := 0;
  FOR q IN 1..20 LOOP
    EXECUTE format('SELECT array_agg(id ORDER BY d, id) FROM (SELECT id, (v <-> $1) + 0 AS d FROM %s ORDER BY 2, 1 LIMIT 10) s', t)
      INTO exact USING small_point(100000 + q);
    SET LOCAL hnsw.ef_search = 1000;
    EXECUTE format('SELECT array_agg(id) FROM (SELECT id FROM %s ORDER BY v <-> $1 LIMIT 10) s', t) INTO wide USING small_point(100000 + q);
    SET LOCAL hnsw.ef_search = 40;
    EXECUTE format('SELECT array_agg(id) FROM (SELECT id FROM %s ORDER BY v <-> $1 LIMIT 10) s', t) INTO narrow USING small_point(100000 + q);
    exact_queries := exact_queries + (wide = exact)::int;
    hits := hits + cardinality(ARRAY(SELECT unnest(narrow) INTERSECT SELECT unnest(exact)));
  END LOOP;
  recall_at_40 := hits / 200.0;
  RETURN NEXT;
END $$;

CREATE TABLE small_m2 (id int PRIMARY KEY, v vector(128));
INSERT INTO small_m2 SELECT i, small_point(i) FROM generate_series(1, 1000) i;
CREATE TABLE small_m2_half_space (LIKE small_m2 INCLUDING ALL);
INSERT INTO small_m2_half_space SELECT * FROM small_m2;
CREATE TABLE small_m4 (LIKE small_m2 INCLUDING ALL);
INSERT INTO small_m4 SELECT * FROM small_m2;
CREATE TABLE small_m4_half_space (LIKE small_m2 INCLUDING ALL);
INSERT INTO small_m4_half_space SELECT * FROM small_m2;
CREATE TABLE small_m8 (LIKE small_m2 INCLUDING ALL);
INSERT INTO small_m8 SELECT * FROM small_m2;
CREATE TABLE small_m8_half_space (LIKE small_m2 INCLUDING ALL);
INSERT INTO small_m8_half_space SELECT * FROM small_m2;
CREATE INDEX small_m2_idx ON small_m2 USING hnsw (v vector_l2_ops) WITH (m = 2);
CREATE INDEX small_m2_half_space_idx ON small_m2_half_space USING hnsw (v vector_l2_ops) WITH (m = 2);
CREATE INDEX small_m4_idx ON small_m4 USING hnsw (v vector_l2_ops) WITH (m = 4);
CREATE INDEX small_m4_half_space_idx ON small_m4_half_space USING hnsw (v vector_l2_ops) WITH (m = 4);
CREATE INDEX small_m8_idx ON small_m8 USING hnsw (v vector_l2_ops) WITH (m = 8);
CREATE INDEX small_m8_half_space_idx ON small_m8_half_space USING hnsw (v vector_l2_ops) WITH (m = 8);

CREATE VIEW small_indexes AS
  SELECT c.relname AS index, c.oid AS index_oid, i.indrelid::regclass AS tab
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
  WHERE c.relname LIKE 'small\_m%\_idx' ORDER BY c.relname;

-- the build reaches every element
SELECT index, elements, unreachable, problems FROM small_indexes, hnsw_verify(index_oid);

-- half the rows: every other id, or the half of the space where the first coordinate is negative
DELETE FROM small_m2 WHERE id % 2 = 0;
DELETE FROM small_m4 WHERE id % 2 = 0;
DELETE FROM small_m8 WHERE id % 2 = 0;
DELETE FROM small_m2_half_space WHERE (v::real[])[1] < 0;
DELETE FROM small_m4_half_space WHERE (v::real[])[1] < 0;
DELETE FROM small_m8_half_space WHERE (v::real[])[1] < 0;
VACUUM small_m2, small_m4, small_m8, small_m2_half_space, small_m4_half_space, small_m8_half_space;

SELECT index, elements, deleted, heap_tids, unreachable, problems FROM small_indexes, hnsw_verify(index_oid);
-- exact at ef_search 1000; at the default ef_search, recall is what a fresh build over
-- the surviving rows gets (REINDEX; 20 queries, so within 0.1)
CREATE TEMP TABLE vacuumed AS SELECT index, exact_queries, recall_at_40 FROM small_indexes, small_exact_matches(tab);
REINDEX TABLE small_m2; REINDEX TABLE small_m4; REINDEX TABLE small_m8;
REINDEX TABLE small_m2_half_space; REINDEX TABLE small_m4_half_space; REINDEX TABLE small_m8_half_space;
SELECT index, v.exact_queries, v.recall_at_40 >= r.recall_at_40 - 0.1 AS recall_holds
FROM vacuumed v JOIN (SELECT index, recall_at_40 FROM small_indexes, small_exact_matches(tab)) r USING (index) ORDER BY index;

-- an index scan at ef_search 1000 returns every live row
SET enable_seqscan = off;
SET hnsw.ef_search = 1000;
SELECT count(*) AS rows_found FROM (SELECT id FROM small_m2 ORDER BY v <-> small_point(7) LIMIT 1000) s;
RESET enable_seqscan;
RESET hnsw.ef_search;

-- inserts after a vacuum link into the repaired graph, and a second vacuum keeps it whole
DELETE FROM small_m2 WHERE id % 4 = 1;
VACUUM small_m2;
INSERT INTO small_m2 SELECT i, small_point(i) FROM generate_series(2000, 2500) i;
DELETE FROM small_m2 WHERE id % 3 = 0;
VACUUM small_m2;
SELECT elements, deleted, heap_tids, unreachable, problems FROM hnsw_verify('small_m2_idx');
SELECT exact_queries FROM small_exact_matches('small_m2');

DROP VIEW small_indexes;
DROP TABLE small_m2, small_m4, small_m8, small_m2_half_space, small_m4_half_space, small_m8_half_space;
DROP FUNCTION small_exact_matches(regclass), small_point(int);
