#!/usr/bin/env bash
# The whole test suite. Installs what the tests need, then runs every test once.
# Tests start their own servers on loopback ports and stop them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked --no-fail-fast "$@"
