"""Soak: N requests mixing streams, non-streams, client disconnects of both, bad inputs and tokenize calls, from
16 threads. Afterwards: 0 KV blocks in use, an empty queue, every answer as expected, and the server's resident
memory flat (measured after a warm-up and at the end).

argv: BASE_URL N SERVER_PID
"""
import json
import random
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from common import check, metric, post, stream_raw

base, n, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
host, port = base.split("//")[1].split(":")
port = int(port)
C, CH = "/v1/completions", "/v1/chat/completions"


def rss_mib():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def abandon_nonstream(body, after_s):
    s = socket.create_connection((host, port), timeout=30)
    data = json.dumps(body).encode()
    s.sendall(f"POST {C} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    time.sleep(after_s)
    s.close()


BAD = [
    (C, b"{not json", 400),
    (C, {"prompt": "x", "temperature": 9}, 400),
    (C, {"prompt": "x", "logit_bias": {"abc": 1}}, 400),
    (C, {"prompt": "x", "stop": ["y" * 2000]}, 400),
    (CH, {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, 400),
    (C, {"model": "nope", "prompt": "x"}, 404),
]


def one(i):
    rng = random.Random(i)
    kind = rng.random()
    words = rng.randint(1, 24)
    body = {"prompt": "word " * words, "max_tokens": rng.randint(1, 12), "temperature": 0.8, "seed": i}
    if kind < 0.25:
        ev = stream_raw(base, C, dict(body, stream=True))
        check(ev and ev[-1] == "[DONE]", f"stream {i} ends with [DONE]")
        return "stream"
    if kind < 0.40:
        stream_raw(base, C, dict(body, stream=True, max_tokens=40), read_events=rng.randint(1, 3))
        return "stream-disconnect"
    if kind < 0.60:
        st, _, r = post(base, C, body)
        check(st == 200 and r["usage"]["completion_tokens"] >= 1, f"non-stream {i}: {st}")
        return "non-stream"
    if kind < 0.70:
        abandon_nonstream(dict(body, max_tokens=60, ignore_eos=True), rng.uniform(0.0, 0.3))
        return "non-stream-disconnect"
    if kind < 0.88:
        path, b, want = BAD[i % len(BAD)]
        st, _, r = post(base, path, None, raw=b) if isinstance(b, bytes) else post(base, path, b)
        check(st == want and "error" in r, f"bad input {i}: {st} (want {want})")
        return "bad-input"
    st, _, r = post(base, "/tokenize", {"messages": [{"role": "user", "content": "word " * words}]})
    check(st == 200 and r["count"] > words, f"tokenize {i}: {st}")
    return "tokenize"


def run(indices):
    counts = {}
    with ThreadPoolExecutor(16) as ex:
        for k in ex.map(one, indices):
            counts[k] = counts.get(k, 0) + 1
    return counts


def settle():
    deadline = time.time() + 30
    while time.time() < deadline:
        used, waiting, running = (metric(base, m) for m in
                                  ("llama_kv_blocks_used", "llama_requests_waiting", "llama_requests_running"))
        if used == 0 and waiting == 0 and running == 0:
            return used, waiting, running
        time.sleep(0.2)
    return used, waiting, running


warm = min(500, n // 10)
t0 = time.time()
run(range(warm))
settle()
rss_warm = rss_mib()
counts = run(range(warm, n))
used, waiting, running = settle()
rss_end = rss_mib()
took = time.time() - t0
check(used == 0, f"{used} KV blocks still in use")
check(waiting == 0 and running == 0, f"queue not empty: waiting {waiting} running {running}")
growth = rss_end - rss_warm
print(f"soak: {n} requests in {took:.0f} s {counts}; RSS {rss_warm:.0f} MiB after {warm} warm-up requests, "
      f"{rss_end:.0f} MiB at the end ({growth:+.0f} MiB)")
check(growth <= max(32.0, 0.10 * rss_warm), f"resident memory flat (grew {growth:.0f} MiB)")
