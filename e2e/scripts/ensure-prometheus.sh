#!/usr/bin/env bash
# Makes sure prometheus and promtool (Debian's `prometheus` package) are installed, and prints their
# paths and versions. It starts nothing: the tests that need Prometheus start their own, on 127.0.0.1.
set -euo pipefail

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  echo "installing prometheus from Debian's packages" >&2
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo=sudo
  $sudo apt-get update -qq
  # No recommends: they would add prometheus-node-exporter, which nothing here uses. policy-rc.d
  # exit 101 keeps the package's service from being started on a machine that runs an init system.
  policy=/usr/sbin/policy-rc.d
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
    trap '$sudo rm -f "$policy"' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
for tool in prometheus promtool; do
  printf '%-10s %-20s %s\n' "$tool" "$(command -v "$tool")" "$("$tool" --version 2>&1 | head -n1)"
done
