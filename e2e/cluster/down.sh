#!/usr/bin/env bash
# Stops only the processes `up.sh` started (by pid file) and removes their state: first the real node
# (node-down.sh: pods, kubelet, containerd, kube-proxy and every change on the host), then the control plane;
# finally checks that the node left nothing behind (node-check-clean.sh). Exits 1 when something is left or
# the network guard dropped a packet.
set -uo pipefail
. "$(cd "$(dirname "$0")" && pwd)/env.sh"
say_as=cluster-down
. "$here/lib.sh"
. "$here/node-lib.sh"
rc=0
node_ran=0
{ [ -f "$HOST_BASELINE" ] || [ -d "$NODE_DIR" ]; } && node_ran=1
pids=$(cat "$E2E_STATE"/pids/*.pid 2>/dev/null)
bash "$here/node-down.sh" || rc=1
if [ -d "$E2E_STATE/pids" ]; then
  # Reverse start order: node agents first, etcd last.
  for c in kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do stop_component "$c"; done
fi
if [ -e "$E2E_STATE" ]; then
  if awk -v d="$E2E_STATE/" 'index($5, d) == 1' /proc/self/mountinfo | grep -q .; then
    say "mounts are left under $E2E_STATE: not removing it"; rc=1
  else
    rm -rf "$E2E_STATE"
    say "stopped and removed $E2E_STATE"
  fi
else
  say "no cluster state in $E2E_STATE"
fi
# Stopped processes count as gone once they exit; wait (briefly) until their parent has reaped them too.
for _ in $(seq 1 50); do
  left=0; for p in $pids; do kill -0 "$p" 2>/dev/null && left=1; done
  [ "$left" = 0 ] && break
  sleep 0.1
done
if [ "$node_ran" = 1 ] || [ "$E2E_REAL_NODE_ON" = 1 ]; then
  if bash "$here/node-check-clean.sh"; then [ "$rc" = 0 ] && retire_host_baseline; else rc=1; fi
fi
exit $rc
