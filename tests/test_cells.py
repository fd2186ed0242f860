"""Recurrent kernels (charrnn.cells): float64 numeric gradient checks of every *_backward, and
the fused kernels against a naive per-gate reference written out step by step below."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest

from charrnn import cells

T, N, H = 4, 3, 4
CASES = ["rnn-tanh", "rnn-relu", "lstm", "lstm-peep", "gru"]


@dataclass
class Case:
    """One kernel with random float64 inputs: arrays holds xw, the initial state (h0, c0) and
    the recurrent parameters, each of which gets a gradient from *_backward."""

    forward: Callable
    backward: Callable
    step: Callable
    arrays: dict[str, np.ndarray]
    state_names: tuple[str, ...]
    param_names: tuple[str, ...]
    kwargs: dict = field(default_factory=dict)

    def state(self) -> tuple:
        return tuple(self.arrays[s] for s in self.state_names)

    def params(self) -> dict:
        return {p: self.arrays[p] for p in self.param_names}

    def run(self):
        return self.forward(self.arrays["xw"], self.state(), **self.params(), **self.kwargs)


def make_case(name: str, seed: int = 0, dtype=np.float64) -> Case:
    rng = np.random.default_rng(seed)
    cell = name.split("-")[0]
    G = cells.GATES[cell] * H
    arrays = {"xw": rng.normal(0, 1, (T, N, G)), "h0": rng.normal(0, 0.5, (N, H))}
    state_names = ("h0", "c0") if cell == "lstm" else ("h0",)
    if cell == "lstm":
        arrays["c0"] = rng.normal(0, 1, (N, H))
    arrays["Wh"] = rng.normal(0, 0.5, (H, G))
    param_names = ("Wh",)
    kwargs = {}
    if name == "lstm-peep":
        arrays["peep"] = rng.normal(0, 0.5, 3 * H)
        param_names += ("peep",)
    if cell == "gru":
        arrays["bhn"] = rng.normal(0, 0.5, H)
        param_names += ("bhn",)
    if cell == "rnn":
        kwargs["relu"] = name == "rnn-relu"
        if kwargs["relu"]:
            _keep_off_the_kink(arrays)
    arrays = {k: v.astype(dtype) for k, v in arrays.items()}
    fns = {
        "rnn": (cells.rnn_forward, cells.rnn_backward, cells.rnn_step),
        "lstm": (cells.lstm_forward, cells.lstm_backward, cells.lstm_step),
        "gru": (cells.gru_forward, cells.gru_backward, cells.gru_step),
    }[cell]
    return Case(*fns, arrays, state_names, param_names, kwargs)


def _keep_off_the_kink(arrays, margin=0.05):
    """Shift xw so no relu pre-activation lies within `margin` of 0: a central difference
    across the kink would measure half of a one-sided slope, not the gradient."""
    h, Wh = arrays["h0"], arrays["Wh"]
    for t in range(T):
        a = arrays["xw"][t] + h @ Wh
        near = np.abs(a) < margin
        arrays["xw"][t][near] += np.where(a[near] >= 0, 2 * margin, -2 * margin)
        h = np.maximum(arrays["xw"][t] + h @ Wh, 0)


# ---------------------------------------------------------------- naive references


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def naive_rnn(xw, h0, Wh, relu=False):
    h, hs = h0, []
    for x_t in xw:
        a = x_t + h @ Wh
        h = np.maximum(a, 0.0) if relu else np.tanh(a)
        hs.append(h)
    return np.stack(hs), (h,)


def naive_lstm(xw, h0, c0, Wh, peep=None):
    n = h0.shape[1]
    Wi, Wf, Wo, Wg = (Wh[:, k * n : (k + 1) * n] for k in range(4))
    xi, xf, xo, xg = (xw[..., k * n : (k + 1) * n] for k in range(4))
    pi, pf, po = (0.0, 0.0, 0.0) if peep is None else (peep[:n], peep[n : 2 * n], peep[2 * n :])
    h, c, hs = h0, c0, []
    for t in range(len(xw)):
        i = sigmoid(xi[t] + h @ Wi + pi * c)
        f = sigmoid(xf[t] + h @ Wf + pf * c)
        g = np.tanh(xg[t] + h @ Wg)
        c = f * c + i * g
        o = sigmoid(xo[t] + h @ Wo + po * c)  # the output peephole sees the new cell
        h = o * np.tanh(c)
        hs.append(h)
    return np.stack(hs), (h, c)


def naive_gru(xw, h0, Wh, bhn):
    n = h0.shape[1]
    Wr, Wz, Wn = (Wh[:, k * n : (k + 1) * n] for k in range(3))
    xr, xz, xn = (xw[..., k * n : (k + 1) * n] for k in range(3))
    h, hs = h0, []
    for t in range(len(xw)):
        r = sigmoid(xr[t] + h @ Wr)
        z = sigmoid(xz[t] + h @ Wz)
        nn = np.tanh(xn[t] + r * (h @ Wn + bhn))
        h = (1 - z) * nn + z * h
        hs.append(h)
    return np.stack(hs), (h,)


NAIVE = {"rnn": naive_rnn, "lstm": naive_lstm, "gru": naive_gru}


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("name", CASES)
def test_backward_matches_numeric_gradient(name, gradcheck):
    case = make_case(name)
    rng = np.random.default_rng(1)
    hs, stateT, _ = case.run()
    # random upstream gradients on every output, so each path into dxw/dstate0 is weighted
    dhs = rng.normal(size=hs.shape)
    dstate = tuple(rng.normal(size=s.shape) for s in stateT)

    def loss():
        hs, stateT, _ = case.run()
        return float(np.sum(hs * dhs) + sum(np.sum(s * d) for s, d in zip(stateT, dstate)))

    before = {k: v.copy() for k, v in case.arrays.items()}
    _, _, cache = case.run()  # backward consumes its cache: always a fresh forward first
    dxw, dstate0, grads = case.backward(dhs, dstate, cache)
    # the parameters and the caller's initial state must survive forward + backward
    for k in case.state_names + case.param_names:
        np.testing.assert_array_equal(case.arrays[k], before[k], err_msg=k)
    assert set(grads) == set(case.param_names)
    analytic = {"xw": dxw, **dict(zip(case.state_names, dstate0)), **grads}
    gradcheck(loss, case.arrays, analytic)


@pytest.mark.parametrize("name", CASES)
def test_backward_without_dstate_equals_zero_dstate(name):
    case = make_case(name, seed=2)
    hs, stateT, cache = case.run()
    dhs = np.random.default_rng(3).normal(size=hs.shape)
    got = case.backward(dhs, None, cache)
    want = case.backward(dhs, tuple(np.zeros_like(s) for s in stateT), case.run()[2])
    assert got[2].keys() == want[2].keys()
    for a, b in zip(_flatten(got), _flatten(want)):
        np.testing.assert_array_equal(a, b)


def _flatten(backward_out):
    dxw, dstate0, grads = backward_out
    return [dxw, *dstate0, *(grads[k] for k in sorted(grads))]


@pytest.mark.parametrize("name", CASES)
def test_fused_forward_matches_naive_reference(name):
    case = make_case(name, seed=4)
    hs, stateT, _ = case.run()
    ref_hs, ref_state = NAIVE[name.split("-")[0]](
        case.arrays["xw"], *case.state(), **case.params(), **case.kwargs
    )
    np.testing.assert_allclose(hs, ref_hs, rtol=0, atol=1e-12)
    assert len(stateT) == len(ref_state)
    for s, r in zip(stateT, ref_state):
        np.testing.assert_allclose(s, r, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", CASES)
def test_step_loop_equals_forward_bit_for_bit(name, dtype):
    # cells.py promises that *_step runs the forward loop's activation code, so sampling
    # reproduces training exactly, not merely to rounding
    case = make_case(name, seed=5, dtype=dtype)
    hs, stateT, _ = case.run()
    state = case.state()
    for t in range(T):
        h, state = case.step(case.arrays["xw"][t], state, **case.params(), **case.kwargs)
        assert h.dtype == dtype
        np.testing.assert_array_equal(h, hs[t])
    for s, r in zip(state, stateT):
        np.testing.assert_array_equal(s, r)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", CASES)
def test_forward_without_cache_equals_forward_bit_for_bit(name, dtype):
    # keep=False (scoring, priming) reuses one step's buffers; it must compute the same values
    case = make_case(name, seed=6, dtype=dtype)
    hs, stateT, cache = case.run()
    hs_only, state_only, none = case.forward(
        case.arrays["xw"], case.state(), **case.params(), **case.kwargs, keep=False
    )
    assert cache is not None and none is None
    np.testing.assert_array_equal(hs_only, hs)
    for s, r in zip(state_only, stateT):
        np.testing.assert_array_equal(s, r)


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 16])
def test_matmul_rows_is_the_product(rows):
    rng = np.random.default_rng(rows)
    h, W = rng.normal(size=(rows, 8)), rng.normal(size=(8, 12))
    np.testing.assert_allclose(cells.matmul_rows(h, W, np.empty((rows, 12))), h @ W, rtol=1e-13, atol=1e-13)
