#!/usr/bin/env bash
# Builds the real test components (etcd, the Kubernetes control plane, kubectl, kwok, MinIO) from the
# Go modules pinned under e2e/cluster/ into $KUBE_FIM_CACHE/bin/<name>-<version>/<name>.
# Idempotent: a component whose binary is already cached is skipped, so only the first run pays.
# Usage: build-components.sh [NAME...]   (default: all of COMPONENTS in lib.sh; OLM_COMPONENTS by name)
# Go is used only for these test components, never for the product.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# Static binaries (no C toolchain needed), the repo's pinned Go only, and go.sum entries added if a
# fresh module cache needs them.
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-mod=mod -buildvcs=false"

# ldflags -X values so the binaries report their real versions (/version, kubectl version, minio --version).
ldflags_for() {
  local name=$1 version=$2 x=()
  case $name in
    kube-* | kubectl | kubelet)
      local minor=${version#v1.}
      minor=${minor%%.*}
      for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        x+=("-X $pkg.gitVersion=$version" "-X $pkg.gitMajor=1" "-X $pkg.gitMinor=$minor"
          "-X $pkg.gitTreeState=clean")
      done
      ;;
    olm | catalog)
      x+=("-X github.com/operator-framework/operator-lifecycle-manager/pkg/version.OLMVersion=$version")
      ;;
    opm)
      x+=("-X github.com/operator-framework/operator-registry/cmd/opm/version.opmVersion=$version")
      ;;
    minio)
      # A pseudo-version v0.0.0-YYYYMMDDhhmmss-<12 hex>: MinIO wants an RFC 3339 time as its version.
      local ts=${version#v0.0.0-} commit=${version##*-}
      ts=${ts%%-*}
      local rfc="${ts:0:4}-${ts:4:2}-${ts:6:2}T${ts:8:2}:${ts:10:2}:${ts:12:2}Z"
      x+=("-X github.com/minio/minio/cmd.Version=$rfc" "-X github.com/minio/minio/cmd.ReleaseTag=RELEASE.${rfc//:/-}"
        "-X github.com/minio/minio/cmd.CommitID=$commit" "-X github.com/minio/minio/cmd.ShortCommitID=$commit")
      ;;
  esac
  echo "-s -w ${x[*]}"
}

# Only checked when something must be built: with every binary cached, Go is not needed at all.
check_go() {
  # The usual install location, for shells whose PATH lacks it.
  command -v go >/dev/null || [[ ! -x /usr/local/go/bin/go ]] || PATH=$PATH:/usr/local/go/bin
  command -v go >/dev/null || die "Go >= 1.26 is needed to build the test components (none on PATH)"
  local minor
  minor=$(go env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
  ((${minor:-0} >= 26)) || die "Go >= 1.26 is needed (kwok's go.mod says go 1.26.0); found $(go env GOVERSION)"
}

build_one() {
  local name=$1 dir pkg tags version out tmp start
  dir=$CLUSTER_MOD_DIR/$(component_field "$name" 1)
  pkg=$(component_field "$name" 2)
  tags=$(component_field "$name" 4)
  version=$(component_version "$name")
  out=$(component_bin "$name")
  if [[ -x $out ]]; then
    log "$name $version: cached at $out"
    return 0
  fi
  check_go
  mkdir -p "$(dirname "$out")"
  # Build next to the target and rename, so an interrupted build never leaves a half-written binary.
  tmp=$out.tmp.$$
  log "$name $version: building $pkg (nice -n 19)"
  start=$SECONDS
  (cd "$dir" && nice -n 19 go build -trimpath -tags="$tags" -ldflags="$(ldflags_for "$name" "$version")" -o "$tmp" "$pkg") ||
    { rm -f "$tmp"; die "building $name failed"; }
  mv -f "$tmp" "$out"
  log "$name $version: built in $((SECONDS - start))s, $(du -h "$out" | cut -f1) -> $out"
}

names=("$@")
if ((${#names[@]} == 0)); then
  for entry in "${COMPONENTS[@]}"; do names+=("${entry%%|*}"); done
fi
for name in "${names[@]}"; do
  build_one "$name"
done
