#!/usr/bin/env bash
# Installs NVIDIA's CUDA compiler (nvcc, its crt headers, NVVM, the runtime headers and CCCL) from PyPI wheels into the
# cache, once per version, and prints the CUDA_HOME to build against. No GPU and no driver needed: this is for
# compile-checking the `cuda` feature (candle-kernels runs nvcc at build time). 13.4.92 throughout: 13.5 is too
# new for cudarc 0.19.
#
# `cuda-toolkit.sh nvrtc` instead installs NVRTC alone (its own cache directory) and prints the path of libnvrtc:
# scripts/nvrtc-check.py compiles the server's run-time kernels with it, as the server does on a GPU.
set -euo pipefail
version=13.4.92
cccl=13.3.5.0.6 # CCCL (libcu++: <nv/target>, which cuda_fp16.h includes) is versioned on its own
cache="${LLAMA_OP_CACHE:-$HOME/.cache/llama-operator}"
# Installs PyPI wheels into a venv at DIR, once (DIR/.complete marks a finished install; a partial one is redone).
install_wheels() {
  local dir=$1 what=$2
  shift 2
  [ -f "$dir/.complete" ] && return 0
  echo "cuda-toolkit: installing $what from PyPI wheels into $dir" >&2
  rm -rf "$dir.tmp"
  mkdir -p "$dir.tmp"
  python3 -m venv "$dir.tmp/venv" >&2
  # venvs are not relocatable, but nothing here runs the venv's python: only the files under nvidia/cu13.
  "$dir.tmp/venv/bin/pip" install --quiet --disable-pip-version-check "$@" >&2
  rm -rf "$dir"
  mv "$dir.tmp" "$dir"
  touch "$dir/.complete"
}

if [ "${1:-}" = nvrtc ]; then
  dir="$cache/nvrtc-$version"
  lib="$dir/venv/lib/python3.11/site-packages/nvidia/cu13/lib/libnvrtc.so.13"
  [ -f "$lib" ] || rm -f "$dir/.complete"
  install_wheels "$dir" "NVRTC $version" "nvidia-cuda-nvrtc==$version"
  [ -f "$lib" ] || { echo "cuda-toolkit: no libnvrtc at $lib" >&2; exit 1; }
  echo "$lib"
  exit 0
fi
dir="$cache/cuda-$version-cccl-$cccl"
home="$dir/venv/lib/python3.11/site-packages/nvidia/cu13"
[ -x "$home/bin/nvcc" ] || rm -f "$dir/.complete"
install_wheels "$dir" "nvcc $version" \
  "nvidia-cuda-nvcc==$version" "nvidia-cuda-crt==$version" "nvidia-nvvm==$version" \
  "nvidia-cuda-runtime==$version" "nvidia-cuda-cccl==$cccl"
[ -x "$home/bin/nvcc" ] || { echo "cuda-toolkit: no nvcc at $home/bin/nvcc" >&2; exit 1; }
echo "$home"
