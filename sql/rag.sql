-- ragtune: RAG sources, retrieval and retrieval-augmented answers.
--
-- Everything runs with the caller's rights: retrieval is an ordinary query on the
-- source table, so its grants and row-level security decide what can be retrieved and
-- quoted, and using a model needs SELECT on its large object (grant_model()).

-- RAG sources: a table (or view) with an id, a text and an embedding column, and the
-- embedding model that made the embeddings; with text_search (a text search configuration)
-- also full-text retrieval, over tsvector_column or else to_tsvector(text_search, text). A source is registered by its relation's
-- owner; using it needs a grant from the source's owner (grant_rag_source()); a call that
-- names no source only picks one registered by a member of ragtune_admin.
CREATE TABLE ragtune_rag_sources (
	name text PRIMARY KEY
		CONSTRAINT ragtune_rag_sources_name_check CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$'),
	relation regclass NOT NULL,
	id_column name NOT NULL,
	text_column name NOT NULL,
	embedding_column name NOT NULL,
	model text NOT NULL,
	text_search regconfig,
	tsvector_column name,
	owner regrole NOT NULL,
	-- Roles granted its use besides the owner's members; '-' (oid 0) stands for PUBLIC.
	grantees regrole[] NOT NULL DEFAULT '{}',
	registered_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE ragtune_rag_sources IS 'Tables rag_answer() and retrieve() read passages from';
SELECT pg_catalog.pg_extension_config_dump('ragtune_rag_sources', '');
REVOKE ALL ON ragtune_rag_sources FROM PUBLIC;
GRANT SELECT ON ragtune_rag_sources TO PUBLIC;

CREATE FUNCTION ragtune_store_rag_source_as(caller oid, name text, relation regclass, id_column text, text_column text,
	embedding_column text, model text, replace boolean, text_search oid, tsvector_column text) RETURNS text LANGUAGE plpgsql
SET search_path = pg_catalog, @extschema@, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	model_config jsonb;
	dimensions integer;
	previous ragtune_rag_sources;
BEGIN
	PERFORM ragtune_check_name('RAG source', name);
	-- Retrieval runs the relation's query as whoever retrieves: only its owner may offer it.
	PERFORM ragtune_require_owner(caller, (SELECT c.relowner FROM pg_class c WHERE c.oid = relation),
		format('register a RAG source over %s', relation));
	PERFORM 1 FROM pg_attribute a WHERE a.attrelid = relation AND a.attname = id_column AND a.attnum > 0 AND NOT a.attisdropped;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'column "%" of % does not exist', id_column, relation USING ERRCODE = 'undefined_column';
	END IF;
	PERFORM 1 FROM pg_attribute a WHERE a.attrelid = relation AND a.attname = text_column AND NOT a.attisdropped
		AND a.atttypid IN ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype);
	IF NOT FOUND THEN
		RAISE EXCEPTION 'column "%" of % is not a text column', text_column, relation USING ERRCODE = 'undefined_column';
	END IF;
	SELECT a.atttypmod INTO dimensions FROM pg_attribute a WHERE a.attrelid = relation AND a.attname = embedding_column
		AND NOT a.attisdropped AND a.atttypid IN ('vector'::regtype, 'halfvec'::regtype);
	IF NOT FOUND THEN
		RAISE EXCEPTION 'column "%" of % is not a vector or halfvec column', embedding_column, relation
			USING ERRCODE = 'undefined_column';
	END IF;
	IF text_search IS NOT NULL AND NOT EXISTS (SELECT FROM pg_ts_config c WHERE c.oid = text_search) THEN
		RAISE EXCEPTION 'text search configuration % does not exist', text_search USING ERRCODE = 'undefined_object';
	END IF;
	IF tsvector_column IS NOT NULL THEN
		IF text_search IS NULL THEN
			RAISE EXCEPTION 'tsvector_column needs text_search, the configuration that parses questions'
				USING ERRCODE = 'invalid_parameter_value', HINT = 'Pass the configuration the column was made with, e.g. text_search => ''english''.';
		END IF;
		PERFORM 1 FROM pg_attribute a WHERE a.attrelid = relation AND a.attname = tsvector_column AND NOT a.attisdropped
			AND a.atttypid = 'tsvector'::regtype;
		IF NOT FOUND THEN
			RAISE EXCEPTION 'column "%" of % is not a tsvector column', tsvector_column, relation USING ERRCODE = 'undefined_column';
		END IF;
	END IF;
	SELECT m.config INTO model_config FROM ragtune_models m WHERE m.name = model;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'model "%" does not exist', model USING ERRCODE = 'undefined_object';
	END IF;
	IF model_config ->> 'kind' <> 'embedding' THEN
		RAISE EXCEPTION 'model "%" is a % model, not an embedding model', model, model_config ->> 'kind'
			USING ERRCODE = 'wrong_object_type';
	END IF;
	IF dimensions > 0 AND dimensions <> (model_config ->> 'dimensions')::integer THEN
		RAISE EXCEPTION 'column "%" holds % dimensions, but model "%" makes %', embedding_column, dimensions, model,
			model_config ->> 'dimensions' USING ERRCODE = 'data_exception';
	END IF;
	SELECT * INTO previous FROM ragtune_rag_sources s WHERE s.name = name FOR UPDATE;
	IF FOUND THEN
		PERFORM ragtune_require_owner(caller, previous.owner, format('replace RAG source "%s"', name));
		IF NOT replace THEN
			RAISE EXCEPTION 'RAG source "%" already exists', name USING ERRCODE = 'duplicate_object',
				HINT = 'Pass replace => true to replace it, or drop_rag_source() it first.';
		END IF;
		DELETE FROM ragtune_rag_sources s WHERE s.name = name;
	END IF;
	INSERT INTO ragtune_rag_sources AS s (name, relation, id_column, text_column, embedding_column, model, text_search,
		tsvector_column, owner)
	VALUES (name, relation, id_column, text_column, embedding_column, model, text_search::regconfig, tsvector_column,
		caller::regrole);
	RETURN name;
END $$;
REVOKE ALL ON FUNCTION ragtune_store_rag_source_as(oid, text, regclass, text, text, text, text, boolean, oid, text) FROM PUBLIC;
CREATE FUNCTION ragtune_register_rag_source(name text, relation regclass, id_column text, text_column text,
	embedding_column text, model text, replace boolean, text_search oid, tsvector_column text) RETURNS text
	AS 'MODULE_PATHNAME', 'ragtune_register_rag_source_wrapper' LANGUAGE C VOLATILE
	SET search_path = pg_catalog, @extschema@, pg_temp;

CREATE FUNCTION register_rag_source(name text, relation regclass, id_column name, text_column name,
	embedding_column name, model text DEFAULT NULL, replace boolean DEFAULT false, text_search regconfig DEFAULT NULL,
	tsvector_column name DEFAULT NULL)
RETURNS ragtune_rag_sources LANGUAGE plpgsql
SET search_path = pg_catalog, @extschema@, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	registered_name text := ragtune_register_rag_source(name, relation, id_column, text_column, embedding_column,
		coalesce(model, nullif(current_setting('ragtune.default_embedding_model', true), '')), replace, text_search,
		tsvector_column);
	registered ragtune_rag_sources;
BEGIN
	SELECT * INTO registered FROM ragtune_rag_sources s WHERE s.name = registered_name;
	RETURN registered;
END $$;
COMMENT ON FUNCTION register_rag_source(text, regclass, name, name, name, text, boolean, regconfig, name) IS
	'Registers a table the caller owns (id, text and embedding columns, the embedding model, and optionally text search) as a source of passages for rag_answer()';

CREATE FUNCTION ragtune_drop_rag_source_as(caller oid, name text) RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, @extschema@, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	dropped ragtune_rag_sources;
BEGIN
	SELECT * INTO dropped FROM ragtune_rag_sources s WHERE s.name = name FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'RAG source "%" does not exist', name USING ERRCODE = 'undefined_object';
	END IF;
	PERFORM ragtune_require_owner(caller, dropped.owner, format('drop RAG source "%s"', name));
	DELETE FROM ragtune_rag_sources s WHERE s.name = name;
END $$;
REVOKE ALL ON FUNCTION ragtune_drop_rag_source_as(oid, text) FROM PUBLIC;
CREATE FUNCTION drop_rag_source(name text) RETURNS void
	AS 'MODULE_PATHNAME', 'drop_rag_source_wrapper' LANGUAGE C VOLATILE STRICT
	SET search_path = pg_catalog, @extschema@, pg_temp;

CREATE FUNCTION ragtune_rag_source_privilege_as(caller oid, name text, role text, do_grant boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, @extschema@, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	source ragtune_rag_sources;
	grantee regrole;
BEGIN
	SELECT * INTO source FROM ragtune_rag_sources s WHERE s.name = name FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'RAG source "%" does not exist', name USING ERRCODE = 'undefined_object';
	END IF;
	PERFORM ragtune_require_owner(caller, source.owner,
		format('%s RAG source "%s"', CASE WHEN do_grant THEN 'grant' ELSE 'revoke' END, name));
	IF lower(role) = 'public' THEN
		grantee := 0::oid::regrole;
	ELSE
		grantee := to_regrole(role);
		IF grantee IS NULL THEN
			RAISE EXCEPTION 'role "%" does not exist', role USING ERRCODE = 'undefined_object';
		END IF;
	END IF;
	UPDATE ragtune_rag_sources s SET grantees = CASE WHEN do_grant
			THEN array_append(array_remove(s.grantees, grantee), grantee) ELSE array_remove(s.grantees, grantee) END
		WHERE s.name = name;
END $$;
REVOKE ALL ON FUNCTION ragtune_rag_source_privilege_as(oid, text, text, boolean) FROM PUBLIC;
CREATE FUNCTION grant_rag_source(name text, role text) RETURNS void
	AS 'MODULE_PATHNAME', 'grant_rag_source_wrapper' LANGUAGE C VOLATILE STRICT
	SET search_path = pg_catalog, @extschema@, pg_temp;
COMMENT ON FUNCTION grant_rag_source(text, text) IS 'Allows role (or PUBLIC) to retrieve from a RAG source';
CREATE FUNCTION revoke_rag_source(name text, role text) RETURNS void
	AS 'MODULE_PATHNAME', 'revoke_rag_source_wrapper' LANGUAGE C VOLATILE STRICT
	SET search_path = pg_catalog, @extschema@, pg_temp;

-- Retrieval: the k best rows of the source for the query, best first; score = cosine
-- similarity whatever the mode. mode vector ranks by cosine distance (the vector index
-- serves the ORDER BY), text by ts_rank_cd of the rows matching any of the query's
-- lexemes (a GIN index serves the match), hybrid fuses the two legs' rankings by
-- reciprocal rank fusion; NULL: hybrid where the source has text search, else vector. A
-- retrieval adapter (finetune_adapter(kind => 'retrieval')) transforms the query embedding.
CREATE FUNCTION retrieve(query text, source text DEFAULT NULL, k integer DEFAULT 5, adapter text DEFAULT NULL,
	mode text DEFAULT NULL)
	RETURNS TABLE (id text, content text, score double precision)
	AS 'MODULE_PATHNAME', 'retrieve_wrapper' LANGUAGE C STABLE PARALLEL RESTRICTED ROWS 5
	SET search_path = pg_catalog, @extschema@, pg_temp;
COMMENT ON FUNCTION retrieve(text, text, integer, text, text) IS
	'The k passages of a RAG source nearest to the query, read with the caller''s rights';

-- Retrieval-augmented answers. The k best passages (retrieved in mode) scoring at least min_score, each cut
-- to passage_tokens generator tokens, are numbered [1]..[k] (best first) and laid out
-- best_first or best_last (nearest the question); the model is asked to cite them. With
-- no passage above min_score the answer says it does not know, without generating.
-- adapter names a generator adapter (how to answer) or a retrieval adapter;
-- retrieval_adapter names a retrieval adapter beside a generator adapter.
CREATE FUNCTION rag_answer_json(question text, source text DEFAULT NULL, k integer DEFAULT 2, model text DEFAULT NULL,
	adapter text DEFAULT NULL, max_tokens integer DEFAULT 128, passage_tokens integer DEFAULT 120,
	min_score double precision DEFAULT 0.35, passage_order text DEFAULT 'best_first', system text DEFAULT NULL,
	retrieval_adapter text DEFAULT NULL, mode text DEFAULT NULL)
	RETURNS jsonb
	AS 'MODULE_PATHNAME', 'rag_answer_json_wrapper' LANGUAGE C VOLATILE PARALLEL RESTRICTED
	SET search_path = pg_catalog, @extschema@, pg_temp;
COMMENT ON FUNCTION rag_answer_json(text, text, integer, text, text, integer, integer, double precision, text, text, text, text) IS
	'rag_answer() as jsonb: answer, sources (n, id, snippet, score, cited), token counts and timings in ms';

CREATE FUNCTION rag_answer(question text, source text DEFAULT NULL, k integer DEFAULT 2, model text DEFAULT NULL,
	adapter text DEFAULT NULL, max_tokens integer DEFAULT 128, passage_tokens integer DEFAULT 120,
	min_score double precision DEFAULT 0.35, passage_order text DEFAULT 'best_first', system text DEFAULT NULL,
	retrieval_adapter text DEFAULT NULL, mode text DEFAULT NULL)
RETURNS text LANGUAGE sql VOLATILE PARALLEL RESTRICTED
SET search_path = pg_catalog, @extschema@, pg_temp AS $$
	SELECT a ->> 'answer' || coalesce(E'\n\nSources:\n' || (
		SELECT string_agg(format('[%s] %s: %s', s ->> 'n', s ->> 'id', s ->> 'snippet'), E'\n' ORDER BY (s ->> 'n')::int)
		FROM jsonb_array_elements(a -> 'sources') s), '')
	FROM rag_answer_json(question, source, k, model, adapter, max_tokens, passage_tokens, min_score, passage_order, system,
		retrieval_adapter, mode) a
$$;
COMMENT ON FUNCTION rag_answer(text, text, integer, text, text, integer, integer, double precision, text, text, text, text) IS
	'Answers a question from the passages of a RAG source, with [n] citations and the list of sources';

-- What rag_answer() gives the generator, to build training rows for an adapter that
-- learns to answer from passages: the user message (NULL when no passage reaches
-- min_score) and the default system message.
CREATE FUNCTION rag_prompt(question text, source text DEFAULT NULL, k integer DEFAULT 2, model text DEFAULT NULL,
	passage_tokens integer DEFAULT 120, min_score double precision DEFAULT 0.35, passage_order text DEFAULT 'best_first',
	retrieval_adapter text DEFAULT NULL, mode text DEFAULT NULL)
	RETURNS text
	AS 'MODULE_PATHNAME', 'rag_prompt_wrapper' LANGUAGE C STABLE PARALLEL RESTRICTED
	SET search_path = pg_catalog, @extschema@, pg_temp;
COMMENT ON FUNCTION rag_prompt(text, text, integer, text, integer, double precision, text, text, text) IS
	'The user message rag_answer() sends the generator for a question: the numbered passages and the question';
CREATE FUNCTION rag_system_prompt() RETURNS text
	AS 'MODULE_PATHNAME', 'rag_system_prompt_wrapper' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION rag_system_prompt() IS 'The system message rag_answer() uses unless given one';

-- What rag_answer() calls do, as pg_stat_statements counts statements.
CREATE FUNCTION ragtune_answer_stats_entries() RETURNS TABLE (source text, model text, adapter text,
	retrieval_adapter text, question text, asker oid, calls bigint, dont_know bigint, p50_ms double precision,
	p95_ms double precision, prompt_tokens bigint, generated_tokens bigint, mean_best_score double precision)
	AS 'MODULE_PATHNAME', 'ragtune_answer_stats_entries_wrapper' LANGUAGE C VOLATILE
	SET search_path = pg_catalog, @extschema@, pg_temp;

-- rag_answer() and rag_answer_json() calls of this database since the last reset, per
-- source, generator, adapter and retrieval adapter: calls, answers that said they do not
-- know (no passage reached min_score), latency p50/p95 (from a histogram: within 10%),
-- tokens in and out, mean best retrieval score. With ragtune.answer_stats_questions on,
-- each question has its own row, its text shown only to members of the role that asked
-- and of pg_read_all_stats. Needs shared_preload_libraries = 'ragtune'.
CREATE VIEW ragtune_answer_stats AS
SELECT e.source, e.model, e.adapter, e.retrieval_adapter, e.question, e.calls, e.dont_know, e.p50_ms, e.p95_ms, e.prompt_tokens, e.generated_tokens, e.mean_best_score
FROM ragtune_answer_stats_entries() e;
COMMENT ON VIEW ragtune_answer_stats IS 'What rag_answer() calls did, per source, model and adapter';
GRANT SELECT ON ragtune_answer_stats TO PUBLIC;

CREATE FUNCTION ragtune_answer_stats_reset() RETURNS bigint
	AS 'MODULE_PATHNAME', 'ragtune_answer_stats_reset_wrapper' LANGUAGE C VOLATILE
	SET search_path = pg_catalog, @extschema@, pg_temp;
COMMENT ON FUNCTION ragtune_answer_stats_reset() IS 'Empties ragtune_answer_stats (every database''s); returns the entries dropped';
REVOKE ALL ON FUNCTION ragtune_answer_stats_reset() FROM PUBLIC;
