-- generate() and generate_stream() with the small test generator, SmolLM2-135M-Instruct
-- (its greedy answers are checked token for token against a reference in the Rust tests;
-- here: the SQL surface, settings, errors, limits and cancellation).
SET client_min_messages = warning;
SELECT name, kind, config -> 'context_window' AS context_window
FROM register_model_from_files('smollm2', '/var/lib/ragtune/models/smollm2-135m-instruct');
RESET client_min_messages;
SET ragtune.default_generator = 'smollm2';

-- Greedy by default: the same answer every time, and the stream's pieces make it up.
SELECT generate('What is the capital of France?') LIKE '%Paris%' AS knows_paris;
SELECT generate('Name three colors.', max_tokens => 20) = generate('Name three colors.', max_tokens => 20) AS repeatable;
SELECT generate('Name three colors.', max_tokens => 20)
     = (SELECT string_agg(piece, '' ORDER BY n) FROM generate_stream('Name three colors.', max_tokens => 20) WITH ORDINALITY AS s(piece, n))
  AS stream_matches;
SELECT count(*) > 3 AS several_pieces FROM generate_stream('Name three colors.', max_tokens => 20);
-- A cursor over the set-returning function in the select list reads pieces as they come.
BEGIN;
DECLARE answer CURSOR FOR SELECT generate_stream('Name three colors.', max_tokens => 20) AS piece;
FETCH 2 FROM answer;
CLOSE answer;
COMMIT;

-- Stop strings end the text before them; max_tokens bounds it; NULL in, NULL out.
SELECT generate('What is the capital of France?', stop => ARRAY['Paris']) NOT LIKE '%Paris%' AS stopped_before;
SELECT generate('What is the capital of France?', stop => ARRAY[NULL, '']) LIKE '%Paris%' AS empty_stops_ignored;
SELECT generate('Count to one hundred.', max_tokens => 0) AS nothing;
SELECT generate(NULL) IS NULL AS null_prompt;
SELECT count(*) FROM generate_stream(NULL);
-- A system message replaces the default one.
SELECT generate('What is your name?', system => 'You are a pirate named Bob.', max_tokens => 16)
    <> generate('What is your name?', max_tokens => 16) AS system_used;

-- Drafted tokens (ragtune.draft_tokens): a greedy answer that quotes its prompt is the same
-- with drafts checked (6, the default) as with one token per call (0); the setting is bounded.
CREATE TEMP TABLE grounded (q text);
INSERT INTO grounded VALUES
  (E'Sources:\n\n[1] The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It is named after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889.\n\nQuestion: Whose company designed and built the Eiffel Tower?'),
  (E'Sources:\n\n[1] Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to make glucose and release oxygen. It takes place in the chloroplasts of leaf cells.\n\nQuestion: Where does photosynthesis take place?');
SHOW ragtune.draft_tokens;
SET ragtune.draft_tokens = 0;
CREATE TEMP TABLE undrafted AS SELECT q, generate(q, max_tokens => 40) AS answer FROM grounded;
RESET ragtune.draft_tokens;
SELECT count(*) AS same_answers FROM undrafted WHERE generate(q, max_tokens => 40) = answer;
SET ragtune.draft_tokens = 17;
SET ragtune.draft_tokens = -1;

-- Sampling: the same seed repeats, another seed differs.
SELECT generate('Write a story about a cat.', max_tokens => 24, temperature => 1.0, top_p => 0.95, top_k => 50, seed => 7)
     = generate('Write a story about a cat.', max_tokens => 24, temperature => 1.0, top_p => 0.95, top_k => 50, seed => 7)
  AS same_seed_same_text;
SELECT generate('Write a story about a cat.', max_tokens => 24, temperature => 1.0, seed => 7)
    <> generate('Write a story about a cat.', max_tokens => 24, temperature => 1.0, seed => 8)
  AS other_seed_other_text;

-- Bad settings.
SELECT generate('x', max_tokens => -1);
SELECT generate('x', temperature => -0.5);
SELECT generate('x', temperature => 'NaN');
SELECT generate('x', top_p => 0);
SELECT generate('x', top_p => 1.5);
SELECT generate('x', top_k => -1);
SELECT generate('x', adapter => 'house-style');
SELECT generate('x', model => 'no-such-model');
SET ragtune.default_generator = '';
SELECT generate('x');
SET ragtune.default_generator = 'smollm2';
SET client_min_messages = warning;
SELECT name FROM register_model_from_files('minilm', '/var/lib/ragtune/models/all-MiniLM-L6-v2-int8');
RESET client_min_messages;
SELECT generate('x', model => 'minilm');
SELECT embed('x', 'smollm2');
SELECT drop_model('minilm');

-- The context window: a copy of the model limited to 64 tokens.
SELECT r.name FROM ragtune_models m, register_model('smollm2-64', lo_from_bytea(0, lo_get(m.onnx)), m.tokenizer,
  jsonb_set(m.config, '{context_window}', '64')) r
WHERE m.name = 'smollm2';
-- Too long: the start of the prompt goes, with a NOTICE.
SELECT length(generate(repeat('Some words that do not matter. ', 40) || 'What is the capital of France?',
  model => 'smollm2-64', max_tokens => 8)) > 0 AS answered;
-- Not even the template fits with room for the answer.
SELECT generate('Hi', model => 'smollm2-64', max_tokens => 60);
SELECT generate('Hi', model => 'smollm2-64', system => repeat('Be brief. ', 40), max_tokens => 8);
-- max_tokens beyond the window: at most half the window is kept for the answer, which
-- ends when the window is full.
SELECT generate('Count from one to one thousand.', model => 'smollm2-64', system => 'Count.', max_tokens => 1000) IS NOT NULL AS stops_at_window;
SELECT drop_model('smollm2-64');

-- Generators are checked when registered.
SELECT register_model('broken', '\x00'::bytea, m.tokenizer, m.config) FROM ragtune_models m WHERE m.name = 'smollm2';
SELECT register_model('broken', m.onnx, m.tokenizer,
  '{"kind": "generator", "chat_format": {"message": "{role}", "generation_prompt": ""}, "stop_token_ids": [2], "context_window": 64}')
FROM ragtune_models m WHERE m.name = 'smollm2';

-- Cancellation. A copy whose only stop token never comes cannot end early: statement_timeout
-- stops it between tokens; and a prompt of thousands of tokens is stopped inside its one
-- model call.
SELECT r.name FROM ragtune_models m, register_model('smollm2-endless', lo_from_bytea(0, lo_get(m.onnx)), m.tokenizer,
  jsonb_set(m.config, '{stop_token_ids}', '[49151]')) r
WHERE m.name = 'smollm2';
SELECT length(generate('Hi', model => 'smollm2-endless', max_tokens => 1)) > 0 AS loaded;
SET statement_timeout = '300ms';
SELECT generate('Count from one to one thousand in words.', model => 'smollm2-endless', max_tokens => 5000);
SELECT count(*) FROM generate_stream('Count from one to one thousand in words.', model => 'smollm2-endless', max_tokens => 5000);
SET statement_timeout = '100ms';
SELECT generate(repeat('Some words that make a long prompt. ', 300) || 'Summarize.', max_tokens => 1);
RESET statement_timeout;
SELECT drop_model('smollm2-endless');
-- The session still works afterwards.
SELECT generate('What is the capital of France?') LIKE '%Paris%' AS still_works;

-- A role without the grant cannot use the model.
CREATE ROLE generate_user;
SET ROLE generate_user;
SELECT generate('Hi', model => 'smollm2');
RESET ROLE;
SELECT grant_model('smollm2', 'generate_user');
SET ROLE generate_user;
SELECT generate('What is the capital of France?', model => 'smollm2') LIKE '%Paris%' AS granted;
RESET ROLE;
SELECT drop_model('smollm2');
DROP ROLE generate_user;
