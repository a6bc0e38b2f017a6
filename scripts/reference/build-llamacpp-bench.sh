#!/usr/bin/env bash
# Builds llama.cpp's own `llama-bench` (only that target) natively (-DGGML_NATIVE=ON: the instructions this CPU
# has, AVX-512 VNNI included, as ours uses them) from the llama.cpp tree vendored in the llama-cpp-python 0.3.36
# sdist, into $LLAMA_OP_CACHE/llamacpp/bench-build-<version> (outside the repo). For issue 14's side-by-side
# engine figures (`llama-bench -m FILE -t 1,2 -p 128 -n 32 -r 2` against `llama-server bench` on the same files);
# never run by `make test`. Idempotent; prints the binary's path on stdout, the rest goes to stderr / build.log.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version=0.3.36
cache="${LLAMA_OP_CACHE:-$HOME/.cache/llama-operator}/llamacpp"
build="$cache/bench-build-$version"
bin="$build/bin/llama-bench"
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
src="$(bash "$here/fetch-llamacpp-sdist.sh")"
. "$here/llamacpp-cmake.sh"
rm -rf "$build"
mkdir -p "$build"
log="$build/build.log"
jobs="${LLAMA_OP_BUILD_JOBS:-$(nproc)}"
echo "==> building llama.cpp llama-bench ($version, native, -j$jobs) in $build (log: $log)" >&2
start=$(date +%s)
{
  cmake -S "$src" -B "$build" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DBUILD_SHARED_LIBS=OFF
  cmake --build "$build" --target llama-bench -j "$jobs"
} >"$log" 2>&1 || {
  tail -n 40 "$log" >&2
  echo "build failed; full log: $log" >&2
  exit 1
}
echo "built llama-bench in $(($(date +%s) - start)) s" >&2
test -x "$bin" || { echo "no binary at $bin" >&2; exit 1; }
echo "$bin"
