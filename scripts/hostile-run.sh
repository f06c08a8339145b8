#!/usr/bin/env bash
# Issue 20's hostile-document run (tests/suite/hostile_run.rs), at full size or quick:
#   bash scripts/hostile-run.sh [--seed N] [--quick]
# Full: 1,500 hostile documents pushed and 600 planted in the TrueContext simulator for the sync,
# then 300 ordinary ones by each road, against a standalone server; checked for panics in the
# log, landed data, quarantine, poison and status. Its figures (one JSON line) are appended to
# target/hostile-figures.jsonl and the log kept in target/hostile-<seed>.log.
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
log="target/hostile-$seed.log"
mkdir -p target
set +e
HOSTILE_SEED="$seed" cargo test --locked --test suite "hostile_run::$test" -- --exact --include-ignored --nocapture >"$log" 2>&1
rc=$?
set -e
grep -h '^hostile run figures: ' "$log" | sed 's/^hostile run figures: //' >> target/hostile-figures.jsonl || true
grep -E '^hostile run figures: |^test hostile_run::|panicked' "$log" || true
exit $rc
