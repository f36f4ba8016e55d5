#!/usr/bin/env bash
# Installs a Debian package some tests need, where it can: as root, with apt-get. `make test` runs it before the
# test session, e.g. `tests/install_debian.sh iproute2 ip ss` (package, then the commands it must provide).
# Returns at once when every command is there. Never fails `make test` itself: without them the tests that need
# them skip when not root (installing needs root) and fail when root, so a failed install is not missed.
set -uo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 PACKAGE COMMAND..." >&2; exit 2; }
package=$1
shift
say() { echo "install_debian: $*" >&2; }

missing=()
for cmd in "$@"; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
[[ ${#missing[@]} == 0 ]] && exit 0
[[ $(id -u) == 0 ]] || { say "${missing[*]} missing, and installing $package needs root: their tests skip"; exit 0; }
command -v apt-get >/dev/null || { say "${missing[*]} missing, and there is no apt-get: their tests fail"; exit 0; }
say "installing $package from Debian's packages (first run only)"
log=$(mktemp) || exit 0
export DEBIAN_FRONTEND=noninteractive
# the lock timeout waits for another apt run (a parallel set-up) instead of failing at once
apt_install() { timeout 600 apt-get install -y -q -o DPkg::Lock::Timeout=120 --no-install-recommends "$package"; }
if ! apt_install >"$log" 2>&1; then
    # stale or missing package lists on a fresh machine: refresh once and retry
    if ! { timeout 300 apt-get update -q && apt_install; } >>"$log" 2>&1; then
        say "apt-get install $package failed: $(tail -n 1 "$log") (the tests that need it fail)"
    fi
fi
rm -f "$log"
exit 0
