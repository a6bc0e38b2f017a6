#!/usr/bin/env bash
# `make demo`: fetch the default model (once), build llama-server, start `llama-server serve`, wait for /ready,
# send one chat completion and one streamed chat completion, print the answers and the endpoint, and keep
# serving until Ctrl-C.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export LLAMA_OP_CACHE="${LLAMA_OP_CACHE:-$HOME/.cache/llama-operator}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LLAMA_OP_CACHE/target}"
port="${LLAMA_PORT:-8000}"
host="${LLAMA_HOST:-127.0.0.1}"
threads="${LLAMA_THREADS:-$(nproc)}"

model=$(bash scripts/fetch-model.sh)
echo "==> building llama-server (release)" >&2
cargo build -q --release -p llama-server
bin="$CARGO_TARGET_DIR/release/llama-server"

echo "==> starting: llama-server serve --model $model --host $host --port $port --threads $threads" >&2
"$bin" serve --model "$model" --host "$host" --port "$port" --threads "$threads" \
  --served-model-name "${LLAMA_SERVED_MODEL_NAME:-smollm2}" 2>"$LLAMA_OP_CACHE/demo-server.log" &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null; exit 0' INT TERM
trap 'kill -TERM $server 2>/dev/null || true' EXIT

base="http://$host:$port"
for _ in $(seq 1 300); do
  if curl -sf "$base/ready" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$server" 2>/dev/null; then
    echo "llama-server exited:" >&2; tail -20 "$LLAMA_OP_CACHE/demo-server.log" >&2; exit 1
  fi
  sleep 0.2
done
curl -sf "$base/ready" >/dev/null || { echo "llama-server did not become ready" >&2; exit 1; }

question="What is the capital of France? Answer in one sentence."
echo
echo "==> POST $base/v1/chat/completions"
echo "    user: $question"
answer=$(curl -sf "$base/v1/chat/completions" -H 'content-type: application/json' \
  -d "{\"messages\":[{\"role\":\"user\",\"content\":\"$question\"}],\"max_tokens\":48,\"temperature\":0}")
python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("    assistant:", r["choices"][0]["message"]["content"].strip()); print("    usage:", r["usage"])' "$answer"

echo
echo "==> the same, streamed (stream=true, SSE):"
printf '    assistant: '
curl -sfN "$base/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"messages":[{"role":"user","content":"Name three colours of the rainbow."}],"max_tokens":48,"temperature":0,"stream":true}' |
  python3 -c '
import json, sys
for line in sys.stdin:
    line = line.strip()
    if line.startswith("data: ") and line != "data: [DONE]":
        d = json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        print(d, end="", flush=True)
print()'

cat <<MSG

llama-server is serving an OpenAI-compatible API at $base/v1
  models:   curl $base/v1/models
  chat:     curl $base/v1/chat/completions -H 'content-type: application/json' \\
              -d '{"messages":[{"role":"user","content":"Hello!"}]}'
  metrics:  curl $base/metrics
  (openai client: base_url="$base/v1", any api_key)
  server log: $LLAMA_OP_CACHE/demo-server.log
Press Ctrl-C to stop.
MSG
wait "$server"
