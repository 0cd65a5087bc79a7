"""Driver for bench/rag_quality.sh --set squad: rag_answer_json() on factoid questions that
we did not write, SQuAD v1.1 dev (crowd-written questions with short gold answers over
2,067 Wikipedia paragraphs; scripts/load_squad.sh loads them as RAG source `squad`, with
text search).

For --limit questions of a --seed shuffle it answers each, greedily with the same model and
max_tokens:
  - closed-book: generate(question);
  - RAG in each --modes (vector, hybrid, ...): rag_answer_json(question, 'squad', ...);
  - the gold passage in rag_answer()'s layout: generate() given rag_answer()'s system
    message and a user message laid out as rag_answer() lays out one passage, the question's
    own paragraph (whole), so that only retrieval differs from RAG;
  - the gold passage in a plain Python pipeline, the target's ceiling: Python onnxruntime
    running the same ONNX graph greedily (bench/generate.py's loop), the model's own chat
    template and default system message, and the user message "Context: {paragraph}
    \n\nQuestion: {question}".
It prints, per way of answering, accuracy (a gold answer contained, after SQuAD's
normalization), token F1 (best over the gold answers), citation precision (of the passages
an answer cites, the share that contain a gold answer) and recall (of the answers whose
passages hold a gold answer, the share that cite such a passage), retrieval recall (the
gold paragraph among the passages), all with 95% bootstrap intervals, the paired difference
to closed-book, and p50/p95 latency split into retrieve / prompt / generate.

    factoid.py DSN MODELS_DIR [--limit 200] [--seed 1] [--modes vector hybrid] [--k 2] [--passage-tokens 200]
               [--max-tokens 48] [--model NAME] [--threads 2] [--draft-tokens 0 6] [--verbose]
"""
import argparse
import random
import time
from pathlib import Path

import numpy as np
import psycopg

import faq
import generate

SOURCE = "squad"
LABEL = 32
OURS, PLAIN = "gold passage, rag_answer layout", "gold passage, plain pipeline"


def contains(answer, golds):
    """A gold answer, normalized, is a phrase of the normalized answer."""
    text = f" {faq.normalize(faq.CITATION.sub(' ', answer))} "
    return any(f" {faq.normalize(gold)} " in text for gold in golds if faq.normalize(gold))


def best_f1(answer, golds):
    return max(faq.token_f1(answer, gold) for gold in golds)


def interval(values, seed):
    """Mean and 95% percentile bootstrap interval."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    means = np.random.default_rng(seed).choice(values, (5000, len(values))).mean(axis=1)
    return values.mean(), np.percentile(means, 2.5), np.percentile(means, 97.5)


def cell(values, seed):
    mean, low, high = interval(values, seed)
    return "-" if np.isnan(mean) else f"{mean:.3f} [{low:.3f}-{high:.3f}]"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dsn")
    ap.add_argument("models_dir", type=Path, help="the converted generators (the plain pipeline reads its graph there)")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--modes", nargs="+", default=["vector", "hybrid"], choices=["vector", "text", "hybrid"])
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--passage-tokens", type=int, default=200, help="SQuAD paragraphs run to about 160 tokens")
    ap.add_argument("--max-tokens", type=int, default=48, help="factoid answers are short")
    ap.add_argument("--model", help="default: ragtune.default_generator")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--draft-tokens", type=int, nargs="+",
                    help="run the RAG modes at each of these ragtune.draft_tokens (0: one token per model call) "
                         "and compare their answers; default: the server's setting, once")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    drafts = a.draft_tokens or [None]
    rag_ways = [(mode, d, f"RAG {mode}" + ("" if d is None else f", drafts {d}")) for mode in a.modes for d in drafts]

    with psycopg.connect(a.dsn, autocommit=True) as conn:
        conn.execute(f"SET ragtune.intra_op_threads = {a.threads:d}")
        conn.execute("SELECT count(*) FROM retrieve('warm up', %s)", (SOURCE,))
        model = a.model or conn.execute("SELECT current_setting('ragtune.default_generator')").fetchone()[0]
        conn.execute("SELECT generate('Hi', model => %s, max_tokens => 1)", (model,))
        system = conn.execute("SELECT rag_system_prompt()").fetchone()[0]
        chat_format, stops, vocab = generate.model_settings(conn, model, a.models_dir / model)
        plain = generate.PythonGenerator(a.models_dir / model, a.threads, chat_format, stops, vocab)
        rows = conn.execute("SELECT q.id, q.question, q.answers, q.paragraph_id, p.content FROM squad_questions q "
                            "JOIN squad_paragraphs p ON p.id = q.paragraph_id ORDER BY q.id").fetchall()
        total = len(rows)
        random.Random(a.seed).shuffle(rows)
        rows = rows[:a.limit]
        paragraphs = conn.execute("SELECT count(*) FROM squad_paragraphs").fetchone()[0]
        print(f"SQuAD v1.1 dev: {len(rows)} of {total} questions (seed {a.seed}) over {paragraphs} paragraphs "
              f"(RAG source {SOURCE}); model {model}, greedy, max_tokens {a.max_tokens}, {a.threads} threads; "
              f"RAG k {a.k}, passage_tokens {a.passage_tokens}, ragtune.draft_tokens "
              + (conn.execute("SELECT current_setting('ragtune.draft_tokens')").fetchone()[0] if a.draft_tokens is None
                 else " and ".join(map(str, a.draft_tokens))))

        ways = ["closed-book"] + [way for _, _, way in rag_ways] + [OURS, PLAIN]
        results = {way: [] for way in ways}

        def rag(mode, d, way, question, golds, gold_paragraph):
            if d is not None:
                conn.execute(f"SET ragtune.draft_tokens = {d:d}")
            started = time.perf_counter()
            r = conn.execute("SELECT rag_answer_json(%s, %s, k => %s, model => %s, max_tokens => %s, "
                             "passage_tokens => %s, mode => %s)",
                             (question, SOURCE, a.k, model, a.max_tokens, a.passage_tokens, mode)).fetchone()[0]
            seconds = time.perf_counter() - started
            ids = [int(s["id"]) for s in r["sources"]]
            contents = dict(conn.execute("SELECT id, content FROM squad_paragraphs WHERE id = ANY(%s)",
                                         (ids,)).fetchall())
            holds = [contains(contents[i], golds) for i in ids]
            cited = [s["cited"] for s in r["sources"]]
            results[way].append({
                "answer": r["answer"], "seconds": seconds, "gold retrieved": gold_paragraph in ids,
                "citation precision": (np.mean([h for h, c in zip(holds, cited) if c]) if any(cited) else None),
                "citation recall": (any(h and c for h, c in zip(holds, cited)) if any(holds) else None),
                "model cited": r["citations"] == "model",
                "timings": r["timings_ms"]})

        if drafts[0] is not None:
            conn.execute(f"SET ragtune.draft_tokens = {drafts[0]:d}")
        # The first draft_tokens value runs beside closed-book and the gold-passage answers; each other
        # value in a pass of its own, so that no answer finds its prompt in the service's
        # prefix cache because another setting has just run it (it holds about 35 such
        # prompts: with --limit 100 none is left when the next pass comes to it).
        for n, (_, question, golds, gold_paragraph, gold_content) in enumerate(rows, 1):
            started = time.perf_counter()
            answer = conn.execute("SELECT generate(%s, model => %s, max_tokens => %s)",
                                  (question, model, a.max_tokens)).fetchone()[0]
            results["closed-book"].append({"answer": answer, "seconds": time.perf_counter() - started})
            for mode, d, way in rag_ways:
                if d == drafts[0]:
                    rag(mode, d, way, question, golds, gold_paragraph)
            started = time.perf_counter()
            user = f"Sources:\n\n[1] {gold_content}\n\nQuestion: {question}"
            answer = conn.execute("SELECT generate(%s, model => %s, max_tokens => %s, system => %s)",
                                  (user, model, a.max_tokens, system)).fetchone()[0]
            results[OURS].append({"answer": answer, "seconds": time.perf_counter() - started})
            answer, _, _, seconds, _ = plain.generate(f"Context: {gold_content}\n\nQuestion: {question}", a.max_tokens)
            results[PLAIN].append({"answer": answer, "seconds": seconds})
            if a.verbose:
                print(f"Q {question}\n  gold {golds}\n" + "".join(
                    f"  {way}: {'ok ' if contains(results[way][-1]['answer'], golds) else 'no '}{results[way][-1]['answer']!r}\n"
                    for way in ways if results[way]), flush=True)
            elif n % 25 == 0:
                print(f"  {n}/{len(rows)} questions", flush=True)
        for d in drafts[1:]:
            for n, (_, question, golds, gold_paragraph, _) in enumerate(rows, 1):
                for mode, dd, way in rag_ways:
                    if dd == d:
                        rag(mode, d, way, question, golds, gold_paragraph)
                if n % 25 == 0:
                    print(f"  draft_tokens {d}: {n}/{len(rows)} questions", flush=True)
        for way in ways:
            for x, row in zip(results[way], rows):
                x["correct"] = contains(x["answer"], row[2])
                x["f1"] = best_f1(x["answer"], row[2])

    columns = ["accuracy", "token F1", "gold retrieved", "citation precision", "citation recall"]
    print(f"\n{'':<{LABEL}} " + " ".join(f"{c:>22}" for c in columns) + f" {'model cited':>12}")
    for way in ways:
        r = results[way]
        values = {"accuracy": [x["correct"] for x in r], "token F1": [x["f1"] for x in r]}
        for name in ("gold retrieved", "citation precision", "citation recall"):
            values[name] = [x[name] for x in r if x.get(name) is not None]
        model_cited = f"{np.mean([x['model cited'] for x in r]):.3f}" if way.startswith("RAG") else "-"
        print(f"{way:<{LABEL}} " + " ".join(f"{cell(values[c], a.seed):>22}" for c in columns) + f" {model_cited:>12}")

    print("\npaired difference to closed-book (accuracy, 95% bootstrap interval):")
    book = np.array([x["correct"] for x in results["closed-book"]], dtype=float)
    for way in ways[1:]:
        mean, low, high = interval(np.array([x["correct"] for x in results[way]], dtype=float) - book, a.seed)
        print(f"  {way:<{LABEL}} {mean:+.3f} [{low:+.3f}..{high:+.3f}]")

    print("\nlatency per question, ms: p50 / p95 (RAG: retrieve, prompt, generate from rag_answer_json's timings)")
    for way in ways:
        r = results[way]
        total = np.array([x["seconds"] for x in r]) * 1e3
        line = f"  {way:<{LABEL}} total {np.percentile(total, 50):7.0f} / {np.percentile(total, 95):7.0f}"
        if way.startswith("RAG"):
            for phase in ("retrieve", "prompt", "generate"):
                t = np.array([x["timings"][phase] for x in r])
                line += f"   {phase} {np.percentile(t, 50):6.0f} / {np.percentile(t, 95):6.0f}"
        print(line)

    if len(drafts) > 1:
        for mode in a.modes:
            answers = [[x["answer"] for x in results[way]] for m, _, way in rag_ways if m == mode]
            same = sum(len(set(column)) == 1 for column in zip(*answers))
            print(f"\nRAG {mode}: the same answer at every draft_tokens for {same} of {len(rows)} questions")

    accuracy = {way: np.mean([x["correct"] for x in results[way]]) for way in ways}
    best = max((way for _, _, way in rag_ways), key=accuracy.get)
    print(f"\nSUMMARY squad {len(rows)} questions, {model}: accuracy " + ", ".join(f"{w} {accuracy[w]:.3f}" for w in ways)
          + f"; best RAG ({best}) reaches {accuracy[best] / max(accuracy[PLAIN], 1e-9):.1%} of the plain pipeline's "
          f"gold-passage ceiling (target: 100%)")


if __name__ == "__main__":
    main()
