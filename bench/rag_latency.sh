#!/usr/bin/env bash
# Latency of rag_answer_json() with its defaults on the python_docs source over the first 30
# questions of the Python Programming FAQ: p50/p95 of retrieve, prompt, generate and total,
# and generated tokens per second. Runs against the demo cluster and its database `ragtune`
# (scripts/demo.sh has loaded the docs); it starts nothing itself.
#   bench/rag_latency.sh [--questions 30] [--model NAME] [--threads 2]
source "$(dirname "$0")/../scripts/lib.sh"
PORT=$(pin cluster.demo_port)
"$VENV/bin/python" "$ROOT/bench/rag_latency.py" "host=127.0.0.1 port=$PORT user=postgres dbname=ragtune" "$@"
