"""Helpers shared by the serving proof scripts (stdlib only, besides the openai client where used)."""
import http.client
import json
import re
import sys
import urllib.error
import urllib.request


def base_url():
    return sys.argv[1].rstrip("/")


def post(base, path, body, headers=None, raw=None):
    """POST JSON (or raw bytes); returns (status, headers, parsed-or-text body)."""
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method="POST")
    req.add_header("content-type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            status, hdrs, text = r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        status, hdrs, text = e.code, dict(e.headers), e.read().decode()
    try:
        return status, hdrs, json.loads(text)
    except ValueError:
        return status, hdrs, text


def get(base, path):
    try:
        with urllib.request.urlopen(base + path, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(base, name):
    """Value of the first sample of `name` on /metrics."""
    _, text = get(base, "/metrics")
    m = re.search(r"^" + re.escape(name) + r"(\{[^}]*\})? (\S+)$", text, re.M)
    if not m:
        raise AssertionError(f"metric {name} not found")
    return float(m.group(2))


def stream_raw(base, path, body, read_events=None):
    """POSTs a streaming request over a raw connection; returns the list of SSE data payloads. With
    `read_events`, closes the connection after that many events (a client disconnect)."""
    host, port = base.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=300)
    conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
    resp = conn.getresponse()
    events = []
    if resp.status != 200:
        events.append(("status", resp.status, resp.read().decode()))
        conn.close()
        return events
    while True:
        line = resp.fp.readline()
        if not line:
            break
        line = line.decode().strip()
        if line.startswith("data: "):
            events.append(line[6:])
            if read_events is not None and len(events) >= read_events:
                break
            if line == "data: [DONE]":
                break
    conn.close()
    return events


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)
