#!/usr/bin/env bash
# Acceptance figures of ragtune's adapters (finetune_adapter(), evaluate_adapter(), adapter =>)
# on the Python docs: (1) a generator adapter that answers in a house style (lead phrase,
# final "Source:" line), held-out NLL and style rate with and without it; (2) a retrieval
# adapter trained on FAQ questions, held-out recall@1/@5 and MRR@10 of the gold section;
# (3) rag_answer_json() with the style adapter: style, citations, both; (4) context-use
# adapters trained on rag_prompt() rows, held-out token F1 of RAG with and without them and
# closed-book, per generator. Prints training time and rows/s of every run and a summary.
# Runs against the demo cluster and its database `ragtune` (scripts/demo.sh has loaded the
# docs); it starts nothing itself and writes only schema bench_finetune and the adapters.
# About 40 minutes on 2 cores with the defaults; --dry-run trains nothing (a few minutes).
#   bench/finetune_acceptance.sh [--parts 1,2,3,4] [--limit 30] [--seed 1] [--epochs 3]
#                                [--models M1,M2] [--reuse] [--dry-run] [--verbose] ...  (--help)
source "$(dirname "$0")/../scripts/lib.sh"
PORT=$(pin cluster.demo_port)
"$VENV/bin/python" "$ROOT/bench/finetune_acceptance.py" "host=127.0.0.1 port=$PORT user=postgres dbname=ragtune" \
  --models-dir "$MODELS" "$@"
