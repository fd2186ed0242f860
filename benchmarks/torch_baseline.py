"""The PyTorch CPU twin of a charrnn model, for benchmarks/bench.py. The only module that imports torch.

Same cell (nn.LSTM / nn.GRU / nn.RNN, whose equations charrnn implements, see cells.py), sizes,
input representation (one-hot rows fed to the cell when embedding_size is 0, else nn.Embedding),
float32, Adam with PyTorch's defaults, clip_grad_norm_ and truncated BPTT with the state carried
and detached between windows. Every function mirrors what the charrnn side of the benchmark runs.
The model's device decides where everything runs (benchmarks/gpu_check.py moves it to CUDA).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 (the PyTorch idiom)

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class TorchCharRNN(nn.Module):
    def __init__(self, cell: str, vocab_size: int, hidden_size: int, num_layers: int, embedding_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, embedding_size) if embedding_size else None
        inputs = embedding_size or vocab_size
        self.rnn = CELLS[cell](inputs, hidden_size, num_layers, batch_first=True)
        self.out = nn.Linear(hidden_size, vocab_size)

    def forward(self, x: torch.Tensor, state=None):
        """x (N, T) int64 -> logits (N, T, V), state."""
        inputs = self.embed(x) if self.embed is not None else F.one_hot(x, self.vocab_size).float()
        hs, state = self.rnn(inputs, state)
        return self.out(hs), state


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def build(cfg: dict, seed: int = 0) -> TorchCharRNN:
    torch.manual_seed(seed)
    return TorchCharRNN(
        cfg["cell"], cfg["vocab_size"], cfg["hidden_size"], cfg["num_layers"], cfg["embedding_size"]
    )


def _detach(state):
    if state is None:
        return None
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


class Trainer:
    """One training step per call, as charrnn's train loop: forward, loss, backward, clip, Adam."""

    def __init__(self, cfg: dict, lr: float = 2e-3, clip: float = 5.0, device: str = "cpu"):
        self.device = torch.device(device)
        self.model = build(cfg).to(self.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.clip, self.state = clip, None

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        x, y = torch.from_numpy(x).to(self.device), torch.from_numpy(y).to(self.device)
        logits, state = self.model(x, self.state)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        self.state = _detach(state)
        return loss.item()

    def saved_activation_bytes(self, x: np.ndarray, y: np.ndarray) -> int:
        """Bytes of the distinct tensors autograd keeps for backward over one window."""
        seen = {}

        def key(t):
            return t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()

        def pack(t):
            seen[key(t)] = key(t)[1]
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logits, _ = self.model(torch.from_numpy(x), None)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(y).reshape(-1))
        params = {key(p) for p in self.model.parameters()}
        del loss
        return sum(b for k, b in seen.items() if k not in params)


@torch.no_grad()
def sample(model: TorchCharRNN, length: int, num_samples: int, seed: int = 0) -> np.ndarray:
    """Generate length characters per stream, one step of the cell per character, temperature 1.
    -> ids (num_samples, length)."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    ids = torch.zeros(num_samples, 1, dtype=torch.int64, device=device)
    state, out = None, []
    for _ in range(length):
        logits, state = model(ids, state)
        probs = torch.softmax(logits[:, -1], dim=-1)
        ids = torch.multinomial(probs, 1, generator=gen)
        out.append(ids)
    return torch.cat(out, dim=1).cpu().numpy()


@torch.no_grad()
def score(model: TorchCharRNN, rows: np.ndarray, counted_from: np.ndarray, window: int) -> float:
    """Total nats of rows (S, L + 1) of ids predicted from their prefix with carried state, counting
    in row s only targets at positions >= counted_from[s]; windows of `window` characters."""
    device = next(model.parameters()).device
    x_all, y_all = torch.from_numpy(rows[:, :-1]).to(device), torch.from_numpy(rows[:, 1:]).to(device)
    counted = torch.from_numpy(counted_from).to(device)[:, None]
    total, state = 0.0, None
    for a in range(0, x_all.shape[1], window):
        x, y = x_all[:, a : a + window], y_all[:, a : a + window]
        logits, state = model(x, state)
        nats = -torch.log_softmax(logits.double(), dim=-1).gather(-1, y[..., None])[..., 0]
        positions = torch.arange(a, a + x.shape[1], device=device)[None, :]
        total += float(nats[positions >= counted].sum())
    return total
