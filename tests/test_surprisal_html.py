"""`charrnn score --html`: one self-contained page, escaped, a span per character, the terminal's
colours, and the figures of `score --exact`."""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from charrnn.cli import main
from charrnn.scoring import SURPRISAL_COLOURS, Score, surprisal_level, xterm_rgb
from charrnn.surprisal_html import surprisal_page

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
HOSTILE = "if a < b && c > \"d\":\n\treturn '<script>alert(1)</script>' & x\n"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


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


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    corpus = root / "code.txt"
    corpus.write_text((HOSTILE + "for i in range(10): print(i)\n") * 40, encoding="utf-8")
    result = run("train", corpus, "-o", root / "run", *TINY, "--max-steps", 20, "--eval-every", 10)
    assert result.exit_code == 0, result.output
    return root / "run"


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
    assert [xterm_rgb(c) for c in (16, 22, 124, 166, 231)] == [
        "#000000",
        "#005f00",
        "#af0000",
        "#d75f00",
        "#ffffff",
    ]


def test_score_html_matches_score_exact_and_the_terminal_view(run_dir, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text(HOSTILE * 2, encoding="utf-8")
    out = tmp_path / "page.html"
    result = run("score", "-c", run_dir, f, "--html", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and result.stderr == f"wrote {out}\n"
    page = out.read_text(encoding="utf-8")
    exact = json.loads(run("score", "-c", run_dir, f, "--exact", "--json").stdout)
    figures = re.search(
        r"([\d,]+) characters predicted · ([\d.]+) nats/char · ([\d.]+) bits/char · perplexity ([\d.]+)", page
    )
    assert int(figures[1].replace(",", "")) == exact["chars"] == len(HOSTILE) * 2 - 1
    for i, key in enumerate(("nats_per_char", "bits_per_char", "perplexity"), start=2):
        assert float(figures[i]) == pytest.approx(exact[key], abs=1e-4)
    spans = Page(page).spans
    assert "".join(s[2] for s in spans) == HOSTILE * 2 and "<script>" not in page
    # the same colour per character as the terminal view (newline: its return sign)
    terminal = run("score", "-c", run_dir, f, "--surprisal").stdout
    colours = [int(c) for c in re.findall(r"\x1b\[48;5;(\d+)m", terminal)]
    assert colours == [SURPRISAL_COLOURS[int(s[0][-1][1:])] for s in spans[1:]]


def test_unknown_characters_are_marked_or_refused(run_dir, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("for i in €range(10): ⚡print(i)\n", encoding="utf-8")
    out = tmp_path / "page.html"
    refused = run("score", "-c", run_dir, f, "--html", out)
    assert refused.exit_code == 1 and refused.output.startswith("Error: ") and not out.exists()
    result = run("score", "-c", run_dir, f, "--html", out, "--unknown", "skip")
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    spans = Page(page).spans
    assert [s[2] for s in spans if "unknown" in s[0]] == ["€", "⚡"]
    assert "2 unknown character(s) skipped" in page
    assert "28 characters predicted" in page  # 31 characters, 29 known, less the first


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--html", "{tmp}/no/page.html"], 1, "Error: No such file or directory"),
        (["--html", "{tmp}"], 2, "is a directory"),
    ],
)
def test_score_html_errors(run_dir, tmp_path, args, code, message):
    f = tmp_path / "t.txt"
    f.write_text(HOSTILE, encoding="utf-8")
    result = run("score", "-c", run_dir, f, *[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == code and message in result.output and "Traceback" not in result.output


def test_nothing_to_score_is_an_error(run_dir, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("i", encoding="utf-8")
    result = run("score", "-c", run_dir, f, "--html", tmp_path / "p.html")
    assert result.exit_code == 1
    assert (
        result.output
        == f"Error: nothing to score in {f}: it has 1 character(s) the model knows, at least 2 are needed\n"
    )
