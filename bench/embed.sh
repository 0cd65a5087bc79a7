#!/usr/bin/env bash
# Embedding throughput of the default model (all-MiniLM-L6-v2 int8) on 1,000 passages of
# about 200 tokens from the Python documentation: ragtune's embed() through SQL, one call
# per row and in batches of 32, next to Python onnxruntime on the same texts with the same
# threads and batch size, in the same run. Also the model's load time and memory in a
# fresh backend.
source "$(dirname "$0")/../scripts/lib.sh"
DB=ragtune_bench
glove_database "$DB"
"$ROOT/scripts/load_docs.sh" "$PORT" "$DB" --sections-only
"$VENV/bin/python" "$ROOT/bench/embed.py" "host=127.0.0.1 port=$PORT user=postgres dbname=$DB" \
  "$MODELS/$(pin models.minilm.name)"
