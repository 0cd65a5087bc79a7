"""Driver for bench/embed.sh: prints texts per second for ragtune (SQL) and Python
onnxruntime on the same 1,000 passages, one text per call and in batches, on one thread."""
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime
import psycopg
import tokenizers

DSN, MODEL_DIR = sys.argv[1], Path(sys.argv[2])
PASSAGES, BATCH, THREADS = 1000, 32, 1


def passages(conn):
    """1,000 pieces of 181-210 model tokens: chunk() at 210 tokens, keeping the pieces
    that chunk() at 180 would still cut (so they are longer than 180)."""
    conn.execute("""CREATE TABLE IF NOT EXISTS bench_passages AS
        SELECT row_number() OVER (ORDER BY d.id, c.seq) AS id, c.content
        FROM python_docs d, chunk(d.body, 210) WITH ORDINALITY AS c(content, seq)
        WHERE (SELECT count(*) FROM chunk(c.content, 180)) > 1
        ORDER BY d.id, c.seq LIMIT %s""" % PASSAGES)
    conn.commit()
    return [r[0] for r in conn.execute("SELECT content FROM bench_passages ORDER BY id").fetchall()]


def python_embedder():
    config = json.loads((MODEL_DIR / "config.json").read_text())
    tokenizer = tokenizers.Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=tokenizer.padding["pad_id"], pad_token=tokenizer.padding["pad_token"], length=None)
    tokenizer.enable_truncation(max_length=config["max_tokens"])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = onnxruntime.InferenceSession(str(MODEL_DIR / "model.onnx"), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def embed(group):
        encodings = tokenizer.encode_batch(group)
        columns = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
                   "token_type_ids": [e.type_ids for e in encodings]}
        feed = {name: np.array(columns[name], dtype=np.int64) for name in names}
        hidden = session.run(None, feed)[0]
        mask = feed["attention_mask"][:, :, None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    return embed


def private_kib(pid):
    """Resident memory of the backend itself (RssAnon): shared buffers it touched excluded."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])


def timed(run):
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def main():
    with psycopg.connect(DSN) as conn:
        texts = passages(conn)
    assert len(texts) == PASSAGES, len(texts)
    embed = python_embedder()
    counter = tokenizers.Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    counter.no_padding()
    counter.no_truncation()
    tokens = [len(e.ids) for e in counter.encode_batch(texts)]
    print(f"{len(texts)} passages from the Python docs, {np.mean(tokens):.0f} tokens on average "
          f"({min(tokens)}-{max(tokens)}), {THREADS} thread, batches of {BATCH}")

    # A fresh backend: model load time and memory.
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"SET ragtune.intra_op_threads = {THREADS}")
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        before = private_kib(pid)
        first, _ = timed(lambda: conn.execute("SELECT embed('warm up')").fetchone())
        second, _ = timed(lambda: conn.execute("SELECT embed('warm up')").fetchone())
        loaded = private_kib(pid)
        print(f"fresh backend: first embed() {first * 1000:.0f} ms (model load {1000 * (first - second):.0f} ms), "
              f"next {second * 1000:.1f} ms; private backend memory {before / 1024:.0f} MiB before, {loaded / 1024:.0f} MiB after loading")

        rows = {}
        rows["ragtune", 1], ours = timed(lambda: conn.execute(
            "SELECT embed(content)::real[] FROM bench_passages ORDER BY id").fetchall())
        rows["ragtune", BATCH], _ = timed(lambda: conn.execute(
            f"SELECT embed(array_agg(content ORDER BY id)) FROM bench_passages GROUP BY (id - 1) / {BATCH} ORDER BY (id - 1) / {BATCH}"
        ).fetchall())
        print(f"private backend memory after the runs: {private_kib(pid) / 1024:.0f} MiB")
    rows["python", 1], reference = timed(lambda: np.vstack([embed([t]) for t in texts]))
    rows["python", BATCH], _ = timed(lambda: np.vstack([embed(texts[i:i + BATCH]) for i in range(0, len(texts), BATCH)]))

    ours = np.array([r[0] for r in ours], dtype=np.float32)
    agreement = float(np.min(np.sum(ours * reference, axis=1)))
    print(f"lowest cosine between ragtune's and Python's embeddings: {agreement:.6f}")
    print(f"{'mode':>14} {'ragtune':>12} {'python':>12} {'ratio':>7}")
    for batch in (1, BATCH):
        ragtune, python = PASSAGES / rows["ragtune", batch], PASSAGES / rows["python", batch]
        print(f"{'batch ' + str(batch):>14} {ragtune:>8.1f} t/s {python:>8.1f} t/s {ragtune / python:>7.2f}")


if __name__ == "__main__":
    main()
