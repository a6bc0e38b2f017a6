#!/usr/bin/env bash
# Checks that this machine can run the real node and installs the Debian packages it lacks (apt-get, as root,
# non-interactive). Says what is missing and exits 1 when it cannot. up.sh runs it before building anything;
# with E2E_REAL_NODE=0 it does nothing.
set -uo pipefail
. "$(cd "$(dirname "$0")" && pwd)/env.sh"
say_as=node-preflight
. "$here/lib.sh"
[ "$E2E_REAL_NODE_ON" = 1 ] || exit 0
problems=()
problem() { problems+=("$1"); }
fail() {
  say "this machine cannot run the real node $NODE_NAME:"
  for p in "${problems[@]}"; do say "  - $p"; done
  say "(set E2E_REAL_NODE=0 to start the cluster with kwok nodes only)"
  exit 1
}

[ "$(uname -s)" = Linux ] || problem "not Linux ($(uname -s))"
[ "$(uname -m)" = x86_64 ] || problem "not x86_64 ($(uname -m)): the images it builds are linux/amd64"
[ "$(id -u)" = 0 ] || problem "not root (uid $(id -u)): containerd, the kubelet and kube-proxy need root"
[ "${#problems[@]}" = 0 ] || fail

# command or file -> Debian package
need=(
  "containerd containerd" "ctr containerd" "runc runc" "/usr/lib/cni/bridge containernetworking-plugins"
  "/usr/lib/cni/host-local containernetworking-plugins" "/usr/lib/cni/portmap containernetworking-plugins"
  "iptables iptables" "nft nftables" "conntrack conntrack" "socat socat" "/bin/busybox busybox-static"
  "ip iproute2" "ss iproute2" "gcc gcc" "/usr/lib/x86_64-linux-gnu/libc.a libc6-dev" "openssl openssl"
  "curl curl" "python3 python3" "mount mount" "pgrep procps"
)
missing=()
check_need() {
  missing=()
  local n what pkg
  for n in "${need[@]}"; do
    what=${n% *}; pkg=${n#* }
    case "$what" in /*) [ -e "$what" ] ;; *) command -v "$what" >/dev/null 2>&1 ;; esac && continue
    missing+=("$pkg")
  done
  # busybox must be the static one: it is copied alone into an image
  if [ -e /bin/busybox ]; then
    case "$(ldd /bin/busybox 2>&1)" in *"not a dynamic"*) ;; *) missing+=(busybox-static) ;; esac
  fi
  return 0
}
check_need
if [ "${#missing[@]}" -gt 0 ]; then
  pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
  if command -v apt-get >/dev/null 2>&1; then
    say "installing Debian packages: $pkgs"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -q && apt-get install -y -q --no-install-recommends $pkgs; } </dev/null >&2 ||
      problem "apt-get could not install: $pkgs"
    check_need
  fi
  [ "${#missing[@]}" = 0 ] || problem "missing packages: $(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')"
fi
command -v go >/dev/null 2>&1 || problem "no Go toolchain (go): it builds the node helper, like build.sh builds the control plane"
[ -f "$here/../../scripts/oci-image.py" ] || problem "scripts/oci-image.py is missing (it packs the pause and busybox images)"
[ "${#problems[@]}" = 0 ] || fail

# What the host looks like before the node (its probes below included) changes anything: node-down.sh restores it.
. "$here/node-lib.sh"
record_host_baseline

# Disk: the kubelet taints the node DiskPressure (and its pods stay Pending, "untolerated taint") once free
# space under its state falls below evictionHard nodefs.available (1 % of the filesystem); the tests then write
# images, pod logs and a Cargo build on the same filesystem. Demand that margin plus room for them.
disk_at=$E2E_STATE
while [ ! -e "$disk_at" ]; do disk_at=$(dirname "$disk_at"); done
read -r disk_size disk_avail < <(df -Pk "$disk_at" | awk 'NR==2 {print $2, $4}')
need_kib=$(( disk_size / 100 + 4 * 1024 * 1024 ))
if [ "${disk_avail:-0}" -lt "$need_kib" ]; then
  problem "only $(( disk_avail / 1024 )) MiB free on the filesystem of $E2E_STATE; the real node needs $(( need_kib / 1024 )) MiB (1 % of $(( disk_size / 1024 / 1024 )) GiB, the kubelet's DiskPressure threshold, + 4 GiB for images, pod logs and builds): free some space"
fi

# What the kernel must offer.
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
grep -qw overlay /proc/filesystems || problem "no overlayfs in this kernel (containerd's snapshotter needs it)"
unshare -n true 2>/dev/null || problem "cannot create network namespaces (unshare -n failed)"
probe=llp$$
if ip link add "${probe}b" type bridge 2>/dev/null; then ip link delete "${probe}b"
else problem "cannot create bridge links (ip link add type bridge failed)"; fi
if ip link add "${probe}v" type veth peer name "${probe}p" 2>/dev/null; then ip link delete "${probe}v"
else problem "cannot create veth pairs"; fi
for t in mangle nat filter; do
  iptables -t "$t" -nL >/dev/null 2>&1 || problem "iptables cannot read the $t table"
done
if iptables -t mangle -N LLAMA-E2E-PROBE 2>/dev/null; then
  iptables -t mangle -A LLAMA-E2E-PROBE -m comment --comment probe -j RETURN 2>/dev/null ||
    problem "iptables lacks the comment match (the egress guard and kube-proxy use it)"
  iptables -t mangle -F LLAMA-E2E-PROBE; iptables -t mangle -X LLAMA-E2E-PROBE
else problem "iptables cannot create chains"; fi
if [ ! -f /sys/fs/cgroup/cgroup.controllers ]; then
  for c in cpu cpuacct cpuset memory pids devices freezer; do
    [ -d "/sys/fs/cgroup/$c" ] || problem "cgroup v1 controller $c is not mounted at /sys/fs/cgroup/$c"
  done
fi
# Our addresses must be free: no route or address of this machine may overlap the pod, node or service range.
while read -r clash; do
  [ -n "$clash" ] && problem "$clash"
done < <({ ip -4 -o route show; ip -4 -o addr show | awk '{print $4, "dev", $2, "(address)"}'; } |
  grep -vE "dev ($POD_BRIDGE|$NODE_BRIDGE)( |$)" | python3 -c '
import ipaddress, sys
ours = [ipaddress.ip_network(r, strict=False) for r in sys.argv[1:]]
for line in sys.stdin:
    dst = line.split()[0]
    if dst == "default":
        continue
    net = ipaddress.ip_network(dst if "/" in dst else dst + "/32", strict=False)
    for o in ours:
        if net.overlaps(o):
            print(f"this machine already routes {net} (overlaps {o}): {line.strip()}")
' "$POD_CIDR" "$NODE_RANGE" "$SERVICE_CIDR")
[ "${#problems[@]}" = 0 ] || fail
say "ok: root, packages, overlayfs, netns, bridge, veth, iptables, cgroups"
