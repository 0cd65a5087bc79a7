#!/usr/bin/env bash
# The main job on embedded defaults: set up, build and install ragtune, start a local
# cluster on 127.0.0.1, load real data, and answer queries. Safe to rerun.
source "$(dirname "$0")/lib.sh"
glove_database ragtune
demo() { psql_at "$PORT" ragtune "$@"; }

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

log "the Python documentation: chunked, embedded in the database, indexed with HNSW"
"$ROOT/scripts/load_docs.sh" "$PORT" ragtune
log "semantic search: sections that answer a question"
demo <<'SQL'
\timing on
SELECT round((1 - (embedding <=> (SELECT embed('how do I remove duplicates from a list'))))::numeric, 3) AS similarity,
       path, title, left(regexp_replace(content, '\s+', ' ', 'g'), 90) AS excerpt
FROM doc_chunks
ORDER BY embedding <=> (SELECT embed('how do I remove duplicates from a list'))
LIMIT 5;
SQL

log "text generation and retrieval-augmented answers (Qwen2.5-Coder-0.5B-Instruct, in the database)"
"$ROOT/scripts/load_generators.sh" "$PORT" ragtune
demo -q <<'SQL'
SET client_min_messages = warning;
SELECT register_rag_source('python_docs', 'doc_chunks', 'id', 'content', 'embedding', 'all-MiniLM-L6-v2',
  replace => true, text_search => 'english', tsvector_column => 'tsv')
WHERE NOT EXISTS (SELECT FROM ragtune_rag_sources WHERE name = 'python_docs' AND tsvector_column = 'tsv');
SQL
demo <<'SQL'
\timing on
SET ragtune.intra_op_threads = 2;
\x on
SELECT question, rag_answer(question) AS "answer, with its sources"
FROM unnest(ARRAY['How do I convert a string to a number?',
                  'How do I read a file line by line?',
                  'What does the global statement do?']) AS question;
SQL

cat <<EOF

The cluster keeps running. Connect with:
  psql -h 127.0.0.1 -p $PORT -U postgres ragtune
Stop it with:
  scripts/cluster.sh stop
EOF
