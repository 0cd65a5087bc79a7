"""Driver for bench/rag_latency.sh: latency of rag_answer_json() with its defaults on the
python_docs source, over the first N question headings of the Python Programming FAQ
(document order): p50/p95/mean of the retrieve, prompt, generate and total times the
function reports (timings_ms, with the generator's load where it reports it) and of the
client's wall time, and decode tokens per second.

    rag_latency.py DSN [--questions 30] [--model NAME] [--threads 2]
"""
import argparse
import time

import numpy as np
import psycopg

import faq


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dsn")
    ap.add_argument("--questions", type=int, default=30)
    ap.add_argument("--model", help="default: the setting ragtune.default_generator")
    ap.add_argument("--threads", type=int, default=2, help="ragtune.intra_op_threads")
    a = ap.parse_args()

    with psycopg.connect(a.dsn, autocommit=True) as conn:
        conn.execute(f"SET ragtune.intra_op_threads = {a.threads:d}")
        questions = [q for _, q, _ in faq.questions(conn, ["faq/programming"])][:a.questions]

        def ask(question):
            start = time.perf_counter()
            result = conn.execute("SELECT rag_answer_json(%s, source => 'python_docs', model => %s)",
                                  (question, a.model)).fetchone()[0]
            return result, 1000 * (time.perf_counter() - start)

        # A fresh backend's first call loads the embedding model and the generator.
        cold, cold_ms = ask("How do I read a file line by line?")
        model = cold["model"]
        runs = [ask(q) for q in questions]

    # "load" (the generator's, apart from the prompt's time) is 0 once the model is loaded
    timings = {part: np.array([r["timings_ms"][part] for r, _ in runs], float)
               for part in ("retrieve", "load", "prompt", "generate", "total") if part in cold["timings_ms"]}
    timings["client wall"] = np.array([ms for _, ms in runs])
    prompt = np.array([r["tokens"]["prompt"] for r, _ in runs])
    generated = np.array([r["tokens"]["generated"] for r, _ in runs])
    print(f"rag_answer_json(question, source => 'python_docs', model => '{model}') with its other defaults, "
          f"{len(runs)} questions (first of faq/programming), {a.threads} threads, one session")
    print(f"first call in the fresh backend (model loads): {cold_ms:.0f} ms client wall, timings_ms {cold['timings_ms']}")
    print(f"prompt tokens mean {prompt.mean():.0f} ({prompt.min()}-{prompt.max()}), generated tokens mean "
          f"{generated.mean():.0f} ({generated.min()}-{generated.max()})")
    print(f"\n{'ms':<12} {'p50':>9} {'p95':>9} {'mean':>9}")
    for part, values in timings.items():
        p50, p95 = np.percentile(values, [50, 95])
        print(f"{part:<12} {p50:>9.0f} {p95:>9.0f} {values.mean():>9.0f}")
    # timings_ms.generate starts at the first piece, which the prompt's run (counted in
    # "prompt") produced: the tokens after the first are what it decoded.
    decoded = generated > 1
    rates = 1000 * (generated[decoded] - 1) / timings["generate"][decoded]
    print(f"\ndecode tokens/s (tokens after the first / generate time), {decoded.sum()} answers: "
          f"{1000 * (generated[decoded] - 1).sum() / timings['generate'][decoded].sum():.1f} over all, "
          f"per answer p50 {np.percentile(rates, 50):.1f}, p5 {np.percentile(rates, 5):.1f}"
          + (f"; {(generated == 0).sum()} answered without generating (no passage above min_score)"
             if (generated == 0).any() else ""))

if __name__ == "__main__":
    main()
