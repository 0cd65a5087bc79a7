-- ragtune: the model catalog (ONNX graph + tokenizer.json + config per model), embed(),
-- chunk(), and keeping an embedding column current.
--
-- A model's ONNX bytes live in a large object: pg_dump and streaming replicas carry
-- them, models beyond bytea's 1 GB fit, and who may use a model is the ordinary
-- GRANT SELECT ON LARGE OBJECT (grant_model() and revoke_model() issue it by name).
-- Everything runs with the caller's rights; row-level security lets members of a
-- model's owner role replace or drop it.

CREATE SEQUENCE ragtune_model_version;

CREATE TABLE ragtune_models (
	name text PRIMARY KEY
		CONSTRAINT ragtune_models_name_check CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$'),
	kind text NOT NULL CHECK (kind IN ('embedding', 'generator')),
	config jsonb NOT NULL,
	onnx oid NOT NULL,
	onnx_bytes bigint NOT NULL,
	tokenizer bytea NOT NULL,
	-- Generators only, optional: the output projection as float16 [vocab, hidden]
	-- (lm_head.f16 beside a converted model), which training generator adapters needs.
	lm_head oid,
	owner regrole NOT NULL DEFAULT current_user::regrole,
	-- New for every registration: backends reload a model whose version changed.
	version bigint NOT NULL DEFAULT nextval('ragtune_model_version'),
	registered_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE ragtune_models IS 'Models registered with ragtune; the ONNX bytes are in large object "onnx"';
SELECT pg_catalog.pg_extension_config_dump('ragtune_models', '');
SELECT pg_catalog.pg_extension_config_dump('ragtune_model_version', '');

ALTER TABLE ragtune_models ENABLE ROW LEVEL SECURITY;
CREATE POLICY ragtune_models_read ON ragtune_models FOR SELECT USING (true);
CREATE POLICY ragtune_models_add ON ragtune_models FOR INSERT WITH CHECK (pg_has_role(owner, 'MEMBER'));
CREATE POLICY ragtune_models_change ON ragtune_models FOR UPDATE USING (pg_has_role(owner, 'MEMBER'));
CREATE POLICY ragtune_models_remove ON ragtune_models FOR DELETE USING (pg_has_role(owner, 'MEMBER'));
GRANT SELECT, INSERT, UPDATE, DELETE ON ragtune_models TO PUBLIC;
GRANT USAGE ON SEQUENCE ragtune_model_version TO PUBLIC;

-- Checks a model before it is registered: the config (returned normalized), the
-- tokenizer, and for embedding models an ONNX Runtime session with the right inputs
-- and output size. Reads the large object with the caller's rights.
-- lm_head_bytes, when not NULL, must fit a generator's hidden_states output.
CREATE FUNCTION ragtune_check_model(onnx oid, tokenizer bytea, config jsonb, lm_head_bytes bigint) RETURNS jsonb
	AS 'MODULE_PATHNAME', 'ragtune_check_model_wrapper' LANGUAGE C VOLATILE;

-- Copies a server file into a new large object owned by the caller (NULL for a missing
-- file when missing_ok); superusers and members of pg_read_server_files only.
CREATE FUNCTION ragtune_file_to_large_object(path text, missing_ok boolean DEFAULT false) RETURNS oid
	AS 'MODULE_PATHNAME', 'ragtune_file_to_large_object_wrapper' LANGUAGE C VOLATILE STRICT;
CREATE FUNCTION ragtune_read_file(path text) RETURNS bytea
	AS 'MODULE_PATHNAME', 'ragtune_read_file_wrapper' LANGUAGE C VOLATILE STRICT;

CREATE FUNCTION ragtune_large_object_size(large_object oid) RETURNS bigint LANGUAGE plpgsql STRICT AS $$
DECLARE
	descriptor integer := lo_open(large_object, 262144);  -- INV_READ, with the caller's rights
	size bigint := lo_lseek64(descriptor, 0, 2);
BEGIN
	PERFORM lo_close(descriptor);
	RETURN size;
END $$;

CREATE FUNCTION register_model(name text, onnx oid, tokenizer bytea, config jsonb, replace boolean DEFAULT false,
	lm_head oid DEFAULT NULL)
RETURNS ragtune_models LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
	checked jsonb;
	previous ragtune_models;
	registered ragtune_models;
BEGIN
	IF name !~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$' THEN
		RAISE EXCEPTION 'invalid model name "%"', name USING ERRCODE = 'invalid_name',
			HINT = 'Use up to 63 letters, digits and _ . : -, starting with a letter or digit.';
	END IF;
	checked := ragtune_check_model(onnx, tokenizer, config, ragtune_large_object_size(lm_head));
	SELECT * INTO previous FROM ragtune_models m WHERE m.name = name FOR UPDATE;
	IF FOUND THEN
		PERFORM ragtune_check_model_owner(name);
		IF NOT replace THEN
			RAISE EXCEPTION 'model "%" already exists', name USING ERRCODE = 'duplicate_object',
				HINT = 'Pass replace => true to replace it, or drop_model() it first.';
		END IF;
		DELETE FROM ragtune_models m WHERE m.name = name;
		IF previous.onnx <> onnx THEN
			PERFORM lo_unlink(previous.onnx);
		END IF;
		IF previous.lm_head IS DISTINCT FROM lm_head AND previous.lm_head IS NOT NULL THEN
			PERFORM lo_unlink(previous.lm_head);
		END IF;
	END IF;
	INSERT INTO ragtune_models AS m (name, kind, config, onnx, onnx_bytes, tokenizer, lm_head)
	VALUES (name, checked ->> 'kind', checked, onnx, ragtune_large_object_size(onnx), tokenizer, lm_head)
	RETURNING * INTO registered;
	RETURN registered;
END $$;
COMMENT ON FUNCTION register_model(text, oid, bytea, jsonb, boolean, oid) IS
	'Registers a model whose ONNX graph (and a generator''s optional lm_head) is already a large object (from lo_import on the client, say)';

CREATE FUNCTION register_model(name text, onnx bytea, tokenizer bytea, config jsonb, replace boolean DEFAULT false,
	lm_head bytea DEFAULT NULL)
RETURNS ragtune_models LANGUAGE sql AS $$
	SELECT register_model(name, lo_from_bytea(0, onnx), tokenizer, config, replace,
		CASE WHEN lm_head IS NOT NULL THEN lo_from_bytea(0, lm_head) END)
$$;
COMMENT ON FUNCTION register_model(text, bytea, bytea, jsonb, boolean, bytea) IS
	'Registers a model from its bytes: ONNX graph, tokenizer.json, config and, for generators, optionally lm_head.f16';

CREATE FUNCTION register_model_from_files(name text, directory text, replace boolean DEFAULT false)
RETURNS ragtune_models LANGUAGE sql AS $$
	SELECT register_model(name,
		ragtune_file_to_large_object(directory || '/model.onnx'),
		ragtune_read_file(directory || '/tokenizer.json'),
		convert_from(ragtune_read_file(directory || '/config.json'), 'UTF8')::jsonb,
		replace,
		ragtune_file_to_large_object(directory || '/lm_head.f16', missing_ok => true))
$$;
COMMENT ON FUNCTION register_model_from_files(text, text, boolean) IS
	'Registers model.onnx, tokenizer.json, config.json and lm_head.f16 if present from a server directory (superusers and pg_read_server_files only)';

CREATE FUNCTION ragtune_check_model_owner(name text) RETURNS void LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
	owner regrole;
BEGIN
	SELECT m.owner INTO owner FROM ragtune_models m WHERE m.name = name;
	IF FOUND AND NOT pg_has_role(owner, 'MEMBER') THEN
		RAISE EXCEPTION 'must be a member of role "%" to change model "%"', owner, name
			USING ERRCODE = 'insufficient_privilege';
	END IF;
END $$;

CREATE FUNCTION drop_model(name text) RETURNS void LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
	dropped ragtune_models;
BEGIN
	PERFORM ragtune_check_model_owner(name);
	DELETE FROM ragtune_models m WHERE m.name = name RETURNING * INTO dropped;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'model "%" does not exist', name USING ERRCODE = 'undefined_object';
	END IF;
	PERFORM lo_unlink(dropped.onnx);
	IF dropped.lm_head IS NOT NULL THEN
		PERFORM lo_unlink(dropped.lm_head);
	END IF;
END $$;

-- GRANT/REVOKE SELECT on large objects by oid (for models and adapters).
CREATE FUNCTION ragtune_large_object_privilege(large_objects oid[], role text, do_grant boolean) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
	large_object oid;
	grantee text := CASE WHEN lower(role) = 'public' THEN 'PUBLIC' ELSE quote_ident(role) END;
BEGIN
	FOREACH large_object IN ARRAY large_objects LOOP
		IF do_grant THEN
			EXECUTE format('GRANT SELECT ON LARGE OBJECT %s TO %s', large_object, grantee);
		ELSE
			EXECUTE format('REVOKE SELECT ON LARGE OBJECT %s FROM %s', large_object, grantee);
		END IF;
	END LOOP;
END $$;

-- Using a model needs SELECT on its large objects: the graph, and lm_head for training.
CREATE FUNCTION ragtune_model_privilege(name text, role text, do_grant boolean) RETURNS void LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
	model ragtune_models;
BEGIN
	SELECT * INTO model FROM ragtune_models m WHERE m.name = name;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'model "%" does not exist', name USING ERRCODE = 'undefined_object';
	END IF;
	PERFORM ragtune_check_model_owner(name);
	PERFORM ragtune_large_object_privilege(array_remove(ARRAY[model.onnx, model.lm_head], NULL), role, do_grant);
END $$;
CREATE FUNCTION grant_model(name text, role text) RETURNS void LANGUAGE sql
	AS $$ SELECT ragtune_model_privilege(name, role, true) $$;
CREATE FUNCTION revoke_model(name text, role text) RETURNS void LANGUAGE sql
	AS $$ SELECT ragtune_model_privilege(name, role, false) $$;

-- Embeddings. model NULL means the setting ragtune.default_embedding_model.
CREATE FUNCTION embed(input text, model text DEFAULT NULL) RETURNS vector
	AS 'MODULE_PATHNAME', 'embed_text_wrapper' LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION embed(text, text) IS
	'Embeds a text with an embedding model; texts beyond the model''s max_tokens keep their first tokens';
CREATE FUNCTION embed(inputs text[], model text DEFAULT NULL) RETURNS vector[]
	AS 'MODULE_PATHNAME', 'embed_texts_wrapper' LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION embed(text[], text) IS 'Embeds a batch of texts in one ONNX Runtime call';

CREATE FUNCTION chunk(input text, max_tokens integer, overlap integer DEFAULT 0, model text DEFAULT NULL)
	RETURNS SETOF text
	AS 'MODULE_PATHNAME', 'chunk_text_wrapper' LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION chunk(text, integer, integer, text) IS
	'Splits a text into pieces of at most max_tokens model tokens, preferring paragraph, then sentence, then word boundaries';

-- Keeping an embedding column current: embed_column() declares it, a trigger fills the
-- column on INSERT and on UPDATE of the text column, embed_backfill() fills old rows.
CREATE TABLE ragtune_embedded_columns (
	source regclass NOT NULL,
	text_column name NOT NULL,
	embedding_column name NOT NULL,
	model text,
	PRIMARY KEY (source, embedding_column)
);
SELECT pg_catalog.pg_extension_config_dump('ragtune_embedded_columns', '');
GRANT SELECT ON ragtune_embedded_columns TO PUBLIC;

CREATE FUNCTION ragtune_embed_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
	content text := to_jsonb(NEW) ->> TG_ARGV[0];
BEGIN
	NEW := jsonb_populate_record(NEW, jsonb_build_object(TG_ARGV[1],
		CASE WHEN content IS NULL THEN NULL ELSE embed(content, NULLIF(TG_ARGV[2], ''))::text END));
	RETURN NEW;
END $$;

CREATE FUNCTION embed_column(source regclass, text_column name, embedding_column name, model text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	PERFORM 1 FROM pg_attribute WHERE attrelid = source AND attname = text_column AND NOT attisdropped
		AND atttypid IN ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype);
	IF NOT FOUND THEN
		RAISE EXCEPTION 'column "%" of % is not a text column', text_column, source USING ERRCODE = 'undefined_column';
	END IF;
	PERFORM 1 FROM pg_attribute WHERE attrelid = source AND attname = embedding_column AND NOT attisdropped
		AND atttypid = 'vector'::regtype;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'column "%" of % is not a vector column', embedding_column, source USING ERRCODE = 'undefined_column';
	END IF;
	IF EXISTS (SELECT FROM pg_trigger WHERE tgrelid = source AND tgname = 'ragtune_embed_' || embedding_column) THEN
		EXECUTE format('DROP TRIGGER %I ON %s', 'ragtune_embed_' || embedding_column, source);
	END IF;
	EXECUTE format('CREATE TRIGGER %I BEFORE INSERT OR UPDATE OF %I ON %s FOR EACH ROW EXECUTE FUNCTION ragtune_embed_row(%L, %L, %L)',
		'ragtune_embed_' || embedding_column, text_column, source, text_column, embedding_column, coalesce(model, ''));
	DELETE FROM ragtune_embedded_columns c WHERE c.source = embed_column.source AND c.embedding_column = embed_column.embedding_column;
	INSERT INTO ragtune_embedded_columns VALUES (source, text_column, embedding_column, model);
END $$;
COMMENT ON FUNCTION embed_column(regclass, name, name, text) IS
	'Fills embedding_column from text_column on every INSERT and UPDATE of the text; embed_backfill() fills existing rows';

-- Fills the embedding of rows that have text but no embedding, batch_size rows per
-- transaction, with a NOTICE per batch (rows done, rate, time left). Cancel keeps the
-- batches already committed; running it again goes on from there.
CREATE PROCEDURE embed_backfill(source regclass, embedding_column name, batch_size integer DEFAULT 100)
LANGUAGE plpgsql AS $$
DECLARE
	declared ragtune_embedded_columns;
	todo bigint;
	done bigint := 0;
	batch bigint;
	started timestamptz := clock_timestamp();
	rate double precision;
BEGIN
	SELECT * INTO declared FROM ragtune_embedded_columns c
		WHERE c.source = embed_backfill.source AND c.embedding_column = embed_backfill.embedding_column;
	IF NOT FOUND THEN
		RAISE EXCEPTION '%.% is not an embedded column', source, embedding_column USING ERRCODE = 'undefined_object',
			HINT = 'Declare it with embed_column() first.';
	END IF;
	IF batch_size < 1 THEN
		RAISE EXCEPTION 'batch_size must be at least 1' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	EXECUTE format('SELECT count(*) FROM %s WHERE %I IS NULL AND %I IS NOT NULL', source, embedding_column, declared.text_column)
		INTO todo;
	LOOP
		EXECUTE format('UPDATE %1$s SET %2$I = embed(%3$I, %4$L) WHERE ctid = ANY (ARRAY(
			SELECT ctid FROM %1$s WHERE %2$I IS NULL AND %3$I IS NOT NULL LIMIT %5$s FOR UPDATE SKIP LOCKED))',
			source, embedding_column, declared.text_column, declared.model, batch_size);
		GET DIAGNOSTICS batch = ROW_COUNT;
		EXIT WHEN batch = 0;
		done := done + batch;
		COMMIT;
		rate := done / greatest(extract(epoch FROM clock_timestamp() - started), 0.001);
		-- Other sessions may be filling the same column: what is left is at most this.
		RAISE NOTICE 'embed_backfill %.%: % rows done by this call, % rows/s; at most % left, about % s at this rate',
			source, embedding_column, done, round(rate::numeric, 1), greatest(todo - done, 0),
			round((greatest(todo - done, 0) / rate)::numeric);
	END LOOP;
END $$;
