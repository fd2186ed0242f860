"""Pictures: `charrnn plot` (reading metrics.jsonl resumed, cut short or damaged; the picture;
the errors) and `charrnn score --html` (one self-contained page, escaped, a span per character,
the terminal's colours, the figures of `score --exact`)."""

from __future__ import annotations

import json
import math
import re
import struct
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from charrnn.cli import main
from charrnn.errors import CharRNNError
from charrnn.plot import read_metrics, run_names
from charrnn.scoring import SURPRISAL_COLOURS, Score, surprisal_level, xterm_rgb
from charrnn.surprisal_html import surprisal_page


def has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


needs_matplotlib = pytest.mark.skipif(
    not has_matplotlib(),
    reason="matplotlib is not installed (pip install -e '.[plot]', or make install-extras)",
)
TINY = ["--hidden-size", "16", "--layers", "1", "--seq-len", "16", "--batch-size", "4", "-q"]
HOSTILE = "if a < b && c > \"d\":\n\treturn '<script>alert(1)</script>' & x\n"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    """Two real runs on the same text: an LSTM and a GRU."""
    root = tmp_path_factory.mktemp("runs")
    corpus = root / "code.txt"
    corpus.write_text((HOSTILE + "for i in range(10): print(i)\n") * 40, encoding="utf-8")
    out = []
    for cell in ("lstm", "gru"):
        result = run(
            "train", corpus, "-o", root / cell, "--model", cell, *TINY, "--max-steps", 12, "--eval-every", 4
        )
        assert result.exit_code == 0, result.output
        out.append(root / cell)
    return out


# ---------------------------------------------------------------------- charrnn plot


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
    if has_matplotlib():
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


# ---------------------------------------------------------------------- charrnn score --html


class Page(HTMLParser):
    """The character spans of a page, (classes, title, text) each, and every tag seen."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.spans: list[list] = []
        self.tags: set[str] = set()
        self.in_text = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        attrs = dict(attrs)
        if tag == "div" and attrs.get("class") == "text":
            self.in_text = True
        elif tag == "span" and self.in_text:
            self.spans.append([attrs["class"].split(), attrs["title"], ""])

    def handle_endtag(self, tag):
        if tag == "div":
            self.in_text = False

    def handle_data(self, data):
        if self.in_text and self.spans:
            self.spans[-1][2] += data


def test_the_page_escapes_and_has_a_titled_span_per_character():
    text = HOSTILE + "\x0c\x7fé"
    nats = np.linspace(0.1, 7, len(text))
    nats[0] = math.nan
    known = np.ones(len(text), bool)
    known[-1] = False  # é: not in the vocabulary
    nats[-1] = math.nan
    page = surprisal_page([(Score("a&b<c>.txt", len(text) - 2, 10.0, 1), text, nats, known)], "m&m.npz")
    assert "<script>" not in page and "a&amp;b&lt;c&gt;.txt" in page and "m&amp;m.npz" in page
    parsed = Page(page)
    assert parsed.tags <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "div", "span"}
    spans = parsed.spans
    assert len(spans) == len(text)
    shown = "".join(s[2] for s in spans)
    assert shown == HOSTILE + "\u240c\u2421é"  # newlines and tabs kept, other controls as pictures
    assert spans[0][1] == "not scored: the first character is context only" and spans[0][0] == []
    assert spans[-1][0] == ["unknown"] and spans[-1][1] == "U+00E9 is not in the model's vocabulary: skipped"
    for (classes, title, _), n in zip(spans[1:-1], nats[1:-1]):
        assert title == f"{n:.3f} nats, {n / math.log(2):.3f} bits"
        assert f"s{surprisal_level(n)}" in classes
    assert all(("nl" in classes) == (ch == "\n") for classes, _, ch in spans)
    # the terminal's colours, one CSS class each
    for i, colour in enumerate(SURPRISAL_COLOURS):
        assert f".s{i} {{ background: {xterm_rgb(colour)}; }}" in page


def test_xterm_colours():
    expected = {16: "#000000", 22: "#005f00", 124: "#af0000", 166: "#d75f00", 231: "#ffffff"}
    assert {c: xterm_rgb(c) for c in expected} == expected


def test_score_html_matches_score_exact_and_the_terminal_view(runs, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text(HOSTILE * 2, encoding="utf-8")
    out = tmp_path / "page.html"
    result = run("score", "-c", runs[1], f, "--html", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and result.stderr == f"wrote {out}\n"
    page = out.read_text(encoding="utf-8")
    exact = json.loads(run("score", "-c", runs[1], f, "--exact", "--json").stdout)
    figures = re.search(
        r"([\d,]+) characters predicted · ([\d.]+) nats/char · ([\d.]+) bits/char · perplexity ([\d.]+)", page
    )
    assert int(figures[1].replace(",", "")) == exact["chars"] == len(HOSTILE) * 2 - 1
    for i, key in enumerate(("nats_per_char", "bits_per_char", "perplexity"), start=2):
        assert float(figures[i]) == pytest.approx(exact[key], abs=1e-4)
    spans = Page(page).spans
    assert "".join(s[2] for s in spans) == HOSTILE * 2 and "<script>" not in page
    # the same colour per character as the terminal view (newline: its return sign)
    terminal = run("score", "-c", runs[1], f, "--surprisal").stdout
    colours = [int(c) for c in re.findall(r"\x1b\[48;5;(\d+)m", terminal)]
    assert colours == [SURPRISAL_COLOURS[int(s[0][-1][1:])] for s in spans[1:]]


def test_unknown_characters_are_marked_or_refused(runs, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("for i in €range(10): ⚡print(i)\n", encoding="utf-8")
    out = tmp_path / "page.html"
    refused = run("score", "-c", runs[1], f, "--html", out)
    assert refused.exit_code == 1 and refused.output.startswith("Error: ") and not out.exists()
    result = run("score", "-c", runs[1], f, "--html", out, "--unknown", "skip")
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    spans = Page(page).spans
    assert [s[2] for s in spans if "unknown" in s[0]] == ["€", "⚡"]
    assert "2 unknown character(s) skipped" in page
    assert "28 characters predicted" in page  # 31 characters, 29 known, less the first
    # the terminal view shows them too, uncoloured
    shown = run("score", "-c", runs[1], f, "--surprisal", "--unknown", "skip").stdout
    assert re.sub(r"\x1b\[[\d;]*m", "", shown) == "for i in €range(10): ⚡print(i)\u21b5\n\n"


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--html", "{tmp}/no/page.html"], 1, "Error: No such file or directory"),
        (["--html", "{tmp}"], 2, "is a directory"),
    ],
)
def test_score_html_errors(runs, tmp_path, args, code, message):
    f = tmp_path / "t.txt"
    f.write_text(HOSTILE, encoding="utf-8")
    result = run("score", "-c", runs[1], f, *[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == code and message in result.output and "Traceback" not in result.output
    assert code == 2 or result.output.count("\n") == 1


def test_nothing_to_score_is_an_error(runs, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("i", encoding="utf-8")
    result = run("score", "-c", runs[1], f, "--html", tmp_path / "p.html")
    assert result.exit_code == 1
    assert (
        result.output
        == f"Error: nothing to score in {f}: it has 1 character(s) the model knows, at least 2 are needed\n"
    )
