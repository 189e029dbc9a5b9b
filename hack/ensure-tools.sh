#!/usr/bin/env bash
# Installs the Debian packages the tests and benchmarks need, once. AIDE (and Debian's aide.conf
# from aide-common) is the reference the differential tests and the benchmark compare with.
set -euo pipefail
missing=()
command -v aide >/dev/null || missing+=(aide)
[ -f /etc/aide/aide.conf ] || missing+=(aide-common)
command -v rustfmt >/dev/null || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} from Debian's packages"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
