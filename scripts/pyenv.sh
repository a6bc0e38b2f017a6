#!/usr/bin/env bash
# Creates (once) a virtualenv keyed by the hash of scripts/requirements.txt and prints its path.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${LLAMA_OP_CACHE:-$HOME/.cache/llama-operator}"
key=$(sha256sum "$root/scripts/requirements.txt" | cut -c1-12)
venv="$cache/venv-$key"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
  echo "==> creating python env $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r "$root/scripts/requirements.txt" >&2
  touch "$venv/.complete"
fi
echo "$venv"
