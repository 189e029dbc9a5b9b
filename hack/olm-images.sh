#!/usr/bin/env bash
# The images OLM's bundle unpack Job needs, built without a registry or Docker (buildah, chroot
# isolation, storage under $KUBE_FIM_CACHE/buildah as hack/build-test-images.sh):
#   localhost/kube-fim-bundle:v<version>   bundle.Dockerfile on BUNDLE_DIR (a `make bundle` output)
#   localhost/olm-util:<OLM version>       /bin/cp (Debian's busybox-static), /bin/cpb (OLM's util/cpb)
#                                          and /bin/opm: catalog-operator's --util-image and --opmImage
# With --import SOCKET both are imported into that containerd's CRI namespace (k8s.io), and the
# bundle is also named by its digest reference: OLM runs a bundle image by digest to get
# imagePullPolicy IfNotPresent (InferImagePullPolicy), and the CRI plugin finds an imported image
# under `repo@sha256:...` only when an image of that name exists.
# Prints the bundle's digest reference (for the catalog's olm.bundle `image`).
# Usage: olm-images.sh [--import SOCKET] BUNDLE_DIR
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../e2e/scripts/lib.sh
source "$root/e2e/scripts/lib.sh"

socket=
if [[ ${1:-} == --import ]]; then
  socket=${2:?--import needs the containerd socket}
  shift 2
fi
bundle=${1:?usage: olm-images.sh [--import SOCKET] BUNDLE_DIR}
version=$(sed -n 's/^  version: //p' "$bundle/manifests/kube-fim.clusterserviceversion.yaml" | head -n1 | tr -d "\"'")
olm_version=$(component_version olm)
out=$KUBE_FIM_CACHE/images
mkdir -p "$out"
B=(buildah --root "$KUBE_FIM_CACHE/buildah/root" --runroot "$KUBE_FIM_CACHE/buildah/run" --storage-driver vfs)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

[[ -x /bin/busybox ]] || apt-get install -y --no-install-recommends busybox-static >&2
"$root/e2e/scripts/build-components.sh" opm >&2
cpb=$BIN_CACHE/cpb-$olm_version/cpb
if [[ ! -x $cpb ]]; then
  mkdir -p "$(dirname "$cpb")"
  (cd "$root/e2e/olm" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-mod=mod -buildvcs=false" \
    nice -n 19 go build -trimpath -o "$cpb.tmp" github.com/operator-framework/operator-lifecycle-manager/util/cpb)
  mv "$cpb.tmp" "$cpb"
fi
mkdir -p "$tmp/util/bin"
cp /bin/busybox "$cpb" "$(component_bin opm)" "$tmp/util/bin/"
ln -s busybox "$tmp/util/bin/cp"
printf 'FROM scratch\nCOPY bin/ /bin/\nENV PATH=/bin\n' >"$tmp/util/Dockerfile"

util=localhost/olm-util:$olm_version
image=localhost/kube-fim-bundle:v$version
"${B[@]}" bud --isolation chroot -q -f "$tmp/util/Dockerfile" -t "$util" "$tmp/util" >/dev/null
"${B[@]}" bud --isolation chroot -q -f bundle.Dockerfile -t "$image" "$bundle" >/dev/null
rm -f "$out/olm-util.tar" "$out/kube-fim-bundle.tar"
"${B[@]}" push -q "$util" "oci-archive:$out/olm-util.tar:$util" >/dev/null 2>&1
"${B[@]}" push -q "$image" "oci-archive:$out/kube-fim-bundle.tar:$image" >/dev/null 2>&1
digest=$(tar -xOf "$out/kube-fim-bundle.tar" index.json |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["manifests"][0]["digest"])')
if [[ -n $socket ]]; then
  for tar in olm-util kube-fim-bundle; do
    ctr -a "$socket" -n k8s.io images import "$out/$tar.tar" >&2
  done
  ctr -a "$socket" -n k8s.io images rm "localhost/kube-fim-bundle@$digest" >/dev/null 2>&1 || true
  ctr -a "$socket" -n k8s.io images tag "$image" "localhost/kube-fim-bundle@$digest" >&2
fi
echo "localhost/kube-fim-bundle@$digest"
