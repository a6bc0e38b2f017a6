"""Bad inputs each get the right 4xx with an OpenAI-style error body naming the field; the server keeps serving.

argv: BASE_URL MODEL_NAME MAX_SEQ_LEN
"""
import sys

from common import check, get, post

base, model, max_seq_len = sys.argv[1], sys.argv[2], int(sys.argv[3])
msgs = [{"role": "user", "content": "hi"}]
C, CH = "/v1/completions", "/v1/chat/completions"

# (endpoint, body or raw bytes, expected status, expected param or None)
cases = [
    (C, b"{not json", 400, None),
    (C, b"[1, 2", 400, None),
    (CH, b'{"messages": "hello"}', 400, None),
    (C, {"model": "gpt-4", "prompt": "x"}, 404, "model"),
    (CH, {"model": "gpt-4", "messages": msgs}, 404, "model"),
    (C, {"prompt": "x", "temperature": 5}, 400, "temperature"),
    (C, {"prompt": "x", "temperature": -1}, 400, "temperature"),
    (C, {"prompt": "x", "top_p": 0}, 400, "top_p"),
    (C, {"prompt": "x", "top_k": -3}, 400, "top_k"),
    (C, {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    (C, {"prompt": "x", "max_tokens": max_seq_len}, 400, "max_tokens"),
    (C, {"prompt": "hello " * (max_seq_len + 10)}, 400, "prompt"),
    (C, {"prompt": "x", "n": 0}, 400, "n"),
    (C, {"prompt": "x", "n": 1000}, 400, "n"),
    (C, {"prompt": "x", "stop": 3}, 400, "stop"),
    (C, {"prompt": "x", "logprobs": 99}, 400, "logprobs"),
    (C, {"prompt": "x", "seed": -5}, 400, "seed"),
    (C, {"prompt": "x", "stream_options": {"include_usage": True}}, 400, "stream_options"),
    (C, {"prompt": [1, 2, 99999999]}, 400, "prompt"),
    (C, {}, 400, "prompt"),
    (CH, {}, 400, "messages"),
    (CH, {"messages": []}, 400, "messages"),
    (CH, {"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
    (CH, {"messages": [{"role": "user", "content": 7}]}, 400, "messages[0].content"),
    (CH, {"messages": msgs, "top_logprobs": 2}, 400, "top_logprobs"),
    (CH, {"messages": msgs, "max_completion_tokens": -1}, 400, "max_completion_tokens"),
    (CH, {"messages": [{"role": "user", "content": "hello " * (max_seq_len + 10)}]}, 400, "messages"),
    ("/detokenize", {"tokens": [-1]}, 400, "tokens"),
    ("/v1/no-such-route", {}, 404, None),
]
check(len(cases) >= 15, "at least 15 cases")
for path, body, status, param in cases:
    if isinstance(body, bytes):
        got, _, resp = post(base, path, None, raw=body)
    else:
        got, _, resp = post(base, path, body)
    check(got == status, f"{path} {body!r:.80}: status {got}, want {status}: {resp}")
    check(isinstance(resp, dict) and "error" in resp, f"{path}: not an OpenAI error body: {resp!r:.200}")
    err = resp["error"]
    check(set(err) >= {"message", "type", "param", "code"}, f"error fields {err}")
    if param is not None:
        check(err["param"] == param, f"{path} {body!r:.80}: param {err['param']}, want {param}")

# still serving
status, _, ok = post(base, C, {"prompt": "Hello", "max_tokens": 2, "temperature": 0})
check(status == 200 and ok["usage"]["completion_tokens"] == 2, f"server still serves: {status} {ok}")
check(get(base, "/health")[0] == 200 and get(base, "/ready")[0] == 200, "health and ready")
print(f"bad inputs: {len(cases)} cases gave the right 4xx; server still serving")
