"""Sampling draws from the distribution it claims: softmax(logits / temperature), cut by top-k
and top-p, checked against frequencies of many draws."""

from __future__ import annotations

import numpy as np
import pytest

from charrnn.sampling import SampleOptions, choose, next_distribution

LOGITS = np.array([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]], dtype=np.float32)
DRAWS = 40_000


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def frequencies(opts: SampleOptions) -> np.ndarray:
    rng = np.random.default_rng(0)
    batch = np.repeat(LOGITS, DRAWS, axis=0)  # every row an independent stream
    return np.bincount(choose(batch, opts, rng), minlength=LOGITS.shape[1]) / DRAWS


@pytest.mark.parametrize(
    "opts, expected",
    [
        (SampleOptions(temperature=1.0), softmax(LOGITS[0].astype(float))),
        (SampleOptions(temperature=0.5), softmax(LOGITS[0] / 0.5)),
        (SampleOptions(temperature=2.0, top_k=3), np.r_[softmax(LOGITS[0, :3] / 2.0), 0, 0, 0]),
        # cumulative mass of the sorted softmax: 0.56, 0.77, 0.89 ... top-p 0.7 keeps two characters
        (SampleOptions(temperature=1.0, top_p=0.7), np.r_[softmax(LOGITS[0, :2]), 0, 0, 0, 0]),
    ],
)
def test_draws_follow_the_distribution(opts, expected):
    np.testing.assert_allclose(
        next_distribution(LOGITS, opts.temperature, opts.top_k, opts.top_p)[0],
        expected,
        rtol=1e-6,
        atol=1e-12,
    )
    freq = frequencies(opts)
    # binomial standard error is at most 0.0025 for 40,000 draws: 5 of them
    np.testing.assert_allclose(freq, expected, atol=0.0125)
    assert np.all(freq[expected == 0] == 0)  # a cut character is never drawn


def test_greedy_takes_the_largest():
    assert choose(np.array([[0.1, 3.0, 2.9]]), SampleOptions(temperature=0), np.random.default_rng(0)) == [1]
