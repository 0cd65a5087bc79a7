"""Embedding throughput of Python onnxruntime + tokenizers with the recipe of
scripts/embedding_fixtures.py, to set next to bench/embed_throughput.rs on the same texts.

Usage: embed_throughput.py MODEL_DIR
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime
import tokenizers

MIN_TIME = 3.0

model_dir = Path(sys.argv[1])
config = json.loads((model_dir / "config.json").read_text())
tokenizer = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
tokenizer.enable_padding(pad_id=tokenizer.padding["pad_id"], pad_token=tokenizer.padding["pad_token"], length=None)
tokenizer.enable_truncation(max_length=config["max_tokens"])
options = onnxruntime.SessionOptions()
options.intra_op_num_threads = 1
session = onnxruntime.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
names = [i.name for i in session.get_inputs()]

fixture = json.loads((Path(__file__).parent.parent / "tests/fixtures/minilm_embeddings.json").read_text())
texts = [s["text"] for s in fixture["sentences"]]


def embed(group):
    encodings = tokenizer.encode_batch(group)
    columns = {
        "input_ids": [e.ids for e in encodings],
        "attention_mask": [e.attention_mask for e in encodings],
        "token_type_ids": [e.type_ids for e in encodings],
    }
    feed = {name: np.array(columns[name], dtype=np.int64) for name in names}
    hidden = session.run(None, feed)[0]
    mask = feed["attention_mask"][:, :, None].astype(np.float32)
    pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


for batch in [1, len(texts)]:
    def one_pass():
        for i in range(0, len(texts), batch):
            embed(texts[i : i + batch])

    one_pass()  # warm up
    start, passes = time.perf_counter(), 0
    while passes < 2 or time.perf_counter() - start < MIN_TIME:
        one_pass()
        passes += 1
    rate = passes * len(texts) / (time.perf_counter() - start)
    print(f"python  batch {batch:>2}: {rate:7.1f} texts/s ({len(texts)} texts, 1 thread)")
