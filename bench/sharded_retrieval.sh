#!/usr/bin/env bash
# Sharded retrieval: retrieve() over a RAG source partitioned by hash across two shard
# servers (postgres_fdw foreign partitions, each shard with its own HNSW index) against
# retrieve() over one table of the same rows on the coordinator, in the same run: p50/p95
# ms per call and recall@10 of each against exact search over the one table.
#
# The rows are the demo's Python documentation chunks (doc_chunks in the demo database,
# embeddings included: scripts/demo.sh must have run), the questions the Programming FAQ's
# question headings. It starts its own coordinator and two shards in
# $RAGTUNE_HOME/bench-shards (ports cluster.scaling_port, +1, +2) and stops them at the end.
#   bench/sharded_retrieval.sh [--k 10] [--reps 3]
source "$(dirname "$0")/../scripts/lib.sh"
demo_port=$(pin cluster.demo_port)
base=$RAGTUNE_HOME/bench-shards
bench_clusters "$base" coordinator shard1 shard2
dirs=("${BENCH_DIRS[@]}") ports=("${BENCH_PORTS[@]}")

log "exporting the demo's chunks and FAQ questions"
rows=$base/chunks.csv questions=$base/questions.txt
psql_at "$demo_port" ragtune -qc "\\copy (SELECT id, content, embedding FROM doc_chunks WHERE embedding IS NOT NULL ORDER BY id) TO '$rows' WITH (FORMAT csv)"
psql_at "$demo_port" ragtune -Atqc "SELECT title FROM python_docs WHERE path LIKE 'faq/%' ORDER BY title" >"$questions"
dimensions=$(psql_at "$demo_port" ragtune -Atqc "SELECT vector_dims(embedding) FROM doc_chunks LIMIT 1")
chmod 644 "$rows"

for i in 0 1 2; do
  cluster_start "${dirs[$i]}" "${ports[$i]}"
  psql_at "${ports[$i]}" postgres -qc "CREATE DATABASE ragtune"
  psql_at "${ports[$i]}" ragtune -qc "CREATE EXTENSION ragtune"
done
for i in 1 2; do
  psql_at "${ports[$i]}" ragtune -q <<SQL
CREATE TABLE chunks_shard (id bigint PRIMARY KEY, content text NOT NULL, embedding vector($dimensions));
SQL
done
log "loading the chunks on the coordinator (one table) and through it onto the shards"
psql_at "${ports[0]}" ragtune -q >/dev/null <<SQL
SET client_min_messages = warning;
SELECT name FROM register_model_from_files('all-MiniLM-L6-v2', '$MODELS/all-MiniLM-L6-v2-int8');
CREATE EXTENSION postgres_fdw;
CREATE SERVER shard1 FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '127.0.0.1', port '${ports[1]}', dbname 'ragtune',
  extensions 'ragtune', async_capable 'true', options '-c hnsw.ef_search=800');
CREATE SERVER shard2 FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '127.0.0.1', port '${ports[2]}', dbname 'ragtune',
  extensions 'ragtune', async_capable 'true', options '-c hnsw.ef_search=800');
CREATE USER MAPPING FOR postgres SERVER shard1 OPTIONS (user 'postgres');
CREATE USER MAPPING FOR postgres SERVER shard2 OPTIONS (user 'postgres');
CREATE TABLE chunks_one (id bigint PRIMARY KEY, content text NOT NULL, embedding vector($dimensions));
COPY chunks_one FROM '$rows' WITH (FORMAT csv);
CREATE INDEX ON chunks_one USING hnsw (embedding vector_cosine_ops);
ANALYZE chunks_one;
CREATE TABLE chunks_sharded (id bigint NOT NULL, content text NOT NULL, embedding vector($dimensions)) PARTITION BY HASH (id);
CREATE FOREIGN TABLE chunks_sharded_1 PARTITION OF chunks_sharded FOR VALUES WITH (MODULUS 2, REMAINDER 0)
  SERVER shard1 OPTIONS (table_name 'chunks_shard');
CREATE FOREIGN TABLE chunks_sharded_2 PARTITION OF chunks_sharded FOR VALUES WITH (MODULUS 2, REMAINDER 1)
  SERVER shard2 OPTIONS (table_name 'chunks_shard');
INSERT INTO chunks_sharded SELECT * FROM chunks_one;
SELECT register_rag_source('one', 'chunks_one', 'id', 'content', 'embedding', model => 'all-MiniLM-L6-v2') IS NOT NULL;
SELECT register_rag_source('sharded', 'chunks_sharded', 'id', 'content', 'embedding', model => 'all-MiniLM-L6-v2') IS NOT NULL;
SQL
for i in 1 2; do
  psql_at "${ports[$i]}" ragtune -qc "CREATE INDEX ON chunks_shard USING hnsw (embedding vector_cosine_ops)" -c "ANALYZE chunks_shard"
done
"$VENV/bin/python" "$ROOT/bench/sharded_retrieval.py" "host=127.0.0.1 port=${ports[0]} user=postgres dbname=ragtune" \
  "$questions" "$@"
