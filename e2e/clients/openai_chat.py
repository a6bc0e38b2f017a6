"""What an application does: the official `openai` Python client against a LlamaDeployment's Service.

  openai_chat.py once --base URL --model NAME
      one chat completion; prints {"content": ..., "usage": ...} as JSON; exit 1 on any error.
  openai_chat.py stream-loop --base URL --model NAME --stop-file F --out F
      streamed chat completions back to back until the stop file appears; writes
      {"ok": n, "failed": n, "errors": [...], "tokens": n, "retried_responses": [...]} to --out. A stream counts as
      ok only when it ends with a finish_reason. The SDK keeps its default retries (as applications run it);
      every error response it saw (e.g. a draining pod's 503 it retried) is listed in retried_responses.
"""

import argparse
import json
import os
import sys
import time

from openai import DefaultHttpxClient, OpenAI

# Responses with an error status the SDK saw (and, for 429/5xx, retried on its own: its default 2 retries are
# what applications run with). Counted so a test can report them rather than have the SDK hide them.
ERROR_RESPONSES = []


def _record(response):
    if response.status_code >= 400:
        ERROR_RESPONSES.append(f"{response.status_code} {response.request.url}")


def client(base: str) -> OpenAI:
    return OpenAI(base_url=base, api_key=os.environ.get("LLAMA_API_KEY", "none"), timeout=60,
                  http_client=DefaultHttpxClient(event_hooks={"response": [_record]}))


def once(args) -> int:
    c = client(args.base)
    r = c.chat.completions.create(
        model=args.model,
        messages=[{"role": "user", "content": args.prompt}],
        max_tokens=args.max_tokens,
        temperature=0,
    )
    content = r.choices[0].message.content or ""
    print(json.dumps({"content": content, "usage": r.usage.model_dump() if r.usage else None,
                      "finish_reason": r.choices[0].finish_reason}))
    return 0 if content.strip() else 1


def stream_loop(args) -> int:
    c = client(args.base)
    ok = failed = tokens = 0
    errors = []
    while not os.path.exists(args.stop_file):
        try:
            finished = False
            stream = c.chat.completions.create(
                model=args.model,
                messages=[{"role": "user", "content": "Count from one to twenty in words."}],
                max_tokens=args.max_tokens,
                temperature=0,
                stream=True,
            )
            for chunk in stream:
                if chunk.choices:
                    if chunk.choices[0].delta.content:
                        tokens += 1
                    if chunk.choices[0].finish_reason:
                        finished = True
            if finished:
                ok += 1
            else:
                failed += 1
                errors.append("stream ended without a finish_reason")
        except Exception as e:  # every failure is counted and named, never retried silently
            failed += 1
            errors.append(f"{type(e).__name__}: {e}"[:300])
            time.sleep(0.2)
    with open(args.out, "w") as f:
        json.dump({"ok": ok, "failed": failed, "errors": errors[:20], "tokens": tokens,
                   "retried_responses": ERROR_RESPONSES[:20]}, f)
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["once", "stream-loop"])
    p.add_argument("--base", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--prompt", default="What is the capital of France? Answer in one sentence.")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--stop-file")
    p.add_argument("--out")
    args = p.parse_args()
    return once(args) if args.mode == "once" else stream_loop(args)


if __name__ == "__main__":
    sys.exit(main())
