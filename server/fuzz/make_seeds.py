"""Writes the committed seed corpus of the fuzz targets (run by hand; the seeds are committed).

gguf: micro Llama files (a few KiB: 1 layer, 32 wide, a 12-token BPE vocabulary) in several tensor types,
with and without tokenizer and template metadata; named without `.gguf`, which .gitignore keeps out of the
repository (for real weights). request: request bodies (byte 0 picks the endpoint).
detok_stop: stop strings plus token ids. None of this is model weights: the tensors are random.
"""
import json
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q, GGUFWriter

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def micro(path, qtype, tokenizer=True, seed=0):
    rng = np.random.default_rng(seed)
    dim, ffn, heads, kv_heads, vocab = 32, 64, 2, 1, 12
    kv = kv_heads * (dim // heads)
    w = GGUFWriter(path, arch="llama")
    w.add_name("micro")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    if tokenizer:
        toks = ["<unk>", "<|im_start|>", "<|im_end|>", "H", "e", "l", "o", "Ġ", "He", "ll", "Hell", "Hello"]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_list(toks)
        w.add_token_types([3, 3, 3] + [1] * 9)
        w.add_token_merges(["H e", "l l", "He ll", "Hell o"])
        w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

    def mat(rows, cols):
        data = (rng.standard_normal((rows, cols)) * 0.1).astype(np.float32)
        return data if qtype == Q.F32 else gguf.quants.quantize(data, qtype)

    def add(name, arr):
        if arr.dtype == np.float32 or arr.ndim == 1:
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, arr, raw_dtype=qtype)

    add("token_embd.weight", mat(vocab, dim))
    add("blk.0.attn_norm.weight", np.ones(dim, np.float32))
    add("blk.0.attn_q.weight", mat(dim, dim))
    add("blk.0.attn_k.weight", mat(kv, dim))
    add("blk.0.attn_v.weight", mat(kv, dim))
    add("blk.0.attn_output.weight", mat(dim, dim))
    add("blk.0.ffn_norm.weight", np.ones(dim, np.float32))
    add("blk.0.ffn_gate.weight", mat(ffn, dim))
    add("blk.0.ffn_up.weight", mat(ffn, dim))
    add("blk.0.ffn_down.weight", mat(dim, ffn))
    add("output_norm.weight", np.ones(dim, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    os.makedirs(os.path.join(CORPUS, "gguf"), exist_ok=True)
    for name, q in [("f32", Q.F32), ("f16", Q.F16), ("q8_0", Q.Q8_0), ("q4_0", Q.Q4_0), ("q4_1", Q.Q4_1)]:
        micro(os.path.join(CORPUS, "gguf", f"micro-{name}"), q)
    micro(os.path.join(CORPUS, "gguf", "micro-notok"), Q.Q8_0, tokenizer=False)

    chat = [
        {"model": "smol", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "<|im_start|>x"}],
         "stream": True, "stream_options": {"include_usage": True}, "n": 2, "seed": 7, "temperature": 0.5},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}], "logprobs": True,
         "top_logprobs": 3, "stop": ["\n", "Paris"], "logit_bias": {"7": -100, "8": 5}},
        {"messages": [], "tools": [], "response_format": {"type": "json_object"}},
        {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 300, "top_p": 0.9,
         "top_k": 40, "min_p": 0.1, "presence_penalty": 1, "frequency_penalty": -1, "repetition_penalty": 1.1,
         "ignore_eos": True, "stop_token_ids": [2, 3]},
    ]
    completion = [
        {"model": "smol", "prompt": "Hello", "max_tokens": 4},
        {"prompt": [1, 2, 3], "echo": False, "logprobs": 2, "best_of": 1, "suffix": ""},
        {"prompt": [[1, 2]], "n": 3, "stream": True, "stop": "e"},
        {"prompt": ["a", "b"], "seed": -1},
        {"prompt": "<|im_start|>user\nHi<|im_end|>\n", "logit_bias": {" 7": 1, "7": 2}},
    ]
    for i, body in enumerate(completion):
        write("request", f"completion-{i}", b"\x00" + json.dumps(body).encode())
    for i, body in enumerate(chat):
        write("request", f"chat-{i}", b"\x01" + json.dumps(body).encode())
    write("request", "chat-special", b"\x03" + json.dumps(chat[1]).encode())

    def detok(stops, ids):
        out = bytes([len(stops)])
        for s in stops:
            b = s.encode()
            out += bytes([len(b)]) + b
        return out + b"".join(int(i).to_bytes(2, "little") for i in ids)

    write("detok_stop", "plain", detok([], [19556, 30, 2114, 1114, 253, 1743]))
    write("detok_stop", "stops", detok(["\n", "ll"], [19556, 30, 216, 2114, 1114, 253, 1743, 28]))
    write("detok_stop", "bytes", detok(["é"], [252, 162, 252, 163, 30, 216, 102, 103]))


if __name__ == "__main__":
    sys.exit(main())
