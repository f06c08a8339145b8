#!/usr/bin/env bash
# The webhook benchmark (benches/webhook_throughput.rs): installs what it needs (Debian's wrk,
# the npm test peers for Azurite), then runs it in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi
if [ ! -x node_modules/.bin/azurite ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
cargo bench --locked --bench webhook_throughput "$@"
