#!/usr/bin/env bash
# Packs a GGUF model into a "modelcar" image (OCI archive), without a container engine.
#
# usage: scripts/build-model-image.sh [--keep-name] MODEL.gguf [REF]
#        scripts/build-model-image.sh [--keep-name] MODEL=MODEL.gguf [IMAGE=REF]
#
#   MODEL        the .gguf file; streamed into the archive, never copied to a temporary file
#   REF          image name, default llama-operator.local/models/<stem>:<first 12 hex of the model's sha256>
#                (<stem>: file name without .gguf, lowercased, runs of other than [a-z0-9] turned into '-')
#   --keep-name  also expose the model under its original file name (/models/<name>, a symlink)
#
# The image: /bin/busybox (busybox-static; installed with apt-get when /bin/busybox is missing or not static)
# with /bin/{sh,ln,sleep,test,ls,cat} linked to it, the model at /models/model.gguf (0444), /tmp (1777),
# user 65532:65532, uncompressed layer (GGUF weights do not compress). The operator runs it as a sidecar:
#   sh -c 'ln -sfn /proc/$$/root/models /modelcar/models; trap ...; while true; do sleep 3600 & wait $!; done'
# with the startup probe `test -e /modelcar/models/`.
#
# Archive: $LLAMA_OP_CACHE/images/model-<stem>-<sha12>.tar (REF other than the default: ...-<sha12>-<ref hash>.tar),
# reused when it exists with a matching stamp (<archive>.stamp). Prints two lines on stdout,
#   archive: <archive path>
#   ref: <image ref>
# progress on stderr. Load: ctr -n k8s.io images import <archive>
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${LLAMA_OP_CACHE:-$HOME/.cache/llama-operator}"
usage() { sed -n '4,5p' "$0" | sed 's/^# //' >&2; exit 2; }

model="" ref="" keep=0 pos=()
for a in "$@"; do
  case "$a" in
    --keep-name) keep=1 ;;
    MODEL=*) model="${a#MODEL=}" ;;
    IMAGE=*|REF=*) ref="${a#*=}" ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
    -*) echo "build-model-image.sh: unknown option $a" >&2; usage ;;
    *) pos+=("$a") ;;
  esac
done
[ ${#pos[@]} -le 2 ] || usage
[ -n "$model" ] || model="${pos[0]:-}"
[ -n "$ref" ] || ref="${pos[1]:-}"
[ -z "$model" ] && { echo "build-model-image.sh: no MODEL given" >&2; usage; }
[ -f "$model" ] || { echo "build-model-image.sh: model $model is not a file" >&2; exit 1; }
[ -r "$model" ] || { echo "build-model-image.sh: model $model is not readable" >&2; exit 1; }
model="$(cd "$(dirname "$model")" && pwd)/$(basename "$model")"

# busybox-static: a dynamic busybox would need its libraries in the image
is_static() { [ -f "$1" ] && ! ldd "$1" >/dev/null 2>&1; }
busybox=/bin/busybox
if ! is_static "$busybox"; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing busybox-static (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q busybox-static >&2 || { apt-get update -q >&2 && apt-get install -y -q busybox-static >&2; }
  fi
  is_static "$busybox" || { echo "build-model-image.sh: need a static $busybox (apt-get install busybox-static)" >&2; exit 1; }
fi

name="$(basename "$model")"
stem=$(printf '%s' "${name%.gguf}" | tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/-/g; s/^-+//; s/-+$//')
[ -n "$stem" ] || stem=model

# sha256 of the model, remembered per (path, size, mtime, inode) so a rerun does not read GBs again
mkdir -p "$cache/images/.model-sha"
id=$(stat -L -c '%d:%i:%s:%.9Y:%.9Z' "$model")
memo="$cache/images/.model-sha/$(printf '%s %s' "$model" "$id" | sha256sum | cut -c1-32)"
if [ -f "$memo" ]; then
  sha=$(cat "$memo")
else
  echo "==> sha256 $model" >&2
  sha=$(sha256sum "$model" | cut -d' ' -f1)
  echo "$sha" >"$memo"
fi
sha12="${sha:0:12}"

default_ref="llama-operator.local/models/$stem:$sha12"
archive="$cache/images/model-$stem-$sha12.tar"
if [ -z "$ref" ]; then
  ref="$default_ref"
elif [ "$ref" != "$default_ref" ]; then
  archive="$cache/images/model-$stem-$sha12-$(printf '%s' "$ref" | sha256sum | cut -c1-8).tar"
fi

args=(--file "$busybox:/bin/busybox:0755")
for app in sh ln sleep test ls cat; do args+=(--symlink "/bin/$app:busybox"); done
args+=(--file "$model:/models/model.gguf:0444" --dir /tmp:1777)
[ "$keep" = 0 ] || [ "$name" = model.gguf ] || args+=(--symlink "/models/$name:model.gguf")
args+=(--user 65532:65532 --compress none
  --label "org.opencontainers.image.title=$name" --label "io.llama-operator.model.sha256=$sha")

key=$( { echo "$ref $keep $name $sha ${SOURCE_DATE_EPOCH:-0}"; sha256sum "$busybox" "$root/scripts/oci-image.py" "$0" | cut -d' ' -f1; } | sha256sum | cut -d' ' -f1)
if [ -f "$archive" ] && [ "$(cat "$archive.stamp" 2>/dev/null)" = "$key" ]; then
  echo "==> $ref: up to date ($archive)" >&2
else
  echo "==> packing $ref ($(du -hL "$model" | cut -f1) model)" >&2
  rm -f "$archive.stamp"
  python3 "$root/scripts/oci-image.py" --out "$archive" --ref "$ref" "${args[@]}" >&2
  echo "$key" >"$archive.stamp"
fi
echo "archive: $archive"
echo "ref: $ref"
