#!/usr/bin/env bash
# Keeps the shared cargo target from filling the disk. Every commit relinks each test binary under
# a new hash and cargo never removes the old ones, so a cache reused across many checkouts (CI)
# grows until the linker dies mid-run. When less than KUBE_FIM_MIN_FREE_GIB (default 30) GiB is
# free, the incremental state goes first, then the whole debug tree (rebuilt from scratch: slower,
# but a run that fits beats one that fails).
set -euo pipefail
target=${CARGO_TARGET_DIR:-$HOME/.cache/kube-fim/target}
min_free=${KUBE_FIM_MIN_FREE_GIB:-30}
[[ -d $target/debug ]] || exit 0

free_gib() { df -P --block-size=1G "$target" | awk 'NR == 2 { print $4 }'; }

for stale in "$target/debug/incremental" "$target/debug"; do
  free=$(free_gib)
  ((free >= min_free)) && exit 0
  echo "prune-cache: $free GiB free (want $min_free): removing $stale" >&2
  rm -rf "$stale"
done
