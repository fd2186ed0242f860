"""The commands as a user types them: CliRunner for every option, real processes where the
process itself matters (exact resume under one BLAS thread, stdout vs stderr)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from charrnn.checkpoint import load_checkpoint
from charrnn.cli import main
from charrnn.config import TrainConfig

TINY = ["--hidden-size", "16", "--layers", "1", "--seq-len", "16", "--batch-size", "4", "-q"]


def make_text(n_lines: int = 300, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "ran"]
    words += ["far", "away", "from", "dog", "who", "barked", "at", "it"]
    return "".join(" ".join(rng.choice(words, size=rng.integers(3, 9))) + ".\n" for _ in range(n_lines))


def run(*args, input=None, catch=False):
    return CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=catch)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "words.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run_dir(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "words"
    result = run("train", corpus, "-o", out, *TINY, "--max-steps", 40, "--eval-every", 10, "--save-every", 10)
    assert result.exit_code == 0, result.output
    return out


def test_train_writes_run_directory(run_dir):
    assert {"last.npz", "best.npz", "metrics.jsonl"} <= {p.name for p in run_dir.iterdir()}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20, 30, 40]
    assert all(math.isfinite(r["val_loss"]) and r["val_loss"] > 0 for r in records)
    assert records[-1]["val_loss"] < records[0]["val_loss"]  # it learns
    assert load_checkpoint(run_dir / "last.npz").progress["step"] == 40
    best = load_checkpoint(run_dir / "best.npz").progress
    assert best["best_val"] == min(r["val_loss"] for r in records)


def test_warmdown_anneals_the_learning_rate_into_the_step_budget(corpus, tmp_path):
    args = ("--max-steps", 40, "--eval-every", 10, "--lr", 0.01, "--warmdown", 0.5)
    result = run("train", corpus, "-o", tmp_path / "run", *TINY, *args)
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    # the lr logged at step s was used for the update from step s - 1, when (s - 1) / 40 was spent
    assert [json.loads(line)["lr"] for line in lines] == pytest.approx([0.01, 0.01, 0.0055, 0.0005])


def test_the_window_length_follows_the_texts_lines_and_says_why(tmp_path):
    code = tmp_path / "code.py"
    code.write_text(
        "".join(
            f"    value_{i} = compute(alpha, beta, gamma) + another_call(delta)  # {i}\n" for i in range(300)
        )
    )
    result = run("train", code, "-o", tmp_path / "run", "--hidden-size", 8, "--max-steps", 1, "-q")
    assert result.exit_code == 0, result.output
    assert "seq 100 (for this text: 1 line in 100 has" in result.stderr
    assert load_checkpoint(tmp_path / "run" / "last.npz").train_config.seq_len == 100


@pytest.mark.parametrize(("budget", "dropout"), [(["--max-steps", 1], 0.0), (["--epochs", 8], 0.2)])
def test_dropout_follows_the_budget_and_says_why(corpus, tmp_path, budget, dropout):
    common = ["--hidden-size", 8, "--batch-size", 4, "-q"]
    result = run("train", corpus, "-o", tmp_path / "run", *common, *budget)
    assert result.exit_code == 0, result.output
    assert f"dropout {dropout:g} (the budget allows about" in result.stderr
    assert load_checkpoint(tmp_path / "run" / "last.npz").model_config.dropout == dropout


# a time too short for many epochs of the 256 is not spent timing a 512, nor said
@pytest.mark.parametrize(
    ("speed", "width", "said"), [(1e9, 512, "gru 1x512 (the time allows about"), (1e3, 256, "gru 1x256,")]
)
def test_the_width_follows_the_time_budget_and_says_why(tmp_path, monkeypatch, speed, width, said):
    # the chars/s of the start-up's timed steps decide how many epochs --max-time allows
    monkeypatch.setattr("charrnn.prepare.training_speed", lambda model, batches, xp: speed)
    text = tmp_path / "words.txt"
    text.write_text(make_text(20_000), encoding="utf-8")  # 700 k chars: not small for a 1x512
    args = ["--layers", "1", "--batch-size", "2", "--seq-len", "8", "--max-time", "1s", "-q"]
    result = run("train", text, "-o", tmp_path / "run", *args)
    assert result.exit_code == 0, result.output
    assert said in result.stderr
    saved = load_checkpoint(tmp_path / "run" / "last.npz").model_config
    assert (saved.hidden_size, saved.dropout) == (width, 0.2 if width == 512 else 0.0)


def test_a_width_given_or_a_run_without_max_time_keeps_its_width(corpus, tmp_path):
    result = run("train", corpus, "-o", tmp_path / "a", *TINY, "--max-time", "1s")
    assert result.exit_code == 0, result.output
    assert "gru 1x16," in result.stderr
    result = run("train", corpus, "-o", tmp_path / "b", "--layers", "1", "--max-steps", "1", "-q")
    assert result.exit_code == 0, result.output
    assert "gru 1x256," in result.stderr


def sample(run_dir, *args) -> str:
    result = run("sample", "-c", run_dir, *args)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_sample_seed_length_and_vocabulary(run_dir, corpus):
    a = sample(run_dir, "-n", 200, "--seed", 3)
    assert a == sample(run_dir, "-n", 200, "--seed", 3)
    assert a != sample(run_dir, "-n", 200, "--seed", 4)
    assert len(a) == 200 + 1  # the newline that ends the output
    assert set(a) <= set(corpus.read_text())


def test_sample_prime_greedy_topk_stop(run_dir):
    primed = sample(run_dir, "-n", 50, "-p", "the cat", "--seed", 1)
    assert primed.startswith("the cat") and len(primed) == len("the cat") + 50 + 1
    greedy = sample(run_dir, "-n", 60, "--greedy", "--seed", 1)
    assert greedy == sample(run_dir, "-n", 60, "-t", 0, "--seed", 2)
    assert greedy == sample(run_dir, "-n", 60, "--top-k", 1, "--seed", 3)
    stopped = sample(run_dir, "-n", 500, "--seed", 5, "--stop", ".")
    assert stopped.endswith(".\n") and stopped.count(".") == 1
    nucleus = sample(run_dir, "-n", 80, "--top-p", 0.5, "--seed", 5)
    assert len(nucleus) == 81


def test_sample_prime_file_and_many_samples(run_dir):
    from_stdin = run("sample", "-c", run_dir, "-n", 10, "--seed", 1, "--prime-file", "-", input="a cat")
    assert from_stdin.exit_code == 0 and from_stdin.stdout.startswith("a cat")
    many = sample(run_dir, "-n", 30, "--seed", 2, "--num-samples", 3)
    assert len(many.split("\n\n")) >= 3


def test_unknown_prime_characters(run_dir):
    result = run("sample", "-c", run_dir, "-n", 5, "-p", "the \u732b cat")
    assert result.exit_code == 1
    assert "U+732B" in result.stderr and "Traceback" not in result.output
    skipped = sample(run_dir, "-n", 5, "-p", "the \u732b cat", "--unknown", "skip", "--seed", 1)
    assert skipped.startswith("the  cat")


def test_score_json_and_table(run_dir, corpus, tmp_path):
    result = run("score", "-c", run_dir, corpus, "--json")
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert d["chars"] == len(corpus.read_text()) - 1
    assert all(math.isfinite(d[k]) for k in ("nats_per_char", "bits_per_char", "perplexity"))
    assert d["perplexity"] == pytest.approx(math.exp(d["nats_per_char"]))
    assert d["bits_per_char"] == pytest.approx(d["nats_per_char"] / math.log(2))
    exact = json.loads(run("score", "-c", run_dir, corpus, "--json", "--exact").stdout)
    assert exact["exact"] and exact["chars"] == d["chars"]
    assert abs(exact["nats_per_char"] - d["nats_per_char"]) < 0.05
    table = run("score", "-c", run_dir, corpus)
    assert "bits/char" in table.stdout and str(corpus) in table.stdout


def test_many_files_in_one_call_load_the_model_once(run_dir, tmp_path, monkeypatch):
    import charrnn.api

    files = [tmp_path / f"{k}.txt" for k in range(3)]
    for k, f in enumerate(files):
        f.write_text(make_text(40, seed=k), encoding="utf-8")
    alone = [json.loads(run("score", "-c", run_dir, f, "--json").stdout) for f in files]
    loads = []
    real_load = charrnn.api.load
    monkeypatch.setattr(charrnn.api, "load", lambda *a: loads.append(a) or real_load(*a))
    together = run("score", "-c", run_dir, *files, "--json")
    assert together.exit_code == 0, together.output
    assert [json.loads(line) for line in together.stdout.splitlines()] == alone
    assert len(loads) == 1
    perplexities = run("perplexity", "-c", run_dir, *files).stdout.split()
    assert [float(p) for p in perplexities] == pytest.approx([d["perplexity"] for d in alone], abs=1e-4)


def test_score_per_line_and_surprisal(run_dir, tmp_path):
    f = tmp_path / "lines.txt"
    f.write_text("the cat sat.\n\na dog ran far away.\n", encoding="utf-8")
    lines = [
        json.loads(x) for x in run("score", "-c", run_dir, f, "--per-line", "--json").stdout.splitlines()
    ]
    assert [x["name"].rsplit(":", 1)[1] for x in lines] == ["1", "3"]
    assert lines[0]["chars"] == len("the cat sat.") + 1  # its characters and the newline that ends it
    shown = run("score", "-c", run_dir, f, "--surprisal")
    assert shown.exit_code == 0 and "\x1b[48;5;" in shown.stdout


def test_perplexity_plain_and_json(run_dir, corpus):
    plain = run("perplexity", "-c", run_dir, corpus, corpus)
    values = [float(v) for v in plain.stdout.split()]
    assert len(values) == 2 and values[0] == values[1] and 1 < values[0] < 30
    d = json.loads(run("perplexity", "-c", run_dir, corpus, "--json").stdout.splitlines()[0])
    assert d["perplexity"] == pytest.approx(values[0], rel=1e-5)


def test_long_texts_are_scored_by_workers_to_the_same_figure(run_dir, tmp_path):
    long = tmp_path / "long.txt"
    long.write_text(make_text(n_lines=6000, seed=3), encoding="utf-8")  # over PARALLEL_MIN_CHARS
    one, two = (
        json.loads(run("score", "-c", run_dir, long, "--json", "--workers", w).stdout) for w in (1, 2)
    )
    assert one["chars"] == two["chars"] > 100_000 and one["streams"] == two["streams"] == 64
    assert two["nats_per_char"] == pytest.approx(one["nats_per_char"], rel=1e-6)


def test_nothing_to_score(run_dir, tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("a", encoding="utf-8")
    result = run("perplexity", "-c", run_dir, f)
    assert result.exit_code == 1 and "nothing to score" in result.stderr
    assert "nan" not in result.stdout and "inf" not in result.stdout


def test_info(run_dir):
    result = run("info", run_dir / "last.npz", "--json")
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert d["step"] == 40 and d["cell"] == "gru" and d["parameters"] > 0


@pytest.mark.parametrize(
    "args",
    [
        ["sample", "-t", "nan"],
        ["sample", "-t", "inf"],
        ["sample", "-t", "-1"],
        ["sample", "-n", "-5"],
        ["sample", "-n", "99999999999"],
        ["sample", "--top-p", "0"],
        ["train", "missing.txt"],
        ["score", "missing.txt"],
    ],
)
def test_bad_values_are_usage_errors(args):
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_bad_training_values(corpus):
    for opt, value in [
        ("--lr", "nan"),
        ("--lr", "0"),
        ("--dropout", "1"),
        ("--max-time", "soon"),
        ("--hidden-size", "0"),
    ]:
        result = run("train", corpus, opt, value)
        assert result.exit_code == 2, (opt, value, result.output)


@pytest.mark.parametrize(
    "args", [["--peephole"], ["--model", "gru", "--peephole"], ["--model", "lstm", "--nonlinearity", "relu"]]
)
def test_an_option_of_another_cell_is_a_usage_error(corpus, tmp_path, args):
    result = run("train", corpus, "-o", tmp_path / "run", *args)
    assert result.exit_code == 2, result.output
    assert "applies only to --model" in result.output
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_default_checkpoint_is_newest_best(run_dir, corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run("sample", "-n", 5).exit_code == 1  # none yet: a clear error, not a traceback
    result = run("train", corpus, *TINY, "--max-steps", 3)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "checkpoints" / "words" / "best.npz").exists()
    result = run("sample", "-n", 5, "--seed", 1)
    assert result.exit_code == 0 and "checkpoints/words/best.npz" in result.stderr


def cli(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, OPENBLAS_NUM_THREADS="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "charrnn", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
    )


def test_init_from_fine_tunes_with_the_cli_defaults(corpus, run_dir, tmp_path):
    out = tmp_path / "tuned"
    result = run("train", corpus, "--init-from", run_dir / "best.npz", "-o", out, "--max-steps", 1, "-q")
    assert result.exit_code == 0, result.output
    source, tuned = load_checkpoint(run_dir / "best.npz"), load_checkpoint(out / "last.npz")
    assert tuned.progress["step"] == 1  # a new run that starts from the weights, not a resume
    assert tuned.model_config == source.model_config
    # options not typed take the same defaults as a new run (they once fell back to "no limit")
    expected = TrainConfig(max_steps=1, epochs=0)  # --max-steps alone bounds the run
    assert tuned.train_config == expected
    assert (expected.patience, expected.plateau_patience) == (5, 2)
    moved = max(np.abs(tuned.params[k] - source.params[k]).max() for k in source.params)
    assert 0 < moved < 0.05  # one Adam step from the source weights, not a fresh initialisation


def assert_same_training_state(a, b) -> None:
    """Two checkpoints hold bit for bit the same weights, Adam state and carried hidden state."""
    for name in a.params:
        assert np.array_equal(a.params[name], b.params[name]), name
    for key in a.optimizer:
        assert np.array_equal(a.optimizer[key], b.optimizer[key]), key
    for sa, sb in zip(a.hidden, b.hidden):
        assert all(np.array_equal(x, y) for x, y in zip(sa, sb))


@pytest.mark.parametrize("cell, workers", [("lstm", 1), ("gru", 1), ("lstm", 2)])
def test_resume_is_bitwise_exact(corpus, tmp_path, cell, workers):
    common = [
        *TINY,
        "--workers",
        workers,
        "--model",
        cell,
        "--dropout",
        "0.2",
        "--eval-every",
        5,
        "--save-every",
        5,
        "--plateau-patience",
        1,
        "--warmdown",  # 7 steps, then 17: a warmdown would anneal the first budget
        0,
    ]
    straight = cli("train", corpus, "-o", tmp_path / "a", *common, "--max-steps", 17)
    assert straight.returncode == 0, straight.stderr
    assert straight.stdout == ""  # progress and logs never reach stdout
    first = cli("train", corpus, "-o", tmp_path / "b", *common, "--max-steps", 7)
    resumed = cli("train", corpus, "-o", tmp_path / "b", "--resume", "--max-steps", 17, "-q")
    assert first.returncode == 0 and resumed.returncode == 0, resumed.stderr
    a, b = load_checkpoint(tmp_path / "a" / "last.npz"), load_checkpoint(tmp_path / "b" / "last.npz")
    assert a.progress["step"] == b.progress["step"] == 17
    assert_same_training_state(a, b)
    assert a.progress["rng"] == b.progress["rng"]


def test_resume_refuses_changes(corpus, tmp_path):
    out = tmp_path / "r"
    assert cli("train", corpus, "-o", out, *TINY, "--max-steps", 2).returncode == 0
    other = cli("train", corpus, "-o", out, "--resume", "--hidden-size", 32)
    assert other.returncode == 1 and "hidden_size" in other.stderr
    changed = tmp_path / "words.txt"
    changed.write_text(make_text(seed=1), encoding="utf-8")
    moved = cli("train", changed, "-o", out, "--resume")
    assert moved.returncode == 1 and "corpus differs" in moved.stderr
    assert load_checkpoint(out / "last.npz").progress["step"] == 2  # nothing lost


def test_large_vocabulary_gets_an_embedding_and_round_trips(tmp_path):
    # 600 distinct characters from the CJK block plus kana: Japanese-like text with multi-byte UTF-8
    rng = np.random.default_rng(5)
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 560)] + [chr(c) for c in range(0x3041, 0x3069)]
    text = "".join("".join(rng.choice(chars, 30)) + "。\n" for _ in range(300))
    corpus = tmp_path / "ja.txt"
    corpus.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    result = run("train", corpus, "-o", out, *TINY, "--max-steps", 5, "--eval-every", 5)
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(out / "best.npz")
    assert ckpt.model_config.embedding_size == 64 and ckpt.params["embed"].shape == (len(set(text)), 64)
    generated = sample(out, "-n", 300, "--seed", 1, "-p", "一")
    assert len(generated) == 1 + 300 + 1 and set(generated) <= set(text)  # prime, new text, newline
    scored = json.loads(run("score", "-c", out, corpus, "--json").stdout)
    assert scored["chars"] == len(text) - 1 and math.isfinite(scored["perplexity"])


@pytest.mark.parametrize(
    "typed, meant",
    [
        ("。\\n", "。\n"),
        ("a\\tb", "a\tb"),
        ("\\\\n", "\\n"),
        ("\\u00e9t\\xe9", "été"),
        ("\\q", "\\q"),
        ("日本", "日本"),
    ],
)
def test_stop_escapes_keep_non_ascii_text(typed, meant):
    from charrnn.clitypes import EscapedText

    assert EscapedText().convert(typed, None, None) == meant
