#!/usr/bin/env bash
# Restarts the local kube-apiserver (for the e2e disruption tests): stops it by its pid file (SIGTERM, SIGKILL
# after 2 s), keeps it down for `$1` seconds (default 0), starts it again with exactly up.sh's arguments
# (start_apiserver in lib.sh) and waits for /readyz. etcd and everything else keep running.
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/env.sh"
say_as=restart-apiserver
. "$here/lib.sh"
down_for="${1:-0}"
alive kube-apiserver || { say "no running kube-apiserver of the local cluster in $E2E_STATE"; exit 1; }
start=$(date +%s%3N)
# It stops listening at once on SIGTERM, but the v1.35 binary then lingers for more than 5 s: 2 s of grace.
stop_component kube-apiserver 2
ms=$(( $(date +%s%3N) - start ))
say "stopped kube-apiserver in $((ms / 1000)).$(( (ms % 1000) / 100 ))s; starting it again in ${down_for}s"
sleep "$down_for"
start_apiserver
wait_until "kube-apiserver /readyz" 90 api_ready
ms=$(( $(date +%s%3N) - start ))
say "kube-apiserver ready again after $((ms / 1000)).$(( (ms % 1000) / 100 ))s (pid $(cat "$E2E_STATE/pids/kube-apiserver.pid"))"
