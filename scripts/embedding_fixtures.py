"""Reference embeddings for the Rust embedder's tests, computed with Python onnxruntime and
tokenizers on the same model files.

Usage: embedding_fixtures.py MODEL_DIR OUT.json
  MODEL_DIR holds model.onnx, tokenizer.json and config.json as scripts/setup.sh installs
  them (e.g. /var/lib/ragtune/models/all-MiniLM-L6-v2-int8); run it with the venv's python.

The recipe is the one src/models/embed.rs implements: the tokenizer.json's own padding and
truncation (fixed 128) are replaced by padding to the longest text and truncation at the
config's max_tokens keeping the first tokens; one ONNX call for the whole batch; mean
pooling of last_hidden_state over the attention mask; L2 normalisation.
"""
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import tokenizers

LONG_TEXT = " ".join(
    [
        "PostgreSQL is a powerful, open source object-relational database system with over",
        "thirty-five years of active development that has earned it a strong reputation for",
        "reliability, feature robustness, and performance. It supports transactions with",
        "atomicity, consistency, isolation and durability, foreign keys, views, triggers and",
        "stored procedures written in many languages. Extensions add new data types, index",
        "access methods and functions without changing the core server.",
    ]
    * 4
)

SENTENCES = [
    "A cat sits on the mat.",
    "A kitten is resting on a rug.",
    "Stock markets fell sharply today.",
    "The quick brown fox jumps over the lazy dog.",
    "How do I create an index in PostgreSQL?",
    "Vector search finds the nearest neighbours of a query embedding.",
    "SELECT id FROM items ORDER BY embedding <=> '[1,2,3]' LIMIT 5;",
    "It is raining heavily outside.",
    "The weather is lovely and sunny.",
    "ALL CAPS SENTENCE WITH SHOUTING!!!",
    "database",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism",
    "Il pleut à verse à Paris aujourd'hui ; le café est fermé.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Привет, мир! Как дела?",
    "東京は日本の首都です。",
    "Emoji 🚀🔥 and a zero\u200bwidth space, e\u0301cole with a combining accent.",
    "1234567890 3.14159 -42 1e-9",
    "",
    "   \n\t  ",
    LONG_TEXT,
    "Short first sentence. " + LONG_TEXT[: len(LONG_TEXT) // 2],
]


def main(model_dir: Path, out: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    assert config["kind"] == "embedding" and config["pooling"] == "mean", config
    max_tokens = config["max_tokens"]

    tokenizer = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    padding = tokenizer.padding
    tokenizer.enable_padding(
        direction="right", pad_id=padding["pad_id"], pad_type_id=padding["pad_type_id"],
        pad_token=padding["pad_token"], length=None,
    )
    tokenizer.enable_truncation(max_length=max_tokens, stride=0, strategy="longest_first", direction="right")
    encodings = tokenizer.encode_batch(SENTENCES)

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    columns = {
        "input_ids": [e.ids for e in encodings],
        "attention_mask": [e.attention_mask for e in encodings],
        "token_type_ids": [e.type_ids for e in encodings],
    }
    feed = {i.name: np.array(columns[i.name], dtype=np.int64) for i in session.get_inputs()}
    hidden = session.run(["last_hidden_state"], feed)[0]

    mask = feed["attention_mask"][:, :, None].astype(np.float32)
    pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
    vectors = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    assert vectors.shape == (len(SENTENCES), config["dimensions"]), vectors.shape

    def sha256(name: str) -> str:
        return hashlib.sha256((model_dir / name).read_bytes()).hexdigest()

    fixture = {
        "settings": {
            "model": model_dir.name,
            "model_sha256": sha256("model.onnx"),
            "tokenizer_sha256": sha256("tokenizer.json"),
            "config": config,
            "padding": "longest in the batch, right",
            "truncation": f"{max_tokens} tokens including [CLS]/[SEP], keeping the first",
            "pooling": "mean over the attention mask",
            "normalize": "L2",
            "batch": "all sentences in one padded ONNX call, 1 intra-op thread",
            "onnxruntime": onnxruntime.__version__,
            "tokenizers": tokenizers.__version__,
        },
        "sentences": [
            {
                "text": text,
                "input_ids": [i for i, m in zip(e.ids, e.attention_mask) if m],
                # str() of a float32 is its shortest round-trip form: no precision is lost.
                "embedding": [float(str(x)) for x in vector],
            }
            for text, e, vector in zip(SENTENCES, encodings, vectors.astype(np.float32))
        ],
    }
    out.write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
