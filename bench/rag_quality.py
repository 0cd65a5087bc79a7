"""Driver for bench/rag_quality.sh: answer quality of rag_answer_json() on the Python FAQ.

Questions are the question headings of the FAQ pages (default faq/programming), the corpus
is every section of the Python docs (RAG source python_docs over doc_chunks), the gold
section is the question's own section and the gold answer the first prose paragraph of its
body (bench/faq.py). Reported: recall@1/@5 of the gold section with retrieve() on every
question used (the sweep tunes nothing in it), and answer token F1 (SQuAD) with retrieval
(rag_answer_json) and closed-book (generate() with the same max_tokens), how often answers
cite a passage [n] and how often they say they do not know.

    rag_quality.py DSN [--model NAME] [--pages faq/programming ...] [--limit N] [--seed 1]
                   [--max-tokens 128] [--k K] [--passage-tokens N] [--passage-order O]
                   [--min-score S] [--system TEXT] [--threads 2] [--verbose] [--sweep]

Without --sweep every question (the first --limit of a --seed shuffle) is answered with
rag_answer_json()'s own defaults, except the settings given. With --sweep the shuffled
questions are cut in two halves: a dev half on which every k in {1,2,3} x passage_tokens in
{120,200,300} x passage_order in {best_first,best_last} is scored (best_last only for k > 1:
one passage makes the same prompt either way), and a held-out half on which the setting with
the best dev F1 is evaluated beside closed-book. Choose rag_answer()'s defaults from the dev
table only; the held-out figures then estimate what they give.
"""
import argparse
import itertools
import random
import re
import time

import numpy as np
import psycopg

import faq

SOURCE = "python_docs"  # retrieve() ids are doc_chunks ids; doc_chunks.doc_id is the section
LABEL = 56  # width of the first column of the tables
GRID = {"k": (1, 2, 3), "passage_tokens": (120, 200, 300), "passage_order": ("best_first", "best_last")}
# What a model writes when it declines to answer.
DONT_KNOW = re.compile(r"\b(?:i (?:do not|don't|cannot|can't) (?:know|answer|find|say)|not sure|no information|"
                       r"(?:passages?|context|documentation|sources?) (?:does not|do not|doesn't|don't) "
                       r"(?:say|mention|contain|provide|answer|cover))", re.IGNORECASE)


def retrieval(conn, question):
    """Section ids of the top 5 retrieve() rows, best first."""
    return [r[0] for r in conn.execute(
        "SELECT c.doc_id FROM retrieve(%s, %s, 5) WITH ORDINALITY AS r(id, content, score, rank) "
        "JOIN doc_chunks c ON c.id = r.id::bigint ORDER BY r.rank", (question, SOURCE)).fetchall()]


def rag(conn, question, model, max_tokens, setting):
    """rag_answer_json() with the settings given by name (the others at the function's
    defaults): (answer, section ids of its passages, who put its markers in (model, overlap
    or none), prompt tokens, generated tokens, seconds)."""
    args = {"source": SOURCE, "model": model, "max_tokens": max_tokens, **setting}
    named = ", ".join(f"{name} => %({name})s" for name in args)
    start = time.perf_counter()
    result = conn.execute(f"SELECT rag_answer_json(%(question)s, {named})", {"question": question, **args}).fetchone()[0]
    seconds = time.perf_counter() - start
    ids = [s["id"] for s in result["sources"]]
    sections = [r[0] for r in conn.execute("SELECT doc_id FROM doc_chunks WHERE id = ANY(%s::bigint[])",
                                           (ids,)).fetchall()]
    return result["answer"], sections, result.get("citations"), result["tokens"]["prompt"], \
        result["tokens"]["generated"], seconds


def closed_book(conn, question, model, max_tokens):
    start = time.perf_counter()
    answer = conn.execute("SELECT generate(%s, model => %s, max_tokens => %s)", (question, model, max_tokens)).fetchone()[0]
    return answer, time.perf_counter() - start


def score(answers, questions):
    """Means over questions of one setting: F1, gold section among the passages, answers with
    a citation marker (and those the model wrote), answers that say they do not know,
    seconds, tokens."""
    f1 = [faq.token_f1(a["answer"], gold) for a, (_, _, gold) in zip(answers, questions)]
    passages = [a["sections"] for a in answers if "sections" in a]
    return {"f1": f1, "F1": np.mean(f1),
            "gold in passages": np.mean([section in p for p, (section, _, _) in zip(passages, questions)])
            if passages else None,
            "cites [n]": np.mean([bool(faq.CITATION.search(a["answer"])) for a in answers]),
            # rag_answer() adds markers for passages an uncited answer shares wording with
            "model cited": np.mean([a["citations"] == "model" for a in answers]) if passages else None,
            "doesn't know": np.mean([bool(DONT_KNOW.search(a["answer"])) for a in answers]),
            "s/question": np.mean([a["seconds"] for a in answers]),
            "prompt tokens": np.mean([a["prompt"] for a in answers]) if passages else None,
            "generated": np.mean([a["generated"] for a in answers]) if passages else None}


def answer_all(conn, questions, model, max_tokens, setting, verbose):
    answers = []
    for section, question, gold in questions:
        answer, sections, citations, prompt, generated, seconds = rag(conn, question, model, max_tokens, setting)
        answers.append({"answer": answer, "sections": sections, "citations": citations, "prompt": prompt,
                        "generated": generated, "seconds": seconds})
        if verbose:
            print(f"  Q {question}\n    gold: {gold}\n    rag (F1 {faq.token_f1(answer, gold):.2f}, gold passage "
                  f"{'yes' if section in sections else 'no'}): {answer!r}", flush=True)
    return answers


def header(columns):
    print(f"{'':<{LABEL}} " + " ".join(f"{c:>16}" for c in columns))


def line(label, values, columns):
    print(f"{label:<{LABEL}} " + " ".join(f"{'-':>16}" if values[c] is None else f"{values[c]:>16.3f}"
                                          for c in columns), flush=True)


def bootstrap(differences, seed):
    """95% interval of the mean paired difference (10,000 resamples)."""
    draws = np.random.default_rng(seed).choice(differences, (10_000, len(differences))).mean(axis=1)
    return np.percentile(draws, [2.5, 97.5])


def label(setting):
    def short(value):
        return f"{value[:12]!r}..." if isinstance(value, str) and len(value) > 12 else value
    return ", ".join(f"{k}={short(v)}" for k, v in setting.items()) or "rag_answer() defaults"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dsn")
    ap.add_argument("--model", help="default: the setting ragtune.default_generator")
    ap.add_argument("--pages", nargs="+", default=["faq/programming"], help="FAQ pages whose question headings are asked")
    ap.add_argument("--limit", type=int, help="questions used (after the shuffle)")
    ap.add_argument("--seed", type=int, default=1, help="shuffle of the questions (and so the dev/held-out split)")
    ap.add_argument("--max-tokens", type=int, default=128, help="for both RAG and closed-book")
    ap.add_argument("--k", type=int)
    ap.add_argument("--passage-tokens", type=int)
    ap.add_argument("--passage-order", choices=GRID["passage_order"])
    ap.add_argument("--min-score", type=float)
    ap.add_argument("--system", help="system message for rag_answer_json() (to compare prompts on the dev split)")
    ap.add_argument("--threads", type=int, default=2, help="ragtune.intra_op_threads")
    ap.add_argument("--verbose", action="store_true", help="print every question, gold answer and answer evaluated")
    ap.add_argument("--sweep", action="store_true")
    a = ap.parse_args()
    fixed = {name: value for name, value in (("k", a.k), ("passage_tokens", a.passage_tokens),
             ("passage_order", a.passage_order), ("min_score", a.min_score), ("system", a.system))
             if value is not None}

    with psycopg.connect(a.dsn, autocommit=True) as conn:
        conn.execute(f"SET ragtune.intra_op_threads = {a.threads:d}")
        questions = faq.questions(conn, a.pages)
        total = len(questions)
        random.Random(a.seed).shuffle(questions)
        questions = questions[:a.limit]
        if a.sweep:
            dev, evaluated = questions[:len(questions) // 2], questions[len(questions) // 2:]
        else:
            dev, evaluated = [], questions
        # Load the embedding model and the generator before anything is timed. The library's
        # settings exist once it is loaded, so the default generator is read after retrieve().
        retrieval(conn, "warm up")
        model = a.model or conn.execute("SELECT current_setting('ragtune.default_generator')").fetchone()[0]
        conn.execute("SELECT generate('Hi', model => %s, max_tokens => 1)", (model,))

        print(f"{total} questions from {', '.join(a.pages)} (headings ending in '?'); corpus {SOURCE}: "
              f"{conn.execute('SELECT count(*) FROM python_docs').fetchone()[0]} sections, "
              f"{conn.execute('SELECT count(*) FROM doc_chunks').fetchone()[0]} chunks")
        print(f"model {model}, max_tokens {a.max_tokens}, {a.threads} threads, seed {a.seed}: "
              + (f"{len(dev)} dev / {len(evaluated)} held-out questions" if a.sweep else f"{len(evaluated)} questions"))

        setting = fixed
        if a.sweep:
            print(f"\nsweep on the dev split ({len(dev)} questions){', with ' + label(fixed) if fixed else ''}:")
            columns = ["F1", "gold in passages", "cites [n]", "model cited", "doesn't know", "s/question",
                       "prompt tokens", "generated"]
            header(columns)
            rows = []
            grid = {name: values for name, values in GRID.items() if name not in fixed}
            for values in itertools.product(*grid.values()):
                candidate = {**dict(zip(grid, values)), **fixed}
                if candidate["k"] == 1 and candidate["passage_order"] == "best_last" and "passage_order" in grid:
                    continue  # one passage: the same prompt as best_first
                rows.append((score(answer_all(conn, dev, model, a.max_tokens, candidate, False), dev), candidate))
                line(label(candidate), rows[-1][0], columns)
            # Best dev F1; the faster setting on a tie.
            best, setting = max(rows, key=lambda r: (round(r[0]["F1"], 3), -r[0]["s/question"]))
            print(f"chosen on the dev split: {label(setting)} (F1 {best['F1']:.3f})")

        # Retrieval has nothing the sweep tunes: all questions count.
        hits = [(section, retrieval(conn, question)) for section, question, _ in questions]
        recall = {f"recall@{n}": np.mean([section in top[:n] for section, top in hits]) for n in (1, 5)}
        print(f"\nretrieval on all {len(questions)} questions, retrieve(question, '{SOURCE}', 5): "
              + ", ".join(f"{name} {value:.3f}" for name, value in recall.items()))

        split = "held-out " if a.sweep else ""

        print(f"\nanswers on {split}questions ({len(evaluated)}):")
        answers = answer_all(conn, evaluated, model, a.max_tokens, setting, a.verbose)
        books = []
        for _, question, gold in evaluated:
            answer, seconds = closed_book(conn, question, model, a.max_tokens)
            books.append({"answer": answer, "seconds": seconds})
            if a.verbose:
                print(f"  Q {question}\n    closed-book (F1 {faq.token_f1(answer, gold):.2f}): {answer!r}", flush=True)
        ours, theirs = score(answers, evaluated), score(books, evaluated)
        columns = ["F1", "gold in passages", "cites [n]", "model cited", "doesn't know", "s/question"]
        header(columns)
        line(f"RAG ({label(setting)})", ours, columns)
        line("closed-book generate()", theirs, columns)

    difference = np.array(ours["f1"]) - np.array(theirs["f1"])
    low, high = bootstrap(difference, a.seed)
    print(f"\nSUMMARY {model}, {len(evaluated)} {split}questions from {', '.join(a.pages)}: "
          f"recall@5 {recall['recall@5']:.3f} ({len(questions)} questions); token F1 RAG {ours['F1']:.3f} vs closed-book {theirs['F1']:.3f} "
          f"(difference {difference.mean():+.3f}, 95% CI {low:+.3f}..{high:+.3f}, paired bootstrap; "
          f"RAG better on {np.mean(difference > 0):.0%} of questions, worse on {np.mean(difference < 0):.0%}); "
          f"{label(setting)}")


if __name__ == "__main__":
    main()
