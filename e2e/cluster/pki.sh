#!/usr/bin/env bash
# Generates the local control plane's PKI with openssl: a CA, the apiserver serving certificate, client
# certificates (admin in system:masters, controller-manager, scheduler, kwok; for the real node: its kubelet
# in system:nodes, kube-proxy, the apiserver's client for kubelets), the kubelet's serving certificate and
# the service-account key pair.
set -euo pipefail
pki="$1"
. "$(cd "$(dirname "$0")" && pwd)/env.sh"   # NODE_NAME, NODE_IP
mkdir -p "$pki"
cd "$pki"
[ -f .complete ] && exit 0
days=3650
openssl genrsa -out ca.key 2048 2>/dev/null
openssl req -x509 -new -nodes -key ca.key -sha256 -days $days -subj "/CN=llama-operator-e2e-ca" -out ca.crt 2>/dev/null

cat > apiserver.cnf <<CNF
[req]
distinguished_name = dn
[dn]
[ext]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local, IP:127.0.0.1, IP:10.96.0.1, IP:$NODE_IP
CNF
openssl genrsa -out apiserver.key 2048 2>/dev/null
openssl req -new -key apiserver.key -subj "/CN=kube-apiserver" -out apiserver.csr 2>/dev/null
openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days $days -sha256 \
  -extfile apiserver.cnf -extensions ext -out apiserver.crt 2>/dev/null

client() { # client <name> <CN> [O]
  local subj="/CN=$2"; [ -n "${3:-}" ] && subj="/O=$3/CN=$2"
  printf '[ext]\nbasicConstraints = CA:FALSE\nkeyUsage = critical, digitalSignature, keyEncipherment\nextendedKeyUsage = clientAuth\n' > "$1.cnf"
  openssl genrsa -out "$1.key" 2048 2>/dev/null
  openssl req -new -key "$1.key" -subj "$subj" -out "$1.csr" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days $days -sha256 \
    -extfile "$1.cnf" -extensions ext -out "$1.crt" 2>/dev/null
}
client admin admin system:masters
client controller-manager system:kube-controller-manager
client scheduler system:kube-scheduler
client kwok kwok-controller system:masters
client kubelet "system:node:$NODE_NAME" system:nodes
client kube-proxy system:kube-proxy
client apiserver-kubelet-client kube-apiserver-kubelet-client system:masters

cat > kubelet-serving.cnf <<CNF
[ext]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:$NODE_NAME, IP:$NODE_IP, IP:127.0.0.1
CNF
openssl genrsa -out kubelet-serving.key 2048 2>/dev/null
openssl req -new -key kubelet-serving.key -subj "/CN=$NODE_NAME" -out kubelet-serving.csr 2>/dev/null
openssl x509 -req -in kubelet-serving.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days $days -sha256 \
  -extfile kubelet-serving.cnf -extensions ext -out kubelet-serving.crt 2>/dev/null

openssl genrsa -out sa.key 2048 2>/dev/null
openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
rm -f ./*.csr ./*.cnf
touch .complete
