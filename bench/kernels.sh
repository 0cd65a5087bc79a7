#!/usr/bin/env bash
# Distance-kernel throughput (GB/s of vector data) per metric and type, dispatched SIMD
# path next to the scalar reference, for dims 50, 384, 768, 1536.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --release -p ragtune-core --example kernel_throughput
