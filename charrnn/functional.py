"""Element-wise maths and the softmax cross-entropy shared by the model and its users.

Conventions: natural logarithms everywhere (nats); bits = nats / ln 2; perplexity = exp(nats).
Functions take their dtype and their array module (NumPy or CuPy, backend.array_module) from
their inputs, so float32 training, float64 gradient checks and the GPU run the same code.
"""

from __future__ import annotations

import math

import numpy as np

from .backend import array_module

LN2 = math.log(2.0)


def sigmoid_neg_(x: np.ndarray) -> np.ndarray:
    """In place x = sigmoid(-x) = 1 / (1 + exp(x)).

    One exp costs half a tanh in NumPy's float32 loops, which makes this form cheaper than
    0.5 * (1 + tanh(x / 2)). exp overflows to inf for x above ~88 (float32), giving the exact
    limit 0: callers run this under np.errstate(over="ignore") rather than guard it with an
    extra clipping pass (CuPy never warns). The cells enter that context once per time loop,
    not once per step, where it cost about as much as one of the step's ufunc calls."""
    xp = array_module(x)
    xp.exp(x, out=x)
    x += 1.0
    xp.divide(1.0, x, out=x)
    return x


def sigmoid_(x: np.ndarray) -> np.ndarray:
    """In-place logistic sigmoid, 1 / (1 + exp(-x))."""
    return sigmoid_neg_(array_module(x).negative(x, out=x))


def sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return sigmoid_(array_module(x).array(x, copy=True))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax over the last axis. logits (..., V) -> (..., V)."""
    xp = array_module(logits)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))


def softmax_cross_entropy(logits: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy and its gradient.

    logits (M, V), targets (M,) integer ids -> (loss, dlogits (M, V)), loss averaged over M.
    The gradient is written into a fresh array (softmax - onehot) / M. targets live where
    logits do; the loss is the one number that comes back from a device.
    """
    xp = array_module(logits)
    m = logits.shape[0]
    probs = logits - logits.max(axis=1, keepdims=True)
    xp.exp(probs, out=probs)
    sums = probs.sum(axis=1, keepdims=True)
    probs /= sums
    rows = xp.arange(m)
    picked = probs[rows, targets]
    # log of a normalised probability; the tiny floor only guards exp underflow in float32
    loss = float(-xp.log(xp.maximum(picked, np.finfo(probs.dtype).tiny)).mean(dtype=np.float64))
    probs[rows, targets] -= 1.0
    probs /= m
    return loss, probs


def token_nats(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-position negative log-likelihood in nats. logits (M, V), targets (M,) -> (M,) float64,
    on logits' device."""
    logp = log_softmax(logits.astype(np.float64, copy=False))
    return -logp[array_module(logits).arange(logits.shape[0]), targets]


def bits_per_char(nats: float) -> float:
    return nats / LN2


def perplexity(nats: float) -> float:
    return math.exp(nats)
