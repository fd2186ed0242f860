"""Corpora of any size: directories and globs of documents, a validation budget that does not
grow with the corpus, resume without re-reading a memory-mapped corpus, the text policy on
resume, and long scores that show progress and stop cleanly on Ctrl-C."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_cli import TINY, make_text

from charrnn import data
from charrnn.checkpoint import load_checkpoint
from charrnn.cli import main
from charrnn.data import (
    eval_targets,
    eval_windows,
    expand_paths,
    file_signature,
    load_corpus,
    open_kept_corpus,
    sampled_eval_windows,
)
from charrnn.errors import CharRNNError
from charrnn.prepare import prepare_run
from charrnn.rundir import KEPT_IDS
from charrnn.text import TextPolicy
from charrnn.validation import evaluate

REPO = Path(__file__).resolve().parent.parent


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------- many files


def test_directories_and_globs_expand_to_sorted_files(tmp_path):
    b = write(tmp_path / "books" / "b.txt", "bee\n")
    a = write(tmp_path / "books" / "a.txt", "ay\n")
    nested = write(tmp_path / "books" / "more" / "c.md", "sea\n")
    write(tmp_path / "books" / ".hidden", "x")
    write(tmp_path / "books" / ".git" / "config", "x")
    assert expand_paths([tmp_path / "books"]) == [a, b, nested]
    assert expand_paths([str(tmp_path / "books" / "*.txt")]) == [a, b]
    assert expand_paths([b, a]) == [b, a]  # files stay in the order given
    (tmp_path / "empty").mkdir()
    with pytest.raises(CharRNNError, match="holds no files"):
        expand_paths([tmp_path / "empty"])
    with pytest.raises(CharRNNError, match="no file matches"):
        expand_paths([str(tmp_path / "*.csv")])


def test_documents_are_joined_on_a_newline(tmp_path):
    a = write(tmp_path / "a.txt", "first")  # no final newline
    b = write(tmp_path / "b.txt", "second\n")
    c = write(tmp_path / "c.txt", "third")
    corpus = load_corpus([a, b, c])
    assert corpus.vocab.decode(corpus.ids) == "first\nsecond\nthird"  # nothing after the last
    # a vocabulary without newlines (fine-tuning) gets no separator rather than an unknown character
    plain = load_corpus([a])
    joined = load_corpus([a, a], vocab=plain.vocab)
    assert plain.vocab.decode(joined.ids) == "firstfirst"


def test_every_unusable_file_is_named_in_one_error(tmp_path):
    good = write(tmp_path / "good.txt", "fine text\n")
    binary = tmp_path / "image.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(CharRNNError) as e:
        load_corpus([good, binary, latin])
    message = str(e.value)
    assert message.startswith("2 of the 3 corpus files cannot be used")
    assert "image.png looks like a binary file" in message and "latin.txt is not valid utf-8" in message
    assert "\n" not in message


def test_train_on_a_directory_from_the_command_line(tmp_path):
    for k in range(3):
        write(tmp_path / "books" / f"{k}.txt", make_text(100, seed=k))
    out = tmp_path / "run"
    result = run("train", tmp_path / "books", "-o", out, *TINY, "--max-steps", 2)
    assert result.exit_code == 0, result.output
    names = load_checkpoint(out / "last.npz").progress["corpus"]["names"]
    assert [Path(n).name for n in names] == ["0.txt", "1.txt", "2.txt"]
    (tmp_path / "void").mkdir()
    empty = run("train", tmp_path / "void", "-o", tmp_path / "r2")
    assert empty.exit_code == 1 and "holds no files" in empty.output


# ---------------------------------------------------------------------- validation budget


def test_the_evaluation_sample_is_fixed_spread_and_sized():
    ids = np.arange(100_000) % 251
    windows = list(sampled_eval_windows(ids, 50, 8, budget=4_000))
    again = list(sampled_eval_windows(ids, 50, 8, budget=4_000))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(windows, again))  # the same every time
    x = np.concatenate([w[0] for w in windows], axis=1)  # (8, 500)
    y = np.concatenate([w[1] for w in windows], axis=1)
    assert x.shape == (8, 500) and x.size == eval_targets(len(ids), 50, 8, 4_000)
    assert np.array_equal((x + 1) % 251, y)  # each target is the next character
    starts = x[:, 0]
    assert starts[0] == 0 and starts[-1] == ids[len(ids) - 501]  # first and last segment at the ends
    # a budget that covers the text (or 0) is the whole pass
    whole = list(eval_windows(ids[:3_000], 50, 8))
    for budget in (0, 3_000, 10_000):
        sampled = sampled_eval_windows(ids[:3_000], 50, 8, budget)
        assert all(np.array_equal(a[0], b[0]) for a, b in zip(sampled, whole))


def test_evaluation_cost_does_not_grow_with_the_validation_text():
    from charrnn.config import ModelConfig
    from charrnn.model import CharRNN

    model = CharRNN.create(ModelConfig(vocab_size=11, hidden_size=8, num_layers=1), seed=0)
    calls = []
    real_nll = model.nll
    model.nll = lambda x, y, state=None: calls.append(x.size) or real_nll(x, y, state)
    rng = np.random.default_rng(0)
    for n in (20_000, 2_000_000):
        calls.clear()
        loss = evaluate(model, rng.integers(0, 11, n), 16, 4, budget=1_000)
        assert sum(calls) == 1_000 and math.isfinite(loss)


# ---------------------------------------------------------------------- resume without re-reading


@pytest.fixture
def big_threshold(monkeypatch):
    monkeypatch.setattr(data, "MEMMAP_THRESHOLD", 1_000)  # the tests' corpora count as big


def train(corpus, out, steps, resume=False, **policy_options):
    model = {"cell": "gru", "hidden_size": 8, "num_layers": 1, "embedding_size": 0}
    training = {"seq_len": 8, "batch_size": 4, "eval_every": 3, "save_every": 3, "max_steps": steps}
    training["warmdown"] = 0.0  # a run cut into budgets: a warmdown would anneal the first one
    if resume:
        model, training = {}, {"max_steps": steps}
    trainer = prepare_run([corpus], model, training, TextPolicy(), out, resume, policy_options=policy_options)
    return trainer, trainer.run(show_progress=False)


def test_resume_maps_the_kept_ids_without_reading_the_text(tmp_path, big_threshold, monkeypatch, capsys):
    corpus = write(tmp_path / "c.txt", make_text(200))
    straight, _ = train(corpus, tmp_path / "a", 9)
    first, _ = train(corpus, tmp_path / "b", 4)
    kept = tmp_path / "b" / KEPT_IDS
    assert isinstance(first.corpus.ids, np.memmap) and kept.exists()
    assert kept.stat().st_size == first.corpus.num_chars  # one byte per id

    def no_reading(*args, **kwargs):
        raise AssertionError("the corpus text was read again")

    monkeypatch.setattr(data, "iter_text", no_reading)
    resumed, _ = train(corpus, tmp_path / "b", 9, resume=True)
    assert "sizes and sampled contents match" in capsys.readouterr().err
    assert np.array_equal(resumed.corpus.ids, straight.corpus.ids)
    a, b = load_checkpoint(tmp_path / "a" / "last.npz"), load_checkpoint(tmp_path / "b" / "last.npz")
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)  # exactly the same run


def test_a_changed_corpus_is_read_again_and_refused(tmp_path, big_threshold):
    corpus = write(tmp_path / "c.txt", make_text(200))
    train(corpus, tmp_path / "b", 3)
    write(corpus, make_text(200, seed=5))
    with pytest.raises(CharRNNError, match="corpus differs"):
        train(corpus, tmp_path / "b", 6, resume=True)
    # a lost or damaged ids file only costs a full read
    write(corpus, make_text(200))
    (tmp_path / "b" / KEPT_IDS).write_bytes(b"short")
    trainer, result = train(corpus, tmp_path / "b", 6, resume=True)
    assert result.step == 6


def test_file_signature_notices_appends_truncation_and_replacement(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SIGNATURE_EDGE_BYTES", 64)
    monkeypatch.setattr(data, "SIGNATURE_BLOCK_BYTES", 16)
    path = tmp_path / "f.txt"
    text = "".join(chr(97 + k % 26) for k in range(10_000))
    path.write_text(text)
    before = file_signature(path)
    path.write_text(text + "z")
    assert file_signature(path) != before
    path.write_text(text[:-1])
    assert file_signature(path) != before
    path.write_text(text[:5_000].upper() + text[5_000:])  # same size, new contents
    assert file_signature(path) != before
    path.write_text(text)
    assert file_signature(path) == before


def test_open_kept_corpus_refuses_a_hostile_record(tmp_path):
    corpus = write(tmp_path / "c.txt", "abc\n")
    loaded = load_corpus([corpus])
    kept = tmp_path / "ids"
    kept.write_bytes(np.asarray(loaded.ids).tobytes())
    good = {"fingerprint": loaded.fingerprint, "chars": 4, "files": loaded.files}
    assert open_kept_corpus([corpus], kept, loaded.vocab, TextPolicy(), good) is not None
    wrong = ({"chars": -1}, {"chars": "4"}, {"files": "x"}, {"chars": 5}, {"fingerprint": None})
    for bad in ({}, *({**good, **w} for w in wrong)):
        assert open_kept_corpus([corpus], kept, loaded.vocab, TextPolicy(), bad) is None


def test_resume_refuses_another_text_policy(tmp_path):
    corpus = write(tmp_path / "c.txt", make_text(200))
    train(corpus, tmp_path / "b", 3)
    with pytest.raises(CharRNNError, match="encoding 'utf-8' -> 'latin-1'"):
        train(corpus, tmp_path / "b", 6, resume=True, encoding="latin-1")


# ---------------------------------------------------------------------- scoring big texts


def trained(tmp_path) -> Path:
    out = tmp_path / "run"
    result = run("train", write(tmp_path / "c.txt", make_text(200)), "-o", out, *TINY, "--max-steps", 2)
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_ctrl_c_stops_a_long_score_cleanly(tmp_path):
    out = trained(tmp_path)
    big = write(tmp_path / "big.txt", make_text(240_000))  # ~8 MB: far more than 3 s with --exact
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "charrnn", "score", "-c", out, big, "--exact", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert stdout == "" and "Traceback" not in stderr and stderr.strip().endswith("Interrupted.")


def test_a_long_score_matches_the_short_path(tmp_path, monkeypatch):
    """The progress-reporting path changes no figure."""
    out = trained(tmp_path)
    text = write(tmp_path / "t.txt", make_text(400, seed=3))
    quiet = json.loads(run("score", "-c", out, text, "--json", "--exact").output)
    from charrnn import progress

    monkeypatch.setattr(progress, "MIN_CHARS", 1)
    shown = json.loads(run("score", "-c", out, text, "--json", "--exact").output)
    assert quiet["nats"] == shown["nats"]


def test_a_load_killed_before_the_rename_leaves_nothing_behind(tmp_path, big_threshold, monkeypatch):
    from charrnn.checkpoint import clean_stale_temp_files

    corpus = write(tmp_path / "c.txt", make_text(200))
    out = tmp_path / "run"
    out.mkdir()

    def killed(src, dst):
        raise KeyboardInterrupt  # the moment before the rename

    monkeypatch.setattr(data.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        load_corpus([corpus], keep_at=out / KEPT_IDS)
    assert list(out.iterdir()) == []  # the scratch file is removed on the way out
    # and one left by kill -9 has a name that the next run's clean-up removes
    stale = out / f".{KEPT_IDS}.tmp-99999-0123abcd"
    stale.write_bytes(b"x")
    assert clean_stale_temp_files(out) == [stale]
