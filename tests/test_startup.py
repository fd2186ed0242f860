"""Start-up cost: what a command imports, read from `python -X importtime` in a fresh process.
`--help` and `--version` must answer without NumPy, and loading, sampling and scoring without
the training stack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import charrnn

TRAINING_STACK = {"charrnn.trainer", "charrnn.distributed", "charrnn.prepare", "tqdm"}


def imported(*args, cwd=None) -> set[str]:
    """The modules (and packages of them) that `python -m charrnn args` imports."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "charrnn", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=dict(os.environ, OPENBLAS_NUM_THREADS="1"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    names = {
        line.rpartition("|")[2].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "charrnn.cli" in names  # the lines were read: an empty set would pass every check below
    return names | {name.partition(".")[0] for name in names}


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["score", "--help"], ["train", "--help"]])
def test_help_and_version_import_no_numpy(args):
    names = imported(*args)
    assert "numpy" not in names, sorted(n for n in names if n.startswith("numpy"))[:5]


def test_version_is_the_packages():
    result = subprocess.run([sys.executable, "-m", "charrnn", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.split()[-1] == charrnn.__version__


@pytest.fixture(scope="module")
def checkpoint(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    charrnn.train(
        corpus,
        out,
        max_steps=1,
        hidden_size=8,
        num_layers=1,
        seq_len=8,
        batch_size=2,
        workers=1,
        verbose=False,
    )
    return out / "best.npz"


@pytest.mark.parametrize("command", ["perplexity", "score"])
def test_scoring_imports_no_training_stack(command, checkpoint, corpus):
    names = imported(command, "-c", checkpoint, corpus)
    assert {"numpy", "charrnn.scoring"} <= names
    assert names.isdisjoint(TRAINING_STACK), sorted(names & TRAINING_STACK)


def test_sampling_imports_no_training_stack(checkpoint):
    names = imported("sample", "-c", checkpoint, "-n", 5, "--seed", 0)
    assert "charrnn.sampling" in names
    assert names.isdisjoint(TRAINING_STACK), sorted(names & TRAINING_STACK)
