# Sourced by the llama.cpp build scripts: puts cmake and ninja on PATH (from PATH, else from a small pip venv
# in $cache/venv-cmake). Expects `cache` to be set by the caller.
if ! command -v cmake >/dev/null || ! command -v ninja >/dev/null; then
  tools="$cache/venv-cmake"
  if [ ! -x "$tools/bin/cmake" ] || [ ! -x "$tools/bin/ninja" ]; then
    echo "==> installing cmake and ninja from PyPI into $tools" >&2
    python3 -m venv "$tools" >&2
    "$tools/bin/pip" install -q cmake ninja >&2
  fi
  export PATH="$tools/bin:$PATH"
fi
