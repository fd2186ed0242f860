"""Loading a corpus (two streaming passes, the memory-mapped path, fingerprints, unknown
characters), the train/validation split, the BPTT window layout and validation windows."""

from __future__ import annotations

import numpy as np
import pytest

from charrnn import data
from charrnn.data import Batches, Corpus, eval_windows, fit_batch_size, load_corpus, split_train_val
from charrnn.errors import CharRNNError
from charrnn.text import TextPolicy
from charrnn.vocab import Vocab

TEXT = "The quick brown fox 🦊 jumps over the lazy dog.\r\n敏捷的棕色狐狸跳过了懒狗。\n" * 40


def write(tmp_path, name: str, text: str | bytes):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def corpus_error(*args, **kwargs) -> str:
    with pytest.raises(CharRNNError) as info:
        load_corpus(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_load_round_trips_multibyte_text(tmp_path):
    path = write(tmp_path, "a.txt", TEXT)
    corpus = load_corpus([path])
    expected = TEXT.replace("\r\n", "\n")
    assert isinstance(corpus, Corpus) and corpus.names == [str(path)]
    assert corpus.vocab.chars == sorted(set(expected))
    assert corpus.ids.dtype == np.uint8 and corpus.num_chars == len(expected)  # one byte per id
    assert corpus.vocab.decode(corpus.ids) == expected
    assert corpus.policy == TextPolicy() and corpus.skipped == 0
    assert len(corpus.fingerprint) == 64


def test_files_are_concatenated_in_order(tmp_path):
    a, b = write(tmp_path, "a.txt", "first\n"), write(tmp_path, "b.txt", "second 😀\n")
    corpus = load_corpus([a, b])
    assert corpus.vocab.decode(corpus.ids) == "first\nsecond 😀\n"
    assert corpus.names == [str(a), str(b)]
    alone = load_corpus(str(a))  # one path, not in a list
    assert alone.vocab.decode(alone.ids) == "first\n" and alone.names == [str(a)]


def test_chunk_size_changes_nothing(tmp_path):
    path = write(tmp_path, "a.txt", TEXT)
    whole = load_corpus([path])
    for chunk_bytes in (1, 5, 64):
        chunked = load_corpus([path], chunk_bytes=chunk_bytes)
        assert np.array_equal(chunked.ids, whole.ids) and chunked.fingerprint == whole.fingerprint


@pytest.mark.parametrize("use_cache_dir", [True, False])
def test_large_corpus_is_memory_mapped_and_leaves_no_files(tmp_path, monkeypatch, use_cache_dir):
    path = write(tmp_path, "big.txt", TEXT * 5)
    in_memory = load_corpus([path])
    monkeypatch.setattr(data, "MEMMAP_THRESHOLD", 100)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    cache = tmp_path / "cache" if use_cache_dir else None
    corpus = load_corpus([path], cache_dir=cache, chunk_bytes=97)
    assert isinstance(corpus.ids, np.memmap) and not corpus.ids.flags.writeable
    assert corpus.ids.dtype == np.uint8 and np.array_equal(corpus.ids, in_memory.ids)
    assert corpus.fingerprint == in_memory.fingerprint
    # the scratch file is unlinked once mapped: the map still reads it, nothing is left on disk
    assert list(scratch.iterdir()) == [] and (not use_cache_dir or list(cache.iterdir()) == [])
    train, val = split_train_val(corpus.ids, 0.1)
    x, y = Batches(train, 4, 16).window(3)
    assert np.array_equal(x[:, 1:], y[:, :-1])
    assert corpus.vocab.decode(np.asarray(val)) == in_memory.vocab.decode(in_memory.ids[len(train) :])


@pytest.mark.parametrize("second_pass", ["abcdefghijklm", "abcdefghijk", "abcdefghijkz"])
@pytest.mark.parametrize("use_cache_dir", [True, False])
def test_a_file_changed_between_the_passes_is_refused_and_leaves_no_files(
    tmp_path, monkeypatch, second_pass, use_cache_dir
):
    monkeypatch.setattr(data, "MEMMAP_THRESHOLD", 10)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    passes = iter(["abcdefghijkl", second_pass])  # grown, shrunk, or a character not seen in pass 1
    monkeypatch.setattr(data, "iter_text", lambda *args: iter([next(passes)]))
    cache = tmp_path / "cache" if use_cache_dir else None
    assert "a.txt changed while" in corpus_error(["a.txt"], cache_dir=cache)
    assert list(scratch.iterdir()) == [] and (not use_cache_dir or list(cache.iterdir()) == [])


def test_unwritable_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MEMMAP_THRESHOLD", 10)
    blocker = write(tmp_path, "file", "x")
    path = write(tmp_path, "a.txt", TEXT)
    assert "cannot create the corpus scratch file in" in corpus_error([path], cache_dir=blocker / "sub")


def test_fingerprint_follows_the_text_and_the_vocabulary(tmp_path):
    a = load_corpus([write(tmp_path, "a.txt", TEXT)])
    assert load_corpus([write(tmp_path, "b.txt", TEXT)]).fingerprint == a.fingerprint  # names do not count
    changed = TEXT[:100] + ("x" if TEXT[100] != "x" else "y") + TEXT[101:]
    assert load_corpus([write(tmp_path, "c.txt", changed)]).fingerprint != a.fingerprint
    assert load_corpus([write(tmp_path, "d.txt", TEXT + " ")]).fingerprint != a.fingerprint
    wider = Vocab.from_text(TEXT + "~")
    assert load_corpus([tmp_path / "a.txt"], vocab=wider).fingerprint != a.fingerprint


def test_given_vocabulary_and_unknown_characters(tmp_path):
    path = write(tmp_path, "a.txt", "abc\nab😀\nabc😀z\n")
    vocab = Vocab.from_text("abc\n")
    message = corpus_error([path], vocab=vocab)
    assert message.startswith(f"{path}: 3 character(s) not in the model's vocabulary: ")
    assert "'😀' (U+1F600) 2 times, first at char 6 (line 2)" in message and "'z' (U+007A)" in message
    assert "--unknown skip" in message
    corpus = load_corpus([path], vocab=vocab, unknown="skip", chunk_bytes=3)
    assert corpus.skipped == 3 and corpus.vocab is vocab
    assert vocab.decode(corpus.ids) == "abc\nab\nabc\n"
    assert "--unknown skip" in corpus_error([path], vocab=vocab, chunk_bytes=2)  # positions across chunks
    alien = write(tmp_path, "b.txt", "😀xyz zz")
    assert "none of the 7 characters" in corpus_error([alien], vocab=vocab, unknown="skip")


def test_int32_ids_for_vocabularies_beyond_uint16(tmp_path):
    text = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 70_000) if not 0xD800 <= c <= 0xDFFF)
    corpus = load_corpus([write(tmp_path, "wide.txt", text)])
    assert corpus.ids.dtype == np.int32 and corpus.vocab.decode(corpus.ids) == text


def test_empty_whitespace_and_single_character_corpora(tmp_path):
    empty = write(tmp_path, "empty.txt", "")
    assert corpus_error([empty]) == f"no text in {empty}: it is empty"
    assert "they are all empty" in corpus_error([empty, write(tmp_path, "bom.txt", b"\xef\xbb\xbf")])
    assert load_corpus([empty, write(tmp_path, "a.txt", "ab")]).num_chars == 2
    blank = load_corpus([write(tmp_path, "ws.txt", " \r\n\t\n")])
    assert blank.vocab.chars == ["\t", "\n", " "] and blank.num_chars == 4
    one = load_corpus([write(tmp_path, "one.txt", "aaaa")])
    assert len(one.vocab) == 1 and one.ids.tolist() == [0, 0, 0, 0]
    assert corpus_error([]) == "no corpus files given"


def test_text_errors_name_the_file(tmp_path):
    bad = write(tmp_path, "bad.txt", b"ok\n\xff")
    assert "bad.txt is not valid utf-8: byte 0xFF at byte offset 3 (line 2)" in corpus_error([bad])
    assert corpus_error([tmp_path / "missing.txt"]).endswith("missing.txt: no such file")
    latin = load_corpus([bad], TextPolicy(encoding="latin-1"))
    assert latin.vocab.decode(latin.ids) == "ok\nÿ" and latin.policy.encoding == "latin-1"


def test_split_train_val():
    ids = np.arange(1000)
    train, val = split_train_val(ids, 0.1)
    assert len(train) == 900 and len(val) == 100
    assert np.array_equal(np.concatenate([train, val]), ids) and np.shares_memory(train, ids)
    train, val = split_train_val(ids, 0.0)
    assert len(train) == 1000 and len(val) == 0


@pytest.mark.parametrize(
    "n, frac, expected",
    [
        (15, 0.1, "validation split is too small: 0.1 of 15 characters is 1"),
        (10, 0.9, "training split is too small"),
    ],
)
def test_split_refuses_splits_too_small_to_use(n, frac, expected):
    with pytest.raises(CharRNNError, match=expected):
        split_train_val(np.arange(n), frac)


def test_split_refuses_a_fraction_outside_0_1():
    with pytest.raises(ValueError):
        split_train_val(np.arange(10), 1.0)


def test_batches_layout_and_stream_continuity():
    ids = np.arange(1001)  # values are positions, so the layout can be read off the windows
    batches = Batches(ids, 4, 10)
    assert batches.stream_len == 250 and batches.windows_per_epoch == 25
    windows = [batches.window(j) for j in range(batches.windows_per_epoch)]
    for x, y in windows:
        assert x.shape == y.shape == (4, 10) and x.dtype == np.int64
        assert np.array_equal(y, x + 1)  # the target is the next character
    for (_, y0), (x1, _) in zip(windows, windows[1:]):
        assert np.array_equal(x1[:, 0], y0[:, -1])  # window j + 1 starts where window j ended
    rows = np.concatenate([x for x, _ in windows], axis=1)
    assert np.array_equal(rows, np.arange(1000).reshape(4, 250))  # contiguous streams
    assert np.array_equal(batches.window(25)[0], windows[0][0])  # j wraps around the epoch
    assert np.array_equal(batches.window(27)[1], windows[2][1])


def test_batches_read_uint16_ids_as_int64():
    ids = np.arange(65536, dtype=np.uint16)
    x, y = Batches(ids, 2, 8).window(0)
    assert x.dtype == np.int64 and x[1, 0] == 32767 and y[1, 0] == 32768


def test_too_short_for_one_window_suggests_settings_that_fit():
    with pytest.raises(CharRNNError) as info:
        Batches(np.zeros(400, np.uint16), 50, 100)
    message = str(info.value)
    assert "it has 400 characters, but --batch-size 50 x --seq-len 100 needs at least 5,001" in message
    assert "try --batch-size 3 --seq-len 100 or --batch-size 50 --seq-len 7" in message
    Batches(np.zeros(400, np.uint16), 3, 100)
    Batches(np.zeros(400, np.uint16), 50, 7)


@pytest.mark.parametrize("n, batch_size, seq_len", [(5, 10, 10), (30, 4, 50), (60, 40, 8), (2, 3, 3)])
def test_every_suggestion_fits(n, batch_size, seq_len):
    with pytest.raises(CharRNNError) as info:
        Batches(np.zeros(n), batch_size, seq_len)
    suggestions = str(info.value).split("try ")[1].split(" (or")[0].split(" or ")
    for suggestion in suggestions:
        words = suggestion.split()
        Batches(np.zeros(n), int(words[1]), int(words[3]))


def test_no_characters_at_all():
    with pytest.raises(CharRNNError, match="it has 1 characters.*give at least 2 characters"):
        Batches(np.zeros(1), 1, 1)


def test_fit_batch_size():
    assert fit_batch_size(1001, 10, 64) == 64
    assert fit_batch_size(101, 10, 64) == 10
    assert fit_batch_size(11, 10, 64) == 1
    with pytest.raises(CharRNNError, match="too few for one window of --seq-len 10.*at most 9"):
        fit_batch_size(10, 10, 64)


@pytest.mark.parametrize(
    "n, seq_len, max_streams",
    [(1001, 10, 4), (1000, 10, 7), (57, 10, 64), (12, 50, 8), (2, 5, 3), (500, 3, 200)],
)
def test_eval_windows_predict_every_character_once_with_contiguous_streams(n, seq_len, max_streams):
    ids = np.arange(n)
    windows = list(eval_windows(ids, seq_len, max_streams))
    inputs = np.concatenate([x.ravel() for x, _ in windows])
    assert np.array_equal(np.sort(inputs), np.arange(n - 1))  # every position predicted exactly once
    for x, y in windows:
        assert np.array_equal(y, x + 1) and x.shape[0] <= max_streams and x.shape[1] <= seq_len
    for (x0, y0), (x1, _) in zip(windows, windows[1:]):
        if x0.shape[0] == x1.shape[0]:
            assert np.array_equal(x1[:, 0], y0[:, -1])  # the state carries across windows
    assert windows[0][0].shape[0] == min(max_streams, max(1, (n - 1) // seq_len))


def test_eval_windows_of_too_little_text():
    assert list(eval_windows(np.arange(1), 10, 4)) == []
    assert list(eval_windows(np.arange(0), 10, 4)) == []


def test_lone_surrogates_cannot_enter_a_vocabulary(tmp_path):
    path = write(tmp_path, "a.txt", b"ab+2AA-c")  # UTF-7 for "ab", a lone U+D800, "c"
    assert "to lone surrogates" in corpus_error([path], TextPolicy(encoding="utf-7"))
