#!/usr/bin/env bash
# The engine's GPU check, in two halves: one prepared bundle, one run on a machine with an NVIDIA GPU.
#
#   scripts/gpu-check.sh bundle [DIR]   here (no GPU needed): builds llama-server and the engine_device test
#                                       with `--features cuda` against CUDA 13.0 from NVIDIA's PyPI wheels,
#                                       strips and packs them with the tiny test models into DIR
#                                       (default gpu-bundle/, git-ignored; about 30 MB).
#   scripts/gpu-check.sh run [DIR]      on the GPU machine (no Rust, no internet): runs the engine tests on
#                                       cuda (device vs CPU logits per weight type, 16-sequence batch
#                                       invariance, CUDA attention kernel vs the portable path) and `bench` on
#                                       the GPU and the CPU; writes one report, $OUT/gpu-report.txt (else
#                                       DIR/gpu-report.txt).
#
# The llama.cpp goldens (tests/engine_golden.rs) need SmolLM2 itself (98 MB as Q4_1, 270 MB as F16), more than
# the 64 MiB a device run may carry: the bundle has the tiny test models only. Where SmolLM2 can be had, run the
# golden test binary with LLAMA_TEST_DEVICE=cuda (it is device-aware).
#
# Why CUDA 13.0 and not the 13.4 `make cuda-check` uses: candle's kernels ship as PTX, which the driver
# compiles at load time, and a CUDA 13.0 driver (the lent GPU machines') refuses PTX from a newer nvcc. Our own
# kernels are compiled on the GPU machine by its own NVRTC. candle links the CUDA libraries dynamically
# (cudarc's dynamic-linking), so the link needs libcuda: a stub with every driver symbol the binary uses is
# generated from cudarc's compiled bindings (it returns CUDA_ERROR_UNKNOWN); the real one comes with the driver.
#
# GPU_CHECK_DEVICE=cpu runs the `run` half on the CPU, the same steps and report, to check this script on a
# machine without a GPU: with the CUDA bundle (LD_LIBRARY_PATH naming the link stub and the wheels' libraries),
# or with a CPU-only one (GPU_CHECK_FEATURES= bundle).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${LLAMA_OP_CACHE:-$HOME/.cache/llama-operator}"
mode="${1:-}"
dir="${2:-$root/gpu-bundle}"
cuda=13.0.88
say() { echo "gpu-check: $*" >&2; }

toolchain() { # CUDA 13.0 compiler and the libraries the link needs, from PyPI wheels, cached
  local t="$cache/cuda-$cuda-link"
  if [ ! -f "$t/.complete" ]; then
    say "installing CUDA $cuda (nvcc, cuBLAS, cuRAND, NVRTC) from PyPI wheels into $t"
    rm -rf "$t.tmp" && mkdir -p "$t.tmp"
    python3 -m venv "$t.tmp/venv" >&2
    "$t.tmp/venv/bin/pip" install --quiet --disable-pip-version-check \
      "nvidia-cuda-nvcc==$cuda" "nvidia-cuda-crt==$cuda" "nvidia-nvvm==$cuda" "nvidia-cuda-runtime==13.0.96" \
      "nvidia-cuda-cccl==13.0.85" "nvidia-cuda-nvrtc==$cuda" "nvidia-cublas==13.0.2.14" \
      "nvidia-curand==10.4.0.35" >&2
    rm -rf "$t" && mv "$t.tmp" "$t" && touch "$t/.complete"
  fi
  echo "$t/venv/lib/python3.11/site-packages/nvidia/cu13"
}

bundle() {
  local features="${GPU_CHECK_FEATURES-cuda}" home link
  local target="$cache/target-gpu-check"
  [ -n "$features" ] || target="$cache/target-gpu-check-cpu"
  export CARGO_TARGET_DIR="$target"
  local cargo_features=()
  if [ -n "$features" ]; then
    home=$(toolchain)
    link="$target/cuda-link"
    mkdir -p "$link"
    # -lcublas etc. need unversioned names; the wheels ship only the sonames.
    local l so
    for l in cublas cublasLt curand nvrtc cudart; do
      for so in "$home/lib/lib$l.so."[0-9]*; do
        [[ "$so" =~ lib$l\.so\.[0-9]+$ ]] && ln -sf "$so" "$link/lib$l.so"
      done
      [ -e "$link/lib$l.so" ] || { say "no lib$l.so.N in $home/lib"; exit 1; }
    done
    export CUDA_HOME="$home" CUDA_PATH="$home" PATH="$home/bin:$PATH" CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000
    export RUSTFLAGS="-L native=$link -C link-arg=-Wl,-rpath-link,$home/lib"
    cargo_features=(--features "$features")
    if [ ! -f "$link/libcuda.so" ]; then
      # First pass: everything but the final link; then the stub from the driver symbols cudarc references.
      say "building cudarc's bindings to find the driver symbols the binary needs"
      cargo build --release --locked -p llama-server "${cargo_features[@]}" >&2 2>"$target/first-link.log" || true
      local syms
      syms=$(for r in "$target"/release/deps/libcudarc-*.rlib; do nm -u "$r" 2>/dev/null; done |
        awk '{print $NF}' | grep -E '^cu[A-Z][A-Za-z0-9_]*$' | sort -u)
      [ -n "$syms" ] || { say "no driver symbols found in cudarc's rlib (see $target/first-link.log)"; exit 1; }
      { echo "/* Link-time stand-in for the NVIDIA driver (libcuda.so.1): every call fails with CUDA_ERROR_UNKNOWN. */"
        for s in $syms; do echo "int $s(void) { return 999; }"; done; } >"$link/libcuda.c"
      gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link/libcuda.so" "$link/libcuda.c"
      say "stub libcuda.so with $(echo "$syms" | wc -l) driver symbols"
    fi
  fi
  say "building llama-server ${features:+with --features $features }(release)"
  cargo build --release --locked -p llama-server "${cargo_features[@]}" >&2
  local test_bin
  test_bin=$(cargo test --release --locked -p llama-server "${cargo_features[@]}" --test engine_device --no-run \
    --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "engine_device" and m.get("executable"):
        print(m["executable"])')
  [ -x "$test_bin" ] || { say "no engine_device test binary"; exit 1; }
  rm -rf "$dir" && mkdir -p "$dir/models"
  cp "$target/release/llama-server" "$dir/llama-server"
  cp "$test_bin" "$dir/engine_device"
  strip "$dir/llama-server" "$dir/engine_device"
  local venv model
  venv=$(bash "$root/scripts/pyenv.sh")
  model=$(bash "$root/scripts/fetch-model.sh")
  "$venv/bin/python" "$root/scripts/reference/make_models.py" --dir "$(dirname "$model")" --only tiny >&2
  cp "$(dirname "$model")"/tiny-*.gguf "$dir/models/"
  echo "${features:-cpu}" >"$dir/features"
  xz -T0 -6 "$dir/llama-server" "$dir/engine_device"
  say "bundle in $dir: $(du -sh "$dir" | cut -f1): $(cd "$dir" && echo *)"
}

run() {
  local device="${GPU_CHECK_DEVICE:-cuda}" out="${OUT:-$dir}" report work
  report="$out/gpu-report.txt"
  work=$(mktemp -d)
  # shellcheck disable=SC2064 # expand now: `work` is local to this function
  trap "rm -rf '$work'" EXIT
  mkdir -p "$out"
  for b in llama-server engine_device; do
    if [ -f "$dir/$b.xz" ]; then xz -dc "$dir/$b.xz" >"$work/$b"; else cp "$dir/$b" "$work/$b"; fi
    chmod +x "$work/$b"
  done
  # The CUDA libraries of the machine's Python environment (nvidia-* wheels), then the driver's own.
  local libs
  libs=$(python3 - <<'EOF' 2>/dev/null || true
import glob, os, site
dirs = set()
for base in site.getsitepackages() + [site.getusersitepackages()]:
    for so in glob.glob(os.path.join(base, "nvidia", "**", "lib", "*.so*"), recursive=True):
        dirs.add(os.path.dirname(so))
print(":".join(sorted(dirs)))
EOF
)
  export LD_LIBRARY_PATH="${libs:+$libs:}${LD_LIBRARY_PATH:-}"
  export LLAMA_TEST_DEVICE="$device" LLAMA_OP_TEST_MODELS="$dir/models" CARGO_MANIFEST_DIR="$root/server"
  {
    echo "# llama-operator GPU check, $(date -u +%FT%TZ), device $device, bundle built with: $(cat "$dir/features")"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    echo
    echo "## engine tests on $device (tests/engine_device.rs)"
    local ignored=(--include-ignored)
    [ "$device" = cpu ] && ignored=(--skip the_cuda_attention_kernel)
    "$work/engine_device" "${ignored[@]}" --nocapture --test-threads=1 2>&1 | grep -vE '^\s*$|^running ' || echo "FAILED: engine_device"
    echo
    echo "## bench: prefill / decode / batched decode tok/s (llama-server bench, tiny Q4_1 model)"
    for d in "$device" cpu; do
      echo "### --device $d"
      "$work/llama-server" bench --device "$d" --models "$dir/models/tiny-q4_1.gguf" --threads 2 --prompt-tokens 48 \
        --gen-tokens 16 --batch 1,16 2>&1 | tail -15 || echo "FAILED: bench on $d"
    done
    echo
    echo "## bad input: a device that is not there"
    "$work/llama-server" serve --device cuda:7 --model "$dir/models/tiny-q4_1.gguf" --port 0 2>&1 | tail -1 || true
  } >"$report" 2>&1
  cat "$report"
  grep -q "FAILED" "$report" && { say "some checks failed: see $report"; return 1; }
  say "report in $report"
}

case "$mode" in
  bundle) bundle ;;
  run) run ;;
  *) sed -n '2,26p' "$0" >&2; exit 2 ;;
esac
