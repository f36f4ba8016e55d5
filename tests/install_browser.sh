#!/usr/bin/env bash
# Installs Debian's chromium for the day report's browser test (tests/flows/test_report.py), where it can: as
# root, with apt-get. Returns at once when chromium is there. Never fails `make test` itself: without chromium the
# browser test skips when not root (installing needs root) and fails when root, so a failed install is not missed.
set -uo pipefail
say() { echo "install_browser: $*" >&2; }

command -v chromium >/dev/null && exit 0
[[ $(id -u) == 0 ]] || { say "chromium is not installed, and installing it needs root: the browser test skips"; exit 0; }
command -v apt-get >/dev/null || { say "chromium is not installed, and there is no apt-get: the browser test fails"; exit 0; }
say "installing chromium from Debian's packages (first run only)"
log=$(mktemp) || exit 0
export DEBIAN_FRONTEND=noninteractive
# the lock timeout waits for another apt run (a parallel set-up) instead of failing at once
apt_install() { timeout 600 apt-get install -y -q -o DPkg::Lock::Timeout=120 --no-install-recommends chromium; }
if ! apt_install >"$log" 2>&1; then
    # stale or missing package lists on a fresh machine: refresh once and retry
    if ! { timeout 300 apt-get update -q && apt_install; } >>"$log" 2>&1; then
        say "apt-get install chromium failed: $(tail -n 1 "$log") (the browser test fails)"
    fi
fi
rm -f "$log"
