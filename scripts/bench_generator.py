#!/usr/bin/env python3
"""Times a converted generator in Python onnxruntime: session load, prefill of a ~400-token
prompt (empty past), and greedy decode steps with the KV cache after it.

    bench_generator.py MODEL_DIR [--threads 1 2] [--prompt-tokens 400] [--steps 32] [--reps 3]

Reports the best of --reps runs (the machines are shared), wall clock and the process CPU time.
"""
import argparse
import json
import os
import resource
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

TEXT = ("PostgreSQL is a powerful, open source object-relational database system with over 35 years of active "
        "development that has earned it a strong reputation for reliability, feature robustness, and performance. ")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--prompt-tokens", type=int, default=400)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-spinning", action="store_true", help="session.intra_op.allow_spinning = 0")
    a = ap.parse_args()
    with open(os.path.join(a.model_dir, "model.json")) as f:
        cfg = json.load(f)
    tok = Tokenizer.from_file(os.path.join(a.model_dir, "tokenizer.json"))
    ids = tok.encode(TEXT * 40, add_special_tokens=False).ids[:a.prompt_tokens]
    n, L = len(ids), cfg["num_hidden_layers"]
    empty = np.zeros((1, cfg["num_key_value_heads"], 0, cfg["head_dim"]), np.float32)
    for threads in a.threads:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        if a.no_spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        t = time.time()
        s = ort.InferenceSession(os.path.join(a.model_dir, "model.onnx"), so, providers=["CPUExecutionProvider"])
        load = time.time() - t
        names = [o.name for o in s.get_outputs()]
        keep = {"logits_to_keep": np.array([1], np.int64)} if any(i.name == "logits_to_keep" for i in s.get_inputs()) else {}

        def run(step_ids, total, pos0, past):
            feed = {"input_ids": np.array([step_ids], np.int64), "attention_mask": np.ones((1, total), np.int64),
                    "position_ids": np.arange(pos0, pos0 + len(step_ids), dtype=np.int64)[None],
                    **keep}
            for i in range(L):
                feed[f"past_key_values.{i}.key"], feed[f"past_key_values.{i}.value"] = past[2 * i], past[2 * i + 1]
            out = dict(zip(names, s.run(None, feed)))
            return out["logits"], [out[f"present.{i}.{k}"] for i in range(L) for k in ("key", "value")]

        prefill, decode = [], []
        for _ in range(a.reps):
            w, c = time.perf_counter(), time.process_time()
            logits, past = run(ids, n, 0, [empty] * (2 * L))
            prefill.append((time.perf_counter() - w, time.process_time() - c))
            total = n
            w, c = time.perf_counter(), time.process_time()
            for _ in range(a.steps):
                total += 1
                logits, past = run([int(logits[0, -1].argmax())], total, total - 1, past)
            decode.append(((time.perf_counter() - w) / a.steps, (time.process_time() - c) / a.steps))
        pw, pc = min(prefill)
        dw, dc = min(decode)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{os.path.basename(a.model_dir.rstrip('/'))} threads={threads}{' no-spin' if a.no_spinning else ''}: load {load:.2f} s; "
              f"prefill {n} tokens {pw * 1000:.0f} ms (cpu {pc * 1000:.0f} ms); "
              f"decode {1 / dw:.1f} tokens/s ({dw * 1000:.1f} ms/token, cpu {dc * 1000:.1f} ms) "
              f"at context {n}..{n + a.steps}; peak RSS {rss:.0f} MB; load average {os.getloadavg()[0]:.1f}",
              flush=True)
        del s


if __name__ == "__main__":
    main()
