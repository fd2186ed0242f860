"""The corpus-dependent defaults (charrnn/defaults.py)."""

from __future__ import annotations

import numpy as np

from charrnn.defaults import (
    BLOCK_CHARS,
    LONG_WINDOW,
    SAMPLE_BLOCKS,
    SHORT_WINDOW,
    long_line_length,
    window_length,
)
from charrnn.vocab import Vocab


def encoded(text: str) -> tuple[np.ndarray, Vocab]:
    vocab = Vocab.from_text(text)
    return vocab.encode(text)[0], vocab


def lines_of(lengths) -> str:
    return "".join("x" * n + "\n" for n in lengths)


def test_the_long_line_percentile_is_measured_exactly_on_a_small_text():
    ids, vocab = encoded(lines_of([10] * 98 + [70, 90]))
    assert long_line_length(ids, vocab.index["\n"], q=50) == 10
    assert long_line_length(ids, vocab.index["\n"], q=100) == 90


def test_verse_keeps_short_windows_and_code_gets_long_ones():
    assert window_length(*encoded(lines_of([40] * 200 + [60] * 2)))[0] == SHORT_WINDOW
    seq_len, why = window_length(*encoded(lines_of([30] * 95 + [79] * 5)))
    assert seq_len == LONG_WINDOW and "79" in why


def test_text_without_line_breaks_is_one_long_line():
    assert window_length(*encoded("abc " * 1000))[0] == LONG_WINDOW


def test_a_big_text_is_measured_on_a_fixed_sample_not_read_whole():
    ids, vocab = encoded(lines_of([20] * 9 + [99]))

    class Recorded:
        """A 1 G-char text made of ids repeated, which counts the chars read from it."""

        read = 0

        def __len__(self):
            return 10**9

        def __getitem__(self, window: slice):
            Recorded.read += window.stop - window.start
            return np.resize(np.roll(ids, -(window.start % len(ids))), window.stop - window.start)

    assert long_line_length(Recorded(), vocab.index["\n"], q=100) == 99
    assert Recorded.read == SAMPLE_BLOCKS * BLOCK_CHARS
