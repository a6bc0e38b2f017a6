#!/usr/bin/env bash
# Checks that no trace of the real node is left on the host and names each one it finds: process, pid file,
# mount, network namespace, link, address or route, iptables/nft rule (KUBE-*, CNI-*, our guard), sysctl that
# differs from its value before the node first started, directory the node created, kubepods cgroup, listening
# port. Exits 1 if anything is left. down.sh runs it last; e2e/run.sh after its teardown.
set -uo pipefail
. "$(cd "$(dirname "$0")" && pwd)/env.sh"
say_as=node-check-clean
. "$here/lib.sh"
. "$here/node-lib.sh"
found=()
left() { found+=("$1"); }

while read -r line; do [ -n "$line" ] && left "process $line"; done < <(node_processes)
for c in $E2E_NODE_COMPONENTS; do [ -f "$E2E_STATE/pids/$c.pid" ] && left "pid file $E2E_STATE/pids/$c.pid"; done
while read -r m; do [ -n "$m" ] && left "mount $m"; done < <(node_mounts)
while read -r n; do [ -n "$n" ] && left "network namespace $n"; done < <(node_netns)
while read -r l; do [ -n "$l" ] && left "link $l"; done < <(node_links)
if [ -n "$(baseline_file)" ]; then
  known=" $(baseline link | tr '\n' ' ') "
  while read -r l; do
    case "$known" in *" $l "*) ;; *) case "$l" in veth*|cni*|"$POD_BRIDGE"|"$NODE_BRIDGE") left "link $l" ;; esac ;; esac
  done < <(ip -o link show | awk -F': ' '{sub(/@.*/, "", $2); print $2}')
fi
while read -r a; do [ -n "$a" ] && left "address/route $a"; done < <(
  { ip -4 -o addr show; ip -4 route show; } | grep -F -e "$NODE_IP" -e "${POD_CIDR%.*}.")
while read -r r; do [ -n "$r" ] && left "rule $r"; done < <(node_rules)
while read -r name value; do
  [ -z "$name" ] && continue
  cur=$(sysctl -n "$name" 2>/dev/null)
  [ "$cur" = "$value" ] || left "sysctl $name = $cur (was $value before the node started)"
done < <(baseline sysctl)
for d in $(baseline absent) "$NODE_DIR"; do
  [ -e "$d" ] || continue
  if [ "$d" = /run/containerd ] && [ -n "$(foreign_containerd)" ]; then continue; fi # someone else's containerd
  left "directory $d (holding: $(cd "$d" 2>/dev/null && find . -mindepth 1 -maxdepth 3 | head -8 | tr '\n' ' '))"
done
while read -r c; do [ -n "$c" ] && left "cgroup $c"; done < <(node_cgroups)
ct=$(node_conntrack); [ "$ct" = 0 ] || left "$ct conntrack entries of the cluster's address ranges"
for p in $E2E_NODE_IP_PORTS $KUBELET_HEALTHZ_PORT $KUBE_PROXY_HEALTHZ_PORT $KUBE_PROXY_METRICS_PORT $CONTAINERD_STREAM_PORT; do
  ss -Hltn "sport = :$p" 2>/dev/null | grep -q . && left "listening port $p"
done

if [ "${#found[@]}" = 0 ]; then
  say "the real node left nothing behind"
  exit 0
fi
for f in "${found[@]}"; do say "left behind: $f"; done
exit 1
