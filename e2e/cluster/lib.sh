# Functions shared by up.sh, down.sh and restart-apiserver.sh (sourced after env.sh). The one place that knows
# how each component is started and stopped, so a restart uses exactly the arguments of the first start.
# Callers set `say_as` (the prefix of progress lines on stderr) before sourcing.
say() { echo "${say_as:-cluster}: $*" >&2; }

running() { # running <pid>: the process exists and has not exited (a zombie waiting for its reaper counts as gone)
  kill -0 "$1" 2>/dev/null || return 1
  local st; st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
  [ "${st%% *}" != Z ]
}

alive() { local f="$E2E_STATE/pids/$1.pid"; [ -f "$f" ] && running "$(cat "$f")"; }

api_ready() {
  curl -sf --max-time 2 --cacert "$E2E_STATE/pki/ca.crt" --cert "$E2E_STATE/pki/admin.crt" \
    --key "$E2E_STATE/pki/admin.key" "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null 2>&1
}

launch() { # launch <name> <binary> args...: background, own session, pid file, log file (appended)
  local name="$1"; shift
  setsid "$@" >>"$E2E_STATE/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$E2E_STATE/pids/$name.pid"
}

wait_until() { # wait_until <what> <seconds> <command...>
  local what="$1" secs="$2"; shift 2
  local deadline=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      say "timed out waiting for $what; last log lines:"; tail -20 "$E2E_STATE/logs/"*.log >&2 || true; exit 1
    fi
    sleep 0.3
  done
}

stop_component() { # stop_component <name> [grace s]: SIGTERM by pid file, SIGKILL after the grace (5 s); removes the pid file
  local f="$E2E_STATE/pids/$1.pid" pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if running "$pid"; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 $(( ${2:-5} * 10 ))); do running "$pid" || break; sleep 0.1; done
    running "$pid" && kill -KILL "$pid" 2>/dev/null
    for _ in $(seq 1 20); do running "$pid" || break; sleep 0.1; done
  fi
  rm -f "$f"
}

start_apiserver() { # the kube-apiserver of the local control plane (PKI from pki.sh, etcd on $ETCD_PORT); it
  # reaches kubelets (logs, exec, port-forward) with its own client certificate and checks their serving certs
  local pki="$E2E_STATE/pki"
  launch kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --secure-port "$APISERVER_PORT" --advertise-address 127.0.0.1 \
    --endpoint-reconciler-type none \
    --cert-dir "$E2E_STATE/certs" --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$pki/ca.crt" --kubelet-preferred-address-types InternalIP \
    --allow-privileged=true --profiling=false \
    --v=1
}
