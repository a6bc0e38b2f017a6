#!/usr/bin/env bash
# Smoke test of the running real node (after up.sh): in a scratch namespace, a busybox pod on $NODE_NAME with a
# fake GPU serves HTTP behind a Service; the host reaches its ClusterIP; `kubectl logs` and `exec` work (the
# apiserver reaches the kubelet); a second pod reaches the Service, the apiserver as https://10.96.0.1 with its
# ServiceAccount token, and the model server; the network guard dropped nothing. Exits 1 on the first failure.
set -euo pipefail
. "$(cd "$(dirname "$0")" && pwd)/env.sh"
say_as=node-smoke
. "$here/lib.sh"
. "$here/node-lib.sh"
ns=llama-node-smoke
start=$(date +%s%3N)
fail() { say "FAILED: $*"; kcn -n "$ns" get pods -o wide >&2 || true; kcn -n "$ns" describe pods >&2 2>&1 | tail -40 || true; exit 1; }
kcn get node "$NODE_NAME" >/dev/null 2>&1 || fail "no node $NODE_NAME (start the cluster with up.sh)"
kcn delete namespace "$ns" --ignore-not-found --wait=true >/dev/null
kcn create namespace "$ns" >/dev/null
wait_until "the default ServiceAccount in $ns" 30 kcn -n "$ns" get serviceaccount default

placement="
  nodeSelector: {llama-operator.dev/real-node: \"true\"}
  tolerations: [{key: llama-operator.dev/real-node, operator: Exists, effect: NoSchedule}]
  terminationGracePeriodSeconds: 1"
kcn -n "$ns" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:$placement
  containers:
  - name: web
    image: $E2E_BUSYBOX_IMAGE
    imagePullPolicy: Never
    command: [sh, -c, 'mkdir -p /tmp/www && echo hello-from-\$(hostname) > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www']
    ports: [{containerPort: 8080}]
    readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
    resources: {limits: {nvidia.com/gpu: 1}}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
EOF
kcn -n "$ns" wait --for=condition=Ready pod/web --timeout=120s >/dev/null || fail "pod web did not become Ready"
ip=$(kcn -n "$ns" get service web -o jsonpath='{.spec.clusterIP}')
wait_until "the web Service's ClusterIP $ip from the host" 30 curl -sf --max-time 2 "http://$ip/"
got=$(curl -sf --max-time 5 "http://$ip/") || fail "curl http://$ip/ from the host"
[ "$got" = "hello-from-web" ] || fail "http://$ip/ answered '$got'"
say "host -> ClusterIP $ip -> pod web: $got"
gpus=$(kcn -n "$ns" exec web -- sh -c 'echo $LLAMA_E2E_FAKE_GPUS') || fail "kubectl exec (apiserver -> kubelet)"
[ -n "$gpus" ] || fail "pod web got no fake GPU from the device plugin"
say "kubectl exec works; pod web holds fake GPU $gpus"

# The client needs a TLS stack the apiserver accepts (busybox's is too old): curl, its libraries and busybox's sh,
# packed once into $NODE_CACHE/images and loaded with load-image.sh.
curl_ver=$(curl --version | awk 'NR == 1 {print $2}')
curl_image="llama-e2e.local/curl:$curl_ver"
curl_tar="$NODE_CACHE/images/curl-$curl_ver.tar"
if [ ! -f "$curl_tar" ]; then
  files=(--file /usr/bin/curl:/usr/bin/curl:0755 --file /bin/busybox:/bin/busybox:0755 --symlink /bin/sh:busybox)
  for lib in $(ldd /usr/bin/curl | awk '$2 == "=>" {print $3} $1 ~ /^\// {print $1}' | sort -u); do
    files+=(--file "$lib:$lib:0755")
  done
  pack_image --out "$curl_tar.part" --ref "$curl_image" "${files[@]}" --cmd '["/bin/sh"]'
  mv "$curl_tar.part" "$curl_tar"
fi
bash "$here/load-image.sh" "$curl_tar"

gguf=$(cd "$LLAMA_OP_CACHE/models" 2>/dev/null && ls -- *.gguf 2>/dev/null | head -1) || true
kcn -n "$ns" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:$placement
  restartPolicy: Never
  containers:
  - name: client
    image: $curl_image
    imagePullPolicy: Never
    command:
    - sh
    - -c
    - |
      set -e
      # (no cluster DNS: the Service by its environment variables)
      echo "service: \$(curl -sS --max-time 10 http://\$WEB_SERVICE_HOST/)"
      sa=/var/run/secrets/kubernetes.io/serviceaccount
      echo "whoami: \$(curl -sS --max-time 10 --cacert \$sa/ca.crt -H "Authorization: Bearer \$(cat \$sa/token)" \\
        -H 'Content-Type: application/json' -d '{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}' \\
        https://\$KUBERNETES_SERVICE_HOST:\$KUBERNETES_SERVICE_PORT/apis/authentication.k8s.io/v1/selfsubjectreviews)"
      echo "models: \$(curl -sS --max-time 10 $MODEL_SERVER_URL/ | head -c 200 | tr -d '\n')"
      [ -z "$gguf" ] || echo "gguf: \$(curl -sS --max-time 60 $MODEL_SERVER_URL/$gguf | head -c 4)"
EOF
wait_until "pod client to finish" 120 sh -c "kcn() { \"$K8S_BIN/kubectl\" --kubeconfig \"$E2E_KUBECONFIG\" \"\$@\"; };
  p=\$(kcn -n $ns get pod client -o jsonpath='{.status.phase}'); [ \"\$p\" = Succeeded ] || [ \"\$p\" = Failed ]"
out=$(kcn -n "$ns" logs client) || fail "kubectl logs client"
phase=$(kcn -n "$ns" get pod client -o jsonpath='{.status.phase}')
[ "$phase" = Succeeded ] || fail "pod client: $phase: $out"
grep -q '^service: hello-from-web$' <<<"$out" || fail "pod -> Service: $out"
grep -q "system:serviceaccount:$ns:default" <<<"$out" || fail "pod -> https://10.96.0.1 with its token: $out"
grep -q '^models: ' <<<"$out" || fail "pod -> model server: $out"
[ -z "$gguf" ] || grep -q '^gguf: GGUF$' <<<"$out" || fail "pod -> $MODEL_SERVER_URL/$gguf: $out"
say "pod -> Service web: ok; pod -> https://10.96.0.1 (CA-verified) as system:serviceaccount:$ns:default: ok; pod -> $MODEL_SERVER_URL${gguf:+/$gguf}: ok"

kcn delete namespace "$ns" --wait=true --timeout=120s >/dev/null || fail "deleting namespace $ns"
drops=$(guard_drops) || fail "the network guard is not installed"
[ "$drops" = 0 ] || fail "the network guard dropped $drops packet(s)"
say "network guard: 0 packets dropped; smoke test passed in $(node_ms "$start")"
