#!/usr/bin/env python3
"""Prints the figures of chaos runs as the columns of docs/RELIABILITY.md's table.

    python3 scripts/chaos-figures.py SEED [SEED ...]

Reads target/chaos-figures.jsonl (one JSON line per finished run, appended by
scripts/chaos.sh) and takes the last line of each seed given, so the table is copied from
what the runs printed rather than typed by hand. A seed without figures is an error.
"""
import json
import sys
from pathlib import Path

FIGURES = Path(__file__).resolve().parent.parent / "target" / "chaos-figures.jsonl"

ROWS = [
    ("seed", lambda f: f["seed"]),
    ("submissions", lambda f: f["submissions_created"]),
    ("edits", lambda f: f["edits"]),
    (
        "deliveries (acknowledged / failed in transit)",
        lambda f: f"{f['deliveries']} ({f['deliveries_acknowledged']} / {f['deliveries_failed_in_transit']})",
    ),
    ("deliveries through the host stand-in", lambda f: f["deliveries_through_host"]),
    ("duplicates sent", lambda f: f["duplicates_sent"]),
    ("stale versions sent", lambda f: f["stale_versions_sent"]),
    ("faults injected", lambda f: ", ".join(f"{k} {v}" for k, v in sorted(f["faults"].items()))),
    (
        "faults left unused (draws skipped, one pending)",
        lambda f: f"{f['faults_left_unused']} ({f['faults_not_injected_one_pending']})"
        if "faults_left_unused" in f
        else "not counted",
    ),
    ("kills", lambda f: f["kills"]),
    ("Azurite outages", lambda f: f["azurite_restarts"]),
    ("verified", lambda f: f["submissions_verified"]),
    ("losses", lambda f: f["losses"]),
    ("duplicates landed", lambda f: f["duplicates_landed"]),
    ("stale content", lambda f: f["stale_content"]),
    ("landed events (duplicates)", lambda f: f"{f['landed_events']} ({f['landed_event_duplicates']})"),
    (
        "token refreshes ÷ 4 s expiries",
        lambda f: f"{f['token_endpoint_refreshes']} ÷ {f['access_token_expiries']}",
    ),
    ("refresh tokens burnt", lambda f: f["refresh_tokens_burnt"]),
    ("refresh tokens re-presented within the grace", lambda f: f["refresh_tokens_reused_within_grace"]),
    (
        "TrueContext calls (max in flight)",
        lambda f: f"{f['truecontext_calls']} ({f['truecontext_max_in_flight']})",
    ),
    ("sync runs recorded (the connection)", lambda f: f["sync_runs_recorded"]),
    ("seconds", lambda f: f["seconds"]),
]


def main(seeds: list[str]) -> int:
    if not seeds:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    if not FIGURES.exists():
        print(f"{FIGURES} does not exist: run bash scripts/chaos.sh --seed N first", file=sys.stderr)
        return 1
    last = {}
    for line in FIGURES.read_text().splitlines():
        if line.strip():
            figures = json.loads(line)
            last[str(figures["seed"])] = figures
    missing = [s for s in seeds if s not in last]
    if missing:
        print(f"no figures for seed(s) {', '.join(missing)} in {FIGURES}", file=sys.stderr)
        return 1
    runs = [last[s] for s in seeds]
    print("| run | " + " | ".join("full" for _ in runs) + " |")
    print("|---|" + "---|" * len(runs))
    for name, value in ROWS:
        print(f"| {name} | " + " | ".join(str(value(f)) for f in runs) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
