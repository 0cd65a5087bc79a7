#!/usr/bin/env bash
# Loads GloVe 6B 50d into table `glove (id, word, embedding vector(50))` of database $2 on
# the local cluster at port $1. The raw rows are kept in a plain `glove_raw` table, and the
# ragtune extension is recreated only when the installed build's SQL changed since the last
# run, so reruns take seconds.
source "$(dirname "$0")/lib.sh"
PORT=$1 DB=$2
db() { psql_at "$PORT" "$DB" "$@"; }

script=$("$PG_CONFIG" --sharedir)/extension/ragtune--$(awk -F'"' '/^version/ {print $2; exit}' "$ROOT/Cargo.toml").sql
build=$(md5sum "$script" | cut -d' ' -f1)
db -q <<'SQL'
SET client_min_messages = warning;
CREATE TABLE IF NOT EXISTS ragtune_demo_build (sql_md5 text);
CREATE TABLE IF NOT EXISTS glove_raw (id int PRIMARY KEY, word text NOT NULL, vec real[] NOT NULL);
SQL
if [ "$(db -Atc 'SELECT sql_md5 FROM ragtune_demo_build')" != "$build" ] \
    || [ "$(db -Atc "SELECT count(*) FROM pg_extension WHERE extname = 'ragtune'")" = 0 ]; then
  log "(re)creating the ragtune extension in $DB: the installed SQL changed"
  db -q -v build="$build" <<'SQL'
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS ragtune CASCADE;
CREATE EXTENSION ragtune;
DROP TABLE IF EXISTS glove;
TRUNCATE ragtune_demo_build;
INSERT INTO ragtune_demo_build VALUES (:'build');
SQL
fi

if [ "$(db -Atc 'SELECT count(*) FROM glove_raw')" != 400000 ]; then
  log "loading GloVe 6B 50d (400,000 words)"
  db -qc "TRUNCATE glove_raw"
  db -qc "\\copy glove_raw FROM '$DATA/glove50.csv' WITH (FORMAT csv)"
  db -qc "SET client_min_messages = warning" -c "DROP TABLE IF EXISTS glove"
fi
if [ "$(db -Atc "SELECT count(*) FROM pg_tables WHERE tablename = 'glove'")" = 0 ]; then
  log "building the vector table"
  db -q <<'SQL'
CREATE TABLE glove AS SELECT id, word, vec::vector(50) AS embedding FROM glove_raw;
ALTER TABLE glove ADD PRIMARY KEY (id);
CREATE INDEX ON glove (word);
VACUUM ANALYZE glove;
SQL
fi
