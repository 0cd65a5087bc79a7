"""Driver for bench/sharded_retrieval.sh: retrieve() over source `one` (one table) and
`sharded` (the same rows over two postgres_fdw shards), alternating per question, best
of --reps per call; recall@k of each against exact search over the one table (sequential
scan, exact cosine distances), with a 95% bootstrap interval for the difference.

    sharded_retrieval.py DSN QUESTIONS_FILE [--k 10] [--reps 3] [--seed 1]
"""
import argparse
import time

import numpy as np
import psycopg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dsn")
    ap.add_argument("questions")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    questions = [q for q in open(a.questions).read().splitlines() if q.strip()]
    with psycopg.connect(a.dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT count(*) FROM chunks_one").fetchone()[0]
        for source in ("one", "sharded"):
            conn.execute("SELECT count(*) FROM retrieve('warm up', %s, 1, mode => 'vector')", (source,))
        ms = {"one": [], "sharded": []}
        recall = {"one": [], "sharded": []}
        for q in questions:
            conn.execute("SET enable_indexscan = off")
            exact = {r[0] for r in conn.execute(
                "SELECT id::text FROM chunks_one ORDER BY embedding <=> (SELECT embed(%s, 'all-MiniLM-L6-v2')) LIMIT %s",
                (q, a.k))}
            conn.execute("RESET enable_indexscan")
            for source in ("one", "sharded"):
                best, ids = None, None
                for _ in range(a.reps):
                    started = time.perf_counter()
                    ids = [r[0] for r in conn.execute("SELECT id FROM retrieve(%s, %s, %s, mode => 'vector')",
                                                      (q, source, a.k))]
                    took = (time.perf_counter() - started) * 1e3
                    best = took if best is None else min(best, took)
                ms[source].append(best)
                recall[source].append(len(exact & set(ids)) / a.k)
    print(f"{rows} chunks (Python docs), {len(questions)} FAQ questions, retrieve(q, k => {a.k}, mode => 'vector'), "
          f"best of {a.reps} per call, embedding included; shards: 2 servers on this machine, postgres_fdw, "
          f"hnsw.ef_search 800 on the shards (server option), ragtune.retrieve_ef_search on the coordinator")
    print(f"{'source':<10} {'p50 ms':>8} {'p95 ms':>8} {'recall@' + str(a.k):>10}")
    for source in ("one", "sharded"):
        t = np.array(ms[source])
        print(f"{source:<10} {np.percentile(t, 50):>8.1f} {np.percentile(t, 95):>8.1f} {np.mean(recall[source]):>10.4f}")
    diff = np.array(recall["sharded"]) - np.array(recall["one"])
    draws = np.random.default_rng(a.seed).choice(diff, (5000, len(diff))).mean(axis=1)
    print(f"recall sharded - one: {diff.mean():+.4f} [{np.percentile(draws, 2.5):+.4f}..{np.percentile(draws, 97.5):+.4f}]")


if __name__ == "__main__":
    main()
