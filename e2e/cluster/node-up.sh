#!/usr/bin/env bash
# Starts the real node `$NODE_NAME` of the local cluster (called by up.sh once the control plane and the kwok
# nodes are ready; node-preflight.sh has passed): containerd, the kubelet, a fake GPU device plugin
# (2 x nvidia.com/gpu), kube-proxy, a forwarder that makes the `kubernetes` Service reachable from pods, and a
# model file server, all on addresses that exist only on this machine behind an egress guard. Everything it
# changes on the host is recorded first and undone by node-down.sh. Progress on stderr.
set -eEuo pipefail
. "$(cd "$(dirname "$0")" && pwd)/env.sh"
say_as=node-up
. "$here/lib.sh"
. "$here/node-lib.sh"
start=$(date +%s%3N)
pki="$E2E_STATE/pki"
trap 'say "failed at line $LINENO of node-up.sh (logs: $E2E_STATE/logs)"' ERR

for c in $E2E_NODE_COMPONENTS; do
  if alive "$c"; then say "parts of an earlier node are running: stopping them first"; bash "$here/node-down.sh"; break; fi
done
for f in kubelet kube-proxy apiserver-kubelet-client kubelet-serving; do
  [ -f "$pki/$f.crt" ] || { say "$pki/$f.crt is missing: this cluster was started without real-node support; run down.sh, then up.sh"; exit 1; }
done
for b in kubelet kube-proxy; do
  [ -x "$K8S_BIN/$b" ] || { say "$K8S_BIN/$b is missing (e2e/cluster/build.sh builds it)"; exit 1; }
done

record_host_baseline
mkdir -p "$NODE_DIR" "$CTRD_ROOT" "$CTRD_STATE" "$KUBELET_ROOT" "$CNI_CONF_DIR" "$CNI_DATA_DIR" \
  "$NODE_DIR/pod-logs" "$NODE_DIR/volume-plugins" "$E2E_STATE/pids" "$E2E_STATE/logs"
: > "$NODE_DIR/resolv.conf"

# Images and the helper are cached; the first run compiles them.
pause_tar=$(pause_archive)
busybox_tar=$(busybox_archive)
helper=$(helper_bin)

# The guard goes in before anything can send from a pod, service or node address.
guard_install
ip link show "$NODE_BRIDGE" >/dev/null 2>&1 || ip link add "$NODE_BRIDGE" type bridge
ip addr replace "$NODE_IP/32" dev "$NODE_BRIDGE"
ip link set "$NODE_BRIDGE" up
node_routes_install

export CTRD_ROOT CTRD_STATE CTRD_SOCK CNI_CONF_DIR CNI_DATA_DIR NODE_DIR NODE_NAME NODE_IP POD_BRIDGE POD_CIDR \
  CONTAINERD_STREAM_PORT KUBELET_PORT KUBELET_HEALTHZ_PORT KUBE_PROXY_HEALTHZ_PORT KUBE_PROXY_METRICS_PORT
PKI="$pki"
PAUSE_IMAGE=$(pause_ref)
export PKI PAUSE_IMAGE
render "$here/node/containerd.toml" "$NODE_DIR/containerd.toml"
render "$here/node/cni.conflist" "$CNI_CONF_DIR/10-llama-e2e.conflist"
render "$here/node/kubelet.yaml" "$NODE_DIR/kubelet.yaml"
render "$here/node/kube-proxy.yaml" "$NODE_DIR/kube-proxy.yaml"
for u in kubelet kube-proxy; do
  cat > "$NODE_DIR/$u.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: llama-e2e
  cluster: {server: "https://127.0.0.1:$APISERVER_PORT", certificate-authority: "$pki/ca.crt"}
users:
- name: $u
  user: {client-certificate: "$pki/$u.crt", client-key: "$pki/$u.key"}
contexts:
- name: llama-e2e
  context: {cluster: llama-e2e, user: $u}
current-context: llama-e2e
KC
done

say "starting containerd $(containerd --version | awk '{print $3}')"
launch containerd containerd --config "$NODE_DIR/containerd.toml"
cri_ok() { ctrd plugins ls | grep -qE 'io\.containerd\.grpc\.v1 +cri +.* ok'; }
wait_for containerd "containerd's CRI plugin on $CTRD_SOCK" 60 cri_ok
for a in "$pause_tar" "$busybox_tar"; do ctrd images import "$a" >>"$E2E_STATE/logs/containerd.log" 2>&1; done

# Pods reach the apiserver (127.0.0.1 only) as https://10.96.0.1 -> $NODE_IP:$NODE_APISERVER_PORT -> socat.
launch apiserver-forwarder socat "TCP-LISTEN:$NODE_APISERVER_PORT,bind=$NODE_IP,reuseaddr,fork" \
  "TCP:127.0.0.1:$APISERVER_PORT"
kcn apply -f - >/dev/null 2>&1 <<EOF
apiVersion: v1
kind: Endpoints
metadata:
  name: kubernetes
  namespace: default
  labels: {endpointslice.kubernetes.io/skip-mirror: "true"}
subsets:
- addresses: [{ip: "$NODE_IP"}]
  ports: [{name: https, port: $NODE_APISERVER_PORT, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes
  namespace: default
  labels: {kubernetes.io/service-name: kubernetes, endpointslice.kubernetes.io/managed-by: llama-e2e-node-up}
addressType: IPv4
endpoints:
- addresses: ["$NODE_IP"]
  conditions: {ready: true}
ports:
- {name: https, port: $NODE_APISERVER_PORT, protocol: TCP}
EOF

mkdir -p "$LLAMA_OP_CACHE/models"
launch model-server "$NODE_PY" -m http.server --bind "$NODE_IP" --directory "$LLAMA_OP_CACHE/models" "$MODEL_SERVER_PORT"
echo "$MODEL_SERVER_URL" > "$E2E_STATE/model-server-url"

# A Node object left by an earlier kubelet would look Ready at once: the node registers afresh.
kcn delete node "$NODE_NAME" --ignore-not-found --wait=true --timeout=30s >/dev/null 2>&1 || true
say "starting kubelet $K8S_VERSION as $NODE_NAME ($NODE_IP)"
launch kubelet "$K8S_BIN/kubelet" --config "$NODE_DIR/kubelet.yaml" --kubeconfig "$NODE_DIR/kubelet.kubeconfig" \
  --root-dir "$KUBELET_ROOT" --cert-dir "$NODE_DIR/kubelet-pki" --hostname-override "$NODE_NAME" \
  --node-ip "$NODE_IP" --node-labels "llama-operator.dev/real-node=true"
launch fake-gpu-plugin "$helper" device-plugin nvidia.com/gpu 2 llama-fake-gpu.sock
wait_for kubelet "the kubelet to register $NODE_NAME" 120 kcn get node "$NODE_NAME"
launch kube-proxy "$K8S_BIN/kube-proxy" --config "$NODE_DIR/kube-proxy.yaml"
wait_for kubelet "kubelet /healthz" 120 curl -sf "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz"
wait_for kubelet "$NODE_NAME to become Ready" 120 kcn wait --for=condition=Ready "node/$NODE_NAME" --timeout=1s
gpus() { [ "$(kcn get node "$NODE_NAME" -o 'jsonpath={.status.allocatable.nvidia\.com/gpu}')" = 2 ]; }
wait_for fake-gpu-plugin "2 nvidia.com/gpu on $NODE_NAME (fake device plugin)" 60 gpus
wait_for kube-proxy "kube-proxy /healthz" 60 curl -sf "http://127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT/healthz"
wait_for model-server "the model server on $MODEL_SERVER_URL" 30 curl -sf -o /dev/null "$MODEL_SERVER_URL/"
say "$NODE_NAME Ready in $(node_ms "$start") (pods: $POD_CIDR on $POD_BRIDGE; models: $MODEL_SERVER_URL)"
