#!/usr/bin/env bash
# Answer quality of rag_answer() on the Python Programming FAQ: questions are its question
# headings, the corpus every section of the Python docs (RAG source python_docs). Prints
# recall@1/@5 of the gold section with retrieve(), token F1 against the gold answer's first
# paragraph with retrieval (rag_answer_json) and closed-book (generate()), how often answers
# cite [n] and say they do not know; --sweep scores a grid of k, passage_tokens and
# passage_order on a dev half and evaluates the best on the held-out half. Runs against the
# demo cluster and its database `ragtune` (scripts/demo.sh has loaded the docs); it starts
# nothing itself. About 10 s per answer with the default generator on 2 cores.
#   bench/rag_quality.sh [--limit N] [--seed 1] [--sweep] [--model NAME] [--verbose] ...  (--help)
source "$(dirname "$0")/../scripts/lib.sh"
PORT=$(pin cluster.demo_port)
"$VENV/bin/python" "$ROOT/bench/rag_quality.py" "host=127.0.0.1 port=$PORT user=postgres dbname=ragtune" "$@"
