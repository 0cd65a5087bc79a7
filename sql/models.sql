-- ragtune: the model catalog (ONNX graph + tokenizer.json + config per model), embed(),
-- chunk(), and keeping an embedding column current.
--
-- A model's ONNX bytes live in a large object: pg_dump and streaming replicas carry
-- them, models beyond bytea's 1 GB fit, and who may use a model is the ordinary
-- GRANT SELECT ON LARGE OBJECT (grant_model() and revoke_model() issue it by name).
-- Everything runs with the caller's rights; row-level security lets members of a
-- model's owner role replace or drop it.

-- Privileges (README "Security"). The catalogs are readable by everyone and writable by
-- no one but the extension's owner: every change goes through the functions below, which
-- run the change as the extension's owner (src/catalog_changes.rs) on behalf of the
-- calling role and check what that role may do. Registering, replacing and dropping
-- models needs superuser or membership in ragtune_admin (a role created here); changing or
-- granting a model, adapter or RAG source needs membership in its owner role; using one
-- needs a grant from its owner. Large objects holding models' and adapters' bytes belong to
-- the extension's owner, are never shared between entries, are removed with their entry
-- and (through an automatic dependency) with the extension.
DO $$
BEGIN
	IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'ragtune_admin') THEN
		CREATE ROLE ragtune_admin NOLOGIN;
	END IF;
END $$;

CREATE SEQUENCE ragtune_model_version;
REVOKE ALL ON SEQUENCE ragtune_model_version FROM PUBLIC;

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
	owner regrole NOT NULL,
	-- New for every registration: backends reload a model whose version changed.
	version bigint NOT NULL DEFAULT nextval('ragtune_model_version'),
	registered_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE ragtune_models IS 'Models registered with ragtune; the ONNX bytes are in large object "onnx"';
SELECT pg_catalog.pg_extension_config_dump('ragtune_models', '');
SELECT pg_catalog.pg_extension_config_dump('ragtune_model_version', '');
REVOKE ALL ON ragtune_models FROM PUBLIC;
GRANT SELECT ON ragtune_models TO PUBLIC;

-- The checks every catalog change makes, for the calling role `caller`.
CREATE FUNCTION ragtune_check_name(what text, name text) RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF name IS NULL OR name !~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$' THEN
		RAISE EXCEPTION 'invalid % name "%"', what, name USING ERRCODE = 'invalid_name',
			HINT = 'Use up to 63 letters, digits and _ . : -, starting with a letter or digit.';
	END IF;
END $$;

CREATE FUNCTION ragtune_require_admin(caller oid, action text) RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF NOT pg_has_role(caller, 'ragtune_admin', 'USAGE') THEN
		RAISE EXCEPTION 'permission denied to %', action USING ERRCODE = 'insufficient_privilege',
			DETAIL = 'Only superusers and members of ragtune_admin may register, replace or drop models.',
			HINT = 'A superuser can GRANT ragtune_admin TO the role.';
	END IF;
END $$;

-- What writes (registering models, training adapters, filling embeddings, any catalog
-- change) cannot run on a hot standby: one clear ERROR, raised before anything writes.
CREATE FUNCTION ragtune_require_primary(what text) RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	IF pg_is_in_recovery() THEN
		RAISE EXCEPTION '% cannot run on a hot standby', what USING ERRCODE = 'read_only_sql_transaction',
			DETAIL = 'This server is a standby: it replays the primary''s changes and makes none of its own.',
			HINT = 'Run it on the primary server; what it stores reaches the standbys through replication.';
	END IF;
END $$;

-- `caller` must have the privileges of `owner` (a catalog entry's owner role) to `action`.
CREATE FUNCTION ragtune_require_owner(caller oid, owner oid, action text) RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	-- An owner role dropped since leaves the entry to superusers.
	allowed boolean := CASE WHEN EXISTS (SELECT FROM pg_roles r WHERE r.oid = owner) THEN pg_has_role(caller, owner, 'USAGE')
		ELSE coalesce((SELECT r.rolsuper FROM pg_roles r WHERE r.oid = caller), false) END;
BEGIN
	IF NOT allowed THEN
		RAISE EXCEPTION 'must be a member of role "%" to %', owner::regrole, action
			USING ERRCODE = 'insufficient_privilege';
	END IF;
END $$;

-- Size of a large object the caller may read (NULL for NULL).
CREATE FUNCTION ragtune_large_object_size(large_object oid) RETURNS bigint LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	descriptor integer := lo_open(large_object, 262144);  -- INV_READ, with the caller's rights
	size bigint := lo_lseek64(descriptor, 0, 2);
BEGIN
	PERFORM lo_close(descriptor);
	RETURN size;
END $$;

-- Records that large object `large_object` goes with the extension (DROP EXTENSION removes it).
CREATE FUNCTION ragtune_large_object_depends_on_extension(large_object oid) RETURNS void
	AS 'MODULE_PATHNAME', 'ragtune_large_object_depends_on_extension_wrapper' LANGUAGE C STRICT;
REVOKE ALL ON FUNCTION ragtune_large_object_depends_on_extension(oid) FROM PUBLIC;

-- A copy of large object `source` (which `caller` must own), owned by the extension's owner,
-- readable by `caller` and removed with the extension: what a catalog entry keeps.
CREATE FUNCTION ragtune_copy_large_object(caller oid, source oid) RETURNS oid LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	source_owner oid;
	copy oid;
	size bigint;
	offset_ bigint := 0;
	piece constant integer := 33554432;
BEGIN
	SELECT lomowner INTO source_owner FROM pg_largeobject_metadata WHERE oid = source;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'large object % does not exist', source USING ERRCODE = 'undefined_object';
	END IF;
	PERFORM @extschema@.ragtune_require_owner(caller, source_owner, format('register large object %s', source));
	copy := lo_create(0);
	size := @extschema@.ragtune_large_object_size(source);
	WHILE offset_ < size LOOP
		PERFORM lo_put(copy, offset_, lo_get(source, offset_, piece));
		offset_ := offset_ + piece;
	END LOOP;
	EXECUTE format('GRANT SELECT ON LARGE OBJECT %s TO %s', copy, caller::regrole);
	PERFORM @extschema@.ragtune_large_object_depends_on_extension(copy);
	RETURN copy;
END $$;
REVOKE ALL ON FUNCTION ragtune_copy_large_object(oid, oid) FROM PUBLIC;

-- Stores a model `caller` registers (checked before by ragtune_register_model, which is
-- the only caller): copies of its large objects, its previous version removed.
CREATE FUNCTION ragtune_store_model_as(caller oid, name text, config jsonb, onnx oid, tokenizer bytea, lm_head oid,
	replace boolean) RETURNS text LANGUAGE plpgsql
SET search_path = pg_catalog, @extschema@, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	previous ragtune_models;
	-- Roles the replaced model was granted to (0: PUBLIC): the new one keeps them.
	grantees oid[] := '{}';
	stored ragtune_models;
	large_object oid;
	grantee oid;
BEGIN
	PERFORM ragtune_check_name('model', name);
	PERFORM ragtune_require_admin(caller, format('register model "%s"', name));
	SELECT * INTO previous FROM ragtune_models m WHERE m.name = name FOR UPDATE;
	IF FOUND THEN
		PERFORM ragtune_require_owner(caller, previous.owner, format('replace model "%s"', name));
		IF NOT replace THEN
			RAISE EXCEPTION 'model "%" already exists', name USING ERRCODE = 'duplicate_object',
				HINT = 'Pass replace => true to replace it, or drop_model() it first.';
		END IF;
		SELECT coalesce(array_agg(DISTINCT a.grantee), '{}') INTO grantees
		FROM pg_largeobject_metadata l, aclexplode(l.lomacl) a
		WHERE l.oid = previous.onnx AND a.privilege_type = 'SELECT' AND a.grantee <> l.lomowner;
		DELETE FROM ragtune_models m WHERE m.name = name;
		PERFORM lo_unlink(previous.onnx);
		IF previous.lm_head IS NOT NULL THEN
			PERFORM lo_unlink(previous.lm_head);
		END IF;
	END IF;
	INSERT INTO ragtune_models AS m (name, kind, config, onnx, onnx_bytes, tokenizer, lm_head, owner)
	VALUES (name, config ->> 'kind', config, ragtune_copy_large_object(caller, onnx), ragtune_large_object_size(onnx),
		tokenizer, CASE WHEN lm_head IS NOT NULL THEN ragtune_copy_large_object(caller, lm_head) END, caller::regrole)
	RETURNING * INTO stored;
	FOREACH grantee IN ARRAY grantees LOOP
		FOREACH large_object IN ARRAY array_remove(ARRAY[stored.onnx, stored.lm_head], NULL) LOOP
			EXECUTE format('GRANT SELECT ON LARGE OBJECT %s TO %s', large_object,
				CASE WHEN grantee = 0 THEN 'PUBLIC' ELSE grantee::regrole::text END);
		END LOOP;
	END LOOP;
	RETURN name;
END $$;
REVOKE ALL ON FUNCTION ragtune_store_model_as(oid, text, jsonb, oid, bytea, oid, boolean) FROM PUBLIC;

-- Checks a model (its config, tokenizer and graph, read with the caller's rights) and
-- stores a copy of it; returns its name. Superusers and members of ragtune_admin only.
CREATE FUNCTION ragtune_register_model(name text, onnx oid, tokenizer bytea, config jsonb, replace boolean, lm_head oid)
	RETURNS text
	AS 'MODULE_PATHNAME', 'ragtune_register_model_wrapper' LANGUAGE C VOLATILE
	SET search_path = pg_catalog, @extschema@, pg_temp;

CREATE FUNCTION register_model(name text, onnx oid, tokenizer bytea, config jsonb, replace boolean DEFAULT false,
	lm_head oid DEFAULT NULL)
RETURNS ragtune_models LANGUAGE plpgsql
SET search_path = pg_catalog, @extschema@, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	registered_name text := ragtune_register_model(name, onnx, tokenizer, config, replace, lm_head);
	registered ragtune_models;
BEGIN
	SELECT * INTO registered FROM ragtune_models m WHERE m.name = registered_name;
	RETURN registered;
END $$;
COMMENT ON FUNCTION register_model(text, oid, bytea, jsonb, boolean, oid) IS
	'Registers a copy of a model whose ONNX graph (and a generator''s optional lm_head) is a large object the caller owns (from lo_import on the client, say)';

CREATE FUNCTION register_model(name text, onnx bytea, tokenizer bytea, config jsonb, replace boolean DEFAULT false,
	lm_head bytea DEFAULT NULL)
RETURNS ragtune_models LANGUAGE plpgsql
SET search_path = pg_catalog, @extschema@, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	onnx_object oid;
	lm_head_object oid;
	registered ragtune_models;
BEGIN
	PERFORM ragtune_require_primary('register_model');
	onnx_object := lo_from_bytea(0, onnx);
	lm_head_object := CASE WHEN lm_head IS NOT NULL THEN lo_from_bytea(0, lm_head) END;
	registered := register_model(name, onnx_object, tokenizer, config, replace, lm_head_object);
	PERFORM lo_unlink(onnx_object);
	IF lm_head_object IS NOT NULL THEN
		PERFORM lo_unlink(lm_head_object);
	END IF;
	RETURN registered;
END $$;
COMMENT ON FUNCTION register_model(text, bytea, bytea, jsonb, boolean, bytea) IS
	'Registers a model from its bytes: ONNX graph, tokenizer.json, config and, for generators, optionally lm_head.f16';

-- Copies a server file into a new large object owned by the caller (NULL for a missing
-- file when missing_ok); superusers and members of pg_read_server_files only.
CREATE FUNCTION ragtune_file_to_large_object(path text, missing_ok boolean DEFAULT false) RETURNS oid
	AS 'MODULE_PATHNAME', 'ragtune_file_to_large_object_wrapper' LANGUAGE C VOLATILE STRICT
	SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION ragtune_read_file(path text) RETURNS bytea
	AS 'MODULE_PATHNAME', 'ragtune_read_file_wrapper' LANGUAGE C VOLATILE STRICT;

CREATE FUNCTION register_model_from_files(name text, directory text, replace boolean DEFAULT false)
RETURNS ragtune_models LANGUAGE plpgsql
SET search_path = pg_catalog, @extschema@, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	onnx_object oid;
	lm_head_object oid;
	registered ragtune_models;
BEGIN
	PERFORM ragtune_require_primary('register_model_from_files');
	onnx_object := ragtune_file_to_large_object(directory || '/model.onnx');
	lm_head_object := ragtune_file_to_large_object(directory || '/lm_head.f16', missing_ok => true);
	registered := register_model(name, onnx_object, ragtune_read_file(directory || '/tokenizer.json'),
		convert_from(ragtune_read_file(directory || '/config.json'), 'UTF8')::jsonb, replace, lm_head_object);
	PERFORM lo_unlink(onnx_object);
	IF lm_head_object IS NOT NULL THEN
		PERFORM lo_unlink(lm_head_object);
	END IF;
	RETURN registered;
END $$;
COMMENT ON FUNCTION register_model_from_files(text, text, boolean) IS
	'Registers model.onnx, tokenizer.json, config.json and lm_head.f16 if present from a server directory (superusers and pg_read_server_files only)';

CREATE FUNCTION ragtune_drop_model_as(caller oid, name text) RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, @extschema@, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	dropped ragtune_models;
BEGIN
	PERFORM ragtune_require_admin(caller, format('drop model "%s"', name));
	SELECT * INTO dropped FROM ragtune_models m WHERE m.name = name FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'model "%" does not exist', name USING ERRCODE = 'undefined_object';
	END IF;
	PERFORM ragtune_require_owner(caller, dropped.owner, format('drop model "%s"', name));
	DELETE FROM ragtune_models m WHERE m.name = name;
	PERFORM lo_unlink(dropped.onnx);
	IF dropped.lm_head IS NOT NULL THEN
		PERFORM lo_unlink(dropped.lm_head);
	END IF;
END $$;
REVOKE ALL ON FUNCTION ragtune_drop_model_as(oid, text) FROM PUBLIC;
CREATE FUNCTION drop_model(name text) RETURNS void
	AS 'MODULE_PATHNAME', 'drop_model_wrapper' LANGUAGE C VOLATILE STRICT
	SET search_path = pg_catalog, @extschema@, pg_temp;

-- GRANT/REVOKE SELECT on an entry's large objects, for `caller` with the privileges of
-- its owner. role is a role name or PUBLIC.
CREATE FUNCTION ragtune_large_object_privilege(caller oid, owner oid, what text, large_objects oid[], role text,
	do_grant boolean) RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, @extschema@, pg_temp AS $$
DECLARE
	large_object oid;
	grantee text;
BEGIN
	PERFORM ragtune_require_owner(caller, owner, format('%s %s', CASE WHEN do_grant THEN 'grant' ELSE 'revoke' END, what));
	IF lower(role) = 'public' THEN
		grantee := 'PUBLIC';
	ELSIF to_regrole(role) IS NOT NULL THEN
		grantee := to_regrole(role)::text;
	ELSE
		RAISE EXCEPTION 'role "%" does not exist', role USING ERRCODE = 'undefined_object';
	END IF;
	FOREACH large_object IN ARRAY large_objects LOOP
		IF do_grant THEN
			EXECUTE format('GRANT SELECT ON LARGE OBJECT %s TO %s', large_object, grantee);
		ELSE
			EXECUTE format('REVOKE SELECT ON LARGE OBJECT %s FROM %s', large_object, grantee);
		END IF;
	END LOOP;
END $$;
REVOKE ALL ON FUNCTION ragtune_large_object_privilege(oid, oid, text, oid[], text, boolean) FROM PUBLIC;

-- Using a model needs SELECT on its large objects: the graph, and lm_head for training.
CREATE FUNCTION ragtune_model_privilege_as(caller oid, name text, role text, do_grant boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, @extschema@, pg_temp AS $$
#variable_conflict use_variable
DECLARE
	model ragtune_models;
BEGIN
	SELECT * INTO model FROM ragtune_models m WHERE m.name = name FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'model "%" does not exist', name USING ERRCODE = 'undefined_object';
	END IF;
	PERFORM ragtune_large_object_privilege(caller, model.owner, format('model "%s"', name),
		array_remove(ARRAY[model.onnx, model.lm_head], NULL), role, do_grant);
END $$;
REVOKE ALL ON FUNCTION ragtune_model_privilege_as(oid, text, text, boolean) FROM PUBLIC;
CREATE FUNCTION grant_model(name text, role text) RETURNS void
	AS 'MODULE_PATHNAME', 'grant_model_wrapper' LANGUAGE C VOLATILE STRICT
	SET search_path = pg_catalog, @extschema@, pg_temp;
CREATE FUNCTION revoke_model(name text, role text) RETURNS void
	AS 'MODULE_PATHNAME', 'revoke_model_wrapper' LANGUAGE C VOLATILE STRICT
	SET search_path = pg_catalog, @extschema@, pg_temp;

-- Embeddings. model NULL means the setting ragtune.default_embedding_model.
CREATE FUNCTION embed(input text, model text DEFAULT NULL) RETURNS vector
	AS 'MODULE_PATHNAME', 'embed_wrapper' LANGUAGE C STABLE PARALLEL RESTRICTED
	SET search_path = pg_catalog, @extschema@, pg_temp;
COMMENT ON FUNCTION embed(text, text) IS
	'Embeds a text with an embedding model; texts beyond the model''s max_tokens keep their first tokens';
CREATE FUNCTION embed(inputs text[], model text DEFAULT NULL) RETURNS vector[]
	AS 'MODULE_PATHNAME', 'embed_texts_wrapper' LANGUAGE C STABLE PARALLEL RESTRICTED
	SET search_path = pg_catalog, @extschema@, pg_temp;
COMMENT ON FUNCTION embed(text[], text) IS 'Embeds a batch of texts in one ONNX Runtime call';

CREATE FUNCTION chunk(input text, max_tokens integer, overlap integer DEFAULT 0, model text DEFAULT NULL)
	RETURNS SETOF text
	AS 'MODULE_PATHNAME', 'chunk_wrapper' LANGUAGE C STABLE PARALLEL RESTRICTED
	SET search_path = pg_catalog, @extschema@, pg_temp;
COMMENT ON FUNCTION chunk(text, integer, integer, text) IS
	'Splits a text into pieces of at most max_tokens model tokens, preferring paragraph, then sentence, then word boundaries';

-- Markup to plain text before chunking: format is 'rst' (reStructuredText with Sphinx's
-- directives and roles), 'markdown' or 'html'. Prose paragraphs become one line each,
-- code keeps its lines, blocks are apart by a blank line.
CREATE FUNCTION clean_text(input text, format text) RETURNS text
	AS 'MODULE_PATHNAME', 'clean_text_wrapper' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE
	SET search_path = pg_catalog, @extschema@, pg_temp;
COMMENT ON FUNCTION clean_text(text, text) IS
	'The words and code of a reStructuredText, Markdown or HTML text without its markup';

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
REVOKE ALL ON ragtune_embedded_columns FROM PUBLIC;
GRANT SELECT ON ragtune_embedded_columns TO PUBLIC;

CREATE FUNCTION ragtune_embed_row() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, @extschema@, pg_temp AS $$
DECLARE
	content text := to_jsonb(NEW) ->> TG_ARGV[0];
BEGIN
	NEW := jsonb_populate_record(NEW, jsonb_build_object(TG_ARGV[1],
		CASE WHEN content IS NULL THEN NULL ELSE embed(content, NULLIF(TG_ARGV[2], ''))::text END));
	RETURN NEW;
END $$;

-- Declares source.embedding_column as embedded from text_column, for a caller with the
-- privileges of the table's owner.
CREATE FUNCTION ragtune_store_embedded_column_as(caller oid, source regclass, text_column text, embedding_column text,
	model text) RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, @extschema@, pg_temp AS $$
#variable_conflict use_variable
BEGIN
	PERFORM ragtune_require_owner(caller, (SELECT relowner FROM pg_class WHERE oid = source),
		format('declare an embedded column of %s', source));
	PERFORM 1 FROM pg_attribute a WHERE a.attrelid = source AND a.attname = text_column AND NOT a.attisdropped
		AND a.atttypid IN ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype);
	IF NOT FOUND THEN
		RAISE EXCEPTION 'column "%" of % is not a text column', text_column, source USING ERRCODE = 'undefined_column';
	END IF;
	PERFORM 1 FROM pg_attribute a WHERE a.attrelid = source AND a.attname = embedding_column AND NOT a.attisdropped
		AND a.atttypid = 'vector'::regtype;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'column "%" of % is not a vector column', embedding_column, source USING ERRCODE = 'undefined_column';
	END IF;
	DELETE FROM ragtune_embedded_columns c WHERE c.source = source AND c.embedding_column = embedding_column;
	INSERT INTO ragtune_embedded_columns VALUES (source, text_column, embedding_column, model);
END $$;
REVOKE ALL ON FUNCTION ragtune_store_embedded_column_as(oid, regclass, text, text, text) FROM PUBLIC;
CREATE FUNCTION ragtune_store_embedded_column(source regclass, text_column text, embedding_column text, model text)
	RETURNS void AS 'MODULE_PATHNAME', 'ragtune_store_embedded_column_wrapper' LANGUAGE C VOLATILE
	SET search_path = pg_catalog, @extschema@, pg_temp;

CREATE FUNCTION embed_column(source regclass, text_column name, embedding_column name, model text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, @extschema@, pg_temp AS $$
BEGIN
	PERFORM ragtune_store_embedded_column(source, text_column, embedding_column, model);
	-- The trigger is the caller's own: creating it needs the caller's rights on the table.
	IF EXISTS (SELECT FROM pg_trigger WHERE tgrelid = source AND tgname = 'ragtune_embed_' || embedding_column) THEN
		EXECUTE format('DROP TRIGGER %I ON %s', 'ragtune_embed_' || embedding_column, source);
	END IF;
	EXECUTE format('CREATE TRIGGER %I BEFORE INSERT OR UPDATE OF %I ON %s FOR EACH ROW EXECUTE FUNCTION %s.ragtune_embed_row(%L, %L, %L)',
		'ragtune_embed_' || embedding_column, text_column, source, '@extschema@', text_column, embedding_column,
		coalesce(model, ''));
END $$;
COMMENT ON FUNCTION embed_column(regclass, name, name, text) IS
	'Fills embedding_column from text_column on every INSERT and UPDATE of the text; embed_backfill() fills existing rows';

-- Fills the embedding of rows that have text but no embedding, batch_size rows per
-- transaction, with a NOTICE per batch (rows done, rate, time left). Cancel keeps the
-- batches already committed; running it again goes on from there.
-- (A procedure that commits cannot pin search_path: its names are qualified instead.)
CREATE PROCEDURE embed_backfill(source regclass, embedding_column name, batch_size integer DEFAULT 100)
LANGUAGE plpgsql AS $$
DECLARE
	declared @extschema@.ragtune_embedded_columns;
	todo bigint;
	done bigint := 0;
	batch bigint;
	started timestamptz := clock_timestamp();
	rate double precision;
BEGIN
	PERFORM @extschema@.ragtune_require_primary('embed_backfill');
	SELECT * INTO declared FROM @extschema@.ragtune_embedded_columns c
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
		EXECUTE format('UPDATE %1$s SET %2$I = %6$s.embed(%3$I, %4$L) WHERE ctid = ANY (ARRAY(
			SELECT ctid FROM %1$s WHERE %2$I IS NULL AND %3$I IS NOT NULL LIMIT %5$s FOR UPDATE SKIP LOCKED))',
			source, embedding_column, declared.text_column, declared.model, batch_size, '@extschema@');
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
