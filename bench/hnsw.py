"""Driver for bench/hnsw.sh: builds the index, measures recall against exact search and
queries per second (pgbench, prepared statements, one client; the median of five
10-second runs, with their range), and prints the figures."""
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import psycopg

DSN = os.environ["RAGTUNE_BENCH_DSN"]
QUERIES = 1000
EF_SEARCH = (40, 100, 200)
SECONDS_PER_RUN = int(os.environ.get("SECONDS_PER_RUN", "10"))
REPEATS = int(os.environ.get("REPEATS", "5"))
# pgvector 0.8.6 on this kind of machine, 100k rows, at ef_search 40, 100, 200: (recall@10, QPS).
PGVECTOR_REFERENCE = ((0.923, 1151), (0.979, 626), (0.9935, 328))


def setup_split(conn, rows):
    """base(id, embedding) = first `rows` of a seed-42 permutation; queries = next 1,000
    (for the full run: all rows except the 1,000 queries)."""
    order = np.random.default_rng(42).permutation(400_000) + 1  # glove ids are 1-based
    query_ids = order[100_000:100_000 + QUERIES]
    base_ids = order[:rows] if rows <= 100_000 else np.setdiff1d(order, query_ids)
    conn.execute("DROP TABLE IF EXISTS base, queries")
    conn.execute("CREATE TABLE base (id int PRIMARY KEY, embedding vector(50))")
    conn.execute("CREATE TABLE queries (qid int PRIMARY KEY, id int, embedding vector(50))")
    conn.execute("INSERT INTO base SELECT id, embedding FROM glove WHERE id = ANY(%s)", (base_ids.tolist(),))
    conn.execute(
        "INSERT INTO queries SELECT ordinality, g.id, g.embedding FROM unnest(%s::int[]) WITH ORDINALITY u(id) JOIN glove g USING (id)",
        (query_ids.tolist(),),
    )
    conn.execute("VACUUM ANALYZE base")
    conn.execute("VACUUM ANALYZE queries")
    return len(base_ids)


def top10(conn, index_scan):
    """Every query's 10 nearest base ids, nearest first, by the index or by exact search."""
    conn.execute(f"SET enable_indexscan = {'on' if index_scan else 'off'}")
    conn.execute(f"SET enable_seqscan = {'off' if index_scan else 'on'}")
    rows = conn.execute(
        "SELECT qid, ARRAY(SELECT b.id FROM base b ORDER BY b.embedding <=> q.embedding LIMIT 10) FROM queries q ORDER BY qid"
    ).fetchall()
    conn.execute("RESET enable_indexscan")
    conn.execute("RESET enable_seqscan")
    return [ids for _, ids in rows]


def qps(ef):
    """Median, lowest and highest of REPEATS pgbench runs (this shared host's rates vary
    by a third from run to run)."""
    rates = sorted(pgbench_qps(ef) for _ in range(REPEATS))
    return rates[len(rates) // 2], rates[0], rates[-1]


def pgbench_qps(ef):
    script = tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False)
    script.write(f"\\set q random(1, {QUERIES})\n"
                 "SELECT id FROM base ORDER BY embedding <=> (SELECT embedding FROM queries WHERE qid = :q) LIMIT 10;\n")
    script.close()
    env = dict(os.environ, PGOPTIONS=f"-c hnsw.ef_search={ef} -c enable_seqscan=off")
    dsn = dict(kv.split("=") for kv in DSN.split())
    out = subprocess.run(
        [os.environ["PGBENCH"], "-n", "-M", "prepared", "-c", "1", "-T", str(SECONDS_PER_RUN), "-f", script.name,
         "-h", dsn["host"], "-p", dsn["port"], "-U", dsn["user"], dsn["dbname"]],
        env=env, capture_output=True, text=True, check=True,
    ).stdout
    os.unlink(script.name)
    return float(re.search(r"tps = ([0-9.]+)", out).group(1))


def run(rows):
    with psycopg.connect(DSN, autocommit=True) as conn:
        base_rows = setup_split(conn, rows)
        print(f"\n== {base_rows} base rows, {QUERIES} queries, cosine, m=16, ef_construction=64 ==")
        started = time.perf_counter()
        exact = top10(conn, index_scan=False)
        print(f"exact ground truth: {time.perf_counter() - started:.1f} s")
        conn.execute("SET maintenance_work_mem = '1GB'")
        started = time.perf_counter()
        conn.execute("CREATE INDEX base_idx ON base USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)")
        build = time.perf_counter() - started
        size = conn.execute("SELECT pg_relation_size('base_idx')").fetchone()[0]
        workers = conn.execute("SHOW max_parallel_maintenance_workers").fetchone()[0]
        print(f"build: {build:.1f} s (max_parallel_maintenance_workers = {workers}), index size: {size / 2**20:.1f} MiB")
        problems = conn.execute("SELECT unreachable, problems FROM hnsw_verify('base_idx')").fetchone()
        print(f"hnsw_verify: unreachable {problems[0]}, problems {len(problems[1])}")
        def recall(ef):
            conn.execute(f"SET hnsw.ef_search = {ef}")
            found = top10(conn, index_scan=True)
            return sum(len(set(f) & set(e)) for f, e in zip(found, exact)) / (10 * len(exact))

        def server_microseconds(ef, queries=2000, rounds=5):
            """Time per query inside one backend (a PL/pgSQL loop, no client round trips),
            best of `rounds`."""
            conn.execute(f"SET hnsw.ef_search = {ef}")
            conn.execute("SET enable_seqscan = off")
            loop = (f"DO $$ DECLARE q vector; BEGIN FOR i IN 1..{queries} LOOP "
                    f"SELECT embedding INTO q FROM queries WHERE qid = 1 + i % {QUERIES}; "
                    "PERFORM (SELECT count(*) FROM (SELECT id FROM base ORDER BY embedding <=> q LIMIT 10) s); "
                    "END LOOP; END $$")
            best = float("inf")
            for _ in range(rounds):
                started = time.perf_counter()
                conn.execute(loop)
                best = min(best, time.perf_counter() - started)
            conn.execute("RESET enable_seqscan")
            return best / queries * 1e6

        print(f"{'ef_search':>10} {'recall@10':>10} {'QPS':>10} {'QPS range':>15} {'server µs/query':>16}")
        for ef in EF_SEARCH:
            rate, low, high = qps(ef)
            print(f"{ef:>10} {recall(ef):>10.4f} {rate:>10.1f} {f'{low:.0f}-{high:.0f}':>15} {server_microseconds(ef):>16.0f}", flush=True)
        if base_rows != 100_000:
            return
        # The targets compare queries per second at equal or higher recall: the smallest
        # ef_search (in steps of 5%) that reaches each of pgvector's reference recalls.
        print(f"at pgvector 0.8.6's reference recall (its QPS on this kind of machine; 1.5x target):")
        for ef, (reference_recall, reference_qps) in zip(EF_SEARCH, PGVECTOR_REFERENCE):
            while (r := recall(ef)) < reference_recall:
                ef = max(ef + 1, round(ef * 1.05))
            rate, low, high = qps(ef)
            print(f"  recall >= {reference_recall}: ef_search {ef}, recall {r:.4f}, {rate:.1f} QPS (range {low:.0f}-{high:.0f})"
                  f" = {rate / reference_qps:.2f}x pgvector's {reference_qps} (target {1.5 * reference_qps:.0f})", flush=True)


if __name__ == "__main__":
    for rows in map(int, sys.argv[1].split()):
        run(rows)
