#!/usr/bin/env bash
# Operator scale run (a benchmark, not part of `make test`): one FileIntegrity over NODES kwok nodes.
#
# Starts a SEPARATE local cluster (its own state directory and free ports, so the shared test cluster
# in e2e/.cluster is never touched) with NODES fake nodes, runs fim-operator against it, creates one
# FileIntegrity selecting every node, writes one Succeeded FileIntegrityNodeStatus per node the way
# the agent does (server-side apply, field manager fim-agent, owned by and labelled with the
# FileIntegrity; WRITERS concurrent kubectl processes, one batch file each), and measures:
#   - time from creating the FileIntegrity to phase Active, and to all statuses written;
#   - the operator's CPU time (/proc/<pid>/stat utime+stime) and peak RSS (/proc/<pid>/status VmHWM);
#   - the steady state: reconciles, CPU and the API server's LIST requests for node statuses and
#     nodes over STEADY_SECONDS with nothing changing (after the DaemonSet is fully rolled out).
# The cluster is torn down at the end (KEEP_CLUSTER=1 keeps it). Results: $OUT/results.md.
#
# Env: NODES (1000), WRITERS (8), STEADY_SECONDS (60), OPERATOR_BIN (target/debug/fim-operator),
#      BENCH_CLUSTER_DIR (~/.cache/kube-fim/bench/operator-cluster), BENCH_OUT
#      (~/.cache/kube-fim/bench/operator-scale), TIMEOUT (seconds per wait, 900).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
NODES=${NODES:-1000}
WRITERS=${WRITERS:-8}
STEADY_SECONDS=${STEADY_SECONDS:-60}
TIMEOUT=${TIMEOUT:-900}
CACHE=${KUBE_FIM_CACHE:-$HOME/.cache/kube-fim}
OUT=${BENCH_OUT:-$CACHE/bench/operator-scale}
OPERATOR_BIN=${OPERATOR_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/fim-operator}
NS=kube-fim-bench
FI=scale

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The bench cluster's state directory: never the shared test cluster's.
export KUBE_FIM_CLUSTER_DIR=${BENCH_CLUSTER_DIR:-$CACHE/bench/operator-cluster}
unset KUBE_FIM_CLUSTER_LOCKED
mkdir -p "$KUBE_FIM_CLUSTER_DIR" "$OUT"
shared=$(realpath -m "$ROOT/e2e/.cluster")
[[ $(realpath -m "$KUBE_FIM_CLUSTER_DIR") != "$shared" ]] ||
  die "BENCH_CLUSTER_DIR must not be the shared test cluster ($shared)"
[[ -x $OPERATOR_BIN ]] || die "no operator binary at $OPERATOR_BIN (cargo build -p kube-fim-operator)"
for tool in curl python3 getconf; do command -v "$tool" >/dev/null || die "$tool is needed"; done

# A private copy: a rebuild in the shared target dir must not swap the binary under the run.
BIN=$OUT/fim-operator
cp "$OPERATOR_BIN" "$BIN"

OPERATOR_PID=
cleanup() {
  local status=$?
  if [[ -n $OPERATOR_PID ]] && kill -0 "$OPERATOR_PID" 2>/dev/null; then
    kill -TERM "$OPERATOR_PID" 2>/dev/null || true
    wait "$OPERATOR_PID" 2>/dev/null || true
  fi
  if [[ ${KEEP_CLUSTER:-0} != 1 ]]; then
    log "stopping the bench cluster ($KUBE_FIM_CLUSTER_DIR)"
    "$ROOT/e2e/scripts/cluster-down.sh" >&2 || true
  fi
  exit "$status"
}
trap cleanup EXIT

# ---- cluster -----------------------------------------------------------------------------------
log "starting a bench cluster with $NODES kwok nodes in $KUBE_FIM_CLUSTER_DIR"
"$ROOT/e2e/scripts/cluster-down.sh" >/dev/null 2>&1 || true # a leftover from an interrupted run
t=$SECONDS
NODES=$NODES TIMEOUT=$TIMEOUT "$ROOT/e2e/scripts/cluster-up.sh" >&2
CLUSTER_UP_SECONDS=$((SECONDS - t))
set -a
# shellcheck disable=SC1091
source "$KUBE_FIM_CLUSTER_DIR/env"
set +a
k() { "$KUBECTL" "$@"; }

# wait_until WHAT CMD...: retry CMD every 0.5 s until it succeeds or TIMEOUT seconds pass.
wait_until() {
  local what=$1 deadline=$((SECONDS + TIMEOUT))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${TIMEOUT}s waiting for $what"
    sleep 0.5
  done
}

for crd in "$ROOT"/config/crd/fim.kubefim.io_*.yaml; do k apply --server-side -f "$crd" >/dev/null; done
k wait --for=condition=Established --timeout=60s crd --all >/dev/null
k create namespace "$NS" >/dev/null
k -n "$NS" create serviceaccount fim-agent >/dev/null

# ---- operator ----------------------------------------------------------------------------------
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
KUBECONFIG=$KUBECONFIG RUST_LOG=info,fim_operator=debug POD_NAME=bench \
  "$BIN" --namespace "$NS" --metrics-addr "127.0.0.1:$PORT" --agent-image kube-fim/agent:bench \
  >"$OUT/operator.log" 2>&1 &
OPERATOR_PID=$!
wait_until "the operator to be ready" curl -fsS "http://127.0.0.1:$PORT/readyz"

TCK=$(getconf CLK_TCK)
cpu_seconds() { awk -v t="$TCK" '{printf "%.2f", ($14 + $15) / t}' "/proc/$OPERATOR_PID/stat"; }
vm_kib() { awk -v f="$1:" '$1 == f {print $2}' "/proc/$OPERATOR_PID/status"; }
reconciles() { sed 's/\x1b\[[0-9;]*m//g' "$OUT/operator.log" | grep -c "reconciled fi=$FI" || true; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }
phase() { k -n "$NS" get fileintegrity "$FI" -o jsonpath='{.status.phase}' 2>/dev/null; }
# Sum of the API server's request counters for VERB on RESOURCE.
api_requests() {
  k get --raw /metrics | awk -v r="resource=\"$2\"" -v v="verb=\"$1\"" \
    '/^apiserver_request_total\{/ && index($0, r) && index($0, v) {s += $NF} END {printf "%d", s}'
}
CPU_IDLE=$(cpu_seconds)
LIST_FINS0=$(api_requests LIST fileintegritynodestatuses) LIST_NODES0=$(api_requests LIST nodes)

# ---- one FileIntegrity over every node ---------------------------------------------------------
log "creating FileIntegrity $FI over all $NODES nodes"
T0=$(now)
k -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: fim.kubefim.io/v1alpha1
kind: FileIntegrity
metadata: {name: $FI}
spec: {config: {gracePeriod: 900}}
EOF
UID_FI=$(k -n "$NS" get fileintegrity "$FI" -o jsonpath='{.metadata.uid}')
ds_desired() {
  [[ $(k -n "$NS" get daemonset "fim-agent-$FI" -o jsonpath='{.status.desiredNumberScheduled}') == "$NODES" ]]
}
wait_until "the DaemonSet to select $NODES nodes" ds_desired
DS_SECONDS=$(since "$T0")
log "DaemonSet selects $NODES nodes after ${DS_SECONDS}s; phase $(phase)"

# ---- node statuses, as the agents write them ---------------------------------------------------
BATCHES=$OUT/statuses
rm -rf "$BATCHES"
mkdir -p "$BATCHES"
k get nodes -l type=kwok -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' >"$OUT/nodes.txt"
python3 - "$OUT/nodes.txt" "$BATCHES" "$WRITERS" "$NS" "$FI" "$UID_FI" <<'PY'
import json, sys
nodes_file, out, writers, ns, fi, uid = sys.argv[1:]
nodes = [n for n in open(nodes_file).read().split() if n]
files = [open(f"{out}/batch-{i}.json", "w") for i in range(int(writers))]
items = [[] for _ in files]
for i, node in enumerate(nodes):
    result = {"condition": "Succeeded", "lastProbeTime": "2026-01-01T00:00:00Z"}
    items[i % len(files)].append({
        "apiVersion": "fim.kubefim.io/v1alpha1", "kind": "FileIntegrityNodeStatus",
        "metadata": {
            "name": f"{fi}-{node}", "namespace": ns,
            "labels": {"fim.kubefim.io/owner": fi, "fim.kubefim.io/node": node},
            "ownerReferences": [{"apiVersion": "fim.kubefim.io/v1alpha1", "kind": "FileIntegrity",
                                 "name": fi, "uid": uid}],
        },
        "nodeName": node, "results": [result], "lastResult": result,
    })
for f, its in zip(files, items):
    json.dump({"apiVersion": "v1", "kind": "List", "items": its}, f)
PY
log "writing $(wc -l <"$OUT/nodes.txt") node statuses with $WRITERS concurrent writers"
T_WRITE=$(now)
pids=()
for f in "$BATCHES"/batch-*.json; do
  k apply --server-side --field-manager=fim-agent --force-conflicts -f "$f" >/dev/null &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || die "a status writer failed"; done
WRITE_SECONDS=$(since "$T_WRITE")
WRITTEN_SECONDS=$(since "$T0")
log "statuses written in ${WRITE_SECONDS}s"

is_active() { [[ $(phase) == Active ]]; }
wait_until "phase Active" is_active
ACTIVE_SECONDS=$(since "$T0")
CPU_ACTIVE=$(cpu_seconds)
RECONCILES_ACTIVE=$(reconciles)
HWM_ACTIVE=$(vm_kib VmHWM)
LIST_FINS_ACTIVE=$(($(api_requests LIST fileintegritynodestatuses) - LIST_FINS0))
LIST_NODES_ACTIVE=$(($(api_requests LIST nodes) - LIST_NODES0))
log "Active after ${ACTIVE_SECONDS}s (operator CPU $CPU_ACTIVE s, peak RSS ${HWM_ACTIVE} KiB, $RECONCILES_ACTIVE reconciles)"

# ---- steady state ------------------------------------------------------------------------------
ds_rolled_out() {
  local s
  s=$(k -n "$NS" get daemonset "fim-agent-$FI" \
    -o jsonpath='{.status.numberReady}/{.status.updatedNumberScheduled}/{.status.desiredNumberScheduled}')
  [[ $s == "$NODES/$NODES/$NODES" ]]
}
wait_until "all $NODES agent pods ready" ds_rolled_out
ROLLED_OUT_SECONDS=$(since "$T0")
sleep 5 # let the last DaemonSet status update be reconciled
log "measuring the steady state for ${STEADY_SECONDS}s"
R0=$(reconciles) C0=$(cpu_seconds) L0=$(api_requests LIST fileintegritynodestatuses) N0=$(api_requests LIST nodes)
sleep "$STEADY_SECONDS"
R1=$(reconciles) C1=$(cpu_seconds) L1=$(api_requests LIST fileintegritynodestatuses) N1=$(api_requests LIST nodes)
HWM=$(vm_kib VmHWM)
RSS=$(vm_kib VmRSS)
STEADY_RECONCILES=$((R1 - R0))
STEADY_CPU=$(python3 -c "print(f'{$C1 - $C0:.2f}')")
STEADY_LIST_FINS=$((L1 - L0))
STEADY_LIST_NODES=$((N1 - N0))
[[ $(phase) == Active ]] || die "phase left Active during the steady state: $(phase)"

profile=debug
[[ $OPERATOR_BIN == */release/* ]] && profile=release
cat >"$OUT/results.md" <<EOF
Operator scale run, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, operator $profile build ($OPERATOR_BIN):
$NODES kwok nodes (cluster up in ${CLUSTER_UP_SECONDS}s), one FileIntegrity over all of them,
$NODES Succeeded node statuses written by $WRITERS concurrent server-side-apply writers.

| measure | value |
|---|---:|
| FileIntegrity created → DaemonSet selects $NODES nodes | ${DS_SECONDS} s |
| $NODES node statuses written (took ${WRITE_SECONDS} s) | ${WRITTEN_SECONDS} s |
| FileIntegrity created → phase Active | ${ACTIVE_SECONDS} s |
| FileIntegrity created → all agent pods ready | ${ROLLED_OUT_SECONDS} s |
| operator CPU until Active (after start-up: $CPU_IDLE s) | $CPU_ACTIVE s |
| reconciles until Active | $RECONCILES_ACTIVE |
| LIST fileintegritynodestatuses / nodes until Active (API server, all clients) | $LIST_FINS_ACTIVE / $LIST_NODES_ACTIVE |
| operator peak RSS at Active (VmHWM) | $((HWM_ACTIVE / 1024)) MiB |
| operator peak RSS at the end (VmHWM), current RSS | $((HWM / 1024)) MiB, $((RSS / 1024)) MiB |
| steady state, ${STEADY_SECONDS} s unchanged: reconciles | $STEADY_RECONCILES |
| steady state: operator CPU | $STEADY_CPU s |
| steady state: LIST fileintegritynodestatuses / nodes (API server, all clients) | $STEADY_LIST_FINS / $STEADY_LIST_NODES |
EOF
cat "$OUT/results.md"
