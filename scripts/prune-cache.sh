#!/usr/bin/env bash
# Keeps the shared Cargo target directories from filling the disk. Every change of the code leaves new test
# binaries (hundreds of MB each, with debug info) beside the old ones, and incremental state grows with them;
# a cache reused for weeks grew to 45 GB here and a test run died with "No space left on device". When the
# cache's file system has less than PRUNE_FREE_GB (default 25) free, this removes the incremental state and
# every executable in target*/*/deps that a newer build of the same crate target superseded. Nothing a
# current build needs goes: cargo rebuilds what it misses.
set -euo pipefail
cache="${LLAMA_OP_CACHE:-$HOME/.cache/llama-operator}"
want="${PRUNE_FREE_GB:-25}"
[ -d "$cache" ] || exit 0
free_gb=$(df -Pk "$cache" | awk 'NR == 2 {print int($4 / 1048576)}')
[ "$free_gb" -ge "$want" ] && exit 0
echo "==> $free_gb GB free under $cache (< $want): pruning stale build outputs" >&2
for t in "$cache"/target "$cache"/fuzz-target; do
  [ -d "$t" ] || continue
  find "$t" -maxdepth 3 -type d -name incremental -prune -exec rm -rf {} + 2>/dev/null || true
  python3 - "$t" <<'PY'
import os, re, sys, collections
freed = 0
for root, dirs, files in os.walk(sys.argv[1]):
    if os.path.basename(root) != "deps":
        continue
    groups = collections.defaultdict(list)
    for f in files:
        m = re.fullmatch(r"(.+)-[0-9a-f]{16}", f)  # test and build-script executables have no extension
        p = os.path.join(root, f)
        if m and os.access(p, os.X_OK):
            groups[m.group(1)].append((os.path.getmtime(p), p))
    for items in groups.values():
        for _, p in sorted(items, reverse=True)[1:]:
            freed += os.path.getsize(p)
            os.remove(p)
print(f"==> removed {freed / 1e9:.1f} GB of superseded executables under {sys.argv[1]}", file=sys.stderr)
PY
done
echo "==> now $(df -Pk "$cache" | awk 'NR == 2 {print int($4 / 1048576)}') GB free" >&2
