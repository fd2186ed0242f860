"""Adam (against a textbook reference and torch.optim.Adam), global-norm clipping, the
learning-rate schedule, and the sparse row scatter used for input-layer gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest

from charrnn.model import scatter_add_rows
from charrnn.optim import Adam, LRSchedule, clip_grad_norm

SHAPES = {"W": (3, 4), "b": (4,), "s": (1,)}
LRS = [1e-2, 5e-3, 2e-2, 1e-3, 1e-2, 7e-3]


def random_params(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(dtype) for k, s in SHAPES.items()}


def grad_sequence(n, seed=1):
    """Gradients of very different scales per step, so bias correction and eps both matter."""
    rng = np.random.default_rng(seed)
    return [
        {k: rng.normal(size=s) * 10.0 ** rng.integers(-3, 2) for k, s in SHAPES.items()} for _ in range(n)
    ]


def reference_adam(params, grad_seq, lrs, b1=0.9, b2=0.999, eps=1e-8):
    """Kingma & Ba with bias-corrected moments, one array at a time."""
    p = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, (g, lr) in enumerate(zip(grad_seq, lrs), start=1):
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            m_hat, v_hat = m[k] / (1 - b1**t), v[k] / (1 - b2**t)
            p[k] = p[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.9)])
def test_adam_matches_reference(betas):
    params, grads = random_params(), grad_sequence(len(LRS))
    want = reference_adam(params, grads, LRS, *betas)
    adam = Adam(params, *betas)
    for g, lr in zip(grads, LRS):
        adam.update(params, {k: a.copy() for k, a in g.items()}, lr)  # update scribbles on grads
    assert adam.t == len(LRS)
    for k in params:
        np.testing.assert_allclose(params[k], want[k], rtol=1e-12, atol=1e-15)


def test_adam_updates_in_place_and_keeps_dtype():
    params = random_params(dtype=np.float32)
    arrays = dict(params)
    adam = Adam(params)
    adam.update(params, {k: g.astype(np.float32) for k, g in grad_sequence(1)[0].items()}, 1e-2)
    for k in params:
        assert params[k] is arrays[k] and params[k].dtype == np.float32


def test_adam_state_dict_round_trip_resumes_exactly():
    grads = grad_sequence(6)
    params_a = random_params()
    adam_a = Adam(params_a)
    for g, lr in zip(grads[:3], LRS):
        adam_a.update(params_a, {k: a.copy() for k, a in g.items()}, lr)
    params_b = {k: v.copy() for k, v in params_a.items()}
    adam_b = Adam(params_b)
    adam_b.load_state_dict({k: np.array(v, copy=True) for k, v in adam_a.state_dict().items()})
    for g, lr in zip(grads[3:], LRS[3:]):
        adam_a.update(params_a, {k: a.copy() for k, a in g.items()}, lr)
        adam_b.update(params_b, {k: a.copy() for k, a in g.items()}, lr)
    for k in params_a:
        np.testing.assert_array_equal(params_a[k], params_b[k])


def test_adam_matches_torch():
    torch = pytest.importorskip("torch")
    params, grads = random_params(), grad_sequence(len(LRS))
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    topt = torch.optim.Adam(list(tparams.values()), lr=LRS[0], betas=(0.9, 0.999), eps=1e-8)
    adam = Adam(params)
    for g, lr in zip(grads, LRS):
        for k, tp in tparams.items():
            tp.grad = torch.tensor(g[k])
        for group in topt.param_groups:
            group["lr"] = lr
        topt.step()
        adam.update(params, {k: a.copy() for k, a in g.items()}, lr)
        for k in params:
            np.testing.assert_allclose(params[k], tparams[k].detach().numpy(), rtol=1e-12, atol=1e-14)


def global_norm(grads):
    return math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values()))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_clip_grad_norm_scales_to_max_norm(dtype):
    grads = {k: g.astype(dtype) for k, g in random_params(3).items()}
    before = {k: g.copy() for k, g in grads.items()}
    norm = global_norm(grads)
    max_norm = norm / 4
    assert clip_grad_norm(grads, max_norm) == pytest.approx(norm, rel=1e-6)
    assert global_norm(grads) == pytest.approx(max_norm, rel=1e-5)
    for k in grads:  # one common scale: the direction is kept
        assert grads[k].dtype == dtype
        np.testing.assert_allclose(grads[k], before[k] / 4, rtol=1e-5)


@pytest.mark.parametrize("max_norm", [0.0, 1e6])
def test_clip_grad_norm_leaves_small_or_unclipped_grads(max_norm):
    grads = random_params(4)
    before = {k: g.copy() for k, g in grads.items()}
    assert clip_grad_norm(grads, max_norm) == pytest.approx(global_norm(before), rel=1e-12)
    for k in grads:
        np.testing.assert_array_equal(grads[k], before[k])


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_clip_grad_norm_reports_non_finite_and_leaves_grads_alone(bad):
    grads = random_params(5)
    grads["W"][1, 2] = bad
    before = {k: v.copy() for k, v in grads.items()}
    norm = clip_grad_norm(grads, 1.0)
    assert math.isnan(norm) if np.isnan(bad) else norm == math.inf
    for k in grads:
        np.testing.assert_array_equal(grads[k], before[k])


def test_lr_schedule_step_decay():
    s = LRSchedule(1.0, decay=0.5, decay_every=10)
    assert [s.lr(n) for n in (0, 9, 10, 19, 20, 35)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.125]
    assert LRSchedule(2e-3).lr(10**6) == 2e-3  # decay_every 0: constant


def test_lr_schedule_plateau():
    s = LRSchedule(1.0, plateau_factor=0.5, plateau_patience=2)
    assert [s.observe(v) for v in (3.0, 2.0, 2.5, 2.0)] == [False, False, False, True]
    assert s.lr(0) == 0.5
    # a reduction restarts the count of bad evaluations; a new best resets it too
    assert [s.observe(v) for v in (2.1, 1.0, 1.5, 1.5)] == [False, False, False, True]
    assert s.lr(0) == 0.25
    never = LRSchedule(1.0, plateau_patience=0)
    assert not any(never.observe(v) for v in (1.0, 2.0, 3.0, 4.0, 5.0))
    assert never.lr(0) == 1.0


def test_lr_schedule_warmdown_falls_linearly_to_zero_at_the_end_of_the_budget():
    s = LRSchedule(1.0, warmdown=0.25)
    assert [s.lr(0, done) for done in (0.0, 0.5, 0.75, 0.875, 1.0, 1.2)] == [1.0, 1.0, 1.0, 0.5, 0.0, 0.0]
    # it multiplies the other factors rather than replacing them
    both = LRSchedule(1.0, decay=0.5, decay_every=10, warmdown=0.5)
    assert both.lr(10, 0.75) == 0.25
    assert LRSchedule(1.0).lr(0, 0.99) == 1.0  # warmdown 0: off


def test_lr_schedule_state_dict_round_trip():
    a = LRSchedule(1.0, decay=0.9, decay_every=5, plateau_factor=0.1, plateau_patience=2)
    for v in (1.0, 1.2, 1.3, 1.1):
        a.observe(v)
    b = LRSchedule(1.0, decay=0.9, decay_every=5, plateau_factor=0.1, plateau_patience=2)
    b.load_state_dict(dict(a.state_dict()))
    assert b.state_dict() == a.state_dict() and b.lr(12) == a.lr(12)
    # the restored counters decide the next reduction exactly as the original's do
    for v in (1.5, 1.6, 0.5, 0.7, 0.8):
        assert a.observe(v) == b.observe(v)
        assert a.lr(12) == b.lr(12)


@pytest.mark.parametrize(("m", "num_rows", "d"), [(1, 1, 3), (20, 7, 5), (50, 100, 2), (30, 3, 1)])
def test_scatter_add_rows_equals_add_at(m, num_rows, d):
    rng = np.random.default_rng(m)
    ids = rng.integers(0, num_rows, m)
    rows = rng.normal(size=(m, d))
    want = np.zeros((num_rows, d))
    np.add.at(want, ids, rows)
    got = scatter_add_rows(ids, rows, num_rows)
    assert got.shape == (num_rows, d)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
