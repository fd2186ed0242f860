"""Characters <-> integer ids, and the unknown-character policy shared by sample and score.

A vocabulary is the sorted list of distinct Unicode code points of the training text; id k is
the k-th smallest. It is stored in checkpoints as an int32 array of code points.

Encoding is vectorised: a str becomes its code points through one UTF-32 encode, and a dense
table (at most 0x110000 int32 entries, 4.4 MB; usually a few hundred bytes) maps them to ids,
so a long text never goes through a Python loop per character."""

from __future__ import annotations

import numpy as np

from .config import UNKNOWN_POLICIES
from .errors import CharRNNError

MAX_CODEPOINT = 0x10FFFF
_SURROGATES = (0xD800, 0xDFFF)
_LF = 10


def to_codepoints(text: str) -> np.ndarray:
    """The code points of a str as a read-only uint32 array (one entry per character; lone
    surrogates pass through, so a vocabulary reports them as unknown rather than crashing)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


class Vocab:
    def __init__(self, codepoints):
        """codepoints: strictly increasing integers in 0..0x10FFFF, no surrogates (ValueError
        otherwise); id k is codepoints[k]."""
        cps = np.asarray(codepoints)
        if cps.ndim != 1 or cps.size == 0:
            raise ValueError(
                f"a vocabulary needs a non-empty 1-d array of code points, not shape {cps.shape}"
            )
        if cps.dtype.kind not in "iu":
            raise ValueError(f"vocabulary code points must be integers, not {cps.dtype}")
        if cps[0] < 0 or cps[-1] > MAX_CODEPOINT:
            raise ValueError(f"vocabulary code points must lie in 0..0x10FFFF ({cps[0]}..{cps[-1]} given)")
        if np.any(np.diff(cps.astype(np.int64)) <= 0):
            raise ValueError("vocabulary code points must be strictly increasing (duplicate or unsorted)")
        surrogate = cps[(cps >= _SURROGATES[0]) & (cps <= _SURROGATES[1])]
        if surrogate.size:
            raise ValueError(f"U+{int(surrogate[0]):04X} is a surrogate code point, not a character")
        self.codepoints = cps.astype(np.int32)  # a copy: the caller's array may change later
        self.codepoints.flags.writeable = False
        self.chars = [chr(c) for c in self.codepoints.tolist()]
        self.index = {ch: i for i, ch in enumerate(self.chars)}
        # code point -> id, -1 for unknown; the extra last entry catches everything larger
        self._table = np.full(int(self.codepoints[-1]) + 2, -1, dtype=np.int32)
        self._table[self.codepoints] = np.arange(len(self.chars), dtype=np.int32)

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls(np.unique(to_codepoints(text)))

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, ch: str) -> bool:
        return ch in self.index

    def __repr__(self) -> str:
        return f"Vocab({len(self)} characters)"

    def id_dtype(self) -> type:
        return np.uint16 if len(self) <= 65536 else np.int32

    def lookup(self, codepoints: np.ndarray) -> np.ndarray:
        """Ids (int32) of an array of code points, -1 where a code point is not in the vocabulary."""
        # code points past the table's end read its last entry, -1 (clip: no temporary array)
        return self._table.take(np.asarray(codepoints), mode="clip")

    def encode(self, text: str, unknown: str = "error") -> tuple[np.ndarray, int]:
        """text -> (ids, number of characters skipped). unknown="error" raises CharRNNError
        naming the unknown characters, their code points and first positions."""
        if unknown not in UNKNOWN_POLICIES:
            raise ValueError(f"unknown must be one of {UNKNOWN_POLICIES}, not {unknown!r}")
        cps = to_codepoints(text)
        ids = self.lookup(cps)
        tally = UnknownTally()
        tally.add(cps, ids)
        if tally.count and unknown == "error":
            raise CharRNNError(tally.describe())
        if tally.count:
            ids = ids[ids >= 0]
        return ids.astype(self.id_dtype()), tally.count

    def decode(self, ids) -> str:
        """ids (any integer array-like) -> text; ValueError for ids outside 0..len-1."""
        arr = np.asarray(ids).ravel()
        if arr.size == 0:
            return ""
        if arr.dtype.kind not in "iu":
            raise ValueError(f"ids must be integers, not {arr.dtype}")
        if arr.min() < 0 or arr.max() >= len(self):
            raise ValueError(f"ids must lie in 0..{len(self) - 1} ({arr.min()}..{arr.max()} given)")
        return self.codepoints[arr].astype("<u4").tobytes().decode("utf-32-le")


class UnknownTally:
    """The characters of one text that are not in a vocabulary: how many there are, and each
    distinct one's first position, line and number of occurrences. The text may be fed in
    consecutive chunks, which is how a corpus file is checked without holding it whole."""

    def __init__(self) -> None:
        self.count = 0
        self._seen: dict[int, list[int]] = {}  # code point -> [first position, its line, occurrences]

    def add(self, cps: np.ndarray, ids: np.ndarray, start: int = 0, line: int = 1) -> None:
        """cps: code points of a chunk that begins at character `start`, on line `line` of the
        text; ids: their ids from Vocab.lookup."""
        missing = np.flatnonzero(ids < 0)
        if not missing.size:
            return
        self.count += int(missing.size)
        found, first, counts = np.unique(cps[missing], return_index=True, return_counts=True)
        new = [k for k, cp in enumerate(found.tolist()) if cp not in self._seen]
        if new:
            newlines = np.flatnonzero(cps == _LF)
            positions = missing[first[new]]
            lines = line + np.searchsorted(newlines, positions)
            for cp, pos, ln in zip(found[new].tolist(), positions.tolist(), lines.tolist()):
                self._seen[cp] = [start + pos, ln, 0]
        for cp, n in zip(found.tolist(), counts.tolist()):
            self._seen[cp][2] += n

    def describe(self, where: str = "", limit: int = 5, lines: bool = False) -> str:
        """A one-line message: `where` (e.g. a file name) prefixes it; lines=True adds line numbers."""
        firsts = sorted(self._seen.items(), key=lambda item: item[1][0])
        parts = []
        for cp, (pos, ln, n) in firsts[:limit]:
            times = f" {n:,} times, first" if n > 1 else ""
            at_line = f" (line {ln:,})" if lines else ""
            parts.append(f"{chr(cp)!r} (U+{cp:04X}){times} at char {pos:,}{at_line}")
        more = f"; and {len(firsts) - limit:,} more distinct" if len(firsts) > limit else ""
        prefix = f"{where}: " if where else ""
        return (
            f"{prefix}{self.count:,} character(s) not in the model's vocabulary: {'; '.join(parts)}{more} "
            "(use --unknown skip to leave them out)"
        )


def describe_unknown(text: str, index: dict, limit: int = 5) -> str:
    """The unknown-character message for `text` against a char -> id mapping."""
    cps = to_codepoints(text)
    known = np.fromiter((ord(ch) for ch in index), dtype=np.int64, count=len(index))
    tally = UnknownTally()
    tally.add(cps, np.where(np.isin(cps, known), 0, -1))
    return tally.describe(limit=limit)
