#!/usr/bin/env bash
# Stops only the processes `up.sh` started (by pid file) and removes their state.
set -uo pipefail
. "$(cd "$(dirname "$0")" && pwd)/env.sh"
[ -d "$E2E_STATE/pids" ] || { echo "cluster-down: no cluster state in $E2E_STATE" >&2; exit 0; }
# Reverse start order: node agents first, etcd last.
for c in kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do
  f="$E2E_STATE/pids/$c.pid"
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$f"
done
rm -rf "$E2E_STATE"
echo "cluster-down: stopped and removed $E2E_STATE" >&2
