#!/usr/bin/env python3
"""Fails when a source file of the crate is over 700 lines or a function in it over 80.

Long files and long functions are where the next engineer gets lost; issue 21 set these
limits for `src/` (tests and the fuzz crate are not counted). A function's length is from its
`fn` line to the line that closes its body, comments and blank lines included.

Run: python3 scripts/check-size.py [--report]   (CI runs it beside the layer check)
"""

import pathlib
import re
import sys

MAX_FILE_LINES = 700
MAX_FN_LINES = 80
ROOT = pathlib.Path(__file__).resolve().parent.parent
FN = re.compile(r"^(\s*)(?:pub(?:\([^)]*\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?fn\s+(\w+)")


def functions(lines: list[str]):
    """(name, first line, length) of each function, by brace counting from its `fn` line."""
    for i, line in enumerate(lines):
        m = FN.match(line)
        if not m:
            continue
        depth, opened = 0, False
        for j in range(i, len(lines)):
            text = re.sub(r'"(?:\\.|[^"\\])*"', '""', lines[j].split("//")[0])
            text = re.sub(r"'(?:\\.|[^'\\])'", "''", text)
            depth += text.count("{") - text.count("}")
            opened = opened or "{" in text
            if opened and depth <= 0:
                yield m.group(2), i + 1, j - i + 1
                break
            if not opened and text.rstrip().endswith(";"):
                break  # a declaration without a body (a trait's)


def main() -> int:
    report = "--report" in sys.argv
    problems = []
    for path in sorted((ROOT / "src").rglob("*.rs")):
        lines = path.read_text().splitlines()
        rel = path.relative_to(ROOT)
        if len(lines) > MAX_FILE_LINES:
            problems.append(f"{rel}: {len(lines)} lines (most {MAX_FILE_LINES})")
        for name, first, length in functions(lines):
            if length > MAX_FN_LINES:
                problems.append(f"{rel}:{first}: fn {name} is {length} lines (most {MAX_FN_LINES})")
    for p in problems:
        print(p)
    if problems and not report:
        print(f"{len(problems)} size problem(s)", file=sys.stderr)
        return 1
    print("sizes OK" if not problems else f"{len(problems)} size problem(s) (report only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
