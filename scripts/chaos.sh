#!/usr/bin/env bash
# The chaos run (tests/suite/chaos.rs), at full size or quick:
#   bash scripts/chaos.sh --seed N [--quick]
# Full: 2,000 submissions, 5,000 webhook deliveries, 100+ kill -9s, every dependency faulted,
# then verified against the TrueContext simulator's ground truth. Its figures (one JSON line)
# are appended to target/chaos-figures.jsonl and the log kept in target/chaos-<seed>.log.
# Installs what it needs as the test command does (npm ci for Azurite and node-oidc-provider).
set -euo pipefail
cd "$(dirname "$0")/.."
seed=1
test=full
while [ $# -gt 0 ]; do
  case "$1" in
    --seed) seed="$2"; shift 2 ;;
    --quick) test=quick; shift ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
if [ ! -x node_modules/.bin/azurite ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
log="target/chaos-$seed.log"
mkdir -p target
set +e
CHAOS_SEED="$seed" cargo test --locked --test suite "chaos::$test" -- --exact --include-ignored --nocapture >"$log" 2>&1
rc=$?
set -e
grep -h '^chaos figures: ' "$log" | sed 's/^chaos figures: //' >> target/chaos-figures.jsonl || true
grep -E '^chaos figures: |^test chaos::|panicked' "$log" || true
[ $rc -eq 0 ] && echo "chaos: seed $seed passed ($log)" || echo "chaos: seed $seed FAILED, rc $rc ($log)"
exit $rc
