"""Splits the reST sources of the Python documentation (Debian python3.11-doc) into
sections: one CSV row per heading, with the page path, the heading and the section's reST
as it is (clean_text() takes the markup out in the database).

Usage: python_docs.py SOURCES_DIR OUTPUT.csv
"""
import csv
import re
import sys
from pathlib import Path

# A heading is a title line underlined (optionally also overlined) with one repeated
# punctuation character at least as long as the title.
UNDERLINE = re.compile(r'^([=\-~^"*+#`\'])\1{2,}\s*$')
MIN_BODY = 40


def sections(path, text):
    lines = text.splitlines()
    title, body, heading_at = path, [], set()
    for i in range(1, len(lines)):
        if UNDERLINE.match(lines[i]) and lines[i - 1].strip() and not UNDERLINE.match(lines[i - 1]) \
                and len(lines[i].rstrip()) >= len(lines[i - 1].rstrip()):
            heading_at.add(i - 1)
    i = 0
    while i < len(lines):
        line = lines[i]
        if i in heading_at:
            yield title, section_text(body)
            title, body = line.strip(), []
            i += 2
            continue
        if UNDERLINE.match(line):
            i += 1
            continue
        body.append(line)
        i += 1
    yield title, section_text(body)


def section_text(lines):
    """The lines without blank ones at either end; the first keeps its indent (a
    directive's content must stay inside the directive)."""
    return "\n".join(lines).strip("\n").rstrip()


def main():
    sources, output = Path(sys.argv[1]), Path(sys.argv[2])
    rows = 0
    with output.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["path", "title", "body"])
        for file in sorted(sources.rglob("*.rst.txt")):
            page = str(file.relative_to(sources))[: -len(".rst.txt")]
            for title, body in sections(page, file.read_text(encoding="utf-8")):
                body = re.sub(r"\n{3,}", "\n\n", body)
                if len(body) >= MIN_BODY:
                    writer.writerow([page, title, body])
                    rows += 1
    print(f"{rows} sections from {sources}")


if __name__ == "__main__":
    main()
