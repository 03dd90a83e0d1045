#!/usr/bin/env bash
# Installs the Debian packages the tests run for real: `prometheus` (gives `prometheus` and
# `promtool`) and `chromium` (the status page test drives it with Playwright; Playwright's own
# browser download is never used). Idempotent, and a no-op (no apt at all) when all three
# binaries are already there.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 \
    && command -v chromium >/dev/null 2>&1; then
    exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive

# The tests start their own Prometheus on a free port; the package's system service would only
# take :9090 and memory on the CI machine, so keep maintainer scripts from starting it (the usual
# policy-rc.d switch), unless the machine already has a policy of its own.
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 755 "$POLICY"
    trap '"${SUDO[@]}" rm -f "$POLICY"' EXIT
fi

# Another apt run (a neighbour job, unattended-upgrades) may hold the lock: wait for it.
"${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq
"${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends prometheus \
    chromium

prometheus --version | head -n 1
promtool --version | head -n 1
chromium --version
