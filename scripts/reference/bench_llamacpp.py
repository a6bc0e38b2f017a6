#!/usr/bin/env python3
"""llama.cpp's prefill and decode speed on the same files and threads as `llama-server bench`, for a
side-by-side table. Runs in the llama-cpp-python venv described in golden_llamacpp.py.

Usage: bench_llamacpp.py MODEL.gguf [MODEL.gguf ...] [--threads 1,2] [--prompt-tokens 128] [--gen-tokens 64]
"""
import argparse
import os
import time

from llama_cpp import Llama


def bench(path, threads, n_prompt, n_gen, repeat):
    llm = Llama(model_path=path, n_ctx=n_prompt + n_gen + 8, n_threads=threads, n_threads_batch=threads,
                n_batch=512, verbose=False)
    vocab = min(llm.n_vocab(), 30000)
    prompt = [(i * 7919 + 13) % vocab for i in range(n_prompt)]
    best_p = best_d = 0.0
    for _ in range(repeat):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        t1 = time.perf_counter()
        tok = 100
        for _ in range(n_gen):
            llm.eval([tok])
        t2 = time.perf_counter()
        best_p = max(best_p, n_prompt / (t1 - t0))
        best_d = max(best_d, n_gen / (t2 - t1))
    return best_p, best_d


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    print(f"| model | engine | threads | prefill tok/s ({a.prompt_tokens} tok) | decode tok/s ({a.gen_tokens} tok) |")
    print("|---|---|---|---|---|")
    for m in a.models:
        for t in [int(x) for x in a.threads.split(",")]:
            p, d = bench(m, t, a.prompt_tokens, a.gen_tokens, a.repeat)
            print(f"| {os.path.basename(m)} | llama.cpp | {t} | {p:.1f} | {d:.1f} |", flush=True)


if __name__ == "__main__":
    main()
