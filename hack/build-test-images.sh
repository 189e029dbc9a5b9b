#!/usr/bin/env bash
# Builds the real node's images without a registry or Docker, with buildah (`bud --isolation
# chroot`: its default OCI isolation picks crun, which refuses this machine's hybrid cgroups):
#   localhost/pause:kube-fim         the pod sandbox image, a static C program (hack/images/pause)
#   localhost/fim-agent:test         FROM scratch + fim-agent + the shared libraries it loads
#   localhost/fim-operator:test      FROM scratch + fim-operator + the shared libraries it loads
#   localhost/kube-fim-web:1, :2     (names web-1, web-2) a static stand-in web server with files
#                                    to monitor and escaping symlinks (hack/images/web), for
#                                    e2e/tests/containers.rs; version 2 serves another index.html
#   localhost/kube-fim-web:escape    (name web-escape) the same server whose monitored directory
#                                    /srv/html holds symlinks out of the container
# Each becomes an OCI archive in $KUBE_FIM_CACHE/images/<name>.tar, rebuilt only when its input
# changed. With --import SOCKET the archives are also imported into that containerd's CRI
# namespace (k8s.io), which is what real-node-up.sh does.
# Usage: build-test-images.sh [--import CONTAINERD_SOCKET] [pause|fim-agent|fim-operator ...]
# fim-agent/fim-operator are taken from $CARGO_TARGET_DIR/debug (build them first). The release
# images stay Dockerfile.agent/Dockerfile.operator; e2e/tests/real_node.rs checks both agree on
# entrypoint and user.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${KUBE_FIM_CACHE:-$HOME/.cache/kube-fim}
OUT=$CACHE/images
TARGET=${CARGO_TARGET_DIR:-$CACHE/target}
# buildah's own storage under the cache (vfs: no overlay mounts left behind); nothing in /var/lib.
B=(buildah --root "$CACHE/buildah/root" --runroot "$CACHE/buildah/run" --storage-driver vfs)

socket=""
if [[ ${1:-} == --import ]]; then
  socket=${2:?--import needs the containerd socket}
  shift 2
fi
names=("$@")
((${#names[@]} > 0)) || names=(pause fim-agent fim-operator)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# rootfs_for BINARY DIR: the binary at /usr/local/bin (debug info stripped: a debug build is 300 MB,
# nearly all DWARF) plus every shared library ldd resolves, at the same paths as on this machine,
# and the CA bundle.
rootfs_for() {
  local bin=$1 dir=$2 lib
  mkdir -p "$dir/usr/local/bin" "$dir/tmp"
  chmod 1777 "$dir/tmp"
  objcopy --strip-debug "$bin" "$dir/usr/local/bin/$(basename "$bin")"
  for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$dir$(dirname "$lib")"
    cp -L "$lib" "$dir$lib"
  done
  # The CA bundle the release base (distroless) has: the S3 client loads the native roots when it
  # is built, and a debug build asserts it found some (the agent crashed at start without them).
  mkdir -p "$dir/etc/ssl/certs"
  cp -L /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/ca-certificates.crt"
}

build() {
  local name=$1 ref ctx tar=$OUT/$1.tar stamp
  ctx=$(mktemp -d)
  # shellcheck disable=SC2064 # expand now: ctx is local
  trap "rm -rf '$ctx'" RETURN
  case $name in
    pause)
      ref=localhost/pause:kube-fim
      gcc -static -O2 -s -o "$ctx/pause" "$ROOT/hack/images/pause/pause.c"
      cp "$ROOT/hack/images/pause/Containerfile" "$ctx/Containerfile"
      ;;
    web-1 | web-2)
      local version=${name#web-}
      ref=localhost/kube-fim-web:$version
      gcc -static -O2 -s -o "$ctx/web" "$ROOT/hack/images/web/web.c"
      cp "$ROOT/hack/images/web/Containerfile" "$ctx/Containerfile"
      mkdir -p "$ctx/srv/html" "$ctx/root/etc/web"
      printf '<h1>kube-fim web, version %s</h1>\n' "$version" >"$ctx/srv/html/index.html"
      printf 'about\n' >"$ctx/srv/html/about.html"
      printf 'listen 8080\nroot /srv/html\n' >"$ctx/root/etc/web/web.conf"
      ln -s / "$ctx/root/escape"
      ln -s /proc/1/root "$ctx/root/proc1"
      ;;
    web-escape)
      # The monitored directory itself holds symlinks out of the container: to its /, to
      # /proc/1/root (the host's root for a scanner in the host PID namespace that follows it),
      # straight to a host directory the test writes (/var/tmp/kube-fim-escape), and up through
      # `..`. A scanner must hash the two regular files and nothing through these links.
      ref=localhost/kube-fim-web:escape
      gcc -static -O2 -s -o "$ctx/web" "$ROOT/hack/images/web/web.c"
      cp "$ROOT/hack/images/web/Containerfile" "$ctx/Containerfile"
      mkdir -p "$ctx/srv/html" "$ctx/root/etc/web"
      printf '<h1>kube-fim web, escape</h1>\n' >"$ctx/srv/html/index.html"
      printf 'listen 8080\nroot /srv/html\n' >"$ctx/root/etc/web/web.conf"
      ln -s / "$ctx/srv/html/etc"
      ln -s /proc/1/root "$ctx/srv/html/x"
      ln -s /proc/1/root/var/tmp/kube-fim-escape "$ctx/srv/html/host"
      ln -s ../../../../../../var/tmp/kube-fim-escape "$ctx/srv/html/up"
      ln -s /var/tmp/kube-fim-escape/secret "$ctx/srv/html/secret.html"
      # The links are not regular files: list them so the rebuild stamp below sees them.
      (cd "$ctx/srv/html" && find . -type l -printf '%p -> %l\n' | sort) >"$ctx/links.txt"
      ;;
    fim-agent | fim-operator)
      ref=localhost/$name:test
      [[ -x $TARGET/debug/$name ]] || { log "no $TARGET/debug/$name: cargo build -p kube-fim-${name#fim-} first"; return 1; }
      rootfs_for "$TARGET/debug/$name" "$ctx/rootfs"
      cp "$ROOT/hack/images/$name.Containerfile" "$ctx/Containerfile"
      ;;
    *) log "unknown image $name"; return 1 ;;
  esac
  # Rebuild only when the context (binary, libraries, Containerfile) changed.
  stamp=$(cd "$ctx" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
  if [[ -s $tar && $(cat "$tar.stamp" 2>/dev/null) == "$stamp" ]]; then
    log "$ref: up to date ($tar)"
  else
    local start=$SECONDS
    "${B[@]}" bud --quiet --isolation chroot --layers=false -f "$ctx/Containerfile" -t "$ref" "$ctx" >/dev/null
    rm -f "$tar"
    # Uncompressed: it is imported once on this machine, gzip would only cost CPU.
    "${B[@]}" push --quiet --disable-compression "$ref" "oci-archive:$tar.tmp:$ref"
    mv -f "$tar.tmp" "$tar"
    echo "$stamp" >"$tar.stamp"
    "${B[@]}" rmi "$ref" >/dev/null # the archive is the product; keep buildah's store small
    log "$ref: built in $((SECONDS - start))s, $(du -h "$tar" | cut -f1) -> $tar"
  fi
  if [[ -n $socket ]]; then
    ctr -a "$socket" -n k8s.io images import "$tar" >/dev/null
    log "$ref: imported into containerd ($socket)"
  fi
}

command -v buildah >/dev/null || "$ROOT/e2e/scripts/ensure-node-packages.sh"
mkdir -p "$OUT"
for name in "${names[@]}"; do build "$name"; done
