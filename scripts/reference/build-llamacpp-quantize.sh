#!/usr/bin/env bash
# Builds llama.cpp's own quantizer, `llama-quantize` (only that target), from the llama.cpp tree vendored in
# the llama-cpp-python 0.3.36 sdist, into $LLAMA_OP_CACHE/llamacpp/quantize-build-<version> (outside the repo;
# nothing of it is committed). `make_models.py --only llamacpp` runs it to write SmolLM2 in llama.cpp's presets
# (Q4_K_M, Q6_K, …) for the tests. The flags are the ones the golden files' llama-cpp-python was built with
# (AVX2/FMA/F16C, not native), so both produce the same bytes (checked: equal SHA-256 for every preset).
# Idempotent; prints the binary's path on stdout, everything else goes to stderr and build.log.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version=0.3.36
cache="${LLAMA_OP_CACHE:-$HOME/.cache/llama-operator}/llamacpp"
build="$cache/quantize-build-$version"
bin="$build/bin/llama-quantize"
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
echo "==> building llama.cpp llama-quantize ($version, -j$jobs) in $build (log: $log)" >&2
start=$(date +%s)
{
  cmake -S "$src" -B "$build" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DBUILD_SHARED_LIBS=OFF
  cmake --build "$build" --target llama-quantize -j "$jobs"
} >"$log" 2>&1 || {
  tail -n 40 "$log" >&2
  echo "build failed; full log: $log" >&2
  exit 1
}
echo "built llama-quantize in $(($(date +%s) - start)) s" >&2
test -x "$bin" || { echo "no binary at $bin" >&2; exit 1; }
echo "$bin"
