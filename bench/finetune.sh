#!/usr/bin/env bash
# Fine-tuning throughput: one generator-adapter epoch at SmolLM2-135M and Qwen2.5-0.5B
# shapes on synthetic data, a validation pass, generation-time corrections, and one
# query-adapter epoch at 384 dimensions. Single-threaded.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --release -p ragtune-core --example finetune_epoch
