"""Coverage-guided fuzzing of the checkpoint loader with atheris (optional: `pip install atheris`).

    python tests/fuzz_checkpoint.py -runs=200000 -max_total_time=300

Each input is either a whole file (the seeds are real checkpoints, which libFuzzer mutates) or,
when its first byte is odd, a list of (offset, xor) corruptions of one seed. The loader must
raise CheckpointError or, for a corrupted seed, return bit-identical arrays; any other
exception, a hang (-timeout) or a large allocation (-rss_limit_mb, -malloc_limit_mb) is a crash.
`make stress` runs it through tests/test_reliability.py::test_fuzz_checkpoint_loader."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["charrnn", "zipfile", "json"]):
    import numpy as np

    from charrnn.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from charrnn.config import ModelConfig, TrainConfig
    from charrnn.errors import CheckpointError
    from charrnn.model import CharRNN
    from charrnn.optim import Adam
    from charrnn.text import TextPolicy
    from charrnn.vocab import Vocab


def seed_checkpoints() -> list[Checkpoint]:
    """Small checkpoints with every kind of member: lstm with Adam and carried state, a bare gru
    with an embedding and astral characters."""
    seeds = []
    for cell, vocab, embedding, resumable in (
        ("lstm", "ab\n", 0, True),
        ("gru", "x\U0001f600\u4e2d", 2, False),
    ):
        cfg = ModelConfig(len(vocab), cell, hidden_size=2, num_layers=1, embedding_size=embedding)
        model = CharRNN.create(cfg, seed=1)
        optimizer = Adam(model.params).state_dict() if resumable else None
        hidden = ((np.ones((1, 2), np.float32),) * (2 if cell == "lstm" else 1),) if resumable else None
        progress = {"step": 3, "schedule": {"scale": 1.0, "best": 2.0, "bad_evals": 0}} if resumable else {}
        train = TrainConfig(batch_size=1) if resumable else None
        seeds.append(
            Checkpoint(
                cfg, model.params, Vocab.from_text(vocab), TextPolicy(), train, optimizer, hidden, progress
            )
        )
    return seeds


# the caller's scratch directory: libFuzzer ends the process with exit(), so no cleanup here runs
WORK = Path(os.environ.get("CHARRNN_FUZZ_DIR") or tempfile.mkdtemp(prefix="charrnn-fuzz-"))
SEEDS = []
for k, ckpt in enumerate(seed_checkpoints()):
    save_checkpoint(WORK / f"seed{k}.npz", ckpt)
    SEEDS.append(((WORK / f"seed{k}.npz").read_bytes(), load_checkpoint(WORK / f"seed{k}.npz")))
TARGET = WORK / "input.npz"


def arrays(ckpt: Checkpoint) -> list[bytes]:
    out = [ckpt.vocab.codepoints.tobytes()] + [a.tobytes() for a in ckpt.params.values()]
    out += [np.asarray(a).tobytes() for a in (ckpt.optimizer or {}).values()]
    return out + [a.tobytes() for layer in ckpt.hidden or () for a in layer]


def test_one_input(data: bytes) -> None:
    original = None
    if data[:1] and data[0] & 1:
        fdp = atheris.FuzzedDataProvider(data[1:])
        blob, original = SEEDS[fdp.ConsumeIntInRange(0, len(SEEDS) - 1)]
        buf = bytearray(blob)
        for _ in range(fdp.ConsumeIntInRange(1, 4)):
            buf[fdp.ConsumeIntInRange(0, len(buf) - 1)] ^= fdp.ConsumeIntInRange(1, 255)
        data = bytes(buf)
    TARGET.write_bytes(data)
    try:
        loaded = load_checkpoint(TARGET)
    except CheckpointError:
        return
    if original is not None and arrays(loaded) != arrays(original):
        raise AssertionError("a corrupted checkpoint loaded with different arrays")


def main() -> None:
    corpus = WORK / "corpus"
    corpus.mkdir(exist_ok=True)
    for k, (blob, _) in enumerate(SEEDS):
        (corpus / f"seed{k}").write_bytes(blob)
    args = [sys.argv[0], *sys.argv[1:], str(corpus)]
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
