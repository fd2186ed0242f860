"""benchmarks/bench.py --quick runs end to end and prints a complete table of finite, positive
figures. Speed itself is never asserted: machines are noisy."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"
SECTIONS = ("training", "sampling", "scoring", "training memory")


def run_quick(tmp_path: Path, *extra: str) -> str:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be, that is the question:\n" * 400, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(BENCH), "--corpus", str(corpus), "--quick", "--threads", "1", *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def rows(table: str, section: str) -> list[list[str]]:
    """The data rows under a section header, split on runs of two or more spaces."""
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(section + " "))
    out = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        out.append(re.split(r"\s{2,}", line.strip()))
    return out


def numbers(cells: list[str]) -> list[float]:
    return [float(c.replace(",", "").rstrip("%")) for c in cells if c != "-"]


def check_table(table: str, with_torch: bool) -> None:
    assert "float32 matmul peak" in table
    for section in SECTIONS:
        got = rows(table, section)
        assert got, f"no rows under {section}"
        for row in got:
            values = numbers(row[1:])
            assert values and all(math.isfinite(v) and v > 0 for v in values), row
            assert ("-" not in row[1:]) == with_torch, row


def test_quick_without_torch(tmp_path):
    check_table(run_quick(tmp_path, "--no-torch"), with_torch=False)


def test_quick_with_torch(tmp_path):
    pytest.importorskip("torch")
    check_table(run_quick(tmp_path), with_torch=True)
