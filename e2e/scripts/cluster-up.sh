#!/usr/bin/env bash
# Starts a real local Kubernetes control plane and S3 for the end-to-end tests and the demo, all on
# 127.0.0.1 with free ports: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok (fake
# nodes and kubelets) and MinIO with the bucket "integrity". Binaries come from build-components.sh.
# Then one real node, real-node-0 (real-node-up.sh: kubelet, containerd, runc; REAL_NODE=0 skips it).
#
# Writes, under e2e/.cluster/ (or $KUBE_FIM_CLUSTER_DIR):
#   kubeconfig   admin (system:masters) kubeconfig, certificates embedded
#   env          KEY=VALUE lines: KUBECONFIG, KUBECTL, S3_ENDPOINT, S3_BUCKET, AWS_* ... (`set -a; . env`)
#   logs/        one log per component;  run/  pid files;  pki/  CA, certificates, service-account keys
# Idempotent: if the cluster is already up it only prints it; a half-up cluster is torn down first.
# Env: NODES (default 3) fake nodes; S3_BUCKET (default integrity); TIMEOUT seconds per wait (default 60).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

NODES=${NODES:-3}
BUCKET=${S3_BUCKET:-integrity}
TIMEOUT=${TIMEOUT:-60}
STATE=$CLUSTER_STATE
PKI=$STATE/pki LOGS=$STATE/logs RUN=$STATE/run
SERVICE_CIDR=10.96.0.0/16 # virtual: nothing routes it (no kube-proxy); first IP is the kubernetes Service
KUBERNETES_SVC_IP=10.96.0.1
# Fake pod IPs handed out by kwok. Loopback on purpose: nothing that dials a pod IP can leave the machine.
POD_CIDR=127.224.0.0/16
# Every long-running process, in start order (cluster-down.sh stops them in reverse).
PROCS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok minio)

alive() { [[ -s $RUN/$1.pid ]] && pid_runs "$1" "$(cat "$RUN/$1.pid")"; }

# wait_for WHAT CMD...: retry CMD every 0.2 s until it succeeds or TIMEOUT seconds pass.
wait_for() {
  local what=$1 deadline=$((SECONDS + TIMEOUT))
  shift
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "timed out after ${TIMEOUT}s waiting for $what"
      return 1
    fi
    sleep 0.2
  done
}

# start NAME BIN ARGS...: run detached in its own session (so the caller's Ctrl-C or exit does not
# reach it), stdin closed, output to logs/NAME.log, the lock's fd 9 closed (else the component would
# hold the cluster lock for its whole life); the pid is written by the process itself right
# before exec, so it is the component's pid whatever setsid does.
start() {
  local name=$1
  shift
  log "starting $name"
  # shellcheck disable=SC2016 # $$ and $@ are for the inner bash
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$RUN/$name.pid" "$@" </dev/null >"$LOGS/$name.log" 2>&1 9>&- &
  wait_for "$name pid file" test -s "$RUN/$name.pid"
}

# Components die early on bad flags: say which one and show its log instead of waiting out a timeout.
check_alive() {
  local name=$1
  alive "$name" && return 0
  log "$name exited; last lines of $LOGS/$name.log:"
  tail -n 20 "$LOGS/$name.log" >&2
  return 1
}
wait_ready() { # NAME CMD...: wait for CMD while NAME is still running
  local name=$1 deadline=$((SECONDS + TIMEOUT))
  shift
  until "$@" >/dev/null 2>&1; do
    check_alive "$name" || return 1
    if ((SECONDS >= deadline)); then
      log "timed out after ${TIMEOUT}s waiting for $name; last lines of $LOGS/$name.log:"
      tail -n 20 "$LOGS/$name.log" >&2
      return 1
    fi
    sleep 0.2
  done
}

print_summary() {
  # shellcheck disable=SC1091
  source "$STATE/env"
  cat <<EOF
kube-fim test cluster is up ($KWOK_NODES kwok nodes, Kubernetes $(component_version kube-apiserver)):
  kubeconfig  $KUBECONFIG
  env         $STATE/env   (set -a; . $STATE/env; set +a)
  apiserver   $KUBE_APISERVER
  S3          $S3_ENDPOINT bucket $S3_BUCKET (MinIO $(component_version minio))
  kubectl     $KUBECTL   (matches the server; /usr/bin/kubectl may be older)
  real node   ${REAL_NODE:-none} (kubelet $(component_version kubelet), network namespace ${REAL_NODE_NETNS:-none})
  logs        $LOGS/
  stop with   e2e/scripts/cluster-down.sh
EOF
}

for tool in curl openssl python3 setsid flock base64; do
  command -v "$tool" >/dev/null || die "$tool is needed (Debian: curl, openssl, python3, util-linux, coreutils)"
done
cluster_lock "$STATE"

# ---- already up? -------------------------------------------------------------------------------
all_alive=1 any_alive=0
for p in "${PROCS[@]}"; do
  if alive "$p"; then any_alive=1; else all_alive=0; fi
done
if ((all_alive)) && [[ -f $STATE/env ]]; then
  "$E2E_DIR/scripts/real-node-up.sh"
  print_summary
  [[ $(sed -n 's/^KWOK_NODES=//p' "$STATE/env") == "$NODES" ]] ||
    log "note: the running cluster was started with other NODES; run cluster-down.sh first to change it"
  exit 0
fi
if ((any_alive)); then
  log "a previous cluster is partly running: stopping it first"
  "$E2E_DIR/scripts/cluster-down.sh"
fi

# ---- binaries (built once, then cached) --------------------------------------------------------
"$E2E_DIR/scripts/build-components.sh"
BIN_etcd=$(component_bin etcd)
BIN_kube_apiserver=$(component_bin kube-apiserver)
BIN_kube_controller_manager=$(component_bin kube-controller-manager)
BIN_kube_scheduler=$(component_bin kube-scheduler)
BIN_kwok=$(component_bin kwok)
BIN_minio=$(component_bin minio)
KUBECTL=$(component_bin kubectl)

mkdir -p "$PKI" "$LOGS" "$RUN"
started=$SECONDS
# Anything failing from here on (or an interrupt) stops what was started, so no half-up cluster is
# left behind.
up_done=0
on_exit() {
  ((up_done)) && return 0
  log "cluster-up failed: stopping what was started (logs kept in $LOGS)"
  "$E2E_DIR/scripts/cluster-down.sh" >&2 || true
}
trap on_exit EXIT

# ---- certificates (made once, kept across up/down; they name no ports) -----------------------
# new_cert NAME SUBJECT EXTENSIONS: RSA key and CA-signed certificate in pki/NAME.{key,crt}.
new_cert() {
  local name=$1 subject=$2 ext=$3
  [[ -s $PKI/$name.crt ]] && return 0
  openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -subj "$subject" -out "$PKI/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 3650 \
    -sha256 -extfile <(printf '%s\n' "$ext") -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr"
}
if [[ ! -s $PKI/ca.crt ]]; then
  log "generating CA, certificates and service-account keys in $PKI"
  rm -f "$PKI"/*
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -days 3650 -sha256 \
    -subj "/CN=kube-fim-test-ca" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  # Service-account tokens are signed with sa.key (apiserver, controller-manager) and checked with sa.pub.
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
fi
client_ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
# One serving certificate for the apiserver and the controller-manager's and scheduler's health ports.
new_cert serving "/CN=kube-apiserver" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$KUBERNETES_SVC_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
new_cert admin "/O=system:masters/CN=kube-fim-admin" "$client_ext"
new_cert kube-controller-manager "/CN=system:kube-controller-manager" "$client_ext"
new_cert kube-scheduler "/CN=system:kube-scheduler" "$client_ext"
new_cert kwok "/O=system:masters/CN=kwok" "$client_ext" # plays every kubelet: needs wide rights
# The API server's client certificate for kubelet APIs (logs, exec) of the real node.
new_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client_ext"

# ---- ports -------------------------------------------------------------------------------------
# Ask the kernel for free ports on 127.0.0.1 (bind port 0, all at once so they differ).
read -r P_ETCD P_ETCD_PEER P_API P_KCM P_SCHED P_KWOK P_S3 P_S3_CONSOLE < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(8)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
API=https://127.0.0.1:$P_API

# write_kubeconfig FILE CERT-NAME: kubeconfig for the apiserver with certificates embedded.
write_kubeconfig() {
  local b64=(base64 -w0)
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kube-fim
  cluster:
    server: $API
    certificate-authority-data: $("${b64[@]}" "$PKI/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $("${b64[@]}" "$PKI/$2.crt")
    client-key-data: $("${b64[@]}" "$PKI/$2.key")
contexts:
- name: kube-fim
  context: {cluster: kube-fim, user: $2}
current-context: kube-fim
EOF
  chmod 600 "$1"
}
for who in kube-controller-manager kube-scheduler kwok; do write_kubeconfig "$RUN/$who.kubeconfig" "$who"; done

# ---- etcd --------------------------------------------------------------------------------------
rm -rf "$STATE/etcd"
# --unsafe-no-fsync: a throwaway test store; fsync would only slow every API write on a shared disk.
start etcd "$BIN_etcd" --name kube-fim --data-dir "$STATE/etcd" --log-level warn --unsafe-no-fsync \
  --listen-client-urls "http://127.0.0.1:$P_ETCD" --advertise-client-urls "http://127.0.0.1:$P_ETCD" \
  --listen-peer-urls "http://127.0.0.1:$P_ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$P_ETCD_PEER" \
  --initial-cluster "kube-fim=http://127.0.0.1:$P_ETCD_PEER"
wait_ready etcd curl -fsS "http://127.0.0.1:$P_ETCD/health"

# ---- kube-apiserver ----------------------------------------------------------------------------
# Admission: the defaults (which include ValidatingAdmissionPolicy, ServiceAccount, PodSecurity, ...)
# plus NodeRestriction, which belongs with the Node authorizer. The kubernetes Service's endpoint
# reconciler is off: the only address is loopback, which Endpoints validation refuses.
start kube-apiserver "$BIN_kube_apiserver" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$P_API" \
  --etcd-servers="http://127.0.0.1:$P_ETCD" \
  --cert-dir="$RUN" --tls-cert-file="$PKI/serving.crt" --tls-private-key-file="$PKI/serving.key" \
  --client-ca-file="$PKI/ca.crt" \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction,PodNodeSelector \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" --endpoint-reconciler-type=none \
  --allow-privileged=true --profiling=false \
  --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types=InternalIP,Hostname
wait_ready kube-apiserver curl -fsS --cacert "$PKI/ca.crt" "$API/readyz"
write_kubeconfig "$STATE/kubeconfig" admin
export KUBECONFIG=$STATE/kubeconfig

# ---- controller-manager and scheduler ----------------------------------------------------------
# Every controller on by default (daemonset, deployment, replicaset, garbagecollector, namespace,
# serviceaccount-token, ...), each with its own service account as in a real cluster. No leader
# election: there is only one of each, and it saves the wait for a lease.
common=(--bind-address=127.0.0.1 --tls-cert-file="$PKI/serving.crt" --tls-private-key-file="$PKI/serving.key"
  --leader-elect=false --profiling=false)
start kube-controller-manager "$BIN_kube_controller_manager" "${common[@]}" --secure-port="$P_KCM" \
  --kubeconfig="$RUN/kube-controller-manager.kubeconfig" \
  --authentication-kubeconfig="$RUN/kube-controller-manager.kubeconfig" \
  --authorization-kubeconfig="$RUN/kube-controller-manager.kubeconfig" \
  --controllers='*' --use-service-account-credentials=true \
  --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
  --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
  --service-cluster-ip-range="$SERVICE_CIDR"
start kube-scheduler "$BIN_kube_scheduler" "${common[@]}" --secure-port="$P_SCHED" \
  --kubeconfig="$RUN/kube-scheduler.kubeconfig" \
  --authentication-kubeconfig="$RUN/kube-scheduler.kubeconfig" \
  --authorization-kubeconfig="$RUN/kube-scheduler.kubeconfig"

# ---- kwok --------------------------------------------------------------------------------------
# Manages the nodes annotated kwok.x-k8s.io/node=fake (so a test can add unmanaged nodes too),
# with kwokctl's default stages (kwok itself has none built in). Liveness is a Lease per node, renewed
# every 10 s, as a kubelet does: the flag has no default outside kwokctl, and without it nodes flap to
# Unknown every node-monitor-grace-period (50 s).
start kwok "$BIN_kwok" --kubeconfig="$RUN/kwok.kubeconfig" --config="$CLUSTER_MOD_DIR/kwok/stages.yaml" \
  --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --node-lease-duration-seconds=40 \
  --node-ip=127.0.0.1 --cidr="$POD_CIDR" --server-address="127.0.0.1:$P_KWOK"

# ---- MinIO -------------------------------------------------------------------------------------
S3_ACCESS_KEY=kube-fim-$(openssl rand -hex 4)
S3_SECRET_KEY=$(openssl rand -hex 20)
rm -rf "$STATE/s3"
mkdir -p "$STATE/s3"
# No update checks or call-home: the network reaches nothing but package registries.
MINIO_ROOT_USER=$S3_ACCESS_KEY MINIO_ROOT_PASSWORD=$S3_SECRET_KEY MINIO_SITE_REGION=us-east-1 \
  MINIO_UPDATE=off MINIO_CALLHOME_ENABLE=off MINIO_BROWSER=off MINIO_PROMETHEUS_AUTH_TYPE=public \
  start minio "$BIN_minio" server --quiet --address "127.0.0.1:$P_S3" \
  --console-address "127.0.0.1:$P_S3_CONSOLE" "$STATE/s3"

# ---- wait for the rest -------------------------------------------------------------------------
wait_ready kube-controller-manager curl -fsS --cacert "$PKI/ca.crt" "https://127.0.0.1:$P_KCM/healthz"
wait_ready kube-scheduler curl -fsS --cacert "$PKI/ca.crt" "https://127.0.0.1:$P_SCHED/healthz"
wait_ready kwok curl -fsS "http://127.0.0.1:$P_KWOK/healthz"

# Nodes: created here, made Ready (and kept Ready through Leases) by kwok. No taint, so DaemonSets
# land on them without tolerations.
for ((i = 0; i < NODES; i++)); do
  cat <<EOF
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels: {type: kwok, kubernetes.io/hostname: kwok-node-$i, kubernetes.io/os: linux, kubernetes.io/arch: amd64}
---
EOF
done | "$KUBECTL" apply -f - >/dev/null
# One list per poll rather than `kubectl wait`, which visits nodes one by one (slow for many nodes).
nodes_ready() {
  local ready
  ready=$("$KUBECTL" get nodes -l type=kwok \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '^True$')
  ((ready == NODES))
}
wait_ready kwok nodes_ready
# Pods cannot be created in a namespace before its "default" service account exists.
wait_ready kube-controller-manager "$KUBECTL" get serviceaccount default -n default

wait_ready minio curl -fsS "http://127.0.0.1:$P_S3/minio/health/ready"
export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY AWS_REGION=us-east-1
python3 "$E2E_DIR/scripts/s3-bucket.py" create "http://127.0.0.1:$P_S3" "$BUCKET"
python3 "$E2E_DIR/scripts/s3-bucket.py" exists "http://127.0.0.1:$P_S3" "$BUCKET"

# ---- hand-off ----------------------------------------------------------------------------------
# Plain KEY=VALUE (no quotes or spaces) so shells, make and test code can all read it.
cat >"$STATE/env" <<EOF
KUBECONFIG=$STATE/kubeconfig
KUBECTL=$KUBECTL
KUBE_APISERVER=$API
KUBE_FIM_CLUSTER_DIR=$STATE
KWOK_NODES=$NODES
S3_ENDPOINT=http://127.0.0.1:$P_S3
S3_BUCKET=$BUCKET
AWS_REGION=us-east-1
AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY
AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY
ETCD_ENDPOINT=http://127.0.0.1:$P_ETCD
EOF
chmod 600 "$STATE/env"
"$E2E_DIR/scripts/real-node-up.sh"
up_done=1
log "cluster up in $((SECONDS - started))s"
print_summary
