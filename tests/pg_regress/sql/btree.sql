-- comparisons, the btree operator class, ORDER BY / DISTINCT / GROUP BY

SELECT '[1,2]'::vector < '[1,3]', '[1,2]'::vector <= '[1,2]', '[1,2]'::vector = '[1,2]',
       '[1,2]'::vector <> '[1,2]', '[1,3]'::vector >= '[1,2]', '[1,3]'::vector > '[1,2,3]';
SELECT '[1,2]'::halfvec < '[1,3]', '[1,2]'::halfvec <= '[1,2]', '[1,2]'::halfvec = '[1,2]',
       '[1,2]'::halfvec <> '[1,2]', '[1,3]'::halfvec >= '[1,2]', '[1,3]'::halfvec > '[1,2,3]';
SELECT vector_cmp('[1,2]', '[1,2,0]'), vector_cmp('[2]', '[1,9]'), halfvec_cmp('[1]', '[1]');

CREATE TABLE t (v vector, h halfvec);
INSERT INTO t SELECT ARRAY[i % 4, i % 3]::vector, ARRAY[i % 4, i % 3]::halfvec FROM generate_series(1, 24) i;
INSERT INTO t VALUES ('[1]', '[1]'), ('[1,1,1]', '[1,1,1]');
SELECT DISTINCT v FROM t ORDER BY v;
SELECT h, count(*) FROM t GROUP BY h ORDER BY h DESC;

CREATE INDEX t_v ON t (v);
CREATE INDEX t_h ON t (h);
SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT * FROM t WHERE v = '[1,1]';
SELECT count(*) FROM t WHERE v = '[1,1]';
SELECT count(*) FROM t WHERE h >= '[3]';
RESET enable_seqscan;
DROP TABLE t;
