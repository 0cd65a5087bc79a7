-- ONNX Runtime is loaded on first use from ragtune.onnxruntime_path (superuser-only);
-- a wrong path is a clear error naming the setting, and can be corrected in the session.
-- (Runs in a fresh session after models.sql registered the default model.)
-- The session runs the model itself, not through the model service (whose worker reads
-- the setting from the server's configuration).
SET ragtune.model_service = off;
SET ragtune.onnxruntime_path = '/nonexistent/libonnxruntime.so';
SELECT embed('hello');
SET ragtune.onnxruntime_path = '/etc/hostname';
SELECT embed('hello');
RESET ragtune.onnxruntime_path;
SELECT vector_dims(embed('hello'));
SHOW ragtune.intra_op_threads;
CREATE TEMP TABLE one_thread AS SELECT embed('hello') AS e;
SET ragtune.intra_op_threads = 2;
SELECT (embed('hello') <=> e) < 1e-6 AS same_with_two_threads FROM one_thread;
SET ragtune.intra_op_threads = 0;
CREATE ROLE ragtune_bob;
SET ROLE ragtune_bob;
SET ragtune.onnxruntime_path = '/tmp/evil.so';
SET ragtune.default_embedding_model = 'no-such-model';
SELECT embed('hello');
RESET ROLE;
DROP ROLE ragtune_bob;
