#!/usr/bin/env bash
# Runs the libFuzzer targets (fuzz/fuzz_targets, properties in fuzz/props.rs), bounded:
#   bash scripts/fuzz.sh [--seconds N] [TARGET...]     (default: 60 s each, every target)
# Installs what it needs: the nightly toolchain (rustup) and cargo-fuzz (crates.io, into
# target/cargo-fuzz). New inputs the fuzzer keeps go to fuzz/corpus/<target>/; a crash stops
# the run with its input in fuzz/artifacts/<target>/ (copy it into the corpus: the stable suite
# then replays it for good). After each run the corpus is minimised (`cargo fuzz cmin`), keeping
# the seed-* and regression-* files by name. A line per target goes to target/fuzz-report.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=60
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(ls fuzz/fuzz_targets | sed 's/\.rs$//')
fi

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
tools="$PWD/target/cargo-fuzz"
if [ ! -x "$tools/bin/cargo-fuzz" ]; then
  cargo install cargo-fuzz --version 0.13.2 --locked --root "$tools"
fi
export PATH="$tools/bin:$PATH"

report=target/fuzz-report.tsv
[ -f "$report" ] || printf 'date\ttarget\tseconds\truns\tcorpus_files\tresult\n' > "$report"
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target"
  log="target/fuzz-$target.log"
  echo "fuzz: $target for ${seconds}s (log $log)"
  set +e
  cargo +nightly fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  if [ $rc -eq 0 ]; then
    keep=$(mktemp -d)
    cp "fuzz/corpus/$target"/seed-* "fuzz/corpus/$target"/regression-* "$keep"/ 2>/dev/null || true
    cargo +nightly fuzz cmin --fuzz-dir fuzz "$target" "fuzz/corpus/$target" >"target/fuzz-cmin-$target.log" 2>&1 || rc=$?
    cp "$keep"/* "fuzz/corpus/$target"/ 2>/dev/null || true
    rm -rf "$keep"
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  files=$(find "fuzz/corpus/$target" -type f | wc -l)
  result=$([ $rc -eq 0 ] && echo ok || echo "FAILED (rc $rc)")
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$target" "$seconds" "${runs:-?}" "$files" "$result" >> "$report"
  echo "fuzz: $target: ${runs:-?} runs, corpus $files files: $result"
  if [ $rc -ne 0 ]; then tail -40 "$log"; exit $rc; fi
done
