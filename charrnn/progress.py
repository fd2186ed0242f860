"""Progress bars on stderr for the slow parts of a command: reading a big corpus, scoring a
big text. Small jobs show none, so that short commands print nothing but their results."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tqdm import tqdm

# bytes read (both passes) or characters scored below which no bar is shown: such a job takes
# about a second
MIN_BYTES = 16 << 20
MIN_CHARS = 200_000


def total_bytes(paths: Sequence) -> int:
    """The files' total size; a file that cannot be stat'ed counts 0 (reading it will say why)."""
    total = 0
    for path in paths:
        with contextlib.suppress(OSError):
            total += os.path.getsize(path)
    return total


class NoBar:
    """The bar of a job that shows none: tqdm takes tens of milliseconds to import, as long as
    scoring a short text takes."""

    def __enter__(self) -> NoBar:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, n: float = 1) -> None:
        pass


def _bar(total: int, desc: str, unit: str, minimum: int, show: bool | None) -> tqdm | NoBar:
    """A transient bar on stderr: off when show is False, for jobs under `minimum`, and (tqdm's
    own rule, show None) when stderr is not a terminal."""
    if show is False or total < minimum:
        return NoBar()
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,
        file=sys.stderr,
        disable=None,
        leave=False,
        dynamic_ncols=True,
    )


def reading_bar(paths: Sequence, passes: int = 2, show: bool | None = None) -> tqdm | NoBar:
    """A bar over `passes` reads of the files, in bytes; update it with the bytes read."""
    return _bar(passes * total_bytes(paths), "reading corpus", "B", MIN_BYTES, show)


def scoring_bar(name: str, chars: int, show: bool | None = None) -> tqdm | NoBar:
    """A bar over the characters of one text being scored."""
    return _bar(chars, f"scoring {name}", "char", MIN_CHARS, show)
