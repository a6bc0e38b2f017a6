#!/usr/bin/env bash
# Builds the llama-server and llama-operator container images as OCI archives, without a container engine.
#
# usage: scripts/build-images.sh [--no-build]
#
#   1. cargo build --release --locked -p llama-server -p llama-operator   (skipped with --no-build)
#      CARGO_TARGET_DIR from the environment, default ${LLAMA_OP_CACHE:-$HOME/.cache/llama-operator}/target
#   2. per binary, scripts/oci-image.py packs one layer holding
#        /usr/local/bin/<name>                 the release binary (0755)
#        the shared libraries `ldd` lists      at their real paths, plus every symlink on the way there
#                                              (/lib64 -> usr/lib64, /usr/lib64/ld-linux-x86-64.so.2, /lib ...)
#        /etc/passwd, /etc/group               root and nonroot (65532)
#        /tmp                                  1777
#      user 65532:65532, entrypoint ["/usr/local/bin/<name>"]; no shell, no CA certificates.
#
# Refs: ghcr.io/llama-operator/<name>:<version>, version = [workspace.package] version of Cargo.toml.
# Archives: $LLAMA_OP_CACHE/images/<name>-<version>.tar; their paths go to stdout one per line, progress to
# stderr. An archive whose inputs (binary, libraries, ref, these scripts) are unchanged is kept as it is: a
# stamp <archive>.stamp records the hash of those inputs.
#
# Load one: ctr -n k8s.io images import <archive>   |   skopeo copy oci-archive:<archive> docker://...
#           podman load -i <archive>
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${LLAMA_OP_CACHE:-$HOME/.cache/llama-operator}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
build=1
for a in "$@"; do
  case "$a" in
    --no-build) build=0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
    *) echo "build-images.sh: unknown argument $a (usage: build-images.sh [--no-build])" >&2; exit 2 ;;
  esac
done

version=$(awk '/^\[workspace\.package\]/{s=1; next} /^\[/{s=0} s && $1=="version" {gsub(/["[:space:]]/, "", $3); print $3; exit}' "$root/Cargo.toml")
[ -n "$version" ] || { echo "build-images.sh: no [workspace.package] version in $root/Cargo.toml" >&2; exit 1; }
names=(llama-server llama-operator)

if [ "$build" = 1 ]; then
  echo "==> cargo build --release --locked -p llama-server -p llama-operator (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)" >&2
  (cd "$root" && cargo build --release --locked -p llama-server -p llama-operator) >&2
fi

out="$cache/images"
files="$out/.rootfs"
mkdir -p "$out" "$files"
printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$files/passwd"
printf '%s\n' 'root:x:0:' 'nonroot:x:65532:' >"$files/group"

# prints the packer arguments for the shared libraries a binary needs: --file REAL:REAL for each library and
# --symlink LINK:TARGET for each symlink met while resolving the path the loader looks up (as ldd prints it)
lib_args() {
  python3 - "$1" <<'PY'
import os, re, subprocess, sys
binary = sys.argv[1]
p = subprocess.run(["ldd", binary], capture_output=True, text=True)
text = p.stdout + p.stderr
if p.returncode != 0 or "statically linked" in text:
    if "not a dynamic executable" in text or "statically linked" in text:
        sys.exit(0)
    sys.exit(f"build-images.sh: ldd {binary} failed: {text.strip()}")
paths = []
for line in text.splitlines():
    line = line.strip()
    if "not found" in line:
        sys.exit(f"build-images.sh: {binary}: library {line}")
    m = re.match(r"(?:\S+ => )?(/\S+) \(0x[0-9a-f]+\)$", line)
    if m:
        paths.append(m.group(1))
    elif line and "=>" in line and "vdso" not in line:
        sys.exit(f"build-images.sh: cannot parse ldd line: {line}")
links, files = {}, set()
def walk(path, depth=0):
    if depth > 40:
        sys.exit(f"build-images.sh: symlink loop at {path}")
    cur = "/"
    for comp in [c for c in path.split("/") if c not in ("", ".")]:
        if comp == "..":
            cur = os.path.dirname(cur)
            continue
        nxt = os.path.join(cur, comp)
        if os.path.islink(nxt):
            target = os.readlink(nxt)
            links[nxt] = target
            cur = walk(target if target.startswith("/") else os.path.join(cur, target), depth + 1)
        else:
            cur = nxt
    return cur
for path in paths:
    real = walk(path)
    if not os.path.isfile(real):
        sys.exit(f"build-images.sh: {path} resolves to {real}, not a file")
    files.add(real)
for f in sorted(files):
    print(f"--file\n{f}:{f}")
for l in sorted(links):
    print(f"--symlink\n{l}:{links[l]}")
PY
}

for name in "${names[@]}"; do
  bin="$CARGO_TARGET_DIR/release/$name"
  [ -x "$bin" ] || { echo "build-images.sh: $bin missing (run without --no-build)" >&2; exit 1; }
  ref="ghcr.io/llama-operator/$name:$version"
  archive="$out/$name-$version.tar"
  lib_out=$(lib_args "$bin")
  libs=()
  [ -z "$lib_out" ] || mapfile -t libs <<<"$lib_out"
  # inputs of the archive: the binary, each library and link, the ref and the two scripts
  key=$(
    {
      echo "ref $ref epoch ${SOURCE_DATE_EPOCH:-0}"
      sha256sum "$bin" "$root/scripts/oci-image.py" "$root/scripts/build-images.sh" "$files/passwd" "$files/group" | cut -d' ' -f1
      printf '%s\n' "${libs[@]}"
      for ((i = 0; i < ${#libs[@]}; i += 2)); do
        [ "${libs[i]}" != --file ] || sha256sum "${libs[i + 1]%%:*}" | cut -d' ' -f1
      done
    } | sha256sum | cut -d' ' -f1
  )
  if [ -f "$archive" ] && [ "$(cat "$archive.stamp" 2>/dev/null)" = "$key" ]; then
    echo "==> $ref: up to date ($archive)" >&2
  else
    echo "==> packing $ref ($(du -h "$bin" | cut -f1) binary, $((${#libs[@]} / 2)) library files and links)" >&2
    rm -f "$archive.stamp"
    python3 "$root/scripts/oci-image.py" --out "$archive" --ref "$ref" \
      --file "$bin:/usr/local/bin/$name:0755" \
      --file "$files/passwd:/etc/passwd:0644" --file "$files/group:/etc/group:0644" \
      --dir /tmp:1777 \
      "${libs[@]}" \
      --user 65532:65532 --entrypoint "[\"/usr/local/bin/$name\"]" \
      --label "org.opencontainers.image.title=$name" --label "org.opencontainers.image.version=$version" \
      --label "org.opencontainers.image.source=https://github.com/llama-operator/llama-operator" \
      --label "org.opencontainers.image.licenses=Apache-2.0" >&2
    echo "$key" >"$archive.stamp"
    echo "    $(du -h "$archive" | cut -f1) $archive" >&2
  fi
  echo "$archive"
done
