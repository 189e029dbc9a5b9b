#!/usr/bin/env bash
# Peak RSS of fim-agent init, full check and incremental check on a generated tree of
# 1,000,000 small files (1,000 directories of 1,000 files; names mix '-', '.' and '/' neighbours
# so the walk's full-path order is exercised). The target: <= 64 MiB, i.e. memory does not grow
# with the number of files. The tree is generated once under $BENCH_WORK/rss-tree-$RSS_FILES.
#
# Environment: RSS_FILES (default 1000000), BENCH_WORK (default $HOME/.cache/kube-fim/bench),
# FIM (default: the release fim-agent in $CARGO_TARGET_DIR or target/), BENCH_THREADS (nproc).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
RSS_FILES=${RSS_FILES:-1000000}
BENCH_WORK=${BENCH_WORK:-$HOME/.cache/kube-fim/bench}
BENCH_THREADS=${BENCH_THREADS:-$(nproc)}
FIM=${FIM:-${CARGO_TARGET_DIR:-$REPO/target}/release/fim-agent}
LIMIT_MIB=64

[[ -x $FIM ]] || { echo "rss-1m: $FIM not found (cargo build --release -p kube-fim-agent)" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { echo "rss-1m: /usr/bin/time is missing" >&2; exit 1; }
W=$BENCH_WORK/rss-$RSS_FILES
TREE=$BENCH_WORK/rss-tree-$RSS_FILES
mkdir -p "$W"

if [[ ! -e $TREE/.complete ]]; then
    echo "==> generating $RSS_FILES files under $TREE" >&2
    rm -rf "$TREE"
    python3 - "$TREE" "$RSS_FILES" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
per_dir = 1000
for d in range((n + per_dir - 1) // per_dir):
    # d0001, d0001-x and d0001.x sort around d0001/...: the walk must merge them in byte order.
    sub = os.path.join(root, f"d{d:04d}" + ("", "-x", ".x")[d % 3])
    os.makedirs(sub, exist_ok=True)
    for f in range(min(per_dir, n - d * per_dir)):
        with open(os.path.join(sub, f"f{f:03d}"), "wb") as fh:
            fh.write(b"%d/%d\n" % (d, f))
open(os.path.join(root, ".complete"), "w").close()
EOF
fi

printf '/ p+i+n+u+g+s+m+c+sha256\n!/\\.complete$\n' >"$W/fim.conf"
run() {
    local name=$1
    shift
    # %M: peak RSS in KiB.
    /usr/bin/time -f '%e %M' -o "$W/$name.time" "$FIM" "$@" --root "$TREE" --config "$W/fim.conf" \
        --db "$W/fim.db" --format json --threads "$BENCH_THREADS" >"$W/$name.out" 2>"$W/$name.err" || {
        rc=$?
        # check exits with AIDE's bits when something differs; anything else is an error.
        ((rc < 8)) || { echo "rss-1m: $name failed ($rc): $(head -c 300 "$W/$name.err")" >&2; exit 1; }
    }
    read -r secs kib <"$W/$name.time"
    mib=$(((kib + 1023) / 1024))
    verdict=PASS
    ((mib <= LIMIT_MIB)) || verdict=FAIL
    printf '%-20s %8ss %6s MiB peak RSS  (<= %s MiB: %s)\n' "$name" "$secs" "$mib" "$LIMIT_MIB" "$verdict"
}
run init init --force
run check check
run check-incremental check --incremental
