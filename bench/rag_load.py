"""Driver for bench/rag_load.sh: N concurrent connections asking rag_answer_json() over the
python_docs source, through the model service (ragtune.model_service = on, one model copy per
server, continuous batching) and, in the same run, through the in-backend path
(ragtune.model_service = off, one model copy per connection).

For each path and each N: N fresh connections each answer one warm-up question (a fresh
backend loads its models there on the in-backend path, a fresh service worker on the service
path; the slowest is printed as "first"), then all start together and ask the FAQ's questions
(the clients start evenly spread over them, so no question is asked twice in a row) until
--duration seconds have passed; answers under way at the deadline finish and count. Printed per
row: answers/min, p50/p95 latency (client wall) and time to first token (retrieve + load +
prompt, from the answer's timings_ms), generated tokens/s over the window, the sum over clients
of each one's decode rate, and the server's total PSS (postmaster and all its children, the
service worker included), the highest sampled once a second during the window.

Then the decode rows (--decode-clients, default 1,8): N connections together each stream one
long greedy answer to a short prompt of its own (`generate_stream(..., max_tokens =>
--decode-tokens)`, a topic each, so prompts are a few dozen tokens and decoding is nearly all
of the work). The server stamps every piece (clock_timestamp() beside the set-returning
function in the select list, evaluated as each piece is produced); a stream's decode rate is
its pieces after the first over the time from the first to the last, one piece per token, and
the row prints the sum over its streams: what batching buys, since the batched step reads the
weights once for every stream.

An in-backend row whose memory would not fit is skipped, with the estimate printed (the
1-client row's PSS above the idle server's, plus the largest PSS per further connection of
the rows before, against 60% of the memory available: a backend's peak is well above its
sampled PSS): at about 1 GB per connection, 16 connections would not fit a 24 GB machine and the OOM killer would take a
backend, making the postmaster restart every session, which is what the service exists to
prevent. The last line says whether the server was reinitialised during the run. The in-backend rows use the server's
ragtune.intra_op_threads (default 1); one more row runs one in-backend client with
--single-threads (default: every core, as the service uses), for a like-for-like single-client
latency.

    rag_load.py DSN [--clients 1,2,4,8,16] [--duration 45] [--max-tokens 32]
                [--paths service,in-backend] [--single-threads N] [--questions N]
"""
import argparse
import os
import threading
import time

import numpy as np
import psycopg

import faq

PATHS = {"service": "on", "in-backend": "off"}


def pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return sum(int(line.split()[1]) for line in f if line.startswith("Pss:"))
    except OSError:  # the process exited between listing and reading
        return 0


def server_pss_gb(postmaster):
    """PSS of the postmaster and every process it started (backends, the service worker)."""
    total = pss_kb(postmaster)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == postmaster:
                total += pss_kb(int(entry))
    return total / 1024 ** 2


def available_gb():
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:")) / 1024 ** 2


class Client(threading.Thread):
    def __init__(self, dsn, setting, threads, questions, offset, max_tokens, start, deadline_box):
        """threads: ragtune.intra_op_threads for the in-backend path (0: the server's setting)."""
        super().__init__(daemon=True)
        self.dsn, self.setting, self.threads = dsn, setting, threads
        self.questions, self.offset, self.max_tokens = questions, offset, max_tokens
        self.start_barrier, self.deadline_box = start, deadline_box
        self.answers, self.errors, self.first_ms = [], [], None

    def ask(self, conn, question):
        begun = time.perf_counter()
        result = conn.execute("SELECT rag_answer_json(%s, source => 'python_docs', max_tokens => %s)",
                              (question, self.max_tokens)).fetchone()[0]
        return result, 1000 * (time.perf_counter() - begun), time.perf_counter()

    def run(self):
        options = f"-c ragtune.model_service={self.setting}"
        if self.threads:
            options += f" -c ragtune.intra_op_threads={self.threads}"
        try:
            with psycopg.connect(self.dsn, autocommit=True, options=options) as conn:
                _, self.first_ms, _ = self.ask(conn, self.questions[self.offset % len(self.questions)])
                self.start_barrier.wait()
                i = self.offset + 1
                while time.perf_counter() < self.deadline_box[0]:
                    try:
                        self.answers.append(self.ask(conn, self.questions[i % len(self.questions)]))
                    except psycopg.Error as e:
                        self.errors.append(str(e).splitlines()[0])
                    i += 1
        except Exception as e:  # a failed connection or warm-up is reported, not hidden
            self.errors.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            try:
                self.start_barrier.wait()
            except threading.BrokenBarrierError:
                pass


# Short prompts that ask for long answers, one topic per decode stream.
TOPICS = ["the history of the printing press", "how bread is baked", "the water cycle", "how a bicycle works",
          "the life of honey bees", "how a compiler works", "the rules of chess", "how volcanoes form",
          "the history of the Roman roads", "how a steam engine works", "the life cycle of stars",
          "how coffee is grown", "the invention of the telephone", "how glass is made",
          "the migration of birds", "how a lighthouse works"]


def decode_stream(dsn, setting, threads, topic, max_tokens, start, out):
    options = f"-c ragtune.model_service={setting}" + (f" -c ragtune.intra_op_threads={threads}" if threads else "")
    try:
        with psycopg.connect(dsn, autocommit=True, options=options) as conn:
            conn.execute("SELECT generate('Say hello.', max_tokens => 2)")  # loads the model where it runs
            start.wait()
            stamps = [t for t, _ in conn.execute(
                "SELECT clock_timestamp(), generate_stream(%s, max_tokens => %s)",
                (f"Write a long, detailed essay about {topic}.", max_tokens)).fetchall()]
        out.append((len(stamps) - 1) / max((stamps[-1] - stamps[0]).total_seconds(), 1e-9) if len(stamps) > 1 else 0.0)
    except Exception as e:  # reported as an error of the row, not hidden
        out.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        try:
            start.wait()
        except threading.BrokenBarrierError:
            pass


def decode_row(a, setting, threads, n):
    start, out = threading.Barrier(n), []
    streams = [threading.Thread(target=decode_stream, daemon=True,
                                args=(a.dsn, setting, threads, TOPICS[i % len(TOPICS)], a.decode_tokens, start, out))
               for i in range(n)]
    for s in streams:
        s.start()
    for s in streams:
        s.join()
    rates = [r for r in out if isinstance(r, float)]
    return sum(rates), min(rates, default=0.0), [r for r in out if isinstance(r, str)]


def run_row(a, setting, threads, n, questions, postmaster):
    start = threading.Barrier(n + 1)
    deadline_box = [float("inf")]
    # Clients start evenly spread over the questions, so that none asks what another asked
    # (unless --questions makes the pool small on purpose).
    clients = [Client(a.dsn, setting, threads, questions, i * (len(questions) // n), a.max_tokens, start, deadline_box)
               for i in range(n)]
    for c in clients:
        c.start()
    start.wait()  # every client has answered its warm-up question
    began = time.perf_counter()
    deadline_box[0] = began + a.duration
    peak = 0.0
    while any(c.is_alive() for c in clients):
        peak = max(peak, server_pss_gb(postmaster))
        time.sleep(1)
    for c in clients:
        c.join()
    answers = [r for c in clients for r in c.answers]
    errors = [e for c in clients for e in c.errors]
    ended = max([finished for _, _, finished in answers], default=began)
    elapsed = max(ended - began, 1e-9)
    wall = np.array([ms for _, ms, _ in answers]) if answers else np.zeros(1)
    ttft = np.array([r["timings_ms"]["retrieve"] + r["timings_ms"]["load"] + r["timings_ms"]["prompt"]
                     for r, _, _ in answers]) if answers else np.zeros(1)
    generated = sum(r["tokens"]["generated"] for r, _, _ in answers)
    decode_sum = 0.0
    for c in clients:
        decoded = [(r["tokens"]["generated"] - 1, r["timings_ms"]["generate"]) for r, _, _ in c.answers
                   if r["tokens"]["generated"] > 1 and r["timings_ms"]["generate"] > 0]
        if decoded:
            decode_sum += 1000 * sum(t for t, _ in decoded) / sum(ms for _, ms in decoded)
    first = np.array([c.first_ms for c in clients if c.first_ms is not None])
    return {
        "answers": len(answers), "per_min": 60 * len(answers) / elapsed,
        "p50": np.percentile(wall, 50) / 1e3, "p95": np.percentile(wall, 95) / 1e3,
        "ttft50": np.percentile(ttft, 50) / 1e3, "tok_s": generated / elapsed, "decode_sum": decode_sum,
        "pss": peak, "first": first.max() / 1e3 if len(first) else float("nan"), "errors": errors,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dsn")
    ap.add_argument("--clients", default="1,2,4,8,16")
    ap.add_argument("--duration", type=float, default=45.0, help="seconds of timed window per row")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--questions", type=int, default=0,
                    help="ask only the first N FAQ questions (0: all of them); a small N repeats questions "
                         "across clients, as popular questions do, which the service's prefix cache serves")
    ap.add_argument("--paths", default="service,in-backend")
    ap.add_argument("--single-threads", type=int, default=os.cpu_count(),
                    help="one more in-backend row, one client with this ragtune.intra_op_threads "
                         "(the service uses every core; the setting's default is 1); 0: no such row")
    ap.add_argument("--decode-clients", default="1,8", help="streams of the decode rows ('': none)")
    ap.add_argument("--decode-tokens", type=int, default=96)
    a = ap.parse_args()
    counts = [int(n) for n in a.clients.split(",")]

    with psycopg.connect(a.dsn, autocommit=True) as conn:
        questions = [q for _, q, _ in faq.questions(conn, ["faq/programming", "faq/general", "faq/library",
                                                           "faq/design", "faq/extending"])]
        questions = questions[:a.questions or len(questions)]
        data_directory = conn.execute("SHOW data_directory").fetchone()[0]
        passages = conn.execute("SELECT count(*) FROM doc_chunks").fetchone()[0]
        settings = dict(conn.execute("SELECT name, setting FROM pg_settings WHERE name IN ("
                                     "'ragtune.service_threads', 'ragtune.service_max_batch', "
                                     "'ragtune.intra_op_threads', 'ragtune.default_generator')").fetchall())
    sentinel = psycopg.connect(a.dsn, autocommit=True)
    with open(os.path.join(data_directory, "postmaster.pid")) as f:
        postmaster = int(f.readline())

    print(f"rag_answer_json(question, source => 'python_docs', max_tokens => {a.max_tokens}), "
          f"{len(questions)} FAQ questions, {a.duration:.0f} s per row after one warm-up answer per connection"
          f"; {passages} passages")
    print("settings: " + ", ".join(f"{k} = {v}" for k, v in sorted(settings.items())))
    print(f"\n{'path':<15} {'clients':>7} {'answers':>7} {'ans/min':>8} {'p50 s':>6} {'p95 s':>6} "
          f"{'ttft50':>6} {'tok/s':>6} {'Σdecode':>8} {'PSS GB':>7} {'first s':>7}  errors")
    rows = [(path, 0, n) for path in a.paths.split(",") for n in counts]
    if a.single_threads and "in-backend" in a.paths.split(","):
        rows.append(("in-backend", a.single_threads, 1))
    one_client = per_connection = baseline = None
    previous_path = None
    for path, threads, n in rows:
        # Each row starts without the service worker: the in-backend rows' memory is
        # theirs alone, and a service row's first warm-up answer starts a worker that loads
        # the models, with an empty prefix cache (no prompt of an earlier row is cached).
        with psycopg.connect(a.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM (SELECT DISTINCT pid FROM ragtune_service) s")
        time.sleep(1)
        if path != previous_path:
            baseline = server_pss_gb(postmaster)
            previous_path = path
        label = path + (f", {threads}t" if threads else "")
        # A backend's peak is well above its sampled PSS (prefill arenas): leave room, or the
        # OOM killer takes a backend and the postmaster restarts (it did at 16 with 0.85).
        if path == "in-backend" and one_client is not None and per_connection is not None:
            estimate = one_client + (n - 1) * per_connection
            if estimate > 0.6 * available_gb():
                print(f"{label:<15} {n:>7}  skipped: about {estimate:.1f} GB ({per_connection:.1f} GB per "
                      f"connection after the first), {available_gb():.1f} GB available")
                continue
        r = run_row(a, PATHS[path], threads, n, questions, postmaster)
        if path == "in-backend" and not threads and r["answers"]:
            if n == 1:
                one_client = r["pss"] - baseline
            elif one_client is not None:
                per_connection = max(per_connection or 0, (r["pss"] - baseline - one_client) / (n - 1))
        cache = ""
        if path == "service":
            with psycopg.connect(a.dsn, autocommit=True) as conn:
                for lookups, hits, reused, run, held in conn.execute(
                        "SELECT prefix_lookups, prefix_hits, prefix_tokens_reused, prompt_tokens, cache_bytes "
                        "FROM ragtune_service WHERE kind = 'generator'"):
                    # Once the row's answers are done, the cache holds only the prefix cache.
                    cache = (f"  prefix cache {hits}/{lookups} hits, {100 * reused / max(reused + run, 1):.0f}% of "
                             f"prompt tokens, {held / 2 ** 20:.0f} MB held")
        print(f"{label:<15} {n:>7} {r['answers']:>7} {r['per_min']:>8.1f} {r['p50']:>6.2f} {r['p95']:>6.2f} "
              f"{r['ttft50']:>6.2f} {r['tok_s']:>6.1f} {r['decode_sum']:>8.1f} {r['pss']:>7.2f} "
              f"{r['first']:>7.2f}  {len(r['errors'])}" + (f" ({r['errors'][0]})" if r["errors"] else "") + cache,
              flush=True)

    decode_counts = [int(n) for n in a.decode_clients.split(",") if n]
    if decode_counts:
        print(f"\ndecode: N streams together, each generate_stream('Write a long, detailed essay about <topic>.', "
              f"max_tokens => {a.decode_tokens}); server-stamped pieces")
        print(f"{'path':<15} {'streams':>7} {'Σdecode tok/s':>14} {'slowest':>8} {'vs 1 stream':>11}  errors")
    for path in a.paths.split(",") if decode_counts else []:
        single = None
        for n in decode_counts:
            with psycopg.connect(a.dsn, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(pid) FROM (SELECT DISTINCT pid FROM ragtune_service) s")
            time.sleep(1)
            total, slowest, errors = decode_row(a, PATHS[path], 0, n)
            single = total if n == 1 else single
            ratio = f"{total / single:>10.2f}x" if single else f"{'':>11}"
            print(f"{path:<15} {n:>7} {total:>14.1f} {slowest:>8.1f} {ratio}  {len(errors)}"
                  + (f" ({errors[0]})" if errors else ""), flush=True)

    # A backend crash makes the postmaster end every session (pg_postmaster_start_time()
    # does not change): the sentinel session opened at the start must still answer.
    try:
        sentinel.execute("SELECT 1")
        restarted = False
    except psycopg.OperationalError:
        restarted = True
    print(f"postmaster reinitialised during the run (a backend crashed or was killed): {'YES' if restarted else 'no'}")


if __name__ == "__main__":
    main()
