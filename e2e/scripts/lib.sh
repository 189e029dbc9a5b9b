# shellcheck shell=bash
# Shared by the e2e scripts (sourced, not run): where the test components come from and where they live.
# The pinned versions are read from the go.mod files under e2e/cluster/, so the cache directory
# $KUBE_FIM_CACHE/bin/<name>-<version>/ changes whenever a pin changes and only the first run builds.

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER_MOD_DIR=$E2E_DIR/cluster
KUBE_FIM_CACHE=${KUBE_FIM_CACHE:-$HOME/.cache/kube-fim}
BIN_CACHE=$KUBE_FIM_CACHE/bin
# Where cluster-up.sh keeps a running cluster's state (git-ignored).
# shellcheck disable=SC2034 # used by cluster-up.sh and cluster-down.sh
CLUSTER_STATE=${KUBE_FIM_CLUSTER_DIR:-$E2E_DIR/.cluster}

# name | module dir (under e2e/cluster) | package to build | module whose version keys the cache
COMPONENTS=(
  "etcd|.|go.etcd.io/etcd/server/v3|go.etcd.io/etcd/server/v3"
  "kube-apiserver|.|k8s.io/kubernetes/cmd/kube-apiserver|k8s.io/kubernetes"
  "kube-controller-manager|.|k8s.io/kubernetes/cmd/kube-controller-manager|k8s.io/kubernetes"
  "kube-scheduler|.|k8s.io/kubernetes/cmd/kube-scheduler|k8s.io/kubernetes"
  "kubectl|.|k8s.io/kubernetes/cmd/kubectl|k8s.io/kubernetes"
  "kubelet|.|k8s.io/kubernetes/cmd/kubelet|k8s.io/kubernetes" # the real node (real-node-up.sh)
  "kwok|kwok|sigs.k8s.io/kwok/cmd/kwok|sigs.k8s.io/kwok"
  "minio|minio|github.com/minio/minio|github.com/minio/minio"
)
# Built only on request (`make olm-components`, e2e/tests/olm.rs), not by cluster-up: the OLM install
# test's components, one module graph (e2e/olm/go.mod). A fifth field holds Go build tags (the gpgme-free
# signature code, so no C library is needed; the same tag opm's own Makefile sets).
# bundle-validate is our own program there, keyed by the operator-framework/api version it links.
OLM_COMPONENTS=(
  "opm|../olm|github.com/operator-framework/operator-registry/cmd/opm|github.com/operator-framework/operator-registry|containers_image_openpgp"
  "olm|../olm|github.com/operator-framework/operator-lifecycle-manager/cmd/olm|github.com/operator-framework/operator-lifecycle-manager|containers_image_openpgp"
  "catalog|../olm|github.com/operator-framework/operator-lifecycle-manager/cmd/catalog|github.com/operator-framework/operator-lifecycle-manager|containers_image_openpgp"
  "bundle-validate|../olm|./bundle-validate|github.com/operator-framework/api"
)

# component_field NAME INDEX: one field of NAME's COMPONENTS (or OLM_COMPONENTS) entry (0 name, 1 dir,
# 2 package, 3 module, 4 build tags).
component_field() {
  local entry fields
  for entry in "${COMPONENTS[@]}" "${OLM_COMPONENTS[@]}"; do
    IFS='|' read -r -a fields <<<"$entry"
    if [[ ${fields[0]} == "$1" ]]; then
      echo "${fields[$2]:-}"
      return 0
    fi
  done
  echo "unknown component: $1" >&2
  return 1
}

# module_version DIR MODULE: the version go.mod in DIR requires for MODULE (read without running go,
# so cluster-up needs no Go toolchain once the binaries are cached).
module_version() {
  local v
  v=$(awk -v m="$2" '($1 == m || ($1 == "require" && $2 == m)) && $NF != "=>" {
        for (i = 2; i <= NF; i++) if ($i ~ /^v[0-9]/) { print $i; exit }
      }' "$1/go.mod")
  [[ -n $v ]] || { echo "no version for $2 in $1/go.mod" >&2; return 1; }
  echo "$v"
}

# component_version NAME / component_bin NAME: the pinned version, and the cached binary's path.
component_version() {
  local dir mod
  dir=$(component_field "$1" 1) && mod=$(component_field "$1" 3) || return 1
  module_version "$CLUSTER_MOD_DIR/$dir" "$mod"
}
component_bin() {
  local v
  v=$(component_version "$1") || return 1
  echo "$BIN_CACHE/$1-$v/$1"
}

# pid_runs NAME PID: true while PID is a live (not zombie) process running the NAME binary. A stale
# pid file may name a reused pid, and a killed component stays a zombie until init reaps it.
pid_runs() {
  local exe
  exe=$(readlink "/proc/$2/exe" 2>/dev/null) || return 1
  [[ $(basename "${exe% (deleted)}") == "$1" ]]
}

# cluster_lock STATE_DIR: serialize cluster-up/cluster-down (parallel test runs may both call them).
# The lock is held until the script exits; a script called by a lock holder skips it (no deadlock).
cluster_lock() {
  [[ -n ${KUBE_FIM_CLUSTER_LOCKED:-} ]] && return 0
  mkdir -p "$1"
  exec 9>"$1/.lock"
  flock 9
  export KUBE_FIM_CLUSTER_LOCKED=1
}

# python_exe: the real python3 binary (not a pyenv shim), so pid_runs can recognize a Python process.
python_exe() { python3 -c 'import os, sys; print(os.path.realpath(sys.executable))'; }

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
