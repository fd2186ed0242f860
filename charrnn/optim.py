"""Adam, global-norm gradient clipping and the learning-rate schedule.

Adam follows PyTorch's formulation so that the two optimise identically:
    m = b1 m + (1 - b1) g          v = b2 v + (1 - b2) g^2
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
Its state is a flat dict of named arrays ("m.<param>", "v.<param>", "t") so a checkpoint can
store it without pickle. The moments live where the params do (NumPy or CuPy arrays: the
same code runs on either, see backend.py).
"""

from __future__ import annotations

import math

import numpy as np

from .backend import array_module


class Adam:
    def __init__(self, params: dict[str, np.ndarray], beta1=0.9, beta2=0.999, eps=1e-8):
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        xp = array_module(*params.values())
        self.m = {k: xp.zeros_like(p) for k, p in params.items()}
        self.v = {k: xp.zeros_like(p) for k, p in params.items()}
        self.t = 0

    def update(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float) -> None:
        """One step, in place on params (and on grads, which are used as scratch space)."""
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        step = lr / (1.0 - b1**self.t)
        root_bc2 = math.sqrt(1.0 - b2**self.t)
        xp = array_module(*params.values())
        for k, p in params.items():
            g, m, v = grads[k], self.m[k], self.v[k]
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            g *= g
            g *= 1.0 - b2
            v += g
            xp.sqrt(v, out=g)  # g is free now: reuse it for the denominator
            g /= root_bc2
            g += self.eps
            xp.divide(m, g, out=g)
            g *= step
            p -= g

    def state_dict(self) -> dict[str, np.ndarray]:
        d = {f"m.{k}": a for k, a in self.m.items()}
        d.update({f"v.{k}": a for k, a in self.v.items()})
        d["t"] = np.array(self.t, dtype=np.int64)
        return d

    def load_state_dict(self, d: dict[str, np.ndarray]) -> None:
        """d from state_dict(), or from a checkpoint on the host: copied to the moments' device."""
        xp = array_module(*self.m.values())
        for k in self.m:
            self.m[k][...] = xp.asarray(d[f"m.{k}"])
            self.v[k][...] = xp.asarray(d[f"v.{k}"])
        self.t = int(d["t"])


def clip_grad_norm(grads: dict[str, np.ndarray], max_norm: float) -> float:
    """Scale all gradients in place so their global L2 norm is at most max_norm (0: no clipping).
    Returns the norm before clipping (inf or nan when a gradient is not finite); non-finite
    gradients are left untouched for the caller to reject, since scaling them by 0 makes nan.
    The squares are summed where the gradients are, so a GPU sends back one number per step."""
    xp = array_module(*grads.values())
    sumsq = sum(xp.dot(g.ravel(), g.ravel()).astype(np.float64) for g in grads.values())
    norm = math.sqrt(float(sumsq))
    if max_norm > 0 and math.isfinite(norm) and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in grads.values():
            g *= scale
    return norm


class LRSchedule:
    """lr = base * decay^(step // decay_every) * plateau_scale * warmdown_scale.

    Step decay is char-rnn's schedule; the plateau scale multiplies by `plateau_factor` after
    `plateau_patience` evaluations without a new best validation loss (0 disables either).
    The warmdown scale falls linearly from 1 to 0 over the last `warmdown` fraction of a run
    whose end is known (`done`: the fraction of the step, epoch or time budget already spent);
    annealing into the end of a budget gains more than any constant rate (docs/RESULTS.md).
    Its state is three numbers, saved in the checkpoint so a resumed run continues the schedule."""

    def __init__(
        self, base_lr, decay=1.0, decay_every=0, plateau_factor=0.5, plateau_patience=0, warmdown=0.0
    ):
        self.base_lr, self.decay, self.decay_every = base_lr, decay, decay_every
        self.plateau_factor, self.plateau_patience = plateau_factor, plateau_patience
        self.warmdown = warmdown
        self.scale, self.best, self.bad_evals = 1.0, math.inf, 0

    def lr(self, step: int, done: float = 0.0) -> float:
        decays = step // self.decay_every if self.decay_every else 0
        warmdown_scale = min(1.0, max(0.0, 1.0 - done) / self.warmdown) if self.warmdown else 1.0
        return self.base_lr * self.decay**decays * self.scale * warmdown_scale

    def observe(self, val_loss: float) -> bool:
        """Record a validation loss; True when it lowered the plateau scale."""
        if val_loss < self.best:
            self.best, self.bad_evals = val_loss, 0
            return False
        self.bad_evals += 1
        if self.plateau_patience and self.bad_evals >= self.plateau_patience:
            self.scale *= self.plateau_factor
            self.bad_evals = 0
            return True
        return False

    def state_dict(self) -> dict[str, float]:
        return {"scale": self.scale, "best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, d: dict[str, float]) -> None:
        self.scale, self.best, self.bad_evals = float(d["scale"]), float(d["best"]), int(d["bad_evals"])
