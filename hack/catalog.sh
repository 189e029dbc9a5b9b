#!/usr/bin/env bash
# `make catalog`: renders the file-based catalog (FBC) of package kube-fim from bundle directories
# and validates it with opm (built from the Go module pinned in e2e/olm/go.mod; `make olm-components`).
#
#   hack/catalog.sh [OUT_DIR [BUNDLE_DIR...]]     default: catalog/ from bundle/
#
# OUT_DIR/kube-fim/catalog.yaml holds one olm.package, one olm.channel per channel of the bundles
# (entries in the given order, each replacing the previous one and skipping every older version
# through its skipRange), and one olm.bundle per bundle (`opm render` of the directory).
# The bundles are rendered inline (`image: ""`, their manifests as olm.bundle.object properties):
# OLM then installs from the catalog alone, with no bundle image to pull or unpack (docs/olm.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../e2e/scripts/lib.sh
source "$root/e2e/scripts/lib.sh"

out=${1:-$root/catalog}
shift || true
bundles=("$@")
((${#bundles[@]})) || bundles=("$root/bundle")
opm=$(component_bin opm)
[[ -x $opm ]] || "$root/e2e/scripts/build-components.sh" opm

# annotation KEY BUNDLE_DIR: a value of the bundle's metadata/annotations.yaml.
annotation() {
  sed -n "s/^ *$1: *//p" "$2/metadata/annotations.yaml" | tr -d "\"'"
}
# render BUNDLE_DIR: its olm.bundle (inline objects, no image).
render() { "$opm" render "$1" -o yaml | sed "1{/^---$/d}"; }

default_channel=$(annotation operators.operatorframework.io.bundle.channel.default.v1 "${bundles[0]}")
channels=$(annotation operators.operatorframework.io.bundle.channels.v1 "${bundles[0]}")
icon=$root/config/manifests/icon.svg

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
file=$tmp/catalog.yaml
"$opm" init kube-fim --default-channel="$default_channel" --icon="$icon" -o yaml >"$file"

# IMAGES: the bundles' images, in the same order (default none: inline bundles). A bundle with an
# image is unpacked by OLM from that image (hack/olm-images.sh, docs/olm.md).
read -r -a images <<<"${IMAGES:-}"
names=() versions=()
for i in "${!bundles[@]}"; do
  b=${bundles[$i]}
  echo "---" >>"$file"
  render "$b" | sed "s|^image: \"\"\$|image: ${images[$i]:-\"\"}|" | tee "$tmp/bundle.yaml" >>"$file"
  names+=("$(sed -n 's/^name: //p' "$tmp/bundle.yaml" | head -n1)")
  versions+=("$(grep -A3 'type: olm.package$' "$tmp/bundle.yaml" | sed -n 's/^ *version: //p' | head -n1 | tr -d "\"'")")
done

IFS=, read -r -a channel_list <<<"$channels"
for channel in "${channel_list[@]}"; do
  {
    echo "---"
    echo "schema: olm.channel"
    echo "package: kube-fim"
    echo "name: $channel"
    echo "entries:"
    for i in "${!names[@]}"; do
      echo "- name: ${names[$i]}"
      ((i == 0)) || echo "  replaces: ${names[$((i - 1))]}"
      echo "  skipRange: '<${versions[$i]}'"
    done
  } >>"$file"
done

mkdir -p "$tmp/catalog/kube-fim"
mv "$file" "$tmp/catalog/kube-fim/catalog.yaml"
"$opm" validate "$tmp/catalog"
mkdir -p "$out/kube-fim"
cp "$tmp/catalog/kube-fim/catalog.yaml" "$out/kube-fim/catalog.yaml"
echo "catalog: wrote $out/kube-fim/catalog.yaml (${names[*]}; channels $channels, default $default_channel); opm validate ok"
