#!/usr/bin/env python3
"""Generates test models (idempotent; existing files are kept) into a directory, default
$LLAMA_OP_CACHE/models (~/.cache/llama-operator/models):

  smollm2-<type>.gguf   re-encodings of SmolLM2-135M-Instruct.Q4_1.gguf as F16, BF16, Q8_0, Q4_0
                        (norms stay F32; each tensor is dequantized from Q4_1 and re-quantized)
  tiny-<type>.gguf      tiny random Llamas (2 layers, dim 256, 4 heads / 2 KV heads, ffn 512, vocab 320,
                        untied output) with every matrix of type F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
                        Q2_K, Q3_K, Q4_K, Q5_K, Q6_K or IQ4_NL (K-quants and IQ4_NL are random blocks: `gguf`
                        cannot quantize to them)
  tiny-f32-tied.gguf    as tiny-f32 but with the LM head tied to the embedding
  tiny-mixed.gguf       a Q4_K_M-like mix: Q/K Q4_K with V Q6_K, gate Q4_K with up Q5_0, output IQ4_NL, down
                        Q6_K, LM head Q8_0, embedding Q5_1
  tp-<type>.gguf        tiny random Llamas for tensor parallelism (2 layers, dim 512, 8 heads / 4 KV heads,
                        ffn 1024, vocab 320) with every matrix of each of the tiny types above
  tp-f32-tied.gguf      as tp-f32 but with the LM head tied to the embedding
  tp-bench-<type>.gguf  (only with --only tp-bench) a 160M-parameter random Llama for benchmarks (8 layers,
                        dim 1024, 16 heads / 8 KV heads, ffn 2816, vocab 32000) in Q8_0, Q4_K, Q6_K, Q5_1, Q5_0, F16
  llama1b-<preset>.gguf  (only with --only llama1b) a random-weight Llama of Llama-3.2-1B's shape (2048 hidden,
                        16 layers, 32 heads / 8 KV heads, FFN 8192, tied embedding) with SmolLM2's tokenizer
                        (vocabulary 49152): llama1b-f16.gguf written here, then Q4_K_M, Q4_1 and Q8_0 by
                        llama.cpp's own llama-quantize. Its text is noise; its speed and memory are real. ~4.6 GB
                        in all; for benchmarks, never in `make test`.
  smollm2-llamacpp-<preset>.gguf  (only with --only llamacpp) SmolLM2's F16 re-encoding quantized by llama.cpp's
                        own llama-quantize (scripts/reference/build-llamacpp-quantize.sh) into each preset of
                        LLAMACPP_PRESETS

Usage: make_models.py [--dir DIR] [--only smollm2|tiny|tp|tp-bench|llamacpp|llama1b] ; prints the directory.
Needs numpy and gguf (scripts/requirements.txt).
"""
import argparse
import os
import subprocess
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q, GGUFReader, GGUFValueType, GGUFWriter

SMOL = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_TYPES = {"f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}
TINY_TYPES = {
    "f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1,
    "q5_0": Q.Q5_0, "q5_1": Q.Q5_1, "q2_k": Q.Q2_K, "q3_k": Q.Q3_K, "q4_k": Q.Q4_K, "q5_k": Q.Q5_K,
    "q6_k": Q.Q6_K, "iq4_nl": Q.IQ4_NL,
}
KQUANTS = (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K)
# A Q4_K_M-like mix: fused Q|K|V and gate|up hold parts of different types (as llama.cpp's quantizer writes
# them, with a fallback type where it cannot use the K-quant)
MIXED = {"attn_v": Q.Q6_K, "ffn_up": Q.Q5_0, "ffn_down": Q.Q6_K, "attn_output": Q.IQ4_NL, "output": Q.Q8_0,
         "token_embd": Q.Q5_1}
TINY = dict(vocab=320, dim=256, layers=2, heads=4, kv_heads=2, ffn=512, ctx=256)
TP = dict(vocab=320, dim=512, layers=2, heads=8, kv_heads=4, ffn=1024, ctx=256)
TP_BENCH = dict(vocab=32000, dim=1024, layers=8, heads=16, kv_heads=8, ffn=2816, ctx=1024)


def write_atomic(path, fill):
    tmp = path + ".part"
    w = GGUFWriter(tmp, arch="llama")
    fill(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)


def requantize_smollm2(src, dst, qtype):
    r = GGUFReader(src)

    def fill(w):
        for name, field in r.fields.items():
            if name.startswith("GGUF.") or name == "general.architecture":
                continue
            vtype = field.types[0]
            sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
            w.add_key_value(name, field.contents(), vtype, sub_type=sub)
        for t in r.tensors:
            data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
            if data.ndim == 1:
                w.add_tensor(t.name, data)
            else:
                w.add_tensor(t.name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    write_atomic(dst, fill)


def random_kquant(rng, rows, cols, qtype, std):
    """Random K-quant (or IQ4_NL) blocks rescaled (through their f16 super-block scales) to roughly `std`."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    nb = rows * cols // block
    raw = rng.integers(0, 256, size=(nb, size), dtype=np.uint8)
    # byte offsets of the f16 scale fields: Q4_K/Q5_K start with d, dmin; Q2_K ends with d, dmin;
    # Q3_K and Q6_K end with d
    if qtype in (Q.Q4_K, Q.Q5_K):
        fields = [0, 2]
    elif qtype == Q.IQ4_NL:
        fields = [0]
    elif qtype == Q.Q2_K:
        fields = [size - 4, size - 2]
    else:
        fields = [size - 2]
    for off in fields:
        raw[:, off:off + 2] = np.frombuffer(np.float16(1.0).tobytes(), dtype=np.uint8)
    probe = gguf.quants.dequantize(raw.reshape(rows, -1), qtype)
    scale = std / max(float(probe.std()), 1e-12)
    for i, off in enumerate(fields):
        # vary the scales a little per block so they matter
        d = (scale * rng.uniform(0.5, 1.5, size=nb)).astype(np.float16)
        raw[:, off:off + 2] = d.view(np.uint8).reshape(nb, 2)
    return raw.reshape(rows, -1)


def llama_metadata(w, name, c, rope_base):
    """The Llama hyper-parameters of shape `c` (and the model's name)."""
    w.add_name(name)
    w.add_block_count(c["layers"])
    w.add_context_length(c["ctx"])
    w.add_embedding_length(c["dim"])
    w.add_feed_forward_length(c["ffn"])
    w.add_head_count(c["heads"])
    w.add_head_count_kv(c["kv_heads"])
    w.add_rope_freq_base(rope_base)
    w.add_layer_norm_rms_eps(1e-5)


def tiny_model(dst, qtype, tied=False, seed=0, c=TINY, mix=None):
    rng = np.random.default_rng(seed)
    head_dim = c["dim"] // c["heads"]

    def mat(rows, cols, std, t=qtype):
        if t in KQUANTS or t == Q.IQ4_NL:
            return random_kquant(rng, rows, cols, t, std)
        data = (rng.standard_normal((rows, cols)) * std).astype(np.float32)
        return gguf.quants.quantize(data, t) if t != Q.F32 else data

    def fill(w):
        llama_metadata(w, "tiny-random-llama", c, 10000.0)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)

        def t(role):
            return (mix or {}).get(role, qtype)

        def add(name, arr, role=None):
            if arr.dtype == np.float32 or arr.ndim == 1:
                w.add_tensor(name, arr)
            else:
                w.add_tensor(name, arr, raw_dtype=t(role))

        dim, ffn, kv = c["dim"], c["ffn"], c["kv_heads"] * head_dim
        add("token_embd.weight", mat(c["vocab"], dim, 1.0, t("token_embd")), "token_embd")
        for i in range(c["layers"]):
            p = f"blk.{i}."
            add(p + "attn_norm.weight", (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32))
            for role, rows, cols in [("attn_q", dim, dim), ("attn_k", kv, dim), ("attn_v", kv, dim),
                                     ("attn_output", dim, dim)]:
                add(p + role + ".weight", mat(rows, cols, cols ** -0.5, t(role)), role)
            add(p + "ffn_norm.weight", (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32))
            for role, rows, cols in [("ffn_gate", ffn, dim), ("ffn_up", ffn, dim), ("ffn_down", dim, ffn)]:
                add(p + role + ".weight", mat(rows, cols, cols ** -0.5, t(role)), role)
        add("output_norm.weight", (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32))
        if not tied:
            add("output.weight", mat(c["vocab"], dim, dim ** -0.5, t("output")), "output")

    write_atomic(dst, fill)


# llama.cpp's `--type` presets for Llama models that need no importance matrix (Q2_K_S and the IQ1/IQ2/IQ3
# presets refuse to run without one). IQ4_XS files hold IQ4_XS tensors, which we do not load (a test checks
# the error names tensor and type).
LLAMACPP_PRESETS = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S",
                    "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS"]


def llamacpp_presets(d):
    """SmolLM2 (the F16 re-encoding) quantized by llama.cpp's own `llama-quantize` into every preset:
    smollm2-llamacpp-<preset>.gguf. The quantizer is built from the llama-cpp-python sdist (cached)."""
    src = os.path.join(d, "smollm2-f16.gguf")
    if not os.path.exists(src):
        requantize_smollm2(os.path.join(d, SMOL), src, Q.F16)
    llamacpp_quantize(src, os.path.join(d, "smollm2-llamacpp-{}.gguf"), LLAMACPP_PRESETS, threads=1)


def llamacpp_quantize(src, pattern, presets, threads):
    """Each of `presets` missing at `pattern.format(preset.lower())`, written by llama.cpp's own
    `llama-quantize` from `src` (the quantizer is built once, cached)."""
    todo = [p for p in presets if not os.path.exists(pattern.format(p.lower()))]
    if not todo:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    binary = subprocess.run(["bash", os.path.join(here, "build-llamacpp-quantize.sh")], check=True,
                            stdout=subprocess.PIPE, text=True).stdout.strip()
    for preset in todo:
        dst = pattern.format(preset.lower())
        print(f"==> llama-quantize {preset} -> {dst}", file=sys.stderr)
        subprocess.run([binary, src, dst + ".part", preset, str(threads)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.replace(dst + ".part", dst)


LLAMA1B = dict(dim=2048, layers=16, heads=32, kv_heads=8, ffn=8192, ctx=8192)
LLAMA1B_PRESETS = ["Q4_K_M", "Q4_1", "Q8_0"]


def llama1b_f16(src, dst, c=LLAMA1B, seed=3):
    """Random F16 weights of Llama-3.2-1B's shape with SmolLM2's tokenizer and chat template (from `src`)."""
    r = GGUFReader(src)
    rng = np.random.default_rng(seed)
    vocab = len(r.fields["tokenizer.ggml.tokens"].data)

    def fill(w):
        for name, field in r.fields.items():
            if not name.startswith("tokenizer."):
                continue
            vtype = field.types[0]
            sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
            w.add_key_value(name, field.contents(), vtype, sub_type=sub)
        llama_metadata(w, "llama-3.2-1b-shape-random", c, 500000.0)

        def mat(rows, cols, std):
            return (rng.standard_normal((rows, cols), dtype=np.float32) * std).astype(np.float16)

        def norm(n):
            return (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)

        dim, ffn, kv = c["dim"], c["ffn"], c["kv_heads"] * (c["dim"] // c["heads"])
        w.add_tensor("token_embd.weight", mat(vocab, dim, 1.0))
        for i in range(c["layers"]):
            p = f"blk.{i}."
            w.add_tensor(p + "attn_norm.weight", norm(dim))
            for role, rows, cols in [("attn_q", dim, dim), ("attn_k", kv, dim), ("attn_v", kv, dim),
                                     ("attn_output", dim, dim)]:
                w.add_tensor(p + role + ".weight", mat(rows, cols, cols ** -0.5))
            w.add_tensor(p + "ffn_norm.weight", norm(dim))
            for role, rows, cols in [("ffn_gate", ffn, dim), ("ffn_up", ffn, dim), ("ffn_down", dim, ffn)]:
                w.add_tensor(p + role + ".weight", mat(rows, cols, cols ** -0.5))
        w.add_tensor("output_norm.weight", norm(dim))

    write_atomic(dst, fill)


def llama1b(d):
    """llama1b-f16.gguf, then each of LLAMA1B_PRESETS by llama.cpp's own quantizer."""
    src = os.path.join(d, "llama1b-f16.gguf")
    if not os.path.exists(src):
        print(f"==> writing {src} (random weights, Llama-3.2-1B's shape)", file=sys.stderr)
        llama1b_f16(os.path.join(d, SMOL), src)
    llamacpp_quantize(src, os.path.join(d, "llama1b-{}.gguf"), LLAMA1B_PRESETS, threads=os.cpu_count() or 1)


def main():
    cache = os.environ.get("LLAMA_OP_CACHE", os.path.expanduser("~/.cache/llama-operator"))
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=os.path.join(cache, "models"))
    ap.add_argument("--only", choices=["smollm2", "tiny", "tp", "tp-bench", "llamacpp", "llama1b"])
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    if a.only in (None, "tiny"):
        for name, q in TINY_TYPES.items():
            path = os.path.join(a.dir, f"tiny-{name}.gguf")
            if not os.path.exists(path):
                tiny_model(path, q)
        path = os.path.join(a.dir, "tiny-f32-tied.gguf")
        if not os.path.exists(path):
            tiny_model(path, Q.F32, tied=True)
        path = os.path.join(a.dir, "tiny-mixed.gguf")
        if not os.path.exists(path):
            tiny_model(path, Q.Q4_K, mix=MIXED)
    if a.only in (None, "tp"):
        for name, q in TINY_TYPES.items():
            path = os.path.join(a.dir, f"tp-{name}.gguf")
            if not os.path.exists(path):
                tiny_model(path, q, seed=1, c=TP)
        path = os.path.join(a.dir, "tp-f32-tied.gguf")
        if not os.path.exists(path):
            tiny_model(path, Q.F32, tied=True, seed=1, c=TP)
    if a.only == "tp-bench":
        for name in ["q8_0", "q4_k", "q6_k", "q5_1", "q5_0", "f16"]:
            path = os.path.join(a.dir, f"tp-bench-{name}.gguf")
            if not os.path.exists(path):
                tiny_model(path, TINY_TYPES[name], seed=2, c=TP_BENCH)
    if a.only == "llamacpp":
        llamacpp_presets(a.dir)
    if a.only == "llama1b":
        llama1b(a.dir)
    if a.only in (None, "smollm2"):
        src = os.path.join(a.dir, SMOL)
        for name, q in SMOL_TYPES.items():
            path = os.path.join(a.dir, f"smollm2-{name}.gguf")
            if not os.path.exists(path):
                if not os.path.exists(src):
                    sys.exit(f"missing {src}: run scripts/fetch-model.sh")
                print(f"==> writing {path}", file=sys.stderr)
                requantize_smollm2(src, path, q)
    print(a.dir)


if __name__ == "__main__":
    main()
