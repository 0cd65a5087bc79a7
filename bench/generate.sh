#!/usr/bin/env bash
# Generation speed of the default generator on 2 threads: time to first token and decode
# tokens/s of ragtune's generate_stream() (and total time of generate()) through SQL, next
# to a Python onnxruntime loop with the same model, prompts and greedy settings in the same
# run; checks both wrote the same text. Then prompt and decode tokens/s beside llama.cpp on
# the model's GGUF, when llama-cpp-python is built (scripts/convert_generators.sh
# --reference, about 30 minutes on 2 cores; --no-llama skips it). Runs against the demo
# cluster and its database `ragtune` (scripts/demo.sh has loaded the Python docs); it starts
# nothing itself.
#   bench/generate.sh [--model NAME] [--threads 2] [--max-tokens 64] [--reps 2] [--no-llama]
source "$(dirname "$0")/../scripts/lib.sh"
PORT=$(pin cluster.demo_port)
DSN="host=127.0.0.1 port=$PORT user=postgres dbname=ragtune"
GVENV=$RAGTUNE_HOME/venv-gguf
args=() model="" llama=1
while [ $# -gt 0 ]; do
  case $1 in
    --no-llama) llama=0 ;;
    --model) model=$2; args+=("$1" "$2"); shift ;;
    *) args+=("$1") ;;
  esac
  shift
done
if [ "$llama" = 1 ]; then
  if ! "$GVENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
    log "no llama-cpp-python in $GVENV: run scripts/convert_generators.sh --reference for the llama.cpp side"
  else
    [ -n "$model" ] || model=$(psql_at "$PORT" ragtune -Atc "LOAD 'ragtune'; SELECT current_setting('ragtune.default_generator')" | tail -1)
    # The GGUF of the generator converted under that name (pgrx.toml [generators]).
    for key in $(pin generators.convert); do
      [ "$(pin "generators.$key.name")" = "$model" ] && args+=(--gguf "$MODELS/gguf/$(pin "generators.$key.gguf")" --gguf-python "$GVENV/bin/python")
    done
  fi
fi
"$VENV/bin/python" "$ROOT/bench/generate.py" "$DSN" "$MODELS" "${args[@]}"
