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
  cargo test --locked -p e2e -- --ignored --test-threads=2 --skip disruption_
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

set +e
cargo test --locked -p e2e -- --ignored --test-threads=2 --skip disruption_
rc=$?
# Tests that restart the apiserver run alone, after all others (e2e/tests/disruption.rs).
E2E_APISERVER_RESTARTS=1 cargo test --locked -p e2e --test disruption -- --ignored --test-threads=1 --nocapture
rc2=$?
[ "$rc" = 0 ] && rc=$rc2
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
