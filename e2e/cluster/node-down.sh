#!/usr/bin/env bash
# Stops the real node and undoes what node-up.sh changed on the host: pods (through the CRI, then by force),
# kubelet, kube-proxy (and its rules), containerd, the device plugin, forwarder and model server; mounts, network
# namespaces, links, iptables/nft chains (KUBE-*, CNI-*, our guard), sysctls, kubepods cgroups and the
# directories the node created outside our own. Safe after a partial start and when no node ever ran. Called
# by down.sh before the control plane stops. Exits 1 when the network guard dropped a packet.
set -uo pipefail
. "$(cd "$(dirname "$0")" && pwd)/env.sh"
say_as=node-down
. "$here/lib.sh"
. "$here/node-lib.sh"
start=$(date +%s%3N)
rc=0
if [ ! -d "$NODE_DIR" ] && [ ! -f "$HOST_BASELINE" ] && ! guard_drops >/dev/null 2>&1 && [ -z "$(node_links)" ] &&
  [ -z "$(node_processes)" ] && [ -z "$(node_mounts)" ]; then
  exit 0 # no node ran here since the last clean teardown
fi

if drops=$(guard_drops); then
  if [ "$drops" = 0 ]; then say "network guard: 0 packets dropped"
  else say "NETWORK GUARD dropped $drops packet(s) from/to pod, service or node addresses on a real interface"; rc=1; fi
fi

for c in kube-proxy fake-gpu-plugin; do stop_component "$c"; done
for c in model-server apiserver-forwarder; do stop_group "$c"; done
stop_component kubelet 10
# Pods: through the CRI while containerd runs, so the runtime tears down their network and mounts.
if alive containerd && [ -S "$CTRD_SOCK" ]; then
  helper=$(ls -t "$NODE_CACHE"/llama-node-helper-* 2>/dev/null | head -1)
  if [ -n "$helper" ]; then
    timeout 120 "$helper" cri-reset "unix://$CTRD_SOCK" >>"$E2E_STATE/logs/containerd.log" 2>&1 ||
      say "the CRI reset failed (see $E2E_STATE/logs/containerd.log); removing pods by force"
  fi
  for t in $(ctrd tasks ls -q 2>/dev/null); do ctrd tasks kill -s SIGKILL "$t" >/dev/null 2>&1; done
fi
stop_component containerd 10
# Whatever survived: shims of our containerd, processes in kubepods cgroups, anything running from our dirs.
for _ in 1 2 3; do
  pids=$(node_processes | awk '{print $1}')
  [ -z "$pids" ] && break
  kill -KILL $pids 2>/dev/null
  sleep 0.3
done
[ -x "$K8S_BIN/kube-proxy" ] && "$K8S_BIN/kube-proxy" --cleanup >/dev/null 2>&1

for _ in 1 2 3 4 5; do
  mps=$(node_mounts)
  [ -z "$mps" ] && break
  for m in $mps; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
done
for n in $(node_netns); do umount "/run/netns/$n" 2>/dev/null; ip netns delete "$n" 2>/dev/null; done
for l in $(node_links); do ip link delete "$l" 2>/dev/null; done

guard_remove
for r in $(guard_ranges); do # connection tracking entries of pods and services
  for sel in -s -d --reply-src; do conntrack -D "$sel" "$r" >/dev/null 2>&1; done
done
if [ "$(baseline kube-rules)" = "" ] || [ "$(baseline kube-rules)" = 0 ]; then
  for ipt in iptables ip6tables iptables-legacy ip6tables-legacy; do
    command -v "$ipt-save" >/dev/null 2>&1 || continue
    for t in filter nat mangle raw; do
      "$ipt-save" -t "$t" 2>/dev/null | grep -E '^-A [A-Z]+ .*-j (KUBE-|CNI-)' | grep -vE '^-A (KUBE-|CNI-)' |
        sed 's/^-A /-D /' | while read -r rule; do eval "$ipt -t $t $rule" 2>/dev/null; done
      chains=$("$ipt-save" -t "$t" 2>/dev/null | sed -n 's/^:\(\(KUBE\|CNI\)-[^ ]*\) .*/\1/p')
      for ch in $chains; do "$ipt" -t "$t" -F "$ch" 2>/dev/null; done
      for ch in $chains; do "$ipt" -t "$t" -X "$ch" 2>/dev/null; done
    done
  done
  for fam in ip ip6; do nft delete table "$fam" kube-proxy 2>/dev/null; done
  [ -n "$(baseline_file)" ] && nft_unused_tables | while read -r fam name; do nft delete table "$fam" "$name"; done
else
  say "the host had KUBE-* rules before the node started: leaving them (kube-proxy --cleanup ran)"
fi

baseline sysctl | while read -r name value; do
  [ "$(sysctl -n "$name" 2>/dev/null)" = "$value" ] || sysctl -qw "$name=$value" >/dev/null 2>&1 ||
    say "could not restore $name=$value"
done

for _ in 1 2 3 4 5; do
  cgs=$(node_cgroups)
  [ -z "$cgs" ] && break
  pids=$(node_cgroup_pids); [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
  for d in $cgs; do find "$d" -depth -type d -exec rmdir {} + 2>/dev/null; done
  [ -z "$(node_cgroups)" ] || sleep 0.3
done

# The directories the node created. Our containerd is gone by now, but a killed process stays a zombie until
# its reaper collects it (this VM's init can take a while), so only a live containerd that is not ours keeps
# /run/containerd (its shims' sockets live there whatever the state dir). A dying shim may still write a socket
# into it while we remove it: try again until it stays gone.
for d in $(baseline absent); do
  [ "$d" = /run/containerd ] && [ -n "$(foreign_containerd)" ] && { say "keeping $d: a containerd that is not ours runs"; continue; }
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    [ -e "$d" ] || break
    [ -n "$(awk -v d="$d" 'index($5, d "/") == 1 || $5 == d' /proc/self/mountinfo)" ] && break
    rm -rf --one-file-system "$d" 2>/dev/null
    sleep 0.2
  done
done
if [ -n "$(node_mounts)" ]; then say "mounts left under the node's dirs: $(node_mounts | tr '\n' ' ')"; rc=1
else rm -rf --one-file-system "$NODE_DIR"; fi
rm -f "$E2E_STATE/model-server-url"
say "node stopped and cleaned up in $(node_ms "$start")"
exit $rc
