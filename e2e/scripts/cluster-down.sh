#!/usr/bin/env bash
# Stops everything cluster-up.sh started and removes the cluster's data (etcd, S3, kubeconfig, env).
# Logs stay in e2e/.cluster/logs/ for a look after a failure; the CA and certificates stay too (they
# are reused by the next cluster-up). --purge removes the whole e2e/.cluster/ directory.
# Safe to run any number of times: it only signals pids from its own pid files, and only if that pid
# is still the component it names.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

STATE=$CLUSTER_STATE
RUN=$STATE/run
# Reverse start order: nothing loses its apiserver or etcd while it is still shutting down. opm,
# catalog and olm are the local OLM of hack/catalog-deploy.sh.
PROCS=(opm catalog olm minio kwok kube-scheduler kube-controller-manager kube-apiserver etcd)
GRACE=${GRACE:-10} # seconds between SIGTERM and SIGKILL

cluster_lock "$STATE"
# The real node first: its kubelet still reaches the API server while it stops.
"$E2E_DIR/scripts/real-node-down.sh" --quiet

# Signal every component first, then wait, so they stop in parallel.
declare -A pids=()
for name in "${PROCS[@]}"; do
  pidfile=$RUN/$name.pid
  [[ -s $pidfile ]] || continue
  pid=$(cat "$pidfile")
  if pid_runs "$name" "$pid"; then
    log "stopping $name (pid $pid)"
    # Each component leads its own process group (cluster-up starts it with setsid): signal the group.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    pids[$name]=$pid
  fi
done
deadline=$((SECONDS + GRACE))
for name in "${!pids[@]}"; do
  pid=${pids[$name]}
  while pid_runs "$name" "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
  if pid_runs "$name" "$pid"; then
    log "$name (pid $pid) ignored SIGTERM for ${GRACE}s: killing it"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
done
# A stopped component is a zombie until init reaps it, which can take a moment: wait (briefly) so
# that nothing of the cluster shows in ps once this script returns.
deadline=$((SECONDS + 5))
for pid in "${pids[@]}"; do
  while [[ $(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null) == Z ]] && ((SECONDS < deadline)); do
    sleep 0.1
  done
done

if [[ ${1:-} == --purge ]]; then
  rm -rf "$STATE"
  log "removed $STATE"
else
  rm -rf "$RUN" "$STATE/etcd" "$STATE/s3" "$STATE/kubeconfig" "$STATE/env"
fi
log "cluster down"
