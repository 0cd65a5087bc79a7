-- RAG sources, retrieve() and rag_answer(): retrieval runs with the caller's rights, so
-- row-level security decides what is retrieved and quoted.
SET client_min_messages = warning;
SELECT name FROM register_model_from_files('minilm', '/var/lib/ragtune/models/all-MiniLM-L6-v2-int8');
SELECT name FROM register_model_from_files('smollm2', '/var/lib/ragtune/models/smollm2-135m-instruct');
RESET client_min_messages;
SET ragtune.default_embedding_model = 'minilm';
SET ragtune.default_generator = 'smollm2';

CREATE TABLE facts (id int PRIMARY KEY, owner name NOT NULL DEFAULT current_user, body text NOT NULL,
  embedding vector(384));
SELECT embed_column('facts', 'body', 'embedding');
INSERT INTO facts (id, owner, body) VALUES
  (1, 'rag_alice', 'The launch code of project Falcon is 4711.'),
  (2, 'rag_bob', 'Project Falcon is a rocket that launches from Norway in the spring.'),
  (3, 'rag_bob', 'The Eiffel Tower is named after the engineer Gustave Eiffel, whose company built it.'),
  (4, 'rag_bob', 'Bananas are rich in potassium.');
CREATE INDEX ON facts USING hnsw (embedding vector_cosine_ops);

-- Registration checks the columns and the model.
SELECT register_rag_source('facts', 'facts', 'nope', 'body', 'embedding');
SELECT register_rag_source('facts', 'facts', 'id', 'owner', 'embedding');
SELECT register_rag_source('facts', 'facts', 'id', 'body', 'body');
SELECT register_rag_source('facts', 'facts', 'id', 'body', 'embedding', 'smollm2');
SELECT register_rag_source('facts', 'facts', 'id', 'body', 'embedding', 'no-such-model');
SELECT register_rag_source('bad name!', 'facts', 'id', 'body', 'embedding');
CREATE TABLE wide (id int, body text, embedding vector(768));
SELECT register_rag_source('wide', 'wide', 'id', 'body', 'embedding');
SELECT name, relation, id_column, text_column, embedding_column, model
FROM register_rag_source('facts', 'facts', 'id', 'body', 'embedding');
SELECT register_rag_source('facts', 'facts', 'id', 'body', 'embedding');

-- retrieve(): nearest first, cosine similarity, equal to exact search.
SELECT id, round(score::numeric, 3) AS score FROM retrieve('Who is the Eiffel Tower named after?', k => 2);
SELECT array_agg(id::text ORDER BY embedding <=> embed('Who is the Eiffel Tower named after?'))
     = (SELECT array_agg(id) FROM retrieve('Who is the Eiffel Tower named after?', 'facts', 4)) AS exact_order
FROM facts;
SELECT count(*) FROM retrieve(NULL);
SELECT retrieve('x', k => 0);
SELECT retrieve('x', 'no-such-source');
SELECT retrieve('x', adapter => 'tuned');

-- rag_answer(): the answer comes from the passages and lists them.
SELECT rag_answer('Who is the Eiffel Tower named after?', k => 1) LIKE '%Eiffel%Sources:%[1] 3: The Eiffel Tower%' AS cites_source;
SELECT answer ->> 'answer' LIKE '%Gustave Eiffel%' AS grounded,
       jsonb_array_length(answer -> 'sources') AS sources,
       answer #>> '{sources,0,id}' AS best,
       (answer #>> '{tokens,prompt}')::int > 20 AS prompt_counted,
       (answer #>> '{tokens,generated}')::int > 0 AS generated_counted,
       (SELECT bool_and((answer #> ARRAY['timings_ms', phase])::float8 >= 0) FROM unnest(ARRAY['retrieve', 'load', 'prompt', 'generate', 'total']) phase) AS timed
FROM (SELECT rag_answer_json('Who is the Eiffel Tower named after?', k => 2, passage_order => 'best_last') AS answer) a;
-- Nothing close enough: it says it does not know, without generating.
SELECT rag_answer('What is the airspeed velocity of an unladen swallow?', min_score => 0.6);
SELECT answer -> 'sources' AS sources, answer -> 'tokens' AS tokens
FROM (SELECT rag_answer_json('What is the airspeed velocity of an unladen swallow?', min_score => 0.6) AS answer) a;
SELECT rag_answer('x', passage_order => 'random');
SELECT rag_answer('x', passage_tokens => 0);
SELECT rag_answer(NULL) IS NULL AS null_question;

-- Several sources: one must be named (or set as the default).
CREATE TABLE other_facts AS SELECT * FROM facts WHERE id = 4;
SELECT name FROM register_rag_source('other', 'other_facts', 'id', 'body', 'embedding');
SELECT retrieve('bananas');
SET ragtune.default_rag_source = 'other';
SELECT id FROM retrieve('bananas');
RESET ragtune.default_rag_source;
SELECT drop_rag_source('other');
SELECT drop_rag_source('other');

-- Retrieval searches at least ragtune.retrieve_ef_search candidates (and k), whatever the
-- session's hnsw.ef_search, for its own scan only: at ef_search 1 a plain scan finds 1 row.
CREATE TABLE points (id int PRIMARY KEY, body text NOT NULL DEFAULT '', embedding vector(384));
SELECT setseed(0.25);
INSERT INTO points (id, embedding)
SELECT i, (SELECT array_agg(random() - 0.5) FROM generate_series(1, 384) WHERE i > 0)::vector(384)
FROM generate_series(1, 500) i;
CREATE INDEX ON points USING hnsw (embedding vector_cosine_ops);
SELECT name FROM register_rag_source('points', 'points', 'id', 'body', 'embedding');
SET enable_indexscan = off;
CREATE TEMP TABLE exact_top AS
SELECT id::text, row_number() OVER (ORDER BY embedding <=> embed('Which point is nearest?')) AS rank
FROM points ORDER BY embedding <=> embed('Which point is nearest?') LIMIT 60;
RESET enable_indexscan;
SET enable_seqscan = off;
SET hnsw.ef_search = 1;
SELECT count(*) AS plain_scan_rows
FROM (SELECT id FROM points ORDER BY embedding <=> embed('Which point is nearest?') LIMIT 10) plain;
SELECT array_agg(id ORDER BY rank) = (SELECT array_agg(id ORDER BY rank) FROM exact_top WHERE rank <= 10) AS top10_exact
FROM retrieve('Which point is nearest?', 'points', 10) WITH ORDINALITY AS r(id, content, score, rank);
SELECT array_agg(id ORDER BY rank) = (SELECT array_agg(id ORDER BY rank) FROM exact_top) AS top60_exact
FROM retrieve('Which point is nearest?', 'points', 60) WITH ORDINALITY AS r(id, content, score, rank);
SHOW hnsw.ef_search;
-- k above the setting raises the scan to k.
SET ragtune.retrieve_ef_search = 1;
SELECT count(*) AS rows FROM retrieve('Which point is nearest?', 'points', 60);
SELECT retrieve('x', 'points', 1001);
SET ragtune.retrieve_ef_search = 0;
RESET ragtune.retrieve_ef_search;
RESET hnsw.ef_search;
RESET enable_seqscan;
SELECT drop_rag_source('points');
DROP TABLE points, exact_top;

-- Row-level security: bob never retrieves, nor gets quoted, alice's row.
ALTER TABLE facts ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON facts USING (owner = current_user);
CREATE ROLE rag_alice;
CREATE ROLE rag_bob;
GRANT SELECT ON facts TO rag_alice, rag_bob;
SELECT grant_model('minilm', 'public'), grant_model('smollm2', 'public');
-- Using a source needs a grant from its owner.
SET ROLE rag_alice;
SELECT id FROM retrieve('What is the launch code of project Falcon?', k => 1);
RESET ROLE;
SELECT grant_rag_source('facts', 'rag_alice'), grant_rag_source('facts', 'rag_bob');
SET ROLE rag_alice;
SELECT id FROM retrieve('What is the launch code of project Falcon?', k => 1);
SET ROLE rag_bob;
SELECT id FROM retrieve('What is the launch code of project Falcon?', k => 4);
SELECT answer NOT LIKE '%4711%' AS not_quoted, answer LIKE '%[1] 2: Project Falcon%' AS own_row_cited
FROM rag_answer('What is the launch code of project Falcon?', k => 4) answer;
SELECT bool_and(s ->> 'id' <> '1') AS hidden_row_absent
FROM jsonb_array_elements(rag_answer_json('What is the launch code of project Falcon?', k => 4) -> 'sources') s;
-- Not the source's owner: cannot drop it.
SELECT drop_rag_source('facts');
RESET ROLE;
-- Without SELECT on the table, retrieval is refused.
REVOKE SELECT ON facts FROM rag_bob;
SET ROLE rag_bob;
SELECT retrieve('Falcon');
-- An ERROR in the scan restores the session's hnsw.ef_search with its subtransaction.
SET hnsw.ef_search = 7;
DO $$ BEGIN PERFORM retrieve('Falcon');
EXCEPTION WHEN insufficient_privilege THEN RAISE NOTICE 'refused, hnsw.ef_search %', current_setting('hnsw.ef_search');
END $$;
SHOW hnsw.ef_search;
RESET hnsw.ef_search;
RESET ROLE;

-- ragtune.answer_format: the model writes Markdown (code spans, a fenced block); text, the
-- default, returns it without the markup (fence lines and backticks gone, all else as it
-- was), markdown as written.
CREATE TABLE snippets (id int PRIMARY KEY, body text NOT NULL, embedding vector(384));
SELECT embed_column('snippets', 'body', 'embedding');
INSERT INTO snippets (id, body) VALUES
  (1, 'To remove the spaces at both ends of a string s in Python, call s.strip(); s.lstrip() and s.rstrip() remove them at one end.'),
  (2, 'To sort a list xs in place, call xs.sort(); sorted(xs) returns a new sorted list.');
SELECT name FROM register_rag_source('snippets', 'snippets', 'id', 'body', 'embedding');
SHOW ragtune.answer_format;
CREATE TEMP TABLE formats AS
SELECT current_setting('ragtune.answer_format') AS format, rag_answer_json('How do I sort a list in Python?', 'snippets', k => 1) ->> 'answer' AS answer;
SET ragtune.answer_format = markdown;
INSERT INTO formats SELECT 'markdown', rag_answer_json('How do I sort a list in Python?', 'snippets', k => 1) ->> 'answer';
RESET ragtune.answer_format;
SELECT m.answer ~ '`[a-z_]+(\(\))?`' AS markdown_has_code_spans, m.answer ~ '(^|\n)```' AS markdown_has_a_fence,
       position('`' IN t.answer) = 0 AS text_has_no_backticks,
       t.answer = regexp_replace(regexp_replace(m.answer, '(^|\n)```[a-z]*\n', '\1', 'g'), '`', '', 'g') AS text_is_markdown_without_markup
FROM formats t, formats m WHERE t.format = 'text' AND m.format = 'markdown';
SELECT answer FROM formats WHERE format = 'text';
SET ragtune.answer_format = html;
SELECT drop_rag_source('snippets');
DROP TABLE snippets;

SELECT drop_rag_source('facts');
SELECT drop_model('minilm'), drop_model('smollm2');
DROP TABLE facts, wide, other_facts;
DROP ROLE rag_alice;
DROP ROLE rag_bob;
