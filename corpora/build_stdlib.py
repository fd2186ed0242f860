"""Build the demo corpus from the Python standard library installed on this machine.

Like char-rnn's famous Linux-kernel demo, the model learns source code, here the pure-Python
modules that ship with every Python, so `make demo` needs no download and the project
commits no third-party text. Files are taken in sorted order until the size cap; a few
modules are held out (never trained on) so the demo can score text the model has not seen.

    python corpora/build_stdlib.py corpora/python-stdlib.txt corpora/python-heldout.txt
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
from pathlib import Path

HELD_OUT = ("textwrap.py", "shlex.py")
# machine-generated or deliberately obfuscated text teaches the model nothing about Python
SKIP = {
    "this.py",
    "_pydecimal.py",
    "pydoc_data",
    "__phello__",
    "idlelib",
    "test",
    "tests",
    "lib2to3",
    "turtledemo",
}


def stdlib_files(root: Path) -> list[Path]:
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if "site-packages" in rel.parts or "dist-packages" in rel.parts or SKIP & set(rel.parts):
            continue
        files.append(path)
    return files


def read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").replace("\r\n", "\n")
    except (UnicodeDecodeError, OSError):
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("train_out", type=Path)
    ap.add_argument("heldout_out", type=Path)
    ap.add_argument("--max-chars", type=int, default=2_000_000)
    args = ap.parse_args()
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, held, total = [], [], 0
    for path in stdlib_files(root):
        text = read(path)
        if text is None:
            continue
        if path.name in HELD_OUT and path.parent == root:
            held.append(text)
        elif total < args.max_chars:
            parts.append(text)
            total += len(text)
    if not parts or not held:
        print(f"error: found no Python standard library source under {root}", file=sys.stderr)
        return 1
    args.train_out.write_text("".join(parts), encoding="utf-8")
    args.heldout_out.write_text("".join(held), encoding="utf-8")
    print(
        f"wrote {args.train_out} ({total:,} chars from {len(parts)} modules of Python "
        f"{sys.version.split()[0]}) and {args.heldout_out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
