"""The Python API (charrnn/api.py): the same results as the commands it underlies, checked values,
and the README's example run as written."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import charrnn
from charrnn.checkpoint import load_checkpoint
from charrnn.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(hidden_size=16, num_layers=1, seq_len=16, batch_size=4)
TINY.update(max_steps=40, eval_every=10, save_every=10)
TINY_CLI = ["--hidden-size", 16, "--layers", 1, "--seq-len", 16, "--batch-size", 4, "--max-steps", 40]
TINY_CLI += ["--eval-every", 10, "--save-every", 10, "-q"]


def cli(*args, input=None):
    result = CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Python source (the package's own), so that the README's example finds its characters."""
    path = tmp_path_factory.mktemp("corpus") / "code.txt"
    path.write_text("".join(p.read_text() for p in sorted((ROOT / "charrnn").glob("*.py"))[:8]))
    return path


@pytest.fixture(scope="module")
def run_dir(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "api"
    result = charrnn.train(corpus, out, verbose=False, show_progress=False, **TINY)
    assert (result.out_dir, result.step, result.reason) == (out, 40, "max_steps")
    return out


@pytest.fixture(scope="module")
def model(run_dir) -> charrnn.Model:
    return charrnn.load(run_dir)


def test_train_matches_the_cli(run_dir, corpus, tmp_path):
    result = cli("train", corpus, "-o", tmp_path / "cli", *TINY_CLI)
    assert result.exit_code == 0, result.output
    ours, theirs = (load_checkpoint(d / "last.npz") for d in (run_dir, tmp_path / "cli"))
    assert ours.model_config == theirs.model_config and ours.train_config == theirs.train_config
    for name, value in theirs.params.items():
        np.testing.assert_array_equal(ours.params[name], value, err_msg=name)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20, 30, 40]


def test_train_chooses_the_window_and_reports_unknown_options(corpus, tmp_path, capfd):
    result = charrnn.train(corpus, tmp_path / "run", show_progress=False, **dict(TINY, seq_len=None))
    # source code has long lines: the CLI's evidence-based default picks the long window
    assert load_checkpoint(result.out_dir / "last.npz").train_config.seq_len == 100
    err = capfd.readouterr().err
    assert "seq 100 (" in err and "stopped after step 40 (max_steps)" in err
    with pytest.raises(TypeError, match="hiden_size"):
        charrnn.train(corpus, tmp_path / "bad", hiden_size=8)
    with pytest.raises(charrnn.CharRNNError, match="peephole"):
        charrnn.train(corpus, tmp_path / "bad", cell="gru", peephole=True, max_steps=1)


def test_load_a_file_or_a_run_directory(run_dir, model):
    assert model.path == run_dir / "best.npz"
    same = charrnn.load(run_dir / "best.npz")
    assert same.generate(length=40, seed=1) == model.generate(length=40, seed=1)
    assert "gru 1x16" in repr(model)
    with pytest.raises(charrnn.CheckpointError):
        charrnn.load(run_dir / "missing.npz")


def test_generate_is_the_cli_sample(run_dir, model):
    dry = {"dry_multiplier": 2.0, "dry_base": 2.0, "dry_allowed_length": 1, "dry_window": 32}
    text = model.generate("def ", length=120, temperature=0.7, seed=3, repeat_penalty=1.2, **dry)
    options = ["-n", 120, "-t", 0.7, "--seed", 3, "--repeat-penalty", 1.2]
    options += [f"--{name.replace('_', '-')}={value}" for name, value in dry.items()]
    printed = cli("sample", "-c", run_dir, "-p", "def ", *options)
    assert printed.stdout == text + "\n"
    assert text.startswith("def ") and len(text) == 4 + 120
    # each penalty acts
    assert text != model.generate("def ", length=120, temperature=0.7, seed=3, **dry)
    assert text != model.generate("def ", length=120, temperature=0.7, seed=3, repeat_penalty=1.2)
    many = model.generate_many(3, "a", length=30, seed=2)
    printed = cli("sample", "-c", run_dir, "-p", "a", "-n", 30, "--seed", 2, "--num-samples", 3)
    assert printed.stdout == "\n\n".join(many) + "\n"
    assert len(set(many)) == 3


def test_stream_yields_the_text_as_it_is_made(model):
    pieces = list(model.stream("import ", length=50, seed=4, top_k=5, top_p=0.9))
    assert pieces[0] == "import " and len(pieces) == 51 and all(len(p) == 1 for p in pieces[1:])
    assert "".join(pieces) == model.generate("import ", length=50, seed=4, top_k=5, top_p=0.9)
    stopped = model.generate(length=2000, seed=1, stop="\n")
    assert stopped.endswith("\n") and stopped[1:].count("\n") == 1  # the start-of-text newline, then one


@pytest.mark.parametrize(
    "options, message",
    [
        ({"length": -1}, "length must be >= 0, not -1"),
        ({"temperature": "hot"}, "temperature must be a number, not str"),
        ({"temperature": math.nan}, "temperature must be a finite number >= 0, not nan"),
        ({"top_p": 0}, r"top_p must be a finite number in \(0, 1\], not 0"),
        ({"top_k": 2.5}, "top_k must be an integer, not float"),
        ({"seed": True}, "seed must be an integer, not bool"),
        ({"repeat_penalty": 0.5}, "repeat_penalty must be a finite number >= 1"),
        ({"dry_base": 0.5}, r"dry_base must be a finite number in \[1, 10\], not 0.5"),
        ({"dry_allowed_length": 0}, "dry_allowed_length must be >= 1, not 0"),
        ({"repeat_window": 10**9}, "repeat_window must be >= 1 and <= 100000, not 1000000000"),
        ({"dry_window": 10**9}, "dry_window must be >= 1 and <= 100000, not 1000000000"),
        ({"unknown": "drop"}, "unknown must be one of error, skip"),
    ],
)
def test_bad_sampling_values_are_named(model, options, message):
    with pytest.raises(charrnn.CharRNNError, match=message):
        model.generate(**options)


def test_unknown_prime_characters(model):
    with pytest.raises(charrnn.CharRNNError, match="U\\+732B"):
        model.generate("def \u732b", length=5)
    assert model.generate("def \u732b", length=5, unknown="skip", seed=1).startswith("def ")


def test_score_figures_agree_with_each_other_and_the_cli(run_dir, model, tmp_path):
    text = "for name in names:\n    print(name)\n" * 120
    path = tmp_path / "loop.py"
    path.write_text(text)
    exact = model.score(text, exact=True)
    assert exact.chars == len(text) - 1 and exact.exact
    assert exact.bits_per_char == pytest.approx(exact.nats_per_char / math.log(2))
    assert exact.perplexity == pytest.approx(math.exp(exact.nats_per_char))
    nats = model.surprisal(text)
    assert nats.shape == (len(text),) and math.isnan(nats[0]) and np.isfinite(nats[1:]).all()
    assert nats[1:].sum() == pytest.approx(exact.nats, rel=1e-5)
    printed = json.loads(cli("score", "-c", run_dir, path, "--json", "--exact").stdout)
    assert printed == {**model.score_file(path, exact=True).to_dict(), "name": str(path)}
    assert printed["nats_per_char"] == pytest.approx(exact.nats_per_char, rel=1e-6)
    streamed = model.score(text, streams=4)
    assert streamed.streams > 1 and streamed.nats_per_char == pytest.approx(exact.nats_per_char, rel=0.05)


def test_score_lines_and_unknown_characters(run_dir, model, tmp_path):
    text = "import os\n\nx = 1\n"
    lines = model.score_lines(text, name="t.py")
    assert [s.name for s in lines] == ["t.py:1", "t.py:3"]
    path = tmp_path / "t.py"
    path.write_text(text)
    printed = cli("score", "-c", run_dir, path, "--per-line", "--json").stdout.splitlines()
    assert [json.loads(line)["nats"] for line in printed] == [s.nats for s in lines]
    with pytest.raises(charrnn.CharRNNError, match="U\\+732B"):
        model.score("x = '\u732b'\n")
    skipped = model.score("x = '\u732b'\n", unknown="skip")
    assert skipped.skipped == 1
    nats = model.surprisal("x\u732by", unknown="skip")
    assert math.isnan(nats[1]) and math.isfinite(nats[2])
    assert model.known("x\u732by").tolist() == [True, False, True]
    with pytest.raises(charrnn.CharRNNError, match="nothing to score"):
        model.score("x")


def test_info_is_the_cli_info(run_dir, model):
    assert model.info() == json.loads(cli("info", run_dir, "--json").stdout)
    assert model.info()["step"] == 40


def test_read_file_uses_the_checkpoint_policy_and_prime_files_fail_cleanly(run_dir, model, tmp_path):
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"def f():\r\n    pass\r\n")
    assert model.read_file(crlf) == "def f():\n    pass\n"
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9\n".encode("latin-1"))
    result = CliRunner().invoke(main, ["sample", "-c", str(run_dir), "-n", "5", "--prime-file", str(latin1)])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert "not valid utf-8" in result.stderr and "Traceback" not in result.output


def test_import_is_cheap_and_train_is_the_function():
    probe = (
        "import sys, charrnn; assert 'numpy' not in sys.modules, 'numpy loaded'; "
        "import charrnn.api; "
        "assert callable(charrnn.train) and charrnn.train is charrnn.api.train; "
        "print(charrnn.__all__)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        charrnn.nonsense  # noqa: B018


def test_the_readme_example_runs(run_dir, tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Python API") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'charrnn.load("checkpoints/demo")' in code
    shutil.copytree(run_dir, tmp_path / "checkpoints" / "demo")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "def " in out.stdout and "bits/char" in out.stdout
