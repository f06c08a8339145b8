#!/usr/bin/env python3
"""Fails when a module imports from a layer above it, or when two modules import each other.

The layers, top to bottom, are declared in LAYERS below; ARCHITECTURE.md draws the same order.
A module may use modules of any layer *below* its own, and nothing of its own layer but itself.
Every `crate::<module>` (and, in `src/main.rs`, `truecontext_bridge::<module>`) path in the
code counts as an import, wherever it stands: `use` lines and paths inside expressions alike.
Comment lines do not count: documentation may name the layer that calls a module.

Run: python3 scripts/check-layers.py   (CI runs it before the tests)
"""

import pathlib
import re
import sys

# Top to bottom. One row is one layer; its modules may not use one another.
LAYERS = [
    ["main"],  # the CLI: src/main.rs
    ["host", "standalone"],  # front doors
    ["handlers"],  # what each function does; `App` is the composition root
    ["sync", "webhook"],  # domain: the data path (coming)
    ["landing"],
    ["truecontext"],
    ["tokens"],  # domain: the token lifecycle
    ["connections"],
    ["oauth"],
    ["alerts"],
    ["store"],  # storage traits and their backends
    ["telemetry"],
    ["config"],
    ["functions", "schedule", "secret", "clock", "naming", "tls"],  # leaves
]

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PATH = re.compile(r"\b(?:crate|truecontext_bridge)::([a-z_][a-z0-9_]*)")
GROUPED = re.compile(r"\b(?:crate|truecontext_bridge)::\{([^}]*)\}")


def module_of(path: pathlib.Path) -> str:
    rel = path.relative_to(SRC)
    if rel.parts == ("main.rs",):
        return "main"
    return rel.parts[0].removesuffix(".rs")


def imports(text: str) -> set[str]:
    found = set(PATH.findall(text))
    for group in GROUPED.findall(text):
        for item in group.split(","):
            name = item.strip().split("::")[0].split(" ")[0]
            if name and name != "self":
                found.add(name)
    return found


def main() -> int:
    rank = {m: i for i, row in enumerate(LAYERS) for m in row}
    problems = []
    edges = {}
    for path in sorted(SRC.rglob("*.rs")):
        if path.name == "lib.rs" and path.parent == SRC:
            continue  # the crate root declares every module
        module = module_of(path)
        if module not in rank:
            problems.append(f"{path.relative_to(ROOT)}: module `{module}` has no layer in scripts/check-layers.py")
            continue
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith("//"):
                continue
            for target in imports(line):
                if target == module or target not in rank:
                    continue
                edges.setdefault(module, set()).add(target)
                if rank[target] <= rank[module]:
                    how = "its own layer" if rank[target] == rank[module] else "a higher layer"
                    problems.append(
                        f"{path.relative_to(ROOT)}:{line_no}: `{module}` uses `{target}`, which is in {how}"
                    )
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} layering problem(s); the order is declared in scripts/check-layers.py")
        return 1
    count = sum(len(t) for t in edges.values())
    print(f"layers OK: {len(rank)} modules, {count} downward dependencies, no cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
