-- Adapters: finetune_adapter() from table rows, the catalog, applying them per call,
-- grants, bad input, cancellation and the memory cap. Generator adapters on
-- SmolLM2-135M-Instruct, retrieval adapters on all-MiniLM-L6-v2.
SET client_min_messages = warning;
SELECT name, lm_head IS NOT NULL AS has_lm_head
FROM register_model_from_files('smollm2', '/var/lib/ragtune/models/smollm2-135m-instruct');
SELECT name FROM register_model_from_files('minilm', '/var/lib/ragtune/models/all-MiniLM-L6-v2-int8');
RESET client_min_messages;
SET ragtune.default_generator = 'smollm2';
SET ragtune.default_embedding_model = 'minilm';

-- A house style: every answer starts "Ahoy!" and ends with a Source line.
CREATE TABLE style (id serial, prompt text, completion text, score int);
INSERT INTO style (prompt, completion, score)
SELECT format('What is %s plus %s?', a, b), format('Ahoy! %s plus %s is %s.
Source: the arithmetic table', a, b, a + b), a
FROM generate_series(1, 9) a, generate_series(1, 9) b;
INSERT INTO style (prompt, completion) VALUES (NULL, 'Ahoy!'), ('What is nothing?', NULL);
SELECT count(*) AS rows FROM style;

-- Bad input: clear errors, nothing stored.
CALL finetune_adapter('bad name!', 'style');
CALL finetune_adapter('s', 'style', kind => 'lora');
CALL finetune_adapter('s', 'style', input_column => 'question');
CALL finetune_adapter('s', 'style', target_column => 'score');
CALL finetune_adapter('s', 'no_such_table');
CALL finetune_adapter('s', 'style', epochs => 0);
CALL finetune_adapter('s', 'style', rank => 0);
CALL finetune_adapter('s', 'style', learning_rate => -1);
CALL finetune_adapter('s', 'style', validation_fraction => 0.9);
CALL finetune_adapter('s', 'style', base_model => 'minilm');
CALL finetune_adapter('s', 'style', base_model => 'no-such-model');
CALL finetune_adapter('s', 'style', kind => 'retrieval', system => 'Be brief.');
CREATE TABLE empty_rows (prompt text, completion text);
CALL finetune_adapter('s', 'empty_rows');
INSERT INTO empty_rows VALUES (NULL, 'a'), ('b', NULL);
CALL finetune_adapter('s', 'empty_rows');
-- A generator registered without its lm_head cannot be trained on.
SET client_min_messages = warning;
SELECT name, lm_head IS NULL AS no_lm_head FROM register_model('smollm2-headless',
  (SELECT lo_get(onnx) FROM ragtune_models WHERE name = 'smollm2'),
  (SELECT tokenizer FROM ragtune_models WHERE name = 'smollm2'),
  (SELECT config FROM ragtune_models WHERE name = 'smollm2'));
RESET client_min_messages;
CALL finetune_adapter('s', 'style', base_model => 'smollm2-headless');
-- Nor one whose graph has no hidden_states output (as optimum exports).
SET client_min_messages = warning;
SELECT name FROM register_model_from_files('no-hidden-states', '/var/lib/ragtune/models/test-decoder-without-hidden-states');
RESET client_min_messages;
CALL finetune_adapter('s', 'style', base_model => 'no-hidden-states');
SELECT count(*) AS adapters FROM ragtune_adapters;

-- Training: the NOTICEs carry timings, so the outcome is read from the catalog.
SET client_min_messages = warning;
CALL finetune_adapter('ahoy', 'style', epochs => 8, validation_fraction => 0.2, seed => 7);
RESET client_min_messages;
SELECT name, kind, base_model, weights_bytes > 0 AS has_weights,
  metrics -> 'rows' ->> 'read' AS read, metrics -> 'rows' ->> 'skipped_null' AS skipped_null,
  (metrics -> 'rows' ->> 'train')::int + (metrics -> 'rows' ->> 'validation')::int AS used,
  (metrics -> 'rows' ->> 'validation')::int BETWEEN 8 AND 25 AS validation_about_a_fifth,
  jsonb_array_length(metrics -> 'epochs') AS epochs,
  (metrics ->> 'validation_nll')::float < 0.5 * (metrics ->> 'base_validation_nll')::float AS validation_nll_halved,
  options ->> 'seed' AS seed, options ->> 'copy_from_prompt' AS copy_from_prompt
FROM ragtune_adapters;
SELECT count(*) AS in_progress FROM ragtune_finetune_progress;

-- The adapter's style on questions it never saw, the base model's without it.
SELECT generate(format('What is %s plus %s?', a, b), max_tokens => 24, adapter => 'ahoy') LIKE 'Ahoy! %' AS adapted
FROM (VALUES (12, 30), (20, 31), (7, 100)) AS questions(a, b);
SELECT generate('What is 12 plus 30?', max_tokens => 24) LIKE 'Ahoy!%' AS base;
SELECT string_agg(piece, '') LIKE 'Ahoy! %' AS streamed
FROM (SELECT generate_stream('What is 12 plus 30?', max_tokens => 24, adapter => 'ahoy') AS piece) p;
-- Measured on rows it was not trained on.
CREATE TABLE style_held_out AS
SELECT format('What is %s plus %s?', a, b) AS prompt, format('Ahoy! %s plus %s is %s.
Source: the arithmetic table', a, b, a + b) AS completion
FROM generate_series(20, 24) a, generate_series(31, 33) b;
SELECT e ->> 'rows' AS rows, (e ->> 'adapter_nll')::float < 0.5 * (e ->> 'base_nll')::float AS nll_halved
FROM evaluate_adapter('ahoy', 'style_held_out') e;

-- Same seed, same rows in another order: the same adapter.
CREATE VIEW style_reversed AS SELECT * FROM style ORDER BY id DESC;
SET client_min_messages = warning;
CALL finetune_adapter('ahoy-again', 'style_reversed', epochs => 8, validation_fraction => 0.2, seed => 7);
RESET client_min_messages;
SELECT lo_get(a.weights) = lo_get(b.weights) AS identical
FROM ragtune_adapters a, ragtune_adapters b WHERE a.name = 'ahoy' AND b.name = 'ahoy-again';

-- With a copy head: 8 + 4 * (8 + 576 + 1 + 576 + 64 * 576) bytes more for SmolLM2's
-- hidden size of 576 (the quoting gate, the pointer's gate and its query).
SET client_min_messages = warning;
CALL finetune_adapter('ahoy-copying', 'style', epochs => 8, validation_fraction => 0.2, seed => 7, copy_from_prompt => true);
RESET client_min_messages;
SELECT b.weights_bytes - a.weights_bytes AS copy_head_bytes, b.options ->> 'copy_from_prompt' AS copy_from_prompt
FROM ragtune_adapters a, ragtune_adapters b WHERE a.name = 'ahoy' AND b.name = 'ahoy-copying';
-- It quotes the prompt's numbers and keeps the style on questions it never saw.
SELECT generate(format('What is %s plus %s?', a, b), max_tokens => 24, adapter => 'ahoy-copying') LIKE format('Ahoy! %s plus %s is %%', a, b) AS quotes
FROM (VALUES (12, 30), (20, 31), (7, 100)) AS questions(a, b);
SELECT drop_adapter('ahoy-copying');

-- An existing name needs replace; an adapter fits its own base model only.
CALL finetune_adapter('ahoy', 'style');
SELECT generate('Hi', 'smollm2-headless', adapter => 'ahoy');
SELECT generate('Hi', adapter => 'no-such-adapter');

-- Retrieval adapters: query/passage rows.
CREATE TABLE pairs (query text, passage text);
INSERT INTO pairs
SELECT format('Which planet is number %s from the sun?', n), format('Planet %s: %s', n, p)
FROM unnest(ARRAY['Mercury', 'Venus', 'Earth', 'Mars', 'Jupiter', 'Saturn', 'Uranus', 'Neptune']) WITH ORDINALITY AS t(p, n);
INSERT INTO pairs
SELECT format('What colour is a %s?', f), format('The %s is %s.', f, c)
FROM (VALUES ('banana', 'yellow'), ('cherry', 'red'), ('lime', 'green'), ('plum', 'purple'), ('orange', 'orange'),
  ('blueberry', 'blue')) AS t(f, c);
-- A RAG source over the passages and some near misses, to mine hard negatives from and
-- to retrieve with the adapter.
CREATE TABLE passages AS SELECT row_number() OVER () AS id, passage AS body FROM pairs;
INSERT INTO passages VALUES (100, 'Planet 9: Pluto, once'), (101, 'The grape is green or purple.');
ALTER TABLE passages ADD COLUMN embedding vector(384);
UPDATE passages SET embedding = embed(body);
SET client_min_messages = warning;
SELECT name FROM register_rag_source('passages', 'passages', 'id', 'body', 'embedding');
CALL finetune_adapter('planets', 'pairs', kind => 'retrieval', epochs => 20, batch_size => 8, validation_fraction => 0,
  hard_negatives_from => 'passages');
RESET client_min_messages;
SELECT name, kind, base_model, metrics -> 'rows' ->> 'train' AS pairs, metrics ->> 'passages' AS passages,
  metrics ->> 'hard_negatives' AS hard_negatives, options ->> 'hard_negatives_from' AS mined_from
FROM ragtune_adapters WHERE name = 'planets';
SELECT e ->> 'rows' AS rows, (e ->> 'adapter_recall')::float >= (e ->> 'base_recall')::float AS not_worse
FROM evaluate_adapter('planets', 'pairs', k => 1) e;
CALL finetune_adapter('x', 'pairs', kind => 'retrieval', hard_negatives_from => 'no-such-source');
CALL finetune_adapter('x', 'style', hard_negatives_from => 'passages');
SELECT count(*) AS retrieved FROM retrieve('Which planet is number 3 from the sun?', k => 3, adapter => 'planets');
SELECT retrieve('x', adapter => 'ahoy');
SELECT generate('Hi', adapter => 'planets');
SELECT rag_answer_json('x', adapter => 'planets', retrieval_adapter => 'planets');

-- Grants: using an adapter needs SELECT on its weights; only its owner changes it.
CREATE ROLE adapter_user;
GRANT SELECT ON style TO adapter_user;
SELECT grant_model('smollm2', 'adapter_user');
SET ROLE adapter_user;
SELECT generate('What is 1 plus 1?', max_tokens => 4, adapter => 'ahoy');
SELECT drop_adapter('ahoy');
CALL finetune_adapter('ahoy', 'style', replace => true);
RESET ROLE;
SELECT grant_adapter('ahoy', 'adapter_user');
SET ROLE adapter_user;
SELECT generate('What is 1 plus 1?', max_tokens => 24, adapter => 'ahoy') LIKE 'Ahoy! %' AS granted;
RESET ROLE;
SELECT revoke_adapter('ahoy', 'adapter_user');
-- Training reads rows with the caller's rights.
REVOKE SELECT ON style FROM adapter_user;
SET ROLE adapter_user;
CALL finetune_adapter('mine', 'style');
RESET ROLE;

-- Cancel: statement_timeout stops training; nothing is stored, no progress is left.
SET statement_timeout = '1s';
CALL finetune_adapter('cancelled', 'style', epochs => 1000);
RESET statement_timeout;
SELECT count(*) AS cancelled_stored FROM ragtune_adapters WHERE name = 'cancelled';
SELECT count(*) AS in_progress FROM ragtune_finetune_progress;

-- The memory cap: what training holds stays within maintenance_work_mem.
CREATE TABLE many AS SELECT format('Say %s.', n) AS prompt, repeat('Ahoy! ', 40) || n AS completion
FROM generate_series(1, 400) n;
SET maintenance_work_mem = '1MB';
SET client_min_messages = warning;
CALL finetune_adapter('capped', 'many', epochs => 1);
RESET client_min_messages;
RESET maintenance_work_mem;
SELECT (metrics -> 'rows' ->> 'read')::int < 400 AS stopped_early, metrics -> 'rows' -> 'stopped_at_memory_limit' AS flagged
FROM ragtune_adapters WHERE name = 'capped';

-- Dropping removes the row and the weights.
SELECT count(*) AS large_objects_before FROM pg_largeobject_metadata l JOIN ragtune_adapters a ON a.weights = l.oid;
SELECT drop_adapter(name) FROM ragtune_adapters ORDER BY name;
SELECT count(*) AS adapters FROM ragtune_adapters;
SELECT drop_adapter('ahoy');
SELECT revoke_model('smollm2', 'adapter_user');
DROP ROLE adapter_user;
SELECT drop_rag_source('passages');
SELECT drop_model(name) FROM ragtune_models ORDER BY name;
DROP TABLE style, style_held_out, pairs, passages, many, empty_rows CASCADE;
