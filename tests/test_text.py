"""Reading text files: round trips of multi-byte text at every chunk size, byte-order marks,
newline normalization across chunk boundaries, binary detection, and one-line errors that
name the file, the byte offset and the line."""

from __future__ import annotations

import codecs
import errno
import os

import pytest

from charrnn.errors import CharRNNError
from charrnn.text import DEFAULT_POLICY, TextPolicy, iter_text, normalize_newlines, read_text

# two-, three- and four-byte UTF-8 sequences, a combining accent, and a byte-order mark in the middle
MIXED = "naïve café\n中文字符 日本語\n😀🎉 \U0001d11e ok\ne\u0301 \ufeff end\n"


def write(tmp_path, data: bytes, name: str = "t.txt"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def error_of(path, policy=DEFAULT_POLICY, chunk_bytes=1 << 20) -> str:
    with pytest.raises(CharRNNError) as info:
        read_text(path, policy, chunk_bytes)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 5, 7, 64, 1 << 20])
def test_multibyte_round_trip_at_every_chunk_size(tmp_path, chunk_bytes):
    path = write(tmp_path, MIXED.encode("utf-8"))
    assert read_text(path, chunk_bytes=chunk_bytes) == MIXED
    chunks = list(iter_text(path, chunk_bytes=chunk_bytes))
    assert "".join(chunks) == MIXED and all(chunks)
    if chunk_bytes < 8:
        assert len(chunks) >= 10  # streamed, not read whole


def test_latin1_byte_in_utf8_names_offset_and_line(tmp_path):
    data = b"line one\nline two\ncaf\xe9 au lait\n"
    path = write(tmp_path, data)
    message = error_of(path)
    bad = data.index(b"\xe9")
    assert "not valid utf-8" in message
    assert f"byte 0xE9 at byte offset {bad} (line 3)" in message
    assert "--encoding" in message and "--errors replace" in message
    assert read_text(path, TextPolicy(encoding="latin-1")).endswith("café au lait\n")
    assert "caf\ufffd au lait" in read_text(path, TextPolicy(errors="replace"))


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 4, 11])
def test_decode_error_offset_is_exact_when_the_bad_sequence_straddles_chunks(tmp_path, chunk_bytes):
    # a valid lead byte whose continuation is missing: the decoder holds it back across reads
    data = "é\r\nß\rx".encode() + b"\xc3(" + b"rest"
    bad = data.index(b"\xc3(")
    message = error_of(write(tmp_path, data), chunk_bytes=chunk_bytes)
    assert f"byte 0xC3 at byte offset {bad} (line 3)" in message


def test_file_ending_inside_a_character(tmp_path):
    data = b"ab\n" + "中".encode()[:2]
    message = error_of(write(tmp_path, data))
    assert "byte offset 3 (line 2)" in message and "unexpected end of data" in message


@pytest.mark.parametrize(
    "bom, family, codec",
    [
        (codecs.BOM_UTF16_LE, "UTF-16", "utf-16-le"),
        (codecs.BOM_UTF16_BE, "UTF-16", "utf-16-be"),
        (codecs.BOM_UTF32_LE, "UTF-32", "utf-32-le"),
        (codecs.BOM_UTF32_BE, "UTF-32", "utf-32-be"),
    ],
)
def test_utf16_and_utf32_byte_order_marks_are_recognised(tmp_path, bom, family, codec):
    path = write(tmp_path, bom + MIXED.encode(codec))
    message = error_of(path)
    assert f"looks like {family}" in message and f"--encoding {family.lower()}" in message
    assert "re-save it as UTF-8" in message
    for chunk_bytes in (1, 3, 1 << 20):  # code units and surrogate pairs split across reads
        assert read_text(path, TextPolicy(encoding=family.lower()), chunk_bytes) == MIXED
    assert read_text(path, TextPolicy(encoding=codec)) == MIXED  # the mark is dropped


def test_reversed_byte_order_mark(tmp_path):
    path = write(tmp_path, codecs.BOM_UTF16_LE + "hi\n".encode("utf-16-le"))
    message = error_of(path, TextPolicy(encoding="utf-16-be"))
    assert "other byte order" in message and "--encoding utf-16-le" in message


def test_utf16_without_a_byte_order_mark_needs_an_explicit_byte_order(tmp_path):
    path = write(tmp_path, "hi\n".encode("utf-16-le"))
    assert "--encoding utf-16-le or --encoding utf-16-be" in error_of(path, TextPolicy(encoding="utf-16"))
    assert read_text(path, TextPolicy(encoding="utf-16-le")) == "hi\n"


@pytest.mark.parametrize("chunk_bytes", [1, 2, 1 << 20])
def test_utf8_byte_order_mark_is_dropped(tmp_path, chunk_bytes):
    path = write(tmp_path, codecs.BOM_UTF8 + MIXED.encode())
    assert read_text(path, chunk_bytes=chunk_bytes) == MIXED  # the U+FEFF inside MIXED stays
    assert read_text(path, TextPolicy(encoding="utf-8-sig"), chunk_bytes) == MIXED


def test_newlines(tmp_path):
    path = write(tmp_path, b"a\r\nb\rc\nd\r\r\ne\r")
    assert read_text(path) == "a\nb\nc\nd\n\ne\n"
    assert read_text(path, TextPolicy(newline="keep")) == "a\r\nb\rc\nd\r\r\ne\r"
    assert normalize_newlines("x\r\ny\rz", TextPolicy()) == "x\ny\nz"
    assert normalize_newlines("x\r\ny\rz", TextPolicy(newline="keep")) == "x\r\ny\rz"


def test_only_crlf_and_cr_are_line_ends(tmp_path):
    # VT, FF, FS, GS, RS, NEL and U+2028/9 end lines for str.splitlines, but are ordinary
    # characters here, under either policy (docs/checkpoint-format.md, "Reading text")
    others = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
    path = write(tmp_path, f"a{others}b\r\n".encode())
    assert read_text(path) == f"a{others}b\n"
    assert read_text(path, TextPolicy(newline="keep")) == f"a{others}b\r\n"


def test_only_one_byte_order_mark_is_dropped(tmp_path):
    path = write(tmp_path, codecs.BOM_UTF8 * 2 + b"a")
    assert read_text(path) == "\ufeffa"
    assert read_text(path, TextPolicy(encoding="utf-8-sig")) == "\ufeffa"  # the codec drops the first


def test_crlf_split_across_chunks_is_one_newline(tmp_path):
    data = "ab\r\ncd\r\n\r\n中\r\n\r".encode()
    path = write(tmp_path, data)
    for chunk_bytes in range(1, len(data) + 1):  # every possible place for a chunk boundary
        chunks = list(iter_text(path, chunk_bytes=chunk_bytes))
        assert "".join(chunks) == "ab\ncd\n\n中\n\n", chunk_bytes
        assert not any(c.endswith("\r") for c in chunks)
        assert "".join(iter_text(path, TextPolicy(newline="keep"), chunk_bytes)) == data.decode()
    assert read_text(path, chunk_bytes=3) == "ab\ncd\n\n中\n\n"  # the chunk "ab\r" ends in CR


def test_line_numbers_count_every_kind_of_line_break(tmp_path):
    message = error_of(write(tmp_path, b"a\rb\r\nc\nd\r\r\xff"), chunk_bytes=2)
    assert "byte offset 10 (line 6)" in message


@pytest.mark.parametrize("chunk_bytes", [1, 4, 1 << 20])
def test_nul_byte_means_binary(tmp_path, chunk_bytes):
    data = b"text\nmore text\n" * 100 + b"x\x00y"
    nul = data.index(b"\0")
    message = error_of(write(tmp_path, data), chunk_bytes=chunk_bytes)
    assert f"looks like a binary file: it has a NUL byte at byte offset {nul:,} (line 201)" in message


def test_binary_file_is_reported_as_binary_not_as_bad_utf8(tmp_path):
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
    assert "looks like a binary file" in error_of(write(tmp_path, png))


def test_nul_character_in_utf16_means_binary(tmp_path):
    path = write(tmp_path, codecs.BOM_UTF16_LE + "ab\ncd\0".encode("utf-16-le"))
    assert "NUL character (U+0000) on line 2" in error_of(path, TextPolicy(encoding="utf-16"))


def test_empty_and_whitespace_only_files(tmp_path):
    assert read_text(write(tmp_path, b"", "empty.txt")) == ""
    assert list(iter_text(write(tmp_path, b"", "empty.txt"))) == []
    assert read_text(write(tmp_path, codecs.BOM_UTF8, "bom.txt")) == ""
    assert read_text(write(tmp_path, b" \r\n\t\n", "ws.txt")) == " \n\t\n"


def test_missing_file_and_directory(tmp_path):
    assert error_of(tmp_path / "nope.txt").endswith("nope.txt: no such file")
    assert error_of(tmp_path).endswith("it is a directory, not a file")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    path = write(tmp_path, b"secret")
    path.chmod(0)
    try:
        assert error_of(path).endswith("permission denied")
    finally:
        path.chmod(0o600)


@pytest.mark.parametrize(
    "error, expected",
    [
        (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
        (OSError(errno.EIO, "Input/output error"), "Input/output error"),
    ],
)
def test_os_errors_become_one_line_messages(tmp_path, monkeypatch, error, expected):
    # runs as root too, where chmod cannot make a file unreadable
    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr("charrnn.text.open", refuse, raising=False)
    assert error_of(write(tmp_path, b"abc")).endswith(f"t.txt: {expected}")


@pytest.mark.parametrize(
    "policy, expected",
    [
        (TextPolicy(encoding="no-such-codec"), "unknown encoding 'no-such-codec'"),
        (TextPolicy(encoding="base64"), "'base64' is not a text encoding"),
        (TextPolicy(errors="no-such-handler"), "unknown error handler"),
        (TextPolicy(errors="surrogateescape"), "lone surrogates"),
        (TextPolicy(newline="crlf"), "unknown newline policy 'crlf'"),
    ],
)
def test_policies_that_cannot_read_text_are_refused(tmp_path, policy, expected):
    assert expected in error_of(write(tmp_path, b"abc"), policy)


def test_chunk_bytes_must_be_positive(tmp_path):
    with pytest.raises(ValueError):
        next(iter_text(write(tmp_path, b"abc"), chunk_bytes=0))


def test_policy_dict_round_trip():
    policy = TextPolicy(encoding="latin-1", errors="replace", newline="keep")
    assert TextPolicy.from_dict(policy.to_dict()) == policy
    assert TextPolicy().to_dict() == {"encoding": "utf-8", "errors": "strict", "newline": "normalize"}
