"""Driver for bench/finetune_acceptance.sh: acceptance figures of ragtune's adapters
(CALL finetune_adapter(), evaluate_adapter(), adapter => in generate(), retrieve() and
rag_answer_json()) on the Python documentation loaded by scripts/demo.sh.

Data. Questions are the question headings of every FAQ page (sections of python_docs whose
path is faq/% and whose title ends in '?'; a question repeated on two pages is kept once,
the first by id), gold section the question's own row, gold answer the opening prose of
its body (bench/faq.py). One seeded shuffle splits them into held-out (--holdout, 20%) and
train questions; every part uses this one split, so no part trains on a question another
part holds out, and the train questions are the "dev" questions of part 4. All data lives
in schema bench_finetune, rebuilt on every run (deterministically: same --seed, same rows).

Part 1, generator adapter with a house style. Rows: prompt -> completion, where the
completion is LEAD, one space, the opening sentences of the section (at least 12 words, cut
at 40 with " ...") and a last line "Source: <path> — <title>". Prompts are every FAQ
question and, up to --style-rows rows in all, questions made from the titles of other
sections (library, howto, tutorial, reference; one of three templates naming the page and
the title; sections whose opening is not clean prose are passed over). FAQ rows follow the
question split; the other rows get their own seeded 80/20 split. Trained on the 80% with
the model's default system message (--style-model, default the default generator), plus
the train questions asked the way rag_answer() asks them (rag_prompt(): passages, then
the question) with the same completions citing the gold passage's [n], so that the style
holds when the adapter answers from passages (part 3); held-out rows are plain questions.
Measured on the held-out 20%: mean NLL per completion token with and without the adapter
(evaluate_adapter() on every held-out row; acceptance: >= 25% lower), and the house style
of greedy generate() answers with and without the adapter on the first --limit held-out
rows (acceptance: >= 80% with the adapter). "House style" (style()): the answer, stripped,
starts with LEAD exactly, and its last non-empty line starts with "Source:" followed by
text, and is not its first line. Both parts are reported apart, and also whether the
Source line names the gold page (its path).

Part 2, retrieval adapter "faq_retrieval". Two kinds of query per question: "question",
the question heading, and "answer", the gold answer's opening sentences (the same text as
part 1's completions, without LEAD): a "find the section that says this" task. The plain
questions are easy for the base model (recall@5 about 0.97 over all FAQ questions), the
answer queries harder; both are printed, for all questions without adapter first. Rows:
(query, first chunk of the gold section in doc_chunks) for both kinds of every train
question, trained with hard_negatives_from => 'python_docs' (each train query's nearest
other chunks are its negatives besides the batch's passages). Measured on the held-out questions, each kind apart, with retrieve(query,
'python_docs', 10[, adapter => 'faq_retrieval']): recall@1, recall@5 and MRR@10 of the gold
section (a retrieved chunk whose doc_id is the gold python_docs id; ranks are chunk ranks),
and evaluate_adapter()'s recall@5 among the held-out rows' own passages.

Part 3, hybrid: rag_answer_json(question, 'python_docs', model => style model, adapter =>
part 1's adapter) on the first --limit held-out questions: how often the answer is in the
house style (trailing [n] markers, which rag_answer() appends itself when the model cited
nothing, are set aside first), how often a retrieved passage is cited (any
sources[*].cited; also how often the model wrote the marker itself, citations = 'model'),
and how often both hold.

Part 4, context-use adapter, per model of --models: rows (rag_prompt(question,
'python_docs', model => M) -> the gold answer's opening sentences and " [n]", n the first
passage of the prompt from the gold section) for the train questions whose gold section is
among the prompt's passages, and for questions about up to --context-doc-rows other
sections ("What is “<title>” in Python?" and two other templates) whose section is among
the passages, answered by its opening; trained with system => rag_system_prompt() and
copy_from_prompt => true (a copy head: the answers quote the passages). Measured on the
first --limit held-out questions: token F1 (bench/faq.py) against the whole gold answer and
against the short answer the rows teach (its opening), and how often an answer is correct
(F1 against the short answer >= 0.5), with rag_answer_json(q, model => M, adapter => it),
rag_answer_json(q, model => M) and closed-book generate(q, model => M), all with
--max-tokens; means with 95% bootstrap intervals and paired differences; and evaluate_adapter() NLL on held-out rows built the
same way.

Every training run prints its NOTICEs as they come, then rows, seconds (read, train,
total) and rows per second from the adapter's metrics. The last lines are a summary table
with the acceptance thresholds.

--dry-run trains nothing: it builds the tables and prints their counts and samples,
measures retrieval without adapter, and runs the adapter-free conditions (part 3 as plain
rag_answer_json) on --limit questions (default 3), so that everything but the new
functions is exercised.

    finetune_acceptance.py DSN [--parts 1,2,3,4] [--limit 30] [--seed 1] [--epochs 3]
        [--retrieval-epochs N] [--models M1,M2] [--style-model M] [--style-rows 520]
        [--style-max-tokens 96] [--max-tokens 64] [--context-doc-rows 1000] [--reuse] [--dry-run] [--verbose] ...

Generation dominates the time: about 30 x (9 + 6) s in part 1, 30 x 8 s in part 3 and
30 x (3 x 5) s + 30 x (3 x 1.5) s in part 4 with the defaults on 2 cores; --limit scales
all of it. --reuse skips a training run when the adapter in ragtune_adapters is the one
this script last stored from the same rows and options (recorded in bench_finetune.trained).
"""
import argparse
import hashlib
import json
import os
import random
import re
import time
from pathlib import Path

import numpy as np
import psycopg

import faq

SOURCE = "python_docs"  # RAG source over doc_chunks: retrieve() ids are doc_chunks ids
SCHEMA = "bench_finetune"
DEFAULT_MODELS = ("qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct")
RETRIEVAL_ADAPTER = "faq_retrieval"
# The house style: answers open with LEAD and end with a line "Source: <path> — <title>".
LEAD = "Per the Python docs:"
SOURCE_PREFIX = "Source:"
# Sections other than the FAQ that part 1 makes prompts from.
DOC_PAGES = ("library/%", "howto/%", "tutorial/%", "reference/%")
PROMPT_TEMPLATES = ("What does the {path} page of the Python docs say about “{title}”?",
                    "Explain “{title}” ({path}).",
                    "{path}: what is “{title}” about?")
# Part 4's extra rows (--context-doc-rows): questions about other sections, asked the way
# rag_answer() is asked, whose answer is the section's opening.
CONTEXT_TEMPLATES = ("What does the Python documentation say about “{title}”?",
                     "What is “{title}” in Python?",
                     "Tell me about “{title}”.")
# A completion's opening text: whole sentences until MIN_WORDS, cut at MAX_WORDS.
MIN_WORDS, MAX_WORDS = 12, 40
# Part 4's measures of an answer. The rows teach a short answer taken from the passages
# (the gold answer's opening); an answer is correct when its token F1 against that short
# answer reaches CORRECT_F1.
MEASURES = {
    "f1": "token F1 against the whole gold answer",
    "short_f1": "token F1 against the short answer (the gold answer's opening, what the rows teach)",
    "correct": "correct (token F1 against the short answer >= 0.5)",
}
CORRECT_F1 = 0.5
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'`])")
# rag_answer() appends " [n]..." to an answer whose model cited nothing.
TRAILING_MARKERS = re.compile(r"(?:\s*\[\d+\])+\s*$")
# Openings of other sections that are not prose: reST labels ("single: x", "Note: "),
# tables, directives, literal-block introductions; also "Source code: Lib/..." lines and
# openings that end in ":" (they introduce a list or an example the row leaves out).
NOT_PROSE = re.compile(r"^\w+:\s|\||\+--|===|::|\.\. ")
LABEL = 60  # width of the first column of the tables

# Acceptance thresholds of the issue.
NLL_REDUCTION = 0.25
STYLE_RATE = 0.80


def log(*args):
    print(*args, flush=True)


# ---------------------------------------------------------------------------------------
# Text helpers (pure)

def opening(answer):
    """The opening of a gold answer: whole sentences until MIN_WORDS words, cut at
    MAX_WORDS words with " ..." (one line)."""
    taken = []
    for sentence in SENTENCE_END.split(answer.strip()):
        taken.append(sentence)
        if len(" ".join(taken).split()) >= MIN_WORDS:
            break
    words = " ".join(taken).split()
    return " ".join(words[:MAX_WORDS]) + (" ..." if len(words) > MAX_WORDS else "")


def source_line(path, title):
    return f"{SOURCE_PREFIX} {path} — {title}"


def house_completion(text, path, title):
    return f"{LEAD} {text}\n{source_line(path, title)}"


def style(answer, strip_markers=False):
    """The house style of an answer, by part: {"lead": starts with LEAD, "source": its last
    non-empty line (not its first) starts with "Source:" and text, "style": both}. With
    strip_markers, trailing [n] markers are removed first (rag_answer() appends them)."""
    text = answer.strip()
    if strip_markers:
        text = TRAILING_MARKERS.sub("", text).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lead = text.startswith(LEAD)
    last = lines[-1] if lines else ""
    source = len(lines) >= 2 and last.startswith(SOURCE_PREFIX) and bool(last[len(SOURCE_PREFIX):].strip())
    return {"lead": lead, "source": source, "style": lead and source, "last_line": last}


def usable_doc_opening(text, title):
    """A section outside the FAQ makes a row when its opening is clean prose and its title
    a short line."""
    return (len(text.split()) >= 8 and text[:1].isupper() and not NOT_PROSE.search(text)
            and not text.startswith("Source code") and not text.endswith(":")
            and 3 <= len(title) <= 80 and "\n" not in title)


def bootstrap_mean(values, seed, draws=10_000):
    """Mean and 95% interval of the mean (percentile bootstrap)."""
    values = np.asarray(values, float)
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    means = np.random.default_rng(seed).choice(values, (draws, len(values))).mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return values.mean(), low, high


def fmt_ci(mean, low, high, signed=False):
    sign = "+" if signed else ""
    return f"{mean:{sign}.3f} [{low:{sign}.3f}, {high:{sign}.3f}]"


def rate(flags):
    flags = list(flags)
    return float(np.mean(flags)) if flags else float("nan")


def slug(model):
    """A model name as part of a table name."""
    return re.sub(r"\W", "_", model)


def fingerprint(*parts):
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------------------
# Data

def faq_questions(conn):
    """[(python_docs id, path, title, question, gold answer)] of every FAQ page, by id, a
    question asked twice kept once."""
    pages = [r[0] for r in conn.execute("SELECT DISTINCT path FROM python_docs WHERE path LIKE 'faq/%' ORDER BY 1")]
    paths = dict(conn.execute("SELECT id, path FROM python_docs WHERE path = ANY(%s)", (pages,)).fetchall())
    titles = dict(conn.execute("SELECT id, title FROM python_docs WHERE path = ANY(%s)", (pages,)).fetchall())
    seen, rows = set(), []
    for id_, question, gold in faq.questions(conn, pages):
        if question in seen or not gold:
            continue
        seen.add(question)
        rows.append((id_, paths[id_], faq.inline_text(titles[id_]), question, gold))
    return sorted(rows)


def split_questions(questions, seed, holdout):
    """(held-out, train): one seeded shuffle, the first `holdout` fraction held out. Both
    lists are in the shuffled order (the first --limit held-out are the ones evaluated)."""
    shuffled = list(questions)
    random.Random(f"faq:{seed}").shuffle(shuffled)
    n = round(holdout * len(shuffled))
    return shuffled[:n], shuffled[n:]


def doc_rows(conn, seed, wanted, exclude, templates=PROMPT_TEMPLATES):
    """[(id, path, title, prompt, opening)] of up to `wanted` sections outside the FAQ, in a
    seeded order, whose opening is usable; the prompt from one of `templates`."""
    rows = conn.execute("SELECT id, path, title, body FROM python_docs WHERE path LIKE ANY(%s) ORDER BY id",
                        (list(DOC_PAGES),)).fetchall()
    rng = random.Random(f"docs:{seed}")
    rng.shuffle(rows)
    chosen = []
    for id_, path, title, body in rows:
        if len(chosen) >= wanted:
            break
        if id_ in exclude:
            continue
        title = faq.inline_text(title)
        text = opening(faq.gold_answer(body))
        if not usable_doc_opening(text, title):
            continue
        template = templates[rng.randrange(len(templates))]
        chosen.append((id_, path, title, template.format(path=path, title=title), text))
    return chosen


def quiet_ddl(conn, ddl):
    """Runs DDL without its "already exists, skipping" NOTICEs."""
    with conn.transaction():
        conn.execute("SET LOCAL client_min_messages = warning")
        conn.execute(ddl)


def create_tables(conn):
    """The schema and its tables, created if missing (rebuilt rows are TRUNCATE + INSERT)."""
    quiet_ddl(conn, f"""
        CREATE SCHEMA IF NOT EXISTS {SCHEMA};
        CREATE TABLE IF NOT EXISTS {SCHEMA}.faq_split (doc_id int PRIMARY KEY, path text, question text,
            gold text, split text, position int);
        CREATE TABLE IF NOT EXISTS {SCHEMA}.style_train (doc_id int, kind text, prompt text, completion text);
        CREATE TABLE IF NOT EXISTS {SCHEMA}.style_heldout (doc_id int, kind text, prompt text, completion text,
            position int);
        CREATE TABLE IF NOT EXISTS {SCHEMA}.retrieval_train (doc_id int, query_kind text, query text, passage text);
        CREATE TABLE IF NOT EXISTS {SCHEMA}.retrieval_heldout_question (doc_id int, query text, passage text);
        CREATE TABLE IF NOT EXISTS {SCHEMA}.retrieval_heldout_answer (doc_id int, query text, passage text);
        -- What each adapter was last trained from, for --reuse.
        CREATE TABLE IF NOT EXISTS {SCHEMA}.trained (adapter text PRIMARY KEY, fingerprint text NOT NULL,
            version bigint, trained_at timestamptz NOT NULL DEFAULT now());
    """)


def context_tables(conn, model):
    names = (f"{SCHEMA}.context_train_{slug(model)}", f"{SCHEMA}.context_heldout_{slug(model)}")
    for name in names:
        quiet_ddl(conn, f"CREATE TABLE IF NOT EXISTS {name} (doc_id int, question text, prompt text, completion text, "
                  "marker int)")
    return names


def fill(conn, table, columns, rows):
    """Replaces the rows of `table` (one transaction)."""
    with conn.transaction():
        conn.execute(f"TRUNCATE {table}")
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})",
                            rows)


def first_chunks(conn, ids):
    """{python_docs id: content of its first chunk (lowest seq)}."""
    return dict(conn.execute("SELECT DISTINCT ON (doc_id) doc_id, content FROM doc_chunks WHERE doc_id = ANY(%s) "
                             "ORDER BY doc_id, seq", (list(ids),)).fetchall())


# ---------------------------------------------------------------------------------------
# Calls into ragtune

class Ragtune:
    def __init__(self, conn, a):
        self.conn, self.a = conn, a

    def retrieve_sections(self, query, adapter=None, k=10):
        """Section ids (doc_chunks.doc_id) of the top k chunks, best first."""
        return [r[0] for r in self.conn.execute(
            "SELECT c.doc_id FROM retrieve(%s, %s, %s, adapter => %s) WITH ORDINALITY AS r(id, content, score, rank) "
            "JOIN doc_chunks c ON c.id = r.id::bigint ORDER BY r.rank", (query, SOURCE, k, adapter)).fetchall()]

    def passages(self, question, k=2, min_score=0.35):
        """What rag_answer() puts in its prompt with its defaults: [(n, section id, chunk
        content)] for the top k chunks scoring at least min_score, best first."""
        rows = self.conn.execute(
            "SELECT c.doc_id, r.content, r.score FROM retrieve(%s, %s, %s) WITH ORDINALITY AS r(id, content, score, rank) "
            "JOIN doc_chunks c ON c.id = r.id::bigint ORDER BY r.rank", (question, SOURCE, k)).fetchall()
        kept = [(doc_id, content) for doc_id, content, score in rows if score >= min_score]
        return [(n, doc_id, content) for n, (doc_id, content) in enumerate(kept, 1)]

    def generate(self, prompt, model, max_tokens, adapter=None):
        start = time.perf_counter()
        text = self.conn.execute("SELECT generate(%s, model => %s, max_tokens => %s, adapter => %s)",
                                 (prompt, model, max_tokens, adapter)).fetchone()[0]
        return text, time.perf_counter() - start

    def rag(self, question, model, max_tokens, adapter=None):
        start = time.perf_counter()
        result = self.conn.execute(
            "SELECT rag_answer_json(%s, source => %s, model => %s, adapter => %s, max_tokens => %s)",
            (question, SOURCE, model, adapter, max_tokens)).fetchone()[0]
        ids = [s["id"] for s in result["sources"]]
        sections = [r[0] for r in self.conn.execute(
            "SELECT doc_id FROM doc_chunks WHERE id = ANY(%s::bigint[])", (ids,)).fetchall()]
        result["sections"] = sections
        result["seconds"] = time.perf_counter() - start
        return result

    def rag_prompt(self, question, model):
        return self.conn.execute("SELECT rag_prompt(%s, source => %s, model => %s)",
                                 (question, SOURCE, model)).fetchone()[0]

    def rag_system_prompt(self):
        return self.conn.execute("SELECT rag_system_prompt()").fetchone()[0]

    def evaluate(self, adapter, table, k=None):
        if k is None:
            return self.conn.execute("SELECT evaluate_adapter(%s, %s::regclass)", (adapter, table)).fetchone()[0]
        return self.conn.execute("SELECT evaluate_adapter(%s, %s::regclass, k => %s)", (adapter, table, k)).fetchone()[0]

    def train(self, name, table, kind, base_model, data_rows, epochs, system=None, hard_negatives_from=None,
              copy_from_prompt=None):
        """finetune_adapter(name, table, ...) unless --reuse finds it trained from the same
        rows with the same options; then prints and returns its stored metrics."""
        a = self.a
        options = {"kind": kind, "base_model": base_model, "epochs": epochs, "rank": a.rank,
                   "learning_rate": a.learning_rate, "batch_size": a.batch_size, "seed": a.seed, "system": system,
                   "hard_negatives_from": hard_negatives_from, "copy_from_prompt": copy_from_prompt}
        key = fingerprint(options, sorted(map(list, data_rows)))
        stored = self.conn.execute("SELECT version FROM ragtune_adapters WHERE name = %s", (name,)).fetchone()
        mine = self.conn.execute(f"SELECT fingerprint, version FROM {SCHEMA}.trained WHERE adapter = %s",
                                 (name,)).fetchone()
        if a.reuse and stored and mine and mine == (key, stored[0]):
            log(f"  --reuse: adapter \"{name}\" was trained from the same {len(data_rows)} rows and options")
            return self.training_report(name, reused=True)
        named = {"name": name, "training_data": table, "kind": kind, "base_model": base_model, "epochs": epochs,
                 "seed": a.seed, "rank": a.rank, "learning_rate": a.learning_rate, "batch_size": a.batch_size,
                 "system": system, "hard_negatives_from": hard_negatives_from, "copy_from_prompt": copy_from_prompt,
                 "replace": True}
        named = {k: v for k, v in named.items() if v is not None}
        casts = {"training_data": "::regclass"}
        call = "CALL finetune_adapter(" + ", ".join(f"{k} => %({k})s{casts.get(k, '')}" for k in named) + ")"
        log(f"  CALL finetune_adapter('{name}', '{table}', kind => '{kind}', base_model => '{base_model}', "
            f"epochs => {epochs}{', system => rag_system_prompt()' if system else ''}"
            f"{', copy_from_prompt => true' if copy_from_prompt else ''}, ...): {len(data_rows)} rows")
        start = time.perf_counter()
        # Client-side binding: CALL's arguments become literals.
        with psycopg.ClientCursor(self.conn) as cur:
            cur.execute(call, named)
        wall = time.perf_counter() - start
        version = self.conn.execute("SELECT version FROM ragtune_adapters WHERE name = %s", (name,)).fetchone()[0]
        self.conn.execute(f"INSERT INTO {SCHEMA}.trained (adapter, fingerprint, version) VALUES (%s, %s, %s) "
                          "ON CONFLICT (adapter) DO UPDATE SET fingerprint = excluded.fingerprint, "
                          "version = excluded.version, trained_at = now()", (name, key, version))
        return self.training_report(name, wall=wall)

    def training_report(self, name, reused=False, wall=None):
        """Prints and returns the figures of ragtune_adapters.metrics for adapter `name`."""
        kind, base, metrics, created = self.conn.execute(
            "SELECT kind, base_model, metrics, created_at FROM ragtune_adapters WHERE name = %s", (name,)).fetchone()
        rows, seconds = metrics.get("rows", {}), metrics.get("seconds", {})
        report = {"adapter": name, "kind": kind, "base_model": base, "reused": reused,
                  "rows_train": rows.get("train"), "rows_validation": rows.get("validation"),
                  "seconds_read": seconds.get("read"), "seconds_train": seconds.get("train"),
                  "seconds_total": seconds.get("total"), "rows_per_second": metrics.get("rows_per_second")}
        log(f"  adapter \"{name}\" ({kind} on {base}{', reused: trained ' + str(created) if reused else ''}): "
            f"rows read {rows.get('read')}, used {rows.get('used')} (train {rows.get('train')}, validation "
            f"{rows.get('validation')}), skipped {rows.get('skipped_null')} NULL / {rows.get('skipped_too_long')} too long"
            + (", STOPPED AT maintenance_work_mem" if rows.get("stopped_at_memory_limit") else ""))
        log(f"    seconds: read {num(seconds.get('read'))}, train {num(seconds.get('train'))}, total "
            f"{num(seconds.get('total'))}{f' (client wall {wall:.1f})' if wall else ''}; "
            f"{num(metrics.get('rows_per_second'))} rows/s end to end (rows used / total seconds), "
            f"{num(metrics.get('training_rows_per_second'))} rows/s in the epochs (training rows x epochs / train seconds) "
            f"on {os.cpu_count()} cores, ragtune.intra_op_threads {self.a.threads}")
        for e in metrics.get("epochs", []):
            extra = {k: v for k, v in e.items() if k not in ("epoch", "train_loss", "seconds")}
            log(f"    epoch {e.get('epoch')}: train loss {num(e.get('train_loss'), 4)}, "
                + ", ".join(f"{k} {num(v, 4)}" for k, v in extra.items()) + f", {num(e.get('seconds'))} s")
        if "base_validation_nll" in metrics:
            log(f"    validation NLL (its own validation rows): base {num(metrics.get('base_validation_nll'), 4)}, "
                f"adapter {num(metrics.get('validation_nll'), 4)}")
        if "validation_recall_at_5" in metrics:
            log(f"    validation recall@5 (its own validation rows): {metrics['validation_recall_at_5']}")
        return report


def num(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, (int, float)) else str(value)


# ---------------------------------------------------------------------------------------
# Parts

def build_style_rows(conn, rt, a, held, train):
    """Part 1's rows: (train rows, held-out rows in evaluation order), each (doc_id, kind,
    prompt, completion). Besides the plain questions, the train questions are also asked
    the way rag_answer() asks them (rag_prompt(): passages, then the question; kind
    "rag"), their completions citing the gold passage's [n], because the adapter is meant
    to keep the house style when it answers from retrieved passages (part 3). Held-out
    rows are plain questions only."""
    def faq_row(q):
        id_, path, title, question, gold = q
        return (id_, "faq", question, house_completion(opening(gold), path, title))
    faq_ids = {q[0] for q in held + train}
    docs = doc_rows(conn, a.seed, max(0, a.style_rows - len(faq_ids)), faq_ids)
    doc = [(id_, "docs", prompt, house_completion(text, path, title)) for id_, path, title, prompt, text in docs]
    n = round(a.holdout * len(doc))
    held_rows = [faq_row(q) for q in held] + doc[:n]
    random.Random(f"style-eval:{a.seed}").shuffle(held_rows)
    sections = {q[0]: q for q in train}
    rag = [(id_, "rag", prompt, house_completion(f"{opening(sections[id_][4])} [{marker}]", *sections[id_][1:3]))
           for id_, _, prompt, _, marker in context_rows(rt, a, a.style_model, train)[0]]
    return [faq_row(q) for q in train] + doc[n:] + rag, held_rows


def print_samples(rows, n=2, width=300):
    for row in rows[:n]:
        for name, value in row.items():
            text = value if isinstance(value, str) else repr(value)
            log(f"    {name}: {text[:width]!r}{'...' if len(text) > width else ''}")
        log("    --")


def token_lengths(a, model, texts):
    """Token counts of texts with the model's tokenizer.json, when the tokenizers package
    and the file are here (the demo's models directory); else None."""
    try:
        import tokenizers
        tokenizer = tokenizers.Tokenizer.from_file(str(Path(a.models_dir) / model / "tokenizer.json"))
    except Exception:
        return None
    return np.array([len(tokenizer.encode(t, add_special_tokens=False).ids) for t in texts])


def part1(rt, a, style_train, style_held, summary):
    model = a.style_model
    name = style_adapter(model)
    log(f"\n== Part 1: generator adapter with a house style ({model}) ==")
    log(f"rows: {len(style_train)} train, {len(style_held)} held-out ({len(style_train) + len(style_held)} in all; "
        f"FAQ {sum(r[1] == 'faq' for r in style_train + style_held)}, other sections "
        f"{sum(r[1] == 'docs' for r in style_train + style_held)}, train questions in rag_prompt() form "
        f"{sum(r[1] == 'rag' for r in style_train)})")
    result = {"model": model, "adapter": name, "conditions": {}}
    if not a.dry_run:
        summary["training"].append(rt.train(name, f"{SCHEMA}.style_train", "generator", model,
                                            [r[2:] for r in style_train], a.epochs))
        nll = rt.evaluate(name, f"{SCHEMA}.style_heldout")
        reduction = 1 - nll["adapter_nll"] / nll["base_nll"]
        result.update(base_nll=nll["base_nll"], adapter_nll=nll["adapter_nll"], reduction=reduction, nll_rows=nll.get("rows"))
        log(f"held-out NLL per completion token (evaluate_adapter, {nll.get('rows')} rows, {nll.get('positions')} "
            f"positions): base {nll['base_nll']:.4f}, adapter {nll['adapter_nll']:.4f}: {reduction:.1%} lower "
            f"(acceptance >= {NLL_REDUCTION:.0%}: {'PASS' if reduction >= NLL_REDUCTION else 'FAIL'})")
    evaluated = style_held[:a.limit]
    conditions = [("base", None)] + ([] if a.dry_run else [("adapter", name)])
    for label, adapter in conditions if evaluated else ():
        checks, seconds = [], []
        for doc_id, kind, prompt, completion in evaluated:
            answer, s = rt.generate(prompt, model, a.style_max_tokens, adapter)
            check = style(answer)
            gold_path = completion.rsplit("\n", 1)[-1][len(SOURCE_PREFIX):].split(" — ")[0].strip()
            check["names_page"] = check["source"] and gold_path in check["last_line"]
            check["kind"] = kind
            checks.append(check)
            seconds.append(s)
            if a.verbose:
                log(f"  [{label}] {prompt!r}\n    -> {answer!r}\n    {check}")
        figures = {part: rate(c[part] for c in checks) for part in ("lead", "source", "style", "names_page")}
        by_kind = {kind: rate(c["style"] for c in checks if c["kind"] == kind) for kind in ("faq", "docs")}
        result["conditions"][label] = figures
        log(f"greedy generate(), max_tokens {a.style_max_tokens}, {len(checks)} held-out prompts, {label:>7}: "
            f"house style {figures['style']:.1%} (lead {figures['lead']:.1%}, final Source line {figures['source']:.1%}; "
            f"FAQ {by_kind['faq']:.1%}, other {by_kind['docs']:.1%}); Source line names the gold page "
            f"{figures['names_page']:.1%}; {rate(seconds):.1f} s/answer")
    if "adapter" in result["conditions"]:
        ok = result["conditions"]["adapter"]["style"] >= STYLE_RATE
        log(f"acceptance: house style >= {STYLE_RATE:.0%} with the adapter: {'PASS' if ok else 'FAIL'}")
    summary["part1"] = result


def style_adapter(model):
    return f"house_style.{model}"


def retrieval_queries(q):
    """The two kinds of query of part 2 for a question: [(kind, query)]."""
    id_, path, title, question, gold = q
    return [("question", question), ("answer", opening(gold))]


def retrieval_figures(ranks):
    ranks = np.array([r if r is not None else 10 ** 6 for r in ranks])
    return {"r@1": float((ranks <= 1).mean()), "r@5": float((ranks <= 5).mean()),
            "mrr@10": float(np.where(ranks <= 10, 1.0 / ranks, 0.0).mean())}, np.where(ranks <= 10, 1.0 / ranks, 0.0)


def rank_of(sections, gold):
    return sections.index(gold) + 1 if gold in sections else None


def part2(rt, a, held, train, summary):
    log(f"\n== Part 2: retrieval adapter \"{RETRIEVAL_ADAPTER}\" ==")
    log(f"queries per question: 'question' = its heading; 'answer' = the gold answer's opening "
        f"({MIN_WORDS}-{MAX_WORDS} words; find the section that says this); gold = the question's section")
    chunks = first_chunks(rt.conn, [q[0] for q in held + train])
    rows = {"train": [], "heldout": []}
    for split, questions in (("train", train), ("heldout", held)):
        for q in questions:
            for kind, query in retrieval_queries(q):
                rows[split].append((q[0], kind, query, chunks[q[0]]))
    fill(rt.conn, f"{SCHEMA}.retrieval_train", ["doc_id", "query_kind", "query", "passage"], rows["train"])
    for kind in ("question", "answer"):
        fill(rt.conn, f"{SCHEMA}.retrieval_heldout_{kind}", ["doc_id", "query", "passage"],
             [(r[0], r[2], r[3]) for r in rows["heldout"] if r[1] == kind])
    log(f"rows: {SCHEMA}.retrieval_train {len(rows['train'])} ({len(train)} questions x 2 kinds), "
        f"{SCHEMA}.retrieval_heldout_question and _answer {len(held)} each; passage = the gold section's first chunk")
    if a.dry_run:
        print_samples([dict(zip(("doc_id", "query_kind", "query", "passage"), r)) for r in rows["train"][:2]])

    model = rt.conn.execute("SELECT model FROM ragtune_rag_sources WHERE name = %s", (SOURCE,)).fetchone()[0]
    result = {"base_all": {}, "heldout": {}}
    header(["r@1", "r@5", "mrr@10"])
    for kind in ("question", "answer"):
        ranks = [rank_of(rt.retrieve_sections(query), q[0]) for q in held + train
                 for k, query in retrieval_queries(q) if k == kind]
        result["base_all"][kind] = retrieval_figures(ranks)[0]
        line(f"all {len(ranks)} FAQ questions, '{kind}' queries, no adapter", result["base_all"][kind])
    if not a.dry_run:
        summary["training"].append(rt.train(RETRIEVAL_ADAPTER, f"{SCHEMA}.retrieval_train", "retrieval", model,
                                            [r[2:] for r in rows["train"]], a.retrieval_epochs or a.epochs,
                                            hard_negatives_from=SOURCE))
    conditions = [("base", None)] + ([] if a.dry_run else [("adapter", RETRIEVAL_ADAPTER)])
    header(["r@1", "r@5", "mrr@10"])
    for kind in ("question", "answer"):
        reciprocal = {}
        for label, adapter in conditions:
            ranks = [rank_of(rt.retrieve_sections(query, adapter), q[0]) for q in held
                     for k, query in retrieval_queries(q) if k == kind]
            figures, reciprocal[label] = retrieval_figures(ranks)
            result["heldout"][(kind, label)] = figures
            line(f"held-out {len(ranks)}, '{kind}' queries, {label}", figures)
        if "adapter" in reciprocal:
            mean, low, high = bootstrap_mean(reciprocal["adapter"] - reciprocal["base"], a.seed)
            result["heldout"][(kind, "mrr_difference")] = (mean, low, high)
            log(f"{'':<4}MRR@10 adapter - base on '{kind}' queries: {fmt_ci(mean, low, high, signed=True)} (95% CI, "
                "paired bootstrap)")
    if not a.dry_run:
        for kind in ("question", "answer"):
            view = f"{SCHEMA}.retrieval_heldout_{kind}"
            ev = rt.evaluate(RETRIEVAL_ADAPTER, view, k=5)
            result["heldout"][(kind, "evaluate_adapter")] = ev
            log(f"evaluate_adapter('{RETRIEVAL_ADAPTER}', '{view}', k => 5): recall@5 among its {ev.get('passages')} "
                f"passages: base {num(ev.get('base_recall'), 3)}, adapter {num(ev.get('adapter_recall'), 3)}")
    summary["part2"] = result


def part3(rt, a, held, summary):
    model = a.style_model
    name = None if a.dry_run else style_adapter(model)
    log(f"\n== Part 3: rag_answer_json() with the house-style adapter ({name or 'dry run: no adapter'}) ==")
    checks = []
    for id_, path, title, question, gold in held[:a.limit]:
        result = rt.rag(question, model, a.style_max_tokens, name)
        check = style(result["answer"], strip_markers=True)
        check["cited"] = any(s.get("cited") for s in result["sources"])
        check["model_cited"] = result.get("citations") == "model"
        check["gold_passage"] = id_ in result["sections"]
        check["names_page"] = check["source"] and path in check["last_line"]
        check["both"] = check["style"] and check["cited"]
        checks.append(check)
        if a.verbose:
            log(f"  Q {question!r}\n    -> {result['answer']!r}\n    {check}")
    figures = {part: rate(c[part] for c in checks)
               for part in ("style", "lead", "source", "cited", "model_cited", "both", "gold_passage", "names_page")}
    summary["part3"] = {"adapter": name, "n": len(checks), **figures}
    if not checks:
        return
    log(f"{len(checks)} held-out questions, max_tokens {a.style_max_tokens}: house style {figures['style']:.1%} "
        f"(lead {figures['lead']:.1%}, final Source line {figures['source']:.1%}, trailing [n] set aside); "
        f"cites a retrieved section {figures['cited']:.1%} (the model's own marker {figures['model_cited']:.1%}); "
        f"both {figures['both']:.1%}; Source line names the gold page {figures['names_page']:.1%}; gold section among "
        f"the passages {figures['gold_passage']:.1%}")


def context_rows(rt, a, model, questions):
    """Part 4's rows for `questions`: (doc_id, question, prompt, completion, marker,
    ) where the gold section is among the prompt's passages; and counts."""
    rows, counts = [], {"questions": len(questions), "no_passage": 0, "gold_absent": 0, "answer_in_prompt": 0,
                        "mismatch": 0}
    for id_, path, title, question, gold in questions:
        passages = rt.passages(question)
        if not passages:
            counts["no_passage"] += 1
            continue
        marker = next((n for n, doc_id, _ in passages if doc_id == id_), None)
        if marker is None:
            counts["gold_absent"] += 1
            continue
        prompt = rt.rag_prompt(question, model)
        # retrieve() and rag_prompt() must agree on the passages and their numbers.
        content = next(c for n, _, c in passages if n == marker)
        if prompt is None or f"[{marker}] {content[:40]}" not in prompt:
            counts["mismatch"] += 1
            continue
        answer = opening(gold)
        counts["answer_in_prompt"] += " ".join(answer.split()[:8]) in " ".join(prompt.split())
        rows.append((id_, question, prompt, f"{answer} [{marker}]", marker))
    return rows, counts


def part4(rt, a, held, train, summary):
    system = rt.rag_system_prompt()
    log(f"\n== Part 4: context-use adapters, models {', '.join(a.models)} ==")
    log(f"system message of training: rag_system_prompt() = {system!r}")
    summary["part4"] = {}
    for model in a.models:
        name = f"faq_context.{model}"
        train_table, held_table = context_tables(rt.conn, model)
        columns = ["doc_id", "question", "prompt", "completion", "marker"]
        built = {}
        # Questions about other sections, answered by their opening: more rows than the
        # FAQ's train questions alone give (the held-out FAQ questions stay unseen).
        others = doc_rows(rt.conn, a.seed, a.context_doc_rows, {q[0] for q in held}, CONTEXT_TEMPLATES)
        for table, questions in ((train_table, train + others), (held_table, held)):
            rows, counts = context_rows(rt, a, model, questions)
            fill(rt.conn, table, columns, rows)
            built[table] = rows
            log(f"{model}: {table}: {len(rows)} rows from {counts['questions']} questions ({counts['gold_absent']} "
                f"without the gold section among the passages, {counts['no_passage']} without a passage above "
                f"min_score, {counts['mismatch']} where rag_prompt() and retrieve() disagreed; the completion's first 8 "
                f"words appear verbatim in the prompt for {counts['answer_in_prompt']}: passages keep their reST markup "
                f"and are cut at 120 tokens)")
        if a.dry_run:
            print_samples([dict(zip(columns, r)) for r in built[train_table][:1]], n=1, width=1200)
            lengths = token_lengths(a, model, [r[2] for r in built[train_table]])
            if lengths is not None and len(lengths):
                log(f"  prompt tokens ({model}): mean {lengths.mean():.0f}, max {lengths.max()}")
        result = {"adapter": None if a.dry_run else name, "rows_train": len(built[train_table])}
        if not a.dry_run:
            summary["training"].append(rt.train(name, train_table, "generator", model,
                                                [r[2:4] for r in built[train_table]], a.epochs, system=system,
                                                copy_from_prompt=True))
            if built[held_table]:
                nll = rt.evaluate(name, held_table)
                result["nll"] = nll
                log(f"held-out NLL (evaluate_adapter, {nll.get('rows')} rows whose gold section is retrieved): "
                    f"base {nll['base_nll']:.4f}, adapter {nll['adapter_nll']:.4f} "
                    f"({1 - nll['adapter_nll'] / nll['base_nll']:.1%} lower)")
        evaluated = held[:a.limit]
        labels = ("rag+adapter", "rag", "closed-book")
        scores = {measure: {label: [] for label in labels} for measure in MEASURES}
        extra = {"rag+adapter": [], "rag": []}

        def score(label, question, gold, answer):
            short = opening(gold)
            scores["f1"][label].append(faq.token_f1(answer, gold))
            scores["short_f1"][label].append(faq.token_f1(answer, short))
            scores["correct"][label].append(float(scores["short_f1"][label][-1] >= CORRECT_F1))
            if a.verbose:
                log(f"  [{label}] {question!r} (F1 {scores['f1'][label][-1]:.2f}, short answer "
                    f"{scores['short_f1'][label][-1]:.2f}) -> {answer!r}")

        for id_, path, title, question, gold in evaluated:
            for label, adapter in (("rag+adapter", name), ("rag", None)):
                if a.dry_run and adapter:
                    continue
                result_ = rt.rag(question, model, a.max_tokens, adapter)
                score(label, question, gold, result_["answer"])
                extra[label].append((id_ in result_["sections"], result_.get("citations") == "model",
                                     result_["seconds"]))
            score("closed-book", question, gold, rt.generate(question, model, a.max_tokens)[0])
        summary["part4"][model] = result
        if not evaluated:
            continue
        for measure, values_by_label in scores.items():
            log(f"{model}: {MEASURES[measure]}, {len(evaluated)} held-out questions, max_tokens {a.max_tokens} "
                f"(mean [95% CI]):")
            result[measure] = {}
            for label, values in values_by_label.items():
                if not values:
                    continue
                result[measure][label] = bootstrap_mean(values, a.seed)
                details = ""
                if extra.get(label) and measure == "f1":
                    gold_in, model_cited, seconds = zip(*extra[label])
                    details = (f"; gold section in passages {np.mean(gold_in):.1%}, model cited "
                               f"{np.mean(model_cited):.1%}, {np.mean(seconds):.1f} s/answer")
                log(f"    {label:<12} {fmt_ci(*result[measure][label])}{details}")
            for other in ("rag", "closed-book"):
                if values_by_label["rag+adapter"] and values_by_label[other]:
                    difference = np.array(values_by_label["rag+adapter"]) - np.array(values_by_label[other])
                    result[measure][f"vs {other}"] = bootstrap_mean(difference, a.seed)
                    log(f"    rag+adapter - {other}: {fmt_ci(*result[measure][f'vs {other}'], signed=True)} (paired "
                        f"bootstrap; better on {np.mean(difference > 0):.0%}, worse on {np.mean(difference < 0):.0%})")


# ---------------------------------------------------------------------------------------
# Output

def header(columns):
    log(f"{'':<{LABEL}} " + " ".join(f"{c:>10}" for c in columns))


def line(label, values):
    log(f"{label:<{LABEL}} " + " ".join(f"{v:>10.3f}" for v in values.values()))


def print_summary(a, summary, seconds):
    log(f"\n== SUMMARY (seed {a.seed}, held-out fraction {a.holdout}, --limit {a.limit}, "
        f"{'dry run, ' if a.dry_run else ''}{seconds / 60:.1f} min) ==")
    rows = []  # (what, figure, acceptance)
    if "part1" in summary:
        p = summary["part1"]
        if "reduction" in p:
            rows.append((f"1 held-out NLL/token {p['model']}: base -> adapter",
                         f"{p['base_nll']:.3f} -> {p['adapter_nll']:.3f} ({p['reduction']:.1%} lower)",
                         f">= {NLL_REDUCTION:.0%} lower: {'PASS' if p['reduction'] >= NLL_REDUCTION else 'FAIL'}"))
        for label in ("base", "adapter"):
            if label in p["conditions"]:
                f = p["conditions"][label]
                rows.append((f"1 house style, greedy, {label}",
                             f"{f['style']:.1%} (lead {f['lead']:.1%}, Source {f['source']:.1%})",
                             f">= {STYLE_RATE:.0%}: {'PASS' if f['style'] >= STYLE_RATE else 'FAIL'}"
                             if label == "adapter" else ""))
    if "part2" in summary:
        p = summary["part2"]
        for kind, f in p["base_all"].items():
            rows.append((f"2 all FAQ, '{kind}' queries, no adapter",
                         f"r@1 {f['r@1']:.3f} r@5 {f['r@5']:.3f} MRR {f['mrr@10']:.3f}", ""))
        for key, f in p["heldout"].items():
            if key[1] in ("base", "adapter"):
                rows.append((f"2 held-out, '{key[0]}' queries, {key[1]}",
                             f"r@1 {f['r@1']:.3f} r@5 {f['r@5']:.3f} MRR {f['mrr@10']:.3f}", ""))
            elif key[1] == "mrr_difference":
                rows.append((f"2 held-out, '{key[0]}' MRR adapter - base", fmt_ci(*f, signed=True), ""))
    if summary.get("part3", {}).get("n"):
        p = summary["part3"]
        rows.append((f"3 rag_answer_json + style adapter, {p['n']} q",
                     f"style {p['style']:.1%}, cited {p['cited']:.1%} (model {p['model_cited']:.1%}), "
                     f"both {p['both']:.1%}", ""))
    for model, p in summary.get("part4", {}).items():
        for measure in MEASURES:
            for label in ("rag+adapter", "rag", "closed-book"):
                if label in p.get(measure, {}):
                    rows.append((f"4 {measure} {model}, {label}", fmt_ci(*p[measure][label]), ""))
            for other in ("rag", "closed-book"):
                if f"vs {other}" in p.get(measure, {}):
                    rows.append((f"4 {measure} {model}, rag+adapter - {other}",
                                 fmt_ci(*p[measure][f"vs {other}"], signed=True), ""))
    for t in summary["training"]:
        rows.append((f"training {t['adapter']}{' (reused)' if t['reused'] else ''}",
                     f"{t['rows_train']} rows, train {num(t['seconds_train'])} s, total {num(t['seconds_total'])} s, "
                     f"{num(t['rows_per_second'])} rows/s", ""))
    rows.append(("minutes", ", ".join(f"{part} {s / 60:.1f}" for part, s in summary["seconds"].items()), ""))
    width = max([len(r[0]) for r in rows] + [10])
    value_width = max([len(r[1]) for r in rows] + [10])
    for what, figure, acceptance in rows:
        log(f"{what:<{width}}  {figure:<{value_width}}  {acceptance}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dsn")
    ap.add_argument("--parts", default="1,2,3,4", help="comma-separated parts to run (default 1,2,3,4)")
    ap.add_argument("--limit", type=int, help="held-out rows/questions answered by generation per part (default 30; "
                    "3 with --dry-run); NLL and retrieval figures always use every held-out row")
    ap.add_argument("--seed", type=int, default=1, help="splits, the choice of other sections, and finetune_adapter(seed)")
    ap.add_argument("--holdout", type=float, default=0.2, help="held-out fraction of the questions and of part 1's rows")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of every training run (finetune_adapter's default 3)")
    ap.add_argument("--retrieval-epochs", type=int, help="epochs of part 2's training (default --epochs)")
    ap.add_argument("--rank", type=int, help="finetune_adapter(rank) (default: its own)")
    ap.add_argument("--learning-rate", type=float, help="finetune_adapter(learning_rate) (default: its own)")
    ap.add_argument("--batch-size", type=int, help="finetune_adapter(batch_size) (default: its own)")
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated generators of part 4")
    ap.add_argument("--style-model", help="generator of parts 1 and 3 (default: ragtune.default_generator)")
    ap.add_argument("--style-rows", type=int, default=520, help="part 1 rows in all (train + held-out), at least 500")
    ap.add_argument("--style-max-tokens", type=int, default=96, help="max_tokens of parts 1 and 3's answers")
    ap.add_argument("--max-tokens", type=int, default=64, help="max_tokens of part 4's answers")
    ap.add_argument("--context-doc-rows", type=int, default=1000,
                    help="part 4: questions about up to this many other sections added to the train rows "
                         "(those whose section is retrieved; 0: the FAQ's train questions only)")
    ap.add_argument("--threads", type=int, default=2, help="ragtune.intra_op_threads")
    ap.add_argument("--maintenance-work-mem", default="1GB", help="session setting; caps what training holds")
    ap.add_argument("--models-dir", default="/var/lib/ragtune/models",
                    help="model directories (tokenizer.json), for token counts")
    ap.add_argument("--reuse", action="store_true",
                    help="skip training an adapter last trained by this script from the same rows and options")
    ap.add_argument("--dry-run", action="store_true", help="build the data and run everything that needs no adapter")
    ap.add_argument("--verbose", action="store_true", help="print every prompt and answer")
    a = ap.parse_args()
    parts = {int(p) for p in a.parts.split(",") if p.strip()}
    a.models = [m.strip() for m in a.models.split(",") if m.strip()]
    if a.limit is None:
        a.limit = 3 if a.dry_run else 30
    started = time.perf_counter()

    with psycopg.connect(a.dsn, autocommit=True) as conn:
        conn.add_notice_handler(lambda d: log(f"    NOTICE: {d.message_primary}"))
        conn.execute(f"SET ragtune.intra_op_threads = {a.threads:d}")
        conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (a.maintenance_work_mem,))
        rt = Ragtune(conn, a)
        # The settings exist once the library is loaded: retrieve() loads it.
        rt.retrieve_sections("warm up", k=1)
        a.style_model = a.style_model or conn.execute("SELECT current_setting('ragtune.default_generator')").fetchone()[0]
        create_tables(conn)

        questions = faq_questions(conn)
        held, train = split_questions(questions, a.seed, a.holdout)
        fill(conn, f"{SCHEMA}.faq_split", ["doc_id", "path", "question", "gold", "split", "position"],
             [(q[0], q[1], q[3], q[4], "heldout", i) for i, q in enumerate(held)]
             + [(q[0], q[1], q[3], q[4], "train", i) for i, q in enumerate(train)])
        log(f"{len(questions)} FAQ questions (every faq/ page; headings ending in '?', each once): {len(held)} held-out, "
            f"{len(train)} train/dev (seed {a.seed}); corpus {SOURCE}: "
            f"{conn.execute('SELECT count(*) FROM python_docs').fetchone()[0]} sections, "
            f"{conn.execute('SELECT count(*) FROM doc_chunks').fetchone()[0]} chunks; {os.cpu_count()} cores, "
            f"ragtune.intra_op_threads {a.threads}; generation per part on the first {a.limit} held-out")

        style_train = style_held = None
        if parts & {1, 3}:
            style_train, style_held = build_style_rows(conn, rt, a, held, train)
            fill(conn, f"{SCHEMA}.style_train", ["doc_id", "kind", "prompt", "completion"], style_train)
            fill(conn, f"{SCHEMA}.style_heldout", ["doc_id", "kind", "prompt", "completion", "position"],
                 [r + (i,) for i, r in enumerate(style_held)])
            rag_rows = sum(r[1] == "rag" for r in style_train)
            total = len(style_train) + len(style_held) - rag_rows
            log(f"house-style rows: {SCHEMA}.style_train {len(style_train)} ({rag_rows} of them train questions in "
                f"rag_prompt() form), {SCHEMA}.style_heldout {len(style_held)} ({total} plain prompt/completion rows in "
                f"all{'; FEWER THAN 500' if total < 500 else ''})")
            if a.dry_run:
                columns = ("doc_id", "kind", "prompt", "completion")
                print_samples([dict(zip(columns, r)) for r in style_train[:1] + [r for r in style_train if r[1] == "docs"][:2]], n=3)
                lengths = token_lengths(a, a.style_model, [r[3] for r in style_train + style_held])
                if lengths is not None:
                    log(f"  completion tokens ({a.style_model}): mean {lengths.mean():.0f}, p95 "
                        f"{np.percentile(lengths, 95):.0f}, max {lengths.max()} (--style-max-tokens {a.style_max_tokens}: "
                        f"{np.mean(lengths + 1 > a.style_max_tokens):.1%} would not fit with the end token)")
                bad = [r for r in style_train + style_held if not style(r[3])["style"]]
                log(f"  completions failing style(): {len(bad)} (must be 0)")

        summary = {"training": [], "seconds": {}}
        clock = time.perf_counter()

        def lap(part):
            nonlocal clock
            summary["seconds"][part] = time.perf_counter() - clock
            clock = time.perf_counter()
        lap("data")
        if 1 in parts:
            part1(rt, a, style_train, style_held, summary)
            lap("part 1")
        if 2 in parts:
            part2(rt, a, held, train, summary)
            lap("part 2")
        if 3 in parts:
            if 1 not in parts and not a.dry_run:
                log(f"\n(part 3 needs part 1's adapter: training or reusing it)")
                summary["training"].append(rt.train(style_adapter(a.style_model), f"{SCHEMA}.style_train",
                                                    "generator", a.style_model, [r[2:] for r in style_train], a.epochs))
            part3(rt, a, held, summary)
            lap("part 3")
        if 4 in parts:
            part4(rt, a, held, train, summary)
            lap("part 4")
        print_summary(a, summary, time.perf_counter() - started)


if __name__ == "__main__":
    main()
