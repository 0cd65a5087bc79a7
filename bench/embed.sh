#!/usr/bin/env bash
# Embedding throughput of the default model (all-MiniLM-L6-v2 int8), texts per second on
# one thread: ragtune's Rust Embedder next to Python onnxruntime on the same texts.
source "$(dirname "$0")/../scripts/lib.sh"
"$ROOT/scripts/setup.sh" --no-install
model_dir=$MODELS/$(pin models.minilm.name)
(cd "$ROOT" && cargo run --quiet --release --example embed_throughput -- "$ONNXRUNTIME_LIB" "$model_dir")
"$VENV/bin/python" "$ROOT/bench/embed_throughput.py" "$model_dir"
