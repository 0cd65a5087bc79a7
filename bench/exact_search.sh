#!/usr/bin/env bash
# Exact top-10 search by sequential scan over the 400,000 GloVe 6B 50d vectors:
#   SELECT id FROM glove ORDER BY embedding <=> $q LIMIT 10
# single client, prepared statements (pgbench), each query a random word's vector.
# Prints ms per query and rows scanned per second, serial and with parallel workers.
source "$(dirname "$0")/../scripts/lib.sh"
DB=ragtune_bench
glove_database "$DB"
SECONDS_PER_RUN=${SECONDS_PER_RUN:-30}

script=$(mktemp)
cat >"$script" <<'SQL'
\set id random(1, 400000)
SELECT id FROM glove ORDER BY embedding <=> (SELECT embedding FROM glove WHERE id = :id) LIMIT 10;
SQL
rows=$(psql_at "$PORT" "$DB" -Atc "SELECT count(*) FROM glove")
echo "ragtune exact search: $rows vectors of 50 dims, cosine, top 10, ${SECONDS_PER_RUN}s per run"
printf '%-34s %12s %10s %16s\n' "setting" "ms/query" "QPS" "rows/s"
for workers in 0 2; do
  out=$(PGOPTIONS="-c max_parallel_workers_per_gather=$workers" "$PG_BIN/pgbench" -n -M prepared -c 1 \
    -T "$SECONDS_PER_RUN" -f "$script" -h 127.0.0.1 -p "$PORT" -U postgres "$DB" 2>&1)
  latency=$(awk '/latency average/ {print $4}' <<<"$out")
  tps=$(awk '/^tps/ {print $3}' <<<"$out")
  awk -v w="$workers" -v l="$latency" -v t="$tps" -v n="$rows" 'BEGIN {
    printf "%-34s %12.1f %10.2f %16.0f\n", "max_parallel_workers_per_gather=" w, l, t, n * t }'
done
rm -f "$script"
