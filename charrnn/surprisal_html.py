"""`charrnn score --html`: the surprisal view as one self-contained HTML page, for sharing.

Each character is a <span> whose background has the colour the terminal view gives it (the
same scale: scoring.SURPRISAL_COLOURS, whole bits of surprisal) and whose title, the browser's
tooltip, gives its surprisal in nats and bits. Newlines and spaces are kept (white-space:
pre-wrap); a newline also shows as a return sign, drawn by CSS so that copying the text gives
the text. Other control characters show as their Unicode control pictures (U+2400 + code), and
characters the vocabulary lacks (--unknown skip) are uncoloured in a dashed box. Inline CSS
only: no script, no fonts or anything else fetched.
"""

from __future__ import annotations

import html
import math

import numpy as np

from .functional import bits_per_char
from .scoring import SURPRISAL_COLOURS, Score, surprisal_level, xterm_rgb

STYLE = """
body { background: #1c1c1c; color: #eeeeee; font: 15px/1.5 sans-serif; margin: 2em; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 2em; }
.figures, .legend { color: #bbbbbb; }
.text { font: 14px/1.6 monospace; white-space: pre-wrap; overflow-wrap: anywhere; }
.legend span { display: inline-block; padding: 0 0.5em; margin-right: 0.2em; }
.nl::before { content: "\\21b5"; }
.unknown { color: #aaaaaa; outline: 1px dashed #aaaaaa; }
"""


def surprisal_page(views: list[tuple[Score, str, np.ndarray, np.ndarray]], model_name: str) -> str:
    """The page for texts scored by one model: per text (its Score, the text, and
    scoring.text_surprisal's nats and known, aligned with it)."""
    levels = level_css()
    title = "surprisal: " + ", ".join(score.name for score, *_ in views)
    body = [f"<h1>{html.escape(title)}</h1>", f"<p class=figures>model: {html.escape(model_name)}</p>"]
    body.append(_legend())
    for score, text, nats, known in views:
        body += [f"<h2>{html.escape(score.name)}</h2>", _figures(score)]
        body.append(f'<div class="text">{_spans(text, nats, known)}</div>')
    return (
        "<!DOCTYPE html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n"
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}{levels}\n</style>\n</head>\n"
        "<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def level_css() -> str:
    """CSS classes s0, s1, ... with the background of each whole bit of surprisal."""
    return "\n".join(f".s{i} {{ background: {xterm_rgb(c)}; }}" for i, c in enumerate(SURPRISAL_COLOURS))


def _legend() -> str:
    cells = "".join(
        f'<span class="s{i}">{i}{"+" if i == len(SURPRISAL_COLOURS) - 1 else f"-{i + 1}"}</span>'
        for i in range(len(SURPRISAL_COLOURS))
    )
    return (
        f"<p class=legend>bits of surprisal: {cells} "
        '<span>not scored</span> <span class="unknown">not in the vocabulary</span></p>'
    )


def _figures(score: Score) -> str:
    d = score.to_dict()
    skipped = f" · {d['skipped']:,} unknown character(s) skipped" if d["skipped"] else ""
    return (
        f"<p class=figures>{d['chars']:,} characters predicted · {d['nats_per_char']:.4f} nats/char · "
        f"{d['bits_per_char']:.4f} bits/char · perplexity {d['perplexity']:.4f}{skipped}</p>"
    )


def _spans(text: str, nats: np.ndarray, known: np.ndarray) -> str:
    out = []
    for ch, n, k in zip(text, nats.tolist(), known.tolist()):
        shown = html.escape(ch)
        if ch != "\n" and ch != "\t" and (ch < " " or ch == "\x7f"):
            shown = "\u2421" if ch == "\x7f" else chr(0x2400 + ord(ch))
        classes = ["nl"] if ch == "\n" else []
        if not k:
            classes.append("unknown")
            tip = f"U+{ord(ch):04X} is not in the model's vocabulary: skipped"
        elif math.isnan(n):
            tip = "not scored: the first character is context only"
        else:
            classes.append(f"s{surprisal_level(n)}")
            tip = f"{n:.3f} nats, {bits_per_char(n):.3f} bits"
        out.append(f'<span class="{" ".join(classes)}" title="{html.escape(tip)}">{shown}</span>')
    return "".join(out)
