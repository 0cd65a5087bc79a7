#!/usr/bin/env bash
# Read scaling: rag_answer() from 4 clients through libpq's own load balancing
# (load_balance_hosts=random over a multi-host connection string, target_session_attrs=any)
# with 1, 2 and 3 servers answering: the primary, then one and two streaming standbys.
# Prints answers/min and how many answers each server gave. On this 2-core machine the
# servers share the same cores, so the figure shows that the work is spread, not that it
# scales; on separate machines each standby adds its own cores.
#
# It starts its own clusters in $RAGTUNE_HOME/bench-scaling (ports from pgrx.toml
# cluster.scaling_port, +1, +2), loads the Programming FAQ's sections as RAG source `faq`
# (MiniLM embeddings, HNSW and GIN), registers the default generator, and stops them at the
# end. The questions are the FAQ's question headings, each client taking the next.
#   bench/read_scaling.sh [--duration 40] [--clients 4] [--max-tokens 32]
source "$(dirname "$0")/../scripts/lib.sh"
duration=40 clients=4 max_tokens=32
while [ $# -gt 0 ]; do
  case $1 in
    --duration) duration=$2; shift ;;
    --clients) clients=$2; shift ;;
    --max-tokens) max_tokens=$2; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
base=$RAGTUNE_HOME/bench-scaling
bench_clusters "$base" primary standby1 standby2
dirs=("${BENCH_DIRS[@]}") ports=("${BENCH_PORTS[@]}")

cluster_start "${dirs[0]}" "${ports[0]}"
psql_at "${ports[0]}" postgres -qc "CREATE DATABASE ragtune"
generator=$(psql_at "${ports[0]}" ragtune -Atqc "CREATE EXTENSION ragtune" -c "SELECT current_setting('ragtune.default_generator')")
log "loading the FAQ sections and the models on the primary"
psql_at "${ports[0]}" ragtune -q >/dev/null <<SQL
SET client_min_messages = warning;
SELECT name FROM register_model_from_files('$generator', '$MODELS/$generator');
SELECT name FROM register_model_from_files('all-MiniLM-L6-v2', '$MODELS/all-MiniLM-L6-v2-int8');
CREATE TEMP TABLE docs_csv (path text, title text, body text);
COPY docs_csv FROM '$DATA/python_docs.csv' WITH (FORMAT csv, HEADER);
CREATE TABLE faq (id int PRIMARY KEY, question text NOT NULL, body text NOT NULL,
  tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', body)) STORED, embedding vector(384));
INSERT INTO faq (id, question, body)
SELECT row_number() OVER (ORDER BY path, title), title, title || E'\n\n' || clean_text(body, 'rst')
FROM docs_csv WHERE path LIKE 'faq/%';
UPDATE faq SET embedding = e.embedding
FROM (SELECT unnest(array_agg(id ORDER BY id)) AS id, unnest(embed(array_agg(body ORDER BY id), 'all-MiniLM-L6-v2')) AS embedding
      FROM faq) e WHERE e.id = faq.id;
CREATE INDEX ON faq USING hnsw (embedding vector_cosine_ops);
CREATE INDEX ON faq USING gin (tsv);
SELECT name FROM register_rag_source('faq', 'faq', 'id', 'body', 'embedding', model => 'all-MiniLM-L6-v2',
  text_search => 'english', tsvector_column => 'tsv');
CHECKPOINT;
SQL
questions=$base/questions.txt
psql_at "${ports[0]}" ragtune -Atqc "SELECT question FROM faq ORDER BY md5(question)" >"$questions"

for i in 1 2; do
  log "standby $i"
  install -d -o postgres -g postgres -m 700 "${dirs[$i]}"
  as_postgres "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "${ports[0]}" -U postgres -D "${dirs[$i]}" -R -X stream \
    --checkpoint=fast 2> >(grep -v "skipping special file" >&2)
  cluster_start "${dirs[$i]}" "${ports[$i]}"
done

sql="SELECT rag_answer(%s, 'faq', model => '$generator', max_tokens => $max_tokens)"
# Each server's model service loads the generator on its first answer: one warm-up each.
for p in "${ports[@]}"; do
  psql_at "$p" ragtune -Atqc "SELECT length(rag_answer('How do I copy a file?', 'faq', model => '$generator', max_tokens => 4)) > 0" >/dev/null
done
log "$clients clients for $duration s per row, rag_answer(q, 'faq', max_tokens => $max_tokens), $(nproc) cores"
printf '%-8s %12s %8s  %s\n' servers answers/min answers "answers per server (port: count)"
for n in 1 2 3; do
  hosts=$(printf '127.0.0.1,%.0s' $(seq 1 "$n")); hosts=${hosts%,}
  port_list=$(IFS=,; echo "${ports[*]:0:$n}")
  result=$("$VENV/bin/python" "$ROOT/tests/cluster/balanced_load.py" \
    "host=$hosts port=$port_list user=postgres dbname=ragtune target_session_attrs=any load_balance_hosts=random" \
    "$sql" --params "$questions" --duration "$duration" --clients "$clients")
  N=$n RESULT=$result "$VENV/bin/python" - <<'PY'
import json, os
r = json.loads(os.environ["RESULT"])
spread = ", ".join(f"{port}: {count}" for port, count in r["per_server"].items())
failed = f"  ({r['failures']} failed)" if r["failures"] else ""
print(f"{os.environ['N']:<8} {r['answers_per_minute']:>12.1f} {r['answers']:>8}  {spread}{failed}")
PY
done
