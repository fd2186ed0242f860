"""What a training run reports as it goes: its progress bar, one line per evaluation on stderr
and one record per evaluation in the run directory's metrics.jsonl. The Trainer decides what
happens at an evaluation; this says what was seen."""

from __future__ import annotations

import math
import sys
import time

from tqdm import tqdm

from .functional import bits_per_char
from .rundir import RunDir


class RunLog:
    """A run's reporting for one invocation: a bar over total_steps (None: unbounded) starting
    at the step the run resumes from, shown unless show is False (None: only on a terminal),
    and the metrics of run_dir. A `with` block closes the bar."""

    def __init__(self, run_dir: RunDir, windows_per_epoch: int, total_steps: int | None, step: int, show):
        self.run_dir, self.windows_per_epoch = run_dir, windows_per_epoch
        self.bar = tqdm(
            total=total_steps,
            initial=step,
            file=sys.stderr,
            disable=show is False or None,
            unit="step",
            dynamic_ncols=True,
            leave=True,
        )
        self.period_start = time.monotonic()  # training speed is measured between evaluations

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def step(self, loss: float) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def note(self, line: str) -> None:
        self.bar.write(line, file=sys.stderr)

    def chars_per_sec(self, chars: int) -> float:
        """Training chars/s since the last evaluation ended; call it before evaluating."""
        return chars / (time.monotonic() - self.period_start)

    def evaluation(
        self,
        progress: dict,
        train_loss: float,
        val: float,
        score: float,
        *,
        lr: float,
        norm: float,
        speed: float,
    ) -> dict:
        """Record and show a scheduled evaluation -> its record. val is NaN without validation
        text or when the evaluation failed; score is what the run judged by."""
        p, measured = progress, not math.isnan(val)
        record = {
            "step": p["step"],
            "epoch": round(p["window"] / self.windows_per_epoch, 4),
            "train_loss": train_loss,
            "val_loss": val if measured else None,
            "val_bpc": bits_per_char(val) if measured else None,
            "lr": lr,
            "grad_norm": norm,
            "chars_per_sec": round(speed, 1),
            "elapsed": round(p["elapsed"], 2),
        }
        self.run_dir.log_metrics(record)
        self.bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{score:.3f}", refresh=False)
        self.note(
            f"step {p['step']}  epoch {record['epoch']:.2f}  train {train_loss:.4f}  "
            + (f"val {val:.4f} ({bits_per_char(val):.3f} bits/char)  " if measured else "")
            + f"{speed:,.0f} chars/s"
        )
        self.period_start = time.monotonic()
        return record

    def final(self, progress: dict, val: float) -> None:
        """Record and show the evaluation of the weights a run ends with."""
        if math.isnan(val):
            return
        self.note(f"step {progress['step']}  final val {val:.4f} ({bits_per_char(val):.3f} bits/char)")
        self.run_dir.log_metrics(
            {
                "step": progress["step"],
                "val_loss": val,
                "val_bpc": bits_per_char(val),
                "elapsed": round(progress["elapsed"], 2),
            }
        )
