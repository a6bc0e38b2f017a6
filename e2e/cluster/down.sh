#!/usr/bin/env bash
# Stops only the processes `up.sh` started (by pid file) and removes their state.
set -uo pipefail
. "$(cd "$(dirname "$0")" && pwd)/env.sh"
say_as=cluster-down
. "$here/lib.sh"
[ -d "$E2E_STATE/pids" ] || { say "no cluster state in $E2E_STATE"; exit 0; }
# Reverse start order: node agents first, etcd last.
for c in kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do stop_component "$c"; done
rm -rf "$E2E_STATE"
say "stopped and removed $E2E_STATE"
