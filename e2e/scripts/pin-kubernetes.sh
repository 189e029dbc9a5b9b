#!/usr/bin/env bash
# Rewrites e2e/cluster/go.mod to pin k8s.io/kubernetes at VERSION (e.g. v1.34.4), with the replace
# directives that a module depending on k8s.io/kubernetes needs: upstream replaces its staging modules
# (k8s.io/api, client-go, ...) with ./staging paths, so we point each at the published v0.X.Y instead.
# etcd comes along at the version that Kubernetes release itself requires.
# Only needed to move to another release; the build uses the committed go.mod/go.sum.
set -euo pipefail

version=${1:?usage: pin-kubernetes.sh VERSION (e.g. v1.34.4)}
staging=v0.${version#v1.}
dir=$(cd "$(dirname "$0")/../cluster" && pwd)

export GOTOOLCHAIN=local GOFLAGS=-mod=mod
# `go mod download -json` gives the path of upstream's go.mod in the module cache.
upstream_mod=$(cd /tmp && go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
[[ -f $upstream_mod ]] || { echo "cannot find go.mod of k8s.io/kubernetes@$version" >&2; exit 1; }

{
  echo "// Test components only (never product code): the Kubernetes control plane, kubectl and etcd"
  echo "// at pinned versions. Regenerate with e2e/scripts/pin-kubernetes.sh VERSION."
  echo "module kube-fim/e2e/cluster"
  echo
  echo "go 1.24.0"
  echo
  echo "require k8s.io/kubernetes $version"
  echo
  echo "// What e2e/scripts/build-components.sh builds (go build of these package paths)."
  echo "tool ("
  echo "	go.etcd.io/etcd/server/v3"
  echo "	k8s.io/kubernetes/cmd/kube-apiserver"
  echo "	k8s.io/kubernetes/cmd/kube-controller-manager"
  echo "	k8s.io/kubernetes/cmd/kube-scheduler"
  echo "	k8s.io/kubernetes/cmd/kubectl"
  echo "	k8s.io/kubernetes/cmd/kubelet"
  echo ")"
  echo
  echo "// Upstream replaces these with ./staging/src/... paths; use the published modules of the same release."
  echo "replace ("
  grep -E '^\s+k8s\.io/[a-z0-9-]+ => \./staging/' "$upstream_mod" | awk -v v="$staging" '{print "\t" $1 " => " $1 " " v}'
  echo ")"
} >"$dir/go.mod"

cd "$dir"
rm -f go.sum
nice -n 19 go mod tidy
echo "pinned k8s.io/kubernetes $version (staging $staging) in $dir/go.mod"
