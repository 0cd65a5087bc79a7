-- ragtune: the model service (with shared_preload_libraries = 'ragtune'): one
-- background worker per database holds each model once per server and batches every
-- session's generations and embeddings. See README.md, "The model service".

CREATE FUNCTION ragtune_service_status() RETURNS TABLE (
	pid integer, model text, kind text, model_bytes bigint, cache_bytes bigint,
	active integer, queued integer, requests bigint, prompt_tokens bigint,
	generated_tokens bigint, tokens_per_second double precision,
	prefix_lookups bigint, prefix_hits bigint, prefix_tokens_reused bigint,
	drafted_tokens bigint, drafts_accepted bigint, texts_embedded bigint)
	AS 'MODULE_PATHNAME', 'ragtune_service_status_wrapper' LANGUAGE C VOLATILE PARALLEL RESTRICTED
	SET search_path = pg_catalog, @extschema@, pg_temp;
COMMENT ON FUNCTION ragtune_service_status() IS
	'What the model service of this database holds and does: one row per loaded model';

-- One row per model loaded by this database's service: its memory (model_bytes: the
-- graph; cache_bytes: keys and values of running sequences and the prefix cache),
-- requests running (active) and waiting (queued, for the whole service), tokens, the
-- decode rate over the last second, prefix-cache lookups, hits and the prompt tokens
-- they saved, and the tokens drafted from prompts (ragtune.draft_tokens) and accepted.
CREATE VIEW ragtune_service AS SELECT * FROM ragtune_service_status();
COMMENT ON VIEW ragtune_service IS 'The model service of this database: one row per loaded model';
