"""Training defaults that depend on the corpus, each chosen from measured runs (docs/RESULTS.md,
"Defaults from evidence") and explained in the start-up line.

The window length: truncated BPTT only learns what spans one window, so a model trained on
50-character windows cannot learn where a line of 79 characters ends, and at a low
temperature it loops on a run of spaces or `#` far past any line it saw. Text whose long lines
are common (source code, prose with one paragraph per line) gets 100-character windows; short
lines (verse, chat) keep the faster 50. The lengths are measured on a fixed sample of the
text, so a corpus of any size starts in the same time.
"""

from __future__ import annotations

import numpy as np

from .vocab import Vocab

SHORT_WINDOW, LONG_WINDOW = 50, 100
LONG_LINE = 64  # a 99th-percentile line longer than this no longer fits a short window
SAMPLE_BLOCKS, BLOCK_CHARS = 32, 32_768


def long_line_length(ids: np.ndarray, newline: int | None, q: float = 99.0) -> int:
    """The q-th percentile of line lengths (chars without the newline) over a fixed sample of
    SAMPLE_BLOCKS evenly spaced blocks; lines cut by a block's edge are left out. A text with
    no line break in the sample is one long line."""
    if newline is None:
        return len(ids)
    starts = np.unique(np.linspace(0, max(len(ids) - BLOCK_CHARS, 0), SAMPLE_BLOCKS).astype(np.int64))
    lengths = [np.diff(np.flatnonzero(np.asarray(ids[s : s + BLOCK_CHARS]) == newline)) - 1 for s in starts]
    lengths = np.concatenate(lengths)
    return int(np.percentile(lengths, q)) if len(lengths) else min(len(ids), BLOCK_CHARS)


def window_length(ids: np.ndarray, vocab: Vocab) -> tuple[int, str]:
    """(seq_len, why) for a new run on ids."""
    longest = long_line_length(ids, vocab.index.get("\n"))
    if longest > LONG_LINE:
        return LONG_WINDOW, f"for this text: 1 line in 100 has {longest}+ chars"
    return SHORT_WINDOW, f"for this text: 99 lines in 100 have at most {longest} chars"
