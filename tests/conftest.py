"""Shared helpers: a central-difference gradient check, and a small corpus of number words for
the tests that train in a real process (a module can define its own `corpus` instead)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest


def numeric_grad(f: Callable[[], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar f() with respect to x, which f must read (x is
    perturbed in place and restored)."""
    g = np.zeros_like(x, dtype=np.float64)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + eps
        fp = f()
        x[idx] = old - eps
        fm = f()
        x[idx] = old
        g[idx] = (fp - fm) / (2 * eps)
    return g


def check_grads(f: Callable[[], float], arrays: dict, analytic: dict, tol: float = 1e-6) -> float:
    """Compare analytic[name] with the numeric gradient of f() for every name in arrays, and
    return the largest relative error seen.

    The error of a tensor is max|analytic - numeric| / max|numeric|: element-wise relative
    error blows up on entries that are legitimately ~0. Each tensor must also have a
    gradient clearly above the finite-difference noise, or the comparison proves nothing."""
    assert set(analytic) == set(arrays)
    worst = 0.0
    for name, x in arrays.items():
        num = numeric_grad(f, x)
        ana = np.asarray(analytic[name])
        assert ana.shape == x.shape, name
        scale = np.abs(num).max()
        assert scale > 1e-4, f"{name}: gradient too small to check ({scale:.2e})"
        err = np.abs(ana - num).max() / scale
        assert err < tol, f"{name}: relative error {err:.2e}"
        worst = max(worst, err)
    return worst


@pytest.fixture
def gradcheck():
    """check_grads(f, arrays, analytic, tol=1e-6): see conftest.check_grads."""
    return check_grads


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    path = tmp_path_factory.mktemp("corpus") / "numbers.txt"
    path.write_text("".join(" ".join(rng.choice(words, 6)) + "\n" for _ in range(400)), encoding="utf-8")
    return path
