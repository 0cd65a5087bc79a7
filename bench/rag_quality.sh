#!/usr/bin/env bash
# Answer quality of rag_answer(). Default set: the Python Programming FAQ: questions are its
# question headings, the corpus every section of the Python docs (RAG source python_docs).
# Prints recall@1/@5 of the gold section with retrieve(), token F1 against the gold answer's
# first paragraph with retrieval (rag_answer_json) and closed-book (generate()), how often
# answers cite [n] and say they do not know; --sweep scores a grid of k, passage_tokens and
# passage_order on a dev half and evaluates the best on the held-out half.
# --set squad: factoid questions we did not write (SQuAD v1.1 dev, loaded here by
# scripts/load_squad.sh): accuracy, token F1, citation precision and recall, retrieval
# recall and latency split, closed-book, RAG per mode and the gold passage (in our layout,
# and in a plain Python onnxruntime pipeline: the ceiling of the target) side by
# side (bench/factoid.py; --limit, --modes, --k, --passage-tokens, --max-tokens).
# Runs against the demo cluster and its database `ragtune` (scripts/demo.sh has loaded the
# docs); it starts nothing itself. About 10 s per answer with the default generator on 2 cores.
#   bench/rag_quality.sh [--limit N] [--seed 1] [--sweep] [--model NAME] [--verbose] ...  (--help)
#   bench/rag_quality.sh --set squad [--limit 200] [--modes vector hybrid] ...
source "$(dirname "$0")/../scripts/lib.sh"
PORT=$(pin cluster.demo_port)
DSN="host=127.0.0.1 port=$PORT user=postgres dbname=ragtune"
if [ "${1:-}" = --set ] && [ "${2:-}" = squad ]; then
  shift 2
  "$ROOT/scripts/load_squad.sh" "$PORT" ragtune
  exec "$VENV/bin/python" "$ROOT/bench/factoid.py" "$DSN" "$MODELS" "$@"
fi
[ "${1:-}" = --set ] && [ "${2:-}" = faq ] && shift 2
"$VENV/bin/python" "$ROOT/bench/rag_quality.py" "$DSN" "$@"
