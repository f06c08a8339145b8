#!/usr/bin/env bash
# The whole test suite. Installs what the tests need, then runs every test once.
# Tests start their own servers on loopback ports and stop them.
set -euo pipefail
cd "$(dirname "$0")/.."
# Test peers from the npm registry, exactly as locked (Azurite, node-oidc-provider, playwright-core).
if [ ! -x node_modules/.bin/azurite ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
# Debian's Chromium, which playwright-core drives in the browser tests (the machines run as root).
if [ ! -x /usr/bin/chromium ]; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
# The deploy package the package tests open and start (a release build for musl).
bash scripts/package.sh
cargo test --locked --no-fail-fast "$@"
