#!/usr/bin/env bash
# What tests/monitoring needs outside Python: Debian's Prometheus server and promtool (one
# package, `prometheus`). Idempotent: returns at once when both are on PATH. Otherwise
# installs it (scripts/apt-install.sh: its service is not started). When it cannot, it says so
# and tests/monitoring skips (or fails, where $CI is set: there the tier must run).
set -euo pipefail
source "$(dirname "$0")/apt-install.sh"

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi

status=0
apt_install prometheus-deps "${PROMETHEUS_DEPS_TIMEOUT_SECONDS:-900}" prometheus || status=$?
if [[ $status -eq 2 ]]; then
  echo "prometheus-deps: prometheus or promtool missing and not root:" \
    "tests/monitoring will be skipped (apt-get install prometheus)" >&2
elif [[ $status -ne 0 ]]; then
  echo "prometheus-deps: could not install prometheus: tests/monitoring will be skipped" \
    "(and fail where \$CI is set)" >&2
fi
