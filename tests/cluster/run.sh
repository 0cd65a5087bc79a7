#!/usr/bin/env bash
# HNSW under real cluster conditions, on loopback, bounded in time:
#   - concurrent inserts and queries from several clients (pgbench);
#   - crash recovery: an immediate shutdown in the middle of inserts, restart, verify;
#   - a streaming replica answering the same queries with the same results;
#   - the model service under concurrent answers, cancels and a terminated backend;
#   - read paths that assign no transaction id, and a hot standby answering them;
#   - a primary and two standbys behind libpq's load balancing, one standby killed mid-run;
#   - a RAG source sharded over two servers as postgres_fdw partitions.
# Prints "ok - ..." / "not ok - ..." lines (TAP style) that scripts/test.sh counts.
source "$(dirname "$0")/../../scripts/lib.sh"
base=$RAGTUNE_HOME/cluster-tests
primary=$base/primary standby=$base/standby standby2=$base/standby2 shard1=$base/shard1 shard2=$base/shard2 cron=$base/cron
primary_port=$(pin cluster.regress_port) && primary_port=$((primary_port + 1))
standby_port=$((primary_port + 1)) standby2_port=$((primary_port + 2))
shard1_port=$((primary_port + 3)) shard2_port=$((primary_port + 4))
cleanup() {
  local d
  for d in "$cron" "$shard2" "$shard1" "$standby2" "$standby" "$primary"; do cluster_stop "$d" 2>/dev/null; done
}
trap cleanup EXIT
cleanup
rm -rf "$base" && install -d -m 755 "$base"

check() { # check NAME COMMAND...: runs the command, prints a TAP line
  local name=$1; shift
  if "$@"; then echo "ok - $name"; else echo "not ok - $name"; fi
}
on() { local port=$1; shift; psql_at "$port" ragtune -Atq "$@"; }

cluster_start "$primary" "$primary_port"
psql_at "$primary_port" postgres -qc "CREATE DATABASE ragtune"
on "$primary_port" <<'SQL'
CREATE EXTENSION ragtune;
CREATE TABLE items (id bigserial PRIMARY KEY, v vector(8));
INSERT INTO items (v) SELECT ARRAY(SELECT random() - 0.5 FROM generate_series(1, 8) WHERE g > 0)::vector(8)
FROM generate_series(1, 5000) g;
CREATE INDEX items_idx ON items USING hnsw (v vector_l2_ops);
SQL

log "streaming replica"
install -d -o postgres -g postgres -m 700 "$standby"
as_postgres "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$primary_port" -U postgres -D "$standby" -R -X stream --checkpoint=fast \
  2> >(grep -v "skipping special file" >&2)
cluster_start "$standby" "$standby_port"

log "concurrent inserts and queries (4 clients)"
workload=$base/workload.sql
cat >"$workload" <<'SQL'
\set kind random(1, 2)
\if :kind = 1
INSERT INTO items (v) SELECT ARRAY(SELECT random() - 0.5 FROM generate_series(1, 8))::vector(8);
\else
SET enable_seqscan = off;
SELECT id FROM items ORDER BY v <-> (SELECT ARRAY(SELECT random() - 0.5 FROM generate_series(1, 8))::vector(8)) LIMIT 10;
\endif
SQL
pgbench_out=$("$PG_BIN/pgbench" -n -c 4 -j 2 -T 10 -f "$workload" -h 127.0.0.1 -p "$primary_port" -U postgres ragtune 2>&1) || true
check "concurrent clients finish without errors" grep -q "number of failed transactions: 0" <<<"$pgbench_out"

verify_clean() { # verify_clean PORT: graph has no problems and every live element is reachable
  [ "$(on "$1" -c "SELECT unreachable = 0 AND cardinality(problems) = 0 FROM hnsw_verify('items_idx')")" = t ]
}
indexes_all_rows() { # the index holds at least one entry per visible row
  [ "$(on "$1" -c "SELECT (SELECT heap_tids FROM hnsw_verify('items_idx')) >= (SELECT count(*) FROM items)")" = t ]
}
check "graph intact after concurrent work" verify_clean "$primary_port"
check "index covers every row after concurrent work" indexes_all_rows "$primary_port"

recall_ok() { # recall@10 at ef_search 100 over 50 queries, against exact search
  [ "$(on "$1" <<'SQL'
CREATE TEMP TABLE q AS SELECT i, ARRAY(SELECT cos(i * 1.3 + d) FROM generate_series(1, 8) d)::vector(8) AS v FROM generate_series(1, 50) i;
SET enable_indexscan = off;
CREATE TEMP TABLE e AS SELECT i, ARRAY(SELECT id FROM items ORDER BY items.v <-> q.v LIMIT 10) AS ids FROM q;
RESET enable_indexscan; SET enable_seqscan = off; SET hnsw.ef_search = 100;
CREATE TEMP TABLE a AS SELECT i, ARRAY(SELECT id FROM items ORDER BY items.v <-> q.v LIMIT 10) AS ids FROM q;
SELECT avg(cardinality(ARRAY(SELECT unnest(a.ids) INTERSECT SELECT unnest(e.ids)))) / 10 >= 0.99 FROM a JOIN e USING (i);
SQL
)" = t ]
}
check "recall@10 >= 0.99 after concurrent inserts" recall_ok "$primary_port"

log "crash during inserts"
"$PG_BIN/pgbench" -n -c 2 -T 30 -h 127.0.0.1 -p "$primary_port" -U postgres ragtune \
  -f <(echo "INSERT INTO items (v) SELECT ARRAY(SELECT random() - 0.5 FROM generate_series(1, 8))::vector(8);") >/dev/null 2>&1 &
loader=$!
sleep 4
as_postgres "$PG_BIN/pg_ctl" -D "$primary" -m immediate -w stop >/dev/null
wait "$loader" || true
cluster_start "$primary" "$primary_port"
check "graph intact after crash recovery" verify_clean "$primary_port"
check "index covers every recovered row" indexes_all_rows "$primary_port"
check "recall@10 >= 0.99 after crash recovery" recall_ok "$primary_port"
check "inserts work after recovery" on "$primary_port" -c "INSERT INTO items (v) VALUES ('[1,2,3,4,5,6,7,8]')"

log "replica answers like the primary"
caught_up() { # caught_up [PORT]: the standby (default: the first) has replayed the primary's WAL
  local target port=${1:-$standby_port}
  target=$(on "$primary_port" -c "SELECT pg_current_wal_lsn()")
  for _ in $(seq 1 100); do
    [ "$(on "$port" -c "SELECT pg_last_wal_replay_lsn() >= '$target'::pg_lsn")" = t ] && return 0
    sleep 0.2
  done
  return 1
}
check "replica catches up" caught_up
same_answers() {
  local query="SET enable_seqscan = off; SELECT string_agg(id::text, ',') FROM (SELECT id FROM items
    ORDER BY v <-> ARRAY(SELECT sin(i * 0.7 + d) FROM generate_series(1, 8) d)::vector(8) LIMIT 10) s"
  for i in $(seq 1 20); do
    [ "$(on "$primary_port" -c "${query//i \*/$i *}")" = "$(on "$standby_port" -c "${query//i \*/$i *}")" ] || return 1
  done
}
check "replica returns the primary's results for 20 queries" same_answers
check "replica's graph intact" verify_clean "$standby_port"

log "model service: concurrent answers, cancels and a terminated backend"
# Clients are an unprivileged role granted the generator. Greedy answers through the
# service's batches must equal the same prompts answered alone; a cancel, a statement_timeout
# and pg_terminate_backend() mid-answer end only their own request, and the postmaster
# never restarts (any backend crash would restart it).
on "$primary_port" -c "SELECT register_model_from_files('smollm2', '$MODELS/smollm2-135m-instruct') IS NOT NULL" >/dev/null
on "$primary_port" <<'SQL'
CREATE ROLE app LOGIN;
CREATE ROLE other_app LOGIN;
SELECT grant_model('smollm2', 'app');
SELECT grant_model('smollm2', 'other_app');
SQL
# A backend crash makes the postmaster reinitialise (pg_postmaster_start_time() stays the
# same): count that in its log.
reinitialisations() { grep -c 'all server processes terminated; reinitializing' "$primary/server.log" || true; }
reinitialised_before=$(reinitialisations)
as_app() { PGAPPNAME=${2:-ragtune_test} "$PG_BIN/psql" -X -At -h 127.0.0.1 -p "$primary_port" -U "${AS_ROLE:-app}" -d ragtune -c "$1"; }
as_app_on() { "$PG_BIN/psql" -X -At -h 127.0.0.1 -p "$1" -U app -d ragtune -c "$2"; }
answer_sql() { echo "SELECT generate('Name $1 things found in a kitchen.', model => 'smollm2', max_tokens => 40)"; }
# The victims' answers must outlast the faults: sampling at temperature 100 draws nearly
# uniformly from 49k tokens, so an end-of-text token is rare (a greedy answer may end early).
long_sql="SELECT generate('Count from 1 to 5000, separated by commas.', model => 'smollm2', max_tokens => 4000, temperature => 100, seed => 1)"
work=$base/service && install -d "$work"
for i in 1 2 3 4; do as_app "$(answer_sql "$((i + 2))")" >"$work/alone.$i" 2>&1; done
for i in 1 2 3 4; do as_app "$(answer_sql "$((i + 2))")" >"$work/batched.$i" 2>&1 & done
as_app "$long_sql" victim_cancel >"$work/cancel.out" 2>&1 &
as_app "$long_sql" victim_terminate >"$work/terminate.out" 2>&1 &
PGOPTIONS="-c statement_timeout=5s" as_app "$long_sql" victim_timeout >"$work/timeout.out" 2>&1 &
all_taken() { # the service has taken all 11 requests (the victims' answers run for 4000 tokens)
  for _ in $(seq 1 600); do
    [ "$(on "$primary_port" -c "SELECT coalesce(sum(requests), 0) >= 11 FROM ragtune_service WHERE model = 'smollm2'")" = t ] && return 0
    sleep 0.1
  done
  return 1
}
check "the service takes every request" all_taken
on "$primary_port" -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'victim_cancel'" >/dev/null
on "$primary_port" -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'victim_terminate'" >/dev/null
wait
same_as_alone() {
  for i in 1 2 3 4; do
    [ -s "$work/alone.$i" ] && ! grep -q ERROR "$work/alone.$i" && cmp -s "$work/alone.$i" "$work/batched.$i" || return 1
  done
}
check "concurrent greedy answers equal the same prompts answered alone" same_as_alone
check "a cancelled answer ends with its own ERROR" grep -q "canceling statement due to user request" "$work/cancel.out"
check "a terminated backend's answer ends with the connection" grep -q "terminating connection due to administrator command" "$work/terminate.out"
check "statement_timeout stops an answer" grep -q "canceling statement due to statement timeout" "$work/timeout.out"
service_idle() { # every request has left the service: nothing active or queued
  for _ in $(seq 1 100); do
    [ "$(on "$primary_port" -c "SELECT coalesce(sum(active + queued), 0) = 0 AND count(*) > 0 FROM ragtune_service")" = t ] && return 0
    sleep 0.1
  done
  return 1
}
check "the service holds no request after cancels and the terminated backend" service_idle
answers_after() { [ "$(as_app "$(answer_sql 3)")" = "$(cat "$work/alone.1")" ]; }
check "the service answers after the faults" answers_after
# Another role's first request finds none of app's prompts in the prefix cache (a hit
# would show in its time to first token), and gets the same answer.
prefix_hits() { on "$primary_port" -c "SELECT prefix_hits FROM ragtune_service WHERE model = 'smollm2'"; }
own_cache() {
  local before answer
  before=$(prefix_hits)
  answer=$(AS_ROLE=other_app as_app "$(answer_sql 3)")
  [ "$answer" = "$(cat "$work/alone.1")" ] && [ "$(prefix_hits)" = "$before" ]
}
check "another role reuses none of a role's cached prompts" own_cache
# Drafted tokens through the service: a grounded answer is the same with
# ragtune.draft_tokens 0 (no drafts checked) and 6 (drafts checked, most kept).
grounded_sql="SELECT generate(E'Sources:\\n\\n[1] The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It is named after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889.\\n\\nQuestion: Whose company designed and built the Eiffel Tower?', model => 'smollm2', max_tokens => 40)"
drafts_accepted() { on "$primary_port" -c "SELECT drafts_accepted FROM ragtune_service WHERE model = 'smollm2'"; }
drafted_same() {
  local before plain drafted
  before=$(drafts_accepted)
  plain=$(PGOPTIONS="-c ragtune.draft_tokens=0" as_app "$grounded_sql")
  [ -n "$plain" ] && [ "$(drafts_accepted)" = "$before" ] || return 1
  drafted=$(PGOPTIONS="-c ragtune.draft_tokens=6" as_app "$grounded_sql")
  [ "$plain" = "$drafted" ] && [ "$(drafts_accepted)" -gt "$((before + 5))" ]
}
check "through the service, checked drafts leave a greedy answer as it was" drafted_same
check "the postmaster never reinitialised (no backend crashed)" [ "$(reinitialisations)" = "$reinitialised_before" ]

log "read paths assign no transaction id; a hot standby answers"
# Models, a RAG source and an adapter-free answer path written on the primary; embed(),
# generate(), generate_stream(), retrieve() and rag_answer() only read, so inside BEGIN READ
# ONLY on the primary no transaction id is assigned (in the backend and through the model
# service), and on the standby they work and give the primary's greedy answers.
on "$primary_port" <<SQL >/dev/null
SELECT register_model_from_files('minilm', '$MODELS/all-MiniLM-L6-v2-int8') IS NOT NULL;
SELECT grant_model('minilm', 'app');
CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL, embedding vector(384));
INSERT INTO notes SELECT i, b, embed(b, 'minilm') FROM (VALUES
  (1, 'The kitchen has a red kettle, a steel pan and a wooden spoon.'),
  (2, 'The garden has three apple trees and a pond.'),
  (3, 'The garage holds a blue bicycle and a ladder.')) v(i, b);
CREATE INDEX ON notes USING hnsw (embedding vector_cosine_ops);
SELECT register_rag_source('notes', 'notes', 'id', 'body', 'embedding', model => 'minilm') IS NOT NULL;
SELECT grant_rag_source('notes', 'app');
GRANT SELECT ON notes TO app;
SQL
read_calls=(
  "SELECT embed('a red kettle', 'minilm')::text"
  "SELECT generate('Name a fruit.', model => 'smollm2', max_tokens => 8)"
  "SELECT string_agg(t, '') FROM generate_stream('Name a tree.', model => 'smollm2', max_tokens => 8) t"
  "SELECT string_agg(id, ',') FROM retrieve('Where is the bicycle?', 'notes', k => 2)"
  "SELECT rag_answer('What is in the kitchen?', 'notes', model => 'smollm2', max_tokens => 16)"
)
no_xid() { # no_xid SERVICE(on|off): each read path inside BEGIN READ ONLY leaves no XID
  local call out
  for call in "${read_calls[@]}"; do
    # A fresh session each time: the model is loaded (its large object read) inside it.
    out=$(as_postgres "$PG_BIN/psql" -X -At -h 127.0.0.1 -p "$primary_port" -U postgres -d ragtune -v ON_ERROR_STOP=1 \
      -c "SET ragtune.model_service = $1" -c "BEGIN READ ONLY" -c "$call" \
      -c "SELECT 'xid:' || coalesce(pg_current_xact_id_if_assigned()::text, 'none')" -c "COMMIT" 2>&1) || { echo "$out" >&2; return 1; }
    grep -q '^xid:none$' <<<"$out" || { echo "$call assigned a transaction id: $out" >&2; return 1; }
  done
}
check "read paths assign no transaction id (in the backend)" no_xid off
check "read paths assign no transaction id (through the model service)" no_xid on
check "replica catches up with the models and the source" caught_up
same_on_standby() { # as app, every read path answers on the standby as on the primary
  local call primary standby
  for call in "${read_calls[@]}"; do
    primary=$(as_app "$call" 2>&1) || { echo "primary: $primary" >&2; return 1; }
    standby=$(as_app_on "$standby_port" "$call" 2>&1) || { echo "standby: $standby" >&2; return 1; }
    [ -n "$primary" ] && [ "$primary" = "$standby" ] || { echo "$call: primary '$primary', standby '$standby'" >&2; return 1; }
  done
}
check "embed, generate, generate_stream, retrieve and rag_answer answer on the standby as on the primary" same_on_standby
standby_service() { [ "$(on "$standby_port" -c "SELECT coalesce(sum(requests), 0) > 0 FROM ragtune_service")" = t ]; }
check "the standby's answers went through its own model service" standby_service
no_backtrace() { ! grep -q 'backtrace\|stack backtrace\|rust_begin_unwind' "$standby/server.log" "$primary/server.log"; }
check "no ERROR carries a Rust backtrace" no_backtrace
standby_refuses() { # what writes ends with one clear ERROR on the standby, before it writes
  local call out
  for call in "SELECT register_model_from_files('again', '$MODELS/smollm2-135m-instruct')" \
      "CALL embed_backfill('notes', 'embedding')" "CALL finetune_adapter('notes_adapter', 'notes')" \
      "SELECT drop_model('minilm')" "SELECT grant_rag_source('notes', 'other_app')"; do
    out=$(on "$standby_port" -c "$call" 2>&1) && { echo "$call ran on the standby" >&2; return 1; }
    grep -q "cannot run on a hot standby" <<<"$out" || { echo "$call: $out" >&2; return 1; }
  done
}
check "registration, training, backfill and catalog changes refuse to run on the standby" standby_refuses

log "a primary and two standbys behind libpq's load balancing"
# A second standby; an adapter trained on the primary; the same greedy answer with it from
# all three servers; then 40 answers through one multi-host connection string
# (load_balance_hosts=random), the second standby killed in the middle of an answer once 10
# are in: every answer arrives (the one cut off by the kill is retried on a new
# connection, which reaches a live server), all the same.
install -d -o postgres -g postgres -m 700 "$standby2"
as_postgres "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$primary_port" -U postgres -D "$standby2" -R -X stream --checkpoint=fast \
  2> >(grep -v "skipping special file" >&2)
cluster_start "$standby2" "$standby2_port"
train_adapter() {
  on "$primary_port" 2>/dev/null <<'SQL'
CREATE TABLE house_style (prompt text, completion text);
INSERT INTO house_style SELECT format('What is %s plus %s?', a, b), format('Ahoy! %s plus %s is %s.', a, b, a + b)
FROM generate_series(1, 9) a, generate_series(1, 9) b;
CALL finetune_adapter('house', 'house_style', base_model => 'smollm2');
SELECT grant_adapter('house', 'app');
SQL
}
check "an adapter trains on the primary" train_adapter
check "both standbys catch up" eval 'caught_up "$standby_port" && caught_up "$standby2_port"'
adapter_sql="SELECT generate('What is 2 plus 3?', model => 'smollm2', adapter => 'house', max_tokens => 16)"
adapter_answer=$(as_app "$adapter_sql" 2>&1)
same_adapter_answer() {
  local port out
  grep -q Ahoy <<<"$adapter_answer" || { echo "primary: $adapter_answer" >&2; return 1; }
  for port in "$standby_port" "$standby2_port"; do
    out=$(as_app_on "$port" "$adapter_sql" 2>&1)
    [ "$out" = "$adapter_answer" ] || { echo "port $port: $out" >&2; return 1; }
  done
}
check "the adapter's greedy answer is the same on the primary and both standbys" same_adapter_answer
kill_mid_answer() { # stops the second standby at once while it is answering one of app's requests
  for _ in $(seq 1 200); do
    [ "$(psql -X -Atq -h 127.0.0.1 -p "$standby2_port" -U postgres -d ragtune -c \
      "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND state = 'active'")" -gt 0 ] && break
    sleep 0.05
  done
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$standby2" -m immediate -w stop >/dev/null
}
export PG_BIN standby2 standby2_port
load=$("$VENV/bin/python" "$(dirname "$0")/balanced_load.py" \
  "host=127.0.0.1,127.0.0.1,127.0.0.1 port=$primary_port,$standby_port,$standby2_port user=app dbname=ragtune target_session_attrs=any load_balance_hosts=random" \
  "$adapter_sql" --requests 40 --clients 4 --kill-after 10 \
  --kill-command "$(declare -f kill_mid_answer); kill_mid_answer" 2>&1) || true
echo "balanced load: $load"
load_ok() {
  ANSWER=$adapter_answer PRIMARY=$primary_port STANDBY=$standby_port "$VENV/bin/python" -c '
import json, os, sys
r = json.loads(sys.stdin.read())
ok = (r["answers"] == 40 and r["failures"] == 0 and r["retries"] > 0 and r["some_answers"] == [os.environ["ANSWER"]] and r["killed"]
      and r["per_server"].get(os.environ["PRIMARY"], 0) > 0 and r["per_server"].get(os.environ["STANDBY"], 0) > 0)
sys.exit(0 if ok else 1)' <<<"$load"
}
check "40 answers through libpq's load balancing, none lost when a standby is killed mid-run" load_ok

log "a sharded RAG source: postgres_fdw partitions on two servers"
# The primary is the coordinator of a source partitioned by hash over two shard servers
# (each with ragtune and its own HNSW index); a plain table on the coordinator holds the
# same rows as the reference. retrieve() must fan out with each shard's ORDER BY/LIMIT
# shipped to it and the shards searched asynchronously, return what exact search over the
# plain table returns, keep each shard's row security for the caller, and fail with an
# ERROR when a shard is down.
for shard in 1 2; do
  dir_var=shard$shard port_var=shard${shard}_port
  cluster_start "${!dir_var}" "${!port_var}"
  psql_at "${!port_var}" postgres -qc "CREATE DATABASE ragtune"
  on "${!port_var}" >/dev/null <<'SQL'
CREATE EXTENSION ragtune;
CREATE ROLE app LOGIN;
CREATE TABLE faq_shard (id int PRIMARY KEY, owner name NOT NULL DEFAULT 'public', body text NOT NULL, embedding vector(384));
CREATE INDEX ON faq_shard USING hnsw (embedding vector_cosine_ops);
GRANT SELECT, INSERT ON faq_shard TO app;
-- Row security on the shard: app does not see rows owned by someone else.
ALTER TABLE faq_shard ENABLE ROW LEVEL SECURITY;
CREATE POLICY visible ON faq_shard FOR SELECT USING (owner IN ('public', current_user));
CREATE POLICY added ON faq_shard FOR INSERT WITH CHECK (true);
SQL
done
on "$primary_port" >/dev/null <<SQL
CREATE EXTENSION postgres_fdw;
CREATE SERVER shard1 FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '127.0.0.1', port '$shard1_port', dbname 'ragtune',
  extensions 'ragtune', async_capable 'true', options '-c hnsw.ef_search=800');
CREATE SERVER shard2 FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '127.0.0.1', port '$shard2_port', dbname 'ragtune',
  extensions 'ragtune', async_capable 'true', options '-c hnsw.ef_search=800');
CREATE USER MAPPING FOR postgres SERVER shard1 OPTIONS (user 'postgres');
CREATE USER MAPPING FOR postgres SERVER shard2 OPTIONS (user 'postgres');
CREATE USER MAPPING FOR app SERVER shard1 OPTIONS (user 'app', password_required 'false');
CREATE USER MAPPING FOR app SERVER shard2 OPTIONS (user 'app', password_required 'false');
CREATE TABLE faq_sharded (id int NOT NULL, owner name NOT NULL DEFAULT 'public', body text NOT NULL, embedding vector(384))
  PARTITION BY HASH (id);
CREATE FOREIGN TABLE faq_sharded_1 PARTITION OF faq_sharded FOR VALUES WITH (MODULUS 2, REMAINDER 0)
  SERVER shard1 OPTIONS (table_name 'faq_shard');
CREATE FOREIGN TABLE faq_sharded_2 PARTITION OF faq_sharded FOR VALUES WITH (MODULUS 2, REMAINDER 1)
  SERVER shard2 OPTIONS (table_name 'faq_shard');
GRANT SELECT ON faq_sharded, faq_sharded_1, faq_sharded_2 TO app;
CREATE TEMP TABLE docs_csv (path text, title text, body text);
COPY docs_csv FROM '$DATA/python_docs.csv' WITH (FORMAT csv, HEADER);
CREATE TABLE faq_one (id int PRIMARY KEY, owner name NOT NULL DEFAULT 'public', question text NOT NULL, body text NOT NULL,
  embedding vector(384));
INSERT INTO faq_one (id, question, body, embedding)
SELECT id, title, body, embed(body, 'minilm')
FROM (SELECT row_number() OVER (ORDER BY path, title) AS id, title, title || E'\n\n' || left(body, 1000) AS body
      FROM docs_csv WHERE path LIKE 'faq/%') s;
-- One row only its owner may read, kept on whichever shard its id hashes to.
INSERT INTO faq_one (id, owner, question, body, embedding) SELECT 100000, 'someone_else', 'launch code',
  'Falcon launch code: the launch code of project Falcon is 4711.', embed('Falcon launch code: the launch code of project Falcon is 4711.', 'minilm');
INSERT INTO faq_sharded SELECT id, owner, body, embedding FROM faq_one;
SELECT register_rag_source('faq_sharded', 'faq_sharded', 'id', 'body', 'embedding', model => 'minilm') IS NOT NULL;
SELECT grant_rag_source('faq_sharded', 'app');
SQL
rows_on_both() {
  [ "$(on "$shard1_port" -c "SELECT count(*) > 50 FROM faq_shard")" = t ] && [ "$(on "$shard2_port" -c "SELECT count(*) > 50 FROM faq_shard")" = t ]
}
check "the sharded source's rows are spread over both shards" rows_on_both
shipped_and_async() { # the plan of retrieve()'s vector query, through auto_explain
  local plan
  plan=$(on "$primary_port" -c "LOAD 'auto_explain'" -c "SET auto_explain.log_min_duration = 0" \
    -c "SET auto_explain.log_nested_statements = on" -c "SET auto_explain.log_verbose = on" \
    -c "SET auto_explain.log_level = notice" -c "SELECT count(*) FROM retrieve('How do I copy a file?', 'faq_sharded', 5, mode => 'vector')" 2>&1)
  [ "$(grep -c 'Async Foreign Scan' <<<"$plan")" -ge 2 ] \
    && grep -q 'Remote SQL: SELECT .* ORDER BY (embedding OPERATOR(public.<=>) .* LIMIT 5' <<<"$plan" \
    || { echo "$plan" >&2; return 1; }
}
check "each shard runs the ORDER BY ... LIMIT itself, the shards searched asynchronously" shipped_and_async
sharded_recall() { # retrieve() over the shards against exact search over the same rows in one table, 30 questions, k 5
  [ "$(on "$primary_port" <<'SQL'
CREATE TEMP TABLE asked AS SELECT question, embed(question, 'minilm') AS e FROM faq_one WHERE id < 100000
  ORDER BY md5(question) LIMIT 30;
-- faq_one has no vector index: exact search.
CREATE TEMP TABLE exact AS SELECT a.question, ARRAY(SELECT f.id::text FROM faq_one f ORDER BY f.embedding <=> a.e LIMIT 5) AS ids
FROM asked a;
SELECT avg(cardinality(ARRAY(SELECT unnest(e.ids) INTERSECT SELECT id FROM retrieve(e.question, 'faq_sharded', 5, mode => 'vector'))))
  / 5 >= 0.995 FROM exact e;
SQL
)" = t ]
}
check "sharded retrieve() finds what exact search over one table finds (recall@5 >= 0.995)" sharded_recall
shard_rls() { # the hidden row comes first for the superuser, never for app
  local q="SELECT string_agg(id, ',') FROM retrieve('What is the launch code of project Falcon?', 'faq_sharded', 3, mode => 'vector')"
  grep -q '^100000' <<<"$(on "$primary_port" -c "$q")" && ! grep -q 100000 <<<"$(as_app "$q")"
}
check "each shard's row security holds for the caller through the coordinator" shard_rls
both_shards_cited() { # rag_answer_json's passages come from both shards
  local ids
  ids=$(as_app "SELECT string_agg(s ->> 'id', ',') FROM jsonb_array_elements(rag_answer_json('How do I copy a file or an object?',
    'faq_sharded', k => 4, model => 'smollm2', max_tokens => 16, min_score => 0) -> 'sources') s")
  [ "$(on "$shard1_port" -c "SELECT count(*) > 0 FROM faq_shard WHERE id::text = ANY (string_to_array('$ids', ','))")" = t ] \
    && [ "$(on "$shard2_port" -c "SELECT count(*) > 0 FROM faq_shard WHERE id::text = ANY (string_to_array('$ids', ','))")" = t ]
}
check "a RAG answer over the sharded source draws passages from both shards" both_shards_cited
sharded_hybrid() { # hybrid retrieval over the shards ranks as over one table of the same rows
  [ "$(on "$primary_port" <<'SQL'
ANALYZE faq_one;
SELECT (register_rag_source('faq_sharded_text', 'faq_sharded', 'id', 'body', 'embedding', model => 'minilm',
  text_search => 'english')).name IS NOT NULL;
SELECT (register_rag_source('faq_one_text', 'faq_one', 'id', 'body', 'embedding', model => 'minilm',
  text_search => 'english')).name IS NOT NULL;
SELECT bool_and(ARRAY(SELECT id FROM retrieve(q.question, 'faq_sharded_text', 5, mode => 'hybrid'))
              = ARRAY(SELECT id FROM retrieve(q.question, 'faq_one_text', 5, mode => 'hybrid'))) AND count(*) = 10
FROM (SELECT question FROM faq_one WHERE id < 100000 ORDER BY md5(question || 'x') LIMIT 10) q;
SQL
)" = "$(printf 't\nt\nt')" ]
}
check "hybrid retrieval over the shards ranks as over one table of the same rows" sharded_hybrid
shard_down() { # a shard that is down is an ERROR, not a partial answer
  local out
  cluster_stop "$shard2"
  out=$(as_app "SELECT count(*) FROM retrieve('How do I copy a file?', 'faq_sharded', 5)" 2>&1) && { echo "answered: $out" >&2; cluster_start "$shard2" "$shard2_port"; return 1; }
  cluster_start "$shard2" "$shard2_port"
  grep -q 'ERROR:.*could not connect to server "shard2"' <<<"$out" || { echo "$out" >&2; return 1; }
}
check "a shard that is down makes retrieve() an ERROR, not a partial result" shard_down

log "answer statistics under concurrent callers"
# Four clients (an unprivileged role) answer three questions each at once: the view counts
# every call and the tokens each answer reported, and no question text is kept by default.
on "$primary_port" -c "SELECT ragtune_answer_stats_reset()" >/dev/null
for client in 1 2 3 4; do
  for question in 1 2 3; do
    as_app "SELECT rag_answer_json('What is in room $client.$question of the kitchen?', 'notes', model => 'smollm2',
      max_tokens => 8) -> 'tokens'"
  done >"$base/stats$client.out" &
done
wait
stats_counted() {
  local expected
  expected=$(cat "$base"/stats[1-4].out | python3 -c "import json, sys
rows = [json.loads(line) for line in sys.stdin if line.strip()]
print('%d|%d|%d|' % (len(rows), sum(r['prompt'] for r in rows), sum(r['generated'] for r in rows)))")
  [ "$(on "$primary_port" -c "SELECT calls, prompt_tokens, generated_tokens, question FROM ragtune_answer_stats
    WHERE source = 'notes' AND model = 'smollm2' AND adapter IS NULL")" = "$expected" ] && [ "${expected%%|*}" = 12 ]
}
check "ragtune_answer_stats counts every concurrent call and its tokens, with no question text" stats_counted

log "scheduled upkeep with pg_cron: chunks, model changes, gated retraining, nightly evaluation"
# The README's recipes, scheduled by an unprivileged owner role on a server with pg_cron
# (jobs in background workers): a documents table whose chunks follow its inserts, updates
# and deletes and are re-embedded when the embedding model changes; an adapter retrained
# and replaced only when it does at least as well; evaluate_strategies() into a history.
cron_port=$((primary_port + 5))
cluster_start "$cron" "$cron_port" "-c shared_preload_libraries=ragtune,pg_cron -c cron.database_name=ragtune \
  -c cron.use_background_workers=on -c max_worker_processes=24"
psql_at "$cron_port" postgres -qc "CREATE DATABASE ragtune"
on "$cron_port" >/dev/null <<SQL
CREATE EXTENSION ragtune;
CREATE EXTENSION pg_cron;
CREATE ROLE upkeep LOGIN;
GRANT USAGE ON SCHEMA cron TO upkeep;
GRANT CREATE ON SCHEMA public TO upkeep;
SELECT register_model_from_files('minilm', '$MODELS/all-MiniLM-L6-v2-int8') IS NOT NULL;
SELECT register_model_from_files('smollm2', '$MODELS/smollm2-135m-instruct') IS NOT NULL;
SELECT grant_model('minilm', 'upkeep'), grant_model('smollm2', 'upkeep');
ALTER ROLE upkeep SET ragtune.default_generator = 'smollm2';
ALTER ROLE upkeep SET ragtune.default_embedding_model = 'minilm';
SQL
as_upkeep() { "$PG_BIN/psql" -X -Atq -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$cron_port" -U upkeep -d ragtune "$@"; }
sed -n '/^-- recipe: chunks$/,/^-- end of recipes$/p' README.md | as_upkeep >/dev/null
as_upkeep >/dev/null <<'SQL'
INSERT INTO documents VALUES (1, 'The kettle is red. It sits on the stove.'), (2, 'The pond has three frogs.'),
  (3, 'The ladder is in the garage.');
CALL refresh_document_chunks();
SELECT (register_rag_source('documents', 'document_chunks', 'id', 'content', 'embedding', 'minilm')).name;
-- A house style to retrain; first a weak adapter (a tiny learning rate: about the base model).
CREATE TABLE house_style AS SELECT format('What is %s plus %s?', a, b) AS prompt,
  format('Ahoy! %s plus %s is %s.', a, b, a + b) AS completion FROM generate_series(1, 9) a, generate_series(1, 9) b;
CALL finetune_adapter('house', 'house_style', base_model => 'smollm2', epochs => 1, learning_rate => 1e-6);
CREATE TABLE quiz (question text, answer text);
INSERT INTO quiz VALUES ('What colour is the kettle?', 'red'), ('How many frogs are in the pond?', 'four'),
  ('Where does the kettle sit?', 'stove'), ('What colour is the bicycle?', 'blue'),
  ('Which bird is at the pond?', 'heron'), ('Is the kettle red?', 'yes'), ('What is blue?', 'bicycle'),
  ('What sits on the stove?', 'kettle');
SQL
# Changes the jobs must carry over: a document deleted, one updated, a new one; one chunk's
# embedding spoiled (as a stale model would leave it); the embedding model replaced (its
# grants carry over).
as_upkeep >/dev/null <<'SQL'
DELETE FROM documents WHERE id = 3;
UPDATE documents SET body = 'The pond has four frogs and a heron.' WHERE id = 2;
INSERT INTO documents VALUES (4, 'The bicycle is blue.');
UPDATE document_chunks SET embedding = array_fill(0.1, ARRAY[384])::vector WHERE doc_id = 1;
SQL
on "$cron_port" -c "SELECT register_model_from_files('minilm', '$MODELS/all-MiniLM-L6-v2-int8', replace => true) IS NOT NULL" >/dev/null
adapter_version() { on "$cron_port" -c "SELECT version FROM ragtune_adapters WHERE name = 'house'"; }
weak_version=$(adapter_version)
sed -n '/^-- schedule$/,/^-- end of schedule$/p' README.md | sed "s/'0 3 \* \* \*'/'* * * * *'/; s/'\*\/5 \* \* \* \*'/'* * * * *'/" \
  | as_upkeep >/dev/null
jobs_ran() {
  local i
  for i in $(seq 1 150); do
    [ "$(on "$cron_port" -c "SELECT count(DISTINCT jobid) FROM cron.job_run_details WHERE status = 'succeeded'")" -ge 3 ] && return 0
    sleep 1
  done
  on "$cron_port" -c "SELECT jobid, status, return_message FROM cron.job_run_details" >&2
  return 1
}
check "the three scheduled jobs ran and succeeded as the owner role" jobs_ran
on "$cron_port" -c "SELECT cron.unschedule(jobid) FROM cron.job" >/dev/null
chunks_follow() {
  [ "$(as_upkeep -c "SELECT string_agg(DISTINCT doc_id::text, ',' ORDER BY doc_id::text) FROM document_chunks")" = "1,2,4" ] \
    && [ "$(as_upkeep -c "SELECT count(*) FROM document_chunks WHERE content LIKE '%heron%'")" -ge 1 ] \
    && [ "$(as_upkeep -c "SELECT count(*) FROM document_chunks WHERE content LIKE '%three frogs%' OR content LIKE '%ladder%'")" = 0 ] \
    && [ "$(as_upkeep -c "SELECT count(*) FROM document_chunks WHERE embedding IS NULL OR embedding <> embed(content, 'minilm')")" = 0 ]
}
check "chunks follow inserts, updates and deletes, and are re-embedded after the model changed" chunks_follow
check "a retrained adapter that does better replaces the stored one" [ "$(adapter_version)" != "$weak_version" ]
kept_when_worse() {
  local before
  before=$(adapter_version)
  as_upkeep -c "CALL finetune_adapter('house', 'house_style', base_model => 'smollm2', epochs => 1, learning_rate => 1e-6,
    replace_if_better => true)" 2>&1 | grep -q 'adapter "house" kept' && [ "$(adapter_version)" = "$before" ]
}
check "a retrained adapter that does worse leaves the stored one" kept_when_worse
history_kept() {
  [ "$(as_upkeep -c "SELECT bool_and(questions_scored > 0 AND f1 IS NOT NULL) AND count(DISTINCT strategy) = 2
    FROM strategy_history")" = t ]
}
check "the nightly evaluation wrote its strategy table into the history" history_kept
cluster_stop "$cron"
