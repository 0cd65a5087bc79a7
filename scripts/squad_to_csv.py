"""SQuAD v1.1 JSON -> two CSV files for COPY: paragraphs (id, title, content) and questions
(id, paragraph_id, question, answers as a PostgreSQL text[] literal). Paragraph ids count
from 1 in the file's order; a paragraph's content is its article's title, a blank line and
its text, as a passage of a RAG source reads.

    squad_to_csv.py DEV_JSON PARAGRAPHS_CSV QUESTIONS_CSV
"""
import csv
import json
import sys


def array_literal(items):
    return "{" + ",".join('"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"' for item in items) + "}"


def main():
    source, paragraphs_csv, questions_csv = sys.argv[1:4]
    data = json.load(open(source, encoding="utf-8"))["data"]
    with open(paragraphs_csv, "w", newline="", encoding="utf-8") as p, \
            open(questions_csv, "w", newline="", encoding="utf-8") as q:
        paragraphs, questions = csv.writer(p), csv.writer(q)
        paragraph_id = 0
        for article in data:
            title = article["title"].replace("_", " ")
            for paragraph in article["paragraphs"]:
                paragraph_id += 1
                paragraphs.writerow([paragraph_id, title, f"{title}\n\n{paragraph['context']}"])
                for qa in paragraph["qas"]:
                    answers = sorted({a["text"].strip() for a in qa["answers"]})
                    questions.writerow([qa["id"], paragraph_id, qa["question"].strip(), array_literal(answers)])


if __name__ == "__main__":
    main()
