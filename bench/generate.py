"""Driver for bench/generate.sh: greedy generation with the default generator on 2 threads,
ragtune's generate_stream()/generate() through SQL beside a Python onnxruntime loop with the
same model, prompt and settings, in the same run, and beside llama.cpp on the GGUF the model
was converted from (--gguf, run by bench/generate_llama.py in --gguf-python's environment).
Prints time to first token (prefill), prompt and decode tokens per second, the ratios of
ragtune to python and to llama.cpp, and whether the texts agree.

    generate.py DSN MODELS_DIR [--model NAME] [--threads 2] [--max-tokens 64] [--reps 2]
                [--gguf FILE --gguf-python PYTHON]
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime
import psycopg
import tokenizers

QUESTION = "How do I remove duplicates from a list while keeping the order of the items?"
# Sections of python_docs that make the longer prompts (a RAG-style context before QUESTION).
CONTEXT_TITLES = ["How do you remove duplicates from a list?", "How do I create a multidimensional list?",
                  "How do I copy an object in Python?"]


def prompts(conn):
    """(name, user message) of about 40, 60, 270 and 700 prompt tokens."""
    sections = dict(conn.execute("SELECT title, title || E'\\n\\n' || body FROM python_docs WHERE title = ANY(%s)",
                                 (CONTEXT_TITLES,)).fetchall())
    missing = set(CONTEXT_TITLES) - set(sections)
    assert not missing, f"python_docs lacks {missing}: load the demo data first"

    def rag(n):
        context = "\n\n".join(sections[t] for t in CONTEXT_TITLES[:n])
        return f"Answer the question using the documentation below.\n\n{context}\n\nQuestion: {QUESTION}"
    return [("short", "What is the capital of France?"),
            ("medium", "Write a Python function that tells whether a string is a palindrome, ignoring case, "
                       "spaces and punctuation, and explain in two sentences how it works."),
            ("rag-1", rag(1)), ("rag-3", rag(3))]


def find(config, key):
    """The value of `key` anywhere in a nested config (its layout is still changing), or None."""
    if isinstance(config, dict):
        if key in config:
            return config[key]
        for value in config.values():
            found = find(value, key)
            if found is not None:
                return found
    return None


def model_settings(conn, model, model_dir):
    """Chat format, stop ids and the vocabulary the argmax covers, as the extension reads them
    (ragtune_models.config), else as the converter wrote them (config.json)."""
    row = conn.execute("SELECT config FROM ragtune_models WHERE name = %s", (model,)).fetchone()
    configs = ([row[0]] if row else []) + [json.loads((model_dir / "config.json").read_text())]

    def first(*keys):
        return next((v for k in keys for c in configs if (v := find(c, k)) is not None), None)
    stops = first("stop_token_ids", "eos_token_ids", "eos_token_id")
    # the tokenizer's vocabulary: the ONNX logits may have padding rows after it
    vocab = first("tokenizer_vocab_size", "vocab_size")
    return first("chat_format"), set(stops if isinstance(stops, list) else [stops]), vocab


def render(chat_format, user):
    """The prompt text as the extension renders it: prefix, the default system message if the
    format has one, the user message, the generation prompt. str.replace, not format: the
    content may hold braces."""
    def message(role, content):
        return chat_format["message"].replace("{role}", role).replace("{content}", content)
    system = chat_format.get("default_system")
    return chat_format.get("prefix", "") + (message("system", system) if system else "") + message("user", user) \
        + chat_format["generation_prompt"]


class PythonGenerator:
    """The greedy loop the extension runs: the whole prompt in one call with an empty past,
    then one token per call feeding present.* back as past_key_values.*."""

    def __init__(self, model_dir, threads, chat_format, stops, vocab):
        self.chat_format, self.stops, self.vocab = chat_format, stops, vocab
        self.tokenizer = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the extension does
        start = time.perf_counter()
        self.session = onnxruntime.InferenceSession(str(model_dir / "model.onnx"), options,
                                                    providers=["CPUExecutionProvider"])
        self.load_s = time.perf_counter() - start
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.past = [i for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        # ragtune's converter asks for the logits of the last position only
        self.keep = {"logits_to_keep": np.array([1], np.int64)} if any(
            i.name == "logits_to_keep" for i in self.session.get_inputs()) else {}

    def prompt_tokens(self, user):
        return len(self.tokenizer.encode(render(self.chat_format, user), add_special_tokens=False).ids)

    def generate(self, user, max_tokens):
        """(text, tokens, seconds to the first token, seconds to the end, decode steps)."""
        start = time.perf_counter()
        ids = self.tokenizer.encode(render(self.chat_format, user), add_special_tokens=False).ids
        past = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in self.past}
        generated, step_ids, total, first, steps = [], ids, 0, None, 0
        while True:
            total += len(step_ids)
            feed = {"input_ids": np.array([step_ids], np.int64), "attention_mask": np.ones((1, total), np.int64),
                    "position_ids": np.arange(total - len(step_ids), total, dtype=np.int64)[None],
                    **self.keep, **past}
            out = dict(zip(self.outputs, self.session.run(None, feed)))
            token = int(out["logits"][0, -1, :self.vocab].argmax())
            if first is None:
                first = time.perf_counter() - start
            else:
                steps += 1
            if token in self.stops:
                break
            generated.append(token)
            if len(generated) == max_tokens:
                break
            past = {name: out[name.replace("past_key_values.", "present.")] for name in past}
            step_ids = [token]
        return self.tokenizer.decode(generated), len(generated), first, time.perf_counter() - start, steps


def sql_stream(conn, model, user, max_tokens):
    """(text, seconds to the first row, seconds to the end) of generate_stream() read one row
    per FETCH through a server-side cursor. The call is in the select list, not in FROM: a
    function scan would collect every row before returning the first."""
    with conn.cursor(name="stream") as cur:
        start = time.perf_counter()
        cur.execute("SELECT generate_stream(%s, model => %s, max_tokens => %s)", (user, model, max_tokens))
        pieces = [cur.fetchone()[0]]
        first = time.perf_counter() - start
        while (row := cur.fetchone()) is not None:
            pieces.append(row[0])
        end = time.perf_counter() - start
    conn.commit()
    return "".join(pieces), first, end


def sql_generate(conn, model, user, max_tokens):
    start = time.perf_counter()
    text = conn.execute("SELECT generate(%s, model => %s, max_tokens => %s)", (user, model, max_tokens)).fetchone()[0]
    conn.commit()
    return text, time.perf_counter() - start


def agreement(ours, theirs):
    if ours == theirs:
        return "same"
    if ours.strip() == theirs.strip():
        return "same but spaces"
    at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    return f"DIFFER at char {at}"


def run_llama(a, texts, stops):
    """llama.cpp's results for the rendered prompts (bench/generate_llama.py, in its own process
    and environment, after the other two sides)."""
    job = {"gguf": str(a.gguf), "threads": a.threads, "max_tokens": a.max_tokens, "reps": a.reps,
           "stops": sorted(stops), "prompts": texts}
    done = subprocess.run([a.gguf_python or sys.executable, str(Path(__file__).with_name("generate_llama.py"))],
                          input=json.dumps(job), capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dsn")
    ap.add_argument("models_dir", type=Path)
    ap.add_argument("--model", help="default: the setting ragtune.default_generator")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2, help="best of this many runs per prompt and side")
    ap.add_argument("--gguf", type=Path, help="the model's GGUF, for the llama.cpp side")
    ap.add_argument("--gguf-python", help="a python with llama_cpp (scripts/convert_generators.sh --reference)")
    a = ap.parse_args()

    with psycopg.connect(a.dsn) as conn:
        conn.execute(f"SET ragtune.intra_op_threads = {a.threads:d}")
        # Model load: a fresh backend's first call minus its second. The library's settings
        # exist once it is loaded, so the default generator is read after it.
        load = [sql_generate(conn, a.model, "Hi", 1)[1] for _ in range(2)]
        model = a.model or conn.execute("SELECT current_setting('ragtune.default_generator')").fetchone()[0]
        chat_format, stops, vocab = model_settings(conn, model, a.models_dir / model)
        cases = prompts(conn)
        conn.commit()
        python = PythonGenerator(a.models_dir / model, a.threads, chat_format, stops, vocab)
        print(f"model {model}, {a.threads} threads (ONNX Runtime {onnxruntime.__version__}, no spinning), greedy, "
              f"max_tokens {a.max_tokens}, best of {a.reps} runs per prompt and side, sides alternating; "
              f"load average {os.getloadavg()[0]:.1f}")
        print(f"session load: ragtune {1000 * (load[0] - load[1]):.0f} ms (first generate() {1000 * load[0]:.0f} ms, "
              f"next {1000 * load[1]:.0f} ms), python {1000 * python.load_s:.0f} ms")

        rows, sql_texts = [], {}
        for name, user in cases:
            py_runs, sql_runs, plain = [], [], []
            for _ in range(a.reps):
                py_runs.append(python.generate(user, a.max_tokens))
                sql_runs.append(sql_stream(conn, model, user, a.max_tokens))
                plain.append(sql_generate(conn, model, user, a.max_tokens))
            text, tokens, _, _, steps = py_runs[0]
            py_ttft, py_step = min(r[2] for r in py_runs), min((r[3] - r[2]) / max(r[4], 1) for r in py_runs)
            sql_ttft, sql_step = min(r[1] for r in sql_runs), min((r[2] - r[1]) / max(steps, 1) for r in sql_runs)
            same = "; ".join(sorted({agreement(r[0], text) for r in sql_runs} | {agreement(r[0], text) for r in plain}))
            sql_texts[name] = sql_runs[0][0]
            rows.append((name, python.prompt_tokens(user), tokens, steps, py_ttft, sql_ttft, py_step, sql_step,
                         min(r[3] for r in py_runs), min(r[2] for r in sql_runs), min(r[1] for r in plain), same))
            print(f"  {name}: {text[:100]!r}{'...' if len(text) > 100 else ''}", flush=True)
        llama = None
        if a.gguf:
            # The service's prefix cache answers a repeated prompt without running it: the
            # prompt rates beside llama.cpp are those of a session running the model itself.
            with psycopg.connect(a.dsn) as backend:
                backend.execute(f"SET ragtune.intra_op_threads = {a.threads:d}")
                backend.execute("SET ragtune.model_service = off")
                sql_generate(backend, model, "Hi", 1)
                backend_ttft = {name: min(sql_stream(backend, model, user, a.max_tokens)[1] for _ in range(a.reps))
                                for name, user in cases}
            llama = run_llama(a, [render(chat_format, user) for _, user in cases], stops)

    print(f"\n{'prompt':>7} {'prompt':>6} {'out':>4} | {'TTFT ms':^19} {'ratio':>5} | {'decode tokens/s':^17} "
          f"{'ratio':>5} | {'total s':^23} | text")
    print(f"{'':>7} {'tokens':>6} {'':>4} | {'python':>9} {'ragtune':>9} {'':>5} | {'python':>8} {'ragtune':>8} {'':>5} "
          f"| {'python':>7} {'stream':>7} {'generate':>7} |")
    for name, n, out, _, py_ttft, sql_ttft, py_step, sql_step, py_total, stream_total, plain_total, same in rows:
        print(f"{name:>7} {n:>6} {out:>4} | {1000 * py_ttft:>9.0f} {1000 * sql_ttft:>9.0f} {py_ttft / sql_ttft:>5.2f} | "
              f"{1 / py_step:>8.1f} {1 / sql_step:>8.1f} {py_step / sql_step:>5.2f} | "
              f"{py_total:>7.2f} {stream_total:>7.2f} {plain_total:>8.2f} | {same}")
    print("ratio = ragtune speed / python speed (target >= 0.90); TTFT = prompt rendering, tokenization and prefill "
          "up to the first token (ragtune: first row of generate_stream() through a server-side cursor); decode = "
          "tokens after the first per second, stop token step included")
    if llama:
        print(f"\nbeside llama.cpp (llama-cpp-python {llama['version']}, {a.gguf.name}, same threads, prompts and greedy "
              f"settings; prompt tokens/s = prompt tokens / TTFT, ragtune's in a session running the model itself, "
              f"without the service's prefix cache):")
        print(f"{'prompt':>7} | {'prompt tokens/s':^26} {'ratio':>5} | {'decode tokens/s':^26} {'ratio':>5} | "
              f"text against ragtune")
        print(f"{'':>7} | {'python':>8} {'ragtune':>8} {'llama':>8} {'':>5} | {'python':>8} {'ragtune':>8} {'llama':>8} "
              f"{'':>5} |")
        for (name, n, _, _, py_ttft, sql_ttft, py_step, sql_step, *_), theirs in zip(rows, llama["results"]):
            same = agreement(sql_texts[name], theirs["text"])
            ours = n / backend_ttft[name]
            print(f"{name:>7} | {n / py_ttft:>8.0f} {ours:>8.0f} {theirs['prompt_tokens'] / theirs['ttft']:>8.0f} "
                  f"{ours / (theirs['prompt_tokens'] / theirs['ttft']):>5.2f} | {1 / py_step:>8.1f} "
                  f"{1 / sql_step:>8.1f} {1 / theirs['step']:>8.1f} {theirs['step'] / sql_step:>5.2f} | {same}")
        print("ratio = ragtune / llama.cpp; llama.cpp runs the GGUF's own 4-6 bit blocks, ragtune the converted graph, "
              "so the texts may part where two tokens are near a tie")
    # All prompts' decode steps over all their decode time, per side.
    steps = sum(r[3] for r in rows)
    python_rate, ragtune_rate = steps / sum(r[3] * r[6] for r in rows), steps / sum(r[3] * r[7] for r in rows)
    print(f"SUMMARY {model}: decode {ragtune_rate:.1f} tokens/s in ragtune, {python_rate:.1f} in python, ratio "
          f"{ragtune_rate / python_rate:.2f} ({'meets' if ragtune_rate >= 0.9 * python_rate else 'misses'} the 0.90 "
          f"target); same text on {sum(r[-1] == 'same' for r in rows)} of {len(rows)} prompts")


if __name__ == "__main__":
    main()
