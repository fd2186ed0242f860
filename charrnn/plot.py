"""`charrnn plot`: learning curves of training runs, read from their `metrics.jsonl`.

Two panels share the loss axis: loss against training steps, and against training time (the
`elapsed` seconds a run has trained, summed over resumes). Loss is in nats/char on the left
and in bits/char (nats / ln 2) on the right. Each run has its own colour: its training loss
(the mean over the steps since the evaluation before) as a thin line, its validation loss as a
thicker line with a dot per evaluation.

`metrics.jsonl` holds one JSON object per evaluation (charrnn/trainer.py). A run resumed from an
earlier save repeats the steps since that save, and a new run in the same directory starts
again at its first evaluation, so a record replaces every earlier record of the same or a later
step: what is drawn is the history of the weights that exist now. A last line without its
newline (a process killed while appending) is left out with a warning on stderr; any other line
that is not a metrics record is an error.

matplotlib is imported only here, when a picture is drawn (extra `.[plot]`); the figure is
rendered off-screen by matplotlib's Agg backend, so no display is needed.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from .errors import CharRNNError
from .functional import LN2
from .rundir import METRICS

INSTALL = "pip install -e '.[plot]'"  # or: pip install matplotlib
FORMATS = (".png", ".svg", ".pdf")


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of a run directory's metrics.jsonl that describe its current history, in step
    order; CharRNNError when there is none or the file is damaged."""
    path = Path(run_dir) / METRICS
    try:
        lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        raise CharRNNError(f"{run_dir} has no {METRICS}: is it a run directory of charrnn train?") from None
    except OSError as e:
        raise CharRNNError(f"cannot read {path}: {e.strerror or e}") from None
    tail = lines.pop()  # b"" when the file ends with a newline, as every complete record does
    records = [_record(path, number, line) for number, line in enumerate(lines, 1) if line.strip()]
    if tail.strip():
        try:
            records.append(_record(path, len(lines) + 1, tail))
        except CharRNNError:
            print(f"{path}: left out its unfinished last line {len(lines) + 1}", file=sys.stderr)
    history: list[dict] = []
    for r in records:
        while history and history[-1]["step"] >= r["step"]:
            history.pop()
        history.append(r)
    if not any(_finite(r.get(k)) for r in history for k in ("train_loss", "val_loss")):
        raise CharRNNError(
            f"{path} has no loss to plot yet: a run records one at each evaluation (--eval-every)"
        )
    return history


def _record(path: Path, number: int, line: bytes) -> dict:
    try:
        r = json.loads(line)
    except ValueError:  # also a UnicodeDecodeError
        r = None
    ok = (
        isinstance(r, dict)
        and _is_number(r.get("step"))
        and _is_number(r.get("elapsed"))
        and all(r.get(k) is None or _is_number(r[k]) for k in ("train_loss", "val_loss"))
    )
    if not ok:
        raise CharRNNError(f"{path}, line {number}: not a metrics record of charrnn train")
    return r


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def _series(records: list[dict], x: str, y: str, scale: float) -> tuple[list, list]:
    """The (x / scale, y) points of the records whose y is a finite number."""
    points = [(r[x] / scale, r[y]) for r in records if _finite(r.get(y))]
    return [p[0] for p in points], [p[1] for p in points]


def _time_unit(seconds: float) -> tuple[str, float]:
    """A unit that keeps the time axis's numbers short: (name, seconds in one)."""
    for name, size in (("h", 3600.0), ("min", 60.0)):
        if seconds >= 2 * size:
            return name, size
    return "s", 1.0


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise CharRNNError(f"charrnn plot needs matplotlib, an optional extra: {INSTALL}") from None
    return Figure


def run_names(run_dirs: list[Path]) -> list[str]:
    """Legend labels: each directory's name, or the paths as given when two names are the same."""
    names = [Path(d).resolve().name for d in run_dirs]
    return names if len(set(names)) == len(names) else [str(d) for d in run_dirs]


def plot_runs(run_dirs: list[Path], out: Path) -> None:
    """Draw the runs' learning curves into `out` (a .png, .svg or .pdf)."""
    fig = learning_curves(run_dirs)
    try:
        fig.savefig(out)
    except OSError as e:
        raise CharRNNError(f"cannot write {out}: {e.strerror or e}") from None


def learning_curves(run_dirs: list[Path]):
    """The runs' learning curves as a matplotlib Figure: loss by step on the left, by
    training time on the right."""
    runs = [read_metrics(d) for d in run_dirs]
    Figure = _figure_class()
    unit, size = _time_unit(max(r["elapsed"] for records in runs for r in records))
    fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    by_step, by_time = fig.subplots(1, 2, sharey=True)
    for i, (name, records) in enumerate(zip(run_names(run_dirs), runs)):
        colour = f"C{i % 10}"  # matplotlib's default cycle of ten colours
        for ax, x, scale in ((by_step, "step", 1.0), (by_time, "elapsed", size)):
            train, val = (_series(records, x, y, scale) for y in ("train_loss", "val_loss"))
            ax.plot(*train, color=colour, lw=1, alpha=0.6, label=f"{name} train")
            ax.plot(*val, "o-", color=colour, lw=2, ms=3, label=f"{name} validation")
    by_step.set_xlabel("step")
    by_time.set_xlabel(f"training time ({unit})")
    by_step.set_ylabel("loss (nats/char)")
    by_time.secondary_yaxis("right", functions=(lambda n: n / LN2, lambda b: b * LN2)).set_ylabel("bits/char")
    for ax in (by_step, by_time):
        ax.grid(alpha=0.3)
    by_step.legend(fontsize="small")
    return fig
