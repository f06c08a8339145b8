#!/usr/bin/env bash
# Static analysis of the Bicep in infra/ with checkov (pinned in scripts/requirements-checkov.txt).
# Creates its own virtualenv under target/checkov-venv on first use; needs only python3 and PyPI.
#
# Fails (exit 1) when checkov reports a failed check, when it could not parse a file (checkov
# prints "Parsing errors" and still exits 0), when it could not run a check on a resource
# ("Failed to run check"), or when it scanned no Bicep resource at all (an empty pass proves
# nothing).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/target/checkov-venv"
req="$root/scripts/requirements-checkov.txt"
stamp="$venv/.requirements"

if [ ! -x "$venv/bin/checkov" ] || ! cmp -s "$req" "$stamp"; then
  echo "checkov.sh: installing checkov into $venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
fi

out="$(mktemp)"
trap 'rm -f "$out"' EXIT

# --skip-download: no Prisma Cloud calls (guidelines, severities); only PyPI is reachable here.
status=0
(cd "$root" && "$venv/bin/checkov" -d infra --framework bicep --compact --skip-download \
  --output cli 2>&1) >"$out" || status=$?
# Drop the banner; keep the summary and every finding.
sed -n '/scan results:/,$p' "$out"

fail=0
if [ "$status" -ne 0 ]; then
  echo "checkov.sh: checkov exited $status" >&2
  fail=1
fi
if grep -q "Parsing errors" "$out"; then
  echo "checkov.sh: checkov could not parse a Bicep file (see 'Parsing errors' above)" >&2
  fail=1
fi
if grep -q "Failed to run check" "$out"; then
  grep "Failed to run check" "$out" >&2
  echo "checkov.sh: checkov crashed on a check (often a conditional 'if' resource; use a 0-or-1 loop)" >&2
  fail=1
fi
summary="$(grep -E "^Passed checks: [0-9]+, Failed checks: [0-9]+" "$out" | head -1 || true)"
if [ -z "$summary" ]; then
  echo "checkov.sh: no bicep summary line: checkov scanned no Bicep resource" >&2
  fail=1
else
  passed="$(sed -E 's/^Passed checks: ([0-9]+), Failed checks: ([0-9]+), Skipped checks: ([0-9]+).*/\1/' <<<"$summary")"
  failed="$(sed -E 's/^Passed checks: ([0-9]+), Failed checks: ([0-9]+), Skipped checks: ([0-9]+).*/\2/' <<<"$summary")"
  skipped="$(sed -E 's/^Passed checks: ([0-9]+), Failed checks: ([0-9]+), Skipped checks: ([0-9]+).*/\3/' <<<"$summary")"
  if [ "$failed" -ne 0 ]; then
    echo "checkov.sh: $failed failed check(s)" >&2
    fail=1
  fi
  if [ $((passed + failed + skipped)) -eq 0 ]; then
    echo "checkov.sh: checkov ran no check on any Bicep resource" >&2
    fail=1
  fi
fi

if [ "$fail" -ne 0 ]; then
  exit 1
fi
echo "checkov.sh: ok ($summary)"
