#!/usr/bin/env bash
# Generation speed of the default generator on 2 threads: time to first token and decode
# tokens/s of ragtune's generate_stream() (and total time of generate()) through SQL, next
# to a Python onnxruntime loop with the same model, prompts and greedy settings in the same
# run; checks both wrote the same text. Runs against the demo cluster and its database
# `ragtune` (scripts/demo.sh has loaded the Python docs); it starts nothing itself.
#   bench/generate.sh [--model NAME] [--threads 2] [--max-tokens 64] [--reps 2]
source "$(dirname "$0")/../scripts/lib.sh"
PORT=$(pin cluster.demo_port)
"$VENV/bin/python" "$ROOT/bench/generate.py" "host=127.0.0.1 port=$PORT user=postgres dbname=ragtune" "$MODELS" "$@"
