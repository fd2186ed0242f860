"""The character language model: an input layer, a stack of recurrent cells, a softmax output.

Parameters (`params` and `grads` are parallel dicts keyed by these names; G = gates * H with
gates 4 for lstm, 3 for gru, 1 for rnn; V vocabulary, E embedding size, H hidden size):

    embed     (V, E)   only when embedding_size > 0
    l{k}.Wx   (D, G)   D = V for layer 0 without embedding (one-hot input folded into the rows),
                       E for layer 0 with one, H above
    l{k}.Wh   (H, G)
    l{k}.b    (G,)     for gru: b_ir + b_hr, b_iz + b_hz, b_in (see cells.py)
    l{k}.peep (3H,)    lstm with peepholes: p_i, p_f, p_o
    l{k}.bhn  (H,)     gru only
    Wy        (H, V)
    by        (V,)

Forward over a window of ids x (N, T):
    xw_0 = Wx[x] + b   (or embed[x] @ Wx + b)      one gather / product over all N*T positions
    hs_k = cell(xw_k, state_k)                      the only time loop
    xw_{k+1} = dropout(hs_k) @ Wx + b
    logits = dropout(hs_top) @ Wy + by              loss = mean cross-entropy over N*T
Dropout is inverted (kept units scaled by 1 / (1 - p)) and only active when an rng is passed.
Internally everything is time-major (T, N, .); the API takes and returns batch-major arrays.
The params' array module (backend.array_module) decides where it all runs: NumPy arrays on the
CPU, CuPy arrays on a GPU (`model.to(cupy)`). Ids come in as host (NumPy) arrays and are copied
to the device once per call; per-position nats (`nll`) go back to the host, logits and states
stay where the params are.
"""

from __future__ import annotations

import numpy as np

from . import cells
from .backend import array_module, to_device, to_host, uniform
from .config import ModelConfig
from .functional import softmax_cross_entropy, token_nats

_CELL_FNS = {
    "rnn": (cells.rnn_forward, cells.rnn_backward, cells.rnn_step),
    "lstm": (cells.lstm_forward, cells.lstm_backward, cells.lstm_step),
    "gru": (cells.gru_forward, cells.gru_backward, cells.gru_step),
}

State = tuple  # per layer: (h,) or (h, c), each (N, H)


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in a fixed order (the checkpoint relies on it)."""
    V, H, E = cfg.vocab_size, cfg.hidden_size, cfg.embedding_size
    G = cells.GATES[cfg.cell] * H
    shapes: dict[str, tuple[int, ...]] = {}
    if E:
        shapes["embed"] = (V, E)
    for k in range(cfg.num_layers):
        shapes[f"l{k}.Wx"] = ((E or V) if k == 0 else H, G)
        shapes[f"l{k}.Wh"] = (H, G)
        shapes[f"l{k}.b"] = (G,)
        if cfg.peephole:
            shapes[f"l{k}.peep"] = (3 * H,)
        if cfg.cell == "gru":
            shapes[f"l{k}.bhn"] = (H,)
    shapes["Wy"] = (H, V)
    shapes["by"] = (V,)
    return shapes


def init_params(cfg: ModelConfig, rng: np.random.Generator, dtype=np.float32) -> dict[str, np.ndarray]:
    """PyTorch's recurrent initialisation for every cell and every weight and gate bias,
    U(-1/sqrt(H), 1/sqrt(H)); N(0, 1) embeddings; zero output bias so the initial loss is close
    to ln V. No gate bias is special: a forget-gate bias of 1 (Jozefowicz et al. 2015, and
    charrnn until 2026-12) trained the LSTM slower in every run measured, by 0.12-0.17
    nats/char after 1,600 steps on English and on Python and still 0.045 behind after 4,000
    (docs/RESULTS.md, "Initialisation")."""
    bound = 1.0 / np.sqrt(cfg.hidden_size)
    params = {}
    for name, shape in param_shapes(cfg).items():
        if name == "embed":
            w = rng.standard_normal(shape)
        elif name == "by":
            w = np.zeros(shape)
        else:
            w = rng.uniform(-bound, bound, shape)
        params[name] = w.astype(dtype)
    return params


# positions * rows of one block of the GPU's one-hot product (float32: 64 MiB)
ONEHOT_ELEMENTS = 1 << 24


def scatter_add_rows(ids: np.ndarray, rows: np.ndarray, num_rows: int) -> np.ndarray:
    """out[v] = sum of rows[m] where ids[m] == v. ids (M,), rows (M, D) -> (num_rows, D).

    The CPU's form (a GPU uses onehot_scatter_add_rows). Sorting, then summing each run of equal
    ids as one contiguous block, costs O(M * D) plus a Python step per distinct id, whatever
    num_rows is. A one-hot product costs O(M * D * num_rows) on a CPU; np.add.at and
    np.add.reduceat along axis 0 are over ten times slower (about 55 ms for M = 6400, D = 1024,
    against 4 ms here: docs/BENCHMARKS.md)."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_ids[1:] != sorted_ids[:-1])))
    ends = np.append(starts[1:], len(ids))
    sorted_rows = rows[order]
    out = np.zeros((num_rows, rows.shape[1]), rows.dtype)
    for v, a, b in zip(sorted_ids[starts].tolist(), starts.tolist(), ends.tolist()):
        np.add.reduce(sorted_rows[a:b], axis=0, out=out[v])
    return out


def onehot_scatter_add_rows(xp, ids, rows, num_rows: int):
    """scatter_add_rows as products one-hot(ids).T @ rows, over blocks of positions whose
    one-hot (num_rows, m) stays within ONEHOT_ELEMENTS. The GPU's form: a handful of large
    products instead of a kernel launch per distinct id, and, unlike an atomic scatter-add
    (cupyx.scatter_add), a fixed order of additions, so a seeded run repeats bit for bit."""
    out = xp.zeros((num_rows, rows.shape[1]), rows.dtype)
    block = max(1, ONEHOT_ELEMENTS // num_rows)
    for a in range(0, len(ids), block):
        part = ids[a : a + block]
        onehot = xp.zeros((num_rows, len(part)), rows.dtype)
        onehot[part, xp.arange(len(part))] = 1
        out += onehot @ rows[a : a + block]
    return out


class CharRNN:
    """A model is its config plus its params dict; methods are pure apart from reading them."""

    def __init__(self, config: ModelConfig, params: dict[str, np.ndarray]):
        self.config = config
        self.params = params
        self._forward, self._backward, self._step = _CELL_FNS[config.cell]

    @classmethod
    def create(cls, config: ModelConfig, seed: int = 0, dtype=np.float32) -> "CharRNN":
        return cls(config, init_params(config, np.random.default_rng(seed), dtype))

    @property
    def dtype(self):
        return self.params["Wy"].dtype

    @property
    def xp(self):
        """numpy or cupy: where the params live, and so where the model computes."""
        return array_module(self.params["Wy"])

    def to(self, xp) -> "CharRNN":
        """This model with its params on xp's device (itself when they are there already)."""
        return self if xp is self.xp else CharRNN(self.config, to_device(self.params, xp))

    def num_params(self) -> int:
        return sum(p.size for p in self.params.values())

    def initial_state(self, batch: int) -> tuple[State, ...]:
        """Zero state for every layer: a tuple of (h,) or (h, c), each (batch, H)."""
        n = 2 if self.config.cell == "lstm" else 1
        H = self.config.hidden_size
        return tuple(
            tuple(self.xp.zeros((batch, H), self.dtype) for _ in range(n))
            for _ in range(self.config.num_layers)
        )

    def _recurrent(self, k: int) -> dict:
        cfg, p = self.config, self.params
        if cfg.cell == "lstm":
            return {"Wh": p[f"l{k}.Wh"], "peep": p.get(f"l{k}.peep")}
        if cfg.cell == "gru":
            return {"Wh": p[f"l{k}.Wh"], "bhn": p[f"l{k}.bhn"]}
        return {"Wh": p[f"l{k}.Wh"], "relu": cfg.nonlinearity == "relu"}

    def _dropout_mask(self, shape, rng):
        p = self.config.dropout
        if rng is None or p == 0.0:
            return None
        keep = uniform(rng, shape, self.xp) >= p
        return keep.astype(self.dtype) / self.dtype.type(1.0 - p)

    def _input_projection(self, ids_t: np.ndarray) -> np.ndarray:
        """ids_t (T, N) or (N,), on the params' device -> layer 0's xw (T, N, G) or (N, G)."""
        p = self.params
        if "embed" in p:
            return p["embed"][ids_t] @ p["l0.Wx"] + p["l0.b"]
        xw = p["l0.Wx"][ids_t]
        xw += p["l0.b"]
        return xw

    def _run(self, x: np.ndarray, state, rng, keep=True):
        """Forward over ids x (N, T) -> top-layer input to the output (T*N, H), new state, caches
        (each cell's None unless keep: a forward with no backward keeps nothing)."""
        p, cfg = self.params, self.config
        if state is None:
            state = self.initial_state(x.shape[0])
        xp = self.xp
        ids_t = xp.asarray(np.ascontiguousarray(x.T))  # (T, N), copied to the device once
        T, N = ids_t.shape
        xw = self._input_projection(ids_t)  # (T, N, G)
        layers, new_state = [], []
        for k in range(cfg.num_layers):
            hs, s, cache = self._forward(xw, state[k], **self._recurrent(k), keep=keep)
            new_state.append(s)
            mask = self._dropout_mask(hs.shape, rng)
            out = hs if mask is None else hs * mask  # (T, N, H)
            layers.append((cache, mask, out))
            if k + 1 < cfg.num_layers:
                xw = (out.reshape(T * N, -1) @ p[f"l{k + 1}.Wx"]).reshape(T, N, -1)  # (T, N, G)
                xw += p[f"l{k + 1}.b"]
        top = layers[-1][2].reshape(T * N, -1)  # (T*N, H)
        return top, tuple(new_state), (ids_t, layers)

    def loss_and_grads(self, x, y, state=None, rng=None):
        """Mean cross-entropy of predicting y from x, and its gradient for every parameter.

        x, y (N, T) int ids; state from the previous window or None; rng draws dropout masks
        (None: no dropout). -> (loss, grads dict parallel to params, final state)."""
        p, cfg = self.params, self.config
        top, new_state, (ids_t, layers) = self._run(x, state, rng)
        T, N = ids_t.shape
        logits = top @ p["Wy"] + p["by"]  # (T*N, V)
        xp = self.xp
        loss, dlogits = softmax_cross_entropy(logits, xp.asarray(np.ascontiguousarray(y.T).ravel()))
        grads = {"Wy": top.T @ dlogits, "by": dlogits.sum(axis=0)}
        dx = (dlogits @ p["Wy"].T).reshape(T, N, -1)  # (T, N, H)
        for k in range(cfg.num_layers - 1, -1, -1):
            cache, mask, _ = layers[k]
            if mask is not None:
                dx *= mask
            dxw, _, rec_grads = self._backward(dx, None, cache)
            for name, g in rec_grads.items():
                grads[f"l{k}.{name}"] = g
            dxw_flat = dxw.reshape(T * N, -1)  # (T*N, G)
            grads[f"l{k}.b"] = dxw_flat.sum(axis=0)
            if k > 0:
                grads[f"l{k}.Wx"] = layers[k - 1][2].reshape(T * N, -1).T @ dxw_flat
                dx = (dxw_flat @ p[f"l{k}.Wx"].T).reshape(T, N, -1)
        ids = ids_t.ravel()
        if "embed" in p:
            grads["l0.Wx"] = p["embed"][ids].T @ dxw_flat
            grads["embed"] = self._scatter_add_rows(ids, dxw_flat @ p["l0.Wx"].T)
        else:
            grads["l0.Wx"] = self._scatter_add_rows(ids, dxw_flat)
        return loss, grads, new_state

    def _scatter_add_rows(self, ids, rows):
        """The gradient of a row gather over the vocabulary: (M,), (M, D) -> (V, D)."""
        if self.xp is np:
            return scatter_add_rows(ids, rows, self.config.vocab_size)
        return onehot_scatter_add_rows(self.xp, ids, rows, self.config.vocab_size)

    def forward(self, x, state=None):
        """Logits for every position, no dropout. x (N, T) -> logits (N, T, V), final state."""
        top, new_state, (ids_t, _) = self._run(x, state, None, keep=False)
        T, N = ids_t.shape
        logits = (top @ self.params["Wy"] + self.params["by"]).reshape(T, N, -1)  # (T, N, V)
        return logits.transpose(1, 0, 2), new_state

    def nll(self, x, y, state=None):
        """Negative log-likelihood in nats of each target. x, y (N, T) -> (N, T) float64 on the
        host (one copy per window from a device), state."""
        logits, new_state = self.forward(x, state)
        V = logits.shape[-1]
        nats = token_nats(logits.reshape(-1, V), self.xp.asarray(y.ravel()))
        return to_host(nats).reshape(y.shape), new_state

    def step(self, ids, state=None):
        """One character per stream, as in sampling. ids (N,) -> logits (N, V), state."""
        p = self.params
        if state is None:
            state = self.initial_state(len(ids))
        xw = self._input_projection(self.xp.asarray(ids))  # (N, G)
        new_state = []
        for k in range(self.config.num_layers):
            h, s = self._step(xw, state[k], **self._recurrent(k))
            new_state.append(s)
            if k + 1 < self.config.num_layers:
                Wx = p[f"l{k + 1}.Wx"]
                xw = cells.matmul_rows(h, Wx, self.xp.empty((len(h), Wx.shape[1]), h.dtype))
                xw += p[f"l{k + 1}.b"]
        return h @ p["Wy"] + p["by"], tuple(new_state)
