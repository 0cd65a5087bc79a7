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

log "RAG, fine-tuning or both? Measured on the FAQ's own questions, held out from training"
# The FAQ's question headings with their first paragraph as the reference answer and their
# own section's chunks as the passages that hold it (bench/faq.py). Measured again only when
# the models or the chunks changed; a rerun prints the stored table.
evaluation="held_out_fraction => 0.3, max_questions => 40, max_tokens => 64, seed => 1"
measured=$(demo -Atc "SELECT md5(string_agg(name || ':' || version, ',' ORDER BY name) || obj_description('doc_chunks'::regclass, 'pg_class')
  || '$evaluation') FROM ragtune_models")
if [ "$(demo -Atc "SELECT obj_description(to_regclass('demo_strategies'), 'pg_class')")" != "$measured" ]; then
  "$VENV/bin/python" "$ROOT/bench/faq.py" "host=127.0.0.1 port=$PORT user=postgres dbname=ragtune" faq_questions \
    --pages faq/design faq/extending faq/general faq/gui faq/installed faq/library faq/programming faq/windows
  demo -q <<SQL
SET ragtune.intra_op_threads = 2;
DROP TABLE IF EXISTS demo_strategies;
CREATE TABLE demo_strategies AS SELECT * FROM evaluate_strategies('faq_questions', 'python_docs',
  passage_column => 'passages', $evaluation);
COMMENT ON TABLE demo_strategies IS '$measured';
SQL
fi
demo <<'SQL'
SELECT strategy, questions_scored AS questions, round(f1::numeric, 3) AS "token F1",
       format('%s-%s', round(f1_ci[1]::numeric, 3), round(f1_ci[2]::numeric, 3)) AS "95% interval",
       round((differences -> 'closed_book' -> 'f1' ->> 0)::numeric, 3) AS "F1 vs closed-book",
       round(citation_precision::numeric, 2) AS "citation precision", round(retrieval_recall::numeric, 2) AS "recall@2",
       round(p50_ms) AS "p50 ms", round(training_seconds) AS "training s", pg_size_pretty(adapter_bytes) AS adapter
FROM demo_strategies
ORDER BY array_position(ARRAY['closed_book', 'rag', 'finetuned', 'rag_finetuned'], strategy);
SQL

cat <<EOF

The cluster keeps running. Connect with:
  psql -h 127.0.0.1 -p $PORT -U postgres ragtune
Stop it with:
  scripts/cluster.sh stop
EOF
