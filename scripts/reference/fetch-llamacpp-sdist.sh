#!/usr/bin/env bash
# Downloads (once) the llama-cpp-python 0.3.36 sdist from PyPI into $LLAMA_OP_CACHE/llamacpp, unpacks it
# and prints the path of its vendored llama.cpp tree (tokenizer test vocabularies live in models/).
set -euo pipefail
cache="${LLAMA_OP_CACHE:-$HOME/.cache/llama-operator}/llamacpp"
dir="$cache/llama_cpp_python-0.3.36"
if [ ! -f "$dir/vendor/llama.cpp/models/ggml-vocab-llama-bpe.gguf" ]; then
  echo "==> fetching the llama-cpp-python 0.3.36 sdist from PyPI (~77 MB)" >&2
  mkdir -p "$cache"
  pip download -q --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d "$cache" >&2
  tar -xzf "$cache/llama_cpp_python-0.3.36.tar.gz" -C "$cache"
fi
echo "$dir/vendor/llama.cpp"
