-- vector: text format, typmod, operators and functions

-- text input and shortest round-trip output (float4out's layout)
SELECT '[1,2,3]'::vector;
SELECT ' [ 1.5 , -2e3 ,+.5, 5. ] '::vector;
SELECT '[0.1,1e-7,123456,1234567,-0,3.4028235e38,1e-45]'::vector;
SELECT '[1e-50]'::vector;
SELECT '[1,2,3]'::vector(3);

-- typmod
CREATE TABLE items (id int PRIMARY KEY, embedding vector(3));
INSERT INTO items VALUES (1, '[1,2,3]'), (2, '[4,5,6]'), (3, '[1,1,1]');
SELECT id, embedding FROM items ORDER BY id;
SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'items'::regclass AND attname = 'embedding';
SELECT '[1,2,3]'::vector::vector(3);

-- distances: functions and operators
SELECT l2_distance('[0,0]'::vector, '[3,4]'), '[0,0]'::vector <-> '[3,4]';
SELECT inner_product('[1,2]'::vector, '[3,4]'), '[1,2]'::vector <#> '[3,4]';
SELECT cosine_distance('[1,2]'::vector, '[2,4]'), '[1,1]'::vector <=> '[-1,-1]', '[1,0]'::vector <=> '[0,1]';
SELECT cosine_distance('[0,0]'::vector, '[1,1]');
SELECT l1_distance('[0,0]'::vector, '[3,-4]'), '[0,0]'::vector <+> '[3,-4]';
SELECT '[1,2]'::vector <-> '[1,2]', '[3e38]'::vector <-> '[-3e38]';

-- element-wise arithmetic and concatenation
SELECT '[1,2,3]'::vector + '[4,5,6]', '[1,2,3]'::vector - '[4,5,6]', '[1,2,3]'::vector * '[4,5,6]';
SELECT '[1,2]'::vector || '[3]';

-- functions
SELECT vector_dims('[1,2,3]'::vector), vector_norm('[3,4]'::vector);
SELECT l2_normalize('[3,4]'::vector), l2_normalize('[0,0]'::vector), vector_norm(l2_normalize('[1,2,3,4,5]'::vector));
SELECT subvector('[1,2,3,4,5]'::vector, 2, 3), subvector('[1,2,3,4,5]'::vector, 4, 10), subvector('[1,2,3,4,5]'::vector, -1, 3);
SELECT binary_quantize('[1,-1,0,2,0.5,-3,1,1,7]'::vector), pg_typeof(binary_quantize('[1]'::vector));

-- nearest neighbours by exact search, every operator
SELECT id FROM items ORDER BY embedding <-> '[1,1,2]' LIMIT 2;
SELECT id FROM items ORDER BY embedding <#> '[1,1,2]' LIMIT 2;
SELECT id FROM items ORDER BY embedding <=> '[1,1,2]' LIMIT 2;
SELECT id FROM items ORDER BY embedding <+> '[1,1,2]' LIMIT 2;

-- large dimensions
SELECT vector_dims(array_fill(1.5, ARRAY[16000])::vector);
SELECT vector_norm(array_fill(1, ARRAY[16000])::vector(16000));

-- TOAST: large values stored out of line read back intact
CREATE TABLE big (v vector);
INSERT INTO big SELECT array_agg(i)::vector FROM generate_series(1, 10000) i;
SELECT vector_dims(v), subvector(v, 9998, 3), round(vector_norm(v)::numeric, 6) = round(sqrt((10000.0 * 10001 * 20001) / 6), 6) AS exact_norm FROM big;
SELECT pg_column_size(v) > 40000 AS stored_uncompressed FROM big;

DROP TABLE items, big;
