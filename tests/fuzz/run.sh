#!/usr/bin/env bash
# Bounded fuzz pass over the installed extension (tests/fuzz/run.py): its own cluster under
# $RAGTUNE_HOME/fuzz, a fuzz database, an unprivileged role. Arguments go to run.py
# (--cases N, --seed S). Prints "ok - ..." / "not ok - ..." lines that scripts/test.sh counts.
source "$(dirname "$0")/../../scripts/lib.sh"
base=$RAGTUNE_HOME/fuzz
data=$base/pgdata
port=${FUZZ_PORT:-25450}
trap 'cluster_stop "$data"' EXIT
cluster_stop "$data" 2>/dev/null || true
rm -rf "$base" && install -d -m 755 "$base"
cluster_start "$data" "$port"
psql_at "$port" postgres -qc "CREATE DATABASE fuzz"
psql_at "$port" fuzz -q <<'SQL'
CREATE EXTENSION ragtune;
CREATE ROLE fuzz_user LOGIN;
SQL
"$VENV/bin/python" "$ROOT/tests/fuzz/run.py" --port "$port" --dbname fuzz --user fuzz_user --pgdata "$data" "$@"
