#!/usr/bin/env bash
# Side-by-side serving benchmark: our `llama-server serve` vs llama.cpp's own `llama-server` (built from the
# llama-cpp-python 0.3.36 sdist by build-llamacpp-server.sh, benchmarking only), same GGUF, same threads, same
# client (`llama-server bench-serve`), one run. The servers run one after the other, never at once (the cores
# are shared). Prints one markdown table on stdout; logs and raw tables go to $BENCH_DIR.
#
# Settings (environment): MODEL (default: scripts/fetch-model.sh), THREADS (2), CONCURRENCY (1,4,16,64),
# MAX_TOKENS (64), MIXED=1 (bench-serve --mixed: prompts of 24-480 words, outputs 16..2 x MAX_TOKENS), REQUESTS (bench-serve's default: 2 x concurrency, at least 4), PORT (18090; llama.cpp gets
# PORT+1), ORDER ("ours llamacpp"), BENCH_DIR (default $LLAMA_OP_CACHE/bench-serve/<UTC time>), SKIP_BUILD=1 to
# use the binaries as they are, OURS_ARGS / LLAMACPP_ARGS: extra server flags (e.g. LLAMACPP_ARGS="--poll 0").
#
# llama.cpp runs with its defaults apart from threads, slots (-np = the highest concurrency, so no request
# waits for a slot, like ours with --max-batch-size), context and no web UI. Its worker threads spin at barriers
# (--poll 50), which collapses its speed whenever another process takes one of the 2 cores: compare only runs
# taken on a quiet machine (the table warns when more than 10 % of the CPU was busy before a server started).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cache="${LLAMA_OP_CACHE:-$HOME/.cache/llama-operator}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
threads="${THREADS:-2}"
concurrency="${CONCURRENCY:-1,4,16,64}"
max_tokens="${MAX_TOKENS:-64}"
port="${PORT:-18090}"
order="${ORDER:-ours llamacpp}"
dir="${BENCH_DIR:-$cache/bench-serve/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$dir"
model="${MODEL:-$(bash "$root/scripts/fetch-model.sh")}"
max_c=$(tr ',' '\n' <<<"$concurrency" | sort -n | tail -1)
# bench-serve's prompts are ~17 tokens (MIXED=1: up to ~500 tokens and 2 x max_tokens output); each llama.cpp
# slot gets ctx/np, so give every slot room for the longest request
# (llama.cpp itself raises a slot to at least 256).
mixed_flag=""
if [ "${MIXED:-0}" = 1 ]; then
  mixed_flag="--mixed"
  slot_ctx=$((512 + 2 * max_tokens))
else
  slot_ctx=$((64 + max_tokens))
fi
[ "$slot_ctx" -ge 256 ] || slot_ctx=256
ctx=$((max_c * slot_ctx))

ours="$CARGO_TARGET_DIR/release/llama-server"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  echo "==> building ours (release)" >&2
  (cd "$root" && nice -n 10 cargo build --release -p llama-server >&2)
  lcpp="$(bash "$root/scripts/reference/build-llamacpp-server.sh")"
else
  lcpp="$cache/llamacpp/server-build-0.3.36/bin/llama-server"
fi
test -x "$ours" && test -x "$lcpp"

pid=""
stop_server() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=""
  fi
}
trap stop_server EXIT

# Waits until a 1-token completion succeeds (both servers load the weights after they start listening).
wait_ready() {
  local url="http://127.0.0.1:$1/v1/completions"
  for _ in $(seq 240); do
    kill -0 "$pid" 2>/dev/null || { echo "server exited; see its log" >&2; return 1; }
    if curl -sf -o /dev/null -H 'Content-Type: application/json' \
      -d '{"prompt":"Hello","max_tokens":1,"temperature":0}' "$url"; then
      return 0
    fi
    sleep 0.5
  done
  echo "server not ready after 120 s" >&2
  return 1
}

# Percent of both cores busy over 2 s (before a server starts: other processes' load). The load average would
# still carry the previous server's run.
busy_pct() {
  local a b
  read -r -a a < <(grep '^cpu ' /proc/stat)
  sleep 2
  read -r -a b < <(grep '^cpu ' /proc/stat)
  local total=0 i
  for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
  local idle=$((b[4] - a[4] + b[5] - a[5]))
  echo $(((100 * (total - idle)) / (total > 0 ? total : 1)))
}

run_one() {
  local name="$1" p
  loads="$loads $name:$(busy_pct)%"
  case "$name" in
    ours)
      p=$port
      "$ours" serve --model "$model" --host 127.0.0.1 --port "$p" --threads "$threads" \
        --max-batch-size "$max_c" ${OURS_ARGS:-} >"$dir/ours.log" 2>&1 &
      ;;
    llamacpp)
      p=$((port + 1))
      "$lcpp" -m "$model" --host 127.0.0.1 --port "$p" -t "$threads" -tb "$threads" -np "$max_c" -c "$ctx" \
        --cont-batching --no-webui ${LLAMACPP_ARGS:-} >"$dir/llamacpp.log" 2>&1 &
      ;;
    *) echo "unknown server $name" >&2; return 1 ;;
  esac
  pid=$!
  wait_ready "$p"
  echo "==> $name ready (pid $pid); load $(cut -d' ' -f1-3 /proc/loadavg); bench-serve ..." >&2
  "$ours" bench-serve --addr "127.0.0.1:$p" --concurrency "$concurrency" --max-tokens "$max_tokens" $mixed_flag \
    ${REQUESTS:+--requests "$REQUESTS"} --label "$name" | tee "$dir/$name.md" >&2
  stop_server
  echo "==> $name done; load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  sleep 3
}

started="$(date -u +%FT%TZ)"
loads=""
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
for s in $order; do
  run_one "$s"
done
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

# bench-serve rows: | label | c | requests | tok/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 | TPOT p50 | waste |
awk -F'|' -v started="$started" -v load="$load_before" -v load2="$load_after" \
  -v loads="$loads" -v extra="${OURS_ARGS:+ ours: $OURS_ARGS.}${LLAMACPP_ARGS:+ llama.cpp: $LLAMACPP_ARGS.}" -v threads="$threads" -v mt="$max_tokens" \
  -v cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" \
  -v commit="$(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD -- server || echo +dirty)" '
  function t(s) { gsub(/^ +| +$/, "", s); return s }
  FNR == 1 { src = (FILENAME ~ /ours\.md$/) ? "o" : "l" }
  $3 ~ /[0-9]/ {
    c = t($3); seen[c] = 1
    tok[src, c] = t($5); tt50[src, c] = t($6); tt99[src, c] = t($7); itl[src, c] = t($8); tpot[src, c] = t($10)
  }
  END {
    printf "Side by side, %s: %s, %d threads each, %d-token completions (ignore_eos), same client; ", started, cpu, threads, mt
    printf "load average before %s, after %s; ours at %s, llama.cpp from llama-cpp-python 0.3.36 (GGML_NATIVE=ON).%s\n\n",
      load, load2, commit, extra
    print "| streams | ours tok/s | llama.cpp tok/s | ours / llama.cpp | ours TTFT p50 / p99 ms | llama.cpp TTFT p50 / p99 ms | ours ITL p50 ms | llama.cpp ITL p50 ms | ours TPOT p50 ms | llama.cpp TPOT p50 ms |"
    print "|---|---|---|---|---|---|---|---|---|---|"
    n = 0; for (c in seen) cs[++n] = c + 0
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (cs[j] < cs[i]) { x = cs[i]; cs[i] = cs[j]; cs[j] = x }
    for (i = 1; i <= n; i++) {
      c = cs[i]
      r = (tok["l", c] > 0) ? sprintf("%.2f×", tok["o", c] / tok["l", c]) : "n/a"
      printf "| %s | %s | %s | %s | %s / %s | %s / %s | %s | %s | %s | %s |\n", c, tok["o", c], tok["l", c], r,
        tt50["o", c], tt99["o", c], tt50["l", c], tt99["l", c], itl["o", c], itl["l", c], tpot["o", c], tpot["l", c]
    }
    print ""
    if (tok["o", 1] > 0 && tok["o", 16] > 0) {
      s = tok["o", 16] / tok["o", 1]
      printf "ours 16 / ours 1 = %.2f× (goal ≥ 3×: %s)", s, (s >= 3 ? "met" : "not met")
      if (tok["l", 16] > 0) {
        v = tok["o", 16] / tok["l", 16]
        printf "; ours 16 / llama.cpp 16 = %.2f× (goal ≥ 2×: %s)", v, (v >= 2 ? "met" : "not met")
      }
      if (tok["l", 1] > 0) printf "; llama.cpp 16 / llama.cpp 1 = %.2f×", tok["l", 16] / tok["l", 1]
      print ""
    }
    # Both servers use 2 threads on 2 cores: other load distorts the result (llama.cpp most, see the header).
    m = split(loads, ls, " "); busy = ""
    for (i = 1; i <= m; i++) { split(ls[i], kv, ":"); if (kv[2] + 0 > 10) busy = busy (busy == "" ? "" : ", ") ls[i] }
    if (busy != "") printf "\nWARNING: other processes kept the CPU busy before a server started (%s); not a comparable run.\n", busy
  }' $(ls "$dir/ours.md" "$dir/llamacpp.md" 2>/dev/null) | tee "$dir/side-by-side.md"
echo "(logs and raw tables: $dir)" >&2
