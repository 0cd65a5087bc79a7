-- ragtune: adapters fine-tuned from table rows, kept in the catalog and chosen per call.
--
-- A generator adapter changes how a generator answers (a low-rank correction of its
-- output projection, trained on prompt/completion rows); a retrieval adapter changes how
-- queries are embedded (trained on query/passage rows). generate(), retrieve(),
-- rag_answer() and rag_answer_json() take adapter => name. Like models, an adapter's
-- weights are a large object: pg_dump and replicas carry them, and using an adapter
-- needs SELECT on it (grant_adapter()). Training reads rows with the caller's rights.

CREATE TABLE ragtune_adapters (
	name text PRIMARY KEY
		CONSTRAINT ragtune_adapters_name_check CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$'),
	kind text NOT NULL CHECK (kind IN ('generator', 'retrieval')),
	-- The model it was trained on, and the only one it may be applied to.
	base_model text NOT NULL,
	weights oid NOT NULL,
	weights_bytes bigint NOT NULL,
	-- What finetune_adapter() was called with.
	options jsonb NOT NULL,
	-- Row counts, losses per epoch, validation figures, timings.
	metrics jsonb NOT NULL,
	owner regrole NOT NULL,
	-- New for every training: backends reload an adapter whose version changed.
	version bigint NOT NULL DEFAULT nextval('ragtune_model_version'),
	created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE ragtune_adapters IS 'Adapters trained with finetune_adapter(); the weights are in large object "weights"';
SELECT pg_catalog.pg_extension_config_dump('ragtune_adapters', '');

REVOKE ALL ON ragtune_adapters FROM PUBLIC;
GRANT SELECT ON ragtune_adapters TO PUBLIC;

-- Stores an adapter `caller` trained (ragtune_finetune_adapter, the only caller, trained it
-- with the caller's rights): its weights in a new large object, a previous one replaced.
CREATE FUNCTION ragtune_store_adapter_as(caller oid, name text, kind text, base_model text, weights bytea, options jsonb,
	metrics jsonb, replace boolean) RETURNS text LANGUAGE plpgsql
SET search_path = pg_catalog, @extschema@, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	previous ragtune_adapters;
	stored oid;
BEGIN
	PERFORM ragtune_check_name('adapter', name);
	SELECT * INTO previous FROM ragtune_adapters a WHERE a.name = name FOR UPDATE;
	IF FOUND THEN
		PERFORM ragtune_require_owner(caller, previous.owner, format('replace adapter "%s"', name));
		IF NOT replace THEN
			RAISE EXCEPTION 'adapter "%" already exists', name USING ERRCODE = 'duplicate_object',
				HINT = 'Pass replace => true to replace it, or drop_adapter() it first.';
		END IF;
		DELETE FROM ragtune_adapters a WHERE a.name = name;
		PERFORM lo_unlink(previous.weights);
	END IF;
	stored := lo_from_bytea(0, weights);
	EXECUTE format('GRANT SELECT ON LARGE OBJECT %s TO %s', stored, caller::regrole);
	PERFORM ragtune_large_object_depends_on_extension(stored);
	INSERT INTO ragtune_adapters AS a (name, kind, base_model, weights, weights_bytes, options, metrics, owner)
	VALUES (name, kind, base_model, stored, length(weights), options, metrics, caller::regrole);
	RETURN name;
END $$;
REVOKE ALL ON FUNCTION ragtune_store_adapter_as(oid, text, text, text, bytea, jsonb, jsonb, boolean) FROM PUBLIC;

-- Trains an adapter with the caller's rights and stores it (what finetune_adapter() does
-- after its early checks); returns the stored row's metrics.
CREATE FUNCTION ragtune_finetune_adapter(name text, training_data regclass, kind text, input_column text,
	target_column text, base_model text, rank integer, epochs integer, learning_rate double precision,
	batch_size integer, validation_fraction double precision, seed bigint, system text, hard_negatives_from text,
	copy_from_prompt boolean, replace boolean, replace_if_better boolean)
	RETURNS jsonb
	AS 'MODULE_PATHNAME', 'ragtune_finetune_adapter_wrapper' LANGUAGE C VOLATILE
	SET search_path = pg_catalog, @extschema@, pg_temp;

-- Trains an adapter from the rows of training_data, on CPU in this backend, and stores
-- it. Generator adapters read input_column (default prompt) and target_column (default
-- completion); retrieval adapters read query and passage, and with hard_negatives_from (a
-- RAG source over the same embedding model) learn to rank the source's nearest other rows
-- below each query's passage. With copy_from_prompt, a generator adapter also learns when
-- to continue an answer with what follows in the prompt the words it just quoted (a copy
-- head, for answers taken from retrieved passages). Rows with a NULL are skipped
-- and counted; validation_fraction of the rows (chosen by a hash of their texts and the
-- seed) is held out. A NOTICE and the view ragtune_finetune_progress report each epoch;
-- cancel and statement_timeout stop it within a batch, leaving the catalog unchanged.
-- With replace_if_better, an adapter of that name is replaced only when the new one does
-- at least as well on the new run's validation rows (NLL per token, or recall@5), both
-- measured there; otherwise the stored one is kept, with a NOTICE (for scheduled retraining).
CREATE PROCEDURE finetune_adapter(name text, training_data regclass, kind text DEFAULT 'generator',
	input_column name DEFAULT NULL, target_column name DEFAULT NULL, base_model text DEFAULT NULL,
	rank integer DEFAULT 8, epochs integer DEFAULT 3, learning_rate double precision DEFAULT 0.001,
	batch_size integer DEFAULT 64, validation_fraction double precision DEFAULT 0.1, seed bigint DEFAULT 0,
	system text DEFAULT NULL, replace boolean DEFAULT false, hard_negatives_from text DEFAULT NULL,
	copy_from_prompt boolean DEFAULT false, replace_if_better boolean DEFAULT false)
LANGUAGE plpgsql
SET search_path = pg_catalog, @extschema@, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	owner regrole;
	metrics jsonb;
BEGIN
	PERFORM ragtune_require_primary('finetune_adapter');
	PERFORM ragtune_check_name('adapter', name);
	-- Checked before training, to fail early; storing checks again.
	SELECT a.owner INTO owner FROM ragtune_adapters a WHERE a.name = name;
	IF FOUND THEN
		PERFORM ragtune_require_owner(current_user::regrole, owner, format('replace adapter "%s"', name));
		IF NOT replace AND NOT replace_if_better THEN
			RAISE EXCEPTION 'adapter "%" already exists', name USING ERRCODE = 'duplicate_object',
				HINT = 'Pass replace => true to replace it, or drop_adapter() it first.';
		END IF;
	END IF;
	metrics := ragtune_finetune_adapter(name, training_data, kind, input_column, target_column, base_model, rank, epochs,
		learning_rate, batch_size, validation_fraction, seed, system, hard_negatives_from, copy_from_prompt, replace,
		replace_if_better);
	IF NOT (metrics -> 'gate' ->> 'replaces')::boolean THEN
		RETURN;
	END IF;
	RAISE NOTICE 'adapter "%" (% for %) stored: % rows, % s', name, kind,
		(SELECT a.base_model FROM ragtune_adapters a WHERE a.name = name),
		metrics -> 'rows' ->> 'used', round((metrics -> 'seconds' ->> 'total')::numeric, 1);
END $$;
COMMENT ON PROCEDURE finetune_adapter(text, regclass, text, name, name, text, integer, integer, double precision,
	integer, double precision, bigint, text, boolean, text, boolean, boolean) IS
	'Trains a generator adapter (prompt/completion rows) or retrieval adapter (query/passage rows) and stores it';

CREATE FUNCTION evaluate_adapter(name text, data regclass, input_column text DEFAULT NULL,
	target_column text DEFAULT NULL, k integer DEFAULT 5) RETURNS jsonb
	AS 'MODULE_PATHNAME', 'ragtune_evaluate_adapter_wrapper' LANGUAGE C VOLATILE
	SET search_path = pg_catalog, @extschema@, pg_temp;
COMMENT ON FUNCTION evaluate_adapter(text, regclass, text, text, integer) IS
	'Measures an adapter on rows it was not trained on: mean NLL per completion token with and without it (generator), or recall@k among the rows'' passages (retrieval)';

CREATE FUNCTION ragtune_drop_adapter_as(caller oid, name text) RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, @extschema@, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	dropped ragtune_adapters;
BEGIN
	SELECT * INTO dropped FROM ragtune_adapters a WHERE a.name = name FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'adapter "%" does not exist', name USING ERRCODE = 'undefined_object';
	END IF;
	PERFORM ragtune_require_owner(caller, dropped.owner, format('drop adapter "%s"', name));
	DELETE FROM ragtune_adapters a WHERE a.name = name;
	PERFORM lo_unlink(dropped.weights);
END $$;
REVOKE ALL ON FUNCTION ragtune_drop_adapter_as(oid, text) FROM PUBLIC;
CREATE FUNCTION drop_adapter(name text) RETURNS void
	AS 'MODULE_PATHNAME', 'drop_adapter_wrapper' LANGUAGE C VOLATILE STRICT
	SET search_path = pg_catalog, @extschema@, pg_temp;

CREATE FUNCTION ragtune_adapter_privilege_as(caller oid, name text, role text, do_grant boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, @extschema@, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	adapter ragtune_adapters;
BEGIN
	SELECT * INTO adapter FROM ragtune_adapters a WHERE a.name = name FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'adapter "%" does not exist', name USING ERRCODE = 'undefined_object';
	END IF;
	PERFORM ragtune_large_object_privilege(caller, adapter.owner, format('adapter "%s"', name), ARRAY[adapter.weights],
		role, do_grant);
END $$;
REVOKE ALL ON FUNCTION ragtune_adapter_privilege_as(oid, text, text, boolean) FROM PUBLIC;
CREATE FUNCTION grant_adapter(name text, role text) RETURNS void
	AS 'MODULE_PATHNAME', 'grant_adapter_wrapper' LANGUAGE C VOLATILE STRICT
	SET search_path = pg_catalog, @extschema@, pg_temp;
CREATE FUNCTION revoke_adapter(name text, role text) RETURNS void
	AS 'MODULE_PATHNAME', 'revoke_adapter_wrapper' LANGUAGE C VOLATILE STRICT
	SET search_path = pg_catalog, @extschema@, pg_temp;

-- Training runs in progress, one row per backend, visible to members of the role that
-- runs it and of pg_read_all_stats (as pg_stat_progress_* views show their details): the
-- function itself returns only those.
CREATE FUNCTION ragtune_finetune_progress_reports() RETURNS SETOF jsonb
	AS 'MODULE_PATHNAME', 'ragtune_finetune_progress_reports_wrapper' LANGUAGE C VOLATILE;
CREATE VIEW ragtune_finetune_progress AS
SELECT r.pid, s.usename, r.adapter, r.kind, r.base_model, r.phase, r.rows_seen, r.rows_total, r.epoch, r.epochs,
	r.train_loss, r.validation_loss, r.validation_recall, to_timestamp(r.started_at) AS started_at,
	make_interval(secs => r.eta_seconds) AS eta
FROM ragtune_finetune_progress_reports() j
	CROSS JOIN LATERAL jsonb_to_record(j) AS r(pid integer, adapter text, kind text, base_model text, phase text,
		rows_seen bigint, rows_total bigint, epoch integer, epochs integer, train_loss double precision,
		validation_loss double precision, validation_recall double precision, started_at double precision,
		eta_seconds double precision)
	JOIN pg_stat_activity s ON s.pid = r.pid AND s.backend_start <= to_timestamp(r.started_at)
WHERE pg_has_role(s.usesysid, 'MEMBER') OR pg_has_role('pg_read_all_stats', 'MEMBER');
COMMENT ON VIEW ragtune_finetune_progress IS
	'finetune_adapter() runs in progress: phase, rows read, epoch, losses and time left';
GRANT SELECT ON ragtune_finetune_progress TO PUBLIC;
