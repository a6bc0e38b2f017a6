#!/usr/bin/env bash
# Runs the e2e suite. Against the local control plane by default: starts it if it is not running (and then
# stops it afterwards, checking that no process or port is left behind). With E2E_EXISTING_CLUSTER=1 and
# KUBECONFIG set, runs against that cluster instead (kind/k3d), skipping the fake-node-only checks.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
. "$root/e2e/cluster/env.sh"
cd "$root"

# Everything the tests spawn is built first, so test timeouts measure the cluster, not the compiler.
cargo build --locked -p llama-operator --bins >&2

if [ "${E2E_EXISTING_CLUSTER:-0}" = 1 ]; then
  [ -n "${KUBECONFIG:-}" ] || { echo "e2e: E2E_EXISTING_CLUSTER=1 needs KUBECONFIG" >&2; exit 1; }
  echo "e2e: using the existing cluster from KUBECONFIG=$KUBECONFIG" >&2
  export E2E_BIN_DIR="${E2E_BIN_DIR:-$K8S_BIN}"
  # Real-pod tests need our images loaded into the cluster's nodes and a model server the pods can reach: they
  # run against the local cluster's real node only.
  echo "e2e: skipping tests/real_node*.rs (local cluster only)" >&2
  cargo test --locked --no-fail-fast -p e2e -- --ignored --test-threads=2 --skip disruption_ --skip real_node_
  exec cargo test --locked -p e2e --test disruption -- --ignored --test-threads=1 --nocapture # says why it skips
fi

owned=0
alive=1
for c in $E2E_COMPONENTS; do
  f="$E2E_STATE/pids/$c.pid"; { [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; } || alive=0
done
[ "$alive" = 1 ] || owned=1
KUBECONFIG="$(bash e2e/cluster/up.sh)"
export KUBECONFIG E2E_BIN_DIR="$K8S_BIN" E2E_K8S_VERSION="$K8S_VERSION"
export PATH="$K8S_BIN:$PATH"
pids=""
for c in $E2E_COMPONENTS; do pids="$pids $(cat "$E2E_STATE/pids/$c.pid")"; done

# Real serving pods (tests/real_node.rs): the images, the model, a modelcar and the openai client they use.
real_env() {
  local node model sha venv modelcar_out
  node=$("$K8S_BIN/kubectl" get nodes -l llama-operator.dev/real-node=true -o jsonpath='{.items[0].metadata.name}')
  [ -n "$node" ] || { echo "e2e: the local cluster has no real node (needed by tests/real_node.rs)" >&2; return 1; }
  model=$(bash scripts/fetch-model.sh)
  sha=$(sha256sum "$model" | cut -d' ' -f1)
  venv=$(bash scripts/pyenv.sh)
  local images
  images=$(bash scripts/build-images.sh) || { echo "e2e: building the images failed" >&2; return 1; }
  mapfile -t archives <<<"$images"
  modelcar_out=$(bash scripts/build-model-image.sh "$model") || { echo "e2e: building the modelcar failed" >&2; return 1; }
  E2E_MODELCAR_IMAGE=$(printf '%s\n' "$modelcar_out" | sed -n 's/^ref: *//p' | tail -1)
  archives+=("$(printf '%s\n' "$modelcar_out" | sed -n 's/^archive: *//p' | tail -1)")
  bash e2e/cluster/load-image.sh "${archives[@]}" >&2
  export E2E_REAL_NODE="$node" E2E_MODEL_SHA256="$sha" E2E_MODEL_DIR="$(dirname "$model")" E2E_MODELCAR_IMAGE
  E2E_MODEL_URL="$MODEL_SERVER_URL/$(basename "$model")"
  export E2E_MODEL_URL E2E_PYTHON="$venv/bin/python"
}

# E2E_REAL_ONLY=1 runs only the real-node tests (E2E_REAL_FILTER: a test-name filter), for quick iteration.
real_only="${E2E_REAL_ONLY:-0}"
set +e
rc=0
if [ "$real_only" != 1 ]; then
  cargo test --locked --no-fail-fast -p e2e -- --ignored --test-threads=2 --skip disruption_ --skip real_node_
  rc=$?
fi
# Real pods load the 2 cores: these tests run one at a time, after the kwok ones.
# shellcheck disable=SC2086
real_env && cargo test --locked --no-fail-fast -p e2e --test real_node --test real_node_autoscale --test real_node_memory \
  --test real_node_credentials --test real_node_rollout -- \
  --ignored --test-threads=1 --nocapture ${E2E_REAL_FILTER:-}
rc3=$?
if [ "$rc3" != 0 ] && [ -n "${E2E_REAL_NODE:-}" ]; then
  # A pod that never schedules is most often the node itself (DiskPressure, NotReady): show its state.
  echo "e2e: real-node tests failed; node $E2E_REAL_NODE now has taints and conditions:" >&2
  "$K8S_BIN/kubectl" get node "$E2E_REAL_NODE" -o jsonpath='{range .spec.taints[*]}  taint {.key}:{.effect}{"\n"}{end}{range .status.conditions[*]}  {.type}={.status} ({.reason}: {.message}){"\n"}{end}' >&2 || true
  df -h "$E2E_STATE" >&2 || true
fi
[ "$rc" = 0 ] && rc=$rc3
if [ "$real_only" != 1 ]; then
  # Tests that restart the apiserver run alone, after all others (e2e/tests/disruption.rs).
  E2E_APISERVER_RESTARTS=1 cargo test --locked -p e2e --test disruption -- --ignored --test-threads=1 --nocapture
  rc2=$?
  [ "$rc" = 0 ] && rc=$rc2
fi
set -e

if [ "$owned" = 1 ]; then
  # Components restarted by the disruption tests have new pids: check those too.
  for c in $E2E_COMPONENTS; do
    f="$E2E_STATE/pids/$c.pid"; [ -f "$f" ] && pids="$pids $(cat "$f")"
  done
  bash e2e/cluster/down.sh
  # Teardown must leave nothing behind: no process we started, no port we bound, no state.
  stray=0
  for pid in $pids; do
    if kill -0 "$pid" 2>/dev/null; then echo "e2e: teardown left process $pid running" >&2; stray=1; fi
  done
  for p in $E2E_PORTS; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "e2e: teardown left port $p open" >&2; stray=1; fi
  done
  [ -e "$E2E_STATE" ] && { echo "e2e: teardown left $E2E_STATE" >&2; stray=1; }
  if [ "$stray" = 1 ]; then rc=1; else echo "e2e: teardown left no processes, ports or state" >&2; fi
else
  echo "e2e: the cluster was already running before the suite; leaving it up" >&2
fi
exit $rc
