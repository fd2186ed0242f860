"""The training loop: windows -> train_step (loss_and_grads, clip, Adam) -> evaluate -> save.

A run lives in one directory (rundir.py); prepare.py builds a Trainer for a new, resumed or
fine-tuned run.

Exact resume: a checkpoint holds the weights, Adam's moments and step, the schedule, the
dropout RNG, the window counter, the hidden state carried between windows and the
early-stopping counters, so `--resume` continues bit for bit (given the same BLAS threads).
Evaluations happen only every `eval_every` steps so that where a run stops cannot change the
schedule; the one exception, an evaluation at the very end of a run that has no best.npz yet,
only writes best.npz and never feeds the schedule.

SIGINT and SIGTERM set a flag; the loop notices it at the next step boundary, saves, and the
CLI exits 130 / 143. A non-finite loss or gradient stops the run before it touches the weights.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .backend import to_device
from .checkpoint import Checkpoint
from .config import ModelConfig, TrainConfig
from .data import Batches, Corpus, split_train_val
from .errors import CharRNNError, CheckpointError
from .model import CharRNN
from .optim import Adam, LRSchedule, clip_grad_norm
from .parallel import parallel_or_model, resolve_workers
from .rundir import BEST, LAST, RunDir
from .runlog import RunLog
from .validation import Validation

# Stopping rules after which the last weights are evaluated (a signal asks for a quick exit).
FINAL_EVAL_REASONS = ("max_steps", "epochs", "max_time")


@dataclass
class RunResult:
    out_dir: Path
    step: int
    best_val: float
    best_step: int
    reason: str  # why the run stopped: "max_steps", "epochs", "max_time", "early_stop", "SIGINT", ...
    signal: int | None = None
    metrics: dict = field(default_factory=dict)


class _StopFlag:
    """Turns SIGINT / SIGTERM into a flag read at step boundaries; a second signal during the
    final save changes nothing, so it cannot corrupt the checkpoint."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = self.signum or signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train_step(runner, params: dict, adam: Adam, x, y, state, lr: float, grad_clip: float, rng=None):
    """One Adam update of params (in place) from one window: x, y (N, T) ids, state the carried
    hidden state, runner the model or its worker processes -> (loss, gradient norm before
    clipping, next state). A non-finite loss or norm leaves the weights as they were, for the
    caller to stop on."""
    loss, grads, state = runner.loss_and_grads(x, y, state, rng)
    norm = clip_grad_norm(grads, grad_clip)
    if math.isfinite(loss) and math.isfinite(norm):
        adam.update(params, grads, lr)
    return loss, norm, state


@dataclass(frozen=True)
class Bounds:
    """The stopping rules of a run: --max-steps, --epochs, --max-time (this invocation's time)
    and early stopping after `patience` evaluations without a new best."""

    tcfg: TrainConfig
    windows_per_epoch: int

    def reason(self, progress: dict, elapsed: float) -> str | None:
        t, p = self.tcfg, progress
        if t.max_steps and p["step"] >= t.max_steps:
            return "max_steps"
        if t.epochs and p["window"] >= t.epochs * self.windows_per_epoch:
            return "epochs"
        if t.max_time and elapsed >= t.max_time:
            return "max_time"
        if t.patience and p["stale_evals"] >= t.patience:
            return "early_stop"
        return None

    def spent(self, progress: dict, elapsed: float) -> float:
        """The fraction of the run's bound already spent: steps, epochs or time, whichever is
        furthest along (0 for an unbounded run)."""
        t, p = self.tcfg, progress
        fractions = [0.0]
        if t.max_steps:
            fractions.append(p["step"] / t.max_steps)
        if t.epochs:
            fractions.append(p["window"] / (t.epochs * self.windows_per_epoch))
        if t.max_time:
            fractions.append(elapsed / t.max_time)
        return max(fractions)

    def total_steps(self) -> int | None:
        """The progress bar's length: --max-steps, else the steps of --epochs (None: unbounded)."""
        t = self.tcfg
        return t.max_steps or (int(math.ceil(t.epochs * self.windows_per_epoch)) if t.epochs else None)


class Trainer:
    """Holds one run's state; `run()` trains until a stopping rule fires."""

    def __init__(
        self, corpus: Corpus, model: CharRNN, tcfg: TrainConfig, out_dir: Path, ckpt: Checkpoint | None
    ):
        self.corpus, self.model, self.tcfg = corpus, model, tcfg
        self.run_dir = RunDir(out_dir)
        self.train_ids, val_ids = split_train_val(corpus.ids, tcfg.val_frac)
        self.batches = Batches(self.train_ids, tcfg.batch_size, tcfg.seq_len)
        self.validation = Validation(val_ids, tcfg.seq_len, tcfg.batch_size, tcfg.eval_chars)
        self.bounds = Bounds(tcfg, self.batches.windows_per_epoch)
        self.adam = Adam(model.params, tcfg.beta1, tcfg.beta2, tcfg.eps)
        self.schedule = LRSchedule(
            tcfg.lr,
            tcfg.lr_decay,
            tcfg.lr_decay_every,
            tcfg.plateau_factor,
            tcfg.plateau_patience,
            tcfg.warmdown,
        )
        self.rng = np.random.default_rng(tcfg.seed)
        self.state = None
        self.runner = model  # what computes steps: the model, or worker processes during run()
        # called with each scheduled evaluation's record; a true result stops the run (tuning's pruner)
        self.on_eval: Callable[[dict], bool] | None = None
        self.stop_requested: str | None = None
        self.chosen: dict[str, str] = {}  # option -> why this corpus got its default (defaults.py)
        self.progress = {
            "step": 0,
            "window": 0,
            "best_val": math.inf,
            "best_step": 0,
            "stale_evals": 0,
            "elapsed": 0.0,
        }
        if ckpt is not None and ckpt.optimizer is not None:
            self.adam.load_state_dict(ckpt.optimizer)
            self.state = ckpt.hidden
            self.progress.update(ckpt.progress)
            self.schedule.load_state_dict(ckpt.progress["schedule"])
            self.rng.bit_generator.state = ckpt.progress["rng"]

    def to_device(self, xp) -> None:
        """Move the weights, Adam's moments and the carried state to xp's device (numpy: the
        host). The corpus, the windows' ids and the dropout generator stay on the host."""
        self.model.params = to_device(self.model.params, xp)
        self.adam.m, self.adam.v = to_device(self.adam.m, xp), to_device(self.adam.v, xp)
        self.state = to_device(self.state, xp)

    def choose(self, config: ModelConfig, why: dict[str, str]) -> None:
        """A new run's model as its budget decided after timing steps (defaults.py): the same
        weights when only the dropout differs, new ones of the chosen width otherwise."""
        if replace(config, dropout=0.0) != replace(self.model.config, dropout=0.0):
            self.model = CharRNN.create(config, seed=self.tcfg.seed)
            self.adam = Adam(self.model.params, self.tcfg.beta1, self.tcfg.beta2, self.tcfg.eps)
        self.model = self.runner = CharRNN(config, self.model.params)
        self.chosen.update(why)

    # ------------------------------------------------------------------ saving

    def checkpoint(self) -> Checkpoint:
        progress = dict(
            self.progress,
            schedule=self.schedule.state_dict(),
            rng=self.rng.bit_generator.state,
            corpus={
                "fingerprint": self.corpus.fingerprint,
                "names": self.corpus.names,
                "chars": self.corpus.num_chars,
                "files": self.corpus.files,
            },
            epoch=self.progress["window"] / self.batches.windows_per_epoch,
        )
        return Checkpoint(
            model_config=self.model.config,
            params=self.model.params,
            vocab=self.corpus.vocab,
            text_policy=self.corpus.policy,
            train_config=self.tcfg,
            optimizer=self.adam.state_dict(),
            hidden=self.state,
            progress=progress,
        )

    def save(self, name: str) -> None:
        self.run_dir.save(name, self.checkpoint())

    @property
    def out_dir(self) -> Path:
        return self.run_dir.path

    # ------------------------------------------------------------------ the loop

    def workers(self) -> int:
        if self.model.xp is not np:  # a GPU trains in one process (see parallel_or_model)
            return 1
        return resolve_workers(self.tcfg.workers, self.tcfg.batch_size)

    def stop_reason(self, started: float) -> str | None:
        return self.bounds.reason(self.progress, time.monotonic() - started) or self.stop_requested

    def spent(self, started: float) -> float:
        return self.bounds.spent(self.progress, time.monotonic() - started)

    def agree(self, reason: str | None) -> str | None:
        """Why every process of the run stops before the next step (one process here; the ranks
        of an MPI job agree: distributed.MPITrainer)."""
        return reason

    def run(self, show_progress: bool | None = None) -> RunResult:
        t, p, model = self.tcfg, self.progress, self.model
        chars_per_step = t.batch_size * t.seq_len
        started = time.monotonic()
        elapsed_before = p["elapsed"]
        total = self.bounds.total_steps()
        log = RunLog(self.run_dir, self.batches.windows_per_epoch, total, p["step"], show_progress)
        loss_sum, loss_n, last = 0.0, 0, {}
        workers = parallel_or_model(model, t.batch_size, t.seq_len, self.workers())
        with _StopFlag() as stop, log, workers as self.runner:
            while True:
                reason = self.stop_reason(started) or (stop.signum and signal.Signals(stop.signum).name)
                reason = self.agree(reason)
                if reason:
                    break
                x, y = self.batches.window(p["window"])
                lr = self.schedule.lr(p["step"], self.spent(started) if t.warmdown else 0.0)
                loss, norm, state = train_step(
                    self.runner, model.params, self.adam, x, y, self.state, lr, t.grad_clip,
                    self.rng if model.config.dropout else None,
                )  # fmt: skip
                if not (math.isfinite(loss) and math.isfinite(norm)):
                    self.diverged(loss, norm)
                p["step"] += 1
                p["window"] += 1
                # a new epoch restarts every stream at its beginning, where the carried state
                # would be stale
                self.state = None if p["window"] % self.batches.windows_per_epoch == 0 else state
                p["elapsed"] = elapsed_before + time.monotonic() - started
                loss_sum, loss_n = loss_sum + loss, loss_n + 1
                log.step(loss)
                if p["step"] % t.eval_every == 0:
                    last = self.scheduled_eval(loss_sum / loss_n, lr, norm, chars_per_step * loss_n, log)
                    loss_sum, loss_n = 0.0, 0
                if t.save_every and p["step"] % t.save_every == 0:
                    self.save(LAST)
            if reason in FINAL_EVAL_REASONS and p["step"] % t.eval_every or not self.run_dir.has_best():
                self.final_eval(log)
            self.save(LAST)
        self.runner = model
        return RunResult(self.out_dir, p["step"], p["best_val"], p["best_step"], reason, stop.signum, last)

    def val_loss(self) -> float:
        return self.validation.loss(self.model, self.runner)

    def scheduled_eval(self, train_loss: float, lr: float, norm: float, chars: int, log: RunLog) -> dict:
        """The evaluation every eval_every steps: it feeds the learning-rate schedule, early
        stopping, best.npz and tuning's pruner -> its metrics record."""
        p = self.progress
        speed = log.chars_per_sec(chars)
        val = self.val_loss()
        # without validation data the training loss stands in, so best.npz still means something;
        # with it, a NaN (a failed evaluation) stays NaN, and NaN is never a new best
        score = val if len(self.validation) else train_loss
        p["stale_evals"] = 0 if score < self.schedule.best else p["stale_evals"] + 1
        if self.schedule.observe(score):
            log.note(
                f"step {p['step']}: no improvement for {self.tcfg.plateau_patience} evaluations, "
                f"learning rate now {self.schedule.lr(p['step']):.2e}"
            )
        if score < p["best_val"]:
            p["best_val"], p["best_step"] = score, p["step"]
            self.save(BEST)
        record = log.evaluation(p, train_loss, val, score, lr=lr, norm=norm, speed=speed)
        if self.on_eval is not None and self.on_eval(record):
            self.stop_requested = "pruned"
        return record

    def final_eval(self, log: RunLog) -> None:
        """Evaluate the weights a run ends with, so that best.npz holds them when they are the
        best (and exists at all after a run shorter than one evaluation period). It feeds
        neither the schedule nor early stopping: a run stopped here and resumed must follow
        the same path as one never stopped."""
        p = self.progress
        val = self.val_loss()
        log.final(p, val)
        if val < p["best_val"] or not self.run_dir.has_best():
            if not math.isnan(val):
                p["best_val"], p["best_step"] = val, p["step"]
            self.save(BEST)

    def diverged(self, loss: float, norm: float) -> None:
        step = self.progress["step"] + 1
        what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {norm}"
        advice = "lower --lr or --grad-clip, then continue with --resume"
        last = self.out_dir / LAST
        try:
            # nothing non-finite was applied, so these weights are the last good ones, unless
            # an earlier update already overflowed them (the save refuses non-finite weights)
            self.save(LAST)
        except CheckpointError:
            raise CharRNNError(
                f"training diverged at step {step} ({what}) after the weights became non-finite; "
                f"{last} keeps the last good checkpoint - {advice}"
            ) from None
        raise CharRNNError(
            f"training diverged at step {step} ({what}); weights of step {step - 1} saved to {last}"
            f" - {advice}"
        )
