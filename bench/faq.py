"""The Python FAQ as a question-answering set, shared by bench/rag_quality.py and
bench/rag_latency.py: questions are the FAQ's question headings (sections of table
python_docs whose title ends with '?'), the gold section is the row itself and the gold
answer is the first prose paragraph of its body. Also SQuAD-style token F1."""
import collections
import re
import string

# Inline reST markup, rendered as a reader sees it: one pass, so that the text inside a
# literal is never read as markup.
INLINE = re.compile(r"``(?P<literal>.+?)``"
                    r"|:(?P<role>\w+(?::\w+)?):`!?(?P<tilde>~?)(?P<target>[^`<]*?)\s*(?:<[^>]*>)?`"
                    r"|`(?P<link>[^`<]*?)\s*(?:<[^>]*>)?`_{0,2}"
                    r"|\*{1,2}(?P<emphasis>[^*\s][^*]*?)\*{1,2}", re.DOTALL)
# A citation marker [n]; not an index in code such as a[1] or f()[2].
CITATION = re.compile(r"(?<![\w)])\[\d+\]")
# Short first paragraphs ("Yes.", "There are various techniques.") say too little to score
# against: the next prose paragraph is added until the answer has this many words.
MIN_ANSWER_WORDS = 10


def inline_text(text):
    def render(m):
        if m["role"] in ("pep", "rfc"):
            return f"{m['role'].upper()} {m['target']}"
        if m["role"]:
            # :func:`~copy.copy` shows only the last component
            return m["target"].rsplit(".", 1)[-1] if m["tilde"] else m["target"]
        return m["literal"] or m["link"] or m["emphasis"] or ""
    return re.sub(r"\s+", " ", INLINE.sub(render, text)).strip()


def is_prose(paragraph):
    """Not a literal block, doctest, directive or comment: prose starts at column 0."""
    first = paragraph.splitlines()[0]
    return not (first[:1].isspace() or first.startswith((">>>", ".. ")))


def gold_answer(body):
    words, answer = 0, []
    for paragraph in re.split(r"\n\s*\n", body):
        if not paragraph.strip() or not is_prose(paragraph):
            continue
        # "text::" introduces a literal block and reads "text:"; a lone "::" reads as nothing
        paragraph = re.sub(r"\s*::\s*$", "", paragraph) if re.search(r"\s::\s*$", paragraph) \
            else re.sub(r"::\s*$", ":", paragraph)
        text = inline_text(re.sub(r"(?m)^\s*(?:[*-]|\d+[.)])\s+", "", paragraph))  # list markers
        if not text:
            continue
        answer.append(text)
        words += len(text.split())
        if words >= MIN_ANSWER_WORDS:
            break
    return " ".join(answer)


def questions(conn, pages):
    """[(python_docs id, question, gold answer)] for the question headings of the FAQ pages
    `pages` (e.g. ['faq/programming']), in document order."""
    rows = conn.execute("SELECT id, title, body FROM python_docs WHERE path = ANY(%s) AND title LIKE '%%?' ORDER BY id",
                        (pages,)).fetchall()
    return [(id_, inline_text(title), gold_answer(body)) for id_, title, body in rows]


def normalize(text):
    """SQuAD's answer normalization: lower case, no punctuation, no articles, one space."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def token_f1(prediction, gold):
    """Bag-of-tokens F1 after normalization; citation markers [n] are not words."""
    predicted, expected = normalize(CITATION.sub(" ", prediction)).split(), normalize(gold).split()
    common = sum((collections.Counter(predicted) & collections.Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def main():
    """Writes the FAQ questions into a table (question, answer, passages: the doc_chunks
    ids of the question's own section), for evaluate_strategies()."""
    import argparse
    import psycopg
    from psycopg import sql
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("dsn")
    ap.add_argument("table")
    ap.add_argument("--pages", nargs="+", default=["faq/programming"])
    a = ap.parse_args()
    with psycopg.connect(a.dsn) as conn:
        rows = questions(conn, a.pages)
        table = sql.Identifier(a.table)
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, question text NOT NULL, answer text NOT NULL, "
                             "passages bigint[] NOT NULL)").format(table))
        for id_, question, answer in rows:
            conn.execute(sql.SQL("INSERT INTO {} SELECT %s, %s, %s, array_agg(c.id ORDER BY c.id) FROM doc_chunks c "
                                 "WHERE c.doc_id = %s").format(table), (id_, question, answer, id_))
        print(f"{len(rows)} questions from {', '.join(a.pages)} in table {a.table}")


if __name__ == "__main__":
    main()
