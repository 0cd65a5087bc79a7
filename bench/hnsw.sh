#!/usr/bin/env bash
# HNSW benchmark on GloVe 6B 50d, cosine, m=16, ef_construction=64, single client:
# build time, index size, and recall@10 with queries per second at ef_search 40/100/200,
# first on 100,000 base rows with 1,000 held-out queries (seed-42 permutation of the
# 400k rows: first 100k base, next 1k queries), then on all rows but the queries.
#   ROWS=100000 bench/hnsw.sh      # only the 100k part
source "$(dirname "$0")/../scripts/lib.sh"
DB=ragtune_bench
glove_database "$DB"
export RAGTUNE_BENCH_DSN="host=127.0.0.1 port=$PORT user=postgres dbname=$DB"
export PGBENCH="$PG_BIN/pgbench" PGPORT="$PORT"
"$VENV/bin/python" "$ROOT/bench/hnsw.py" "${ROWS:-100000 399000}"
