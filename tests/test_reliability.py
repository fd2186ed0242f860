"""Reliability as a user meets it: every fault and bad input goes through the commands as they
are typed, and must end in exit status 0, 1 (one `Error:` line) or 2 (click's usage message),
never a traceback, and never lose a checkpoint. docs/RELIABILITY.md tabulates the cases.

The loader's refusals, the atomic save and the signal and kill storms have their own files
(test_checkpoint.py, test_signals.py); this one covers what reaches the command line: text
inputs, option values and paths, resume refusals, a closed pipe, a full disk, an unwritable
run directory, best/last across resume, exact resume at random stop points, non-finite model
outputs, and random command lines. `make stress` runs the long disk-full run and the fuzzers."""

from __future__ import annotations

import codecs
import contextlib
import json
import math
import os
import random
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn import rundir
from charrnn import validation as validation_module
from charrnn.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from charrnn.cli import main
from charrnn.config import ModelConfig
from charrnn.errors import CharRNNError, CheckpointError
from charrnn.model import CharRNN
from charrnn.prepare import prepare_run
from charrnn.text import TextPolicy, read_text
from charrnn.vocab import Vocab

TINY = ["--hidden-size", "8", "--layers", "1", "--seq-len", "8", "--batch-size", "2", "-q"]
WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "ran", "far", "away"]


def make_text(n_lines: int = 200, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(" ".join(rng.choice(WORDS) for _ in range(6)) + ".\n" for _ in range(n_lines))


def run(*args, input=None):
    """The command in-process; an uncaught exception stays in result.exception."""
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def assert_clean(result, code: int) -> None:
    """Exit status `code`, no traceback; status 1 ends with exactly one `Error:` line."""
    assert result.exit_code == code, (result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    if code == 1:
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr


def cli(*args, env=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "charrnn", *map(str, args)],
        capture_output=True,
        text=True,
        env=dict(os.environ, OPENBLAS_NUM_THREADS="1", **(env or {})),
        **kwargs,
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "words.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run_dir(corpus, tmp_path_factory) -> Path:
    """A finished 6-step run (last.npz, best.npz, metrics.jsonl)."""
    out = tmp_path_factory.mktemp("run") / "words"
    result = run("train", corpus, "-o", out, *TINY, "--max-steps", 6, "--eval-every", 3, "--save-every", 3)
    assert_clean(result, 0)
    return out


# ---------------------------------------------------------------------- text inputs (plan case 13)

LATIN1 = b"line one\nline two\ncaf\xe9 au lait\n"
TEXT_INPUTS = {
    # name: (file bytes, extra options, exit status, what stderr says / what the vocabulary holds)
    "latin-1 byte in utf-8": (LATIN1 * 40, [], 1, "byte 0xE9 at byte offset 21 (line 3)"),
    "latin-1 with --encoding": (LATIN1 * 40, ["--encoding", "latin-1"], 0, set(LATIN1.decode("latin-1"))),
    "utf-16 bom": (codecs.BOM_UTF16_LE + make_text(20).encode("utf-16-le"), [], 1, "looks like UTF-16"),
    "utf-32 bom": (codecs.BOM_UTF32_BE + make_text(20).encode("utf-32-be"), [], 1, "looks like UTF-32"),
    "utf-16 with --encoding": (
        codecs.BOM_UTF16_LE + make_text(20).encode("utf-16-le"),
        ["--encoding", "utf-16"],
        0,
        set(make_text(20)),
    ),
    "utf-8 bom": (codecs.BOM_UTF8 + make_text(20).encode(), [], 0, set(make_text(20))),
    "crlf": (make_text(20).replace("\n", "\r\n").encode(), [], 0, set(make_text(20))),
    "lone cr (old mac)": (make_text(20).replace("\n", "\r").encode(), [], 0, set(make_text(20))),
    "lone cr kept": (
        make_text(20).replace("\n", "\r").encode(),
        ["--newline", "keep"],
        0,
        set(make_text(20)) - {"\n"} | {"\r"},
    ),
    "nul / binary": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(300), [], 1, "looks like a binary file"),
    "empty": (b"", [], 1, "it is empty"),
    "bom only": (codecs.BOM_UTF8, [], 1, "it is empty"),
    # whitespace is text: a model of it trains, and predicts spaces and newlines
    "whitespace only": (b" \t \n  \n" * 60, [], 0, {" ", "\t", "\n"}),
    "one distinct character": (b"a" * 400, [], 0, {"a"}),
    "shorter than one window": (
        b"the cat sat.\n" * 8,
        ["--seq-len", "100"],
        1,
        "the training text is too short",
    ),
}


@pytest.mark.parametrize("case", list(TEXT_INPUTS))
def test_text_inputs_through_train(tmp_path, case):
    data, options, code, expected = TEXT_INPUTS[case]
    path = tmp_path / "input.txt"
    path.write_bytes(data)
    out = tmp_path / "run"
    result = run("train", path, "-o", out, *TINY, "--max-steps", 3, "--eval-every", 3, *options)
    assert_clean(result, code)
    if code == 1:
        assert expected in result.stderr, result.stderr
        assert str(path) in result.stderr or "too short" in expected
        assert not (out / "last.npz").exists()
        return
    ckpt = load_checkpoint(out / "last.npz")
    assert set(ckpt.vocab.chars) == expected and ckpt.progress["step"] == 3
    assert all(np.isfinite(p).all() for p in ckpt.params.values())


def test_one_character_model_samples_and_scores_finitely(tmp_path):
    """A vocabulary of one: every prediction is certain (loss 0, perplexity 1), nothing is NaN."""
    path = tmp_path / "a.txt"
    path.write_bytes(b"a" * 400)
    assert_clean(run("train", path, "-o", tmp_path / "run", *TINY, "--max-steps", 3), 0)
    sampled = run("sample", "-c", tmp_path / "run", "-n", 20, "--seed", 1, "--top-p", 0.5, "--top-k", 3)
    assert_clean(sampled, 0)
    assert sampled.stdout == "a" * 21 + "\n"  # no newline to start from: a first character, then 20
    scored = run("score", "-c", tmp_path / "run", path, "--json")
    assert_clean(scored, 0)
    d = json.loads(scored.stdout)
    assert (d["nats_per_char"], d["perplexity"]) == (0.0, 1.0)


# ---------------------------------------------------------------------- scoring never prints nan/inf (14)


def write_model(path: Path, cell: str, scale: float) -> None:
    """A checkpoint whose weights are finite but `scale` large: its outputs overflow."""
    vocab = Vocab.from_text("ab\n")
    extra = {"nonlinearity": "relu"} if cell == "rnn" else {}
    cfg = ModelConfig(vocab_size=3, cell=cell, hidden_size=4, num_layers=1, **extra)
    model = CharRNN.create(cfg, seed=0)
    for p in model.params.values():
        p[...] = np.sign(p) * scale if cell == "rnn" else p
    model.params["Wy"][...] = np.array([[1, -1, 1], [-1, 1, -1], [1, 1, -1], [-1, -1, 1]]) * scale
    save_checkpoint(path, Checkpoint(cfg, model.params, vocab, TextPolicy()))


@pytest.mark.parametrize(
    "cell, scale, expected",
    [
        ("lstm", 1e30, "nats/char, a perplexity beyond the largest float"),  # exp() overflowed: a traceback
        ("rnn", 3e38, "the model's outputs overflow"),  # the logits overflow: NaN was printed
    ],
)
def test_perplexity_never_prints_nan_or_inf(tmp_path, cell, scale, expected):
    write_model(tmp_path / "m.npz", cell, scale)
    text = tmp_path / "t.txt"
    text.write_text("abab\nbaba\n" * 30, encoding="utf-8")
    for args in (
        ["score"],
        ["score", "--json"],
        ["score", "--per-line"],
        ["perplexity"],
        ["perplexity", "--exact"],
    ):
        result = run(*args, "-c", tmp_path / "m.npz", text)
        assert_clean(result, 1)
        assert expected in result.stderr, (args, result.stderr)
        assert not any(word in result.stdout.lower() for word in ("nan", "inf"))
    shown = run("score", "--surprisal", "-c", tmp_path / "m.npz", text)
    assert_clean(shown, 0)


def test_sampling_from_overflowing_outputs_is_refused(tmp_path):
    write_model(tmp_path / "m.npz", "rnn", 3e38)
    result = run("sample", "-c", tmp_path / "m.npz", "-n", 5, "--seed", 1)
    assert_clean(result, 1)
    assert "outputs overflow" in result.stderr


@pytest.mark.parametrize(
    "content, options, expected",
    [
        ("", [], "it is empty"),
        ("a", [], "nothing to score"),
        ("\u732b\u732b\u732b", ["--unknown", "skip"], "none of the 3 characters"),
        ("the \u732b cat", [], "U+732B"),
    ],
    ids=["empty", "one character", "only unknown, skipped", "unknown"],
)
def test_nothing_or_unknown_to_score(run_dir, tmp_path, content, options, expected):
    f = tmp_path / "s.txt"
    f.write_text(content, encoding="utf-8")
    for command in ("score", "perplexity"):
        result = run(command, "-c", run_dir, f, *options)
        assert_clean(result, 1)
        assert expected in result.stderr and "nan" not in result.stdout and "inf" not in result.stdout


# ---------------------------------------------------------------------- option values and paths (15)


@pytest.fixture(scope="module")
def paths(tmp_path_factory, run_dir, corpus) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("paths")
    (root / "dir").mkdir()
    return {"ckpt": run_dir / "last.npz", "run": run_dir, "corpus": corpus, "dir": root / "dir"}


BAD_VALUES = [
    # train: numbers
    *[
        ["train", "{corpus}", opt, value]
        for opt, values in {
            "--lr": ["nan", "inf", "-1", "0", "2", "1e400"],
            "--dropout": ["nan", "-0.1", "1", "inf"],
            "--val-frac": ["nan", "0.6", "-1"],
            "--grad-clip": ["nan", "-1", "inf"],
            "--epochs": ["nan", "inf", "-1", "1e7"],
            "--lr-decay": ["0", "nan", "1.5"],
            "--plateau-factor": ["0", "1", "nan"],
            "--hidden-size": ["0", "-4", "99999999999", "1.5", "x"],
            "--layers": ["0", "17"],
            "--seq-len": ["0", "100001", "-1"],
            "--batch-size": ["0", "65537"],
            "--embedding-size": ["-1", "8193"],
            "--seed": ["-1", str(2**63), "nan"],
            "--max-steps": ["-1", "inf"],
            "--max-time": ["-1", "nan", "inf", "400d", "1e400", "soon", "5x"],
            "--eval-every": ["0", "-1"],
            "--save-every": ["-1"],
            "--model": ["transformer"],
            "--errors": ["surrogateescape"],
        }.items()
        for value in values
    ],
    # sample, score, perplexity: numbers
    *[["sample", "-c", "{ckpt}", opt, value] for opt in ("-t", "--top-p") for value in ("nan", "inf", "-1")],
    ["sample", "-c", "{ckpt}", "-t", "101"],
    ["sample", "-c", "{ckpt}", "--top-p", "0"],
    ["sample", "-c", "{ckpt}", "--top-k", "-1"],
    ["sample", "-c", "{ckpt}", "-n", "10000001"],
    ["sample", "-c", "{ckpt}", "--num-samples", "0"],
    ["sample", "-c", "{ckpt}", "--num-samples", "1025"],
    ["score", "-c", "{ckpt}", "{corpus}", "--streams", "0"],
    ["perplexity", "-c", "{ckpt}", "{corpus}", "--streams", "4097"],
    # paths: missing, a directory where a file belongs (train reads the files in a directory)
    ["train", "{missing}"],
    ["train", "{missing}/*.txt"],
    ["train", "{corpus}", "--init-from", "{missing}"],
    ["train", "{corpus}", "--init-from", "{dir}"],
    ["train", "{corpus}", "-o", "{corpus}"],
    ["sample", "-c", "{missing}"],
    ["sample", "-c", "{ckpt}", "--prime-file", "{missing}"],
    ["sample", "-c", "{ckpt}", "--prime-file", "{dir}"],
    ["score", "-c", "{ckpt}", "{missing}"],
    ["score", "-c", "{ckpt}", "{dir}"],
    ["perplexity", "-c", "{missing}", "{corpus}"],
    ["info", "{missing}"],
    # usage
    ["train"],
    ["score", "-c", "{ckpt}"],
    ["train", "{corpus}", "--resume", "--init-from", "{ckpt}"],
    ["nonsense"],
]


@pytest.mark.parametrize("args", BAD_VALUES, ids=" ".join)
def test_bad_values_and_paths_are_usage_errors(paths, tmp_path, args):
    names = dict(paths, missing=tmp_path / "missing.txt")
    result = run(*[a.format(**names) for a in args])
    assert_clean(result, 2)
    assert "Usage:" in result.stderr or "Error:" in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file: no way to make one unreadable")
def test_unreadable_paths_are_usage_errors(paths, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("abc\n" * 50)
    secret.chmod(0)
    try:
        for args in (["train", secret], ["score", "-c", paths["ckpt"], secret]):
            assert_clean(run(*args), 2)
    finally:
        secret.chmod(0o600)


def test_a_checkpoint_that_is_no_checkpoint_is_a_data_error(paths):
    for target in (paths["corpus"], paths["dir"], "/dev/null"):
        result = run("sample", "-c", target, "-n", 3)
        assert_clean(result, 1)


# ---------------------------------------------------------------------- resume refusals (11)


@pytest.fixture
def two_steps(corpus, tmp_path) -> Path:
    out = tmp_path / "r"
    assert_clean(run("train", corpus, "-o", out, *TINY, "--max-steps", 2, "--dropout", 0.1), 0)
    return out


def different_vocabulary(corpus: Path, tmp_path: Path) -> Path:
    path = tmp_path / "words.txt"
    path.write_text(corpus.read_text(encoding="utf-8") + "Zebra!\n", encoding="utf-8")
    return path


def fewer_characters(corpus: Path, tmp_path: Path) -> Path:
    path = tmp_path / "words.txt"
    path.write_text(corpus.read_text(encoding="utf-8").replace("m", ""), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "change, expected",
    [
        (["--model", "lstm"], "cell 'gru' -> 'lstm'"),
        (["--layers", "2"], "num_layers 1 -> 2"),
        (["--hidden-size", "9"], "hidden_size 8 -> 9"),
        (["--embedding-size", "4"], "embedding_size 0 -> 4"),
        (["--peephole"], "peephole False -> True"),
        (["--dropout", "0"], "dropout 0.1 -> 0.0"),
        (["--seq-len", "9"], "seq_len 8 -> 9"),
        (["--batch-size", "3"], "batch_size 2 -> 3"),
        (["--lr", "0.01"], "lr 0.002 -> 0.01"),
        (["--seed", "1"], "seed 0 -> 1"),
        (different_vocabulary, "3 character(s) the model's vocabulary lacks"),
        (fewer_characters, "the corpus differs"),
        (["--encoding", "latin-1"], "encoding 'utf-8' -> 'latin-1'"),
        (["--newline", "keep"], "newline 'normalize' -> 'keep'"),
        (["--errors", "strict", "--newline", "normalize"], None),  # the checkpoint's own policy: resumes
    ],
    ids=str,
)
def test_resume_refuses_what_would_change_the_run(corpus, tmp_path, two_steps, change, expected):
    before = (two_steps / "last.npz").read_bytes()
    text = change(corpus, tmp_path) if callable(change) else corpus
    options = [] if callable(change) else change
    result = run("train", text, "-o", two_steps, "--resume", "--max-steps", 3, *options)
    if expected is None:
        assert_clean(result, 0)
        return
    assert_clean(result, 1)
    assert "cannot resume" in result.stderr and expected in result.stderr, result.stderr
    assert (two_steps / "last.npz").read_bytes() == before  # nothing lost, nothing changed


# ---------------------------------------------------------------------- best/last across resume (9)


def train_in_process(
    corpus: Path, out: Path, steps: int, resume: bool = False, stop_at: int | None = None, **options
):
    """Train `steps` steps; stop_at interrupts the run at an evaluation of that step instead (as
    Ctrl-C would, the budget stays `steps`)."""
    model = {"cell": "lstm", "hidden_size": 8, "num_layers": 1, "dropout": 0.0, "nonlinearity": "tanh"}
    model.update({k: options.pop(k) for k in list(options) if k in model})
    # warmdown 0: tests that cut a run into budgets (6 steps, then 10) must not anneal the first one
    training = {"seq_len": 8, "batch_size": 2, "eval_every": 2, "save_every": 2, "max_steps": steps}
    training.update({"warmdown": 0.0, **options})
    if resume:
        model, training = {}, {"max_steps": steps}
    trainer = prepare_run([corpus], {**model, "embedding_size": 0}, training, TextPolicy(), out, resume)
    if stop_at is not None:
        trainer.on_eval = lambda record: record["step"] >= stop_at
    return trainer.run(show_progress=False)


def test_best_survives_a_worse_resumed_validation(corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    first = train_in_process(corpus, out, 6)
    best = (out / "best.npz").read_bytes()
    monkeypatch.setattr(validation_module, "evaluate", lambda *a, **k: first.best_val + 1.0)
    resumed = train_in_process(corpus, out, 12, resume=True)
    assert (out / "best.npz").read_bytes() == best
    assert (resumed.best_step, resumed.best_val) == (first.best_step, first.best_val)
    last = load_checkpoint(out / "last.npz").progress
    assert (last["step"], last["best_step"], last["best_val"]) == (12, first.best_step, first.best_val)


def test_nan_validation_never_becomes_best(corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    first = train_in_process(corpus, out, 4)
    best = (out / "best.npz").read_bytes()
    # validation data exists, so a NaN is a failed evaluation: the training loss must not stand in
    monkeypatch.setattr(validation_module, "evaluate", lambda *a, **k: math.nan)
    resumed = train_in_process(corpus, out, 8, resume=True)
    assert (resumed.best_step, resumed.best_val) == (first.best_step, first.best_val)
    assert (out / "best.npz").read_bytes() == best
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_loss"] for r in records[-2:]] == [None, None]  # strict JSON: no NaN literal


# ---------------------------------------------------------------------- exact resume, random stops (10)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_resume_at_a_random_step_is_bitwise_exact(corpus, tmp_path, cell):
    stop = random.Random(cell).randint(1, 9)
    options = {"cell": cell, "dropout": 0.25, "eval_every": 3, "save_every": 0, "plateau_patience": 1}
    train_in_process(corpus, tmp_path / "straight", 10, **options)
    train_in_process(corpus, tmp_path / "stopped", stop, **options)
    train_in_process(corpus, tmp_path / "stopped", 10, resume=True)
    a, b = (load_checkpoint(tmp_path / d / "last.npz") for d in ("straight", "stopped"))
    assert a.progress["step"] == b.progress["step"] == 10
    for name in a.params:
        assert a.params[name].tobytes() == b.params[name].tobytes(), (stop, name)
    for key in a.optimizer:
        assert a.optimizer[key].tobytes() == b.optimizer[key].tobytes(), (stop, key)
    assert a.progress["rng"] == b.progress["rng"] and a.progress["schedule"] == b.progress["schedule"]


def test_an_interrupted_warmdown_run_resumes_exactly(corpus, tmp_path):
    options = {"cell": "gru", "eval_every": 1, "save_every": 0, "warmdown": 0.5}
    train_in_process(corpus, tmp_path / "straight", 10, **options)
    stopped = train_in_process(corpus, tmp_path / "stopped", 10, stop_at=6, **options)
    assert stopped.step == 6
    train_in_process(corpus, tmp_path / "stopped", 10, resume=True)
    a, b = (load_checkpoint(tmp_path / d / "last.npz") for d in ("straight", "stopped"))
    assert a.train_config.warmdown == 0.5 and a.progress["step"] == b.progress["step"] == 10
    for name in a.params:
        assert a.params[name].tobytes() == b.params[name].tobytes(), name


# ---------------------------------------------------------------------- huge learning rate (12)


def test_huge_learning_rate_stops_cleanly(corpus, tmp_path):
    """The CLI caps --lr at 1 (Adam's steps are lr-sized); the library, given 1e4 and no
    clipping, diverges and must stop with finite weights on disk."""
    assert_clean(run("train", corpus, "--lr", 10, *TINY), 2)
    out = tmp_path / "run"
    with np.errstate(all="ignore"), pytest.raises(CharRNNError, match=r"diverged at step \d+"):
        train_in_process(
            corpus,
            out,
            500,
            cell="rnn",
            lr=1e4,
            grad_clip=0.0,
            eval_every=1000,
            save_every=1,
            nonlinearity="relu",
        )
    ckpt = load_checkpoint(out / "last.npz")  # the loader refuses non-finite values
    assert ckpt.progress["step"] >= 1


# ---------------------------------------------------------------------- closed pipe (15)


@pytest.fixture(scope="module")
def big_text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.txt"
    path.write_text(make_text(2000, seed=3), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "args",
    [
        ["sample", "-n", 200_000, "--seed", 1],
        ["sample", "-n", 20_000, "--seed", 1, "--num-samples", 4],
        ["score", "--surprisal", "{big}"],
        ["score", "--per-line", "--json", "{big}"],
    ],
    ids=["sample", "sample many", "surprisal", "per-line"],
)
def test_closed_pipe_ends_quietly(run_dir, big_text, args):
    """`charrnn ... | head -c 10` through a real pipe: exit 0, no traceback or error. (Whether
    the writer sees EPIPE depends on how much the kernel accepted before head exited.)"""
    command = [str(a).format(big=big_text) for a in args]
    line = shlex.join([sys.executable, "-m", "charrnn", *command[:1], "-c", str(run_dir), *command[1:]])
    done = subprocess.run(
        ["bash", "-c", f'{line} | head -c 10; echo " ${{PIPESTATUS[0]}}"'],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, OPENBLAS_NUM_THREADS="1"),
    )
    shown, status = done.stdout.rsplit(" ", 1)
    assert status.strip() == "0", done.stderr
    assert len(shown.encode()) <= 10
    assert not any(word in done.stderr for word in ("Traceback", "Error", "Exception")), done.stderr


# ---------------------------------------------------------------------- full disk, unwritable folder (8)


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "1m", read_only: bool = False):
    """A small tmpfs at path, or pytest.skip where mounting is not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path, leave: int) -> Path:
    """Take all the free space of directory's filesystem but about `leave` bytes."""
    st = os.statvfs(directory)
    filler = directory / "filler"
    with open(filler, "ab") as f:
        f.write(bytes(max(0, st.f_bavail * st.f_frsize - leave)))
    return filler


def checkpoint_bytes(corpus: Path, tmp_path: Path, *options) -> int:
    out = tmp_path / "measure"
    assert_clean(run("train", corpus, "-o", out, *TINY, "--max-steps", 1, "--save-every", 1, *options), 0)
    return (out / "last.npz").stat().st_size


class NoSpaceAfter:
    """os.replace that fails with ENOSPC from its n-th call on: a disk filling up."""

    def __init__(self, n: int):
        self.calls, self.n, self.real = 0, n, os.replace

    def __call__(self, src, dst):
        self.calls += 1
        if self.calls >= self.n:
            raise OSError(28, "No space left on device")
        return self.real(src, dst)


@pytest.mark.parametrize("how", ["tmpfs", "injected ENOSPC"])
def test_disk_full_keeps_the_previous_checkpoint(corpus, tmp_path, monkeypatch, how):
    args = [*TINY, "--max-steps", 10, "--save-every", 2, "--eval-every", 1000]
    if how == "tmpfs":
        size = checkpoint_bytes(corpus, tmp_path)
        disk = tmp_path / "disk"
        with tmpfs(disk):
            out = disk / "run"
            filler = fill(disk, leave=size + size // 2)  # room for one checkpoint, not two
            result = run("train", corpus, "-o", out, *args)
            check_disk_full(result, out)
            filler.unlink()
            assert_clean(run("train", corpus, "-o", out, "--resume"), 0)
            assert load_checkpoint(out / "last.npz").progress["step"] == 10
        return
    out = tmp_path / "run"
    monkeypatch.setattr(os, "replace", NoSpaceAfter(2))
    check_disk_full(run("train", corpus, "-o", out, *args), out)
    monkeypatch.undo()
    assert_clean(run("train", corpus, "-o", out, "--resume"), 0)


def check_disk_full(result, out: Path) -> None:
    assert_clean(result, 1)
    expected = (
        f"could not save {out / 'last.npz'}: No space left on device; the previous checkpoint is unchanged"
    )
    assert result.stderr.rstrip().endswith(f"Error: {expected}"), result.stderr
    assert load_checkpoint(out / "last.npz").progress["step"] == 2
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("how", ["under a file", "read-only filesystem", "full disk"])
def test_unwritable_output_fails_before_step_1(corpus, tmp_path, how):
    if how == "under a file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "run"
        result = run("train", corpus, "-o", out, *TINY, "--max-steps", 2)
        assert_clean(result, 1)
        assert f"Error: cannot write checkpoints to {out}: Not a directory" in result.stderr
        return
    if how == "full disk":
        with tmpfs(tmp_path / "disk", size="64k") as disk:
            (disk / "run").mkdir()
            fill(disk, leave=0)
            result = run("train", corpus, "-o", disk / "run", *TINY, "--max-steps", 2)
            assert_clean(result, 1)
            assert f"cannot write checkpoints to {disk / 'run'}: No space left on device" in result.stderr
            assert list((disk / "run").iterdir()) == []  # not even the probe file is left behind
        return
    with tmpfs(tmp_path / "ro", size="64k", read_only=True) as ro:
        for out in (ro, ro / "run"):  # an existing directory, and one to create
            result = run("train", corpus, "-o", out, *TINY, "--max-steps", 2)
            assert_clean(result, 1)
            assert f"cannot write checkpoints to {out}: Read-only file system" in result.stderr
            assert "step" not in result.stderr  # not one step trained


def test_full_disk_leaves_no_half_metrics_record(corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert_clean(run("train", corpus, "-o", out, *TINY, "--max-steps", 2, "--eval-every", 1), 0)
    real_open = open

    class ShortThenFull:
        """A file on a disk with a few bytes left: one short write, then ENOSPC."""

        def __init__(self, f):
            self.f, self.calls = f, 0

        def write(self, data):
            self.calls += 1
            if self.calls > 1:
                raise OSError(28, "No space left on device")
            return self.f.write(data[:7])

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def short_then_full(path, *args, **kwargs):
        f = real_open(path, *args, **kwargs)
        return ShortThenFull(f) if str(path).endswith("metrics.jsonl") else f

    monkeypatch.setattr(rundir, "open", short_then_full, raising=False)
    result = run("train", corpus, "-o", out, "--resume", "--max-steps", 4)
    monkeypatch.undo()
    assert_clean(result, 1)
    assert f"could not write {out / 'metrics.jsonl'}: No space left on device" in result.stderr
    assert all(line.endswith("}") for line in (out / "metrics.jsonl").read_text().splitlines())
    assert load_checkpoint(out / "last.npz").progress["step"] >= 2


# ---------------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=64), st.integers(1, 9))
def test_any_bytes_read_the_same_at_any_chunk_size_or_fail_cleanly(data, chunk_bytes):
    """Arbitrary bytes: text or one CharRNNError, the same however the file is cut into reads."""
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"charrnn-prop-{os.getpid()}.txt"
    path.write_bytes(data)
    try:
        outcomes = []
        for size in (chunk_bytes, 1 << 20):
            try:
                outcomes.append(("text", read_text(path, chunk_bytes=size)))
            except CharRNNError as e:
                outcomes.append(("error", str(e)))
    finally:
        path.unlink()
    assert outcomes[0][0] == outcomes[1][0]
    # a file with both an undecodable byte and a NUL may be reported either way, depending on
    # which read holds which; otherwise the message (offset and line included) is the same
    if not any("binary" in outcome[1] for outcome in outcomes if outcome[0] == "error"):
        assert outcomes[0] == outcomes[1]
    if outcomes[0][0] == "text":
        assert "\r" not in outcomes[0][1] and "\0" not in outcomes[0][1]


COMMANDS = ["train", "sample", "score", "perplexity", "info"]
WORDS_AND_NUMBERS = [
    *["0", "1", "3", "-1", "-7", "0.5", "1.5", "nan", "inf", "-inf", "1e400", "99999999999", "0x10", ""],
    *["lstm", "gru", "rnn", "relu", "skip", "replace", "keep", "latin-1", "utf-16", "90s", "\\n", "the "],
]


@st.composite
def command_lines(draw, files: dict[str, str]) -> list[str]:
    """A command, file arguments where it takes them, and option/value pairs of that command
    (values valid or not), now and then a stray token: mostly lines that get past click."""
    command = draw(st.sampled_from([*COMMANDS, "nonsense", "--help", "--version"]))
    if command not in COMMANDS:
        return [command]
    paths = st.sampled_from(sorted(files.values()))
    argv = [command]
    takes_files = {"train": (1, 2), "score": (1, 2), "perplexity": (1, 2), "info": (1, 1), "sample": (0, 0)}
    # mostly the right kind of file, so that most lines reach the command itself
    right = files["ckpt"] if command == "info" else files["corpus"]
    fitting = st.sampled_from([right] * 8 + sorted(files.values()))  # the first is the likeliest
    argv += draw(st.lists(fitting, min_size=takes_files[command][0], max_size=takes_files[command][1]))
    often, rarely = st.sampled_from([True] * 4 + [False]), st.sampled_from([False] * 9 + [True])
    if command in ("sample", "score", "perplexity") and draw(often):
        argv += ["-c", draw(st.sampled_from([files["ckpt"], files["run"]] * 3 + sorted(files.values())))]
    options = [p for p in main.commands[command].params if isinstance(p, click.Option)]
    for option in draw(st.lists(st.sampled_from(options), max_size=4)):
        if option.is_flag:
            argv.append(draw(st.sampled_from(option.opts + option.secondary_opts)))
        else:
            value = st.sampled_from(WORDS_AND_NUMBERS) if draw(often) else paths
            argv += [option.opts[0], draw(value)]
    if draw(rarely):
        argv.insert(draw(st.integers(1, len(argv))), draw(st.sampled_from(WORDS_AND_NUMBERS)))
    return argv


def random_argv_case(argv: list[str], out: str) -> int:
    if argv[0] == "train":  # whatever else it says, keep a training run to a few small steps
        argv = [*argv, "-o", out, *TINY, "--max-steps", "2", "--eval-chars", "64", "--embedding-size", "0"]
    result = CliRunner().invoke(main, argv, input="the cat")
    assert result.exit_code in (0, 1, 2), (argv, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), (argv, result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 1:
        assert result.stderr.rstrip().splitlines()[-1].startswith("Error: "), (argv, result.stderr)
    return result.exit_code


@pytest.fixture(scope="module")
def argv_files(tmp_path_factory, corpus, run_dir) -> dict[str, str]:
    root = tmp_path_factory.mktemp("argv")
    (root / "latin1.txt").write_bytes(LATIN1)
    (root / "empty.txt").write_bytes(b"")
    (root / "dir").mkdir()
    return {
        "corpus": str(corpus),
        "ckpt": str(run_dir / "last.npz"),
        "run": str(run_dir),
        "latin1": str(root / "latin1.txt"),
        "empty": str(root / "empty.txt"),
        "dir": str(root / "dir"),
        "missing": str(root / "missing.npz"),
        "null": "/dev/null",
        "stdin": "-",
    }


def test_random_command_lines_never_raise(argv_files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the default checkpoints/ would be read and written

    @settings(max_examples=int(os.environ.get("CHARRNN_ARGV_EXAMPLES", "60")), deadline=None, database=None)
    @given(command_lines(argv_files))
    def check(argv):
        random_argv_case(argv, str(tmp_path / "out"))

    check()


# ---------------------------------------------------------------------- make stress: the long versions


def report(line: str) -> None:
    """Storm figures for docs/RELIABILITY.md (`make stress` shows them: it runs pytest -s)."""
    print(f"\n[stress] {line}", flush=True)


def disk_full_once(corpus: Path, out: Path, rng: random.Random, size: int, fill_disk) -> str:
    """One training run that meets a full disk at a random moment; checks what it left and
    that it resumes once there is room again. -> what happened."""
    args = [*TINY, "--max-steps", 12, "--save-every", rng.randint(1, 3), "--eval-every", rng.randint(1, 4)]
    undo = fill_disk(rng.randint(0, 3 * size))
    result = run("train", corpus, "-o", out, *args)
    assert result.exit_code in (0, 1), (result.output, result.exception)
    assert_clean(result, result.exit_code)
    if result.exit_code == 1:
        assert "No space left on device" in result.stderr, result.stderr
    for ckpt in out.glob("*.npz") if out.is_dir() else ():
        assert all(np.isfinite(p).all() for p in load_checkpoint(ckpt).params.values())
    if out.is_dir():
        assert not [p.name for p in out.iterdir() if ".tmp" in p.name or ".write-test" in p.name]
        if (out / "metrics.jsonl").exists():
            assert all(line.endswith("}") for line in (out / "metrics.jsonl").read_text().splitlines())
    undo()
    step = load_checkpoint(out / "last.npz").progress["step"] if (out / "last.npz").exists() else 0
    again = run("train", corpus, "-o", out, *(["--resume"] if step else args), "--max-steps", 12)
    assert_clean(again, 0)
    assert load_checkpoint(out / "last.npz").progress["step"] == 12
    if result.exit_code == 0:
        return "finished"
    message = result.stderr.strip().splitlines()[-1]
    kind = (
        "checkpoint save" if "could not save" in message else "metrics append" if "metrics" in message else ""
    )
    kind = kind or ("run directory check" if "cannot write checkpoints" in message else message)
    return f"stopped at {kind}, last.npz at step {step}"


@pytest.mark.stress
def test_disk_full_storm(corpus, tmp_path, monkeypatch):
    runs = int(os.environ.get("CHARRNN_DISK_FULL_RUNS", "100"))
    rng = random.Random(7)
    size = checkpoint_bytes(corpus, tmp_path)
    outcomes: dict[str, int] = {}
    try:
        context = tmpfs(tmp_path / "disk", size="1m")
        disk = context.__enter__()
        how = "tmpfs (1 MiB)"
    except pytest.skip.Exception:  # not root, or no mount: a disk that fills after n writes
        context, disk, how = None, tmp_path / "disk", "injected ENOSPC"
    try:
        for i in range(runs):
            out = disk / f"run{i}"
            if context is not None:

                def fill_disk(leave, disk=disk):
                    filler = fill(disk, leave)
                    return filler.unlink

            else:

                def fill_disk(leave):
                    monkeypatch.setattr(os, "replace", NoSpaceAfter(1 + leave * 4 // size))
                    return monkeypatch.undo

            what = disk_full_once(corpus, out, rng, size, fill_disk)
            outcomes[what.split(", last")[0]] = outcomes.get(what.split(", last")[0], 0) + 1
            shutil.rmtree(out)
    finally:
        if context is not None:
            context.__exit__(None, None, None)
    report(f"disk full ({how}): {runs} runs: {outcomes}; every one resumed to step 12, nothing lost")


@pytest.mark.stress
def test_random_command_lines_long(argv_files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    codes: dict[int, int] = {}

    @settings(max_examples=int(os.environ.get("CHARRNN_ARGV_LONG", "2000")), deadline=None, database=None)
    @given(command_lines(argv_files))
    def check(argv):
        code = random_argv_case(argv, str(tmp_path / "out"))
        codes[code] = codes.get(code, 0) + 1

    check()
    report(
        f"random command lines: {sum(codes.values())} run, exit status counts {dict(sorted(codes.items()))}"
    )


@pytest.mark.stress
def test_fuzz_checkpoint_loader(tmp_path):
    """atheris (coverage-guided) where it is installed, else a long hypothesis run."""
    seconds = int(os.environ.get("CHARRNN_FUZZ_SECONDS", "240"))
    try:
        import atheris  # noqa: F401
    except ImportError:
        report("atheris is not installed: fuzzing the loader with hypothesis instead")
        hypothesis_fuzz(tmp_path, seconds)
        return
    harness = Path(__file__).with_name("fuzz_checkpoint.py")
    done = subprocess.run(
        [sys.executable, str(harness), f"-max_total_time={seconds}", "-timeout=10", "-rss_limit_mb=2048"],
        capture_output=True,
        text=True,
        env=dict(os.environ, CHARRNN_FUZZ_DIR=str(tmp_path), OPENBLAS_NUM_THREADS="1"),
        timeout=seconds + 120,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    stats = [line for line in done.stderr.splitlines() if line.startswith("#") and "cov:" in line]
    report(f"atheris, {seconds} s: {stats[-1] if stats else done.stderr[-300:]}")


def hypothesis_fuzz(tmp_path: Path, seconds: float) -> None:
    """The loader against random files and random corruptions of real checkpoints, for `seconds`."""
    from test_checkpoint import make_checkpoint, outcomes

    seeds = []
    for k, options in enumerate([{}, {"cell": "gru", "vocab": (10, 0x1F600), "optimizer": False}]):
        ckpt = make_checkpoint(hidden_size=1, num_layers=1, hidden_batch=1 if not k else None, **options)
        save_checkpoint(tmp_path / f"seed{k}.npz", ckpt)
        seeds.append(((tmp_path / f"seed{k}.npz").read_bytes(), load_checkpoint(tmp_path / f"seed{k}.npz")))
    target, counts = tmp_path / "input.npz", {"refused": 0, "identical": 0, "raw refused": 0}

    @settings(max_examples=2000, deadline=None, database=None)
    @given(st.data())
    def fuzz(data):
        blob, original = seeds[data.draw(st.integers(0, len(seeds) - 1))]
        if data.draw(st.booleans()):
            raw = data.draw(st.binary(max_size=4096) | st.just(blob[: data.draw(st.integers(0, len(blob)))]))
            target.write_bytes(raw)
            try:
                load_checkpoint(target)
            except CheckpointError:
                counts["raw refused"] += 1
            else:
                assert raw == blob  # the only whole file among them
            return
        buf = bytearray(blob)
        for _ in range(data.draw(st.integers(1, 4))):
            buf[data.draw(st.integers(0, len(buf) - 1))] ^= data.draw(st.integers(1, 255))
        for outcome, n in outcomes(target, [bytes(buf)], original).items():
            counts[outcome] += n

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        fuzz()
    report(f"hypothesis loader fuzz, {seconds} s: {counts}")
