"""`charrnn plot`: reading metrics.jsonl (resumed, cut short, damaged), the picture, the errors."""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from charrnn.cli import main
from charrnn.errors import CharRNNError
from charrnn.plot import read_metrics, run_names

needs_matplotlib = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None,
    reason="matplotlib is not installed (pip install -e '.[plot]', or make install-extras)",
)
TINY = [
    "--hidden-size",
    "16",
    "--layers",
    "1",
    "--seq-len",
    "16",
    "--batch-size",
    "4",
    "-q",
    "--workers",
    "1",
]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG, after checking its signature and header chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def write_metrics(run_dir: Path, *records: dict, tail: str = "") -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records) + tail
    (run_dir / "metrics.jsonl").write_text(text, encoding="utf-8")
    return run_dir


def rec(step: int, train: float | None = 3.0, val: float | None = 2.5) -> dict:
    return {"step": step, "train_loss": train, "val_loss": val, "elapsed": step / 10}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    """Two real runs on the same text: an LSTM and a GRU."""
    root = tmp_path_factory.mktemp("runs")
    corpus = root / "text.txt"
    corpus.write_text("the cat sat on the mat. the dog ran far away.\n" * 60, encoding="utf-8")
    out = []
    for cell in ("lstm", "gru"):
        result = run(
            "train", corpus, "-o", root / cell, "--model", cell, *TINY, "--max-steps", 12, "--eval-every", 4
        )
        assert result.exit_code == 0, result.output
        out.append(root / cell)
    return out


@needs_matplotlib
def test_plot_writes_a_png_of_one_run(runs, tmp_path):
    result = run("plot", runs[0], "-o", tmp_path / "curves.png")
    assert result.exit_code == 0, result.output
    assert result.stderr == f"wrote {tmp_path / 'curves.png'}\n"
    assert png_size(tmp_path / "curves.png") == (1000, 400)
    assert 5_000 < (tmp_path / "curves.png").stat().st_size < 150_000


@needs_matplotlib
def test_plot_overlays_several_runs(runs, tmp_path):
    from charrnn.plot import learning_curves

    result = run("plot", *runs, "-o", tmp_path / "both.png")
    assert result.exit_code == 0, result.output
    assert png_size(tmp_path / "both.png") == (1000, 400)
    run("plot", runs[0], "-o", tmp_path / "one.png")
    assert (tmp_path / "both.png").read_bytes() != (tmp_path / "one.png").read_bytes()

    by_step, by_time = learning_curves(runs).axes
    (bits,) = by_time.child_axes
    labels = [t.get_text() for t in by_step.get_legend().get_texts()]
    assert labels == ["lstm train", "lstm validation", "gru train", "gru validation"]
    assert [len(line.get_xdata()) for line in by_step.lines] == [3, 3, 3, 3]  # steps 4, 8, 12
    assert by_time.get_xlabel() == "training time (s)" and bits.get_ylabel() == "bits/char"
    assert run("plot", *runs, "-o", tmp_path / "curves.svg").exit_code == 0
    assert (tmp_path / "curves.svg").read_text(encoding="utf-8").lstrip().startswith("<?xml")


def test_run_names_fall_back_to_paths_when_names_repeat(tmp_path):
    assert run_names([tmp_path / "a" / "run", tmp_path / "b"]) == ["run", "b"]
    assert run_names([Path("a/run"), Path("b/run")]) == ["a/run", "b/run"]


def test_a_resumed_run_keeps_the_history_of_its_weights(tmp_path):
    # steps 30 and 40 were logged, then the run was killed and resumed from its save at step 20;
    # a final evaluation (no train_loss) ends it
    d = write_metrics(tmp_path, rec(10), rec(20), rec(30), rec(40), rec(30, 2.0), rec(40, 1.5), rec(45, None))
    assert [(r["step"], r["train_loss"]) for r in read_metrics(d)] == [
        (10, 3.0), (20, 3.0), (30, 2.0), (40, 1.5), (45, None)
    ]  # fmt: skip
    # a new run in the same directory starts again
    write_metrics(tmp_path, rec(10), rec(20), rec(10, 9.0))
    assert [r["train_loss"] for r in read_metrics(tmp_path)] == [9.0]


def test_an_unfinished_last_line_is_left_out_with_a_warning(tmp_path, capsys):
    d = write_metrics(tmp_path, rec(10), rec(20), tail='{"step": 30, "train_lo')
    assert [r["step"] for r in read_metrics(d)] == [10, 20]
    assert capsys.readouterr().err == f"{d / 'metrics.jsonl'}: left out its unfinished last line 3\n"
    # a whole record that only lacks its newline counts
    write_metrics(tmp_path, rec(10), tail=json.dumps(rec(20)))
    assert [r["step"] for r in read_metrics(d)] == [10, 20]


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "has no loss to plot yet"),
        ("\n\n", "has no loss to plot yet"),
        (json.dumps(rec(10, None, None)) + "\n", "has no loss to plot yet"),
        ('{"step": 10, "train_lo\n' + json.dumps(rec(20)) + "\n", "line 1: not a metrics record"),
        ("[1, 2]\n", "line 1: not a metrics record"),
        (json.dumps(rec(10)) + '\n{"step": "ten", "elapsed": 1}\n', "line 2: not a metrics record"),
        ('{"step": 10, "elapsed": 1, "val_loss": "low"}\n', "line 1: not a metrics record"),
        ("\xff\xfe\n", "line 1: not a metrics record"),
    ],
    ids=["empty", "blank", "no loss", "cut mid-file", "not an object", "bad step", "bad loss", "not utf-8"],
)
def test_damaged_metrics_are_one_clear_error(tmp_path, content, message):
    (tmp_path / "metrics.jsonl").write_bytes(content.encode("latin-1" if "\xff" in content else "utf-8"))
    with pytest.raises(CharRNNError, match=message):
        read_metrics(tmp_path)
    result = run("plot", tmp_path, "-o", tmp_path / "c.png")
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and result.output.startswith("Error: ") and message in result.output


def test_plot_errors_and_exit_codes(runs, tmp_path):
    no_metrics = tmp_path / "empty-dir"
    no_metrics.mkdir()
    cases = [
        (["plot", no_metrics, "-o", tmp_path / "c.png"], 1, f"{no_metrics} has no metrics.jsonl"),
        (["plot", tmp_path / "missing", "-o", tmp_path / "c.png"], 2, "does not exist"),
        (["plot", runs[0]], 2, "Missing option '-o'"),
        (["plot", "-o", tmp_path / "c.png"], 2, "Missing argument 'RUNS...'"),
        (["plot", runs[0], "-o", tmp_path / "c.jpeg"], 2, "is not one of .png, .svg, .pdf"),
        (["plot", runs[0], "-o", tmp_path], 2, "is a directory"),
    ]
    if importlib.util.find_spec("matplotlib") is not None:
        cases.append((["plot", runs[0], "-o", tmp_path / "no" / "c.png"], 1, "cannot write"))
    for args, code, message in cases:
        result = run(*args)
        assert result.exit_code == code, (args, result.output)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output
        if code == 1:
            assert result.output.count("\n") == 1 and result.output.startswith("Error: ")


def test_without_matplotlib_the_error_names_the_extra(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    result = run("plot", runs[0], "-o", tmp_path / "c.png")
    assert result.exit_code == 1
    assert (
        result.output == "Error: charrnn plot needs matplotlib, an optional extra: pip install -e '.[plot]'\n"
    )
    assert not (tmp_path / "c.png").exists()
