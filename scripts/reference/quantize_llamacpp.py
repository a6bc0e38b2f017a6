#!/usr/bin/env python3
"""Quantizes SmolLM2 with llama.cpp's own quantizer (`llama_model_quantize`, llama-cpp-python 0.3.36 built from
its sdist) into every standard `--type` preset for Llama models, from the F16 re-encoding that
`make_models.py --only smollm2` writes. Files: $LLAMA_OP_CACHE/models/smollm2-llamacpp-<preset>.gguf.
Run with the llama.cpp venv (see golden_llamacpp.py for how it is built); never in CI.

    ~/.cache/llama-operator/llamacpp/venv-llamacpp/bin/python scripts/reference/quantize_llamacpp.py [PRESET ...]
"""
import ctypes
import os
import sys

import llama_cpp

CACHE = os.environ.get("LLAMA_OP_CACHE", os.path.expanduser("~/.cache/llama-operator"))
# llama_ftype values (llama.h) of the presets `llama-quantize --help` lists for Llama that need no importance
# matrix (Q2_K_S and the IQ1/IQ2/IQ3 presets refuse to run without one)
PRESETS = {
    "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
    "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15,
    "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "IQ4_NL": 25, "IQ4_XS": 30,
}


def main():
    src = os.path.join(CACHE, "models", "smollm2-f16.gguf")
    if not os.path.exists(src):
        sys.exit(f"missing {src}: run scripts/reference/make_models.py --only smollm2")
    want = sys.argv[1:] or list(PRESETS)
    for name in want:
        dst = os.path.join(CACHE, "models", f"smollm2-llamacpp-{name.lower()}.gguf")
        if os.path.exists(dst):
            print(dst)
            continue
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = PRESETS[name]
        params.nthread = 1
        tmp = dst + ".part"
        rc = llama_cpp.llama_model_quantize(src.encode(), tmp.encode(), ctypes.byref(params))
        if rc != 0:
            sys.exit(f"llama_model_quantize {name} failed: {rc}")
        os.replace(tmp, dst)
        print(dst)


if __name__ == "__main__":
    main()
