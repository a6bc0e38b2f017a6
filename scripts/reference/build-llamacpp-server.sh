#!/usr/bin/env bash
# Builds llama.cpp's own `llama-server` (only that target) from the llama.cpp tree vendored in the
# llama-cpp-python 0.3.36 sdist (scripts/reference/fetch-llamacpp-sdist.sh), for benchmarking only: the build
# lives in $LLAMA_OP_CACHE/llamacpp/server-build-<version>, outside the repo, and nothing of it is committed.
#
# -DGGML_NATIVE=ON: llama.cpp compiles for every ISA this CPU has (AVX-512 VNNI included), as our server
# detects at run time: the fairest comparison. Release, no CURL/OpenSSL, no web UI (no downloads at build).
# Idempotent: skips the build when the binary exists. cmake/ninja come from PATH, else from a small pip venv in
# the cache. Prints the binary's path on stdout; everything else goes to stderr and to build.log.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version=0.3.36
cache="${LLAMA_OP_CACHE:-$HOME/.cache/llama-operator}/llamacpp"
build="$cache/server-build-$version"
bin="$build/bin/llama-server"
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

src="$(bash "$here/fetch-llamacpp-sdist.sh")"
. "$here/llamacpp-cmake.sh"

mkdir -p "$build"
log="$build/build.log"
jobs="${LLAMA_OP_BUILD_JOBS:-$(nproc)}"
echo "==> building llama.cpp llama-server ($version, GGML_NATIVE=ON, -j$jobs) in $build (log: $log)" >&2
start=$(date +%s)
{
  nice -n 10 cmake -S "$src" -B "$build" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
    -DBUILD_SHARED_LIBS=OFF
  nice -n 10 cmake --build "$build" --target llama-server -j "$jobs"
} >"$log" 2>&1 || {
  tail -n 40 "$log" >&2
  echo "build failed; full log: $log" >&2
  exit 1
}
secs=$(($(date +%s) - start))
echo "$(date -u +%FT%TZ) built llama-server in ${secs}s (-j$jobs, nproc $(nproc), load $(cut -d' ' -f1-3 /proc/loadavg))" \
  | tee -a "$cache/server-build-times.log" >&2
test -x "$bin" || { echo "no binary at $bin" >&2; exit 1; }
echo "$bin"
