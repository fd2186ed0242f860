"""The vocabulary: validation of code points, vectorised encode/decode round trips (astral
characters, CJK, vocabularies beyond uint16), and the unknown-character message."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from charrnn.errors import CharRNNError
from charrnn.vocab import UNKNOWN_POLICIES, Vocab, describe_unknown, to_codepoints

TEXT = "Hello, 世界! 😀 naïve\n中文 \U0001f389\U0001d11e\n"
# any character but the surrogates, which are not characters on their own
CHARS = st.characters(exclude_categories=("Cs",))


def test_from_text_sorts_distinct_code_points():
    vocab = Vocab.from_text(TEXT)
    assert vocab.chars == sorted(set(TEXT))
    assert vocab.codepoints.dtype == np.int32 and vocab.codepoints.tolist() == sorted(map(ord, set(TEXT)))
    assert all(vocab.index[ch] == i for i, ch in enumerate(vocab.chars))
    assert len(vocab) == len(set(TEXT)) and "😀" in vocab and "x" not in vocab


def test_astral_and_cjk_round_trip():
    vocab = Vocab.from_text(TEXT)
    ids, skipped = vocab.encode(TEXT)
    assert skipped == 0 and ids.dtype == np.uint16 and len(ids) == len(TEXT)
    assert vocab.decode(ids) == TEXT
    assert vocab.decode(ids.reshape(1, -1).astype(np.int64)) == TEXT  # any integer array, any shape
    assert vocab.decode([]) == ""


def test_vocabulary_beyond_uint16_uses_int32_ids():
    cps = [c for c in range(0x20, 0x20 + 70_000) if not 0xD800 <= c <= 0xDFFF]
    text = "".join(map(chr, cps[::-1]))
    vocab = Vocab.from_text(text)
    assert len(vocab) > 65536 and vocab.id_dtype() == np.int32
    ids, _ = vocab.encode(text)
    assert ids.dtype == np.int32 and vocab.decode(ids) == text
    assert Vocab(np.arange(0xE000, 0xE000 + 65536)).id_dtype() == np.uint16


def test_codepoints_are_a_read_only_copy():
    source = np.array([10, 65, 97])
    vocab = Vocab(source)
    source[0] = 0
    assert vocab.codepoints.tolist() == [10, 65, 97]
    with pytest.raises(ValueError):
        vocab.codepoints[0] = 1


@pytest.mark.parametrize(
    "codepoints, expected",
    [
        ([65, 10, 97], "strictly increasing"),
        ([65, 65], "strictly increasing"),
        ([-1, 65], r"0\.\.0x10FFFF"),
        ([65, 0x110000], r"0\.\.0x10FFFF"),
        ([65, 0xD800], "U\\+D800 is a surrogate"),
        ([0xDFFF], "U\\+DFFF is a surrogate"),
        ([], "non-empty"),
        ([[65, 66]], "1-d"),
        ([65.0, 66.0], "integers"),
    ],
)
def test_invalid_code_points_are_refused(codepoints, expected):
    with pytest.raises(ValueError, match=expected):
        Vocab(codepoints)


def test_extreme_code_points_are_valid():
    vocab = Vocab([0, 0xD7FF, 0xE000, 0x10FFFF])
    assert vocab.decode([0, 1, 2, 3]) == "\0\ud7ff\ue000\U0010ffff"


def test_unknown_characters_are_named_with_code_point_position_and_count():
    vocab = Vocab.from_text("abc \n")
    with pytest.raises(CharRNNError) as info:
        vocab.encode("ab 😀 cx\nxx")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("4 character(s) not in the model's vocabulary: ")
    assert "'😀' (U+1F600) at char 3" in message
    assert "'x' (U+0078) 3 times, first at char 6" in message
    assert message.index("U+1F600") < message.index("U+0078")  # in order of first appearance
    assert message.endswith("(use --unknown skip to leave them out)")


def test_many_distinct_unknown_characters_are_summarised():
    vocab = Vocab.from_text("a")
    with pytest.raises(CharRNNError, match="; and 3 more distinct"):
        vocab.encode("a" + "bcdefghi")


def test_skip_leaves_unknown_characters_out():
    vocab = Vocab.from_text("abc")
    ids, skipped = vocab.encode("a😀b中c😀", unknown="skip")
    assert skipped == 3 and vocab.decode(ids) == "abc" and ids.dtype == np.uint16
    assert "skip" in UNKNOWN_POLICIES and "error" in UNKNOWN_POLICIES
    with pytest.raises(ValueError, match="unknown must be one of"):
        vocab.encode("a", unknown="ignore")


def test_lone_surrogates_are_unknown_not_a_crash():
    vocab = Vocab.from_text("ab")
    with pytest.raises(CharRNNError, match="U\\+DC80"):
        vocab.encode("a\udc80b")
    assert vocab.encode("a\udc80b", unknown="skip")[1] == 1


def test_lookup_marks_unknown_code_points():
    vocab = Vocab([10, 65, 0x1F600])
    cps = np.array([0, 10, 65, 66, 0x1F600, 0x1F601, 0x10FFFF])
    assert vocab.lookup(cps).tolist() == [-1, 0, 1, -1, 2, -1, -1]
    assert to_codepoints("A😀").tolist() == [65, 0x1F600]


@pytest.mark.parametrize("ids", [[0, 3], [-1], [0.0]])
def test_decode_refuses_invalid_ids(ids):
    with pytest.raises(ValueError):
        Vocab.from_text("abc").decode(ids)


def test_describe_unknown():
    message = describe_unknown("aXbY\nX", Vocab.from_text("ab\n").index)
    assert message.startswith("3 character(s) not in the model's vocabulary: ")
    assert "'X' (U+0058) 2 times, first at char 1; 'Y' (U+0059) at char 3" in message


@given(st.text(CHARS, min_size=1))
def test_encode_decode_round_trip(text):
    vocab = Vocab.from_text(text)
    ids, skipped = vocab.encode(text)
    assert skipped == 0 and len(ids) == len(text)
    assert vocab.decode(ids) == text


@given(st.text(CHARS, min_size=1), st.text(CHARS))
def test_skip_keeps_exactly_the_known_characters(train, text):
    vocab = Vocab.from_text(train)
    ids, skipped = vocab.encode(text, unknown="skip")
    kept = "".join(ch for ch in text if ch in vocab)
    assert vocab.decode(ids) == kept and skipped == len(text) - len(kept)
