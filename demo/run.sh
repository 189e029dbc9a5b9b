#!/usr/bin/env bash
# The kube-fim demo, one command from a fresh clone (`make demo`): tamper with a node, watch the
# cluster say so.
#
#   1. builds fim-operator and fim-agent (debug, like the e2e tests) and brings up the local cluster
#      (e2e/scripts/cluster-up.sh: real control plane, 3 kwok nodes; reused if already up);
#   2. installs the CRDs, the kube-fim namespace and the agent's service account, RBAC and admission
#      policies from config/ (config/manager's operator Deployment is left out: kwok would only fake
#      its pod; the operator runs here as a local process with the admin kubeconfig instead, so
#      config/rbac, its identity in the cluster, is not needed either);
#   3. starts fim-operator, creates the rules ConfigMap and a FileIntegrity over the kwok nodes;
#   4. per node: waits for the agent pod kwok "runs" there, gets a token bound to that pod, makes a
#      small root tree for the node and starts `fim-agent daemon` on it (the pod's stand-in);
#   5. waits for Active, starts Prometheus (Debian's package) with config/prometheus/rules.yaml;
#   6. changes a file on one node and shows, with the measured time, what a user sees: the node
#      status, the Warning event, the failure report, the node_failed metric, the firing alert;
#   7. re-inits through the annotation and shows the node back to Succeeded;
#   8. on the real node (real-node-0: kubelet, containerd, runc; when the cluster has it): a second
#      FileIntegrity whose agent is a real pod, built by the operator from the test image, watching
#      a directory made for the demo on this machine; a change there turns the node Failed;
#   9. stops everything it started, the cluster too if it started it (also on failure).
#
# Env: KEEP=1 leaves everything running and prints how to look around and how to stop it;
#      KUBE_FIM_CLUSTER_DIR runs on another cluster state directory (own ports), e.g.
#      /tmp/kube-fim-demo-cluster, leaving e2e/.cluster alone; TIMEOUT seconds per wait (60);
#      OPERATOR_BIN and AGENT_BIN (both) use those binaries instead of building.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=SCRIPTDIR/../e2e/scripts/lib.sh
source "$ROOT/e2e/scripts/lib.sh" # log, die, pid_runs, CLUSTER_STATE, KUBE_FIM_CACHE
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$KUBE_FIM_CACHE/target}
KEEP=${KEEP:-0}
TIMEOUT=${TIMEOUT:-60}
NS=kube-fim
FI=demo
FI_REAL=demo-real
TAMPERED_FILE=etc/ssh/sshd_config
STATE=$CLUSTER_STATE # from lib.sh: KUBE_FIM_CLUSTER_DIR or e2e/.cluster

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# show CMD...: print the command (as the user would type it) and run it, indented.
show() {
  printf '$ %s\n' "$*" | sed 's/^\$ k /$ kubectl /'
  "$@" 2>&1 | sed 's/^/  /'
}
k() { "$KUBECTL" "$@"; }
now() { date +%s.%N; }
elapsed() { python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.3f}")' "$1" "$2"; }

# wait_until WHAT CMD...: retry CMD (every 0.2 s) until it succeeds or TIMEOUT seconds pass; on
# timeout fail with CMD's last output. CMD returning 99 means it can never succeed (a process died):
# fail at once.
wait_until() {
  local what=$1 deadline=$((SECONDS + TIMEOUT)) out rc
  shift
  while true; do
    if out=$("$@" 2>&1); then return 0; else rc=$?; fi
    ((rc != 99)) || die "while waiting for $what: $out"
    if ((SECONDS >= deadline)); then
      die "timed out after ${TIMEOUT}s waiting for $what; last answer: ${out:-(none)}"
    fi
    sleep 0.2
  done
}

for tool in curl python3 setsid cargo; do
  command -v "$tool" >/dev/null || die "$tool is needed"
done

# ---- what this run started, stopped at exit -------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kube-fim-demo.XXXXXX")
mkdir -p "$WORK/run" "$WORK/logs" "$WORK/nodes"
CLUSTER_STARTED=0
DEMO_OBJECTS=0
REAL_DIR= # the real node's watched directory, on this machine (its agent pod sees it under /host)
KUBECTL=kubectl
WATCH_PID=

# start_proc NAME [ENV=VALUE...] CMD...: runs CMD detached (own session, so a Ctrl-C reaching the
# demo is handled by its trap, and KEEP=1 can leave it running), log in $WORK/logs/NAME.log, pid in
# $WORK/run/NAME.pid (written by the process itself just before exec, so it is CMD's pid).
start_proc() {
  local name=$1
  shift
  # A background job of a script is no process-group leader, so setsid does not fork: setsid,
  # then env, exec into CMD and $! is CMD's pid.
  setsid env "$@" </dev/null >"$WORK/logs/$name.log" 2>&1 &
  echo $! >"$WORK/run/$name.pid"
}
# proc_alive NAME: its process is there and no zombie (right after start it may still be setsid
# or env on the way to exec'ing CMD, so the binary is not checked).
proc_alive() {
  local pidfile=$WORK/run/$1.pid state
  [[ -s $pidfile ]] || return 1
  state=$(awk '$1 == "State:" {print $2}' "/proc/$(cat "$pidfile")/status" 2>/dev/null) || return 1
  [[ -n $state && $state != Z ]]
}
# check_proc NAME: if it died, say so with its log and return 99 (wait_until gives up).
check_proc() {
  proc_alive "$1" && return 0
  echo "$1 exited; last lines of $WORK/logs/$1.log:"
  tail -n 20 "$WORK/logs/$1.log" || true
  return 99
}

stop_procs() {
  local f pid name deadline
  declare -A pids=()
  for f in "$WORK"/run/*.pid; do
    [[ -s $f ]] || continue
    name=$(basename "$f" .pid)
    pid=$(cat "$f")
    if [[ $(readlink "/proc/$pid/exe" 2>/dev/null) =~ /(fim-agent|fim-operator|prometheus|setsid|env)( \(deleted\))?$ ]]; then
      kill -TERM "$pid" 2>/dev/null || true
      pids[$name]=$pid
    fi
    rm -f "$f"
  done
  deadline=$((SECONDS + 20))
  for name in "${!pids[@]}"; do
    pid=${pids[$name]}
    while readlink "/proc/$pid/exe" >/dev/null 2>&1 && ((SECONDS < deadline)); do sleep 0.1; done
    if readlink "/proc/$pid/exe" >/dev/null 2>&1; then
      log "$name (pid $pid) ignored SIGTERM: killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [[ -n $WATCH_PID ]]; then kill -TERM -- "-$WATCH_PID" 2>/dev/null || true; fi
  if [[ $KEEP == 1 && $status -eq 0 ]]; then
    keep_message
    exit 0
  fi
  step "Cleaning up"
  stop_procs
  if ((CLUSTER_STARTED)); then
    log "stopping the cluster this demo started ($STATE)"
    "$ROOT/e2e/scripts/cluster-down.sh" >/dev/null 2>&1 || log "cluster-down failed: run e2e/scripts/cluster-down.sh"
  elif ((DEMO_OBJECTS)); then
    # A cluster that was already up keeps running: remove only the demo's own objects.
    k delete fileintegrity "$FI" "$FI_REAL" -n "$NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
    k delete configmap "$FI-rules" "$FI_REAL-rules" -n "$NS" --ignore-not-found >/dev/null 2>&1 || true
    log "removed the demo's FileIntegrity and rules from the cluster, which stays up"
  fi
  if ((status == 0)); then
    rm -rf "$WORK" "$REAL_DIR"
    log "demo finished"
  else
    log "demo FAILED (exit $status); logs of the operator, agents and Prometheus kept in $WORK/logs"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

keep_message() {
  local down
  if ((CLUSTER_STARTED)); then
    down="KUBE_FIM_CLUSTER_DIR=$STATE \"$ROOT/e2e/scripts/cluster-down.sh\""
  else # the cluster was up before the demo: it stays, without the demo's objects
    down="\"$KUBECTL\" --kubeconfig \"$KUBECONFIG\" delete fileintegrity/$FI fileintegrity/$FI_REAL configmap/$FI-rules configmap/$FI_REAL-rules -n $NS --ignore-not-found"
  fi
  cat >"$WORK/stop.sh" <<EOF
#!/usr/bin/env bash
# Stops what \`KEEP=1 make demo\` left running (the agents, the operator, Prometheus, the cluster
# if the demo started it) and removes its work directory.
pids=()
for f in "$WORK"/run/*.pid; do [[ -s \$f ]] && pids+=("\$(cat "\$f")"); done
kill -TERM "\${pids[@]}" 2>/dev/null
for pid in "\${pids[@]}"; do
  for _ in {1..200}; do [[ -d /proc/\$pid ]] || break; sleep 0.1; done
done
$down
rm -rf "$WORK" "$REAL_DIR"
EOF
  chmod +x "$WORK/stop.sh"
  step "Everything is still running (KEEP=1)"
  cat <<EOF
  set -a; . $STATE/env; set +a
  "\$KUBECTL" get fi,fins -n $NS
  echo hacked >> $WORK/nodes/kwok-node-1/root/etc/hosts     # tamper with another node
  "\$KUBECTL" annotate fi $FI -n $NS fim.kubefim.io/re-init=  # accept the changes
  curl -sk -H "Authorization: Bearer \$(cat $METRICS_TOKEN)" https://127.0.0.1:$OPERATOR_PORT/metrics | grep node_failed    # operator metrics
  Prometheus:  http://127.0.0.1:$PROM_PORT  (ALERTS, file_integrity_operator_node_failed, fim_agent_*)
  logs:        $WORK/logs/
  stop it all: $WORK/stop.sh
EOF
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# time_to_failed FINS CMD...: runs CMD (the tampering) at CHANGED_AT and sets DETECTED to the seconds from just
# before it to the node status FINS saying Failed (a global, not printed: in a $(...) subshell a
# failure would leave the watch running). A watch on the status, each line stamped on arrival, is
# started first, so the measurement is the change-to-API time, not kubectl's start-up.
time_to_failed() {
  local fins=$1 watch_log t_failed
  shift
  watch_log=$WORK/logs/watch-$fins.log
  # Its own process group (setsid without a fork, as in start_proc), stopped as a whole.
  # shellcheck disable=SC2016 # expanded by the inner bash
  setsid bash -c '"$0" get fins "$1" -n "$2" --watch -o jsonpath="{.lastResult.condition}{\"\n\"}" 2>&1 |
    while IFS= read -r line; do printf "%s %s\n" "$(date +%s.%N)" "$line"; done' "$KUBECTL" "$fins" "$NS" \
    </dev/null >"$watch_log" &
  WATCH_PID=$!
  watch_started() { [[ -s $watch_log ]] || { echo "no line yet"; return 1; }; }
  wait_until "the watch on $fins" watch_started
  CHANGED_AT=$(now)
  "$@"
  watch_failed() { grep -q ' Failed$' "$watch_log" || { tail -n1 "$watch_log"; return 1; }; }
  wait_until "$fins to say Failed" watch_failed
  t_failed=$(grep -m1 ' Failed$' "$watch_log" | cut -d' ' -f1)
  kill -TERM -- "-$WATCH_PID" 2>/dev/null || true
  WATCH_PID=
  DETECTED=$(elapsed "$CHANGED_AT" "$t_failed")
}

# ---- 1. build and cluster -------------------------------------------------------------------
if [[ -n ${OPERATOR_BIN:-} && -n ${AGENT_BIN:-} ]]; then
  step "Using the given binaries: $OPERATOR_BIN, $AGENT_BIN"
else
  step "Building fim-operator and fim-agent (debug builds, as the e2e tests use)"
  cargo build -p kube-fim-operator -p kube-fim-agent 2>&1 | { grep -v '^ *Compiling' || true; } | sed 's/^/  /' ||
    die "cargo build -p kube-fim-operator -p kube-fim-agent failed (output above)"
  OPERATOR_BIN=$CARGO_TARGET_DIR/debug/fim-operator
  AGENT_BIN=$CARGO_TARGET_DIR/debug/fim-agent
fi
[[ -x $OPERATOR_BIN && -x $AGENT_BIN ]] || die "the build left no $OPERATOR_BIN or $AGENT_BIN"

step "Local cluster (control plane 1.34, etcd, kwok nodes) in $STATE"
if [[ -s $STATE/run/kube-apiserver.pid ]] && pid_runs kube-apiserver "$(cat "$STATE/run/kube-apiserver.pid")" &&
  [[ -f $STATE/env ]]; then
  log "already up: reusing it (and leaving it up)"
else
  CLUSTER_STARTED=1
  log "starting it (the first run builds the components from pinned Go modules: ~15 min)"
fi
"$ROOT/e2e/scripts/cluster-up.sh" 2>&1 | sed 's/^/  /'
# shellcheck disable=SC1091
set -a && source "$STATE/env" && set +a
[[ $KUBE_FIM_CLUSTER_DIR == "$STATE" ]] || die "$STATE/env names another cluster ($KUBE_FIM_CLUSTER_DIR)"
mapfile -t NODES < <(k get nodes -l type=kwok -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
((${#NODES[@]} > 0)) || die "no kwok nodes (label type=kwok) in the cluster"
show k get nodes -l type=kwok

# ---- 2. install ------------------------------------------------------------------------------
step "Installing the CRDs, namespace $NS and the agent's service account, RBAC and admission policies"
apply() { k apply --server-side --force-conflicts --field-manager=kube-fim-demo "$@"; }
apply -k "$ROOT/config/crd" | sed 's/^/  /'
k wait --for condition=established --timeout="${TIMEOUT}s" \
  crd/fileintegrities.fim.kubefim.io crd/fileintegritynodestatuses.fim.kubefim.io >/dev/null
apply -f "$ROOT/config/manager/namespace.yaml" | sed 's/^/  /'
apply -k "$ROOT/config/agent" | sed 's/^/  /'
# The metrics endpoints are HTTPS and need a token allowed to get /metrics: the reviews the
# operator and agents send, and the reader identity the demo (curl, Prometheus) scrapes with.
apply -f "$ROOT/config/rbac/metrics_auth_role.yaml" -f "$ROOT/config/rbac/metrics_reader_role.yaml" | sed 's/^/  /'
apply -f "$ROOT/config/prometheus/metrics_reader.yaml" | sed 's/^/  /'
METRICS_TOKEN=$WORK/metrics-token
(umask 077; k create token fim-metrics-reader -n "$NS" --duration 24h >"$METRICS_TOKEN")
# scrape PORT PATH: GET over HTTPS (self-signed: -k) with the reader's token.
scrape() { curl -fsSk -H "Authorization: Bearer $(cat "$METRICS_TOKEN")" "https://127.0.0.1:$1$2"; }
echo "  (config/manager's operator Deployment is skipped: the operator runs as a local process)"

# ---- 3. operator and FileIntegrity ----------------------------------------------------------
step "Starting fim-operator (local process, namespace $NS)"
OPERATOR_PORT=$(free_port)
start_proc operator KUBECONFIG="$KUBECONFIG" RUST_LOG=info \
  "$OPERATOR_BIN" --namespace "$NS" --metrics-addr "127.0.0.1:$OPERATOR_PORT" \
  --agent-image localhost/fim-agent:test --agent-api-server "$KUBE_APISERVER"
operator_ready() { check_proc operator || return; curl -fsSk "https://127.0.0.1:$OPERATOR_PORT/readyz"; }
wait_until "fim-operator to lead and be ready" operator_ready
echo "  fim-operator pid $(cat "$WORK/run/operator.pid"), metrics on 127.0.0.1:$OPERATOR_PORT, log $WORK/logs/operator.log"

step "Creating the rules ConfigMap and FileIntegrity '$FI' over the kwok nodes (type=kwok)"
DEMO_OBJECTS=1
# A FileIntegrity left by an earlier KEEP=1 run goes first, with what it owns (node statuses,
# reports, the DaemonSet), so nothing stale is read as this run's result.
if k get fileintegrity "$FI" -n "$NS" >/dev/null 2>&1; then
  log "removing the FileIntegrity $FI left from an earlier run"
  k delete fileintegrity "$FI" -n "$NS" --cascade=foreground --timeout="${TIMEOUT}s" >/dev/null
fi
RULES='# Files by content and metadata, directories by ownership and mode.
CONTENT = sha256+ftype+p+u+g+n+s+m+c
DIRS = ftype+p+u+g
/etc d DIRS
/etc f,l CONTENT
/usr/bin d DIRS
/usr/bin f,l CONTENT'
k create configmap "$FI-rules" -n "$NS" --from-literal=aide.conf="$RULES" --dry-run=client -o yaml | apply -f - >/dev/null
cat >"$WORK/fileintegrity.yaml" <<EOF
apiVersion: fim.kubefim.io/v1alpha1
kind: FileIntegrity
metadata:
  name: $FI
  namespace: $NS
spec:
  nodeSelector:
    type: kwok
  config:
    name: $FI-rules
    namespace: $NS
    key: aide.conf
    gracePeriod: 10
    maxBackups: 2
  realtime: true
EOF
sed 's/^/  /' "$WORK/fileintegrity.yaml"
apply -f "$WORK/fileintegrity.yaml" | sed 's/^/  /'

# ---- 4. one agent per node --------------------------------------------------------------------
step "Starting one fim-agent daemon per node, each with its own root tree and a token bound to its pod"
CA_DATA=$(k config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
# agent_pod NODE [FILEINTEGRITY]: the Running agent pod of the FileIntegrity ($FI) on NODE.
agent_pod() {
  local pod
  pod=$(k get pods -n "$NS" -l "fim.kubefim.io/owner=${2:-$FI}" --field-selector "spec.nodeName=$1,status.phase=Running" \
    -o jsonpath='{.items[0].metadata.name}' 2>/dev/null)
  [[ -n $pod ]] && echo "$pod"
}
make_tree() { # ROOT: a node's filesystem (only etc/ and usr/bin/ are monitored)
  mkdir -p "$1"/{etc/ssh,etc/app,usr/bin,var/log}
  printf '127.0.0.1 localhost\n' >"$1/etc/hosts"
  printf 'PermitRootLogin no\nPasswordAuthentication no\n' >"$1/etc/ssh/sshd_config"
  printf 'listen 8080\n' >"$1/etc/app/app.conf"
  printf '#!/bin/sh\necho tool\n' >"$1/usr/bin/tool"
  printf 'not monitored\n' >"$1/var/log/messages"
}
for node in "${NODES[@]}"; do
  wait_until "the agent pod on $node" agent_pod "$node"
  pod=$(agent_pod "$node")
  dir=$WORK/nodes/$node
  mkdir -p "$dir/baseline"
  make_tree "$dir/root"
  token=$(k create token fim-agent -n "$NS" --bound-object-kind Pod --bound-object-name "$pod" --duration 24h)
  (
    umask 077
    cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kube-fim
  cluster: {server: "$KUBE_APISERVER", certificate-authority-data: $CA_DATA}
users:
- name: fim-agent
  user: {token: $token}
contexts:
- name: fim-agent
  context: {cluster: kube-fim, user: fim-agent, namespace: $NS}
current-context: fim-agent
EOF
  )
  port=$(free_port)
  echo "127.0.0.1:$port" >"$dir/metrics-addr"
  start_proc "agent-$node" KUBECONFIG="$dir/kubeconfig" NODE_NAME="$node" RUST_LOG=info \
    "$AGENT_BIN" daemon --file-integrity "$FI" --namespace "$NS" --node "$node" \
    --root "$dir/root" --db-dir "$dir/baseline" --config-map "fim-config-$FI" \
    --grace-period 10 --max-backups 2 --metrics-addr "127.0.0.1:$port" --threads 1 --realtime
  printf '  %-12s pod %-16s root %s  metrics 127.0.0.1:%s\n' "$node" "$pod" "$dir/root" "$port"
done

step "Waiting for every node's baseline and the FileIntegrity to be Active"
all_succeeded() {
  local node out
  for node in "${NODES[@]}"; do
    check_proc "agent-$node" || return
    out=$(k get fins "$FI-$node" -n "$NS" -o jsonpath='{.lastResult.condition}' 2>&1) || true
    [[ $out == Succeeded ]] || { echo "$node: ${out:-no status yet}"; return 1; }
  done
}
fi_active() {
  local out
  out=$(k get fileintegrity "$FI" -n "$NS" -o jsonpath='{.status.phase} {.status.nodes}')
  [[ $out == "Active ${#NODES[@]}" ]] || { echo "phase, nodes: $out"; return 1; }
}
wait_until "every node Succeeded" all_succeeded
wait_until "FileIntegrity $FI Active over ${#NODES[@]} nodes" fi_active
show k get fi,fins -n "$NS" -o wide

# ---- 5. Prometheus ------------------------------------------------------------------------------
step "Starting Prometheus (Debian package) scraping the operator and agents, with config/prometheus/rules.yaml"
"$ROOT/e2e/scripts/ensure-prometheus.sh" | sed 's/^/  /'
PROM_PORT=$(free_port)
PROM=http://127.0.0.1:$PROM_PORT
agent_targets=$(for node in "${NODES[@]}"; do printf "'%s', " "$(cat "$WORK/nodes/$node/metrics-addr")"; done)
cat >"$WORK/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - '$ROOT/config/prometheus/rules.yaml'
scrape_configs:
  - job_name: fim-operator
    scheme: https
    tls_config: {insecure_skip_verify: true}
    authorization: {credentials_file: '$METRICS_TOKEN'}
    static_configs:
      - targets: ['127.0.0.1:$OPERATOR_PORT']
  - job_name: fim-agent
    scheme: https
    tls_config: {insecure_skip_verify: true}
    authorization: {credentials_file: '$METRICS_TOKEN'}
    static_configs:
      - targets: [${agent_targets%, }]
EOF
start_proc prometheus "$(command -v prometheus)" --config.file="$WORK/prometheus.yml" \
  --storage.tsdb.path="$WORK/prometheus-data" --web.listen-address="127.0.0.1:$PROM_PORT"
prom_ready() { check_proc prometheus || return; curl -fsS "$PROM/-/ready"; }
wait_until "Prometheus to be ready" prom_ready
# promql QUERY: the instant query's result vector, one "labels value" line per series.
promql() {
  curl -fsS --get "$PROM/api/v1/query" --data-urlencode "query=$1" | python3 -c '
import json, sys
for s in json.load(sys.stdin)["data"]["result"]:
    labels = ",".join(f"{k}=\"{v}\"" for k, v in sorted(s["metric"].items()) if k not in ("__name__", "job", "instance"))
    print("{" + labels + "}", s["value"][1])'
}
prom_sees_nodes() {
  local n
  n=$(promql 'file_integrity_operator_node_failed == 0' | wc -l)
  ((n == ${#NODES[@]})) || { echo "$n healthy node series so far"; return 1; }
}
wait_until "Prometheus to scrape node_failed 0 for every node" prom_sees_nodes
echo "  Prometheus on $PROM; every node healthy:"
promql file_integrity_operator_node_failed | sed 's/^/    file_integrity_operator_node_failed/'

# ---- 6. tamper ------------------------------------------------------------------------------------
NODE=${NODES[0]}
FINS=$FI-$NODE
step "Tampering: PermitRootLogin yes in /$TAMPERED_FILE on $NODE"
show cat "$WORK/nodes/$NODE/root/$TAMPERED_FILE"
time_to_failed "$FINS" sed -i 's/PermitRootLogin no/PermitRootLogin yes/' "$WORK/nodes/$NODE/root/$TAMPERED_FILE"
DETECTION=$DETECTED
show cat "$WORK/nodes/$NODE/root/$TAMPERED_FILE"
printf '\n  \033[1mdetected: %s status Failed %s s after the change\033[0m\n' "$NODE" "$DETECTION"

step "What a user sees: the FileIntegrity and node statuses"
show k get fi,fins -n "$NS" -o wide
show k get fins "$FINS" -n "$NS" -o jsonpath='{.lastResult}{"\n"}changedPaths: {.changedPaths}{"\n"}'

step "The Warning event (reason NodeIntegrityStatus)"
event_seen() { k get events -n "$NS" --field-selector type=Warning,reason=NodeIntegrityStatus -o name | grep -q .; }
wait_until "the NodeIntegrityStatus Warning event" event_seen
show k get events -n "$NS" --field-selector type=Warning,reason=NodeIntegrityStatus \
  -o custom-columns=TYPE:.type,REASON:.reason,OBJECT:.involvedObject.name,MESSAGE:.message

step "The failure report (ConfigMap $FI-$NODE-failed, AIDE-style)"
show k get cm "$FI-$NODE-failed" -n "$NS" -o jsonpath='{.data.integritylog}'

step "The operator's metric"
metric_failed() { scrape "$OPERATOR_PORT" /metrics | grep "^file_integrity_operator_node_failed{node=\"$NODE\"} 1"; }
wait_until "node_failed 1 for $NODE" metric_failed
# shellcheck disable=SC2016 # the command as the user would type it, $TOKEN unexpanded
printf '$ curl -sk -H "Authorization: Bearer $TOKEN" https://127.0.0.1:%s/metrics | grep node_failed\n' "$OPERATOR_PORT"
scrape "$OPERATOR_PORT" /metrics | grep '^file_integrity_operator_node_failed' | sed 's/^/  /'

step "The firing alert (Prometheus, rule NodeHasIntegrityFailure)"
alert_firing() { promql "ALERTS{alertname=\"NodeHasIntegrityFailure\",alertstate=\"firing\",node=\"$NODE\"}" | grep -q .; }
wait_until "NodeHasIntegrityFailure firing for $NODE" alert_firing
t_alert=$(now)
ALERT_AFTER=$(elapsed "$CHANGED_AT" "$t_alert")
printf '$ curl -s %s/api/v1/alerts\n' "$PROM"
curl -fsS "$PROM/api/v1/alerts" | python3 -c '
import json, sys
for a in json.load(sys.stdin)["data"]["alerts"]:
    l = a["labels"]
    print("  %s node=%s severity=%s state=%s activeAt=%s" % (
        l["alertname"], l.get("node"), l.get("severity"), a["state"], a.get("activeAt")))
    print("    " + a["annotations"].get("summary", ""))'
printf '  (seen firing %s s after the change: scrape and evaluation every 1 s, for: 1s)\n' "$ALERT_AFTER"

# ---- 7. re-init -----------------------------------------------------------------------------------
step "Accepting the change: re-init through the annotation"
show k annotate "fi" "$FI" -n "$NS" fim.kubefim.io/re-init=
node_succeeded() {
  local out
  out=$(k get fins "$FINS" -n "$NS" -o jsonpath='{.lastResult.condition}')
  [[ $out == Succeeded ]] || { echo "$NODE: $out"; return 1; }
}
reinit_done() {
  local out
  out=$(k get fileintegrity "$FI" -n "$NS" -o jsonpath='{.metadata.annotations.fim\.kubefim\.io/re-init}|{.status.phase}')
  [[ $out == '|Active' ]] || { echo "annotation|phase: $out"; return 1; }
}
wait_until "$NODE back to Succeeded" node_succeeded
wait_until "the annotation to be acknowledged and removed" reinit_done
show k get fi,fins -n "$NS" -o wide
metric_ok() { scrape "$OPERATOR_PORT" /metrics | grep "^file_integrity_operator_node_failed{node=\"$NODE\"} 0"; }
wait_until "node_failed back to 0 for $NODE" metric_ok
printf '  file_integrity_operator_node_failed{node="%s"} 0   (the alert resolves)\n' "$NODE"

# ---- 8. the real node ------------------------------------------------------------------------------
REAL_SUMMARY="real node: not in this cluster"
if [[ -z ${REAL_NODE:-} ]]; then
  step "The real node: none in this cluster"
  echo "  cluster-up.sh starts real-node-0 (kubelet, containerd, runc) only as root and when no other"
  echo "  cluster on this machine holds it; its log says why it was skipped: $STATE/logs/"
else
  FINS_REAL=$FI_REAL-$REAL_NODE
  step "The real node $REAL_NODE: the operator's DaemonSet, run by a real kubelet, containerd and runc"
  # A directory made for the demo on this machine (never its own /etc): the agent pod sees the
  # host under /host and the rules name this path.
  REAL_DIR=$(mktemp -d /var/tmp/kube-fim-demo-real.XXXXXX)
  chmod 755 "$REAL_DIR"
  printf 'PermitRootLogin no\nPasswordAuthentication no\n' >"$REAL_DIR/sshd_config"
  printf 'listen 8080\n' >"$REAL_DIR/app.conf"
  if k get fileintegrity "$FI_REAL" -n "$NS" >/dev/null 2>&1; then
    log "removing the FileIntegrity $FI_REAL left from an earlier run"
    k delete fileintegrity "$FI_REAL" -n "$NS" --cascade=foreground --timeout="${TIMEOUT}s" >/dev/null
  fi
  k create configmap "$FI_REAL-rules" -n "$NS" --dry-run=client -o yaml --from-literal=aide.conf="CONTENT = sha256+ftype+p+u+g+n+s+m+c
DIRS = ftype+p+u+g
$REAL_DIR d DIRS
$REAL_DIR f CONTENT" | apply -f - >/dev/null
  cat >"$WORK/fileintegrity-real.yaml" <<EOF
apiVersion: fim.kubefim.io/v1alpha1
kind: FileIntegrity
metadata:
  name: $FI_REAL
  namespace: $NS
spec:
  nodeSelector:
    kubernetes.io/hostname: $REAL_NODE
  config:
    name: $FI_REAL-rules
    namespace: $NS
    key: aide.conf
    gracePeriod: 10
    maxBackups: 2
  realtime: true
EOF
  sed 's/^/  /' "$WORK/fileintegrity-real.yaml"
  apply -f "$WORK/fileintegrity-real.yaml" | sed 's/^/  /'
  wait_until "the agent pod on $REAL_NODE (image localhost/fim-agent:test)" agent_pod "$REAL_NODE" "$FI_REAL"
  show k get pods -n "$NS" -l "fim.kubefim.io/owner=$FI_REAL" -o wide
  real_succeeded() {
    local out
    out=$(k get fins "$FINS_REAL" -n "$NS" -o jsonpath='{.lastResult.condition}' 2>&1) || true
    [[ $out == Succeeded ]] || { echo "$REAL_NODE: ${out:-no status yet}"; return 1; }
  }
  wait_until "$REAL_NODE's baseline" real_succeeded
  show k get fins "$FINS_REAL" -n "$NS" -o jsonpath='{.nodeName}: {.lastResult.condition}, realtime watcher {.realtimeWatcher}{"\n"}'

  step "Tampering on the real node: PermitRootLogin yes in $REAL_DIR/sshd_config"
  time_to_failed "$FINS_REAL" sed -i 's/PermitRootLogin no/PermitRootLogin yes/' "$REAL_DIR/sshd_config"
  printf '\n  \033[1mdetected by the agent pod: %s status Failed %s s after the change\033[0m\n' "$REAL_NODE" "$DETECTED"
  show k get fins "$FINS_REAL" -n "$NS" -o jsonpath='{.lastResult}{"\n"}changedPaths: {.changedPaths}{"\n"}'
  real_metric() { scrape "$OPERATOR_PORT" /metrics | grep "^file_integrity_operator_node_failed{node=\"$REAL_NODE\"} 1"; }
  wait_until "node_failed 1 for $REAL_NODE" real_metric
  scrape "$OPERATOR_PORT" /metrics | grep "^file_integrity_operator_node_failed{node=\"$REAL_NODE\"}" | sed 's/^/  /'
  REAL_SUMMARY="real node $REAL_NODE: its agent pod saw $REAL_DIR/sshd_config change, status Failed after $DETECTED s"
fi

step "Summary"
cat <<EOF
  ${#NODES[@]} nodes baselined; /$TAMPERED_FILE changed on $NODE:
    node status Failed after   $DETECTION s (realtime, fanotify/inotify)
    alert firing after         $ALERT_AFTER s (Prometheus scrape + evaluation 1 s, for: 1s)
  re-init: $NODE back to Succeeded, node_failed 0
  $REAL_SUMMARY
EOF
