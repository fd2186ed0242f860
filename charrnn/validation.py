"""Validation: the held-out text a run scores at each evaluation, and how it is scored.

Every evaluation of a run scores the same windows (data.sampled_eval_windows) from a zero state
of its own, so evaluations are comparable with each other and never disturb the hidden state
that training carries between windows (torch-rnn #38).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .data import eval_targets, sampled_eval_windows
from .model import CharRNN


def evaluate(
    model: CharRNN, ids: np.ndarray, seq_len: int, max_streams: int, runner=None, budget: int = 0
) -> float:
    """Mean loss in nats/char of model on ids (a 1-D array of character ids), as max_streams
    parallel streams of seq_len windows. budget: score a fixed sample of about that many
    characters (0: all). `runner` (the training's worker processes) computes the windows of
    max_streams rows; the shorter last ones run in this process."""
    total, count, state = 0.0, 0, None
    for x, y in sampled_eval_windows(ids, seq_len, max_streams, budget):
        if state is not None and state[0][0].shape[0] != x.shape[0]:
            state = None
        nats, state = (runner if runner is not None and len(x) == max_streams else model).nll(x, y, state)
        total += float(nats.sum())
        count += nats.size
    return total / count if count else math.nan


@dataclass(frozen=True)
class Validation:
    """A run's held-out ids and how an evaluation scores them: windows of seq_len over `streams`
    parallel streams, on a fixed sample of about `budget` characters (0: all)."""

    ids: np.ndarray
    seq_len: int
    streams: int
    budget: int

    def __len__(self) -> int:
        return len(self.ids)

    def loss(self, model: CharRNN, runner=None) -> float:
        """Mean loss in nats/char (NaN without validation text)."""
        if not len(self.ids):
            return math.nan
        return evaluate(model, self.ids, self.seq_len, self.streams, runner, self.budget)

    def coverage(self) -> str:
        """What an evaluation scores, e.g. "100,000 of 30,000,000 validation chars (0.3%)"."""
        n = len(self.ids)
        used = eval_targets(n, self.seq_len, self.streams, self.budget)
        if used >= n - 1:
            return f"all {used:,} validation chars"
        return f"{used:,} of {n:,} validation chars ({used / n:.1%}, fixed sample)"
