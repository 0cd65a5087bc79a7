#!/usr/bin/env bash
# Loads the Python documentation into table `doc_chunks (id, path, title, seq, content,
# tsv, embedding vector(384))` of database $2 on the local cluster at port $1: sections cut
# into pieces of at most 254 model tokens by chunk() after clean_text() took their reST
# markup out, embedded with the default model (registered here if missing) by two
# parallel embed_backfill() calls, and indexed with HNSW (embedding) and GIN (tsv, the
# content's English lexemes). The ragtune extension must already exist there. Reruns skip
# what is done.
#   load_docs.sh PORT DB [--sections-only]   # stop after loading the sections
source "$(dirname "$0")/lib.sh"
PORT=$1 DB=$2
db() { psql_at "$PORT" "$DB" "$@"; }
default_embedding_model "$PORT" "$DB"
db -q >/dev/null <<'SQL'
SET client_min_messages = warning;
CREATE TABLE IF NOT EXISTS python_docs (id serial PRIMARY KEY, path text NOT NULL, title text NOT NULL, body text NOT NULL);
CREATE TABLE IF NOT EXISTS doc_chunks (id bigserial PRIMARY KEY, doc_id int NOT NULL, path text NOT NULL,
  title text NOT NULL, seq int NOT NULL, content text NOT NULL);
ALTER TABLE doc_chunks ADD COLUMN IF NOT EXISTS tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED;
-- Recreating the extension drops the vector column with it.
ALTER TABLE doc_chunks ADD COLUMN IF NOT EXISTS embedding vector(384);
SQL
# The sections are reloaded (and so rechunked) when scripts/python_docs.py made a new CSV.
sections=$(md5sum "$DATA/python_docs.csv" | cut -d' ' -f1)
if [ "$(db -Atc "SELECT obj_description('python_docs'::regclass, 'pg_class')")" != "$sections" ]; then
  log "loading the Python documentation's sections"
  db -q -v sections="$sections" <<SQL
TRUNCATE python_docs RESTART IDENTITY;
\\copy python_docs (path, title, body) FROM '$DATA/python_docs.csv' WITH (FORMAT csv, HEADER)
COMMENT ON TABLE python_docs IS :'sections';
SQL
fi
[ "${3:-}" = --sections-only ] && exit 0
# How the chunks are made, kept as the table's comment: chunks made another way are remade.
recipe="sections $sections without their reST markup (clean_text), cut by chunk(254, 32)"
if [ "$(db -Atc "SELECT count(*) FROM doc_chunks")" = 0 ] \
    || [ "$(db -Atc "SELECT obj_description('doc_chunks'::regclass, 'pg_class')")" != "$recipe" ]; then
  log "cutting sections into chunks of at most 254 tokens, without their markup"
  db -q -v recipe="$recipe" <<'SQL'
TRUNCATE doc_chunks RESTART IDENTITY;
INSERT INTO doc_chunks (doc_id, path, title, seq, content)
SELECT d.id, d.path, d.title, c.seq, c.content
FROM python_docs d, chunk(clean_text(d.title, 'rst') || E'\n\n' || clean_text(d.body, 'rst'), 254, 32)
  WITH ORDINALITY AS c(content, seq);
COMMENT ON TABLE doc_chunks IS :'recipe';
SQL
fi
db -qc "SELECT embed_column('doc_chunks', 'content', 'embedding')" >/dev/null
embed_content "$PORT" "$DB" doc_chunks chunks
db -q <<'SQL'
SET client_min_messages = warning;
CREATE INDEX IF NOT EXISTS doc_chunks_embedding ON doc_chunks USING hnsw (embedding vector_cosine_ops);
CREATE INDEX IF NOT EXISTS doc_chunks_tsv ON doc_chunks USING gin (tsv);
ANALYZE doc_chunks;
SQL
