-- Security of the catalogs, tried as roles with no grants (issue items 4, 5, 6, 9, 10):
-- who may register, change, use and see models, RAG sources and adapters; search_path and
-- temp-table shadowing; large objects owned by their catalog entry.
SET client_min_messages = warning;
CREATE ROLE security_catalogs_admin;
GRANT ragtune_admin TO security_catalogs_admin;
CREATE ROLE security_catalogs_alice;
CREATE ROLE security_catalogs_bob;
CREATE TABLE security_catalogs_parts AS
  SELECT pg_read_binary_file('/var/lib/ragtune/models/all-MiniLM-L6-v2-int8/model.onnx') AS onnx,
         pg_read_binary_file('/var/lib/ragtune/models/all-MiniLM-L6-v2-int8/tokenizer.json') AS tokenizer,
         convert_from(pg_read_binary_file('/var/lib/ragtune/models/all-MiniLM-L6-v2-int8/config.json'), 'UTF8')::jsonb AS config;
GRANT SELECT ON security_catalogs_parts TO security_catalogs_admin, security_catalogs_alice, security_catalogs_bob;
-- The roles' own objects live in a schema of their own: none may create objects in the
-- extension's schema (that would let them shadow its functions).
CREATE SCHEMA security_catalogs;
GRANT USAGE, CREATE ON SCHEMA security_catalogs TO security_catalogs_alice, security_catalogs_bob;
SET search_path = security_catalogs, public;
RESET client_min_messages;
CREATE TEMP TABLE large_objects_before AS SELECT count(*) AS n FROM pg_largeobject_metadata;
-- Runs a statement that must fail and shows its error with large object numbers masked.
CREATE FUNCTION pg_temp.refused(statement text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE statement;
	RETURN 'not refused';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || regexp_replace(SQLERRM, 'large object \d+', 'large object N');
END $$;

-- Registering models is for ragtune_admin; the entry keeps its own copy of the bytes,
-- owned by the extension's owner, so its registrant cannot change or unlink them.
SET ROLE security_catalogs_bob;
SELECT register_model('bob-model', onnx, tokenizer, config) FROM security_catalogs_parts;
SELECT register_model_from_files('bob-model', '/var/lib/ragtune/models/all-MiniLM-L6-v2-int8');
SET ROLE security_catalogs_admin;
SELECT name, kind, owner FROM security_catalogs_parts, register_model('security-minilm', onnx, tokenizer, config);
SELECT l.lomowner::regrole AS bytes_owner, m.owner AS entry_owner, l.lomacl AS bytes_acl
FROM ragtune_models m JOIN pg_largeobject_metadata l ON l.oid = m.onnx WHERE m.name = 'security-minilm';
SELECT pg_temp.refused($$SELECT lo_put(onnx, 0, '\x00') FROM ragtune_models WHERE name = 'security-minilm'$$);
SELECT pg_temp.refused($$SELECT lo_unlink(onnx) FROM ragtune_models WHERE name = 'security-minilm'$$);
-- a large object someone else owns is refused; one's own is copied, never shared
RESET ROLE;
SELECT lo_from_bytea(0, onnx) AS superuser_object FROM security_catalogs_parts \gset
SET ROLE security_catalogs_admin;
SELECT pg_temp.refused(format($$SELECT register_model('stolen-bytes', %s, tokenizer, config) FROM security_catalogs_parts$$,
  :superuser_object));
SELECT lo_from_bytea(0, onnx) AS admin_object FROM security_catalogs_parts \gset
SELECT name FROM security_catalogs_parts, register_model('copy-1', :admin_object, tokenizer, config);
SELECT name FROM security_catalogs_parts, register_model('copy-2', :admin_object, tokenizer, config);
SELECT count(DISTINCT onnx) AS distinct_objects, bool_and(onnx <> :admin_object) AS all_copies
FROM ragtune_models WHERE name IN ('copy-1', 'copy-2');
SELECT drop_model('copy-1');
SELECT vector_dims(embed('still here', 'copy-2')) AS copy_2_works;
SELECT drop_model('copy-2');
SELECT lo_unlink(:admin_object);
RESET ROLE;
SELECT lo_unlink(:superuser_object);

-- The catalogs change only through the extension's functions: no direct writes, and the
-- internal functions that do the writing are not for PUBLIC.
SET ROLE security_catalogs_bob;
INSERT INTO ragtune_models (name, kind, config, onnx, onnx_bytes, tokenizer, owner)
  SELECT 'forged', kind, config, onnx, onnx_bytes, tokenizer, owner FROM ragtune_models WHERE name = 'security-minilm';
UPDATE ragtune_models SET config = config || '{"max_tokens": 8}' WHERE name = 'security-minilm';
DELETE FROM ragtune_models WHERE name = 'security-minilm';
INSERT INTO ragtune_rag_sources (name, relation, id_column, text_column, embedding_column, model, owner)
  VALUES ('forged', 'pg_authid', 'oid', 'rolname', 'rolpassword', 'security-minilm', 'security_catalogs_bob');
DELETE FROM ragtune_rag_sources;
UPDATE ragtune_adapters SET version = version;
DELETE FROM ragtune_adapters;
INSERT INTO ragtune_embedded_columns VALUES ('pg_authid', 'rolname', 'rolpassword', NULL);
SELECT nextval('ragtune_model_version');
SELECT setval('ragtune_model_version', 1);
SELECT ragtune_store_model_as('security_catalogs_bob'::regrole, 'forged', config, onnx, tokenizer, NULL, true)
  FROM ragtune_models WHERE name = 'security-minilm';
SELECT ragtune_drop_model_as('security_catalogs_admin'::regrole, 'security-minilm');
SELECT ragtune_large_object_depends_on_extension(onnx) FROM ragtune_models WHERE name = 'security-minilm';
SELECT p.oid::regprocedure AS internal_function_executable_by_public
FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'ragtune'
WHERE p.proname LIKE '%\_as' AND has_function_privilege('security_catalogs_bob', p.oid, 'EXECUTE');
SELECT to_regproc('ragtune_check_model') AS check_model, to_regproc('ragtune_train_adapter') AS train_adapter;
-- dropping, granting and revoking check the caller too
SELECT drop_model('security-minilm');
SELECT grant_model('security-minilm', 'security_catalogs_bob');
SELECT vector_dims(embed('no grant', 'security-minilm'));
RESET ROLE;
SELECT name, owner FROM ragtune_models WHERE name = 'security-minilm';

-- Replacing bumps the version: backends reload. A non-owner admin may not replace it.
GRANT ragtune_admin TO security_catalogs_alice;
SET ROLE security_catalogs_alice;
SELECT register_model('security-minilm', onnx, tokenizer, config, replace => true) FROM security_catalogs_parts;
RESET ROLE;
REVOKE ragtune_admin FROM security_catalogs_alice;
SELECT version AS old_version FROM ragtune_models WHERE name = 'security-minilm' \gset
SET ROLE security_catalogs_admin;
SELECT version > :old_version AS version_bumped FROM security_catalogs_parts,
  register_model('security-minilm', onnx, tokenizer, config, replace => true);
SELECT grant_model('security-minilm', 'security_catalogs_alice');
RESET ROLE;

-- A replaced model keeps the grants of the one it replaces: alice uses it below.
SET ROLE security_catalogs_admin;
SELECT count(*) AS replaced FROM security_catalogs_parts,
  register_model('security-minilm', onnx, tokenizer, config, replace => true);
RESET ROLE;
-- search_path and temp tables cannot redirect catalog lookups: alice may use the model
-- and loads it in this backend; bob may not, and his temp "ragtune_models" naming the same
-- model (first on his search_path) neither reuses alice's session nor fools the check.
SET ROLE security_catalogs_alice;
SELECT vector_dims(embed('alice loads it', 'security-minilm')) AS alice;
SET ROLE security_catalogs_bob;
CREATE TEMP TABLE ragtune_models AS SELECT * FROM public.ragtune_models WHERE name = 'security-minilm';
CREATE TEMP TABLE ragtune_rag_sources AS SELECT * FROM public.ragtune_rag_sources WHERE false;
SET search_path = pg_temp, public;
SELECT name FROM ragtune_models;
SELECT vector_dims(embed('bob tries', 'security-minilm')) AS bob;
SELECT count(*) FROM chunk('bob tries chunking', 4, model => 'security-minilm');
SET search_path = security_catalogs, public;
SET ROLE security_catalogs_alice;
SELECT vector_dims(embed('alice again', 'security-minilm')) AS alice_still;

-- RAG sources: registered only over one's own relation, used only with a grant, and a
-- call that names no source never picks one an ordinary role registered.
SET ROLE security_catalogs_admin;
SELECT grant_model('security-minilm', 'security_catalogs_bob');
SET ROLE security_catalogs_alice;
CREATE TABLE security_catalogs_docs (id int, body text, embedding vector(384));
INSERT INTO security_catalogs_docs VALUES (1, 'Paris is the capital of France.', embed('Paris is the capital of France.', 'security-minilm')),
  (2, 'Bread is baked in an oven.', embed('Bread is baked in an oven.', 'security-minilm'));
CREATE TABLE security_catalogs_secret (id int, body text, embedding vector(384));
INSERT INTO security_catalogs_secret VALUES (1, 'alice''s secret: the vault code is 1234', embed('capital of France', 'security-minilm'));
GRANT SELECT ON security_catalogs_docs TO security_catalogs_bob;
SELECT name, owner FROM register_rag_source('alice-docs', 'security_catalogs_docs', 'id', 'body', 'embedding', 'security-minilm');
SET ROLE security_catalogs_bob;
SELECT register_rag_source('bob-over-alice', 'security_catalogs_docs', 'id', 'body', 'embedding', 'security-minilm');
SELECT id FROM retrieve('capital of France', 'alice-docs', 1);
SELECT drop_rag_source('alice-docs');
SELECT grant_rag_source('alice-docs', 'security_catalogs_bob');
-- bob's own view, whose function would run as whoever retrieves from it
CREATE FUNCTION security_catalogs_bob_spy(t text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN RAISE NOTICE 'bob''s function ran as %', current_user; RETURN t; END $$;
CREATE VIEW security_catalogs_bob_view AS SELECT id, security_catalogs_bob_spy(body) AS body, embedding FROM security_catalogs.security_catalogs_docs;
SELECT name, owner FROM register_rag_source('bob-docs', 'security_catalogs_bob_view', 'id', 'body', 'embedding', 'security-minilm');
SET ROLE security_catalogs_alice;
SELECT id FROM retrieve('capital of France', 'bob-docs', 1);
-- the only source, or the one the setting names, is not taken when an ordinary role owns it
SELECT drop_rag_source('alice-docs');
SELECT id FROM retrieve('capital of France');
SET ragtune.default_rag_source = 'bob-docs';
SELECT id FROM retrieve('capital of France');
RESET ragtune.default_rag_source;
SELECT name, owner FROM register_rag_source('alice-docs', 'security_catalogs_docs', 'id', 'body', 'embedding', 'security-minilm');
SELECT grant_rag_source('alice-docs', 'security_catalogs_bob');
SELECT grantees FROM public.ragtune_rag_sources WHERE name = 'alice-docs';
-- a SECURITY DEFINER wrapper of alice's: bob's temp catalog row pointing at alice's secret
-- table does not redirect its retrieval
CREATE FUNCTION security_catalogs_alice_search(q text) RETURNS SETOF text LANGUAGE sql SECURITY DEFINER
  SET search_path = public AS $$ SELECT content FROM retrieve(q, 'alice-docs', 1) $$;
GRANT EXECUTE ON FUNCTION security_catalogs_alice_search(text) TO security_catalogs_bob;
SET ROLE security_catalogs_bob;
INSERT INTO pg_temp.ragtune_rag_sources (name, relation, id_column, text_column, embedding_column, model, owner)
  VALUES ('alice-docs', 'security_catalogs_secret', 'id', 'body', 'embedding', 'security-minilm', 'security_catalogs_alice');
SET search_path = pg_temp, public;
SELECT * FROM security_catalogs.security_catalogs_alice_search('capital of France');
SELECT id, content FROM retrieve('capital of France', 'alice-docs', 1);
SET search_path = security_catalogs, public;
-- retrieve() bounds k; the thread setting is for superusers
SELECT count(*) FROM retrieve('capital of France', 'alice-docs', 100000);
SET ragtune.intra_op_threads = 64;
SHOW ragtune.intra_op_threads;
DROP TABLE pg_temp.ragtune_models, pg_temp.ragtune_rag_sources;

-- Non-superusers finish what they start: an embedded column on their own table (not on
-- someone else's) and a fine-tuned adapter (item 10).
SET ROLE security_catalogs_alice;
CREATE TABLE security_catalogs_notes (id int, body text, embedding vector(384));
SELECT embed_column('security_catalogs_notes', 'body', 'embedding', 'security-minilm');
INSERT INTO security_catalogs_notes (id, body) VALUES (1, 'a note');
SELECT embedding = embed('a note', 'security-minilm') AS embedded FROM security_catalogs_notes;
GRANT SELECT, INSERT, UPDATE, TRIGGER ON security_catalogs_notes TO security_catalogs_bob;
SET ROLE security_catalogs_bob;
SELECT embed_column('security_catalogs_notes', 'body', 'embedding', 'security-minilm');
SET ROLE security_catalogs_alice;
CREATE TABLE security_catalogs_pairs (query text, passage text);
INSERT INTO security_catalogs_pairs VALUES ('what is the capital of France', 'Paris is the capital of France.'),
  ('how is bread made', 'Bread is baked in an oven.'), ('where is the Eiffel tower', 'Paris is the capital of France.');
SET client_min_messages = warning;
CALL finetune_adapter('alice-retrieval', 'security_catalogs_pairs', kind => 'retrieval', base_model => 'security-minilm',
  epochs => 2, validation_fraction => 0);
RESET client_min_messages;
SELECT a.name, a.owner, l.lomowner::regrole AS weights_owner FROM ragtune_adapters a
  JOIN pg_largeobject_metadata l ON l.oid = a.weights WHERE a.name = 'alice-retrieval';
SELECT id FROM retrieve('capital of France', 'alice-docs', 1, adapter => 'alice-retrieval');
SET ROLE security_catalogs_bob;
SELECT id FROM retrieve('capital of France', 'alice-docs', 1, adapter => 'alice-retrieval');
SELECT drop_adapter('alice-retrieval');
SET client_min_messages = warning;
CALL finetune_adapter('alice-retrieval', 'security_catalogs_pairs', kind => 'retrieval', base_model => 'security-minilm',
  replace => true);
RESET client_min_messages;
SET ROLE security_catalogs_alice;
SELECT drop_adapter('alice-retrieval');
SELECT count(*) FROM ragtune_finetune_progress;
RESET ROLE;

-- Nothing lost: the catalogs are as the functions left them.
SELECT name, owner FROM ragtune_models WHERE name = 'security-minilm';
SELECT name, owner, relation FROM ragtune_rag_sources WHERE name IN ('alice-docs', 'bob-docs') ORDER BY name;
SELECT source, text_column, embedding_column FROM ragtune_embedded_columns WHERE source = 'security_catalogs_notes'::regclass;

-- Dropping an entry removes its large objects, and DROP EXTENSION removes the rest.
DELETE FROM ragtune_embedded_columns WHERE source = 'security_catalogs_notes'::regclass;
SET ROLE security_catalogs_bob;
SELECT drop_rag_source('bob-docs');
DROP VIEW security_catalogs_bob_view;
DROP FUNCTION security_catalogs_bob_spy(text);
SET ROLE security_catalogs_alice;
SELECT drop_rag_source('alice-docs');
DROP TABLE security_catalogs_docs, security_catalogs_secret, security_catalogs_notes, security_catalogs_pairs;
DROP FUNCTION security_catalogs_alice_search(text);
SET ROLE security_catalogs_admin;
SELECT drop_model('security-minilm');
RESET ROLE;
SELECT count(*) - (SELECT n FROM large_objects_before) AS large_objects_left FROM pg_largeobject_metadata;
CREATE DATABASE security_catalogs_db;
\c security_catalogs_db
SET client_min_messages = warning;
CREATE EXTENSION ragtune;
RESET client_min_messages;
SELECT name FROM register_model_from_files('minilm', '/var/lib/ragtune/models/all-MiniLM-L6-v2-int8');
SELECT count(*) AS large_objects, count(*) FILTER (WHERE d.deptype = 'a') AS going_with_the_extension
FROM pg_largeobject_metadata l LEFT JOIN pg_depend d ON d.classid = 'pg_largeobject'::regclass AND d.objid = l.oid
  AND d.refclassid = 'pg_extension'::regclass;
DROP EXTENSION ragtune;
SELECT count(*) AS large_objects_after_drop_extension FROM pg_largeobject_metadata;
\c ragtune_regress
DROP DATABASE security_catalogs_db;
DROP TABLE security_catalogs_parts;
DROP SCHEMA security_catalogs;
DROP ROLE security_catalogs_admin, security_catalogs_alice, security_catalogs_bob;
