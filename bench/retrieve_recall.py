"""Driver for bench/retrieve_recall.sh: what ragtune.retrieve_ef_search buys, against exact
search in the same run.

Part 1, python_docs (the demo's RAG source, 17,665 MiniLM passages): every question heading
of the Python FAQ pages is asked with retrieve(); the gold passage is any chunk of the
question's own section. For exact search and for each ragtune.retrieve_ef_search it prints
gold recall@1/@5/@10 (with 95% bootstrap intervals), the share of exact search's top 10
found (neighbour recall@10) and milliseconds per retrieve() (embedding included), first with
the plan the planner chooses, then with the index scan forced (enable_seqscan off).

With --modes, instead: gold recall@1/@5/@10 of retrieve()'s modes (vector, text, hybrid)
side by side, with 95% bootstrap intervals and the paired interval of hybrid minus vector
at recall@5, and ms per query, on the FAQ questions over python_docs and on SQuAD v1.1
dev's questions over its 2,067 paragraphs (source squad, scripts/load_squad.sh; gold =
the question's own paragraph; --squad-limit of a --seed shuffle).

Part 2, GloVe 6B 50d (--glove, in database ragtune_bench as bench/hnsw.sh: 399,000 rows,
1,000 held-out queries): neighbour recall@5/@10 of the index scan at each ef_search
against exact search, and milliseconds per query: the same scan as retrieve()'s on a
source 20x larger.

    retrieve_recall.py DSN [--ef 40 100 200 400] [--glove GLOVE_DSN] [--seed 1]
    retrieve_recall.py DSN --modes [--squad-limit 2000] [--seed 1]
"""
import argparse
import os
import random
import time

import numpy as np
import psycopg

import faq

SOURCE = "python_docs"
FAQ_PAGES = ["faq/general", "faq/programming", "faq/design", "faq/library", "faq/extending",
             "faq/windows", "faq/gui", "faq/installed"]
K = 10


def bootstrap(hits, seed, rounds=2000):
    """Mean of 0/1 `hits` and its 95% percentile bootstrap interval."""
    hits = np.asarray(hits, dtype=float)
    means = np.random.default_rng(seed).choice(hits, (rounds, len(hits))).mean(axis=1)
    return hits.mean(), np.percentile(means, 2.5), np.percentile(means, 97.5)


def retrieved(conn, questions):
    """For each question, retrieve()'s top K as (chunk ids, section ids), and ms per call."""
    out = []
    started = time.perf_counter()
    for _, question, _ in questions:
        rows = conn.execute(
            "SELECT r.id, c.doc_id FROM retrieve(%s, %s, %s) WITH ORDINALITY AS r(id, content, score, rank) "
            "JOIN doc_chunks c ON c.id = r.id::bigint ORDER BY r.rank", (question, SOURCE, K)).fetchall()
        out.append(([r[0] for r in rows], [r[1] for r in rows]))
    return out, (time.perf_counter() - started) / len(questions) * 1e3


def python_docs(dsn, efs, seed):
    with psycopg.connect(dsn, autocommit=True) as conn:
        questions = faq.questions(conn, FAQ_PAGES)
        # python_docs ids are sections; doc_chunks.doc_id names a chunk's section.
        rows = conn.execute("SELECT count(*) FROM doc_chunks").fetchone()[0]
        conn.execute("SELECT count(*) FROM retrieve('warm up', %s)", (SOURCE,))
        print(f"== {SOURCE}: {rows} passages, {len(questions)} FAQ questions, gold = any chunk of the question's section ==")
        conn.execute("SET enable_indexscan = off")
        exact, exact_ms = retrieved(conn, questions)
        conn.execute("RESET enable_indexscan")
        header = f"{'search':<28} {'recall@1':>22} {'recall@5':>22} {'recall@10':>22} {'top-10 overlap':>15} {'ms/query':>9}"
        print(header)

        def line(label, found, ms):
            cells = []
            for k in (1, 5, 10):
                hits = [gold in sections[:k] for (gold, _, _), (_, sections) in zip(questions, found)]
                mean, low, high = bootstrap(hits, seed)
                cells.append(f"{mean:.3f} [{low:.3f}-{high:.3f}]")
            overlap = np.mean([len(set(ids) & set(e)) / K for (ids, _), (e, _) in zip(found, exact)])
            print(f"{label:<28} {cells[0]:>22} {cells[1]:>22} {cells[2]:>22} {overlap:>15.4f} {ms:>9.1f}", flush=True)

        line("exact (no index)", exact, exact_ms)
        conn.execute("SET hnsw.ef_search = 1")  # retrieve() raises it to the setting
        # The planner's choice, then the index scan alone: where the graph's cost estimate
        # exceeds a sequential scan's (a high ef_search on a small table) the planner
        # searches exactly.
        for forced in (False, True):
            conn.execute(f"SET enable_seqscan = {'off' if forced else 'on'}")
            for ef in efs:
                conn.execute(f"SET ragtune.retrieve_ef_search = {int(ef)}")
                found, ms = retrieved(conn, questions)
                line(f"{'index only, ' if forced else ''}ef_search {ef}", found, ms)


MODES = ("vector", "text", "hybrid")


def mode_recall(conn, label, source, asked, gold_of, seed):
    """Gold recall@1/@5/@10 of each mode of retrieve() on `source`: `asked` is
    [(question, gold)], gold_of(ids) maps retrieved ids to their gold keys, best first."""
    print(f"\n== {label} ==")
    print(f"{'mode':<8} {'recall@1':>22} {'recall@5':>22} {'recall@10':>22} {'ms/query':>9}")
    hits5 = {}
    for mode in MODES:
        found = []
        started = time.perf_counter()
        for question, _ in asked:
            ids = [r[0] for r in conn.execute("SELECT id FROM retrieve(%s, %s, %s, mode => %s)",
                                              (question, source, K, mode)).fetchall()]
            found.append(gold_of(ids))
        ms = (time.perf_counter() - started) / len(asked) * 1e3
        cells = []
        for k in (1, 5, 10):
            hits = [gold in keys[:k] for (_, gold), keys in zip(asked, found)]
            if k == 5:
                hits5[mode] = np.asarray(hits, dtype=float)
            mean, low, high = bootstrap(hits, seed)
            cells.append(f"{mean:.3f} [{low:.3f}-{high:.3f}]")
        print(f"{mode:<8} {cells[0]:>22} {cells[1]:>22} {cells[2]:>22} {ms:>9.1f}", flush=True)
    difference = hits5["hybrid"] - hits5["vector"]
    draws = np.random.default_rng(seed).choice(difference, (2000, len(difference))).mean(axis=1)
    print(f"hybrid - vector recall@5: {difference.mean():+.3f} [{np.percentile(draws, 2.5):+.3f}..."
          f"{np.percentile(draws, 97.5):+.3f}] (paired bootstrap); retrieval misses at 5: vector "
          f"{(1 - hits5['vector']).sum():.0f}, hybrid {(1 - hits5['hybrid']).sum():.0f}")


def modes(dsn, squad_limit, seed):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT count(*) FROM retrieve('warm up', %s)", (SOURCE,))
        questions = faq.questions(conn, FAQ_PAGES)
        section = dict(conn.execute("SELECT id::text, doc_id FROM doc_chunks").fetchall())
        rows = len(section)
        mode_recall(conn, f"{SOURCE}: {rows} passages, {len(questions)} FAQ questions, gold = any chunk of the "
                    "question's section", SOURCE, [(q, gold) for gold, q, _ in questions],
                    lambda ids: [section[i] for i in ids], seed)
        asked = conn.execute("SELECT question, paragraph_id FROM squad_questions ORDER BY id").fetchall()
        random.Random(seed).shuffle(asked)
        asked = asked[:squad_limit]
        paragraphs = conn.execute("SELECT count(*) FROM squad_paragraphs").fetchone()[0]
        mode_recall(conn, f"squad: {paragraphs} SQuAD v1.1 dev paragraphs, {len(asked)} of its questions "
                    f"(seed {seed}), gold = the question's paragraph", "squad", asked,
                    lambda ids: [int(i) for i in ids], seed)


def glove(dsn, efs):
    os.environ["RAGTUNE_BENCH_DSN"] = dsn
    import hnsw  # reads the DSN when imported

    with psycopg.connect(dsn, autocommit=True) as conn:
        base_rows = hnsw.setup_split(conn, 399_000)
        print(f"\n== GloVe 6B 50d: {base_rows} rows, {hnsw.QUERIES} held-out queries, cosine, m=16, ef_construction=64 ==")
        started = time.perf_counter()
        exact = hnsw.top10(conn, index_scan=False)
        print(f"exact search: {(time.perf_counter() - started) / hnsw.QUERIES * 1e3:.1f} ms/query")
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute("CREATE INDEX base_idx ON base USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)")
        print(f"{'ef_search':>10} {'recall@5':>9} {'recall@10':>10} {'ms/query':>9}")
        for ef in efs:
            conn.execute(f"SET hnsw.ef_search = {int(ef)}")
            started = time.perf_counter()
            found = hnsw.top10(conn, index_scan=True)
            ms = (time.perf_counter() - started) / hnsw.QUERIES * 1e3
            recall = {k: np.mean([len(set(f[:k]) & set(e[:k])) / k for f, e in zip(found, exact)]) for k in (5, 10)}
            print(f"{ef:>10} {recall[5]:>9.4f} {recall[10]:>10.4f} {ms:>9.2f}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dsn")
    ap.add_argument("--ef", type=int, nargs="+", default=[40, 100, 200, 400])
    ap.add_argument("--glove", metavar="GLOVE_DSN", help="also measure the index scan on GloVe's 399k rows")
    ap.add_argument("--seed", type=int, default=1, help="of the bootstrap (and the SQuAD sample)")
    ap.add_argument("--modes", action="store_true", help="compare retrieve()'s modes on the FAQ and on SQuAD")
    ap.add_argument("--squad-limit", type=int, default=2000, help="SQuAD questions asked with --modes")
    a = ap.parse_args()
    if a.modes:
        modes(a.dsn, a.squad_limit, a.seed)
        return
    python_docs(a.dsn, a.ef, a.seed)
    if a.glove:
        glove(a.glove, a.ef + [800])


if __name__ == "__main__":
    main()
