#!/usr/bin/env bash
# Starts the cluster's one real node, real-node-0, beside the kwok nodes: a real kubelet (built from
# the pinned k8s.io/kubernetes module, cgroupfs driver), Debian's containerd with its CRI plugin and
# runc, Debian's CNI plugins on a bridge of its own. Called by cluster-up.sh once the control plane
# is up; cluster-down.sh calls real-node-down.sh. All state lives in $STATE/node/.
#
# Network: the kubelet refuses a loopback node IP, and without one it would resolve its host name
# through the machine's DNS server. So the node (containerd, kubelet, hostNetwork pods) gets a private
# network namespace with no route out: lo, plus one veth whose other end is in the host namespace, so
# the API server can dial the kubelet at the node IP (logs, exec). The node reaches the API server
# through netns-proxy.py, listening inside the namespace on 127.0.0.1:<apiserver port> (hostNetwork
# pods use that, like the kubelet) and on 10.96.0.1:443 (the kubernetes Service address, for pods on
# the bridge: a node-local stand-in for kube-proxy).
#
# Only one real node per machine: the kubelet uses fixed host paths (/var/lib/kubelet/device-plugins,
# /var/log/containers) and the /kubepods cgroups. A second cluster skips it (REAL_NODE=auto, the
# default) or fails (REAL_NODE=1). REAL_NODE=0: no real node.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

STATE=$CLUSTER_STATE
NODE=$STATE/node
RUN=$STATE/run LOGS=$STATE/logs PKI=$STATE/pki
TIMEOUT=${TIMEOUT:-60}
NODE_NAME=real-node-0
# Machine-wide names: one real node per machine (see above).
NETNS=kube-fim-node
NETNS_FILE=/run/netns/$NETNS
MNTNS_FILE=/run/kube-fim-node.mnt
VETH_HOST=kfim-host VETH_NODE=kfim-node
HOST_IP=10.213.0.1 NODE_IP=10.213.0.2 # a /30: the link between host and node, nothing else
POD_SUBNET=10.213.1.0/24              # the node's CNI bridge (inside the node's namespace)
SERVICE_IP=10.96.0.1                  # cluster-up.sh's kubernetes Service address
OWNER=/run/kube-fim-real-node.owner   # which cluster dir holds the machine's real node
REAL_NODE=${REAL_NODE:-auto}

[[ $REAL_NODE == 0 ]] && exit 0
cluster_lock "$STATE"
[[ -f $STATE/env ]] || die "no $STATE/env: start the control plane first (cluster-up.sh)"
API=$(sed -n 's/^KUBE_APISERVER=//p' "$STATE/env")
KUBECTL=$(sed -n 's/^KUBECTL=//p' "$STATE/env")
API_PORT=${API##*:}
export KUBECONFIG=$STATE/kubeconfig

alive() { [[ -s $RUN/$1.pid ]] && pid_runs "$2" "$(cat "$RUN/$1.pid")"; }
node_ready() {
  [[ $("$KUBECTL" get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}
unavailable() { # WHY: no real node on this machine; fatal only when it was asked for
  [[ $REAL_NODE == 1 ]] && die "real node: $1"
  log "real node skipped: $1 (REAL_NODE=1 makes this an error)"
  exit 0
}

# ---- already up (for this cluster)? ------------------------------------------------------------
if alive kubelet kubelet && alive containerd containerd && alive node-apiproxy "$(basename "$(python_exe)")"; then
  log "real node $NODE_NAME already running"
  exit 0
fi
# ---- prerequisites -----------------------------------------------------------------------------
[[ $(id -u) == 0 ]] || unavailable "needs root (network namespace, cgroups, mounts)"
owner=$(cat "$OWNER" 2>/dev/null || true)
if [[ -n $owner && $owner != "$STATE" && -s $owner/run/kubelet.pid ]] &&
  pid_runs kubelet "$(cat "$owner/run/kubelet.pid")"; then
  unavailable "this machine's real node belongs to the cluster in $owner"
fi
"$E2E_DIR/scripts/ensure-node-packages.sh"
"$E2E_DIR/scripts/build-components.sh" kubelet
KUBELET=$(component_bin kubelet)
# Leftovers of a run that was not stopped cleanly (also frees the netns name).
"$E2E_DIR/scripts/real-node-down.sh" --quiet
echo "$STATE" >"$OWNER"

mkdir -p "$NODE"/{pki,cni/net.d,cni/ipam,containerd,kubelet,pod-logs} "$RUN" "$LOGS"
started=$(date +%s.%N)
up_done=0
on_exit() {
  ((up_done)) && return 0
  log "real node failed to start: stopping what was started (logs in $LOGS)"
  "$E2E_DIR/scripts/real-node-down.sh" >&2 || true
}
trap on_exit EXIT

# ---- network namespace -------------------------------------------------------------------------
ip netns add "$NETNS"
ip -n "$NETNS" link set lo up
ip link add "$VETH_HOST" type veth peer name "$VETH_NODE" netns "$NETNS"
ip addr add "$HOST_IP/30" dev "$VETH_HOST"
ip link set "$VETH_HOST" up
# Strict reverse-path filter on the host end: a packet from a pod address (which the host would
# answer through its default route) is dropped instead.
sysctl -q -w "net.ipv4.conf.$VETH_HOST.rp_filter=1"
ip -n "$NETNS" addr add "$NODE_IP/30" dev "$VETH_NODE"
ip -n "$NETNS" link set "$VETH_NODE" up
ip -n "$NETNS" addr add "$SERVICE_IP/32" dev lo
# A mount namespace of the node's own (containerd, kubelet and the containers share it), with
# shared propagation: the agent mounts the host's / with HostToContainer propagation, which runc
# refuses on a private mount ("path / is mounted on / but it is not a shared or slave mount"),
# and this machine's / is private (no systemd to make it shared). A copy of the host's mounts:
# the same files, and the host's own mount table stays untouched.
touch "$MNTNS_FILE"
unshare --mount="$MNTNS_FILE" --propagation shared true
IN_NODE=(nsenter --mount="$MNTNS_FILE" --net="$NETNS_FILE")
in_node() { "${IN_NODE[@]}" "$@"; }

# start NAME CMD...: like cluster-up.sh's start, inside the node's namespace.
start() {
  local name=$1
  shift
  log "starting $name"
  # shellcheck disable=SC2016 # $$ and $@ are for the inner bash
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$RUN/$name.pid" "$@" </dev/null >"$LOGS/$name.log" 2>&1 9>&- &
  local deadline=$((SECONDS + TIMEOUT))
  until [[ -s $RUN/$name.pid ]]; do
    ((SECONDS < deadline)) || die "no pid file for $name"
    sleep 0.1
  done
}
wait_until() { # WHAT NAME-OF-PROCESS-AND-BIN CMD...: poll CMD while the process lives
  local what=$1 name=$2 bin=$3 deadline=$((SECONDS + TIMEOUT))
  shift 3
  until "$@" >/dev/null 2>&1; do
    # (Checked twice: right after start the pid may still be the bash that execs the component.)
    if ! alive "$name" "$bin" && sleep 0.5 && ! alive "$name" "$bin"; then
      log "$name exited; last lines of $LOGS/$name.log:"
      tail -n 30 "$LOGS/$name.log" >&2
      return 1
    fi
    if ((SECONDS >= deadline)); then
      log "timed out after ${TIMEOUT}s waiting for $what; last lines of $LOGS/$name.log:"
      tail -n 30 "$LOGS/$name.log" >&2
      return 1
    fi
    sleep 0.2
  done
}

# ---- the way to the API server -----------------------------------------------------------------
PY=$(python_exe)
start node-apiproxy "$PY" "$E2E_DIR/scripts/netns-proxy.py" "$NETNS_FILE" "127.0.0.1:$API_PORT" \
  "127.0.0.1:$API_PORT" "$SERVICE_IP:443"
wait_until "the API relay" node-apiproxy "$(basename "$PY")" in_node curl -fsS --cacert "$PKI/ca.crt" "$API/readyz"

# ---- node identity: system:node:real-node-0 (Node authorizer + NodeRestriction) -----------------
if [[ ! -s $NODE/pki/node.crt ]]; then
  openssl req -new -newkey rsa:2048 -nodes -keyout "$NODE/pki/node.key" \
    -subj "/O=system:nodes/CN=system:node:$NODE_NAME" -out "$NODE/pki/node.csr" 2>/dev/null
  openssl x509 -req -in "$NODE/pki/node.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -sha256 -out "$NODE/pki/node.crt" 2>/dev/null \
    -extfile <(printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n')
  rm -f "$NODE/pki/node.csr"
fi
cat >"$NODE/kubelet.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kube-fim
  cluster: {server: "$API", certificate-authority: "$PKI/ca.crt"}
users:
- name: $NODE_NAME
  user: {client-certificate: "$NODE/pki/node.crt", client-key: "$NODE/pki/node.key"}
contexts:
- name: kube-fim
  context: {cluster: kube-fim, user: $NODE_NAME}
current-context: kube-fim
EOF

# ---- containerd (CRI) and CNI ------------------------------------------------------------------
SOCK=$NODE/containerd/containerd.sock
cat >"$NODE/containerd/config.toml" <<EOF
version = 2
root = "$NODE/containerd/root"
state = "$NODE/containerd/state"
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$NODE/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$NODE/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  # No registry is reachable: a pause image built here (hack/build-test-images.sh).
  sandbox_image = "localhost/pause:kube-fim"
  # Root on this machine lacks CAP_SYS_RESOURCE and may not lower OOM scores: without this every
  # sandbox fails with "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # runc, not crun (crun refuses the hybrid cgroup layout); no systemd here.
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
        Root = "$NODE/containerd/runc"
EOF
# A bridge of the node's own, inside its namespace. ipMasq off and no route out of the namespace:
# pods reach the node's addresses (the API relay) and each other, nothing else.
cat >"$NODE/cni/net.d/10-kube-fim.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "kube-fim", "plugins": [
  {"type": "bridge", "bridge": "kfimbr0", "isGateway": true, "isDefaultGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_SUBNET"}]], "dataDir": "$NODE/cni/ipam"}},
  {"type": "loopback"}]}
EOF
start containerd "${IN_NODE[@]}" containerd --config "$NODE/containerd/config.toml"
wait_until "containerd" containerd containerd ctr -a "$SOCK" version
REPO=$(cd "$E2E_DIR/.." && pwd)
"$REPO/hack/build-test-images.sh" --import "$SOCK" pause
# The kube-fim test images, if built (make e2e builds them; build-test-images.sh imports later ones).
for name in fim-agent fim-operator; do
  if [[ -x ${CARGO_TARGET_DIR:-$KUBE_FIM_CACHE/target}/debug/$name ]]; then
    "$REPO/hack/build-test-images.sh" --import "$SOCK" "$name" || log "image $name not built"
  fi
done

# ---- kubelet -----------------------------------------------------------------------------------
cat >"$NODE/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The API server dials the kubelet at the node IP (--kubelet-preferred-address-types=InternalIP).
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
# Only the API server's kubelet-client certificate (cluster CA) may call the kubelet API, with
# every request authorized by a SubjectAccessReview.
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$PKI/ca.crt"}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$SOCK
cgroupDriver: cgroupfs
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
# The disk is shared: the default eviction thresholds (10%/15% free) would evict test pods.
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
podLogsDir: $NODE/pod-logs
# iptables is not installed, and the node's namespace has no route out to protect.
makeIPTablesUtilChains: false
# Quick status for the tests (a pod's phase, the node's conditions).
nodeStatusUpdateFrequency: 4s
syncFrequency: 10s
EOF
# The kubelet rewrites kernel tunables at start-up (protectKernelDefaults is off); keep the values
# from before so real-node-down.sh restores them. Also note which fixed host paths it will create.
if [[ ! -s $NODE/host-state ]]; then
  {
    for k in vm.overcommit_memory kernel.panic kernel.panic_on_oops vm.panic_on_oom; do
      echo "sysctl $k=$(sysctl -n "$k")"
    done
    for p in /var/lib/kubelet /var/log/pods /var/log/containers; do [[ -e $p ]] || echo "created $p"; done
  } >"$NODE/host-state"
fi
start kubelet "${IN_NODE[@]}" "$KUBELET" --config="$NODE/kubelet-config.yaml" --kubeconfig="$NODE/kubelet.kubeconfig" \
  --root-dir="$NODE/kubelet" --cert-dir="$NODE/kubelet/pki" --hostname-override="$NODE_NAME" \
  --node-ip="$NODE_IP" --node-labels=type=real --v=1
wait_until "node $NODE_NAME Ready" kubelet kubelet node_ready
ready_in=$(python3 -c "import time; print('%.1f' % (time.time() - $started))")

grep -q '^REAL_NODE=' "$STATE/env" || cat >>"$STATE/env" <<EOF
REAL_NODE=$NODE_NAME
REAL_NODE_NETNS=$NETNS_FILE
REAL_NODE_IP=$NODE_IP
REAL_NODE_CONTAINERD=$SOCK
EOF
up_done=1
log "real node $NODE_NAME Ready ${ready_in}s after start (containerd $(ctr -a "$SOCK" version | awk '/Version:/ {v=$2} END {print v}'), kubelet $(component_version kubelet))"
