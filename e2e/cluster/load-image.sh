#!/usr/bin/env bash
# Imports OCI (or docker-save) image archives into the real node's containerd, namespace k8s.io, so pods on
# the node run them with imagePullPolicy IfNotPresent or Never (the node pulls nothing).
#   bash e2e/cluster/load-image.sh ARCHIVE.tar...
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/env.sh"
say_as=load-image
. "$here/lib.sh"
. "$here/node-lib.sh"
[ $# -gt 0 ] || { echo "usage: $0 ARCHIVE.tar..." >&2; exit 2; }
if ! alive containerd || ! ctrd version >/dev/null 2>&1; then
  say "the real node is not running (no containerd on $CTRD_SOCK): start it with e2e/cluster/up.sh (E2E_REAL_NODE must not be 0)"
  exit 1
fi
for a in "$@"; do
  [ -f "$a" ] || { say "no such archive: $a"; exit 1; }
  start=$(date +%s%3N)
  out=$(ctrd images import "$a" 2>&1) || { say "importing $a failed: $out"; exit 1; }
  names=$(printf '%s\n' "$out" | sed -n 's/^unpacking \([^ ]*\) .*/\1/p' | tr '\n' ' ')
  [ -n "$names" ] || names="$a"
  say "imported ${names% } in $(node_ms "$start")"
done
