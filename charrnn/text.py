"""Reading text: encoding, byte-order marks, newlines, binary detection.

The policy is recorded in every checkpoint and applied identically by train, sample and score."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class TextPolicy:
    encoding: str = "utf-8"
    errors: str = "strict"
    newline: str = "normalize"  # CRLF and lone CR become LF; "keep" leaves them

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TextPolicy":
        return cls(**d)


def normalize_newlines(text: str, policy: TextPolicy) -> str:
    if policy.newline == "normalize":
        return text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def read_text(path, policy: TextPolicy = TextPolicy()) -> str:
    """Decode a whole file under the policy (the hardened reader replaces this)."""
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return normalize_newlines(data.decode(policy.encoding, policy.errors), policy)
