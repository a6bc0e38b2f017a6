"""The official openai client against a running llama-server.

argv: BASE_URL MODEL_NAME EXPECTED_COMPLETION EXPECTED_CHAT
EXPECTED_*: the engine's own `llama-server generate` output (greedy, same prompt and max_tokens), which the
server's greedy output must equal.
"""
import sys

import openai

from common import check

base, model, expected_completion, expected_chat = sys.argv[1:5]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused")

COMPLETION_PROMPT = "The capital of France is"
CHAT_PROMPT = "What is the capital of France?"

# models
models = client.models.list()
check([m.id for m in models.data] == [model], f"models: {models}")

# completion, greedy: equals the engine's generate output
c = client.completions.create(model=model, prompt=COMPLETION_PROMPT, max_tokens=16, temperature=0)
check(c.choices[0].text == expected_completion, f"completion {c.choices[0].text!r} != generate {expected_completion!r}")
check(c.usage.completion_tokens == 16 and c.usage.prompt_tokens > 0, f"usage {c.usage}")
check(c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens, "total_tokens")
check(c.choices[0].finish_reason == "length", c.choices[0].finish_reason)

# chat, greedy: equals generate --chat
r = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": CHAT_PROMPT}], max_tokens=24, temperature=0
)
check(r.choices[0].message.content == expected_chat, f"chat {r.choices[0].message.content!r} != {expected_chat!r}")
check(r.choices[0].message.role == "assistant", "role")

# streaming chat: the deltas concatenate to the non-streamed answer; usage arrives last
chunks = list(
    client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": CHAT_PROMPT}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
)
text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
check(text == expected_chat, f"streamed {text!r} != {expected_chat!r}")
check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == r.usage.completion_tokens, "stream usage")
check(any(ch.choices and ch.choices[0].finish_reason for ch in chunks), "a finish_reason chunk")

# streaming completion
parts = list(client.completions.create(model=model, prompt=COMPLETION_PROMPT, max_tokens=16, temperature=0, stream=True))
check("".join(p.choices[0].text for p in parts if p.choices) == expected_completion, "streamed completion")

# n=2 with a seed: two choices, indexed, reproducible
kw = dict(model=model, prompt="Once upon a time", max_tokens=12, temperature=0.9, n=2, seed=42)
a = client.completions.create(**kw)
b = client.completions.create(**kw)
check(sorted(ch.index for ch in a.choices) == [0, 1], "n=2 indices")
check([ch.text for ch in a.choices] == [ch.text for ch in b.choices], "seeded sampling is reproducible")
check(0 < a.usage.completion_tokens <= 24, f"n=2 usage {a.usage}")

# stop strings: the text ends before the stop string, finish_reason stop
words = expected_completion.split()
stop = " " + words[2] if len(words) > 2 else expected_completion[-2:]
s = client.completions.create(model=model, prompt=COMPLETION_PROMPT, max_tokens=16, temperature=0, stop=[stop])
check(s.choices[0].finish_reason == "stop", f"stop finish {s.choices[0].finish_reason}")
check(s.choices[0].text == expected_completion[: expected_completion.index(stop)], f"stop text {s.choices[0].text!r}")

# max_completion_tokens
m = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Count to fifty."}], max_completion_tokens=5, temperature=0
)
check(m.usage.completion_tokens == 5 and m.choices[0].finish_reason == "length", "max_completion_tokens")

# logprobs
lp = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": CHAT_PROMPT}], max_tokens=4, temperature=0,
    logprobs=True, top_logprobs=3,
)
content = lp.choices[0].logprobs.content
check(len(content) == 4, "one logprob entry per token")
check(all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content), "top_logprobs")
check(all(t.logprob >= max(x.logprob for x in t.top_logprobs) - 1e-4 for t in content), "greedy picks the top token")

# errors surface as openai exceptions with the right status
try:
    client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as e:
    check(e.body["code"] == "model_not_found", str(e.body))
try:
    client.completions.create(model=model, prompt="x", max_tokens=1, temperature=7)
    raise AssertionError("bad temperature accepted")
except openai.BadRequestError as e:
    check(e.body["param"] == "temperature", str(e.body))

# x-request-id: the client's own id comes back (the SDK exposes it as `_request_id`) and names the server's log
# lines; without one the server makes one up; errors carry it too
raw = client.chat.completions.with_raw_response.create(
    model=model, messages=[{"role": "user", "content": CHAT_PROMPT}], max_tokens=2, temperature=0,
    extra_headers={"x-request-id": "trace-abc-123"},
)
check(raw.headers.get("x-request-id") == "trace-abc-123", f"echoed id {raw.headers.get('x-request-id')!r}")
check(raw.parse()._request_id == "trace-abc-123", "the SDK's _request_id")
own = client.completions.create(model=model, prompt="x", max_tokens=1)
check((own._request_id or "").startswith("req-"), f"generated id {own._request_id!r}")
try:
    client.completions.create(
        model="no-such-model", prompt="x", max_tokens=1, extra_headers={"x-request-id": "trace-err-9"}
    )
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as e:
    check(e.request_id == "trace-err-9", f"error request_id {e.request_id!r}")

print("openai client: all checks passed")
