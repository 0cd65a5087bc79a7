#!/usr/bin/env bash
# Sets everything up and runs every test:
#   1. `cargo test -p ragtune-core`: the pure algorithms, no server; then
#      `cargo pgrx test`: the #[pg_test]s inside a PostgreSQL server that runs as the
#      postgres user;
#   2. the pg_regress suite in tests/pg_regress against a cluster started and stopped here;
#   3. client compatibility (tests/clients): pgvector's own Python client, unchanged;
#   4. cluster behaviour (tests/cluster): concurrency, crash recovery, a streaming replica;
#      then the bounded fuzz pass (tests/fuzz): no input crashes a backend;
#   5. the GGUF-to-ONNX generator converter (tests/generator) against a numpy reference
#      (it runs first, since the other tests use the generators it makes).
# Ends with one summary line: "N passed, N failed".
source "$(dirname "$0")/lib.sh"
"$ROOT/scripts/setup.sh" --no-install
# The generators (SmolLM2 for the tests, Qwen2.5-Coder the default) come from their GGUFs;
# the Rust and SQL tests run them.
"$ROOT/scripts/convert_generators.sh"
# A generator graph without hidden_states, as optimum exports are: adapters must refuse it.
"$RAGTUNE_HOME/venv-gguf/bin/python" "$ROOT/scripts/make_decoder_without_hidden_states.py" \
  "$MODELS/smollm2-135m-instruct" "$MODELS/test-decoder-without-hidden-states"
cd "$ROOT"

logs=$(mktemp -d)
passed=0
failed=0
count() { # count LOG: add cargo's "test result" lines to the totals
  local p f
  p=$(grep -Eo '[0-9]+ passed' "$1" | awk '{s += $1} END {print s + 0}')
  f=$(grep -Eo '[0-9]+ failed' "$1" | awk '{s += $1} END {print s + 0}')
  passed=$((passed + p)); failed=$((failed + f))
}

log "cargo test -p ragtune-core (no server)"
cargo test -p ragtune-core 2>&1 | tee "$logs/core.log" | grep -E '^test |test result|panicked|error(\[|:)' || true
grep -q 'test result' "$logs/core.log" || { echo "cargo test -p ragtune-core did not run" >&2; failed=$((failed + 1)); }
count "$logs/core.log"

# The tests install a debug build of the extension. What was installed before them (the
# demo's release build) is put back when they end, so that no server loads the debug build
# afterwards; with nothing (or a debug build) installed before, none is left installed.
save_installed_extension
trap restore_installed_extension EXIT

log "cargo pgrx test (in-server tests)"
install -d -o postgres -g postgres "$RAGTUNE_HOME/pgrx-test"
unlink_installed_library
if ! cargo pgrx test "pg$PG_MAJOR" --runas postgres --pgdata "$RAGTUNE_HOME/pgrx-test/data" 2>&1 \
    | tee "$logs/cargo.log" | grep -E '^test |test result|panicked|error(\[|:)'; then
  true
fi
grep -q 'test result' "$logs/cargo.log" || { echo "cargo pgrx test did not run" >&2; failed=$((failed + 1)); }
count "$logs/cargo.log"

log "pg_regress (tests/pg_regress)"
unlink_installed_library
cargo pgrx install --pg-config "$PG_CONFIG" >"$logs/install.log" 2>&1 || { cat "$logs/install.log" >&2; exit 1; }
regress_data=$RAGTUNE_HOME/regress/pgdata
regress_port=$(pin cluster.regress_port)
install -d -m 755 "$RAGTUNE_HOME/regress"
cluster_start "$regress_data" "$regress_port"
trap 'cluster_stop "$regress_data"; restore_installed_extension' EXIT
# No autovacuum: an automatic ANALYZE elsewhere in the database holds back the horizon,
# so a test's VACUUM would find its deleted rows not yet removable.
psql_at "$regress_port" postgres -Atqc "ALTER SYSTEM SET autovacuum = off" -c "SELECT pg_reload_conf()" >/dev/null
# A run cut short may have left sessions (autovacuum included) in the test databases.
psql_at "$regress_port" postgres -Atqc "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
  WHERE datname IN ('ragtune_regress', 'ragtune_clients') AND pid <> pg_backend_pid()" >/dev/null
out=$RAGTUNE_HOME/regress/out
rm -rf "$out"; install -d -m 777 "$out"
mapfile -t schedule < <(cd tests/pg_regress/sql && ls *.sql | sed 's/\.sql$//' | sort)
"$("$PG_CONFIG" --pkglibdir)/pgxs/src/test/regress/pg_regress" \
  --host=127.0.0.1 --port="$regress_port" --user=postgres --dbname=ragtune_regress --load-extension=ragtune \
  --inputdir=tests/pg_regress --outputdir="$out" "${schedule[@]}" | tee "$logs/regress.log" || true
regress_passed=$(grep -Ec '^(ok|test|     ) .*\.\.\. ok|^ok ' "$logs/regress.log" || true)
regress_failed=$(grep -Ec 'FAILED|failed \(ignored\)' "$logs/regress.log" || true)
if [ -s "$out/regression.diffs" ]; then
  cp "$out/regression.diffs" tests/pg_regress/regression.diffs
  echo "differences: tests/pg_regress/regression.diffs" >&2
fi
passed=$((passed + regress_passed)); failed=$((failed + regress_failed))

log "client compatibility (tests/clients)"
ensure_database "$regress_port" ragtune_clients
RAGTUNE_TEST_DSN="host=127.0.0.1 port=$regress_port user=postgres dbname=ragtune_clients" \
  "$VENV/bin/python" -m unittest discover -s tests/clients -v 2>&1 | tee "$logs/clients.log" || true
clients_passed=$(grep -Ec '\.\.\. ok$' "$logs/clients.log" || true)
clients_failed=$(grep -Ec '\.\.\. (FAIL|ERROR)$' "$logs/clients.log" || true)
grep -q '^Ran [1-9]' "$logs/clients.log" || clients_failed=$((clients_failed + 1))
passed=$((passed + clients_passed)); failed=$((failed + clients_failed))

cluster_stop "$regress_data"
trap restore_installed_extension EXIT

log "cluster behaviour (tests/cluster)"
bash tests/cluster/run.sh 2>&1 | tee "$logs/cluster.log" || true
cluster_passed=$(grep -c '^ok - ' "$logs/cluster.log" || true)
cluster_failed=$(grep -c '^not ok - ' "$logs/cluster.log" || true)
# A check that never printed (the script stopped early) counts as failed.
cluster_checks=$(grep -c '^check ' tests/cluster/run.sh)
cluster_failed=$((cluster_failed + cluster_checks - cluster_passed - cluster_failed))
passed=$((passed + cluster_passed)); failed=$((failed + cluster_failed))

log "fuzz pass (tests/fuzz): random and adversarial input, no backend may crash"
bash tests/fuzz/run.sh 2>&1 | tee "$logs/fuzz.log" || true
fuzz_passed=$(grep -c '^ok - ' "$logs/fuzz.log" || true)
fuzz_failed=$(grep -c '^not ok - ' "$logs/fuzz.log" || true)
# run.py announces its checks ("1..N"); any that never printed count as failed.
fuzz_checks=$(sed -n 's/^1\.\.\([0-9][0-9]*\)$/\1/p' "$logs/fuzz.log" | head -1)
fuzz_failed=$((fuzz_failed + ${fuzz_checks:-1} - fuzz_passed - fuzz_failed))
passed=$((passed + fuzz_passed)); failed=$((failed + fuzz_failed))

log "generator converter (tests/generator): GGUF to ONNX against an independent reference"
"$RAGTUNE_HOME/venv-gguf/bin/python" -m unittest discover -s tests/generator -v 2>&1 | tee "$logs/generator.log" || true
generator_passed=$(grep -Ec '\.\.\. ok$' "$logs/generator.log" || true)
generator_failed=$(grep -Ec '\.\.\. (FAIL|ERROR)$' "$logs/generator.log" || true)
grep -q '^Ran [1-9]' "$logs/generator.log" || generator_failed=$((generator_failed + 1))
passed=$((passed + generator_passed)); failed=$((failed + generator_failed))

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
