"""Learning curves as text: validation loss against wall-clock time, read from the
metrics.jsonl of one or more runs (the charrnn ones, or benchmarks/torch_train.py's).

    python benchmarks/curves.py checkpoints/ts-lstm/metrics.jsonl other/metrics.jsonl

Each run gets a letter; the plot marks where its validation loss stood at each time.
"""

from __future__ import annotations

import argparse
import json
import math
import string
from pathlib import Path


def read_curve(path: Path) -> list[tuple[float, float]]:
    """(elapsed seconds, validation nats/char) for every evaluation in a metrics.jsonl."""
    points = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("val_loss") is not None:
            points.append((record["elapsed"], record["val_loss"]))
    return points


def plot(curves: dict[str, list[tuple[float, float]]], width: int = 72, height: int = 20) -> str:
    """A character grid, time across and loss down, one letter per run."""
    points = [p for curve in curves.values() for p in curve]
    t_max = max(max(t for t, _ in points), 1e-9)
    lo, hi = min(v for _, v in points), max(v for _, v in points)
    hi = min(max(hi, lo + 1e-3), lo + 2.0)  # the first evaluations would squash everything else
    grid = [[" "] * width for _ in range(height)]
    for letter, curve in zip(string.ascii_uppercase, curves.values()):
        for t, v in curve:
            if v > hi:
                continue
            col = min(width - 1, int(t / t_max * (width - 1)))
            row = min(height - 1, int((v - lo) / (hi - lo) * (height - 1)))
            grid[row][col] = letter
    lines = [f"{lo + (hi - lo) * r / (height - 1):6.3f} |" + "".join(row) for r, row in enumerate(grid)]
    lines.append(" " * 7 + "+" + "-" * width)
    lines.append(" " * 8 + f"0 s{'':>{width - 12}}{t_max:,.0f} s")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics", nargs="+", type=Path, help="metrics.jsonl files")
    args = ap.parse_args()
    curves = {str(p): read_curve(p) for p in args.metrics}
    for letter, (name, curve) in zip(string.ascii_uppercase, curves.items()):
        best = min((v for _, v in curve), default=math.nan)
        print(f"{letter}  {name}: {len(curve)} evaluations, best {best:.4f} nats/char")
    print(plot({k: v for k, v in curves.items() if v}))


if __name__ == "__main__":
    main()
