"""llama.cpp's side of bench/generate.sh: the same greedy loop on the GGUF the default
generator was converted from, through llama-cpp-python (the converter's pinned reference,
built by scripts/convert_generators.sh --reference into its own environment, which is why
this runs as a separate process). Reads {"gguf", "threads", "max_tokens", "reps", "stops",
"prompts": [rendered prompt text, ...]} as JSON on stdin and writes, per prompt, the best
of reps runs as JSON on stdout: prompt tokens, seconds to the first token, seconds per
decode step, decode steps and the text.

The prompt text is the one the extension renders (chat template included) and is tokenized
by llama.cpp with special tokens parsed and no BOS added, as the extension does.
"""
import json
import sys
import time

import llama_cpp


def main():
    job = json.load(sys.stdin)
    llm = llama_cpp.Llama(model_path=job["gguf"], n_threads=job["threads"], n_threads_batch=job["threads"],
                          n_ctx=4096, n_batch=1024, verbose=False)
    stops = set(job["stops"]) | {llm.token_eos()}
    results = []
    for text in job["prompts"]:
        ids = llm.tokenize(text.encode(), add_bos=False, special=True)
        runs = []
        for _ in range(job["reps"]):
            llm.reset()
            generated, first, steps = [], None, 0
            start = time.perf_counter()
            # top_k 1: the argmax, as the greedy loops of the other two sides.
            for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
                if first is None:
                    first = time.perf_counter() - start
                else:
                    steps += 1
                if token in stops:
                    break
                generated.append(token)
                if len(generated) == job["max_tokens"]:
                    break
            end = time.perf_counter() - start
            runs.append((first, (end - first) / max(steps, 1), steps,
                         llm.detokenize(generated).decode("utf-8", errors="replace")))
        results.append({"prompt_tokens": len(ids), "ttft": min(r[0] for r in runs), "step": min(r[1] for r in runs),
                        "steps": runs[0][2], "text": runs[0][3]})
    json.dump({"version": llama_cpp.__version__, "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
