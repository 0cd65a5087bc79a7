-- Model bytes are checked before ONNX Runtime sees them (issue 17, item 1). The graph
-- below (scripts/make_external_data_model.py) keeps its one weight in an "external file"
-- named PG_VERSION, relative to the data directory: ONNX Runtime, given these bytes, reads
-- that server file into the weight. Registering it must fail before a session exists.
SET client_min_messages = warning;
CREATE ROLE security_onnx_admin;
GRANT ragtune_admin TO security_onnx_admin;
CREATE ROLE security_onnx_user;
CREATE TABLE security_onnx_parts AS
  SELECT '\x08083a750a100a017712017922084964656e74697479121372656164735f615f7365727665725f66696c652a3b080310024201776a160a086c6f636174696f6e120a50475f56455253494f4e6a0b0a066f66667365741201306a0b0a066c656e6774681201337001620f0a0179120a0a08080212040a02080342040a001011'::bytea AS onnx,
         pg_read_binary_file('/var/lib/ragtune/models/all-MiniLM-L6-v2-int8/tokenizer.json') AS tokenizer;
GRANT SELECT ON security_onnx_parts TO security_onnx_admin, security_onnx_user;
RESET client_min_messages;
CREATE TEMP TABLE models_before AS SELECT count(*) AS n FROM ragtune_models;
CREATE TEMP TABLE large_objects_before AS SELECT count(*) AS n FROM pg_largeobject_metadata;

-- an ordinary role is refused before its bytes are read
SET ROLE security_onnx_user;
SELECT register_model('reads-pg-version', onnx, tokenizer, '{"kind": "embedding", "max_tokens": 8, "dimensions": 3}')
FROM security_onnx_parts;
-- an admin's (and the superuser's) bytes are refused for what they hold
SET ROLE security_onnx_admin;
SELECT register_model('reads-pg-version', onnx, tokenizer, '{"kind": "embedding", "max_tokens": 8, "dimensions": 3}')
FROM security_onnx_parts;
RESET ROLE;
SELECT register_model('reads-pg-version', onnx, tokenizer, '{"kind": "embedding", "max_tokens": 8, "dimensions": 3}')
FROM security_onnx_parts;
SELECT register_model('reads-pg-version', onnx, tokenizer,
  '{"kind": "generator", "chat_format": {"message": "{role}: {content}\n", "generation_prompt": "assistant: "}, "stop_token_ids": [2], "context_window": 64}')
FROM security_onnx_parts;

-- nothing was stored, no large object left behind, and the session goes on
SELECT (SELECT count(*) FROM ragtune_models) - (SELECT n FROM models_before) AS models_added,
       (SELECT count(*) FROM pg_largeobject_metadata) - (SELECT n FROM large_objects_before) AS large_objects_added;
SELECT embed('x', 'reads-pg-version');
SELECT 1 AS still_working;
DROP TABLE security_onnx_parts;
DROP ROLE security_onnx_admin, security_onnx_user;
