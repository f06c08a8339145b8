#!/usr/bin/env python3
"""Fails when a module imports from a layer above it, or when two modules import each other.

The layers, top to bottom, are declared in LAYERS below; ARCHITECTURE.md draws the same order.
A module may use modules of any layer *below* its own, and nothing of its own layer but itself.
Every path into the crate counts as an import, wherever it stands (`use` lines, paths inside
expressions, groups spread over several lines): `crate::<module>`, `truecontext_bridge::<module>`
in `src/main.rs`, and `super::…::<module>` that climbs to the crate root. Comment lines do not
count: documentation may name the layer that calls a module.

Run: python3 scripts/check-layers.py   (CI runs it before the tests)
"""

import pathlib
import re
import sys

# Top to bottom. One row is one layer; its modules may not use one another.
LAYERS = [
    ["main"],  # the binary: parses the command line, starts the runtime (src/main.rs)
    ["cli"],  # the verbs: one file each (src/cli/)
    ["ops"],  # what an operator does (check, poison, submissions, connections), for the CLI and later HTTP verbs
    ["host", "standalone"],  # front doors
    ["handlers"],  # what each function does; `App` is the composition root
    ["sync", "webhook"],  # domain: the data path
    ["landing"],
    ["truecontext"],
    ["tokens"],  # domain: the token lifecycle
    ["connections"],
    ["oauth"],
    ["alerts"],
    ["store"],  # storage traits and their backends
    ["telemetry"],
    ["config"],
    ["simulator"],  # the TrueContext simulator (feature `demo`): its own HTTP, nothing of ours
    ["functions", "schedule", "secret", "clock", "naming", "tls"],  # leaves
]

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
# `crate::x`, `truecontext_bridge::x` (in the binary), and `super::…::x` that climbs to the root.
PATH = re.compile(r"\b(?:crate|truecontext_bridge)::([a-z_][a-z0-9_]*)")
GROUP_START = re.compile(r"\b(?:crate|truecontext_bridge)::\{")
SUPER = re.compile(r"\b((?:super::)+)([a-z_][a-z0-9_]*)")


def module_path(path: pathlib.Path) -> list[str]:
    """The module path of a source file: src/a/b.rs and src/a/b/mod.rs are both [a, b]."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "mod":
        parts.pop()
    return parts


def module_of(path: pathlib.Path) -> str:
    rel = path.relative_to(SRC)
    if rel.parts == ("main.rs",):
        return "main"
    return rel.parts[0].removesuffix(".rs")


def without_comments(text: str) -> str:
    """Comment lines blanked (kept as empty lines, so line numbers stay): documentation may name
    the layer that calls a module."""
    return "\n".join("" if line.lstrip().startswith("//") else line for line in text.splitlines())


def group_items(text: str, start: int) -> list[str]:
    """The top-level items of the `{…}` group opening at `start` (it may span lines and nest)."""
    depth, item, items = 0, "", []
    for ch in text[start:]:
        if ch == "{":
            depth += 1
            if depth == 1:
                continue
        elif ch == "}":
            depth -= 1
            if depth == 0:
                items.append(item)
                break
        elif ch == "," and depth == 1:
            items.append(item)
            item = ""
            continue
        item += ch
    return [i.strip().split("::")[0].split(" ")[0].strip("{") for i in items if i.strip()]


def imports(text: str, path: pathlib.Path) -> list[tuple[int, str]]:
    """(line number, top-level module) for every path into the crate."""
    line_of = lambda offset: text.count("\n", 0, offset) + 1
    found = [(line_of(m.start()), m.group(1)) for m in PATH.finditer(text)]
    for m in GROUP_START.finditer(text):
        found += [(line_of(m.start()), name) for name in group_items(text, m.end() - 1) if name != "self"]
    depth = len(module_path(path)) if path.name != "main.rs" or path.parent != SRC else 0
    for m in SUPER.finditer(text):
        if m.group(1).count("super::") == depth:  # climbs exactly to the crate root
            found.append((line_of(m.start()), m.group(2)))
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
        for line_no, target in imports(without_comments(path.read_text()), path):
            if target == module or target not in rank:
                continue
            edges.setdefault(module, set()).add(target)
            if rank[target] <= rank[module]:
                how = "its own layer" if rank[target] == rank[module] else "a higher layer"
                problems.append(f"{path.relative_to(ROOT)}:{line_no}: `{module}` uses `{target}`, which is in {how}")
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
