-- Hybrid retrieval: a full-text leg fused with the vector leg by reciprocal rank fusion,
-- checked against an independent computation in SQL, on the sections of the Python FAQ.
SET client_min_messages = warning;
SELECT name FROM register_model_from_files('hybrid_minilm', '/var/lib/ragtune/models/all-MiniLM-L6-v2-int8');
SELECT name FROM register_model_from_files('hybrid_smollm2', '/var/lib/ragtune/models/smollm2-135m-instruct');
RESET client_min_messages;
SET ragtune.default_embedding_model = 'hybrid_minilm';

CREATE TEMP TABLE hybrid_docs_csv (path text, title text, body text);
COPY hybrid_docs_csv FROM '/var/lib/ragtune/data/python_docs.csv' WITH (FORMAT csv, HEADER);
CREATE TABLE hybrid_faq (id int PRIMARY KEY, owner name NOT NULL DEFAULT 'public', body text NOT NULL,
  tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', body)) STORED, embedding vector(384));
-- Embedded as they are inserted: an UPDATE would leave dead rows that can keep new indexes
-- from being used (pg_index.indcheckxmin) while older snapshots exist.
INSERT INTO hybrid_faq (id, body, embedding)
SELECT id, body, embed(body)
FROM (SELECT row_number() OVER (ORDER BY path, title, body) AS id, title || E'\n\n' || left(body, 1200) AS body
      FROM hybrid_docs_csv WHERE path LIKE 'faq/%') sections;
-- One row only its owner may read (row-level security, below).
INSERT INTO hybrid_faq (id, owner, body, embedding)
SELECT 100000, 'hybrid_alice', body, embed(body)
FROM (VALUES ('Falcon launch code: the launch code of project Falcon is 4711, known to Alice only.')) v(body);
SELECT count(*) > 150 AS enough_sections FROM hybrid_faq;
CREATE INDEX hybrid_faq_tsv ON hybrid_faq USING gin (tsv);
CREATE INDEX hybrid_faq_body_tsv ON hybrid_faq USING gin (to_tsvector('english', body));
CREATE INDEX hybrid_faq_embedding ON hybrid_faq USING hnsw (embedding vector_cosine_ops);
ANALYZE hybrid_faq;

-- Registration checks text search.
SELECT register_rag_source('hybrid_faq', 'hybrid_faq', 'id', 'body', 'embedding', tsvector_column => 'tsv');
SELECT register_rag_source('hybrid_faq', 'hybrid_faq', 'id', 'body', 'embedding', text_search => 'english',
  tsvector_column => 'body');
SELECT register_rag_source('hybrid_faq', 'hybrid_faq', 'id', 'body', 'embedding', text_search => 'no_such_configuration');
SELECT name, text_search, tsvector_column
FROM register_rag_source('hybrid_faq', 'hybrid_faq', 'id', 'body', 'embedding', text_search => 'english',
  tsvector_column => 'tsv');
SELECT name, text_search, tsvector_column
FROM register_rag_source('hybrid_faq_expression', 'hybrid_faq', 'id', 'body', 'embedding', text_search => 'english');
SELECT name, text_search, tsvector_column
FROM register_rag_source('hybrid_faq_vector', 'hybrid_faq', 'id', 'body', 'embedding');
SELECT retrieve('x', 'hybrid_faq_vector', mode => 'text');
SELECT retrieve('x', 'hybrid_faq_vector', mode => 'hybrid');
SELECT retrieve('x', 'hybrid_faq', mode => 'bm25');
-- A question of stop words only matches no row in text mode.
SELECT count(*) AS stop_words_only FROM retrieve('Is it what it is?', 'hybrid_faq', 5, mode => 'text');

-- The reference: the exact vector ranking; the text ranking: each lexeme of the question
-- weighs its BM25 idf, ln(1 + (N - df + 0.5) / (df + 0.5)) for df of the N rows holding it,
-- a row scores the sum of the weights of the lexemes it holds (ties by id), and the rows
-- holding a lexeme at most half the rows hold are candidates (all lexemes' rows when no
-- lexeme is that rare); each leg's best 50 fused by the sum of 1 / (5 + rank), ties to
-- the better vector rank, then the better text rank.
CREATE FUNCTION hybrid_expected(question text, mode text, k int) RETURNS text[] LANGUAGE sql AS $$
  WITH q AS MATERIALIZED (SELECT embed(question) AS e),
  rows AS MATERIALIZED (SELECT count(*)::float8 AS n FROM hybrid_faq),
  terms AS MATERIALIZED (
    SELECT t.i, quote_literal(t.lexeme)::tsquery AS query,
           (SELECT count(*) FROM hybrid_faq f WHERE f.tsv @@ quote_literal(t.lexeme)::tsquery) AS df
    FROM unnest(to_tsvector('english', question)) WITH ORDINALITY t(lexeme, positions, weights, i)),
  held AS (SELECT t.*, ln(1 + (rows.n - t.df + 0.5) / (t.df::float8 + 0.5)) AS idf, t.df <= rows.n / 2 AS rare
           FROM terms t, rows WHERE t.df > 0),
  matched AS (SELECT query FROM held WHERE rare OR NOT EXISTS (SELECT FROM held WHERE rare)),
  vector_leg AS (
    SELECT f.id, row_number() OVER (ORDER BY f.embedding <=> q.e) AS rank
    FROM hybrid_faq f, q ORDER BY f.embedding <=> q.e LIMIT 50),
  text_leg AS (
    SELECT f.id, row_number() OVER (ORDER BY s.score DESC, f.id) AS rank
    FROM hybrid_faq f CROSS JOIN LATERAL (SELECT sum(h.idf ORDER BY h.i) AS score FROM held h WHERE f.tsv @@ h.query) s
    WHERE EXISTS (SELECT FROM matched m WHERE f.tsv @@ m.query) ORDER BY rank LIMIT 50),
  fused AS (
    SELECT id, v.rank AS vector_rank, t.rank AS text_rank,
           coalesce(1.0::float8 / (5 + v.rank), 0) + coalesce(1.0::float8 / (5 + t.rank), 0) AS rrf
    FROM vector_leg v FULL JOIN text_leg t USING (id))
  SELECT CASE mode
    WHEN 'vector' THEN ARRAY(SELECT id::text FROM vector_leg ORDER BY rank LIMIT k)
    WHEN 'text' THEN ARRAY(SELECT id::text FROM text_leg ORDER BY rank LIMIT k)
    ELSE ARRAY(SELECT id::text FROM fused ORDER BY rrf DESC, vector_rank NULLS LAST, text_rank NULLS LAST LIMIT k) END
$$;
CREATE TEMP TABLE hybrid_questions (question text PRIMARY KEY);
INSERT INTO hybrid_questions VALUES
  ('How do I convert a string to a number?'),
  ('Why are default values shared between objects?'),
  ('How can I find the methods or attributes of an object?'),
  ('Why does Python use indentation for grouping of statements?'),
  ('How do I make an executable from a Python script?'),
  ('Is there a tool to help find bugs or perform static analysis?'),
  ('How do I access the serial port?'),
  ('Why is there no goto?');
CREATE TEMP TABLE hybrid_results AS
SELECT question, mode, k, hybrid_expected(question, mode, k) AS expected,
       ARRAY(SELECT id FROM retrieve(question, 'hybrid_faq', k, mode => mode)) AS retrieved,
       ARRAY(SELECT id FROM retrieve(question, 'hybrid_faq_expression', k, mode => mode)) AS by_expression
FROM hybrid_questions, unnest(ARRAY['vector', 'text', 'hybrid']) mode, unnest(ARRAY[5, 10]) k;
SELECT mode, k, count(*) AS questions, count(*) FILTER (WHERE retrieved = expected) AS as_expected,
       count(*) FILTER (WHERE by_expression = expected) AS by_expression_as_expected,
       min(cardinality(retrieved)) AS fewest_rows
FROM hybrid_results GROUP BY mode, k ORDER BY k, mode;
-- The legs disagree, so the fusion is not one of them.
SELECT count(*) FILTER (WHERE h.retrieved <> v.retrieved) AS hybrid_not_vector,
       count(*) FILTER (WHERE h.retrieved <> t.retrieved) AS hybrid_not_text
FROM hybrid_results h JOIN hybrid_results v USING (question, k) JOIN hybrid_results t USING (question, k)
WHERE h.mode = 'hybrid' AND v.mode = 'vector' AND t.mode = 'text' AND h.k = 5;
-- Without mode, a source with text search is hybrid, one without vector; score stays the
-- cosine similarity.
SELECT (SELECT array_agg(id) FROM retrieve('How do I access the serial port?', 'hybrid_faq', 5))
     = (SELECT retrieved FROM hybrid_results WHERE question = 'How do I access the serial port?' AND mode = 'hybrid' AND k = 5)
       AS default_hybrid,
       (SELECT array_agg(id) FROM retrieve('How do I access the serial port?', 'hybrid_faq_vector', 5))
     = (SELECT retrieved FROM hybrid_results WHERE question = 'How do I access the serial port?' AND mode = 'vector' AND k = 5)
       AS default_vector;
SELECT bool_and(abs(r.score - (1 - (f.embedding <=> embed('How do I access the serial port?')))) < 1e-6) AS cosine_scores
FROM retrieve('How do I access the serial port?', 'hybrid_faq', 10, mode => 'text') r JOIN hybrid_faq f ON f.id = r.id::int;

-- Both legs use their indexes (counted in pg_stat_user_indexes; the table is small enough
-- that the planner would rather scan it, so sequential scans are off): the text leg's GIN
-- index counts the rows of each of the question's 3 lexemes, then finds the candidates.
SET enable_seqscan = off;
SELECT pg_stat_force_next_flush();
CREATE TEMP TABLE hybrid_scans AS
SELECT indexrelname, idx_scan FROM pg_stat_user_indexes WHERE relname = 'hybrid_faq';
SELECT count(*) FROM retrieve('How do I access the serial port?', 'hybrid_faq', 5, mode => 'hybrid');
SELECT count(*) FROM retrieve('How do I access the serial port?', 'hybrid_faq_expression', 5, mode => 'text');
SELECT pg_stat_force_next_flush();
SELECT s.indexrelname, s.idx_scan - b.idx_scan AS scans
FROM pg_stat_user_indexes s JOIN hybrid_scans b USING (indexrelname) WHERE s.relname = 'hybrid_faq' ORDER BY 1;
RESET enable_seqscan;

-- rag_answer_json() retrieves in the mode asked, and says which.
SELECT answer ->> 'mode' AS mode, (SELECT array_agg(s ->> 'id' ORDER BY (s ->> 'n')::int) FROM jsonb_array_elements(answer -> 'sources') s)
     = (SELECT (retrieved)[1:2] FROM hybrid_results WHERE question = 'How do I access the serial port?' AND mode = 'text' AND k = 5)
       AS text_passages
FROM (SELECT rag_answer_json('How do I access the serial port?', 'hybrid_faq', model => 'hybrid_smollm2', max_tokens => 4,
  min_score => -1, mode => 'text') AS answer) a;

-- Row-level security holds on both legs: bob never retrieves alice's row, in any mode.
ALTER TABLE hybrid_faq ENABLE ROW LEVEL SECURITY;
CREATE POLICY hybrid_readable ON hybrid_faq USING (owner IN ('public', current_user));
CREATE ROLE hybrid_alice;
CREATE ROLE hybrid_bob;
GRANT SELECT ON hybrid_faq TO hybrid_alice, hybrid_bob;
SELECT grant_model('hybrid_minilm', 'public');
SELECT grant_rag_source('hybrid_faq', 'public');
SET ROLE hybrid_alice;
SELECT mode, (SELECT id FROM retrieve('What is the launch code of project Falcon?', 'hybrid_faq', 1, mode => mode)) AS best
FROM unnest(ARRAY['vector', 'text', 'hybrid']) mode;
SET ROLE hybrid_bob;
SELECT mode, bool_and(id <> '100000') AS hidden_row_absent, count(*) AS rows
FROM unnest(ARRAY['vector', 'text', 'hybrid']) mode, retrieve('What is the launch code of project Falcon?', 'hybrid_faq', 5, mode => mode)
GROUP BY mode ORDER BY mode;
RESET ROLE;

SELECT drop_rag_source('hybrid_faq'), drop_rag_source('hybrid_faq_expression'), drop_rag_source('hybrid_faq_vector');
SELECT drop_model('hybrid_minilm'), drop_model('hybrid_smollm2');
DROP FUNCTION hybrid_expected(text, text, int);
DROP TABLE hybrid_faq;
DROP ROLE hybrid_alice;
DROP ROLE hybrid_bob;
