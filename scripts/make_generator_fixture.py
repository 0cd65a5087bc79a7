#!/usr/bin/env python3
"""Records reference outputs of a GGUF generator as a JSON fixture for the converter tests
(tests/generator) and for the Rust runtime's own tests.

    make_generator_fixture.py MODEL.gguf OUT.json --name smollm2-135m-instruct [--n 24]

Two independent references, neither of which uses scripts/gguf_to_onnx.py:
  * llama.cpp (PyPI llama-cpp-python, built from source): reads the GGUF itself. Used for the
    tokenizer ids (`tokenize(..., special=True)`, no BOS since the GGUFs say add_bos = false),
    and its own greedy continuation and last-position logits are recorded for comparison.
    Its CPU kernels quantise activations to 8 bits inside quantised dot products (Q8_0/Q8_1/Q8_K),
    so its numbers differ slightly from a float32 evaluation of the same weights.
  * scripts/gguf_reference.py: a plain numpy float32 forward pass (full recompute per token)
    on the dequantised GGUF weights. Its greedy tokens (`greedy`) and last-position logits
    (`reference_logits`) are what the ONNX model is required to reproduce.

Greedy continuations stop after `--n` tokens or at the first stop token (included).
Chat prompts are rendered with the GGUF's own Jinja chat template.
"""
import argparse
import json
import os
import re
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_reference  # noqa: E402
from gguf_to_onnx import sha256  # noqa: E402

TOKENIZER_STRINGS = [
    "Hello world",
    "The capital of France is",
    "don't you're I'll we've they'd it's",
    "'S 'RE 'Ll DON'T",
    "Numbers: 1234567 and 3.14159, 2024-01-01, 10,000",
    "  leading spaces and\ttabs\n\nnewlines   trailing  ",
    "a\r\nb\n\n\nc \n d",
    "naïve café Ünïcödé 東京 😀 ℕ≠∑",
    "def f(x):\n    return x**2  # comment",
    "CamelCaseWord HTTPServer XMLHttpRequest __init__",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "Context: PostgreSQL 15 ships HNSW? No: pgvector does. Answer in one word.",
]

CHAT = [
    ("france", [{"role": "user", "content": "What is the capital of France?"}]),
    ("eiffel_rag", [
        {"role": "system", "content": "Answer the question using only the context."},
        {"role": "user", "content": "Context: The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars "
                                    "in Paris, France. It is named after the engineer Gustave Eiffel, whose company "
                                    "designed and built the tower from 1887 to 1889.\n\n"
                                    "Question: Who is the Eiffel Tower named after?"}]),
    ("colors", [{"role": "user", "content": "List three primary colors."}]),
    ("python", [{"role": "user", "content": "Write a Python function that returns the square of a number."}]),
]
PLAIN = [
    ("completion_france", "The capital of France is"),
    ("completion_numbers", "1, 2, 3, 4, 5,"),
]


def logits_summary(lg: np.ndarray, probe: np.ndarray) -> dict:
    lg = lg.astype(np.float64)
    top = np.argsort(-lg)[:32]
    m = lg.max()
    return {"top": [[int(i), round(float(lg[i]), 5)] for i in top],
            "probe_logits": [round(float(lg[i]), 5) for i in probe],
            "logsumexp": round(float(m + np.log(np.exp(lg - m).sum())), 5),
            "mean": round(float(lg.mean()), 5), "std": round(float(lg.std()), 5)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf")
    ap.add_argument("out")
    ap.add_argument("--name", required=True)
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import jinja2
    import llama_cpp
    from gguf import GGUFReader

    fields = GGUFReader(args.gguf).fields
    template = fields["tokenizer.chat_template"].contents()
    tokens = fields["tokenizer.ggml.tokens"].contents()
    eos = int(fields["tokenizer.ggml.eos_token_id"].contents())
    stops = sorted({eos} | {i for i, t in enumerate(tokens) if t in ("<|im_end|>", "<|endoftext|>")})
    del fields

    llm = llama_cpp.Llama(args.gguf, n_ctx=4096, n_threads=args.threads, n_batch=512, verbose=False, seed=0)
    n_vocab = llm.n_vocab()

    def ll_tokenize(text):
        return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def ll_logits():
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,)).copy()

    def ll_greedy(ids):
        llm.reset()
        llm.eval(ids)
        first = ll_logits()
        lg, out = first, []
        for _ in range(args.n):
            t = int(np.argmax(lg))
            out.append(t)
            if t in stops:
                break
            llm.eval([t])
            lg = ll_logits()
        return out, first

    env = jinja2.Environment(trim_blocks=False, lstrip_blocks=False)
    tmpl = env.from_string(template)
    prompts = [{"name": n, "messages": msgs,
                "text": tmpl.render(messages=msgs, add_generation_prompt=True, tools=None)} for n, msgs in CHAT]
    prompts += [{"name": n, "messages": None, "text": t} for n, t in PLAIN]

    t0 = time.time()
    ref = gguf_reference.Reference(args.gguf)
    rng = np.random.default_rng(0)
    probe = np.sort(rng.choice(ref.w["output.weight"].shape[0], 256, replace=False))
    fixture = {
        "model": args.name,
        "gguf": {"file": os.path.basename(args.gguf), "sha256": sha256(args.gguf)},
        "generated_by": "scripts/make_generator_fixture.py " + " ".join(
            [os.path.basename(args.gguf), os.path.basename(args.out), "--name", args.name, "--n", str(args.n)]),
        "versions": {"llama_cpp_python": llama_cpp.__version__, "numpy": np.__version__},
        "max_new_tokens": args.n,
        "stop_token_ids": stops,
        "probe_ids": [int(i) for i in probe],
        "tokenizer": [{"text": s, "ids": ll_tokenize(s)} for s in TOKENIZER_STRINGS],
        "prompts": [],
    }
    for p in prompts:
        ids = ll_tokenize(p["text"])
        ts = time.time()
        greedy = ref.greedy(ids, args.n, stop=stops)
        ref_logits = ref.logits(ids)
        ll_out, ll_first = ll_greedy(ids)
        same = next((i for i, (a, b) in enumerate(zip(greedy, ll_out)) if a != b), min(len(greedy), len(ll_out)))
        entry = dict(p, ids=ids, greedy=greedy, greedy_text=llm.detokenize(greedy, special=True).decode("utf-8", "replace"),
                     reference_logits=logits_summary(ref_logits, probe),
                     llama_cpp_greedy=ll_out, llama_cpp_common_prefix=same,
                     llama_cpp_logits=logits_summary(ll_first, probe),
                     llama_cpp_max_abs_logit_diff=round(float(np.abs(ll_first - ref_logits).max()), 5))
        fixture["prompts"].append(entry)
        print(f"{p['name']}: {len(ids)} prompt tokens, {time.time() - ts:.0f} s, llama.cpp agrees on {same}/"
              f"{len(greedy)} tokens, max |logit diff| {entry['llama_cpp_max_abs_logit_diff']:.3f}: "
              f"{entry['greedy_text']!r}", file=sys.stderr, flush=True)
    text = json.dumps(fixture, ensure_ascii=False, indent=1)
    # one line per list of numbers (ids, [id, logit] pairs) keeps the file readable
    text = re.sub(r"\[\s*(-?[\d.e+-]+(?:,\s*-?[\d.e+-]+)*)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    with open(args.out + ".part", "w", encoding="utf-8") as f:
        f.write(text + "\n")
    os.replace(args.out + ".part", args.out)
    print(f"wrote {args.out} in {time.time() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
