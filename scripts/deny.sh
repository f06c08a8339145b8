#!/usr/bin/env bash
# cargo-deny over the shipped dependency graph (deny.toml): licenses, crates in two versions
# (with the short list of why), sources, and the RustSec advisories.
#   bash scripts/deny.sh
# Installs cargo-deny (pinned) into target/cargo-deny from crates.io on first use. The advisory
# database comes from GitHub, not a package registry: where GitHub cannot be reached (these
# build machines), the advisory check says so and is skipped, unless DENY_ADVISORIES=required.
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.20.2
tools="$PWD/target/cargo-deny"
deny="$tools/bin/cargo-deny"
if ! "$deny" --version 2>/dev/null | grep -q " $version\$"; then
  cargo install cargo-deny --version "$version" --locked --root "$tools" --quiet
fi
"$deny" --log-level error check bans licenses sources
if "$deny" --log-level error fetch db >/dev/null 2>&1; then
  "$deny" --log-level error check --disable-fetch advisories
elif [ "${DENY_ADVISORIES:-}" = required ]; then
  echo "deny: the advisory database could not be fetched (github.com), and DENY_ADVISORIES=required" >&2
  exit 1
else
  echo "deny: advisories skipped: the advisory database (github.com/RustSec/advisory-db) cannot be fetched from here"
fi
