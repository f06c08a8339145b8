#!/usr/bin/env bash
# The whole test suite. Installs what the tests need, then runs every test once.
# Tests start their own servers on loopback ports and stop them.
set -euo pipefail
cd "$(dirname "$0")/.."
# Test peers from the npm registry, exactly as locked (Azurite).
if [ ! -x node_modules/.bin/azurite ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
cargo test --locked --no-fail-fast "$@"
