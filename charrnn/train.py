"""The training loop: windows -> loss_and_grads -> clip -> Adam -> evaluate -> save.

A run lives in one directory: `last.npz` (everything needed to continue exactly), `best.npz`
(lowest validation loss so far) and `metrics.jsonl` (one JSON object per evaluation).

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
import functools
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .backend import device_label, to_device
from .checkpoint import Checkpoint, clean_stale_temp_files, load_checkpoint, save_checkpoint
from .config import ModelConfig, TrainConfig, default_embedding_size
from .data import (
    Batches,
    Corpus,
    eval_targets,
    load_corpus,
    open_kept_corpus,
    sampled_eval_windows,
    split_train_val,
)
from .defaults import dropout_rate, epoch_bound, planned_epochs, window_length
from .errors import CharRNNError, CheckpointError
from .functional import bits_per_char
from .model import CharRNN
from .optim import Adam, LRSchedule, clip_grad_norm
from .parallel import parallel_or_model, resolve_workers
from .progress import reading_bar
from .text import TextPolicy

# Options that may differ on --resume: they say how long and how often, not what is learnt.
# Stopping rules after which the last weights are evaluated (a signal asks for a quick exit).
FINAL_EVAL_REASONS = ("max_steps", "epochs", "max_time")
# where a memory-mapped corpus's ids stay between a run and its --resume
KEPT_IDS = "corpus.ids"
RESUMABLE_OVERRIDES = (
    "epochs",
    "max_steps",
    "max_time",
    "patience",
    "eval_every",
    "eval_chars",
    "save_every",
    "workers",
)


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


def ensure_writable(out_dir: Path) -> None:
    """Fail before step 1, not after an hour of training, when checkpoints cannot be written."""
    probe = out_dir / f".write-test-{os.getpid()}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
    except OSError as e:
        raise CharRNNError(f"cannot write checkpoints to {out_dir}: {e.strerror or e}") from None
    finally:  # a full disk creates the file and then fails to write it
        with contextlib.suppress(OSError):
            probe.unlink()


def evaluate(
    model: CharRNN, ids: np.ndarray, seq_len: int, max_streams: int, runner=None, budget: int = 0
) -> float:
    """Mean validation loss in nats/char with its own zero state: the training state is never
    touched (torch-rnn #38). budget: score a fixed sample of about that many characters (see
    data.sampled_eval_windows; 0: all). `runner` (the training's DataParallel) computes the
    windows of max_streams rows."""
    total, count, state = 0.0, 0, None
    for x, y in sampled_eval_windows(ids, seq_len, max_streams, budget):
        if state is not None and state[0][0].shape[0] != x.shape[0]:
            state = None
        nats, state = (runner if runner is not None and len(x) == max_streams else model).nll(x, y, state)
        total += float(nats.sum())
        count += nats.size
    return total / count if count else math.nan


def size_advice(num_params: int, train_chars: int) -> str:
    """char-rnn's rule of thumb: parameters and training characters should be of the same
    order; far more parameters overfits, far fewer underfits."""
    ratio = num_params / max(train_chars, 1)
    if ratio > 10:
        return (
            " - the model is large for this data (expect overfitting: raise --dropout or lower --hidden-size)"
        )
    if ratio < 0.01:
        return " - the model is small for this data (it may underfit: raise --hidden-size)"
    return ""


class Trainer:
    """Holds one run's state; `run()` trains until a stopping rule fires."""

    def __init__(
        self, corpus: Corpus, model: CharRNN, tcfg: TrainConfig, out_dir: Path, ckpt: Checkpoint | None
    ):
        self.corpus, self.model, self.tcfg, self.out_dir = corpus, model, tcfg, out_dir
        self.train_ids, self.val_ids = split_train_val(corpus.ids, tcfg.val_frac)
        self.batches = Batches(self.train_ids, tcfg.batch_size, tcfg.seq_len)
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
        self.last_eval_time: float | None = None
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

    def set_dropout(self, rate: float, why: str) -> None:
        """A new run's dropout, chosen after the model was made (defaults.dropout_rate)."""
        self.model = self.runner = CharRNN(replace(self.model.config, dropout=rate), self.model.params)
        self.chosen["dropout"] = why

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
        save_checkpoint(self.out_dir / name, self.checkpoint())

    def log_metrics(self, record: dict) -> None:
        """Append one line, whole or not at all: a full disk must not leave half a record for
        the next run to append to."""
        path = self.out_dir / "metrics.jsonl"
        line = (json.dumps(record) + "\n").encode("utf-8")
        try:
            with open(path, "ab", buffering=0) as f:
                start = f.seek(0, os.SEEK_END)
                try:
                    done = 0
                    while done < len(line):
                        done += f.write(line[done:])
                except OSError:
                    os.ftruncate(f.fileno(), start)
                    raise
        except OSError as e:
            raise CharRNNError(
                f"could not write {path}: {e.strerror or e}; the checkpoints are unchanged"
            ) from None

    # ------------------------------------------------------------------ the loop

    def workers(self) -> int:
        if self.model.xp is not np:  # a GPU trains in one process (see parallel_or_model)
            return 1
        return resolve_workers(self.tcfg.workers, self.tcfg.batch_size)

    def stop_reason(self, started: float) -> str | None:
        t, p = self.tcfg, self.progress
        if t.max_steps and p["step"] >= t.max_steps:
            return "max_steps"
        if t.epochs and p["window"] >= t.epochs * self.batches.windows_per_epoch:
            return "epochs"
        if t.max_time and time.monotonic() - started >= t.max_time:
            return "max_time"
        if t.patience and p["stale_evals"] >= t.patience:
            return "early_stop"
        return self.stop_requested

    def spent(self, started: float) -> float:
        """The fraction of the run's bound already spent: steps, epochs or this invocation's
        time, whichever is furthest along (0 for an unbounded run)."""
        t, p = self.tcfg, self.progress
        fractions = [0.0]
        if t.max_steps:
            fractions.append(p["step"] / t.max_steps)
        if t.epochs:
            fractions.append(p["window"] / (t.epochs * self.batches.windows_per_epoch))
        if t.max_time:
            fractions.append((time.monotonic() - started) / t.max_time)
        return max(fractions)

    def agree(self, reason: str | None) -> str | None:
        """Why every process of the run stops before the next step (one process here; the ranks
        of an MPI job agree: distributed.MPITrainer)."""
        return reason

    def run(self, show_progress: bool | None = None) -> RunResult:
        t, p, model = self.tcfg, self.progress, self.model
        chars_per_step = t.batch_size * t.seq_len
        started = time.monotonic()
        elapsed_before = p["elapsed"]
        total = t.max_steps or (
            int(math.ceil(t.epochs * self.batches.windows_per_epoch)) if t.epochs else None
        )
        self.last_eval_time = started
        bar = tqdm(
            total=total,
            initial=p["step"],
            file=sys.stderr,
            disable=show_progress is False or None,
            unit="step",
            dynamic_ncols=True,
            leave=True,
        )
        loss_sum, loss_n, norm, last = 0.0, 0, 0.0, {}
        reason = None
        workers = parallel_or_model(model, t.batch_size, t.seq_len, self.workers())
        with _StopFlag() as stop, bar, workers as self.runner:
            while True:
                reason = self.stop_reason(started) or (stop.signum and signal.Signals(stop.signum).name)
                reason = self.agree(reason)
                if reason:
                    break
                x, y = self.batches.window(p["window"])
                lr = self.schedule.lr(p["step"], self.spent(started) if t.warmdown else 0.0)
                loss, grads, state = self.runner.loss_and_grads(
                    x, y, self.state, self.rng if model.config.dropout else None
                )
                norm = clip_grad_norm(grads, t.grad_clip)
                if not (math.isfinite(loss) and math.isfinite(norm)):
                    self.diverged(loss, norm)
                self.adam.update(model.params, grads, lr)
                p["step"] += 1
                p["window"] += 1
                # a new epoch restarts every stream at its beginning, where the carried state
                # would be stale
                self.state = None if p["window"] % self.batches.windows_per_epoch == 0 else state
                p["elapsed"] = elapsed_before + time.monotonic() - started
                loss_sum, loss_n = loss_sum + loss, loss_n + 1
                bar.update(1)
                if p["step"] % t.eval_every == 0:
                    last = self.scheduled_eval(loss_sum / loss_n, lr, norm, chars_per_step * loss_n, bar)
                    loss_sum, loss_n = 0.0, 0
                else:
                    bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
                if t.save_every and p["step"] % t.save_every == 0:
                    self.save("last.npz")
            if reason in FINAL_EVAL_REASONS and p["step"] % t.eval_every or not self.has_best():
                self.final_eval(bar)
            self.save("last.npz")
        self.runner = model
        return RunResult(self.out_dir, p["step"], p["best_val"], p["best_step"], reason, stop.signum, last)

    def val_loss(self) -> float:
        if not len(self.val_ids):
            return math.nan
        t = self.tcfg
        return evaluate(self.model, self.val_ids, t.seq_len, t.batch_size, self.runner, t.eval_chars)

    def eval_coverage(self) -> str:
        """What an evaluation scores, e.g. "100,000 of 30,000,000 validation chars (0.3%)"."""
        n = len(self.val_ids)
        used = eval_targets(n, self.tcfg.seq_len, self.tcfg.batch_size, self.tcfg.eval_chars)
        if used >= n - 1:
            return f"all {used:,} validation chars"
        return f"{used:,} of {n:,} validation chars ({used / n:.1%}, fixed sample)"

    def scheduled_eval(self, train_loss: float, lr: float, norm: float, chars: int, bar) -> dict:
        p = self.progress
        speed = chars / (time.monotonic() - self.last_eval_time)
        val = self.val_loss()
        # without validation data the training loss stands in, so best.npz still means something;
        # with it, a NaN (a failed evaluation) stays NaN, and NaN is never a new best
        score = val if len(self.val_ids) else train_loss
        improved = score < self.schedule.best
        p["stale_evals"] = 0 if improved else p["stale_evals"] + 1
        if self.schedule.observe(score):
            bar.write(
                f"step {p['step']}: no improvement for {self.tcfg.plateau_patience} evaluations, "
                f"learning rate now {self.schedule.lr(p['step']):.2e}",
                file=sys.stderr,
            )
        if score < p["best_val"]:
            p["best_val"], p["best_step"] = score, p["step"]
            self.save("best.npz")
        record = {
            "step": p["step"],
            "epoch": round(p["window"] / self.batches.windows_per_epoch, 4),
            "train_loss": train_loss,
            "val_loss": None if math.isnan(val) else val,
            "val_bpc": None if math.isnan(val) else bits_per_char(val),
            "lr": lr,
            "grad_norm": norm,
            "chars_per_sec": round(speed, 1),
            "elapsed": round(p["elapsed"], 2),
        }
        self.log_metrics(record)
        bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{score:.3f}", refresh=False)
        bar.write(
            f"step {p['step']}  epoch {record['epoch']:.2f}  train {train_loss:.4f}  "
            + (f"val {val:.4f} ({bits_per_char(val):.3f} bits/char)  " if not math.isnan(val) else "")
            + f"{speed:,.0f} chars/s",
            file=sys.stderr,
        )
        self.last_eval_time = time.monotonic()
        if self.on_eval is not None and self.on_eval(record):
            self.stop_requested = "pruned"
        return record

    def has_best(self) -> bool:
        return (self.out_dir / "best.npz").exists()

    def final_eval(self, bar) -> None:
        """Evaluate the weights a run ends with, so that best.npz holds them when they are the
        best (and exists at all after a run shorter than one evaluation period). It feeds
        neither the schedule nor early stopping: a run stopped here and resumed must follow
        the same path as one never stopped."""
        p = self.progress
        val = self.val_loss()
        if not math.isnan(val):
            bar.write(
                f"step {p['step']}  final val {val:.4f} ({bits_per_char(val):.3f} bits/char)", file=sys.stderr
            )
            self.log_metrics(
                {
                    "step": p["step"],
                    "val_loss": val,
                    "val_bpc": bits_per_char(val),
                    "elapsed": round(p["elapsed"], 2),
                }
            )
        if val < p["best_val"] or not self.has_best():
            if not math.isnan(val):
                p["best_val"], p["best_step"] = val, p["step"]
            self.save("best.npz")

    def diverged(self, loss: float, norm: float) -> None:
        step = self.progress["step"] + 1
        what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {norm}"
        advice = "lower --lr or --grad-clip, then continue with --resume"
        last = self.out_dir / "last.npz"
        try:
            # nothing non-finite was applied, so these weights are the last good ones, unless
            # an earlier update already overflowed them (the save refuses non-finite weights)
            self.save("last.npz")
        except CheckpointError:
            raise CharRNNError(
                f"training diverged at step {step} ({what}) after the weights became non-finite; "
                f"{last} keeps the last good checkpoint - {advice}"
            ) from None
        raise CharRNNError(
            f"training diverged at step {step} ({what}); weights of step {step - 1} saved to {last}"
            f" - {advice}"
        )


# ---------------------------------------------------------------------- building a run


def default_out_dir(paths: list[Path]) -> Path:
    return Path("checkpoints") / Path(paths[0]).stem


def _refuse_differences(what: str, saved: dict, requested: dict) -> None:
    diffs = [f"{k} {saved[k]!r} -> {v!r}" for k, v in requested.items() if k in saved and saved[k] != v]
    if diffs:
        raise CharRNNError(f"cannot {what}: " + ", ".join(diffs) + " differ from the checkpoint")


def _read_corpus(paths, policy: TextPolicy, vocab, unknown: str, kept: Path, show_progress) -> Corpus:
    """load_corpus with a progress bar, keeping a memory-mapped corpus's ids at `kept`."""
    with reading_bar(paths, show=show_progress) as bar:
        return load_corpus(paths, policy, vocab=vocab, unknown=unknown, on_read=bar.update, keep_at=kept)


def prepare_run(
    paths: list[Path],
    model_options: dict,
    train_options: dict,
    policy: TextPolicy,
    out_dir: Path | None = None,
    resume: bool = False,
    init_from: Path | None = None,
    unknown: str = "error",
    policy_options: dict | None = None,
    show_progress: bool | None = None,
) -> Trainer:
    """Build a Trainer for a new, resumed or fine-tuned run.

    model_options / train_options hold only the options the user gave (plus, for a new run,
    everything else at its default); on --resume anything that would change what is learnt is
    refused with the difference spelled out, and so is a text policy option (policy_options:
    the TextPolicy fields the user gave) that differs from the checkpoint's. A corpus large
    enough to be memory-mapped keeps its ids in the run directory (KEPT_IDS), which --resume
    maps again after a cheap check of the files instead of reading them."""
    out_dir = Path(out_dir) if out_dir else default_out_dir(paths)
    ensure_writable(out_dir)
    clean_stale_temp_files(out_dir)
    kept = out_dir / KEPT_IDS
    if resume:
        last = out_dir / "last.npz"
        if not last.exists():
            raise CharRNNError(f"nothing to resume: {last} does not exist")
        ckpt = load_checkpoint(last)
        _refuse_differences("resume", ckpt.model_config.to_dict(), model_options)
        _refuse_differences("resume", ckpt.text_policy.to_dict(), policy_options or {})
        fixed = {k: v for k, v in train_options.items() if k not in RESUMABLE_OVERRIDES}
        _refuse_differences("resume", ckpt.train_config.to_dict(), fixed)
        tcfg = replace(
            ckpt.train_config, **{k: v for k, v in train_options.items() if k in RESUMABLE_OVERRIDES}
        )
        record = ckpt.progress.get("corpus", {})
        corpus = open_kept_corpus(paths, kept, ckpt.vocab, ckpt.text_policy, record)
        if corpus is not None:
            print(
                f"resuming on {kept}: the files' sizes and sampled contents match the checkpoint's",
                file=sys.stderr,
            )
            return Trainer(corpus, ckpt.model(), tcfg, out_dir, ckpt)
        # skip, then refuse: new characters mean a new corpus, and --unknown does not apply here
        corpus = _read_corpus(paths, ckpt.text_policy, ckpt.vocab, "skip", kept, show_progress)
        if corpus.skipped or corpus.fingerprint != record.get("fingerprint"):
            new = (
                f"; it has {corpus.skipped:,} character(s) the model's vocabulary lacks"
                if corpus.skipped
                else ""
            )
            raise CharRNNError(
                f"cannot resume: the corpus differs from the one {last} was trained on "
                f"({', '.join(ckpt.progress['corpus']['names'])}, {ckpt.progress['corpus']['chars']:,} chars)"
                + new
            )
        return Trainer(corpus, ckpt.model(), tcfg, out_dir, ckpt)
    with contextlib.suppress(FileNotFoundError):  # a new run's corpus replaces an old run's ids
        kept.unlink()
    vocab = None
    if init_from is not None:
        ckpt = load_checkpoint(init_from)
        _refuse_differences("fine-tune", ckpt.model_config.to_dict(), model_options)
        # the checkpoint's vocabulary stays: its rows of Wx and columns of Wy are what was learnt
        vocab = ckpt.vocab
    corpus = _read_corpus(paths, policy, vocab, unknown, kept, show_progress)
    chosen = {}
    if train_options.get("seq_len") is None:
        seq_len, chosen["seq_len"] = window_length(corpus.ids, corpus.vocab)
        train_options = dict(train_options, seq_len=seq_len)
    if train_options.get("epochs") is None:
        train_options = dict(train_options, epochs=epoch_bound(train_options))
    tcfg = TrainConfig(**train_options)
    if init_from is not None:
        trainer = Trainer(corpus, ckpt.model(), tcfg, out_dir, None)
    else:
        model_options = {
            "embedding_size": default_embedding_size(len(corpus.vocab)),
            **{k: v for k, v in model_options.items() if v is not None},
        }
        cfg = ModelConfig(vocab_size=len(corpus.vocab), **model_options)
        trainer = Trainer(corpus, CharRNN.create(cfg, seed=tcfg.seed), tcfg, out_dir, None)
        if "dropout" not in model_options:
            speed = functools.partial(training_speed, trainer.model, trainer.batches)
            trainer.set_dropout(*dropout_rate(planned_epochs(tcfg, len(trainer.train_ids), speed)))
    trainer.chosen.update(chosen)
    return trainer


def training_speed(model: CharRNN, batches: Batches, steps: int = 3) -> float:
    """Training chars/s of this model in one process, from its fastest of a few steps on the
    first window after a warm-up step (the fastest: other work on the machine only slows a step
    down). The weights are left as they are."""
    x, y = batches.window(0)
    model.loss_and_grads(x, y)
    fastest = math.inf
    for _ in range(steps):
        start = time.perf_counter()
        model.loss_and_grads(x, y)
        fastest = min(fastest, time.perf_counter() - start)
    return x.size / fastest


def summary_line(trainer: Trainer) -> str:
    c, m, t = trainer.corpus, trainer.model, trainer.tcfg
    cfg = m.config
    return (
        f"corpus {', '.join(c.names)}: {c.num_chars:,} chars ({len(trainer.train_ids):,} train, "
        f"{len(trainer.val_ids):,} validation), vocabulary {len(c.vocab)}; model {cfg.cell} "
        f"{cfg.num_layers}x{cfg.hidden_size}, {m.num_params():,} parameters, dropout {cfg.dropout:g}"
        + (f" ({trainer.chosen['dropout']})" if "dropout" in trainer.chosen else "")
        + f"; batch {t.batch_size} x "
        f"seq {t.seq_len}"
        + (f" ({trainer.chosen['seq_len']})" if "seq_len" in trainer.chosen else "")
        + f", {trainer.batches.windows_per_epoch:,} steps/epoch; validation every "
        f"{t.eval_every:,} steps on {trainer.eval_coverage()}"
        + (f", {trainer.workers()} worker processes" if trainer.workers() > 1 else "")
        + f"; device {device_label(m.xp)}"
        + f"; saving to {trainer.out_dir}"
        + size_advice(m.num_params(), len(trainer.train_ids))
    )
