# Shared settings of the local control plane and its real node (sourced by up.sh, down.sh, node-*.sh,
# restart-apiserver.sh, run.sh). Ports and addresses are overridable.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$here/versions.sh"
E2E_STATE="${E2E_STATE:-$LLAMA_OP_CACHE/cluster}"
ETCD_PORT="${ETCD_PORT:-23790}"
ETCD_PEER_PORT="${ETCD_PEER_PORT:-23800}"
APISERVER_PORT="${APISERVER_PORT:-16443}"
KCM_PORT="${KCM_PORT:-20257}"
SCHEDULER_PORT="${SCHEDULER_PORT:-20259}"
KWOK_PORT="${KWOK_PORT:-20247}"
E2E_KUBECONFIG="$E2E_STATE/kubeconfig"
E2E_COMPONENTS="etcd kube-apiserver kube-controller-manager kube-scheduler kwok"
E2E_CP_COMPONENTS="$E2E_COMPONENTS"   # the control plane alone; E2E_COMPONENTS gains the node's below
E2E_PORTS="$ETCD_PORT $ETCD_PEER_PORT $APISERVER_PORT $KCM_PORT $SCHEDULER_PORT $KWOK_PORT"

# The real node (node-*.sh): containerd + kubelet + kube-proxy running real pods beside the kwok nodes, on
# addresses that exist only on this machine. E2E_REAL_NODE=0 leaves it out (any other value, e.g. the node name
# e2e/run.sh exports to the tests, keeps it).
if [ "${E2E_REAL_NODE:-1}" = 0 ]; then E2E_REAL_NODE_ON=0; else E2E_REAL_NODE_ON=1; fi
NODE_NAME="${NODE_NAME:-real-node-0}"
NODE_BRIDGE="${NODE_BRIDGE:-llamanode0}"      # empty bridge that holds only the node address
NODE_IP="${NODE_IP:-10.77.0.1}"
NODE_RANGE="${NODE_RANGE:-10.77.0.0/24}"
POD_BRIDGE="${POD_BRIDGE:-llamabr0}"
POD_CIDR="${POD_CIDR:-10.244.128.0/17}"         # real pods; kwok's fake pods get 10.244.0.0/17
KWOK_POD_CIDR="${KWOK_POD_CIDR:-10.244.0.1/17}"
KWOK_NODE_IP="${KWOK_NODE_IP:-10.0.0.1}"          # the InternalIP of the kwok nodes (nothing listens there)
SERVICE_CIDR="10.96.0.0/16"
KUBELET_PORT="${KUBELET_PORT:-20250}"                       # on $NODE_IP
KUBELET_HEALTHZ_PORT="${KUBELET_HEALTHZ_PORT:-20248}"       # on 127.0.0.1
KUBE_PROXY_HEALTHZ_PORT="${KUBE_PROXY_HEALTHZ_PORT:-20256}" # on 127.0.0.1
KUBE_PROXY_METRICS_PORT="${KUBE_PROXY_METRICS_PORT:-20249}" # on 127.0.0.1
CONTAINERD_STREAM_PORT="${CONTAINERD_STREAM_PORT:-20251}"   # on 127.0.0.1 (exec/attach/port-forward streams)
NODE_APISERVER_PORT="${NODE_APISERVER_PORT:-16444}"         # on $NODE_IP: the `kubernetes` Service's endpoint
MODEL_SERVER_PORT="${MODEL_SERVER_PORT:-20280}"             # on $NODE_IP: $LLAMA_OP_CACHE/models over HTTP
MODEL_SERVER_URL="http://$NODE_IP:$MODEL_SERVER_PORT"       # e.g. $MODEL_SERVER_URL/SmolLM2-135M-Instruct.Q4_1.gguf
E2E_BUSYBOX_IMAGE="llama-e2e.local/busybox:1"               # imported on the real node (busybox-static)
E2E_NODE_COMPONENTS="containerd kubelet fake-gpu-plugin kube-proxy apiserver-forwarder model-server"
E2E_NODE_IP_PORTS="$KUBELET_PORT $NODE_APISERVER_PORT $MODEL_SERVER_PORT"
if [ "$E2E_REAL_NODE_ON" = 1 ]; then
  E2E_COMPONENTS="$E2E_COMPONENTS $E2E_NODE_COMPONENTS"
  E2E_PORTS="$E2E_PORTS $KUBELET_HEALTHZ_PORT $KUBE_PROXY_HEALTHZ_PORT $KUBE_PROXY_METRICS_PORT $CONTAINERD_STREAM_PORT"
fi
