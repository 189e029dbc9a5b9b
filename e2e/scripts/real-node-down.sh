#!/usr/bin/env bash
# Stops what real-node-up.sh started and undoes what the kubelet changed on the machine: the kubelet,
# every container and sandbox (their shims outlive containerd), containerd, the API relay, the mounts
# under $STATE/node, the /kubepods cgroups, the pods' and the node's network namespaces, the kernel
# tunables the kubelet rewrote, the fixed host paths it created. Keeps $STATE/node/pki and the logs.
# Safe to run any number of times; only signals pids from its own pid files (or shims whose
# command line names this node's containerd socket). --quiet: say nothing when there is nothing to do.
set -uo pipefail
source "$(dirname "$0")/lib.sh"

STATE=$CLUSTER_STATE
NODE=$STATE/node RUN=$STATE/run
NETNS=kube-fim-node
POD_SUBNET_PREFIX=10.213.1.
SOCK=$NODE/containerd/containerd.sock
OWNER=/run/kube-fim-real-node.owner
GRACE=${GRACE:-10}
quiet=0
[[ ${1:-} == --quiet ]] && quiet=1
say() { ((quiet)) || log "$@"; }

cluster_lock "$STATE"
# Another cluster's real node is not ours to stop.
owner=$(cat "$OWNER" 2>/dev/null || true)
if [[ -n $owner && $owner != "$STATE" ]]; then
  exit 0
fi

# stop NAME BIN: SIGTERM the pid in run/NAME.pid if it still runs BIN, SIGKILL after GRACE seconds.
stop() {
  local pid
  pid=$(cat "$RUN/$1.pid" 2>/dev/null) || return 0
  if pid_runs "$2" "$pid"; then
    log "stopping $1 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null
    local deadline=$((SECONDS + GRACE))
    while pid_runs "$2" "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    pid_runs "$2" "$pid" && kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$RUN/$1.pid"
}

stop kubelet kubelet
# Every container and sandbox task, killed through containerd while it still runs.
if [[ -S $SOCK ]] && ctr -a "$SOCK" version >/dev/null 2>&1; then
  ctr_=(ctr -a "$SOCK" -n k8s.io)
  tasks=$("${ctr_[@]}" tasks ls -q 2>/dev/null)
  if [[ -n $tasks ]]; then
    log "killing $(wc -w <<<"$tasks") container task(s)"
    for t in $tasks; do "${ctr_[@]}" tasks kill -s SIGKILL "$t" >/dev/null 2>&1; done
    for _ in $(seq 50); do
      [[ -z $("${ctr_[@]}" tasks ls 2>/dev/null | awk 'NR > 1 && $3 != "STOPPED"') ]] && break
      sleep 0.1
    done
    for t in $tasks; do "${ctr_[@]}" tasks rm -f "$t" >/dev/null 2>&1; done
  fi
fi
stop containerd containerd
# Shims of this containerd that are still there (matched by the socket in their command line).
for d in /proc/[0-9]*; do
  c=$(tr '\0' ' ' 2>/dev/null <"$d/cmdline") || continue
  if [[ $c == *containerd-shim-runc-v2*"-address $SOCK "* ]]; then
    say "killing leftover shim ${d#/proc/}"
    kill -KILL "${d#/proc/}" 2>/dev/null
  fi
done
stop node-apiproxy "$(basename "$(python_exe)")"

# Pod network namespaces made by the CRI plugin (/run/netns/cni-*): only those holding one of this
# node's pod addresses.
for f in /run/netns/cni-*; do
  [[ -e $f ]] || continue
  if ip -n "$(basename "$f")" -4 -o addr 2>/dev/null | grep -q " inet $POD_SUBNET_PREFIX"; then
    say "removing pod network namespace $(basename "$f")"
    ip netns del "$(basename "$f")" 2>/dev/null || { umount "$f" 2>/dev/null; rm -f "$f"; }
  fi
done
# Mounts under the node's directory (container rootfs overlays, shm, projected volumes, the
# kubelet's bind mount of its root dir), deepest first.
if [[ -d $NODE ]]; then
  findmnt -rn -o TARGET | grep "^$NODE/" | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
  done
fi
# The pod cgroups (cgroupfs driver) in every hierarchy, leaf first; the kubelet leaves them behind.
for c in /sys/fs/cgroup/*/kubepods; do
  [[ -d $c ]] || continue
  find "$c" -depth -type d -exec rmdir {} + 2>/dev/null
done
if ip netns list 2>/dev/null | grep -q "^$NETNS\b"; then
  say "removing network namespace $NETNS"
  ip netns del "$NETNS"
fi
# The node's mount namespace (its mounts go with it once nothing runs in it).
if [[ -e /run/kube-fim-node.mnt ]]; then
  umount /run/kube-fim-node.mnt 2>/dev/null
  rm -f /run/kube-fim-node.mnt
fi
# The host end of the node's veth goes with the namespace, unless something still held it.
# Namespace removal is asynchronous: wait for the link to go so a next start can reuse its name.
for _ in $(seq 50); do ip link show kfim-host >/dev/null 2>&1 || break; sleep 0.1; done
ip link del kfim-host 2>/dev/null
# The shims' fixed socket directory, if nothing else uses it.
rmdir /run/containerd/s /run/containerd 2>/dev/null
# What the kubelet changed on the host, from the notes real-node-up.sh took before it started.
if [[ -s $NODE/host-state ]]; then
  while read -r kind what; do
    case $kind in
      sysctl) sysctl -q -w "$what" ;;
      created) rm -rf "$what" ;;
    esac
  done <"$NODE/host-state"
  rm -f "$NODE/host-state"
fi
# Runtime data (pods, containers, images: re-imported at the next start); pki and logs stay.
# --one-file-system: a mount that would not go away is never descended into.
if [[ -d $NODE ]]; then
  rm -rf --one-file-system "$NODE/containerd" "$NODE/kubelet" "$NODE/pod-logs" "$NODE/cni"
fi
[[ -f $STATE/env ]] && sed -i '/^REAL_NODE/d' "$STATE/env"
[[ $owner == "$STATE" ]] && rm -f "$OWNER"
say "real node down"
exit 0
