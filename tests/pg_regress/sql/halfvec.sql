-- halfvec: float16 elements

SELECT '[1,2,3]'::halfvec;
SELECT '[0.1,65504,-65504,6e-8,1e-9]'::halfvec;
SELECT '[1.5,-2.25]'::halfvec(2);

CREATE TABLE items (id int PRIMARY KEY, embedding halfvec(3));
INSERT INTO items VALUES (1, '[1,2,3]'), (2, '[4,5,6]'), (3, '[1,1,1]');
SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'items'::regclass AND attname = 'embedding';

SELECT l2_distance('[0,0]'::halfvec, '[3,4]'), '[0,0]'::halfvec <-> '[3,4]';
SELECT inner_product('[1,2]'::halfvec, '[3,4]'), '[1,2]'::halfvec <#> '[3,4]';
SELECT cosine_distance('[1,2]'::halfvec, '[2,4]'), '[1,1]'::halfvec <=> '[-1,-1]';
SELECT cosine_distance('[0,0]'::halfvec, '[1,1]');
SELECT l1_distance('[0,0]'::halfvec, '[3,-4]'), '[0,0]'::halfvec <+> '[3,-4]';

SELECT '[1,2,3]'::halfvec + '[4,5,6]', '[1,2,3]'::halfvec - '[4,5,6]', '[1,2,3]'::halfvec * '[4,5,6]';
SELECT '[1,2]'::halfvec || '[3]';

SELECT vector_dims('[1,2,3]'::halfvec), l2_norm('[3,4]'::halfvec);
SELECT l2_normalize('[3,4]'::halfvec), l2_normalize('[0,0]'::halfvec);
SELECT subvector('[1,2,3,4,5]'::halfvec, 2, 3);
SELECT binary_quantize('[1,-1,0,2,0.5,-3,1,1,7]'::halfvec);

SELECT id FROM items ORDER BY embedding <-> '[1,1,2]' LIMIT 2;
SELECT id FROM items ORDER BY embedding <#> '[1,1,2]' LIMIT 2;
SELECT id FROM items ORDER BY embedding <=> '[1,1,2]' LIMIT 2;
SELECT id FROM items ORDER BY embedding <+> '[1,1,2]' LIMIT 2;

SELECT vector_dims(array_fill(1.5, ARRAY[16000])::halfvec(16000));

DROP TABLE items;
