#!/usr/bin/env bash
# Installs Debian's `prometheus` package (promtool and the server) for tests/deploy: `make test` runs it before
# the test session. Quick when both are already there. Never fails the run: where it cannot install (not root,
# no apt-get, apt failing) it says why, and tests/deploy/test_monitoring.py skips (not root) or fails (root).
set -uo pipefail
say() { echo "install_prometheus: $*" >&2; }

command -v promtool >/dev/null && command -v prometheus >/dev/null && exit 0
[[ $(id -u) == 0 ]] || { say "promtool/prometheus missing and installing them needs root; their tests skip"; exit 0; }
command -v apt-get >/dev/null || { say "promtool/prometheus missing and there is no apt-get"; exit 0; }
say "installing Debian's prometheus package (first run only)"
log=$(mktemp) && trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
# --no-install-recommends: the node exporter and the web assets are not needed
if ! timeout 600 apt-get install -y -q --no-install-recommends prometheus >"$log" 2>&1; then
    # stale or missing package lists on a fresh machine: refresh once and retry
    { timeout 300 apt-get update -q && timeout 600 apt-get install -y -q --no-install-recommends prometheus; } \
        >>"$log" 2>&1 || say "apt-get install prometheus failed: $(tail -n 1 "$log")"
fi
exit 0
