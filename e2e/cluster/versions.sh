# Versions of the local control plane. Sourced by build.sh / up.sh.
# Changing a version changes the cache key, so the next `make cluster-up` rebuilds.
K8S_VERSION="${K8S_VERSION:-v1.35.4}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
HELM_VERSION="${HELM_VERSION:-v3.21.4}"
LLAMA_OP_CACHE="${LLAMA_OP_CACHE:-$HOME/.cache/llama-operator}"
K8S_BIN="$LLAMA_OP_CACHE/k8s/$K8S_VERSION-kwok-$KWOK_VERSION-helm-$HELM_VERSION/bin"
