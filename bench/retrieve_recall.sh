#!/usr/bin/env bash
# What ragtune.retrieve_ef_search buys: retrieve() on the demo's python_docs source (every
# Python FAQ question heading, gold = its own section) at exact search and at each
# setting, printing gold recall@1/@5/@10 with 95% bootstrap intervals, overlap with exact
# search's top 10 and ms per query; with --glove also the index scan's neighbour recall@5/@10
# on GloVe's 399k rows (database ragtune_bench, as bench/hnsw.sh) at each ef_search.
# With --modes instead: gold recall of retrieve()'s vector, text and hybrid modes side by
# side on the FAQ questions and on SQuAD v1.1 dev (loaded here by scripts/load_squad.sh).
# Runs against the demo cluster (scripts/demo.sh has loaded the docs).
#   bench/retrieve_recall.sh [--ef 40 100 200 400] [--glove]
#   bench/retrieve_recall.sh --modes [--squad-limit 2000] [--seed 1]
source "$(dirname "$0")/../scripts/lib.sh"
PORT=$(pin cluster.demo_port)
args=()
for arg in "$@"; do
  if [ "$arg" = --glove ]; then
    glove_database ragtune_bench
    args+=(--glove "host=127.0.0.1 port=$PORT user=postgres dbname=ragtune_bench")
  else
    [ "$arg" = --modes ] && "$ROOT/scripts/load_squad.sh" "$PORT" ragtune
    args+=("$arg")
  fi
done
"$VENV/bin/python" "$ROOT/bench/retrieve_recall.py" "host=127.0.0.1 port=$PORT user=postgres dbname=ragtune" "${args[@]}"
