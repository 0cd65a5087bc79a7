-- model catalog, embed() and chunk() with the default model (installed by scripts/setup.sh)
SELECT name, kind, config, onnx_bytes, owner FROM register_model_from_files('all-MiniLM-L6-v2', '/var/lib/ragtune/models/all-MiniLM-L6-v2-int8');
SELECT name, kind, config ->> 'dimensions' AS dimensions FROM ragtune_models;

-- embeddings: unit length, NULL in NULL out, the model's known similarities
SELECT vector_dims(embed('hello')) AS dims, round(vector_norm(embed('hello'))::numeric, 4) AS norm, embed(NULL) IS NULL AS null_in_null_out;
SELECT round((1 - (embed('A cat sits on the mat.') <=> embed('A kitten is resting on a rug.')))::numeric, 2) AS cat_kitten,
       round((1 - (embed('A cat sits on the mat.') <=> embed('Stock markets fell sharply today.')))::numeric, 2) AS cat_stocks;
-- a batch (one model call) gives each text's own embedding; NULL elements stay NULL
SELECT array_length(e, 1) AS n, e[2] IS NULL AS second_null,
       (e[1] <=> embed('A cat sits on the mat.')) < 1e-6 AS first_same,
       (e[3] <=> embed('Stock markets fell sharply today, and then a little more.')) < 1e-6 AS third_same
FROM (SELECT embed(ARRAY['A cat sits on the mat.', NULL, 'Stock markets fell sharply today, and then a little more.']) AS e) s;
SELECT embed(ARRAY[]::text[]) AS empty, embed(NULL::text[]) IS NULL AS null_array;
-- texts past max_tokens (256) keep their first tokens: a longer tail changes nothing
SELECT embed(repeat('word ', 300)) = embed(repeat('word ', 400)) AS truncated;

-- chunk(): pieces of at most max_tokens model tokens, cut at paragraph and sentence ends
SELECT * FROM chunk('First paragraph is here. It has two sentences.

Second paragraph, which is longer than the first one, goes on for a while.', 12);
SELECT count(*) FROM chunk(NULL, 10);
SELECT count(*) AS pieces, bool_and(length(c) > 0) AS non_empty
FROM chunk(repeat('The quick brown fox jumps over the lazy dog. ', 100), 64, 8) c;
SELECT * FROM chunk('text', 10, 10);

-- errors
SELECT embed('x', 'no-such-model');
SELECT register_model_from_files('all-MiniLM-L6-v2', '/var/lib/ragtune/models/all-MiniLM-L6-v2-int8');
SELECT register_model_from_files('missing', '/nonexistent');
SELECT r.name FROM ragtune_models m, register_model('bad name!', lo_get(m.onnx), m.tokenizer, m.config) r WHERE m.name = 'all-MiniLM-L6-v2';
SELECT register_model('bad-config', '\x00'::bytea, '{}'::bytea, '{"kind": "embedding", "dimensions": 4}');
SELECT register_model('corrupt-onnx', 'not an onnx graph'::bytea, tokenizer, config) FROM ragtune_models WHERE name = 'all-MiniLM-L6-v2';
SELECT register_model('bad-tokenizer', lo_get(onnx), '{"not": "a tokenizer"}'::bytea, config) FROM ragtune_models WHERE name = 'all-MiniLM-L6-v2';
SELECT register_model('wrong-dimensions', lo_get(onnx), tokenizer, '{"kind": "embedding", "max_tokens": 256, "dimensions": 768}') FROM ragtune_models WHERE name = 'all-MiniLM-L6-v2';
-- An embedding graph registered as a generator: its session is checked (generate.sql
-- covers real generators).
SELECT register_model('not-a-generator', lo_get(m.onnx), m.tokenizer,
  '{"kind": "generator", "chat_format": {"message": "{role}: {content}\n", "generation_prompt": "assistant: "}, "stop_token_ids": [2], "context_window": 2048}')
FROM ragtune_models m WHERE m.name = 'all-MiniLM-L6-v2';
SELECT drop_model('not-a-generator');
CREATE TABLE typed (v vector(768));
INSERT INTO typed VALUES (embed('a 384-dimensional embedding'));
DROP TABLE typed;
SELECT count(*) AS models_left, count(*) FILTER (WHERE name = 'all-MiniLM-L6-v2') AS default_model FROM ragtune_models;

-- grants: using a model needs a grant; registering needs ragtune_admin, from server files
-- also pg_read_server_files
CREATE ROLE ragtune_alice;
SET ROLE ragtune_alice;
SELECT register_model('alice-minilm', '\x00'::bytea, '{}'::bytea, '{}');
RESET ROLE;
GRANT ragtune_admin TO ragtune_alice;
CREATE TABLE model_parts AS SELECT lo_get(onnx) AS onnx, tokenizer, config FROM ragtune_models WHERE name = 'all-MiniLM-L6-v2';
GRANT SELECT ON model_parts TO ragtune_alice;
SET ROLE ragtune_alice;
SELECT embed('hello') IS NOT NULL;
SELECT register_model_from_files('mine', '/var/lib/ragtune/models/all-MiniLM-L6-v2-int8');
SELECT r.name, r.owner FROM model_parts p, register_model('alice-minilm', p.onnx, p.tokenizer, p.config) r;
SELECT vector_dims(embed('hello', 'alice-minilm'));
SELECT drop_model('all-MiniLM-L6-v2');
RESET ROLE;
SELECT grant_model('all-MiniLM-L6-v2', 'ragtune_alice');
SET ROLE ragtune_alice;
SELECT (embed('hello') <=> embed('hello', 'alice-minilm')) < 1e-6 AS same_model;
RESET ROLE;
SELECT revoke_model('all-MiniLM-L6-v2', 'ragtune_alice');
SET ROLE ragtune_alice;
SELECT embed('hello') IS NOT NULL;
SELECT drop_model('alice-minilm');
RESET ROLE;
DROP TABLE model_parts;
DROP ROLE ragtune_alice;

-- an embedding column kept current: backfill, then inserts and updates
CREATE TABLE notes (id int PRIMARY KEY, body text, embedding vector(384));
INSERT INTO notes (id, body) SELECT i, 'note number ' || i FROM generate_series(1, 25) i;
INSERT INTO notes (id, body) VALUES (26, NULL);
SELECT embed_column('notes', 'body', 'embedding');
SET client_min_messages = warning;  -- the NOTICEs carry timings
CALL embed_backfill('notes', 'embedding', 10);
RESET client_min_messages;
SELECT count(*) FILTER (WHERE embedding IS NOT NULL) AS embedded, count(*) FILTER (WHERE body IS NULL AND embedding IS NULL) AS null_text,
       bool_and(embedding = embed(body)) FILTER (WHERE body IS NOT NULL) AS exact FROM notes;
INSERT INTO notes (id, body) VALUES (27, 'a new note');
UPDATE notes SET body = 'an edited note' WHERE id = 1;
SELECT id, embedding = embed(body) AS current FROM notes WHERE id IN (1, 27) ORDER BY id;
SELECT embed_column('notes', 'id', 'embedding');
CALL embed_backfill('notes', 'body');
DROP TABLE notes;
