"""Scoring's numbers: the forward-only path gives the training forward's loss, the exact score
is the model's value computed one character at a time, and parallel streams stay within their
documented approximation of it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from charrnn.config import ModelConfig
from charrnn.functional import log_softmax
from charrnn.model import CharRNN
from charrnn.scoring import score_ids, window_len

V = 11
CELLS = {
    "lstm": {"cell": "lstm", "num_layers": 2},
    "lstm-peep-embed": {"cell": "lstm", "num_layers": 2, "peephole": True, "embedding_size": 4},
    "gru": {"cell": "gru", "num_layers": 2},
    "rnn": {"cell": "rnn", "num_layers": 2},
}


def make_model(cfg: dict, dtype=np.float64) -> CharRNN:
    return CharRNN.create(ModelConfig(vocab_size=V, hidden_size=8, **cfg), seed=1, dtype=dtype)


def text_ids(n: int, seed: int = 0) -> np.ndarray:
    """Ids with some structure (a noisy cycle), so a model's state matters."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n) % V
    noise = rng.random(n) < 0.3
    ids[noise] = rng.integers(0, V, noise.sum())
    return ids.astype(np.int64)


def step_by_step_nats(model: CharRNN, ids: np.ndarray) -> float:
    """The model's definition of a text's nats: one character at a time through model.step, the
    state carried from the first character to the last."""
    total, state = 0.0, None
    for a, b in zip(ids[:-1], ids[1:]):
        logits, state = model.step(np.array([a]), state)
        total -= float(log_softmax(logits.astype(np.float64))[0, b])
    return total


@pytest.mark.parametrize("name", CELLS)
def test_forward_only_nll_equals_the_training_forwards_loss(name):
    model = make_model(CELLS[name])
    ids = text_ids(3 * 41 + 1, seed=2)
    x, y = ids[:-1].reshape(3, 41), ids[1:].reshape(3, 41)
    nats, state = model.nll(x, y)  # the forward that keeps no cache
    loss, _, lg_state = model.loss_and_grads(x, y)  # the training forward, cache kept
    assert nats.mean() == pytest.approx(loss, rel=1e-13)
    for layer, lg_layer in zip(state, lg_state):
        for s, r in zip(layer, lg_layer):
            np.testing.assert_array_equal(s, r)


@pytest.mark.parametrize("name", CELLS)
def test_exact_score_is_the_step_by_step_value(name):
    model = make_model(CELLS[name])
    ids = text_ids(window_len(V, 1) + 300, seed=3)  # crosses a window boundary, state carried
    nats, chars, streams = score_ids(model, ids, streams=1)
    assert (chars, streams) == (len(ids) - 1, 1)
    assert abs(nats - step_by_step_nats(model, ids)) <= 1e-10 * abs(nats)


def test_parallel_streams_stay_near_the_exact_score():
    # docs/BENCHMARKS.md: each stream re-reads `warmup` characters, so only what lies further
    # back is forgotten; a small random model forgets within a few characters anyway
    model = make_model(CELLS["lstm"], dtype=np.float32)
    ids = text_ids(20_000, seed=4)
    exact, chars, _ = score_ids(model, ids, streams=1)
    parallel, p_chars, streams = score_ids(model, ids, streams=16, warmup=50, workers=1)
    assert streams == 16 and p_chars == chars  # every character scored once
    assert math.isclose(parallel / chars, exact / chars, rel_tol=1e-4)
