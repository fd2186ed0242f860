"""Training defaults that depend on the corpus, each chosen from measured runs (docs/RESULTS.md,
"Defaults from evidence") and explained in the start-up line.

Dropout: a run that sees its text only a few times is still learning it and dropout only slows
it down; a run that goes over it many times overfits without it (tiny-shakespeare, GRU 2x256:
3 epochs learn best without, 10 with 0.2). Whether a run will see many epochs depends on its
budget: --max-steps and --epochs say it outright, --max-time through the speed of a few
steps measured at start-up.

Width: a 2x256 levels off once it has seen its text a dozen times or so (tiny-shakespeare: about
1.46 nats/char however long it trains), while a wider model, slower per step, keeps learning
past it. So a run given --max-time that lets a 2x512 go over the text MANY_EPOCHS times trains
the 2x512 (tiny-shakespeare in 20 minutes: 1.455 against 1.463), unless that makes the model
large for the text; shorter budgets keep the 256, which learns more in few steps.

The epoch bound: a run given no budget stops after 20 passes over its text (early stopping
usually ends it sooner); a run given --max-time or --max-steps is bounded by that alone, so
`--max-time 20m` trains for 20 minutes even on a text it goes over 20 times sooner. On a text
so small that 20 passes are few steps (28 k chars: 140 steps of 32 x 100), the model is still
far from what it can learn when they end, so such a run gets as many passes as SMALL_TEXT_STEPS
steps take, evaluated every SMALL_TEXT_EVAL_EVERY steps so that early stopping ends it where
it stops improving. On the two small texts measured (28 k and 50 k chars) the best came at step
400-600, so 600 steps end the warmdown there; 2,000 overfit long before theirs began.

The window length: truncated BPTT only learns what spans one window, so a model trained on
50-character windows cannot learn where a line of 79 characters ends, and at a low
temperature it loops on a run of spaces or `#` far past any line it saw. Text whose long lines
are common (source code, prose with one paragraph per line) gets 100-character windows; short
lines (verse, chat) keep the faster 50. The lengths are measured on a fixed sample of the
text, so a corpus of any size starts in the same time.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .config import (
    LONG_LINE,
    LONG_WINDOW,
    SHORT_WINDOW,
    SMALL_TEXT_EVAL_EVERY,
    SMALL_TEXT_STEPS,
    WIDE_HIDDEN,
    ModelConfig,
    TrainConfig,
)
from .vocab import Vocab

SAMPLE_BLOCKS, BLOCK_CHARS = 32, 32_768
MANY_EPOCHS, LONG_RUN_DROPOUT = 6.0, 0.2
LARGE_MODEL = 10  # parameters per training character beyond which a model overfits its text


def long_line_length(ids: np.ndarray, newline: int | None, q: float = 99.0) -> int:
    """The q-th percentile of line lengths (chars without the newline) over a fixed sample of
    SAMPLE_BLOCKS evenly spaced blocks; lines cut by a block's edge are left out. A text with
    no line break in the sample is one long line."""
    if newline is None:
        return len(ids)
    starts = np.unique(np.linspace(0, max(len(ids) - BLOCK_CHARS, 0), SAMPLE_BLOCKS).astype(np.int64))
    lengths = [np.diff(np.flatnonzero(np.asarray(ids[s : s + BLOCK_CHARS]) == newline)) - 1 for s in starts]
    lengths = np.concatenate(lengths)
    return int(np.percentile(lengths, q)) if len(lengths) else min(len(ids), BLOCK_CHARS)


def window_length(ids: np.ndarray, vocab: Vocab) -> tuple[int, str]:
    """(seq_len, why) for a new run on ids."""
    longest = long_line_length(ids, vocab.index.get("\n"))
    if longest > LONG_LINE:
        return LONG_WINDOW, f"for this text: 1 line in 100 has {longest}+ chars"
    return SHORT_WINDOW, f"for this text: 99 lines in 100 have at most {longest} chars"


def epoch_bound(tcfg_options: dict, windows_per_epoch: int) -> tuple[float, int, str | None]:
    """(--epochs, --eval-every, why) for a run whose options leave --epochs unset: no epoch bound
    when --max-steps or --max-time bounds the run, else TrainConfig's, or for a small text
    (windows_per_epoch steps an epoch) enough epochs for SMALL_TEXT_STEPS steps and evaluations
    often enough to stop it early (why is None when TrainConfig's values hold)."""
    eval_every = tcfg_options.get("eval_every", TrainConfig.eval_every)
    if tcfg_options.get("max_steps") or tcfg_options.get("max_time"):
        return 0.0, eval_every, None
    if TrainConfig.epochs * windows_per_epoch >= SMALL_TEXT_STEPS:
        return TrainConfig.epochs, eval_every, None
    epochs = float(math.ceil(SMALL_TEXT_STEPS / max(windows_per_epoch, 1)))
    eval_every = tcfg_options.get("eval_every", SMALL_TEXT_EVAL_EVERY)
    return epochs, eval_every, f"{SMALL_TEXT_STEPS:,} steps on a text this small"


def planned_epochs(tcfg: TrainConfig, train_chars: int, chars_per_second: Callable[[], float]) -> float:
    """How many times the run's budget lets it go over its training text: the tightest of
    --max-steps, --epochs and --max-time (timed by chars_per_second, called only when needed)."""
    per_epoch = max(train_chars, 1)
    bounds = [tcfg.epochs or math.inf]
    if tcfg.max_steps:
        bounds.append(tcfg.max_steps * tcfg.batch_size * tcfg.seq_len / per_epoch)
    if tcfg.max_time and min(bounds) >= MANY_EPOCHS:
        bounds.append(tcfg.max_time * chars_per_second() / per_epoch)
    return min(bounds)


def dropout_rate(epochs: float) -> tuple[float, str]:
    """(dropout, why) for a new run whose budget covers `epochs` passes over its text."""
    if epochs >= MANY_EPOCHS:
        return LONG_RUN_DROPOUT, f"the budget allows about {epochs:.0f} epochs"
    return 0.0, f"the budget allows about {epochs:.1f} epochs"


def model_width(epochs: float, wide_params: int, train_chars: int) -> tuple[int, str]:
    """(hidden_size, why) for a new run whose --max-time lets a WIDE_HIDDEN model go over its
    text `epochs` times; wide_params is that model's size."""
    if wide_params > LARGE_MODEL * train_chars:
        return ModelConfig.hidden_size, f"a {WIDE_HIDDEN} would be large for this text"
    if epochs >= MANY_EPOCHS:
        return WIDE_HIDDEN, f"the time allows about {epochs:.0f} epochs of it"
    return ModelConfig.hidden_size, f"the time allows about {epochs:.1f} epochs of a {WIDE_HIDDEN}"
