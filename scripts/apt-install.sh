# Sourced by the *-deps.sh scripts: `apt_install TAG TIMEOUT PACKAGE...` installs Debian
# packages with apt-get as root or through passwordless sudo, each step bounded by TIMEOUT
# seconds, without starting any service a package brings (policy-rc.d: CI runners and
# containers; the tests start their own servers on 127.0.0.1). Returns 2 when it may not
# install (not root, no passwordless sudo), apt-get's status otherwise.

apt_install() {
  local tag=$1 timeout=$2
  shift 2
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
      sudo=(sudo -n)
    else
      return 2
    fi
  fi
  echo "$tag: installing $* (apt-get, at most ${timeout}s per step)"
  local policy=/usr/sbin/policy-rc.d created_policy=false status=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod +x "$policy"
    created_policy=true
  fi
  local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive timeout "$timeout" apt-get)
  { "${apt[@]}" update -qq && "${apt[@]}" install -y -qq --no-install-recommends "$@"; } ||
    status=$?
  if $created_policy; then
    "${sudo[@]}" rm -f "$policy"
  fi
  return "$status"
}
