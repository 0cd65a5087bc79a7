#!/usr/bin/env bash
# Load test of rag_answer_json() from 1, 2, 4, 8 and 16 concurrent connections, through the
# model service and, in the same run, through the in-backend path (ragtune.model_service = off):
# answers/min, p50/p95 latency, time to first token, tokens/s and the server's total PSS.
# Then the decode rows: N streams of long answers together, and their summed decode rate.
# Runs against the demo cluster and its database `ragtune` (scripts/demo.sh has loaded the
# docs); it starts nothing itself. Runs as root (it reads the server processes' /proc/PID/smaps).
#   bench/rag_load.sh [--clients 1,2,4,8,16] [--duration 45] [--max-tokens 32] [--paths service,in-backend] [--questions N]
#                      [--decode-clients 1,8] [--decode-tokens 96]
source "$(dirname "$0")/../scripts/lib.sh"
PORT=$(pin cluster.demo_port)
"$VENV/bin/python" "$ROOT/bench/rag_load.py" "host=127.0.0.1 port=$PORT user=postgres dbname=ragtune" "$@"
