"""`charrnn tune`: a tiny study of short trials, in two processes sharing a journal file."""

from __future__ import annotations

import json
import sys
import time

import pytest
from click.testing import CliRunner
from test_cli import make_text

from charrnn.checkpoint import load_checkpoint
from charrnn.cli import main

SPACE = {"cell": ["gru"], "hidden_size": [8, 16], "num_layers": [1], "seq_len": [16], "batch_size": [4, 8]}


@pytest.fixture
def study_args(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(400), encoding="utf-8")
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE), encoding="utf-8")
    return [str(corpus), "--space", str(space), "-o", str(tmp_path / "study"), "--min-trial-time", "1s"]


def test_two_processes_share_a_study_and_the_best_run_is_kept(study_args, tmp_path):
    optuna = pytest.importorskip("optuna")
    args = ["tune", *study_args, "--budget", "90s", "--trials", "5", "--trial-time", "3s", "--jobs", "2"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study" / "study.journal"))
    )
    trials = optuna.load_study(study_name="charrnn", storage=storage).trials
    assert 5 <= len(trials) <= 6  # --trials counts the study's trials; the other process may be mid-trial
    assert len({t.user_attrs["process"] for t in trials}) == 2  # both processes ran trials
    finished = [t for t in trials if t.value is not None]
    best = min(finished, key=lambda t: t.value)
    table = result.stdout.splitlines()
    assert table[0].split()[:3] == ["trial", "state", "val"] and table[1].split()[0] == str(best.number)
    kept = load_checkpoint(tmp_path / "study" / "best" / "best.npz")
    assert kept.progress["best_val"] == pytest.approx(best.value)
    assert {t.params["hidden_size"] for t in trials} <= {8, 16}  # the narrowed space
    assert {t.params["batch_size"] for t in trials} <= {4, 8}

    # a second call continues the same study
    again = CliRunner().invoke(
        main, ["tune", *study_args, "--trials", str(len(trials) + 1), "--trial-time", "2s"]
    )
    assert again.exit_code == 0, again.output
    assert len(optuna.load_study(study_name="charrnn", storage=storage).trials) == len(trials) + 1


def test_without_optuna_the_error_names_the_extra(study_args, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    result = CliRunner().invoke(main, ["tune", *study_args, "--budget", "5s"])
    assert result.exit_code == 1
    assert (
        result.output.strip()
        == "Error: charrnn tune needs Optuna, an optional extra: pip install -e '.[tune]'"
    )


def test_a_bad_search_space_is_one_clear_error(study_args, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hidden": [8]}), encoding="utf-8")
    args = [a if a != str(tmp_path / "space.json") else str(bad) for a in study_args]
    pytest.importorskip("optuna")
    started = time.monotonic()
    result = CliRunner().invoke(main, ["tune", *args, "--budget", "5s"])
    assert result.exit_code == 1 and "unknown setting 'hidden'" in result.output
    assert time.monotonic() - started < 5
