#!/usr/bin/env bash
# Coverage-guided fuzzing of the server's parsers (server/fuzz): libFuzzer through libfuzzer-sys, built on
# stable Rust with LLVM SanitizerCoverage (no nightly, no cargo-fuzz). Each target runs FUZZ_SECONDS
# (default 30) from the committed seeds in server/fuzz/corpus/<target> plus the inputs earlier runs found
# (kept in $LLAMA_OP_CACHE/fuzz/corpus/<target>). Any crash, panic, assertion, leak of memory past 2 GiB or
# input slower than 10 s fails the run and leaves the input under $LLAMA_OP_CACHE/fuzz/artifacts/.
#
#   bash scripts/fuzz.sh [target ...]      targets: gguf request detok_stop (default: all)
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh request
#   bash scripts/fuzz.sh --replay FILE TARGET   run one input (a reproducer) through a target
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${LLAMA_OP_CACHE:-$HOME/.cache/llama-operator}"
seconds="${FUZZ_SECONDS:-30}"
triple="$(rustc -vV | sed -n 's/^host: //p')"
export CARGO_TARGET_DIR="$cache/fuzz-target"
# What cargo-fuzz passes for `--sanitizer none`, all stable options. Build scripts stay uninstrumented
# because the flags apply only to the explicit --target.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions"
export LLAMA_OP_MODEL="${LLAMA_OP_MODEL:-$(bash scripts/fetch-model.sh)}"
echo "==> building the fuzz targets (instrumented, cached in $CARGO_TARGET_DIR)" >&2
(cd server/fuzz && cargo build --release --locked --target "$triple" --bins) >&2
bin="$CARGO_TARGET_DIR/$triple/release"
if [ "${1:-}" = "--replay" ]; then
  exec "$bin/$3" "$2"
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf request detok_stop)
failed=()
for t in "${targets[@]}"; do
  if [ ! -d "server/fuzz/corpus/$t" ]; then
    echo "FAILED: no seed corpus server/fuzz/corpus/$t (is it committed? .gitignore drops *.gguf names)" >&2
    failed+=("$t")
    continue
  fi
  work="$cache/fuzz/corpus/$t" art="$cache/fuzz/artifacts/$t/"
  mkdir -p "$work" "$art"
  dict=()
  [ -f "server/fuzz/$t.dict" ] && dict=(-dict="server/fuzz/$t.dict")
  echo "==> fuzzing $t for ${seconds} s" >&2
  # New inputs go to the first corpus directory (the cache); the committed seeds are read only.
  if "$bin/$t" "$work" "server/fuzz/corpus/$t" "${dict[@]}" -max_total_time="$seconds" -timeout=10 \
      -rss_limit_mb=2048 -max_len=65536 -artifact_prefix="$art" -print_final_stats=1 >"$cache/fuzz/$t.log" 2>&1; then
    grep -E "^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::new_units_added)" "$cache/fuzz/$t.log" >&2 || true
  else
    echo "FAILED: fuzz target $t found an input it mishandles; the log ends:" >&2
    tail -40 "$cache/fuzz/$t.log" >&2
    echo "reproduce: bash scripts/fuzz.sh --replay $(ls -t "$art" | head -1 | sed "s|^|$art|") $t" >&2
    failed+=("$t")
  fi
done
[ ${#failed[@]} -eq 0 ] || { echo "fuzzing failed: ${failed[*]}" >&2; exit 1; }
