#!/usr/bin/env python3
"""Records llama.cpp's greedy continuations of SmolLM2 (Q4_1 original, F16 and Q8_0 re-encodings) as the
golden file server/tests/golden/smollm2-greedy.json. Run once by hand; CI only reads the committed file.

llama.cpp comes from the PyPI sdist of llama-cpp-python 0.3.36, built from source (~5-10 min) into a
separate venv, never into the project's venv and never in CI:

    mkdir -p ~/.cache/llama-operator/llamacpp && cd ~/.cache/llama-operator/llamacpp
    pip download --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d .
    python3 -m venv venv-llamacpp
    CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
        venv-llamacpp/bin/pip install ./llama_cpp_python-0.3.36.tar.gz numpy
    python3 scripts/reference/make_models.py --only smollm2     # the F16 / Q8_0 re-encodings
    ~/.cache/llama-operator/llamacpp/venv-llamacpp/bin/python scripts/reference/golden_llamacpp.py
    ~/.cache/llama-operator/llamacpp/venv-llamacpp/bin/python scripts/reference/golden_llamacpp.py --quants

For every prompt and model it stores llama.cpp's prompt tokens, its greedy tokens (32 per prompt, fewer
if it emits EOS) and, at every step, the top-1 and top-2 token ids and logits, so the Rust test can judge a
departure as a near-tie (small top-1/top-2 gap) or a bug. One thread, so the run is deterministic.
"""
import json
import os
import sys

import numpy as np
from llama_cpp import Llama

CACHE = os.environ.get("LLAMA_OP_CACHE", os.path.expanduser("~/.cache/llama-operator"))
MODELS = {
    "q4_1": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "f16": "smollm2-f16.gguf",
    "q8_0": "smollm2-q8_0.gguf",
}
# SmolLM2 quantized by llama.cpp itself (scripts/reference/quantize_llamacpp.py, or make_models.py --only
# llamacpp): its mixes hold Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q3_K and IQ4_NL tensors. Written to a second golden file.
QUANT_MODELS = {k: f"smollm2-llamacpp-{k}.gguf" for k in
                ["q4_k_m", "q6_k", "q5_k_m", "q3_k_m", "q2_k", "iq4_nl", "q5_0", "q5_1"]}
SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def chat(user):
    return f"{SYSTEM}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


PROMPTS = [
    "Once upon a time",
    "The capital of France is",
    "def fibonacci(n):",
    "The three primary colors are",
    "In 1969, astronauts",
    "My favourite recipe for pancakes is",
    "Water boils at 100 degrees Celsius because",
    "The quick brown fox",
    "Here is a list of 5 fruits:\n1.",
    "Machine learning is",
    "1, 2, 3, 4, 5,",
    chat("What is the capital of France?"),
    chat("Write a haiku about the sea."),
]
N_TOKENS = 32


def run(model_path):
    llm = Llama(model_path=model_path, n_ctx=512, n_threads=1, n_batch=512, verbose=False, seed=0)
    n_vocab = llm.n_vocab()
    eos = llm.token_eos()
    out = []
    for prompt in PROMPTS:
        toks = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        llm.reset()
        llm.eval(toks)
        steps = []
        gen = []
        for _ in range(N_TOKENS):
            logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,)).copy()
            order = np.argsort(-logits, kind="stable")[:2]
            t1, t2 = int(order[0]), int(order[1])
            steps.append({"top1": t1, "top2": t2, "logit1": float(logits[t1]),
                          "logit2": float(logits[t2]), "gap": float(logits[t1] - logits[t2])})
            gen.append(t1)
            if t1 == eos:
                break
            llm.eval([t1])
        text = llm.detokenize(gen).decode("utf-8", errors="replace")
        out.append({"prompt": prompt, "prompt_tokens": [int(t) for t in toks], "tokens": gen,
                    "text": text, "steps": steps})
        print(f"  {prompt[:40]!r} -> {text[:60]!r}", file=sys.stderr)
    return out


def main():
    import llama_cpp
    quants = "--quants" in sys.argv[1:]
    models = QUANT_MODELS if quants else MODELS
    doc = {
        "generator": f"llama-cpp-python {llama_cpp.__version__} (llama.cpp from its sdist), 1 thread, greedy",
        "n_tokens": N_TOKENS,
        "models": {},
    }
    for key, name in models.items():
        path = os.path.join(CACHE, "models", name)
        print(f"==> {name}", file=sys.stderr)
        doc["models"][key] = {"file": name, "prompts": run(path)}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    golden = "smollm2-llamacpp-greedy.json" if quants else "smollm2-greedy.json"
    dst = os.path.join(root, "server", "tests", "golden", golden)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(dst, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(dst)


if __name__ == "__main__":
    main()
