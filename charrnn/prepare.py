"""Building a run: a new one from a corpus and options, a resumed one from its last.npz, a
fine-tuning one from another run's weights; the defaults chosen from the corpus and the budget
(defaults.py) are applied here, and `summary_line` says what was built and why.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .backend import device_label, to_device
from .checkpoint import load_checkpoint
from .config import WIDE_HIDDEN, ModelConfig, TrainConfig, default_embedding_size
from .data import Batches, Corpus, epoch_windows, load_corpus, open_kept_corpus, split_train_val
from .defaults import (
    LARGE_MODEL,
    MANY_EPOCHS,
    dropout_rate,
    epoch_bound,
    model_width,
    planned_epochs,
    window_length,
)
from .errors import CharRNNError
from .model import CharRNN
from .progress import reading_bar
from .rundir import KEPT_IDS, LAST, RunDir, default_out_dir
from .text import TextPolicy
from .trainer import Trainer

# Options that may differ on --resume: they say how long and how often, not what is learnt.
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
    xp=np,
) -> Trainer:
    """Build a Trainer for a new, resumed or fine-tuned run.

    model_options / train_options hold only the options the user gave (plus, for a new run,
    everything else at its default); on --resume anything that would change what is learnt is
    refused with the difference spelled out, and so is a text policy option (policy_options:
    the TextPolicy fields the user gave) that differs from the checkpoint's. A corpus large
    enough to be memory-mapped keeps its ids in the run directory (KEPT_IDS), which --resume
    maps again after a cheap check of the files instead of reading them. xp: the array module
    the run will train with, whose device times the steps that the budget's choices rest on
    (the Trainer itself is built on the host: Trainer.to_device moves it)."""
    out_dir = Path(out_dir) if out_dir else default_out_dir(paths)
    RunDir(out_dir).prepare()
    kept = out_dir / KEPT_IDS
    if resume:
        last = out_dir / LAST
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
        val_frac = train_options.get("val_frac", TrainConfig.val_frac)
        batch_size = train_options.get("batch_size", TrainConfig.batch_size)
        train_chars = len(split_train_val(corpus.ids, val_frac)[0])
        windows = epoch_windows(train_chars, batch_size, train_options["seq_len"])
        epochs, eval_every, why = epoch_bound(train_options, windows)
        train_options = dict(train_options, epochs=epochs, eval_every=eval_every)
        if why:
            chosen["epochs"] = why
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
        trainer.choose(*budget_choices(trainer, model_options, xp))
    trainer.chosen.update(chosen)
    return trainer


# the options budget_choices decides from timed steps (the others follow from the text alone)
TIMED_CHOICES = ("hidden_size", "dropout")


def budget_choices(trainer: Trainer, model_options: dict, xp=np) -> tuple[ModelConfig, dict[str, str]]:
    """The model config a new run's budget decides where model_options leave it open (its width
    under --max-time, then its dropout), and why, from the speed of a few steps timed on xp's
    device."""
    tcfg, chars, config = trainer.tcfg, len(trainer.train_ids), trainer.model.config
    why = {}

    def speed_of(model: CharRNN):
        return functools.partial(training_speed, model, trainer.batches, xp)

    epochs = planned_epochs(tcfg, chars, speed_of(trainer.model))
    # a wider model is slower: only a time that allows many epochs of this one can allow them of it
    if "hidden_size" not in model_options and tcfg.max_time and epochs >= MANY_EPOCHS:
        wide = CharRNN.create(replace(config, hidden_size=WIDE_HIDDEN), seed=tcfg.seed)
        wide_epochs = planned_epochs(tcfg, chars, speed_of(wide))
        width, why["hidden_size"] = model_width(wide_epochs, wide.num_params(), chars)
        if width == WIDE_HIDDEN:
            config, epochs = wide.config, wide_epochs
    if "dropout" not in model_options:
        rate, why["dropout"] = dropout_rate(epochs)
        config = replace(config, dropout=rate)
    return config, why


def training_speed(model: CharRNN, batches: Batches, xp=np, steps: int = 3) -> float:
    """Training chars/s of this model in one process on xp's device, from its fastest of a few
    steps on the first window after a warm-up step (the fastest: other work on the machine only
    slows a step down). The model's weights are left as and where they are."""
    model = CharRNN(model.config, to_device(model.params, xp))
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
        f"{len(trainer.validation):,} validation), vocabulary {len(c.vocab)}; model {cfg.cell} "
        f"{cfg.num_layers}x{cfg.hidden_size}"
        + (f" ({trainer.chosen['hidden_size']})" if "hidden_size" in trainer.chosen else "")
        + f", {m.num_params():,} parameters, dropout {cfg.dropout:g}"
        + (f" ({trainer.chosen['dropout']})" if "dropout" in trainer.chosen else "")
        + f"; batch {t.batch_size} x "
        f"seq {t.seq_len}"
        + (f" ({trainer.chosen['seq_len']})" if "seq_len" in trainer.chosen else "")
        + f", {trainer.batches.windows_per_epoch:,} steps/epoch"
        + (f", up to {t.epochs:g} epochs ({trainer.chosen['epochs']})" if "epochs" in trainer.chosen else "")
        + "; validation every "
        f"{t.eval_every:,} steps on {trainer.validation.coverage()}"
        + (f", {trainer.workers()} worker processes" if trainer.workers() > 1 else "")
        + f"; device {device_label(m.xp)}"
        + f"; saving to {trainer.out_dir}"
        + size_advice(m.num_params(), len(trainer.train_ids))
    )


def size_advice(num_params: int, train_chars: int) -> str:
    """char-rnn's rule of thumb: parameters and training characters should be of the same
    order; far more parameters overfits, far fewer underfits."""
    ratio = num_params / max(train_chars, 1)
    if ratio > LARGE_MODEL:
        return (
            " - the model is large for this data (expect overfitting: raise --dropout or lower --hidden-size)"
        )
    if ratio < 0.01:
        return " - the model is small for this data (it may underfit: raise --hidden-size)"
    return ""
