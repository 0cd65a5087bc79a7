#!/usr/bin/env bash
# The main job on embedded defaults: set up, build and install ragtune, start a local
# cluster on 127.0.0.1, load real data, and answer queries. Safe to rerun.
source "$(dirname "$0")/lib.sh"
"$ROOT/scripts/setup.sh"
"$ROOT/scripts/cluster.sh" start
PORT=$(pin cluster.demo_port)

if ! psql_at "$PORT" postgres -Atc "SELECT 1 FROM pg_database WHERE datname = 'ragtune'" | grep -q 1; then
  psql_at "$PORT" postgres -qc "CREATE DATABASE ragtune"
fi
demo() { psql_at "$PORT" ragtune "$@"; }

# The extension is recreated on every run so the database always matches the build;
# the raw data lives in plain columns and survives that.
demo -q <<'SQL'
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS ragtune CASCADE;
CREATE EXTENSION ragtune;
CREATE TABLE IF NOT EXISTS glove_raw (id int PRIMARY KEY, word text NOT NULL, vec real[] NOT NULL);
SQL
if [ "$(demo -Atc 'SELECT count(*) FROM glove_raw')" != 400000 ]; then
  log "loading GloVe 6B 50d (400,000 words)"
  demo -qc "TRUNCATE glove_raw"
  demo -qc "\\copy glove_raw FROM '$DATA/glove50.csv' WITH (FORMAT csv)"
fi
log "building the vector table"
demo -q <<'SQL'
DROP TABLE IF EXISTS glove;
CREATE TABLE glove AS SELECT id, word, vec::vector(50) AS embedding FROM glove_raw;
ALTER TABLE glove ADD PRIMARY KEY (id);
CREATE INDEX ON glove (word);
ANALYZE glove;
SQL

log "nearest neighbours by exact cosine distance (sequential scan over 400,000 vectors)"
demo <<'SQL'
\timing on
SELECT q.word AS query,
       string_agg(n.word || ' (' || round(n.distance::numeric, 3) || ')', ', ' ORDER BY n.distance) AS nearest
FROM glove q
CROSS JOIN LATERAL (
  SELECT g.word, g.embedding <=> q.embedding AS distance
  FROM glove g
  WHERE g.id <> q.id
  ORDER BY g.embedding <=> q.embedding
  LIMIT 8
) n
WHERE q.word IN ('king', 'paris', 'database')
GROUP BY q.word
ORDER BY array_position(ARRAY['king', 'paris', 'database'], q.word);
SQL

cat <<EOF

The cluster keeps running. Connect with:
  psql -h 127.0.0.1 -p $PORT -U postgres ragtune
Stop it with:
  scripts/cluster.sh stop
EOF
