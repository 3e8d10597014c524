#!/usr/bin/env bash
# What tests/browser needs outside Python: a Chromium with its chromedriver, and espeak-ng to
# speak the test questions. Idempotent: returns at once when they are present. Otherwise
# installs Debian's chromium, chromium-driver and espeak-ng (scripts/apt-install.sh). When it
# cannot, it says so and tests/browser skips (or fails, where $CI is set: there the tier must
# run).
set -euo pipefail
source "$(dirname "$0")/apt-install.sh"

have_browser() {
  command -v chromium >/dev/null || command -v chromium-browser >/dev/null ||
    command -v google-chrome >/dev/null
}
have_driver() {
  command -v chromedriver >/dev/null || [[ -x "${CHROMEWEBDRIVER:-/nonexistent}/chromedriver" ]]
}

packages=()
have_browser || packages+=(chromium)
have_driver || packages+=(chromium-driver)
command -v espeak-ng >/dev/null || packages+=(espeak-ng)
if [[ ${#packages[@]} -eq 0 ]]; then
  exit 0
fi

status=0
apt_install browser-deps "${BROWSER_DEPS_TIMEOUT_SECONDS:-900}" "${packages[@]}" || status=$?
if [[ $status -eq 2 ]]; then
  echo "browser-deps: ${packages[*]} missing and not root:" \
    "tests/browser will be skipped (apt-get install ${packages[*]})" >&2
elif [[ $status -ne 0 ]]; then
  echo "browser-deps: could not install ${packages[*]}: tests/browser will be skipped" \
    "(and fail where \$CI is set)" >&2
fi
