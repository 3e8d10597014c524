#!/usr/bin/env bash
# What tests/browser needs outside Python: a Chromium with its chromedriver, and espeak-ng to
# speak the test questions. Idempotent: returns at once when they are present. Otherwise
# installs Debian's chromium, chromium-driver and espeak-ng with apt-get (as root, or through
# passwordless sudo), each step bounded. When it cannot, it says so and tests/browser skips
# (or fails, where $CI is set: there the tier must run).
set -euo pipefail

APT_TIMEOUT=${BROWSER_DEPS_TIMEOUT_SECONDS:-900}

have_browser() {
  command -v chromium >/dev/null || command -v chromium-browser >/dev/null ||
    command -v google-chrome >/dev/null
}
have_driver() {
  command -v chromedriver >/dev/null || [[ -x "${CHROMEWEBDRIVER:-/nonexistent}/chromedriver" ]]
}

if have_browser && have_driver && command -v espeak-ng >/dev/null; then
  exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  echo "browser-deps: chromium, chromium-driver or espeak-ng missing and not root:" \
    "tests/browser will be skipped (apt-get install chromium chromium-driver espeak-ng)" >&2
  exit 0
fi

packages=()
have_browser || packages+=(chromium)
have_driver || packages+=(chromium-driver)
command -v espeak-ng >/dev/null || packages+=(espeak-ng)

echo "browser-deps: installing ${packages[*]} (apt-get, at most ${APT_TIMEOUT}s per step)"
apt=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive timeout "$APT_TIMEOUT" apt-get)
if ! { "${apt[@]}" update -qq && "${apt[@]}" install -y -qq --no-install-recommends "${packages[@]}"; }; then
  echo "browser-deps: could not install ${packages[*]}: tests/browser will be skipped" \
    "(and fail where \$CI is set)" >&2
fi
