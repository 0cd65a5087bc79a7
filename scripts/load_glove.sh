#!/usr/bin/env bash
# Loads GloVe 6B 50d into table `glove (id, word, embedding vector(50))` of database $2 on
# the local cluster at port $1, recreating the ragtune extension so the database always
# matches the installed build. The raw rows live in a plain `glove_raw` table that
# survives that, so reruns take seconds.
source "$(dirname "$0")/lib.sh"
PORT=$1 DB=$2
db() { psql_at "$PORT" "$DB" "$@"; }

db -q <<'SQL'
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS ragtune CASCADE;
CREATE EXTENSION ragtune;
CREATE TABLE IF NOT EXISTS glove_raw (id int PRIMARY KEY, word text NOT NULL, vec real[] NOT NULL);
SQL
if [ "$(db -Atc 'SELECT count(*) FROM glove_raw')" != 400000 ]; then
  log "loading GloVe 6B 50d (400,000 words)"
  db -qc "TRUNCATE glove_raw"
  db -qc "\\copy glove_raw FROM '$DATA/glove50.csv' WITH (FORMAT csv)"
fi
log "building the vector table"
db -q <<'SQL'
SET client_min_messages = warning;
DROP TABLE IF EXISTS glove;
CREATE TABLE glove AS SELECT id, word, vec::vector(50) AS embedding FROM glove_raw;
ALTER TABLE glove ADD PRIMARY KEY (id);
CREATE INDEX ON glove (word);
VACUUM ANALYZE glove;
SQL
