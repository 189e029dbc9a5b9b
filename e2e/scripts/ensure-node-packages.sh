#!/usr/bin/env bash
# Installs, once, the Debian packages the real node (real-node-up.sh) and the test images
# (hack/build-test-images.sh) need: containerd (with its CRI plugin), runc (crun refuses this
# machine's hybrid cgroup layout), the CNI plugins, buildah, iproute2 (ip netns/veth), gcc (the
# static pause program). Quick when everything is there. Prints nothing unless it installs.
set -euo pipefail
missing=()
have() { command -v "$1" >/dev/null || [[ -x /usr/sbin/$1 || -x /sbin/$1 ]]; }
have containerd || missing+=(containerd)
have runc || missing+=(runc)
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] || missing+=(containernetworking-plugins)
have buildah || missing+=(buildah)
have ip || missing+=(iproute2)
have nsenter || missing+=(util-linux)
have gcc || missing+=(gcc libc6-dev)
if ((${#missing[@]} > 0)); then
  echo "installing ${missing[*]} from Debian's packages" >&2
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  # --no-install-recommends: buildah would otherwise pull crun and podman's CNI config.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
