"""Tool calling through the official openai client against a running llama-server (SmolLM2, whose ChatML
template ignores tools, so the server describes them Hermes-style and parses <tool_call> blocks).

argv: BASE_URL MODEL_NAME

  - tool_choice="required" and a named function, streamed and not: finish_reason "tool_calls", each call
    names a declared function and its arguments validate (independent `jsonschema`) against its parameters;
    the streamed deltas assemble to exactly the non-streamed calls;
  - the round trip: the call goes back as an assistant message, the tool's result as a `tool` message, and
    the final answer is text (the prompt the server builds holds both, seen through /tokenize + /detokenize);
  - parallel_tool_calls=false allows one call; n=2 seeded: every choice's calls valid, reproducible;
  - tool_choice="auto": whatever the model writes, streamed and not agree, and any call parsed is valid;
  - bad tools / tool_choice / tool messages are a 400 naming the field.
"""
import json
import sys

import jsonschema
import openai

from common import check, post

base, model = sys.argv[1:3]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused")

WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 24},
    "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"timezone": {"type": "string", "pattern": "^[A-Za-z]{2,12}/[A-Za-z_]{2,16}$"}},
        "required": ["timezone"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "The local time in an IANA timezone",
                                      "parameters": TIME}},
]
SCHEMA = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What is the weather like in Paris right now?"}]


def valid_calls(calls, what, allowed=("get_weather", "get_time")):
    check(calls, f"{what}: no tool calls")
    for c in calls:
        check(c.type == "function", f"{what}: type {c.type}")
        check(c.id and c.id.startswith("call_"), f"{what}: id {c.id!r}")
        check(c.function.name in allowed, f"{what}: called {c.function.name}, allowed {allowed}")
        try:
            args = json.loads(c.function.arguments)
        except json.JSONDecodeError as e:
            check(False, f"{what}: arguments are not JSON ({e}): {c.function.arguments!r}")
        try:
            jsonschema.Draft202012Validator(SCHEMA[c.function.name]).validate(args)
        except jsonschema.ValidationError as e:
            check(False, f"{what}: {e.message}: {c.function.arguments!r}")
    ids = [c.id for c in calls]
    check(len(set(ids)) == len(ids), f"{what}: call ids repeat: {ids}")


def streamed(with_ids=False, **kw):
    """The stream assembled: (content, [(name, arguments)], finish_reason) (+ the call ids with_ids)."""
    content, calls, finish = "", {}, None
    for chunk in client.chat.completions.create(model=model, stream=True, **kw):
        for ch in chunk.choices:
            d = ch.delta
            content += d.content or ""
            for tc in d.tool_calls or []:
                slot = calls.setdefault(tc.index, {"name": "", "arguments": "", "id": None})
                if tc.id:
                    slot["id"] = tc.id
                if tc.function and tc.function.name:
                    slot["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    slot["arguments"] += tc.function.arguments
            if ch.finish_reason:
                finish = ch.finish_reason
    out = [(calls[i]["name"], calls[i]["arguments"]) for i in sorted(calls)]
    if with_ids:
        return content, out, finish, [calls[i]["id"] for i in sorted(calls)]
    return content, out, finish


def answered(calls, ids, results):
    """The conversation after the calls (name, arguments) with these ids were answered with these results."""
    return ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": i, "type": "function", "function": {"name": n, "arguments": a}} for i, (n, a) in zip(ids, calls)]},
    ] + [{"role": "tool", "tool_call_id": i, "content": json.dumps(r)} for i, r in zip(ids, results)]


def final_answer(history, stream):
    """The text answer after tool results (tool_choice none), streamed or not: (content, finish_reason)."""
    if stream:
        content, calls, finish = streamed(messages=history, tools=TOOLS, tool_choice="none", max_tokens=60,
                                          temperature=0)
        check(not calls, f"a streamed final answer made calls: {calls}")
        return content, finish
    f = client.chat.completions.create(model=model, messages=history, tools=TOOLS, tool_choice="none",
                                       max_tokens=60, temperature=0).choices[0]
    check(not f.message.tool_calls, f"the final answer made calls: {f}")
    return f.message.content, f.finish_reason


# --- required, not streamed ---------------------------------------------------------------------------------
r = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="required",
                                   max_tokens=120, temperature=0)
msg, fin = r.choices[0].message, r.choices[0].finish_reason
check(fin == "tool_calls", f"required: finish_reason {fin}, message {msg}")
valid_calls(msg.tool_calls, "required")
check(msg.content is None, f"required: a reply of calls only has null content, got {msg.content!r}")
print(f"required: {[(c.function.name, c.function.arguments) for c in msg.tool_calls]}")

# --- required, streamed: the deltas assemble to the same calls --------------------------------------------
content, calls, finish = streamed(messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=120,
                                  temperature=0)
check(finish == "tool_calls", f"required streamed: finish_reason {finish}")
check(content == "", f"required streamed: content {content!r}")
check(calls == [(c.function.name, c.function.arguments) for c in msg.tool_calls],
      f"streamed calls {calls} differ from the non-streamed {msg.tool_calls}")

# --- the round trip: call -> tool result -> final answer ----------------------------------------------------
call = msg.tool_calls[0]
result = {"city": "Paris", "temperature": 18, "unit": "celsius", "sky": "sunny"}
history = ASK + [
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function",
         "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
    {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)},
]
st, _, tok = post(base, "/tokenize", {"messages": history, "tools": TOOLS})
check(st == 200, f"/tokenize with tools and a tool result: {st} {tok}")
st, _, text = post(base, "/detokenize", {"tokens": tok["tokens"]})
prompt = text["prompt"]
for part in ["<tools>", "get_time", "<tool_call>", call.function.name, "<tool_response>", json.dumps(result),
             "What is the weather like in Paris"]:
    check(part in prompt, f"the prompt of the round trip lacks {part!r}:\n{prompt}")
text, finish = final_answer(history, stream=False)
check(finish in ("stop", "length") and text, f"the final answer is text: {text!r} {finish}")
print(f"final answer: {text!r}")
check(final_answer(history, stream=True) == (text, finish), "the streamed final answer differs")

# --- a named function, streamed and not ---------------------------------------------------------------------
named = {"type": "function", "function": {"name": "get_time"}}
r = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice=named, max_tokens=120,
                                   temperature=0)
c = r.choices[0]
check(c.finish_reason == "tool_calls" and len(c.message.tool_calls) == 1, f"named: {c}")
valid_calls(c.message.tool_calls, "named", allowed=("get_time",))
content, calls, finish = streamed(messages=ASK, tools=TOOLS, tool_choice=named, max_tokens=120, temperature=0)
check(finish == "tool_calls" and calls == [(c.message.tool_calls[0].function.name,
                                            c.message.tool_calls[0].function.arguments)],
      f"named streamed: {calls} {finish}")
print(f"named: {c.message.tool_calls[0].function.arguments}")
# the named round trip, streamed end to end: the call from the stream (with its id) and its result go back
content, calls, finish, ids = streamed(with_ids=True, messages=ASK, tools=TOOLS, tool_choice=named,
                                       max_tokens=120, temperature=0)
check(len(ids) == 1 and ids[0] and ids[0].startswith("call_"), f"streamed call ids: {ids}")
times = [{"timezone": json.loads(calls[0][1])["timezone"], "time": "14:05"}]
streamed_history = answered(calls, ids, times)
text, finish = final_answer(streamed_history, stream=True)
check(finish in ("stop", "length") and text, f"the named round trip's final answer is text: {text!r}")
check(final_answer(streamed_history, stream=False) == (text, finish), "named: streamed and not differ")
print(f"named round trip: {text!r}")

# --- parallel_tool_calls=false; n=2 sampled with a seed ----------------------------------------------------
many = [{"role": "user", "content": "Tell me the weather in Paris and in Rome, and the time in Tokyo."}]
r = client.chat.completions.create(model=model, messages=many, tools=TOOLS, tool_choice="required",
                                   parallel_tool_calls=False, max_tokens=150, temperature=0)
check(len(r.choices[0].message.tool_calls) == 1, f"parallel_tool_calls=false: {r.choices[0].message.tool_calls}")
kw = dict(model=model, messages=many, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
          max_tokens=150, n=2, seed=7, temperature=0.8)
a = client.chat.completions.create(**kw)
b = client.chat.completions.create(**kw)
for i, ch in enumerate(a.choices):
    check(ch.finish_reason == "tool_calls", f"n=2 choice {i}: {ch}")
    valid_calls(ch.message.tool_calls, f"n=2 choice {i}")
    check([(t.function.name, t.function.arguments) for t in ch.message.tool_calls] ==
          [(t.function.name, t.function.arguments) for t in b.choices[i].message.tool_calls],
          f"n=2 choice {i} is not reproducible with its seed")

# --- auto: the model decides; streamed and not agree --------------------------------------------------------
for prompt in ["What is the weather like in Paris right now?", "Say hello in French."]:
    q = [{"role": "user", "content": prompt}]
    r = client.chat.completions.create(model=model, messages=q, tools=TOOLS, max_tokens=80, temperature=0)
    c = r.choices[0]
    if c.message.tool_calls:
        check(c.finish_reason == "tool_calls", f"auto: {c}")
        valid_calls(c.message.tool_calls, "auto")
    else:
        check(c.finish_reason in ("stop", "length"), f"auto: {c}")
    content, calls, finish = streamed(messages=q, tools=TOOLS, max_tokens=80, temperature=0)
    want = [(t.function.name, t.function.arguments) for t in c.message.tool_calls or []]
    check((content, calls, finish) == (c.message.content or "", want, c.finish_reason),
          f"auto {prompt!r}: streamed {(content, calls, finish)} vs {c}")
    print(f"auto {prompt!r}: {finish}, {want or content[:60]!r}")

# --- bad input: 400 naming the field ------------------------------------------------------------------------
for extra, param in [
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "launch"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"messages": ASK + [{"role": "assistant", "tool_calls": [{"type": "function", "function": {
        "name": "get_weather", "arguments": "{not json"}}]}]}, "messages[1].tool_calls[0].function.arguments"),
    ({"messages": ASK + [{"role": "tool", "tool_call_id": 5, "content": "x"}]}, "messages[1].tool_call_id"),
    ({"functions": [{"name": "f"}]}, "functions"),
]:
    body = {"model": model, "messages": ASK, "max_tokens": 4, **extra}
    st, _, r = post(base, "/v1/chat/completions", body)
    check(st == 400 and r["error"]["param"] == param, f"{extra}: {st} {r}")
r = client.chat.completions.create(model=model, messages=ASK, max_tokens=2)
check(r.choices[0].finish_reason in ("stop", "length"), "the server still serves")
print("tools: all checks passed")
