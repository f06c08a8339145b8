"""Writes the Functions deploy zip: host.json, every top-level folder holding a function.json
(that file only), and the handler binary at the root with mode 0755 (the host runs
`defaultExecutablePath` from host.json; a zip entry without the exec bit fails to start).
Entries are sorted and dated 1980-01-01 so the same inputs make the same zip."""

import json
import pathlib
import sys
import zipfile

EPOCH = (1980, 1, 1, 0, 0, 0)


def entry(archive: zipfile.ZipFile, name: str, data: bytes, mode: int) -> None:
    info = zipfile.ZipInfo(name, EPOCH)
    info.create_system = 3  # Unix, so the mode in external_attr is honoured
    info.external_attr = (0o100000 | mode) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)


def main() -> None:
    binary, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    root = pathlib.Path(".")
    host = json.loads((root / "host.json").read_text())
    executable = host["customHandler"]["description"]["defaultExecutablePath"]
    functions = sorted(p.parent.name for p in root.glob("*/function.json"))
    if not functions:
        sys.exit("make-zip: no function folder (*/function.json) found")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".zip.partial")
    with zipfile.ZipFile(partial, "w") as archive:
        entry(archive, "host.json", (root / "host.json").read_bytes(), 0o644)
        for name in functions:
            entry(archive, f"{name}/function.json", (root / name / "function.json").read_bytes(), 0o644)
        entry(archive, executable, binary.read_bytes(), 0o755)
    partial.replace(out)
    print(f"{out}: host.json, {len(functions)} functions ({', '.join(functions)}), {executable} "
          f"({binary.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
