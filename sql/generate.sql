-- ragtune: text generation with a registered generator (generate(), generate_stream()).
--
-- Runs with the caller's rights: using a model needs SELECT on its large object
-- (grant_model()), and a generator adapter needs its owner's grant (grant_adapter()).

-- Generation. model NULL means the setting ragtune.default_generator. Greedy unless
-- temperature > 0; a seed makes sampling repeat; stop strings end the text before them.
CREATE FUNCTION generate_stream(prompt text, model text DEFAULT NULL, max_tokens integer DEFAULT 256,
	temperature double precision DEFAULT 0, top_p double precision DEFAULT 1, top_k integer DEFAULT 0,
	seed bigint DEFAULT NULL, stop text[] DEFAULT NULL, system text DEFAULT NULL, adapter text DEFAULT NULL)
	RETURNS SETOF text
	AS 'MODULE_PATHNAME', 'generate_stream_wrapper' LANGUAGE C VOLATILE PARALLEL RESTRICTED ROWS 64
	SET search_path = pg_catalog, @extschema@, pg_temp;
COMMENT ON FUNCTION generate_stream(text, text, integer, double precision, double precision, integer, bigint, text[], text, text) IS
	'The answer of a chat model to prompt, as pieces of text in the order produced: read through a cursor to see it grow';

CREATE FUNCTION generate(prompt text, model text DEFAULT NULL, max_tokens integer DEFAULT 256,
	temperature double precision DEFAULT 0, top_p double precision DEFAULT 1, top_k integer DEFAULT 0,
	seed bigint DEFAULT NULL, stop text[] DEFAULT NULL, system text DEFAULT NULL, adapter text DEFAULT NULL)
RETURNS text LANGUAGE sql VOLATILE PARALLEL RESTRICTED
SET search_path = pg_catalog, @extschema@, pg_temp AS $$
	SELECT CASE WHEN prompt IS NOT NULL THEN coalesce(string_agg(piece, '' ORDER BY n), '') END
	FROM generate_stream(prompt, model, max_tokens, temperature, top_p, top_k, seed, stop, system, adapter)
		WITH ORDINALITY AS pieces(piece, n)
$$;
COMMENT ON FUNCTION generate(text, text, integer, double precision, double precision, integer, bigint, text[], text, text) IS
	'Generates the answer of a chat model to prompt (the user message; system replaces the model''s default system message)';
