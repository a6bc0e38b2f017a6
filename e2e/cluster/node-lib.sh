# Shared by node-preflight.sh, node-up.sh, node-down.sh, node-check-clean.sh and load-image.sh (sourced after
# env.sh and lib.sh): where the real node keeps its state, what it changes on the host (recorded before the
# first start, undone by node-down.sh), the network guard, and the images and helper it builds.
NODE_DIR="$E2E_STATE/node"                      # everything of one node run; removed by node-down.sh
NODE_CACHE="$LLAMA_OP_CACHE/node"               # kept across runs: images, helper binary, host baseline
CTRD_ROOT="$NODE_DIR/containerd"
CTRD_STATE="$NODE_DIR/containerd-state"
CTRD_SOCK="$NODE_DIR/containerd.sock"
KUBELET_ROOT="$NODE_DIR/kubelet"
CNI_CONF_DIR="$NODE_DIR/cni/net.d"
CNI_DATA_DIR="$NODE_DIR/cni/ipam"
HOST_BASELINE="$NODE_CACHE/host-baseline"      # present while a node's host changes are not undone yet
GUARD_CHAIN="LLAMA-E2E-GUARD"
# sysctls the kubelet, the bridge plugin or kube-proxy may change: recorded at start, restored at teardown
NODE_SYSCTLS="kernel.panic kernel.panic_on_oops vm.overcommit_memory vm.panic_on_oom kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes net.ipv4.ip_forward net.ipv4.conf.all.forwarding net.ipv4.conf.default.forwarding
  net.ipv6.conf.all.forwarding net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables
  net.bridge.bridge-nf-call-ip6tables net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_timeout_established
  net.netfilter.nf_conntrack_tcp_timeout_close_wait"
# directories outside our own that the kubelet, containerd or the CNI plugins create (removed if they were absent)
NODE_HOST_DIRS="/var/lib/kubelet /run/containerd /var/lib/cni /etc/cni /usr/libexec/kubernetes /run/netns
  /var/log/pods /var/log/containers /opt/containerd /var/lib/containerd /etc/kubernetes /run/mount"
NODE_PY=python3
[ -x /usr/bin/python3 ] && NODE_PY=/usr/bin/python3

ctrd() { ctr --address "$CTRD_SOCK" --namespace k8s.io "$@"; }
kcn() { "$K8S_BIN/kubectl" --kubeconfig "$E2E_KUBECONFIG" "$@"; }
node_ms() { local ms=$(( $(date +%s%3N) - $1 )); echo "$((ms / 1000)).$(( (ms % 1000) / 100 ))s"; }

wait_for() { # wait_for <component> <what> <seconds> <command...>: wait_until that fails at once if the component exits
  local c="$1" what="$2" secs="$3"; shift 3
  local deadline=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    if ! alive "$c"; then
      say "$c exited while waiting for $what; last lines of $E2E_STATE/logs/$c.log:"; tail -15 "$E2E_STATE/logs/$c.log" >&2; exit 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      say "timed out waiting for $what; last lines of $E2E_STATE/logs/$c.log:"; tail -20 "$E2E_STATE/logs/$c.log" >&2; exit 1
    fi
    sleep 0.3
  done
}

stop_group() { # stop_group <name> [grace s]: like stop_component, but signals the whole process group (setsid)
  local f="$E2E_STATE/pids/$1.pid" pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if running "$pid"; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 $(( ${2:-5} * 10 ))); do running "$pid" || break; sleep 0.1; done
  fi
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$f"
}

# --- the host baseline ------------------------------------------------------------------------------------
record_host_baseline() { # once per clean host: an earlier node that was never torn down keeps its original
  [ -f "$HOST_BASELINE" ] && return 0
  mkdir -p "$NODE_CACHE"
  {
    local s d v
    for s in $NODE_SYSCTLS; do v=$(sysctl -n "$s" 2>/dev/null) && echo "sysctl $s $v"; done
    for d in $NODE_HOST_DIRS; do [ -e "$d" ] || echo "absent $d"; done
    ip -o link show | awk -F': ' '{sub(/@.*/, "", $2); print "link " $2}'
    ip netns list 2>/dev/null | awk '{print "netns " $1}'
    echo "kube-rules $( (iptables-save; ip6tables-save) 2>/dev/null | grep -c -- 'KUBE-')"
    nft list tables 2>/dev/null | awk '{print "nft-table " $2 " " $3}'
  } > "$HOST_BASELINE.part"
  mv "$HOST_BASELINE.part" "$HOST_BASELINE"
}
baseline_file() { # the active baseline, else the one of the last clean teardown; nothing if neither exists
  if [ -f "$HOST_BASELINE" ]; then echo "$HOST_BASELINE"; elif [ -f "$HOST_BASELINE.last" ]; then echo "$HOST_BASELINE.last"; fi
}
baseline() { # baseline <kind>: the recorded values of one kind (sysctl: "name value" lines)
  local f; f=$(baseline_file); [ -n "$f" ] || return 0
  sed -n "s/^$1 //p" "$f"
}
retire_host_baseline() { [ -f "$HOST_BASELINE" ] && mv "$HOST_BASELINE" "$HOST_BASELINE.last"; return 0; }

# --- the network guard: pod, service and node addresses never leave through a real interface ---------------
cidr_net() { # cidr_net A.B.C.D/N: the network of that prefix (10.244.0.1/17 -> 10.244.0.0/17)
  local ip=${1%/*} n=${1#*/} a b c d
  IFS=. read -r a b c d <<<"$ip"
  local v=$(( (a << 24 | b << 16 | c << 8 | d) & (0xffffffff << (32 - n)) & 0xffffffff ))
  echo "$((v >> 24 & 255)).$((v >> 16 & 255)).$((v >> 8 & 255)).$((v & 255))/$n"
}
guard_ranges() { # every address range of the cluster: pods (real and kwok), services, nodes (real and kwok)
  local r; for r in "$POD_CIDR" "$KWOK_POD_CIDR" "$SERVICE_CIDR" "$NODE_RANGE" "$KWOK_NODE_IP/32"; do cidr_net "$r"; done
}
node_routes_install() { # every cluster range not routed elsewhere ends on the node bridge: never on a real link
  # (a ClusterIP before kube-proxy programs it, an unknown pod IP, a kwok node). Lower priority than the pod
  # bridge's own route; the ClusterIPs' DNAT happens after this route lookup, so Services keep working.
  local r; for r in $(guard_ranges); do ip route replace "$r" dev "$NODE_BRIDGE" src "$NODE_IP" metric 1000; done
}
guard_install() { # in mangle POSTROUTING (after DNAT and rerouting: ClusterIP traffic shows its real way out)
  guard_remove
  iptables -t mangle -N "$GUARD_CHAIN"
  local i r
  for i in lo "$POD_BRIDGE" "$NODE_BRIDGE" "veth+"; do iptables -t mangle -A "$GUARD_CHAIN" -o "$i" -j RETURN; done
  for r in $(guard_ranges); do
    iptables -t mangle -A "$GUARD_CHAIN" -s "$r" -m comment --comment "llama-e2e: $r stays on this machine" -j DROP
    iptables -t mangle -A "$GUARD_CHAIN" -d "$r" -m comment --comment "llama-e2e: $r stays on this machine" -j DROP
  done
  iptables -t mangle -I POSTROUTING 1 -j "$GUARD_CHAIN"
}
guard_drops() { # prints how many packets the guard dropped (fails when it is not installed)
  iptables -t mangle -nvxL "$GUARD_CHAIN" 2>/dev/null | awk '$3 == "DROP" {n += $1; found = 1} END {if (!found) exit 1; print n + 0}'
}
guard_remove() {
  while iptables -t mangle -D POSTROUTING -j "$GUARD_CHAIN" 2>/dev/null; do :; done
  iptables -t mangle -F "$GUARD_CHAIN" 2>/dev/null || true
  iptables -t mangle -X "$GUARD_CHAIN" 2>/dev/null || true
}

# --- images and the helper (cached in $NODE_CACHE) ------------------------------------------------------------
pack_image() { # pack_image <args>: an OCI image archive by scripts/oci-image.py (no container engine)
  "$NODE_PY" "$here/../../scripts/oci-image.py" "$@" >/dev/null
}
pause_tag() { sha256sum "$here/node/pause.c" | cut -c1-12; }
pause_ref() { echo "llama-e2e.local/pause:$(pause_tag)"; }
pause_archive() { # prints the pause image archive; builds it once per version of pause.c
  local out; out="$NODE_CACHE/images/pause-$(pause_tag).tar"
  if [ ! -f "$out" ]; then
    mkdir -p "$NODE_CACHE/images"
    gcc -static -O2 -s -o "$NODE_CACHE/images/pause.bin" "$here/node/pause.c"
    pack_image --out "$out.part" --ref "$(pause_ref)" --file "$NODE_CACHE/images/pause.bin:/pause:0755" \
      --entrypoint '["/pause"]' --user 65535
    mv "$out.part" "$out" && rm -f "$NODE_CACHE/images/pause.bin"
  fi
  echo "$out"
}
busybox_archive() { # prints the $E2E_BUSYBOX_IMAGE archive (busybox-static with all its applets in /bin, /tmp)
  local ver out; ver=$(dpkg-query -W -f '${Version}' busybox-static 2>/dev/null | tr -c 'A-Za-z0-9.\n' _)
  out="$NODE_CACHE/images/busybox-${ver:-unknown}-applets.tar"
  if [ ! -f "$out" ]; then
    mkdir -p "$NODE_CACHE/images"
    local links=() a
    for a in $(/bin/busybox --list); do [ "$a" = busybox ] || links+=(--symlink "/bin/$a:busybox"); done
    pack_image --out "$out.part" --ref "$E2E_BUSYBOX_IMAGE" --file /bin/busybox:/bin/busybox:0755 \
      "${links[@]}" --dir /tmp:1777 --cmd '["/bin/sh"]'
    mv "$out.part" "$out"
  fi
  echo "$out"
}
helper_bin() { # prints the llama-node-helper binary (node/helper/main.go); built once per source and version
  local sum bin work kv
  sum=$( { cat "$here/node/helper/main.go"; echo "$K8S_VERSION"; } | sha256sum | cut -c1-12)
  bin="$NODE_CACHE/llama-node-helper-$sum"
  if [ ! -x "$bin" ]; then
    say "building the node helper (fake GPU device plugin, CRI reset) with Go"
    work="$NODE_CACHE/helper-build"
    kv="v0.${K8S_VERSION#v1.}"
    rm -rf "$work" && mkdir -p "$work" && cp "$here/node/helper/main.go" "$work/"
    printf 'module llama-operator.dev/e2e-node-helper\n\ngo 1.25.0\n\nrequire (\n\tk8s.io/cri-api %s\n\tk8s.io/kubelet %s\n)\n' \
      "$kv" "$kv" > "$work/go.mod"
    (cd "$work" && export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false &&
      go mod tidy && nice go build -trimpath -ldflags "-s -w" -o "$bin.part" .) >&2 || return 1
    mv "$bin.part" "$bin" && rm -rf "$work"
  fi
  echo "$bin"
}

render() { # render <template> <output>: replaces @VAR@ with the value of shell variable VAR
  "$NODE_PY" - "$1" "$2" <<'PY'
import os, re, sys
src = open(sys.argv[1]).read()
def sub(m):
    v = os.environ.get(m.group(1))
    if v is None:
        sys.exit(f"render: {sys.argv[1]}: @{m.group(1)}@ is not set")
    return v
open(sys.argv[2], "w").write(re.sub(r"@([A-Z0-9_]+)@", sub, src))
PY
}

# --- what the node leaves on the host (node-down.sh removes it, node-check-clean.sh reports it) --------------
node_mount_roots() { echo "$NODE_DIR /var/lib/kubelet /run/containerd"; }
node_mounts() { # mount points at or below the node's dirs, deepest first
  awk -v roots="$(node_mount_roots)" 'BEGIN {n = split(roots, r, " ")}
    {for (i = 1; i <= n; i++) if (index($5, r[i]) == 1 && (length($5) == length(r[i]) || substr($5, length(r[i]) + 1, 1) == "/")) {print $5; break}}' \
    /proc/self/mountinfo | sort -ru
}
node_netns() { # network namespaces in /run/netns that were not there before the node
  local known; known=" $(baseline netns | tr '\n' ' ') "
  ip netns list 2>/dev/null | awk '{print $1}' | while read -r n; do
    case "$known" in *" $n "*) ;; *) case "$n" in cni-*) echo "$n" ;; esac ;; esac
  done
}
node_links() { # our bridges and the veths on the pod bridge
  ip -o link show master "$POD_BRIDGE" 2>/dev/null | awk -F': ' '{sub(/@.*/, "", $2); print $2}'
  local l; for l in "$POD_BRIDGE" "$NODE_BRIDGE"; do ip link show "$l" >/dev/null 2>&1 && echo "$l"; done
  return 0
}
node_processes() { # pid and command line of every process of the node (recognised by binary and arguments)
  local p exe cmd
  for p in /proc/[0-9]*; do
    exe=$(readlink "$p/exe" 2>/dev/null) || continue
    case "${exe##*/}" in containerd*|kubelet|kube-proxy|llama-node-helper-*|socat|python3*) ;; *) continue ;; esac
    cmd=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null) || continue
    case "$cmd" in
      *"$NODE_DIR/"*|*"$CTRD_SOCK"*|*llama-node-helper*|*"bind=$NODE_IP,"*|*"--bind $NODE_IP "*) echo "${p#/proc/} $cmd" ;;
    esac
  done
  node_cgroup_pids | while read -r p; do echo "$p $(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null)(in a kubepods cgroup)"; done
}
node_conntrack() { # how many conntrack entries involve the cluster's ranges
  local r n=0 c
  command -v conntrack >/dev/null 2>&1 || { echo 0; return 0; }
  for r in $(guard_ranges); do
    c=$( { conntrack -L -s "$r" 2>/dev/null; conntrack -L -d "$r" 2>/dev/null; conntrack -L --reply-src "$r" 2>/dev/null; } | grep -c . )
    n=$((n + c))
  done
  echo "$n"
}
nft_unused_tables() { # nft tables created since the baseline that hold only empty built-in chains (iptables-nft's)
  local fam name
  nft list tables 2>/dev/null | while read -r _ fam name; do
    baseline nft-table | grep -qx "$fam $name" && continue
    nft -j list table "$fam" "$name" 2>/dev/null | "$NODE_PY" -c '
import json, sys
objs = json.load(sys.stdin)["nftables"]
builtin = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}
sys.exit(0 if not any("rule" in o or ("chain" in o and o["chain"]["name"] not in builtin) for o in objs) else 1)
' && echo "$fam $name"
  done
  return 0
}
foreign_containerd() { # pid of every live (not zombie) containerd that is not the node's own
  local p cmd
  for p in $(pgrep -x containerd 2>/dev/null); do
    running "$p" || continue
    cmd=$(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null) || continue
    case "$cmd" in *"$NODE_DIR/"*|*"$CTRD_SOCK"*) ;; *) echo "$p" ;; esac
  done
  return 0
}
node_cgroups() { # the kubepods cgroup trees (every v1 controller, and the v2 tree)
  local d; for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do [ -d "$d" ] && echo "$d"; done; return 0
}
node_cgroup_pids() {
  local d; for d in $(node_cgroups); do find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null; done | sort -un
}
node_rules() { # iptables/nft rules and chains of the kubelet, kube-proxy, the CNI plugins and our guard
  local ipt
  for ipt in iptables ip6tables iptables-legacy ip6tables-legacy; do
    command -v "$ipt-save" >/dev/null 2>&1 || continue
    "$ipt-save" 2>/dev/null | grep -E -- "(KUBE-|CNI-|$GUARD_CHAIN)" | sed "s/^/$ipt: /"
  done
  nft list tables 2>/dev/null | grep -E 'kube-proxy' | sed 's/^/nft: /'
  return 0
}
