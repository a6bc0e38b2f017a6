"""429 beyond the queue bound (with Retry-After), then SIGTERM drain: readiness 503 at once, new requests 503,
the in-flight stream completes.

argv: BASE_URL MODE
MODE `queue`: the server runs with --max-batch-size 1 --max-queue 2.
MODE `drain`: start a long stream, print READY-FOR-SIGTERM, keep reading; the harness sends SIGTERM.
"""
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from common import check, get, post, stream_raw

base, mode = sys.argv[1], sys.argv[2]

if mode == "queue":
    body = {"prompt": "Tell me a long story.", "max_tokens": 40, "temperature": 0}
    with ThreadPoolExecutor(12) as ex:
        results = list(ex.map(lambda _: post(base, "/v1/completions", body), range(12)))
    codes = [s for s, _, _ in results]
    check(200 in codes, f"some requests served: {codes}")
    limited = [(h, r) for s, h, r in results if s == 429]
    check(limited, f"no 429 with max-queue 2: {codes}")
    for h, r in limited:
        retry = {k.lower(): v for k, v in h.items()}.get("retry-after")
        check(retry is not None and int(retry) >= 1, f"Retry-After {retry}")
        check(r["error"]["code"] == "queue_full" and r["error"]["type"] == "rate_limit_error", str(r))
    print(f"queue: {codes.count(200)} served, {len(limited)} got 429 with Retry-After")
else:
    result = {}

    def long_stream():
        body = {"prompt": "Write a long essay about the ocean.", "max_tokens": 200, "temperature": 0,
                "ignore_eos": True, "stream": True}
        result["events"] = stream_raw(base, "/v1/completions", body)

    t = threading.Thread(target=long_stream)
    t.start()
    time.sleep(1.0)
    check(t.is_alive(), "the stream must still be in flight when SIGTERM is sent")
    print("READY-FOR-SIGTERM", flush=True)
    # wait for readiness to flip
    deadline = time.time() + 10
    while time.time() < deadline and get(base, "/ready")[0] != 503:
        time.sleep(0.05)
    check(get(base, "/ready")[0] == 503, "ready is 503 while draining")
    status, h, r = post(base, "/v1/completions", {"prompt": "x", "max_tokens": 1})
    check(status == 503 and r["error"]["code"] == "draining", f"new request while draining: {status} {r}")
    # A keep-alive client (as the OpenAI SDKs are) is told to reconnect, so its retry goes through the Service to
    # a pod that serves: http.client speaks HTTP/1.1 and does not ask for close itself (urllib would).
    import http.client
    from urllib.parse import urlparse
    u = urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("POST", "/v1/completions", body=json.dumps({"prompt": "x", "max_tokens": 1}),
                 headers={"content-type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    h = {k.lower(): v for k, v in resp.getheaders()}
    check(resp.status == 503, f"keep-alive request while draining: {resp.status}")
    check(h.get("connection", "").lower() == "close" and resp.will_close,
          f"a draining 503 closes its keep-alive connection: {h}")
    check(h.get("retry-after") == "1", f"a draining 503 says when to retry: {h}")
    conn.close()
    t.join(120)
    ev = result.get("events", [])
    check(ev and ev[-1] == "[DONE]", f"in-flight stream completed: {ev[-2:]}")
    texts = [json.loads(e)["choices"][0] for e in ev[:-1] if e.startswith("{")]
    check(texts and texts[-1]["finish_reason"] == "length", f"stream ran to max_tokens: {texts[-1:]}")
    print("drain: ready 503, new request 503, in-flight stream finished")
