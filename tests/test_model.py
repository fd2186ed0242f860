"""CharRNN: whole-model float64 gradient checks, the wiring of embedding, layers and output
against the kernels, chunked and step-by-step evaluation against one forward, and the loss at
initialisation and after overfitting a repeated string."""

from __future__ import annotations

import math

import numpy as np
import pytest

from charrnn import cells
from charrnn.config import ModelConfig
from charrnn.model import CharRNN, param_shapes
from charrnn.optim import Adam, clip_grad_norm

V, H, E = 7, 5, 4

# name -> (ModelConfig kwargs, whether the window starts from a random non-zero state)
GRAD_CASES = {
    "lstm-1": ({"cell": "lstm", "num_layers": 1}, False),
    "lstm-2-embed": ({"cell": "lstm", "num_layers": 2, "embedding_size": E}, True),
    "lstm-2-peep": ({"cell": "lstm", "num_layers": 2, "peephole": True}, True),
    "lstm-3-peep-embed-dropout": (
        {"cell": "lstm", "num_layers": 3, "peephole": True, "embedding_size": E, "dropout": 0.3},
        True,
    ),
    "gru-1": ({"cell": "gru", "num_layers": 1}, True),
    "gru-3-embed": ({"cell": "gru", "num_layers": 3, "embedding_size": E}, False),
    "gru-2-dropout": ({"cell": "gru", "num_layers": 2, "dropout": 0.4}, True),
    "rnn-2-tanh": ({"cell": "rnn", "num_layers": 2}, True),
    "rnn-1-relu-embed": ({"cell": "rnn", "num_layers": 1, "nonlinearity": "relu", "embedding_size": E}, True),
    "rnn-2-relu-dropout": ({"cell": "rnn", "num_layers": 2, "nonlinearity": "relu", "dropout": 0.25}, False),
}
CELL_CASES = {  # one richest configuration per cell, for the cheaper equivalence tests
    "lstm": {"cell": "lstm", "num_layers": 2, "embedding_size": E, "peephole": True},
    "gru": {"cell": "gru", "num_layers": 2},
    "rnn": {"cell": "rnn", "num_layers": 2, "embedding_size": E},
}


def make_model(seed=0, dtype=np.float64, hidden_size=H, **cfg) -> CharRNN:
    """A model whose every parameter, biases and output bias included, is random and non-zero:
    the default init zeroes `by` and keeps biases small, which would hide bias bugs."""
    model = CharRNN.create(ModelConfig(vocab_size=V, hidden_size=hidden_size, **cfg), seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 100)
    for p in model.params.values():
        p += rng.normal(0, 0.4, p.shape).astype(dtype)
    return model


def random_state(model: CharRNN, n: int, seed: int):
    rng = np.random.default_rng(seed)
    return tuple(
        tuple(rng.normal(0, 0.5, s.shape).astype(model.dtype) for s in layer)
        for layer in model.initial_state(n)
    )


def random_ids(shape, seed):
    return np.random.default_rng(seed).integers(0, V, shape)


def assert_states_close(a, b, atol):
    assert len(a) == len(b)
    for la, lb in zip(a, b):
        assert len(la) == len(lb)
        for x, y in zip(la, lb):
            np.testing.assert_allclose(x, y, rtol=0, atol=atol)


@pytest.mark.parametrize("name", GRAD_CASES)
def test_loss_and_grads_matches_numeric_gradient(name, gradcheck):
    cfg, nonzero_state = GRAD_CASES[name]
    model = make_model(**cfg)
    # N != T, so a transposition mistake changes shapes or values
    x, y = random_ids((3, 4), 1), random_ids((3, 4), 2)
    state = random_state(model, 3, 3) if nonzero_state else None
    # a fresh generator with one seed per call draws the same dropout masks every time
    dropout_rng = (lambda: np.random.default_rng(7)) if model.config.dropout else (lambda: None)

    _, grads, _ = model.loss_and_grads(x, y, state, dropout_rng())
    assert set(grads) == set(model.params) == set(param_shapes(model.config))
    for k, g in grads.items():
        assert g.shape == model.params[k].shape and g.dtype == np.float64, k

    def f():
        return model.loss_and_grads(x, y, state, dropout_rng())[0]

    # the mean over N*T positions makes some gradients ~1e-3, so roundoff in the differences
    # reaches ~1e-7 relative here; a real error is orders of magnitude larger
    gradcheck(f, model.params, grads, tol=1e-5)


def test_dropout_is_active_only_with_an_rng():
    model = make_model(cell="lstm", num_layers=2, dropout=0.5)
    plain = CharRNN(ModelConfig(**{**model.config.to_dict(), "dropout": 0.0}), model.params)
    x, y = random_ids((3, 6), 1), random_ids((3, 6), 2)
    assert model.loss_and_grads(x, y)[0] == plain.loss_and_grads(x, y)[0]
    assert model.loss_and_grads(x, y, rng=np.random.default_rng(0))[0] != plain.loss_and_grads(x, y)[0]


def test_dropout_is_inverted():
    # With one position, dWy = outer(top, dlogits) and dby = dlogits, so the top layer's
    # (dropped-out) output is readable from the gradients whatever order masks are drawn in.
    p, hidden = 0.3, 400
    model = make_model(cell="gru", num_layers=1, dropout=p, hidden_size=hidden)
    x, y = random_ids((1, 1), 1), random_ids((1, 1), 2)
    _, g_drop, _ = model.loss_and_grads(x, y, rng=np.random.default_rng(0))
    _, g_plain, _ = model.loss_and_grads(x, y)
    ratio = (g_drop["Wy"][:, 0] / g_drop["by"][0]) / (g_plain["Wy"][:, 0] / g_plain["by"][0])
    dropped = np.isclose(ratio, 0.0, atol=1e-9)
    assert np.allclose(ratio[~dropped], 1 / (1 - p), rtol=1e-9)
    assert 0.2 < dropped.mean() < 0.4


def reference_forward(model: CharRNN, x, state):
    """The model equations of model.py, written out with explicit one-hot input and the
    kernels (tested against a naive reference in test_cells.py), batch-major in and out."""
    p, cfg = model.params, model.config
    forward = {"rnn": cells.rnn_forward, "lstm": cells.lstm_forward, "gru": cells.gru_forward}[cfg.cell]
    onehot = np.eye(cfg.vocab_size)[x.T]  # (T, N, V)
    inp = onehot @ p["embed"] if cfg.embedding_size else onehot
    states = []
    for k in range(cfg.num_layers):
        xw = inp @ p[f"l{k}.Wx"] + p[f"l{k}.b"]
        extra = {
            "lstm": {"peep": p.get(f"l{k}.peep")},
            "gru": {"bhn": p.get(f"l{k}.bhn")},
            "rnn": {"relu": cfg.nonlinearity == "relu"},
        }[cfg.cell]
        inp, s, _ = forward(xw, state[k], p[f"l{k}.Wh"], **extra)
        states.append(s)
    logits = inp @ p["Wy"] + p["by"]  # (T, N, V)
    return logits.transpose(1, 0, 2), tuple(states)


@pytest.mark.parametrize("name", [*CELL_CASES, "lstm-1-onehot"])
def test_forward_matches_reference_equations(name):
    cfg = CELL_CASES.get(name, {"cell": "lstm", "num_layers": 1})
    model = make_model(**cfg)
    x = random_ids((2, 7), 4)
    state = random_state(model, 2, 5)
    logits, new_state = model.forward(x, state)
    ref_logits, ref_state = reference_forward(model, x, state)
    assert logits.shape == (2, 7, V)
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=1e-12)
    assert_states_close(new_state, ref_state, 1e-12)


@pytest.mark.parametrize("name", CELL_CASES)
def test_chunked_forward_equals_whole(name):
    model = make_model(**CELL_CASES[name])
    x, y = random_ids((2, 9), 6), random_ids((2, 9), 7)
    state0 = random_state(model, 2, 8)
    whole, whole_state = model.forward(x, state0)
    _, _, whole_lg_state = model.loss_and_grads(x, y, state0)
    parts, state, lg_state = [], state0, state0
    for a, b in [(0, 4), (4, 5), (5, 9)]:  # includes a one-step chunk
        logits, state = model.forward(x[:, a:b], state)
        parts.append(logits)
        _, _, lg_state = model.loss_and_grads(x[:, a:b], y[:, a:b], lg_state)
    np.testing.assert_allclose(np.concatenate(parts, axis=1), whole, rtol=0, atol=1e-12)
    assert_states_close(state, whole_state, 1e-12)
    assert_states_close(lg_state, whole_state, 1e-12)
    assert_states_close(whole_lg_state, whole_state, 1e-12)


@pytest.mark.parametrize("name", CELL_CASES)
def test_step_loop_equals_forward(name):
    model = make_model(dtype=np.float32, hidden_size=16, **CELL_CASES[name])
    x = random_ids((3, 10), 9)
    logits, final = model.forward(x)
    state = None
    for t in range(x.shape[1]):
        step_logits, state = model.step(x[:, t], state)
        assert step_logits.dtype == np.float32
        np.testing.assert_allclose(step_logits, logits[:, t], rtol=0, atol=1e-5)
    assert_states_close(state, final, 1e-5)


@pytest.mark.parametrize("name", CELL_CASES)
def test_nll_is_the_per_token_loss(name):
    model = make_model(**CELL_CASES[name])
    x, y = random_ids((3, 5), 10), random_ids((3, 5), 11)
    state = random_state(model, 3, 12)
    nats, nll_state = model.nll(x, y, state)
    loss, _, lg_state = model.loss_and_grads(x, y, state)
    assert nats.shape == (3, 5) and nats.dtype == np.float64
    assert nats.mean() == pytest.approx(loss, rel=1e-12)
    logp = model.forward(x, state)[0] - np.log(np.exp(model.forward(x, state)[0]).sum(-1, keepdims=True))
    np.testing.assert_allclose(nats, -np.take_along_axis(logp, y[..., None], -1)[..., 0], rtol=1e-12)
    assert_states_close(nll_state, lg_state, 0)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_every_gate_bias_starts_like_every_other_weight(cell):
    """The measured choice (docs/RESULTS.md, "Initialisation"): no gate gets a special bias; the
    LSTM's forget gate in particular is not set to 1, which trained slower."""
    cfg = ModelConfig(vocab_size=65, cell=cell, hidden_size=256, peephole=cell == "lstm")
    params = CharRNN.create(cfg, seed=3).params
    bound = 1 / math.sqrt(256)
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    for name, p in params.items():
        if name == "by":
            assert not p.any()
            continue
        assert np.abs(p).max() <= bound, name
        if name.endswith(".b"):
            for gate in p.reshape(gates, 256):  # every gate's bias spans the range, centred on 0
                assert abs(gate.mean()) < 0.2 * bound and np.ptp(gate) > 1.8 * bound


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_initial_loss_is_log_vocab(cell):
    # init_params promises a near-uniform initial prediction (zero output bias, small weights)
    model = CharRNN.create(ModelConfig(vocab_size=65, cell=cell))
    assert model.dtype == np.float32
    x, y = np.random.default_rng(0).integers(0, 65, (2, 8, 32))
    loss, _, _ = model.loss_and_grads(x, y)
    assert abs(loss - math.log(65)) < 0.02


def test_tiny_lstm_overfits_a_repeated_string():
    text = "hello world, hello charrnn! " * 40
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text])
    model = CharRNN.create(ModelConfig(vocab_size=len(chars), cell="lstm", hidden_size=32, num_layers=1))
    adam = Adam(model.params)
    # four streams, windows of 16 with the state carried across, as the trainer does
    n, T = 4, 16
    streams = ids[: len(ids) // n * n].reshape(n, -1)
    windows = (streams.shape[1] - 1) // T
    state, losses = None, []
    for step in range(300):
        w = step % windows
        if w == 0:
            state = None
        x, y = streams[:, w * T : (w + 1) * T], streams[:, w * T + 1 : (w + 1) * T + 1]
        loss, grads, state = model.loss_and_grads(x, y, state)
        clip_grad_norm(grads, 5.0)
        adam.update(model.params, grads, 1e-2)
        losses.append(loss)
    assert losses[0] > 2.0
    assert np.mean(losses[-20:]) < 0.1
