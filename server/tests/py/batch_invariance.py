"""16 concurrent greedy requests give exactly the tokens each gives alone.

argv: BASE_URL MODE [ALONE_JSON]
MODE `alone`: run the 16 requests one by one, print their outputs as JSON.
MODE `concurrent`: run them all at once and compare with ALONE_JSON (a file written by `alone`).
"""
import json
import sys
from concurrent.futures import ThreadPoolExecutor

from common import check, metric, post

base, mode = sys.argv[1], sys.argv[2]
topics = ["the sea", "a small robot", "mountains", "coffee", "the moon", "a library", "rain", "trains",
          "a garden", "winter", "music", "an old map", "bees", "a lighthouse", "bread", "the desert"]
reqs = []
for i, t in enumerate(topics):
    prompt = f"Write a sentence about {t}." + (" Please be descriptive and vivid." * (i % 4))
    # ignore_eos: every request runs its full length, so lengths really differ and batches really mix
    reqs.append({"prompt": prompt, "max_tokens": 8 + (i * 5) % 29, "temperature": 0, "ignore_eos": True})


def run(body):
    status, _, r = post(base, "/v1/completions", body)
    check(status == 200, f"status {status}: {r}")
    return r["choices"][0]["text"], r["usage"]["completion_tokens"]


if mode == "alone":
    print(json.dumps([run(b) for b in reqs]))
else:
    alone = json.load(open(sys.argv[3]))
    with ThreadPoolExecutor(16) as ex:
        together = list(ex.map(run, reqs))
    for i, (a, b) in enumerate(zip(alone, together)):
        check(list(a) == list(b), f"request {i}: alone {a!r} != concurrent {b!r}")
    pre = metric(base, "llama_preemptions_total")
    print(json.dumps({"preemptions": pre}))
