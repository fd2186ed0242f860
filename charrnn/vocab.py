"""Characters <-> integer ids, and the unknown-character policy shared by sample and score.

A vocabulary is the sorted list of distinct Unicode code points of the training text; id k is
the k-th smallest. It is stored in checkpoints as an int32 array of code points."""

from __future__ import annotations

import numpy as np

from .errors import CharRNNError

UNKNOWN_POLICIES = ("error", "skip")


class Vocab:
    def __init__(self, codepoints):
        cps = np.asarray(codepoints, dtype=np.int64)
        self.codepoints = cps.astype(np.int32)
        self.chars = [chr(c) for c in cps.tolist()]
        self.index = {ch: i for i, ch in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        return cls(sorted(ord(c) for c in set(text)))

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, ch: str) -> bool:
        return ch in self.index

    def id_dtype(self):
        return np.uint16 if len(self) <= 65536 else np.int32

    def encode(self, text: str, unknown: str = "error") -> tuple[np.ndarray, int]:
        """text -> (ids, number of characters skipped). unknown="error" raises CharRNNError
        naming the unknown characters, their code points and first positions."""
        index = self.index
        ids = [index.get(ch, -1) for ch in text]
        arr = np.array(ids, dtype=np.int64)
        missing = arr < 0
        skipped = int(missing.sum())
        if skipped and unknown == "error":
            raise CharRNNError(describe_unknown(text, index))
        return arr[~missing].astype(self.id_dtype()), skipped

    def decode(self, ids) -> str:
        chars = self.chars
        return "".join(chars[i] for i in np.asarray(ids).ravel().tolist())


def describe_unknown(text: str, index: dict, limit: int = 5) -> str:
    first: dict[str, int] = {}
    count = 0
    for pos, ch in enumerate(text):
        if ch not in index:
            count += 1
            first.setdefault(ch, pos)
    shown = ", ".join(f"{ch!r} (U+{ord(ch):04X}) at {pos}" for ch, pos in list(first.items())[:limit])
    more = f" and {len(first) - limit} more" if len(first) > limit else ""
    return (
        f"{count} character(s) not in the model's vocabulary: {shown}{more} "
        "(use --unknown skip to leave them out)"
    )
