"""How likely is a text: nats/char, bits/char and perplexity, per file or per line.

Every character after the first is predicted from everything before it; the first character is
context only (as in training, where each target is the next character of its input).

Exact mode runs one stream over the whole text with the state carried, which is what the model
defines. The default runs S parallel streams for speed: the text is cut into S consecutive
segments and every segment but the first starts from zero state after re-reading the `warmup`
characters before it, which are not counted. Every character is still scored exactly once; only
a character more than `warmup` positions into a segment's past is forgotten, so the figure
differs from the exact one by a small amount (measured and reported in docs/BENCHMARKS.md).
Memory stays bounded: texts are encoded once (memory-mapped when large) and read in windows;
a long text shows its progress on stderr.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .data import load_corpus
from .errors import CharRNNError
from .functional import bits_per_char, perplexity
from .model import CharRNN
from .parallel import parallel_or_model, resolve_workers
from .progress import reading_bar, scoring_bar
from .text import TextPolicy
from .vocab import Vocab, to_codepoints

# logits of one window are (streams * T, V); this caps that array (float32 elements)
WINDOW_ELEMENTS = 1 << 22
# exp() of more nats than this overflows a float: the perplexity would print as inf
MAX_NATS_PER_CHAR = math.log(sys.float_info.max)


@dataclass
class Score:
    name: str
    chars: int  # characters scored (predicted)
    nats: float  # their total negative log-likelihood
    skipped: int = 0  # characters left out by --unknown skip
    streams: int = 1  # 1 means the exact single-stream value

    @property
    def nats_per_char(self) -> float:
        return self.nats / self.chars

    @property
    def bits_per_char(self) -> float:
        return bits_per_char(self.nats_per_char)

    @property
    def perplexity(self) -> float:
        return perplexity(self.nats_per_char)

    @property
    def exact(self) -> bool:
        return self.streams == 1

    def to_dict(self) -> dict:
        """The figures under the names `charrnn score --json` prints."""
        d = asdict(self)
        d.update(
            nats_per_char=self.nats_per_char,
            bits_per_char=self.bits_per_char,
            perplexity=self.perplexity,
            exact=self.exact,
        )
        return d


# positions (streams * T) of one window: few enough that each layer's activations stay in the CPU's
# caches (2048 x 4H floats = 8 MiB for an LSTM of 256); longer windows only add memory traffic
# (64 streams of a 2x256 LSTM: 1,008-step windows score 27k chars/s, 32-step ones 43k:
# docs/BENCHMARKS.md)
WINDOW_POSITIONS = 2048


# texts shorter than this are scored in one process: starting workers takes about half a second
PARALLEL_MIN_CHARS = 100_000


def window_len(vocab_size: int, streams: int) -> int:
    """Steps per scoring window for `streams` parallel streams."""
    by_logits = WINDOW_ELEMENTS // (streams * vocab_size)
    return max(16, min(by_logits, WINDOW_POSITIONS // streams))


def _stream_nats(runner, rows: list[np.ndarray], counted_from: np.ndarray, T: int, on_scored=None) -> float:
    """Total nats over equal-length rows of ids scored in parallel with carried state, T steps
    at a time by runner.nll (the model or its DataParallel); in row s only targets at positions
    >= counted_from[s] count. on_scored(k) hears of the k targets each window counted."""
    length = len(rows[0]) - 1
    total, state = 0.0, None
    for a in range(0, length, T):
        b = min(a + T + 1, length + 1)
        block = np.stack([r[a:b] for r in rows]).astype(np.int64)  # (S, t + 1)
        nats, state = runner.nll(block[:, :-1], block[:, 1:], state)  # (S, t)
        positions = np.arange(a, b - 1)
        counted = positions[None, :] >= counted_from[:, None]  # (S, t)
        total += float(nats[counted].sum())
        if on_scored is not None:
            on_scored(int(counted.sum()))
    return total


def score_ids(
    model: CharRNN,
    ids: np.ndarray,
    streams: int = 64,
    warmup: int = 200,
    workers: int = 0,
    name: str = "text",
    show_progress: bool | None = None,
) -> tuple[float, int, int]:
    """Total nats of ids[1:] given what precedes each. -> (nats, chars scored, streams used).

    streams 1 is exact. Fewer streams are used when segments would be shorter than 4 * warmup,
    so the warm-up never costs more than a quarter of the work. The streams are shared among
    `workers` processes (0: parallel.auto_workers) when the text has at least
    PARALLEL_MIN_CHARS characters. A long text shows a progress bar named `name` on stderr."""
    n = len(ids)
    if n < 2:
        return 0.0, 0, 1
    # a checkpoint's weights may be finite yet large enough to overflow the logits; the NaN
    # that results is reported by _checked, not as a warning per window
    with np.errstate(over="ignore", invalid="ignore"), scoring_bar(name, n - 1, show_progress) as bar:
        return _score_streams(model, ids, streams, warmup, workers, bar.update)


def _score_streams(
    model: CharRNN, ids: np.ndarray, streams: int, warmup: int, workers: int, on_scored
) -> tuple[float, int, int]:
    n = len(ids)
    W = warmup
    S = max(1, min(streams, (n - 1 - W) // (4 * W) if W else streams))
    single = window_len(model.config.vocab_size, 1)
    if S == 1:
        return _stream_nats(model, [ids], np.zeros(1, np.int64), single, on_scored), n - 1, 1
    L = (n - 1 - W) // S
    # stream 0 starts at the text's start, so its first W targets count; the others begin W
    # characters before their segment and count only the segment
    starts = [0] + [W + s * L - W for s in range(1, S)]
    rows = [ids[q : q + W + L + 1] for q in starts]
    counted = np.array([0] + [W] * (S - 1))
    T = window_len(model.config.vocab_size, S)
    workers = resolve_workers(workers, S) if n >= PARALLEL_MIN_CHARS else 1
    with parallel_or_model(model, S, T, workers) as runner:
        total = _stream_nats(runner, rows, counted, T, on_scored)
    end = W + S * L  # last input position scored by the streams
    if end < n - 1:  # a tail shorter than S characters: one stream, with its warm-up
        q = max(0, end - W)
        total += _stream_nats(model, [ids[q:]], np.array([end - q]), single, on_scored)
    return total, n - 1, S


def score_file(
    model: CharRNN,
    vocab: Vocab,
    policy: TextPolicy,
    path: Path,
    streams: int = 64,
    unknown: str = "error",
    workers: int = 0,
    warmup: int = 200,
    show_progress: bool | None = None,
) -> Score:
    with reading_bar([path], show=show_progress) as bar:
        corpus = load_corpus([path], policy, vocab=vocab, unknown=unknown, on_read=bar.update)
    return _score_encoded(
        model, str(path), corpus.ids, corpus.skipped, streams, workers, warmup, show_progress
    )


def score_text(
    model: CharRNN,
    vocab: Vocab,
    text: str,
    name: str = "text",
    streams: int = 64,
    unknown: str = "error",
    workers: int = 0,
    warmup: int = 200,
) -> Score:
    """score_file for a string in memory, scored as given (no newline policy applied)."""
    ids, skipped = vocab.encode(text, unknown=unknown)
    return _score_encoded(model, name, ids, skipped, streams, workers, warmup, show_progress=False)


def _score_encoded(
    model: CharRNN,
    name: str,
    ids: np.ndarray,
    skipped: int,
    streams: int,
    workers: int,
    warmup: int,
    show_progress: bool | None,
) -> Score:
    nats, chars, used = score_ids(model, ids, streams, warmup, workers, name, show_progress)
    if chars == 0:
        raise _nothing_to_score(name, len(ids))
    return _checked(Score(name, chars, nats, skipped, used))


def _nothing_to_score(name, known: int) -> CharRNNError:
    return CharRNNError(
        f"nothing to score in {name}: it has {known} character(s) the model knows, at least 2 are needed"
    )


def _checked(score: Score) -> Score:
    """A score whose every figure is a finite number, or CharRNNError saying why not."""
    per_char = score.nats_per_char
    if math.isnan(per_char):
        raise CharRNNError(
            f"cannot score {score.name}: the model's outputs overflow (its weights are too large for "
            "floating-point arithmetic), so the checkpoint is unusable"
        )
    if per_char > MAX_NATS_PER_CHAR:
        raise CharRNNError(
            f"cannot score {score.name}: {per_char:.4g} nats/char, a perplexity beyond the largest "
            "float; the model gives this text essentially zero probability"
        )
    return score


def score_lines(
    model: CharRNN, vocab: Vocab, text: str, name: str = "text", unknown: str = "error"
) -> list[Score]:
    """Score each line of text on its own, as a sentence: read after a newline, ending with one
    (when the vocabulary has newlines), from zero state. Empty lines are skipped; each Score is
    named name:line-number."""
    newline = vocab.index.get("\n")
    scores = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line:
            continue
        ids, skipped = vocab.encode(line, unknown=unknown)
        if newline is not None:
            ids = np.concatenate(([newline], ids, [newline]))
        if len(ids) < 2:
            continue
        nats, chars, _ = score_ids(model, ids, streams=1)
        scores.append(_checked(Score(f"{name}:{number}", chars, nats, skipped)))
    if not scores:
        raise CharRNNError(f"nothing to score in {name}: no line has a character the model can predict")
    return scores


def surprisal(model: CharRNN, ids: np.ndarray) -> np.ndarray:
    """Nats of each character given all before it (exact). ids (n,) -> (n,), the first NaN."""
    out = np.full(len(ids), math.nan)
    T = window_len(model.config.vocab_size, 1)
    state = None
    with np.errstate(over="ignore", invalid="ignore"):  # overflowing outputs show uncoloured (NaN)
        for a in range(0, len(ids) - 1, T):
            block = ids[a : a + T + 1].astype(np.int64)[None, :]
            nats, state = model.nll(block[:, :-1], block[:, 1:], state)
            out[a + 1 : a + block.shape[1]] = nats[0]
    return out


def text_surprisal(
    model: CharRNN, vocab: Vocab, text: str, unknown: str = "error"
) -> tuple[np.ndarray, np.ndarray]:
    """(nats, known), both aligned with text: known[i] says whether text[i] is in the vocabulary,
    nats[i] is its surprisal given the known characters before it, NaN for the first known
    character and for unknown ones (which unknown="error" refuses)."""
    ids, _ = vocab.encode(text, unknown=unknown)
    known = vocab.lookup(to_codepoints(text)) >= 0
    nats = np.full(len(known), math.nan)
    nats[known] = surprisal(model, ids)
    return nats, known


def surprisal_score(name: str, nats: np.ndarray, known: np.ndarray) -> Score:
    """The exact Score of a text from its text_surprisal."""
    scored = nats[known][1:]
    if not len(scored):
        raise _nothing_to_score(name, int(known.sum()))
    return _checked(Score(name, len(scored), float(scored.sum()), int((~known).sum())))


# 256-colour backgrounds from calm to alarmed, indexed by whole bits of surprisal (0-1, 1-2, ...
# 7+); the HTML view (surprisal_html.py) shows the same colours
SURPRISAL_COLOURS = (22, 28, 64, 100, 136, 166, 160, 124)


def surprisal_level(nats: float) -> int:
    """The index into SURPRISAL_COLOURS of a surprisal (not NaN) in nats."""
    return min(int(bits_per_char(nats)), len(SURPRISAL_COLOURS) - 1)


def xterm_rgb(colour: int) -> str:
    """'#rrggbb' of a colour of the xterm 256-colour cube (16-231: 16 + 36 r + 6 g + b, levels
    0, 95, 135, 175, 215, 255)."""
    r, g, b = (colour - 16) // 36, (colour - 16) // 6 % 6, (colour - 16) % 6
    return "#" + "".join(f"{55 + 40 * v if v else 0:02x}" for v in (r, g, b))


def render_surprisal(text: str, nats: np.ndarray) -> str:
    """ANSI-coloured text: each character's background shows how surprising it was; characters
    not scored (NaN) stay uncoloured."""
    out = []
    for ch, n in zip(text, nats):
        if math.isnan(n):
            out.append(ch)
            continue
        colour = SURPRISAL_COLOURS[surprisal_level(n)]
        # a newline shows as a coloured return sign, then breaks the line
        shown = "\u21b5" if ch == "\n" else ch
        out.append(f"\x1b[48;5;{colour}m{shown}\x1b[0m" + ("\n" if ch == "\n" else ""))
    return "".join(out)


def surprisal_legend() -> str:
    cells = " ".join(
        f"\x1b[48;5;{c}m {b}{'+' if b == 7 else ''} \x1b[0m" for b, c in enumerate(SURPRISAL_COLOURS)
    )
    return f"bits of surprisal: {cells}"
