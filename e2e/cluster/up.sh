#!/usr/bin/env bash
# Starts a real Kubernetes control plane on loopback: etcd, kube-apiserver (TLS, RBAC), kube-controller-manager,
# kube-scheduler and kwok with fake nodes (one 8-GPU node, one CPU node), then (unless E2E_REAL_NODE=0) the real
# node real-node-0 that runs pods for real (node-up.sh). Prints progress on stderr and the KUBECONFIG path on
# stdout. Idempotent: a running cluster is reused (a real node that is not healthy is restarted alone). A
# failing start tears down what it started (logs kept in $LLAMA_OP_CACHE/failed-start-logs).
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/env.sh"
say_as=cluster-up
. "$here/lib.sh"

node_healthy() { # the real node's processes run, its guard is in place and the node is Ready
  [ "$E2E_REAL_NODE_ON" = 1 ] || return 0
  (
    . "$here/node-lib.sh"
    for c in $E2E_NODE_COMPONENTS; do alive "$c" || exit 1; done
    guard_drops >/dev/null && kcn wait --for=condition=Ready "node/$NODE_NAME" --timeout=1s >/dev/null 2>&1
  )
}
keep_logs() {
  rm -rf "$LLAMA_OP_CACHE/failed-start-logs"
  [ -d "$E2E_STATE/logs" ] && cp -r "$E2E_STATE/logs" "$LLAMA_OP_CACHE/failed-start-logs" &&
    say "logs of the failed start: $LLAMA_OP_CACHE/failed-start-logs"
  return 0
}

all_alive=1
for c in $E2E_CP_COMPONENTS; do alive "$c" || all_alive=0; done
if [ "$all_alive" = 1 ] && api_ready; then
  if node_healthy; then
    say "reusing the running cluster"
    echo "$E2E_KUBECONFIG"
    exit 0
  fi
  say "the control plane runs but the real node is not healthy: restarting the node"
  bash "$here/node-preflight.sh"
  bash "$here/node-down.sh" || true
  if ! bash "$here/node-up.sh"; then keep_logs; bash "$here/node-down.sh" || true; exit 1; fi
  echo "$E2E_KUBECONFIG"
  exit 0
fi
# A partial cluster (crash, reboot) or a node's leftovers are torn down first so we start clean.
if [ -d "$E2E_STATE/pids" ] || ! bash "$here/node-check-clean.sh" >/dev/null 2>&1; then
  say "cleaning up a partial cluster"
  bash "$here/down.sh" >/dev/null 2>&1 || true
fi
bash "$here/node-preflight.sh"

start=$(date +%s%3N)
trap 'rc=$?; if [ "$rc" != 0 ]; then say "start failed: tearing down"; keep_logs; bash "$here/down.sh" >&2 || true; fi' EXIT
bash "$here/build.sh" >&2
for p in $E2E_PORTS; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    say "port $p on 127.0.0.1 is already in use (set the *_PORT variables in e2e/cluster/env.sh to move)"; exit 1
  fi
done
mkdir -p "$E2E_STATE"/{pids,logs,etcd,certs}
bash "$here/pki.sh" "$E2E_STATE/pki"
pki="$E2E_STATE/pki"

kubeconfig() { # kubeconfig <file> <client cert name>
  cat > "$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: llama-e2e
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $pki/ca.crt
users:
- name: $2
  user:
    client-certificate: $pki/$2.crt
    client-key: $pki/$2.key
contexts:
- name: llama-e2e
  context: {cluster: llama-e2e, user: $2}
current-context: llama-e2e
KC
}
kubeconfig "$E2E_KUBECONFIG" admin
kubeconfig "$E2E_STATE/controller-manager.kubeconfig" controller-manager
kubeconfig "$E2E_STATE/scheduler.kubeconfig" scheduler
kubeconfig "$E2E_STATE/kwok.kubeconfig" kwok

say "starting etcd"
launch etcd "$K8S_BIN/etcd" --name e2e --data-dir "$E2E_STATE/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "e2e=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync --quota-backend-bytes 2147483648 \
  --log-level warn
wait_until "etcd /health" 30 curl -sf "http://127.0.0.1:$ETCD_PORT/health"

say "starting kube-apiserver $K8S_VERSION"
start_apiserver
wait_until "kube-apiserver /readyz" 90 api_ready

say "starting kube-controller-manager and kube-scheduler"
launch kube-controller-manager "$K8S_BIN/kube-controller-manager" \
  --kubeconfig "$E2E_STATE/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$E2E_STATE/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$E2E_STATE/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --cert-dir "$E2E_STATE/certs" \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
  --use-service-account-credentials=true --leader-elect=false --profiling=false \
  --flex-volume-plugin-dir "$E2E_STATE/flexvolume" \
  --node-monitor-grace-period 40s --v=1
launch kube-scheduler "$K8S_BIN/kube-scheduler" \
  --kubeconfig "$E2E_STATE/scheduler.kubeconfig" \
  --authentication-kubeconfig "$E2E_STATE/scheduler.kubeconfig" \
  --authorization-kubeconfig "$E2E_STATE/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --cert-dir "$E2E_STATE/certs" \
  --leader-elect=false --profiling=false --v=1

say "starting kwok $KWOK_VERSION"
stage_args=()
# kwok's stock fast stages (copied by build.sh), then ours: pods with fake failing images (kwok-stages/).
for f in "$K8S_BIN"/kwok-stages/*.yaml "$here"/kwok-stages/*.yaml; do stage_args+=(--config "$f"); done
launch kwok "$K8S_BIN/kwok" --kubeconfig "$E2E_STATE/kwok.kubeconfig" "${stage_args[@]}" \
  --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --cidr "$KWOK_POD_CIDR" --node-ip "$KWOK_NODE_IP" --server-address "127.0.0.1:$KWOK_PORT" \
  --node-lease-duration-seconds 40

kc() { "$K8S_BIN/kubectl" --kubeconfig "$E2E_KUBECONFIG" "$@"; }
say "creating fake nodes"
wait_until "the apiserver to accept nodes" 30 kc get --raw /api/v1/nodes
kc apply -f "$here/nodes.yaml" >/dev/null
wait_until "fake nodes to become Ready" 60 kc wait --for=condition=Ready node --all --timeout=1s
wait_until "the default ServiceAccount" 60 kc -n default get serviceaccount default
[ "$E2E_REAL_NODE_ON" = 1 ] && bash "$here/node-up.sh"
trap - EXIT
ms=$(( $(date +%s%3N) - start ))
say "ready in $((ms / 1000)).$(( (ms % 1000) / 100 ))s ($K8S_VERSION; logs in $E2E_STATE/logs)"
echo "$E2E_KUBECONFIG"
