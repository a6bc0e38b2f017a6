"""Structured outputs through the official openai client against a running llama-server (SmolLM2).

argv: BASE_URL MODEL_NAME

Every answer is checked by an independent validator (the `jsonschema` package, Draft 2020-12), never by the
server's own grammar engine:
  - 20 varied schemas via response_format json_schema (nested objects, arrays with bounds, enums, numbers with
    bounds, required/optional, anyOf, $defs/$ref, patterns, consts), greedy and sampled;
  - client.chat.completions.parse(response_format=<pydantic model>) returns a parsed object;
  - JSON mode always returns a JSON object;
  - vLLM's guided_choice / guided_regex / guided_grammar / guided_json on /v1/completions;
  - streaming: the deltas concatenate to valid JSON; n=3 with a seed: three valid, reproducible choices;
  - a constrained request gives the same tokens alone and among 15 concurrent others (batch invariance);
  - bad schemas, regexes and grammars are a 400 naming the parameter, and the server keeps serving.
"""
import json
import re
import sys
import threading
from typing import List, Literal, Optional

import jsonschema
import openai
import pydantic

from common import check

base, model = sys.argv[1:3]
# "preempt": only the batch-invariance check, sized for a server whose tiny KV cache forces preemption
PREEMPT = sys.argv[3:4] == ["preempt"]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused")
MAX = 150 if PREEMPT else 400


def ask(schema, prompt, **kw):
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=kw.pop("max_tokens", MAX),
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}},
        **kw,
    )
    return r


def valid(schema, text, what):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        check(False, f"{what}: not JSON ({e}): {text!r}")
    try:
        jsonschema.Draft202012Validator(schema).validate(value)
    except jsonschema.ValidationError as e:
        check(False, f"{what}: {e.message}: {text!r}")
    return value


SCHEMAS = [
    ("a person", {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                                   "age": {"type": "integer", "minimum": 0, "maximum": 120}},
                  "required": ["name", "age"], "additionalProperties": False}),
    ("a colour", {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}},
                  "required": ["color"], "additionalProperties": False}),
    ("three numbers", {"type": "array", "items": {"type": "number", "minimum": -10, "maximum": 10},
                       "minItems": 3, "maxItems": 3}),
    ("a boolean", {"type": "boolean"}),
    ("an integer between 1 and 6", {"type": "integer", "minimum": 1, "maximum": 6}),
    ("a city with coordinates", {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 24},
        "location": {"type": "object", "properties": {"lat": {"type": "number", "minimum": -90, "maximum": 90},
                                                      "lon": {"type": "number", "minimum": -180, "maximum": 180}},
                     "required": ["lat", "lon"], "additionalProperties": False}},
        "required": ["city", "location"], "additionalProperties": False}),
    ("a shopping list", {"type": "object", "properties": {
        "items": {"type": "array", "items": {"type": "string", "maxLength": 16}, "minItems": 1, "maxItems": 4}},
        "required": ["items"], "additionalProperties": False}),
    ("a user with an optional email", {"type": "object", "properties": {
        "username": {"type": "string", "pattern": "^[a-z]{3,10}$"},
        "email": {"type": "string", "maxLength": 30}},
        "required": ["username"], "additionalProperties": False}),
    ("a date", {"type": "object", "properties": {"date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}},
                "required": ["date"], "additionalProperties": False}),
    ("a yes/no answer with a reason", {"type": "object", "properties": {
        "answer": {"enum": ["yes", "no"]}, "reason": {"type": "string", "maxLength": 40}},
        "required": ["answer", "reason"], "additionalProperties": False}),
    ("a version", {"type": "object", "properties": {"major": {"type": "integer", "minimum": 0, "maximum": 99},
                                                    "minor": {"type": "integer", "minimum": 0, "maximum": 99},
                                                    "tag": {"type": ["string", "null"], "maxLength": 10}},
                   "required": ["major", "minor", "tag"], "additionalProperties": False}),
    ("a temperature", {"type": "object", "properties": {"celsius": {"type": "integer", "minimum": -50, "maximum": 60},
                                                        "unit": {"const": "C"}},
                       "required": ["celsius", "unit"], "additionalProperties": False}),
    ("a shape", {"anyOf": [
        {"type": "object", "properties": {"kind": {"const": "circle"}, "radius": {"type": "number", "minimum": 0, "maximum": 100}},
         "required": ["kind", "radius"], "additionalProperties": False},
        {"type": "object", "properties": {"kind": {"const": "square"}, "side": {"type": "number", "minimum": 0, "maximum": 100}},
         "required": ["kind", "side"], "additionalProperties": False}]}),
    ("a team", {"$defs": {"member": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                                                      "role": {"enum": ["dev", "ops", "pm"]}},
                                     "required": ["name", "role"], "additionalProperties": False}},
                "type": "object", "properties": {"members": {"type": "array", "items": {"$ref": "#/$defs/member"},
                                                             "minItems": 1, "maxItems": 3}},
                "required": ["members"], "additionalProperties": False}),
    ("a matrix", {"type": "array", "items": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9},
                                             "minItems": 2, "maxItems": 2}, "minItems": 2, "maxItems": 2}),
    ("a product", {"type": "object", "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{3}$"},
                                                    "price": {"type": "number", "minimum": 0, "maximum": 1000},
                                                    "in_stock": {"type": "boolean"}},
                   "required": ["sku", "price", "in_stock"], "additionalProperties": False}),
    ("tags", {"type": "object", "properties": {"tags": {"type": "array", "items": {"enum": ["a", "b", "c", "d"]},
                                                        "maxItems": 3}},
              "required": ["tags"], "additionalProperties": False}),
    ("a nested config", {"type": "object", "properties": {
        "server": {"type": "object", "properties": {"port": {"type": "integer", "minimum": 1, "maximum": 65535},
                                                    "tls": {"type": "boolean"}},
                   "required": ["port", "tls"], "additionalProperties": False},
        "replicas": {"type": "integer", "minimum": 1, "maximum": 10}},
        "required": ["server", "replicas"], "additionalProperties": False}),
    ("a null or a small integer", {"type": ["integer", "null"], "maximum": 5}),
    ("a string of digits", {"type": "string", "pattern": "^[0-9]{1,8}$"}),
]
check(len(SCHEMAS) == 20, "twenty schemas")


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
    "additionalProperties": False}}}]


def tool_call():
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Weather in Oslo?"}],
                                       tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
                                       max_tokens=60, temperature=0.7, seed=3)
    c = r.choices[0]
    check(c.finish_reason == "tool_calls", f"a required tool call: {c}")
    return [(t.function.name, t.function.arguments) for t in c.message.tool_calls]


def batch_invariance():
    """The same constrained request (and a tool call) alone, then among 14 concurrent others."""
    schema = SCHEMAS[17][1]
    alone = ask(schema, "A server config as JSON.", temperature=0.9, seed=7).choices[0].message.content
    alone_call = tool_call()
    results = {}

    def worker(i):
        if i == 0:
            results[i] = ask(schema, "A server config as JSON.", temperature=0.9, seed=7).choices[0].message.content
        elif i == 2:
            results[i] = tool_call()
        elif i % 2:
            results[i] = ask(SCHEMAS[i % 20][1], f"Give me {SCHEMAS[i % 20][0]} as JSON.", temperature=0.8, seed=i)
        else:
            results[i] = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=40,
                temperature=0.8, seed=i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(results[0] == alone, f"in a batch of 16: {results[0]!r} != alone {alone!r}")
    check(results[2] == alone_call, f"tool call in a batch of 16: {results[2]!r} != alone {alone_call!r}")
    for i in range(1, 16, 2):
        valid(SCHEMAS[i % 20][1], results[i].choices[0].message.content, f"concurrent {i}")
    print("batch of 16: constrained output unchanged", flush=True)


if PREEMPT:
    batch_invariance()
    print("structured outputs under preemption: ok")
    sys.exit(0)

for i, (what, schema) in enumerate(SCHEMAS):
    # greedy, then sampled with a seed
    for kw in [dict(temperature=0), dict(temperature=0.8, seed=i)]:
        r = ask(schema, f"Give me {what} as JSON.", **kw)
        c = r.choices[0]
        check(c.finish_reason == "stop", f"{what} {kw}: finish_reason {c.finish_reason} ({c.message.content!r})")
        valid(schema, c.message.content, f"{what} {kw}")
print(f"{len(SCHEMAS)} schemas x 2: valid", flush=True)


# pydantic through the client's parse()
class Step(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    action: Literal["add", "remove"]
    amount: int = pydantic.Field(ge=0, le=100)


class Plan(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    title: str = pydantic.Field(max_length=20)
    steps: List[Step] = pydantic.Field(min_length=1, max_length=3)
    note: Optional[str] = pydantic.Field(default=None, max_length=20)


p = client.chat.completions.parse(
    model=model,
    messages=[{"role": "user", "content": "Make a short plan."}],
    response_format=Plan,
    max_tokens=MAX,
    temperature=0,
)
check(isinstance(p.choices[0].message.parsed, Plan), f"parse(): {p.choices[0].message}")
print("pydantic parse:", p.choices[0].message.parsed, flush=True)

# JSON mode: always a JSON object
for seed in range(3):
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Describe a cat in JSON."}],
        response_format={"type": "json_object"}, max_tokens=MAX, temperature=0.7, seed=seed,
    )
    c = r.choices[0]
    check(c.finish_reason == "stop", f"json_object: {c.finish_reason} {c.message.content!r}")
    check(isinstance(json.loads(c.message.content), dict), f"json_object: {c.message.content!r}")

# vLLM's guided_* on /v1/completions (extra_body)
r = client.completions.create(model=model, prompt="Is the sky blue? Answer:", max_tokens=8, temperature=0,
                              extra_body={"guided_choice": ["yes", "no", "maybe"]})
check(r.choices[0].text in ("yes", "no", "maybe"), f"guided_choice: {r.choices[0].text!r}")
r = client.completions.create(model=model, prompt="A phone number:", max_tokens=20, temperature=0.9, seed=3,
                              extra_body={"guided_regex": r"\+1-[0-9]{3}-[0-9]{4}"})
check(re.fullmatch(r"\+1-[0-9]{3}-[0-9]{4}", r.choices[0].text), f"guided_regex: {r.choices[0].text!r}")
r = client.completions.create(model=model, prompt="An arithmetic expression:", max_tokens=30, temperature=0.9, seed=5,
                              extra_body={"guided_grammar": 'start: num ("+" num){0,3}\nnum: /[1-9][0-9]?/'})
check(re.fullmatch(r"[1-9][0-9]?(\+[1-9][0-9]?){0,3}", r.choices[0].text), f"guided_grammar: {r.choices[0].text!r}")
schema = SCHEMAS[0][1]
r = client.completions.create(model=model, prompt="A person as JSON:", max_tokens=MAX, temperature=0,
                              extra_body={"guided_json": schema})
valid(schema, r.choices[0].text, "guided_json")

# streaming: deltas concatenate to valid JSON, finish_reason stop
schema = SCHEMAS[5][1]
chunks = list(client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "A city as JSON."}], max_tokens=MAX, temperature=0,
    response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}, stream=True))
text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
valid(schema, text, "streamed")
check(any(ch.choices and ch.choices[0].finish_reason == "stop" for ch in chunks), "streamed finish_reason stop")

# n=3 with a seed: each choice valid, and the request reproducible
schema = SCHEMAS[9][1]
kw = dict(temperature=1.0, seed=11, n=3)
a = ask(schema, "Yes or no, and why?", **kw)
b = ask(schema, "Yes or no, and why?", **kw)
for c in a.choices:
    valid(schema, c.message.content, f"n=3 choice {c.index}")
check([c.message.content for c in a.choices] == [c.message.content for c in b.choices], "n=3 seeded is reproducible")

# batch invariance
batch_invariance()

# bad input: 400 naming the parameter, then the server still serves
for body, param in [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "nosuchtype"}}}}}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/missing"}}}}, "response_format"),
    ({"extra_body": {"guided_regex": "(unclosed"}}, "guided_regex"),
    ({"extra_body": {"guided_grammar": "start: undefined_rule"}}, "guided_grammar"),
    ({"extra_body": {"guided_json": {"type": "string", "minLength": 5, "maxLength": 2}}}, "guided_json"),
]:
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                       **body)
        check(False, f"{body} was accepted")
    except openai.BadRequestError as e:
        check(e.body.get("param") == param, f"{body}: {e.body}")
print("bad constraints: 400 naming the parameter", flush=True)
r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
check(r.choices[0].message.content is not None, "still serving")
print("structured outputs: ok")
