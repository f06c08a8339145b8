#!/usr/bin/env bash
# Builds the deploy package: dist/functionapp.zip with host.json, the function folders and the
# static x86_64-unknown-linux-musl release binary `tcbridge` (exec bit kept), nothing else.
# Installs what the build needs (the musl target, Debian's musl-tools) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=x86_64-unknown-linux-musl
if ! rustup target list --installed | grep -qx "$TARGET"; then
  rustup target add "$TARGET"
fi
# aws-lc-sys (the TLS crypto) compiles C: it needs a musl C compiler.
if ! command -v musl-gcc >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends musl-tools >/dev/null
  else
    echo "package.sh: musl-gcc is missing: install Debian's musl-tools (sudo apt-get install musl-tools)" >&2
    exit 1
  fi
fi
export CC_x86_64_unknown_linux_musl=musl-gcc
# --no-default-features leaves out the demo's TrueContext simulator.
cargo build --locked --release --no-default-features --target "$TARGET"
python3 scripts/make-zip.py "target/$TARGET/release/tcbridge" dist/functionapp.zip
