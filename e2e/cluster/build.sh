#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kube-proxy, kwok
# and helm from Go
# modules (no downloads besides the Go module proxy) into a versioned cache directory. Idempotent: a
# complete cache is reused untouched.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/versions.sh"

want=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy kwok helm)
missing=0
for b in "${want[@]}"; do [ -x "$K8S_BIN/$b" ] || missing=1; done
if [ "$missing" = 0 ]; then echo "control-plane binaries cached in $K8S_BIN"; exit 0; fi

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
start=$(date +%s)
work="$LLAMA_OP_CACHE/k8s/build-$K8S_VERSION"
mkdir -p "$work" "$K8S_BIN.tmp"
cd "$work"

echo "==> resolving k8s.io/kubernetes@$K8S_VERSION"
gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[ -f "$gomod" ] || { echo "cannot find go.mod of k8s.io/kubernetes@$K8S_VERSION" >&2; exit 1; }
minor_patch="${K8S_VERSION#v1.}"                       # 35.4
etcd_ver=$(awk '$1=="go.etcd.io/etcd/server/v3"{print $2; exit}' "$gomod")

{
  echo "module llama-operator.dev/k8s-build"
  echo
  grep -E '^go [0-9]' "$gomod"
  grep -E '^godebug ' "$gomod" || true
  echo
  echo "require ("
  echo "	k8s.io/kubernetes $K8S_VERSION"
  echo "	go.etcd.io/etcd/server/v3 $etcd_ver"
  echo ")"
  echo
  echo "replace ("
  # every staging module k8s.io/X => ./staging/src/k8s.io/X becomes k8s.io/X v0.<minor>.<patch>
  sed -n 's#^[[:space:]]*\(k8s.io/[A-Za-z0-9._-]*\) => ./staging/.*#\1#p' "$gomod" | sort -u |
    while read -r m; do echo "	$m => $m v0.$minor_patch"; done
  echo ")"
} > go.mod
echo "==> wrapper go.mod: $(grep -c ' => ' go.mod) staging replaces, etcd $etcd_ver"

mkdir -p cmd/etcd
cat > cmd/etcd/main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
GO
echo "==> go mod tidy"
go mod tidy >/dev/null 2>tidy.log || { cat tidy.log >&2; exit 1; }

commit="0000000000000000000000000000000000000000"
minor="${minor_patch%%.*}"
ld=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
  ld="$ld -X $p.gitTreeState=clean -X $p.gitCommit=$commit -X $p.buildDate=1970-01-01T00:00:00Z"
done
for c in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
  echo "==> building $c $K8S_VERSION"
  go build -trimpath -ldflags "-s -w $ld" -o "$K8S_BIN.tmp/$c" "k8s.io/kubernetes/cmd/$c"
done
echo "==> building etcd $etcd_ver"
go build -trimpath -ldflags "-s -w" -o "$K8S_BIN.tmp/etcd" ./cmd/etcd

echo "==> building kwok $KWOK_VERSION"
GOBIN="$K8S_BIN.tmp" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
# kwok >= 0.8 has no built-in stages: copy the `fast` stages out of its module source.
kwokdir=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
mkdir -p "$K8S_BIN.tmp/kwok-stages"
for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
         pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
  src="$kwokdir/kustomize/stage/$f"
  [ -f "$src" ] || { echo "missing kwok stage $src" >&2; ls "$(dirname "$src")" >&2; exit 1; }
  cp "$src" "$K8S_BIN.tmp/kwok-stages/$(basename "$f")"
done

echo "==> building helm $HELM_VERSION"
hmin="${minor}"
hld="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
hld="$hld -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$hmin"
hld="$hld -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$hmin"
GOBIN="$K8S_BIN.tmp" go install -trimpath -ldflags "-s -w $hld" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"

rm -rf "$K8S_BIN" && mv "$K8S_BIN.tmp" "$K8S_BIN"
echo "==> built control plane in $(( $(date +%s) - start ))s into $K8S_BIN"
