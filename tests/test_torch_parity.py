"""CharRNN against PyTorch: logits, loss, final state and every parameter gradient.

The torch model is nn.LSTM / nn.GRU / nn.RNN (batch_first, input_size = V, fed one-hot rows)
followed by nn.Linear(H, V); its weights are copied into our layout:

    ours l{k}.Wx (D, G) = weight_ih_l{k}.T      torch weight_ih is (G, D), weight_hh (G, H)
    ours l{k}.Wh (H, G) = weight_hh_l{k}.T      (layer 0's D = V: the one-hot input folded in)
    LSTM gate blocks: torch i, f, g, o; ours i, f, o, g  -> ours[i, f, o, g] = torch[0, 1, 3, 2]
        ours b = (b_ih + b_hh) permuted the same way
    GRU gate blocks: r, z, n in both
        ours b = b_ih + b_hh for r and z, b_ih alone for n; ours bhn = b_hh's n block
        (torch: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), the cuDNN form we implement)
    RNN (tanh): ours b = b_ih + b_hh
    ours Wy (H, V) = linear.weight.T, by = linear.bias
Gradients map back through the same transposes and permutation; the summed biases share one
gradient, so ours b is compared with torch's b_ih.grad (equal to b_hh.grad where both apply).
"""

from __future__ import annotations

import numpy as np
import pytest

from charrnn.config import ModelConfig
from charrnn.model import CharRNN

torch = pytest.importorskip("torch")

V, H, N, T = 6, 5, 3, 7
TORCH_CLS = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}
# our block b comes from torch block ORDER[b]
ORDER = {"lstm": [0, 1, 3, 2], "gru": [0, 1, 2], "rnn": [0]}
TOL = {torch.float64: 1e-12, torch.float32: 1e-6}


def blocks(a, cell, axis):
    """Reorder the gate blocks of a along axis from torch's order to ours."""
    parts = np.split(a, len(ORDER[cell]), axis=axis)
    return np.concatenate([parts[j] for j in ORDER[cell]], axis=axis)


def to_ours(cell, num_layers, named: dict) -> dict:
    """Map torch tensors (weights or their gradients, by torch name) to our parameter dict."""
    out = {}
    for k in range(num_layers):
        w_ih, w_hh = named[f"weight_ih_l{k}"], named[f"weight_hh_l{k}"]
        b_ih, b_hh = named[f"bias_ih_l{k}"], named[f"bias_hh_l{k}"]
        out[f"l{k}.Wx"] = blocks(w_ih, cell, 0).T
        out[f"l{k}.Wh"] = blocks(w_hh, cell, 0).T
        if cell == "gru":
            out[f"l{k}.b"] = b_ih + np.concatenate([b_hh[: 2 * H], np.zeros(H, b_hh.dtype)])
            out[f"l{k}.bhn"] = b_hh[2 * H :]
        else:
            out[f"l{k}.b"] = blocks(b_ih + b_hh, cell, 0)
    out["Wy"], out["by"] = named["out.weight"].T, named["out.bias"]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def torch_grads_to_ours(cell, num_layers, named_grads: dict) -> dict:
    """Gradients: both biases of a sum receive the same gradient, so use b_ih's for ours b
    (and b_hh's n block for bhn) instead of summing the pair as to_ours does for values."""
    g = dict(named_grads)
    for k in range(num_layers):
        zero = np.zeros_like(g[f"bias_hh_l{k}"])
        if cell == "gru":
            zero[2 * H :] = g[f"bias_hh_l{k}"][2 * H :]  # keeps bhn; b gets b_ih's gradient
            np.testing.assert_allclose(
                g[f"bias_hh_l{k}"][: 2 * H], g[f"bias_ih_l{k}"][: 2 * H], rtol=1e-5, atol=1e-7
            )
        else:
            np.testing.assert_allclose(g[f"bias_hh_l{k}"], g[f"bias_ih_l{k}"], rtol=1e-5, atol=1e-7)
        g[f"bias_hh_l{k}"] = zero
    return to_ours(cell, num_layers, g)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_matches_torch(cell, num_layers, dtype):
    torch.manual_seed(0)
    rnn = TORCH_CLS[cell](V, H, num_layers=num_layers, batch_first=True).to(dtype)
    out = torch.nn.Linear(H, V).to(dtype)
    named = {k: v.detach().numpy() for k, v in rnn.named_parameters()}
    named.update({f"out.{k}": v.detach().numpy() for k, v in out.named_parameters()})

    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    cfg = ModelConfig(vocab_size=V, cell=cell, hidden_size=H, num_layers=num_layers)
    params = to_ours(cell, num_layers, named)
    model = CharRNN(cfg, params)
    assert {k: v.shape for k, v in params.items()} == {
        k: v.shape for k, v in CharRNN.create(cfg).params.items()
    }, "the mapping must produce exactly our parameter set"

    rng = np.random.default_rng(1)
    x, y = rng.integers(0, V, (N, T)), rng.integers(0, V, (N, T))  # batch-major, N != T
    # a non-zero initial state for the 2-layer cases; torch stacks layers first: (L, N, H)
    n_state = 2 if cell == "lstm" else 1
    if num_layers == 2:
        init = rng.normal(0, 0.5, (n_state, num_layers, N, H)).astype(np_dtype)
        state = tuple(tuple(init[j, k] for j in range(n_state)) for k in range(num_layers))
        t_state = tuple(torch.tensor(s) for s in init)
        t_state = t_state if cell == "lstm" else t_state[0]
    else:
        state, t_state = None, None

    onehot = torch.nn.functional.one_hot(torch.tensor(x), V).to(dtype)  # (N, T, V)
    t_hs, t_final = rnn(onehot, t_state)
    t_logits = out(t_hs)  # (N, T, V)
    t_loss = torch.nn.functional.cross_entropy(t_logits.reshape(-1, V), torch.tensor(y).reshape(-1))
    t_loss.backward()
    t_grads = {k: v.grad.numpy() for k, v in rnn.named_parameters()}
    t_grads.update({f"out.{k}": v.grad.numpy() for k, v in out.named_parameters()})
    t_grads = torch_grads_to_ours(cell, num_layers, t_grads)
    t_final = tuple(s.detach().numpy() for s in (t_final if cell == "lstm" else (t_final,)))

    logits, _ = model.forward(x, state)
    loss, grads, final = model.loss_and_grads(x, y, state)
    assert set(grads) == set(t_grads)

    diffs = {
        "logits": np.abs(logits - t_logits.detach().numpy()).max(),
        "loss": abs(loss - t_loss.item()),
        "state": max(
            np.abs(final[k][j] - t_final[j][k]).max() for k in range(num_layers) for j in range(n_state)
        ),
        **{f"d{k}": np.abs(grads[k] - t_grads[k]).max() for k in grads},
    }
    worst = max(diffs, key=diffs.get)
    print(f"\n[{cell} x{num_layers} {np_dtype.__name__}] max abs discrepancy {diffs[worst]:.2e} ({worst})")
    for k, d in diffs.items():
        assert d < TOL[dtype], f"{k}: {d:.2e}"
    for k in grads:  # a wrong gradient would not hide behind tiny magnitudes
        assert np.abs(t_grads[k]).max() > 1e-4, k
