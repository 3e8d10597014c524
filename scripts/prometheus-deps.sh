#!/usr/bin/env bash
# What tests/monitoring needs outside Python: Debian's Prometheus server and promtool (one
# package, `prometheus`). Idempotent: returns at once when both are on PATH. Otherwise
# installs it with apt-get (as root, or through passwordless sudo), each step bounded, without
# starting its service. When it cannot, it says so and tests/monitoring skips (or fails, where
# $CI is set: there the tier must run).
set -euo pipefail

APT_TIMEOUT=${PROMETHEUS_DEPS_TIMEOUT_SECONDS:-900}

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  echo "prometheus-deps: prometheus or promtool missing and not root:" \
    "tests/monitoring will be skipped (apt-get install prometheus)" >&2
  exit 0
fi

echo "prometheus-deps: installing prometheus (apt-get, at most ${APT_TIMEOUT}s per step)"
# policy-rc.d: the package's post-install script must not start a Prometheus service here
# (containers, CI runners); the tests start their own server on 127.0.0.1.
policy=/usr/sbin/policy-rc.d
created_policy=false
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
  "${SUDO[@]}" chmod +x "$policy"
  created_policy=true
fi
apt=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive timeout "$APT_TIMEOUT" apt-get)
status=0
{ "${apt[@]}" update -qq && "${apt[@]}" install -y -qq --no-install-recommends prometheus; } ||
  status=$?
if $created_policy; then
  "${SUDO[@]}" rm -f "$policy"
fi
if [[ $status -ne 0 ]]; then
  echo "prometheus-deps: could not install prometheus: tests/monitoring will be skipped" \
    "(and fail where \$CI is set)" >&2
fi
