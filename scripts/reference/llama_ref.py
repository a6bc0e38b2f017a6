#!/usr/bin/env python3
"""An independent Llama forward pass in numpy (float64), reading weights with the `gguf` package.

Written from the architecture, not from the Rust code: every weight is dequantized with
`gguf.quants.dequantize`, attention is plain causal softmax attention over the whole sequence (no cache),
RoPE is llama.cpp's adjacent-pair ("normal") rotation for arch llama and the half-split (NeoX) one for
qwen2/phi3.

Usage: llama_ref.py MODEL.gguf --tokens 1,2,3 [--out logits.json]
Writes {"logits": [[...vocab floats...] for every position]} (JSON) to --out or stdout.
"""
import argparse
import json
import sys

import numpy as np
import gguf
from gguf import GGUFReader


def field(r, key, default=None):
    f = r.fields.get(key)
    if f is None:
        return default
    v = f.contents()
    return v


class Ref:
    def __init__(self, path):
        r = GGUFReader(path)
        arch = field(r, "general.architecture")
        k = lambda s: f"{arch}.{s}"
        self.n_layers = int(field(r, k("block_count")))
        self.dim = int(field(r, k("embedding_length")))
        self.n_heads = int(field(r, k("attention.head_count")))
        self.n_kv = int(field(r, k("attention.head_count_kv"), self.n_heads))
        self.head_dim = int(field(r, k("attention.key_length"), self.dim // self.n_heads))
        self.eps = float(field(r, k("attention.layer_norm_rms_epsilon")))
        self.theta = float(field(r, k("rope.freq_base"), 10000.0))
        self.neox = arch in ("qwen2", "phi3")
        self.w = {}
        for t in r.tensors:
            a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
            # GGUF ne = [cols, rows]; dequantize gives numpy shape (rows, cols) already
            self.w[t.name] = a.reshape([int(x) for x in reversed(t.shape.tolist())])
        if "output.weight" not in self.w:
            self.w["output.weight"] = self.w["token_embd.weight"]

    def rms(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x, pos):
        # x: [T, H, D]
        d = self.head_dim
        inv = self.theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)  # [D/2]
        ang = pos[:, None].astype(np.float64) * inv[None, :]  # [T, D/2]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        out = np.empty_like(x)
        if self.neox:
            a, b = x[..., : d // 2], x[..., d // 2:]
            out[..., : d // 2] = a * cos - b * sin
            out[..., d // 2:] = a * sin + b * cos
        else:
            a, b = x[..., 0::2], x[..., 1::2]
            out[..., 0::2] = a * cos - b * sin
            out[..., 1::2] = a * sin + b * cos
        return out

    def forward(self, tokens):
        T = len(tokens)
        pos = np.arange(T)
        x = self.w["token_embd.weight"][np.array(tokens)]
        H, KV, D = self.n_heads, self.n_kv, self.head_dim
        mask = np.triu(np.full((T, T), -np.inf), k=1)
        for i in range(self.n_layers):
            p = f"blk.{i}."
            h = self.rms(x, self.w[p + "attn_norm.weight"])
            q = (h @ self.w[p + "attn_q.weight"].T).reshape(T, H, D)
            k = (h @ self.w[p + "attn_k.weight"].T).reshape(T, KV, D)
            v = (h @ self.w[p + "attn_v.weight"].T).reshape(T, KV, D)
            q, k = self.rope(q, pos), self.rope(k, pos)
            rep = H // KV
            k = np.repeat(k, rep, axis=1)
            v = np.repeat(v, rep, axis=1)
            att = np.einsum("thd,shd->hts", q, k) / np.sqrt(D) + mask
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            o = np.einsum("hts,shd->thd", att, v).reshape(T, H * D)
            x = x + o @ self.w[p + "attn_output.weight"].T
            h = self.rms(x, self.w[p + "ffn_norm.weight"])
            g = h @ self.w[p + "ffn_gate.weight"].T
            u = h @ self.w[p + "ffn_up.weight"].T
            x = x + (g / (1 + np.exp(-g)) * u) @ self.w[p + "ffn_down.weight"].T
        x = self.rms(x, self.w["output_norm.weight"])
        return x @ self.w["output.weight"].T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--out")
    a = ap.parse_args()
    tokens = [int(t) for t in a.tokens.split(",")]
    logits = Ref(a.model).forward(tokens)
    doc = json.dumps({"logits": logits.tolist()})
    if a.out:
        with open(a.out, "w") as f:
            f.write(doc)
    else:
        sys.stdout.write(doc)


if __name__ == "__main__":
    main()
