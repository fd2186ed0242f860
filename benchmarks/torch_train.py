"""The PyTorch CPU baseline for docs/RESULTS.md: the model a PyTorch user would build for
`charrnn train`'s job, trained on the same windows for the same wall-clock time (or the same
number of steps), so validation losses compare at equal time and at equal steps.

Same task: cell, sizes, one-hot input, 90/10 split, batch and sequence windows with carried
(detached) state, Adam, learning rate, gradient clipping, float32, thread count, evaluation
on the whole validation text; charrnn's own data code cuts the windows, so both read
identical batches in identical order. The weights are PyTorch's as shipped: nn.LSTM / GRU /
RNN and nn.Linear with their default initialisation, nothing copied from charrnn's choices.
torch is imported only here.

    python benchmarks/torch_train.py corpora/tinyshakespeare.txt --max-time 180 -o runs/torch
    python benchmarks/torch_train.py corpora/tinyshakespeare.txt --max-steps 1600 -o runs/torch
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from charrnn.data import Batches, eval_windows, load_corpus, split_train_val
from charrnn.text import TextPolicy

CELLS = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}


class TorchCharRNN(torch.nn.Module):
    """One-hot characters -> stacked recurrent layers -> linear -> logits (N, T, V)."""

    def __init__(self, cell: str, vocab_size: int, hidden_size: int, num_layers: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.rnn = CELLS[cell](vocab_size, hidden_size, num_layers, batch_first=True)
        self.out = torch.nn.Linear(hidden_size, vocab_size)

    def forward(self, x: torch.Tensor, state=None):
        onehot = torch.nn.functional.one_hot(x, self.vocab_size).float()  # (N, T, V)
        h, state = self.rnn(onehot, state)
        return self.out(h), state


def append_record(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def detach(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


@torch.no_grad()
def evaluate(model: TorchCharRNN, ids: np.ndarray, seq_len: int, streams: int) -> float:
    """Mean validation nats/char over every target, with its own zero state (as charrnn's)."""
    total, count, state = 0.0, 0, None
    for x, y in eval_windows(ids, seq_len, streams):
        if state is not None and detach(state)[0].shape[-2] != x.shape[0]:
            state = None
        logits, state = model(torch.from_numpy(x), state)
        y = torch.from_numpy(y)
        total += float(
            torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"
            )
        )
        count += y.numel()
    return total / count


def train(args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    corpus = load_corpus([args.corpus], TextPolicy())
    train_ids, val_ids = split_train_val(corpus.ids, args.val_frac)
    batches = Batches(train_ids, args.batch_size, args.seq_len)
    model = TorchCharRNN(args.model, len(corpus.vocab), args.hidden_size, args.layers)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    args.output.mkdir(parents=True, exist_ok=True)
    metrics = args.output / "metrics.jsonl"
    metrics.write_text("")
    started, step, state, best, val = time.monotonic(), 0, None, math.inf, None
    while time.monotonic() - started < args.max_time and not (args.max_steps and step >= args.max_steps):
        x, y = (torch.from_numpy(a) for a in batches.window(step))
        logits, state = model(x, state)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        step += 1
        state = None if step % batches.windows_per_epoch == 0 else detach(state)
        if step % args.eval_every == 0:
            elapsed = time.monotonic() - started
            val = evaluate(model, val_ids, args.seq_len, args.batch_size)
            best = min(best, val)
            append_record(
                metrics, {"step": step, "train_loss": loss.item(), "val_loss": val, "elapsed": elapsed}
            )
            print(f"step {step}  train {loss.item():.4f}  val {val:.4f}  {elapsed:.0f} s", flush=True)
    elapsed = time.monotonic() - started
    if val is None or step % args.eval_every:  # the last step's evaluation may already be done
        val = evaluate(model, val_ids, args.seq_len, args.batch_size)
    append_record(metrics, {"step": step, "val_loss": val, "elapsed": elapsed})
    print(
        f"torch {args.model} {args.layers}x{args.hidden_size}: {step} steps in {elapsed:.0f} s, "
        f"final val {val:.4f}, best {min(best, val):.4f} nats/char"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--model", choices=CELLS, default="lstm")
    ap.add_argument("--hidden-size", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=50)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--grad-clip", type=float, default=5.0)
    ap.add_argument("--val-frac", type=float, default=0.1)
    ap.add_argument("--max-time", type=float, default=180.0, help="seconds")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: no limit)")
    ap.add_argument("--eval-every", type=int, default=400, help="as charrnn train")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    train(ap.parse_args())


if __name__ == "__main__":
    main()
