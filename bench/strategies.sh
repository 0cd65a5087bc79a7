#!/usr/bin/env bash
# evaluate_strategies() on the Python FAQ's question headings (table faq_questions, made by
# scripts/demo.sh with bench/faq.py): closed-book, RAG, fine-tuned and both on the same
# --questions held-out questions with the default models, and what the call cost beside the
# sum of its answers and its training (the target: no extra passes). Runs against the demo
# cluster and its database `ragtune`; it starts nothing itself.
#   bench/strategies.sh [--questions 100] [--held-out 0.6] [--max-tokens 64] [--seed 1]
source "$(dirname "$0")/../scripts/lib.sh"
PORT=$(pin cluster.demo_port)
questions=100 held_out=0.6 max_tokens=64 seed=1
while [ $# -gt 0 ]; do
  case $1 in
    --questions) questions=$2; shift 2 ;;
    --held-out) held_out=$2; shift 2 ;;
    --max-tokens) max_tokens=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
psql_at "$PORT" ragtune -v ON_ERROR_STOP=1 <<SQL
SET ragtune.intra_op_threads = 2;
\timing on
CREATE TEMP TABLE measured AS SELECT * FROM evaluate_strategies('faq_questions', 'python_docs',
  passage_column => 'passages', held_out_fraction => $held_out, max_questions => $questions,
  max_tokens => $max_tokens, seed => $seed);
\timing off
SELECT strategy, questions_scored AS n, round(accuracy::numeric, 3) AS accuracy, round(f1::numeric, 3) AS f1,
       format('%s-%s', round(f1_ci[1]::numeric, 3), round(f1_ci[2]::numeric, 3)) AS f1_95,
       round((differences -> 'closed_book' -> 'f1' ->> 0)::numeric, 3) AS f1_vs_closed,
       round(citation_precision::numeric, 3) AS cite_prec, round(retrieval_recall::numeric, 3) AS recall,
       no_passage AS dont_know, round(p50_ms) AS p50_ms, round(p95_ms) AS p95_ms, round(retrieve_p50_ms) AS retr,
       round(prompt_p50_ms) AS prompt, round(generate_p50_ms) AS gen, round(prompt_tokens) AS tok_in,
       round(generated_tokens) AS tok_out, round(training_seconds::numeric, 1) AS train_s,
       pg_size_pretty(adapter_bytes) AS adapter
FROM measured ORDER BY array_position(ARRAY['closed_book', 'rag', 'finetuned', 'rag_finetuned'], strategy);
-- The call's cost against its parts (the NOTICEs above give its own total).
SELECT round((sum((a ->> 'total_ms')::float8) / 1e3)::numeric, 1) AS answers_s,
       round(max(training_seconds)::numeric, 1) AS training_s
FROM measured, jsonb_array_elements(answers) a;
SQL
