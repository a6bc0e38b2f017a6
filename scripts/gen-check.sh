#!/usr/bin/env bash
# Fails when generated files (CRDs, chart CRD copy, rendered manifests) differ from what the generators
# produce. Each generator registers itself here as it lands.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
check() { # check <description> <command...>: the command regenerates files in place
  local what="$1"; shift
  "$@"
  if ! git diff --quiet --exit-code -- crds charts manifests 2>/dev/null || [ -n "$(git ls-files --others --exclude-standard crds charts manifests)" ]; then
    echo "generated files are out of date ($what): run it and commit:" >&2
    git status --short -- crds charts manifests >&2
    status=1
  fi
}
if [ -f operator/src/bin/crdgen.rs ]; then
  check "cargo run -p llama-operator --bin crdgen" cargo run -q --locked -p llama-operator --bin crdgen
fi
if [ -x scripts/render-manifests.sh ]; then
  check "scripts/render-manifests.sh" bash scripts/render-manifests.sh
fi
[ "$status" = 0 ] && echo "generated files are in sync"
exit $status
