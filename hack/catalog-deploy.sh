#!/usr/bin/env bash
# `make catalog-deploy`: installs kube-fim through the Operator Lifecycle Manager from the file-based
# catalog, into the cluster of the current kubeconfig (KUBECONFIG; KUBECTL overridable), as
# file-integrity-operator's `make catalog-deploy` does: a CatalogSource, an OperatorGroup for the
# namespace (OwnNamespace) and a Subscription; OLM then makes the InstallPlan and installs the CSV.
#
#   NAMESPACE      install namespace (default kube-fim; created with the privileged Pod Security
#                  level the agents need)
#   CATALOG_IMAGE  an image serving the catalog (a cluster with a registry): CatalogSource
#                  spec.image. Without it, `opm serve CATALOG_DIR` runs on 127.0.0.1 here and the
#                  CatalogSource's spec.address points at it: that only works when the
#                  catalog-operator runs on this machine, as with the local test cluster.
#   CATALOG_DIR    the catalog to serve (default catalog/); running again with another catalog
#                  restarts opm serve on a new port and repoints the CatalogSource (an upgrade).
#   CHANNEL        subscription channel (default: the package's default channel)
#   NODE_SELECTOR  key=value: the operator Deployment's nodeSelector (Subscription spec.config)
#   OLM            auto (default): when the cluster has no OLM CRDs, apply those of the pinned OLM
#                  module and start olm-operator and catalog-operator here as processes (state in
#                  $KUBE_FIM_CLUSTER_DIR or e2e/.cluster: run/, logs/; cluster-down.sh stops them);
#                  never: require an OLM already running in the cluster.
#   OLM_UTIL_IMAGE catalog-operator's --util-image and --opmImage (default localhost/olm-util:<OLM
#                  version>, hack/olm-images.sh builds it)
#   WAIT           seconds to wait for the CSV to succeed (default 300; 0: do not wait)
# Prints the installed CSV's name.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../e2e/scripts/lib.sh
source "$root/e2e/scripts/lib.sh"

KUBECTL=${KUBECTL:-kubectl}
NAMESPACE=${NAMESPACE:-kube-fim}
CATALOG_DIR=${CATALOG_DIR:-$root/catalog}
CATALOG_IMAGE=${CATALOG_IMAGE:-}
OLM=${OLM:-auto}
WAIT=${WAIT:-300}
# The PrometheusRule CRD's source (below); the newest release the Go proxy serves here.
PROMETHEUS_OPERATOR_VERSION=v0.91.0
RUN=$CLUSTER_STATE/run
LOGS=$CLUSTER_STATE/logs
mkdir -p "$RUN" "$LOGS"
k() { "$KUBECTL" "$@"; }
apply() { k apply --server-side --force-conflicts --field-manager=kube-fim-catalog-deploy -f - >/dev/null; }
alive() { [[ -s $RUN/$1.pid ]] && pid_runs "$1" "$(cat "$RUN/$1.pid")"; }

# start NAME BIN ARGS...: detached in its own session, pid file written by the process before exec
# (as cluster-up.sh starts the cluster's components, so cluster-down.sh stops these too).
start() {
  local name=$1
  shift
  log "starting $name"
  # A stale pid file (a previous run) would read as this start's.
  rm -f "$RUN/$name.pid"
  # shellcheck disable=SC2016 # $$ and $@ are for the inner bash
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$RUN/$name.pid" "$@" </dev/null >"$LOGS/$name.log" 2>&1 &
  for _ in $(seq 100); do [[ -s $RUN/$name.pid ]] && return 0; sleep 0.1; done
  die "$name did not start"
}

stop() {
  alive "$1" || return 0
  local pid
  pid=$(cat "$RUN/$1.pid")
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do pid_runs "$1" "$pid" || return 0; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
}

# ---- OLM ---------------------------------------------------------------------------------------
if ! k get crd subscriptions.operators.coreos.com >/dev/null 2>&1 || alive olm || [[ -s $RUN/olm.pid ]]; then
  [[ $OLM == never ]] && die "the cluster has no OLM (no subscriptions.operators.coreos.com CRD) and OLM=never"
  "$root/e2e/scripts/build-components.sh" olm catalog opm >&2
  olm_bin=$(component_bin olm)
  crds=$(dirname "$olm_bin")/crds
  if [[ ! -d $crds ]]; then
    # OLM's CRDs, from the same module version as the binaries.
    mod=$(cd "$root/e2e/olm" && GOFLAGS=-mod=mod GOTOOLCHAIN=local go list -m -f '{{.Dir}}' \
      github.com/operator-framework/operator-lifecycle-manager)
    mkdir -p "$crds.tmp"
    cp "$mod"/deploy/chart/crds/*.yaml "$crds.tmp/"
    mv "$crds.tmp" "$crds"
  fi
  k apply --server-side --force-conflicts --field-manager=kube-fim-olm -f "$crds" >/dev/null
  k wait --for=condition=Established --timeout=60s -f "$crds" >/dev/null
  # The bundle ships a PrometheusRule, an object of the Prometheus operator's CRD: OLM fails the
  # InstallPlan on a cluster without it ("GroupVersionKind monitoring.coreos.com/v1,
  # Kind=PrometheusRule not found on the cluster"). The local cluster gets that one CRD, from the
  # pinned prometheus-operator module (only the YAML is used; nothing of it runs).
  if ! k get crd prometheusrules.monitoring.coreos.com >/dev/null 2>&1; then
    prom_crds=$BIN_CACHE/prometheus-operator-crds-$PROMETHEUS_OPERATOR_VERSION
    if [[ ! -d $prom_crds ]]; then
      dir=$(cd "$root/e2e/olm" && GOTOOLCHAIN=local go mod download -json \
        "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" |
        sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
      [[ -n $dir ]] || die "cannot download prometheus-operator $PROMETHEUS_OPERATOR_VERSION"
      mkdir -p "$prom_crds.tmp"
      cp "$dir/example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml" "$prom_crds.tmp/"
      mv "$prom_crds.tmp" "$prom_crds"
    fi
    k apply --server-side --field-manager=kube-fim-olm -f "$prom_crds" >/dev/null
    k wait --for=condition=Established --timeout=60s -f "$prom_crds" >/dev/null
  fi
  # The global catalog namespace of catalog-operator (catalogs there serve every namespace).
  printf 'apiVersion: v1\nkind: Namespace\nmetadata: {name: olm}\n' | apply
  # Both bind :8080 for health and metrics (hard-coded in OLM's pkg/lib/server): the second one
  # logs "address already in use" and works on; nothing here dials them.
  alive olm || start olm "$olm_bin" --writeStatusName= --namespace=olm
  # The image of OLM's bundle unpack Jobs (catalogs whose bundles have an image): /bin/cp,
  # /bin/cpb and opm, as hack/olm-images.sh builds it (OLM's defaults on quay.io are out of reach).
  util_image=${OLM_UTIL_IMAGE:-localhost/olm-util:$(component_version olm)}
  util=(--util-image="$util_image" --opmImage="$util_image")
  alive catalog || start catalog "$(component_bin catalog)" --namespace=olm --writeStatusName= "${util[@]}"
  sleep 1
  for name in olm catalog; do
    alive "$name" || { tail -n 30 "$LOGS/$name.log" >&2; die "$name exited (log: $LOGS/$name.log)"; }
  done
fi

# ---- catalog -------------------------------------------------------------------------------------
if [[ -n $CATALOG_IMAGE ]]; then
  source_spec="sourceType: grpc
  image: $CATALOG_IMAGE"
else
  [[ -f $CATALOG_DIR/kube-fim/catalog.yaml ]] || die "no catalog in $CATALOG_DIR (run make catalog)"
  stop opm
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  start opm "$(component_bin opm)" serve "$CATALOG_DIR" --port="$port" --pprof-addr=
  # opm serve listens on every address of the host (no flag binds it to one); the CatalogSource
  # dials loopback. Wait until it answers.
  for _ in $(seq 100); do
    (: </dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
    kill -0 "$(cat "$RUN/opm.pid")" 2>/dev/null || { tail -n 20 "$LOGS/opm.log" >&2; die "opm serve exited"; }
    sleep 0.1
  done
  source_spec="sourceType: grpc
  address: 127.0.0.1:$port"
fi

k get namespace "$NAMESPACE" >/dev/null 2>&1 || apply <<YAML
apiVersion: v1
kind: Namespace
metadata:
  name: $NAMESPACE
  labels:
    pod-security.kubernetes.io/enforce: privileged
    pod-security.kubernetes.io/warn: privileged
YAML

channel=${CHANNEL:-$(sed -n 's/^defaultChannel: //p' "$CATALOG_DIR/kube-fim/catalog.yaml" 2>/dev/null || true)}
channel=${channel:-alpha}
subscription_config=
if [[ -n ${NODE_SELECTOR:-} ]]; then
  subscription_config="  config:
    nodeSelector: {\"${NODE_SELECTOR%%=*}\": \"${NODE_SELECTOR#*=}\"}"
fi
apply <<YAML
apiVersion: operators.coreos.com/v1alpha1
kind: CatalogSource
metadata:
  name: kube-fim-catalog
  namespace: $NAMESPACE
spec:
  displayName: kube-fim
  publisher: kube-fim
  $source_spec
---
apiVersion: operators.coreos.com/v1
kind: OperatorGroup
metadata:
  name: kube-fim
  namespace: $NAMESPACE
spec:
  targetNamespaces: [$NAMESPACE]
---
apiVersion: operators.coreos.com/v1alpha1
kind: Subscription
metadata:
  name: kube-fim
  namespace: $NAMESPACE
spec:
  name: kube-fim
  channel: $channel
  source: kube-fim-catalog
  sourceNamespace: $NAMESPACE
  installPlanApproval: Automatic
${subscription_config}
YAML
log "subscribed to kube-fim (channel $channel) in $NAMESPACE from ${CATALOG_IMAGE:-$CATALOG_DIR}"

((WAIT > 0)) || exit 0
deadline=$((SECONDS + WAIT))
# The channel's head: the last entry make catalog wrote (the only `- name:` lines at column 0).
want=$(sed -n 's/^- name: //p' "$CATALOG_DIR/kube-fim/catalog.yaml" 2>/dev/null | tail -n1 || true)
csv=
while ((SECONDS < deadline)); do
  csv=$(k get subscription kube-fim -n "$NAMESPACE" -o jsonpath='{.status.installedCSV}' 2>/dev/null || true)
  if [[ -n $csv && (-z $want || $csv == "$want") ]]; then
    phase=$(k get csv "$csv" -n "$NAMESPACE" -o jsonpath='{.status.phase}' 2>/dev/null || true)
    [[ $phase == Succeeded ]] && { log "$csv: Succeeded"; echo "$csv"; exit 0; }
  fi
  sleep 2
done
k get subscription,installplan,csv -n "$NAMESPACE" >&2 || true
die "kube-fim${want:+ ($want)} did not reach Succeeded within ${WAIT}s (installed: ${csv:-none})"
