"""Reading text: encoding, byte-order marks, newlines, binary detection.

The policy is recorded in every checkpoint and applied identically by train, sample and score.
Files are read as a stream of decoded chunks (`iter_text`) through an incremental decoder, so
a corpus of any size is never held as one Python string; `read_text` joins the chunks.

What a file must look like, checked as it is read:
- No UTF-16 or UTF-32 byte-order mark unless the encoding is of that family: such a file
  decoded as UTF-8 fails on its first bytes with a message about invalid bytes that does not
  say what is wrong.
- No NUL byte anywhere (no U+0000 for UTF-16/32). NUL is valid Unicode, but in practice only
  binary files contain it, and a model trained on one learns nothing useful. Searching bytes
  for NUL is a memchr, so checking the whole file costs nothing next to decoding it.
- Decodable under the encoding; a failure names the byte offset and the line.
A leading byte-order mark is dropped. With newline="normalize", CRLF and lone CR become LF,
also when a CRLF straddles two chunks.
"""

from __future__ import annotations

import codecs
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .errors import CharRNNError

NEWLINE_POLICIES = ("normalize", "keep")
DEFAULT_CHUNK_BYTES = 1 << 20

# UTF-32 first: its little-endian mark begins with UTF-16's
_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32", "little-endian"),
    (codecs.BOM_UTF32_BE, "UTF-32", "big-endian"),
    (codecs.BOM_UTF16_LE, "UTF-16", "little-endian"),
    (codecs.BOM_UTF16_BE, "UTF-16", "big-endian"),
)
_WIDE = ("utf-16", "utf-32")  # codecs in which NUL bytes are part of ordinary characters
_BOM_AWARE = ("utf-8-sig", "utf-16", "utf-32")  # codecs that drop the byte-order mark themselves
# they decode to lone surrogates, which are not characters and cannot enter a vocabulary
_REFUSED_ERRORS = ("surrogateescape", "surrogatepass")


@dataclass(frozen=True)
class TextPolicy:
    """How bytes become text; recorded in checkpoints so that sample and score read alike."""

    encoding: str = "utf-8"
    errors: str = "strict"
    newline: str = "normalize"  # CRLF and lone CR become LF; "keep" leaves them

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TextPolicy:
        return cls(**d)


DEFAULT_POLICY = TextPolicy()


def normalize_newlines(text: str, policy: TextPolicy) -> str:
    if policy.newline == "normalize":
        return text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def read_text(path, policy: TextPolicy = DEFAULT_POLICY, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> str:
    """The whole decoded, newline-normalized text of a file (see iter_text)."""
    return "".join(iter_text(path, policy, chunk_bytes))


def iter_text(
    path,
    policy: TextPolicy = DEFAULT_POLICY,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    on_read: Callable[[int], object] | None = None,
) -> Iterator[str]:
    """Decode a file under the policy, yielding non-empty str chunks of about chunk_bytes bytes
    each. Every anticipated problem (missing or unreadable file, wrong encoding, binary data)
    raises CharRNNError naming the file, when iteration reaches it. on_read(n) is told the
    bytes of each chunk read (a progress bar)."""
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be positive, not {chunk_bytes}")
    codec = _checked_codec(path, policy)
    wide = codec.startswith(_WIDE)
    decoder = codecs.getincrementaldecoder(codec)(policy.errors)
    lines = _Lines(policy.newline == "normalize")
    offset = 0  # bytes of the file read before the current chunk
    at_start = True  # no character decoded yet: a byte-order mark may still come
    for chunk in _read_chunks(path, chunk_bytes):
        if offset == 0 and not wide:
            _refuse_wide_bom(path, chunk)
        if not wide and b"\0" in chunk:
            nul = chunk.index(b"\0")
            line = lines.line_at(_decode_prefix(codec, decoder.getstate(), chunk[:nul]))
            raise CharRNNError(
                f"{path} looks like a binary file: it has a NUL byte at byte offset {offset + nul:,} "
                f"(line {line})"
            )
        text = _decode(path, codec, decoder, chunk, offset, lines)
        if wide and "\0" in text:
            line = lines.line_at(text[: text.index("\0")])
            raise CharRNNError(
                f"{path} looks like a binary file: it has a NUL character (U+0000) on line {line}"
            )
        if at_start and text:
            text = _strip_bom(path, codec, text)
            at_start = False
        offset += len(chunk)
        if on_read is not None:
            on_read(len(chunk))
        text = lines.feed(text, final=False)
        if text:
            yield text
    text = lines.feed(_decode(path, codec, decoder, b"", offset, lines, final=True), final=True)
    if text:
        yield text


class _Lines:
    """Newline normalization across chunk boundaries, and a count of the line breaks passed
    (for error messages), with CRLF, lone CR and LF each one break under either policy.

    A chunk ending in CR is held back: the next chunk may begin with the LF of a CRLF."""

    def __init__(self, normalize: bool):
        self.normalize = normalize
        self.held_cr = False
        self.breaks = 0

    def feed(self, text: str, final: bool) -> str:
        if self.held_cr:
            text = "\r" + text
        self.held_cr = not final and text.endswith("\r")
        if self.held_cr:
            text = text[:-1]
        if "\r" not in text:  # the common case: one scan for CR and one count, no copies
            self.breaks += text.count("\n")
            return text
        self.breaks += _count_breaks(text)
        return text.replace("\r\n", "\n").replace("\r", "\n") if self.normalize else text

    def line_at(self, prefix: str) -> int:
        """1-based line number of the character just after `prefix`, the decoded text between
        the last fed chunk and the point of interest."""
        return 1 + self.breaks + _count_breaks(("\r" if self.held_cr else "") + prefix)


def _count_breaks(text: str) -> int:
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def _checked_codec(path, policy: TextPolicy) -> str:
    """The codec's canonical name, after refusing policies that cannot read text."""
    if policy.newline not in NEWLINE_POLICIES:
        raise CharRNNError(
            f"cannot read {path}: unknown newline policy {policy.newline!r} (use normalize or keep)"
        )
    try:
        info = codecs.lookup(policy.encoding)
    except LookupError:
        raise CharRNNError(f"cannot read {path}: unknown encoding {policy.encoding!r}") from None
    # codecs such as base64 and zlib are registered too, but decode bytes to bytes
    if not getattr(info, "_is_text_encoding", True):
        raise CharRNNError(f"cannot read {path}: {policy.encoding!r} is not a text encoding")
    try:
        codecs.lookup_error(policy.errors)
    except LookupError:
        raise CharRNNError(f"cannot read {path}: unknown error handler {policy.errors!r}") from None
    if policy.errors in _REFUSED_ERRORS:
        raise CharRNNError(
            f"cannot read {path}: --errors {policy.errors} yields lone surrogates, which are not "
            "characters (use replace or ignore)"
        )
    return info.name


def _read_chunks(path, chunk_bytes: int) -> Iterator[bytes]:
    """The file's bytes; the first chunk holds at least 4 (if the file does), enough to
    recognise any byte-order mark."""
    try:
        with open(path, "rb") as f:
            chunk = f.read(max(chunk_bytes, 4))
            while chunk:
                yield chunk
                chunk = f.read(chunk_bytes)
    except OSError as e:
        raise CharRNNError(f"cannot read {path}: {_os_reason(e)}") from None


def _os_reason(e: OSError) -> str:
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, IsADirectoryError):
        return "it is a directory, not a file"
    if isinstance(e, PermissionError):
        return "permission denied"
    return e.strerror or str(e)


def _refuse_wide_bom(path, head: bytes) -> None:
    for bom, family, order in _BOMS:
        if head.startswith(bom):
            raise CharRNNError(
                f"{path} looks like {family} (it starts with a {order} byte-order mark); re-save it as "
                f"UTF-8 or pass --encoding {family.lower()}"
            )


def _decode(path, codec: str, decoder, chunk: bytes, offset: int, lines: _Lines, final: bool = False) -> str:
    state = decoder.getstate()
    try:
        return decoder.decode(chunk, final)
    except UnicodeDecodeError as e:
        # e.object is the decoder's pending bytes from earlier chunks followed by this chunk
        pending = len(state[0])
        line = lines.line_at(_decode_prefix(codec, state, chunk[: max(0, e.start - pending)]))
        raise CharRNNError(
            f"{path} is not valid {codec}: byte 0x{e.object[e.start]:02X} at byte offset "
            f"{offset - pending + e.start:,} (line {line}): {e.reason}; if the file is in another "
            "encoding pass it with --encoding (e.g. --encoding latin-1), or use --errors replace"
        ) from None
    except UnicodeError as e:  # the utf-16 and utf-32 decoders' "stream does not start with BOM"
        hint = f"; pass --encoding {codec}-le or --encoding {codec}-be" if codec in _BOM_AWARE[1:] else ""
        raise CharRNNError(f"{path} cannot be decoded as {codec}: {e}{hint}") from None


def _decode_prefix(codec: str, state: tuple, prefix: bytes) -> str:
    """The text of `prefix` for a decoder in `state` (only to count lines, so leniently)."""
    decoder = codecs.getincrementaldecoder(codec)("replace")
    decoder.setstate(state)
    return decoder.decode(prefix)


def _strip_bom(path, codec: str, text: str) -> str:
    if text.startswith("\ufeff") and codec not in _BOM_AWARE:
        return text[1:]
    if text.startswith("\ufffe") and codec.endswith(("-le", "-be")):
        other = codec.replace("-le", "-be") if codec.endswith("-le") else codec.replace("-be", "-le")
        raise CharRNNError(
            f"{path} starts with a byte-order mark for the other byte order than {codec}; "
            f"pass --encoding {other} (or --encoding {codec[:6]}, which reads the mark)"
        )
    return text
