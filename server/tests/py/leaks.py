"""Many requests, a random share of them abandoned mid-stream: afterwards 0 KV blocks in use and an empty queue.

argv: BASE_URL N
"""
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from common import check, metric, stream_raw

base, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
plan = [(rng.random() < 0.5, rng.randint(1, 3), rng.randint(2, 16), rng.randint(1, 12)) for _ in range(n)]


def one(p):
    disconnect, after, max_tokens, words = p
    body = {"prompt": "word " * words, "max_tokens": max_tokens, "temperature": 0.7, "stream": True}
    ev = stream_raw(base, "/v1/completions", body, read_events=after if disconnect else None)
    if not disconnect:
        check(ev and ev[-1] == "[DONE]", f"a complete stream ends with [DONE]: {ev[-2:]}")
    return disconnect


with ThreadPoolExecutor(16) as ex:
    dropped = sum(ex.map(one, plan))

deadline = time.time() + 30
while time.time() < deadline:
    used, waiting, running = (metric(base, m) for m in
                              ("llama_kv_blocks_used", "llama_requests_waiting", "llama_requests_running"))
    if used == 0 and waiting == 0 and running == 0:
        break
    time.sleep(0.2)
check(used == 0, f"{used} KV blocks still in use")
check(waiting == 0 and running == 0, f"queue not empty: waiting {waiting} running {running}")
print(f"leaks: {n} requests, {dropped} disconnected mid-stream; 0 blocks used, queue empty")
