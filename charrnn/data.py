"""The corpus as one array of character ids, its train/validation split, and the windows that
truncated backpropagation through time reads from it.

Loading streams each file twice through `iter_text`, so a corpus is never held as one Python
string: the first pass learns the vocabulary (or checks the text against a given one) and the
number of characters, the second encodes chunk by chunk into an array of exactly that size
(one byte per character for vocabularies of up to 256). Above MEMMAP_THRESHOLD characters that
array is a read-only memory map of a scratch file, so memory stays bounded whatever the corpus
size; a training run keeps that file in its run directory (`keep_at`) so that `--resume` maps
it again instead of re-reading the text, after checking each file's size and a hash of
samples of its bytes (`file_signature`).

Several files are documents: each one that does not end with a newline gets one before the
next begins, so one document's last line never runs into the next one's first.

The window layout is char-rnn's and torch-rnn's: the ids are cut into batch_size contiguous
streams, and window j holds the j-th seq_len slice of every stream, so window j + 1 continues
window j row by row and the hidden state can be carried between them."""

from __future__ import annotations

import glob
import hashlib
import os
import secrets
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import CharRNNError
from .text import DEFAULT_CHUNK_BYTES, DEFAULT_POLICY, TextPolicy, iter_text
from .vocab import MAX_CODEPOINT, UNKNOWN_POLICIES, UnknownTally, Vocab, to_codepoints

MEMMAP_THRESHOLD = 64 * 2**20  # characters; larger corpora are encoded into a memory-mapped file
_FINGERPRINT_TAG = b"charrnn corpus v1\0"
_LF = 10
_NEWLINE = np.array([_LF], dtype=np.uint32)
# file_signature reads the head, the tail and SIGNATURE_BLOCKS blocks spread between them
SIGNATURE_EDGE_BYTES = 1 << 20
SIGNATURE_BLOCKS = 16
SIGNATURE_BLOCK_BYTES = 1 << 16
_SURROGATES = slice(0xD800, 0xE000)


@dataclass
class Corpus:
    """The encoded concatenation of the corpus files, with what is needed to reproduce it:
    the vocabulary, the text policy, the file names, and a fingerprint of ids and vocabulary
    that lets a resumed run detect a changed corpus."""

    ids: np.ndarray  # uint16 for vocabularies up to 65536 characters, else int32; maybe a np.memmap
    vocab: Vocab
    policy: TextPolicy
    names: list[str]
    fingerprint: str  # sha256 hex
    skipped: int = 0  # characters left out under unknown="skip"
    files: list[dict] = field(default_factory=list)  # file_signature of each file, in order

    @property
    def num_chars(self) -> int:
        return len(self.ids)


def expand_paths(args: Sequence) -> list[Path]:
    """The corpus files that command-line arguments name, in order: a file as given; a
    directory as every non-hidden file below it, sorted by path; a glob pattern that the shell
    left unexpanded (quoted, or on Windows) as its sorted matches. CharRNNError for an argument
    that names nothing, an empty directory or a pattern that matches no file."""
    files: list[Path] = []
    for arg in map(str, args):
        path = Path(arg)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise CharRNNError(f"the directory {arg} holds no files to train on")
            files += found
        elif path.exists() or not glob.has_magic(arg):
            files.append(path)
        else:
            found = sorted(Path(p) for p in glob.glob(arg, recursive=True) if os.path.isfile(p))
            if not found:
                raise CharRNNError(f"no file matches {arg}")
            files += found
    missing = [str(p) for p in files if not p.exists()]
    if missing:
        raise CharRNNError(f"no such file: {', '.join(missing)}")
    return files


def storage_dtype(vocab: Vocab) -> np.dtype:
    """The dtype ids are held in: one byte when the vocabulary allows, halving memory and the
    kept ids file. (The fingerprint always hashes them as vocab.id_dtype(), so it does not
    depend on this.)"""
    return np.dtype(np.uint8 if len(vocab) <= 256 else vocab.id_dtype())


def load_corpus(
    paths: Sequence,
    policy: TextPolicy = DEFAULT_POLICY,
    vocab: Vocab | None = None,
    unknown: str = "error",
    cache_dir: str | os.PathLike | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    on_read: Callable[[int], object] | None = None,
    keep_at: str | os.PathLike | None = None,
) -> Corpus:
    """Read and encode the files in order as one text (documents joined as the module says).

    Without a vocabulary it is built from the text; with one, characters outside it raise
    CharRNNError (unknown="error", naming file, character, code point and first position) or
    are left out (unknown="skip"). A corpus of no characters at all raises CharRNNError; so do
    unreadable, binary or undecodable files, all of them named in one message.
    cache_dir: where a large corpus's scratch file goes (default: a temporary directory); the
    file is removed as soon as it is mapped, or, where the system forbids that, with the map.
    keep_at: instead, write a large corpus's ids to this file and keep it (open_kept_corpus
    maps it again). on_read(n) is told every n bytes read; both passes read every file, so
    they come to twice the files' total size."""
    if unknown not in UNKNOWN_POLICIES:
        raise ValueError(f"unknown must be one of {UNKNOWN_POLICIES}, not {unknown!r}")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    names = [str(p) for p in paths]
    if not names:
        raise CharRNNError("no corpus files given")
    join = vocab is None or vocab.index.get("\n") is not None
    vocab, total, read, skipped = _survey(names, policy, vocab, unknown, chunk_bytes, on_read, join)
    if total == 0:
        listed = ", ".join(names)
        if read:
            raise CharRNNError(f"none of the {read:,} characters of {listed} is in the model's vocabulary")
        raise CharRNNError(f"no text in {listed}: {'it is' if len(names) == 1 else 'they are all'} empty")
    dtype = storage_dtype(vocab)
    fingerprint = hashlib.sha256(_FINGERPRINT_TAG + vocab.codepoints.astype("<i4").tobytes())
    chunks = _encoded_chunks(
        names, policy, vocab, (total, skipped), chunk_bytes, dtype, fingerprint, on_read, join
    )
    if total > MEMMAP_THRESHOLD:
        ids = _memmap_from(chunks, total, dtype, cache_dir, keep_at)
    else:
        ids = np.empty(total, dtype=dtype)
        pos = 0
        for chunk in chunks:
            ids[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
    files = [file_signature(name) for name in names]
    return Corpus(ids, vocab, policy, names, fingerprint.hexdigest(), skipped, files)


def file_signature(path) -> dict:
    """{"size", "sample"}: the file's size and a sha256 of its first and last
    SIGNATURE_EDGE_BYTES and of SIGNATURE_BLOCKS blocks spread evenly between them (the whole
    file when it is smaller). About 3 MiB read per file, whatever its size: enough to notice a
    file replaced, truncated, appended to or re-encoded, not an edit that keeps the size and
    falls between the blocks."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            digest = hashlib.sha256()
            span = 2 * SIGNATURE_EDGE_BYTES + SIGNATURE_BLOCKS * SIGNATURE_BLOCK_BYTES
            if size <= span:
                offsets = [(0, size)]
            else:
                inner = size - 2 * SIGNATURE_EDGE_BYTES - SIGNATURE_BLOCK_BYTES
                offsets = [(0, SIGNATURE_EDGE_BYTES), (size - SIGNATURE_EDGE_BYTES, SIGNATURE_EDGE_BYTES)]
                offsets += [
                    (SIGNATURE_EDGE_BYTES + inner * k // (SIGNATURE_BLOCKS - 1), SIGNATURE_BLOCK_BYTES)
                    for k in range(SIGNATURE_BLOCKS)
                ]
            for offset, length in offsets:
                f.seek(offset)
                digest.update(f.read(length))
    except OSError as e:
        raise CharRNNError(f"cannot read {path}: {e.strerror or e}") from None
    return {"size": size, "sample": digest.hexdigest()}


def open_kept_corpus(
    paths: Sequence, kept: str | os.PathLike, vocab: Vocab, policy: TextPolicy, record: dict
) -> Corpus | None:
    """The corpus that load_corpus(..., keep_at=kept) encoded, mapped again without reading the
    text, or None when anything does not match: record (a checkpoint's, so checked before use)
    must hold the fingerprint, the character count and one file_signature per path equal to
    the files' now, and kept must hold exactly that many ids."""
    names = [str(p) for p in paths]
    files, chars, fingerprint = record.get("files"), record.get("chars"), record.get("fingerprint")
    if not (
        isinstance(files, list)
        and len(files) == len(names)
        and isinstance(chars, int)
        and chars > 0
        and isinstance(fingerprint, str)
    ):
        return None
    dtype = storage_dtype(vocab)
    try:
        if os.path.getsize(kept) != chars * dtype.itemsize:
            return None
        if any(file_signature(name) != saved for name, saved in zip(names, files)):
            return None
        ids = np.memmap(kept, dtype=dtype, mode="r", shape=(chars,))
    except (OSError, CharRNNError, ValueError):
        return None
    return Corpus(ids, vocab, policy, names, fingerprint, 0, list(files))


def _file_codepoints(
    name: str, policy: TextPolicy, chunk_bytes: int, on_read, separate: bool
) -> Iterator[np.ndarray]:
    """The code points of one file chunk by chunk, then a newline if `separate` and the file
    has text that does not end with one."""
    last = _LF
    for text in iter_text(name, policy, chunk_bytes, on_read):
        cps = to_codepoints(text)
        last = cps[-1]
        yield cps
    if separate and last != _LF:
        yield _NEWLINE


def _survey(
    names: list[str],
    policy: TextPolicy,
    vocab: Vocab | None,
    unknown: str,
    chunk_bytes: int,
    on_read=None,
    join: bool = True,
) -> tuple[Vocab, int, int, int]:
    """Pass 1: (the vocabulary, characters to encode, characters read, characters skipped).
    Every file is read even after one fails, so that one error names every file that cannot
    be used."""
    present = np.zeros(MAX_CODEPOINT + 1, dtype=bool) if vocab is None else None
    read = skipped = 0
    failures = []
    for i, name in enumerate(names):
        tally = UnknownTally()
        file_chars = lines = 0
        try:
            for cps in _file_codepoints(name, policy, chunk_bytes, on_read, join and i + 1 < len(names)):
                if present is not None:
                    present[cps] = True
                else:
                    tally.add(cps, vocab.lookup(cps), file_chars, lines + 1)
                    lines += int(np.count_nonzero(cps == _LF))
                file_chars += len(cps)
            if tally.count and unknown == "error":
                raise CharRNNError(tally.describe(where=name, lines=True))
        except CharRNNError as e:
            failures.append(str(e))
            continue
        read += file_chars
        skipped += tally.count
    if len(failures) == 1 and len(names) == 1:
        raise CharRNNError(failures[0])
    if failures:
        listed = "; ".join(failures)
        raise CharRNNError(f"{len(failures)} of the {len(names)} corpus files cannot be used: {listed}")
    if present is not None and read:
        if present[_SURROGATES].any():  # only exotic codecs (utf-7) decode to lone surrogates
            raise CharRNNError(
                f"{', '.join(names)} decoded under {policy.encoding} to lone surrogates, "
                "which are not characters"
            )
        vocab = Vocab(np.flatnonzero(present))
    return vocab, read - skipped, read, skipped


def _encoded_chunks(
    names: list[str],
    policy: TextPolicy,
    vocab: Vocab,
    expected: tuple[int, int],
    chunk_bytes: int,
    dtype: np.dtype,
    fingerprint,
    on_read=None,
    join: bool = True,
) -> Iterator[np.ndarray]:
    """Pass 2: the ids chunk by chunk, fed to the fingerprint as they go (little-endian, as
    vocab.id_dtype(), so the fingerprint is the same on every machine and for every storage
    dtype). expected: (characters kept, skipped) as pass 1 counted them; any difference means
    a file changed in between."""
    hashed = np.dtype(vocab.id_dtype()).newbyteorder("<")
    kept = dropped = 0
    for i, name in enumerate(names):
        for cps in _file_codepoints(name, policy, chunk_bytes, on_read, join and i + 1 < len(names)):
            ids = vocab.lookup(cps)
            known = ids >= 0
            ids = ids[known].astype(dtype)
            kept += len(ids)
            dropped += len(known) - len(ids)
            if kept > expected[0]:  # stop before the preallocated array overflows
                raise CharRNNError(f"{name} changed while it was being read")
            fingerprint.update(ids.astype(hashed, copy=False).tobytes())
            yield ids
    if (kept, dropped) != expected:
        raise CharRNNError(f"{', '.join(names)} changed while being read")


def _memmap_from(
    chunks: Iterator[np.ndarray],
    total: int,
    dtype: np.dtype,
    cache_dir: str | os.PathLike | None,
    keep_at: str | os.PathLike | None = None,
) -> np.memmap:
    """Write the chunks to a scratch file with ordinary writes (a full disk is then an OSError,
    where writing through a map of a sparse file would be a SIGBUS) and map it read-only; with
    keep_at, the finished file is renamed to it (atomically, so a run killed while writing
    leaves no partial file under that name) and kept."""
    if keep_at is not None:
        cache_dir = os.path.dirname(os.path.abspath(keep_at))
    own_dir = cache_dir is None
    directory = None
    try:
        directory = tempfile.mkdtemp(prefix="charrnn-") if own_dir else os.fspath(cache_dir)
        os.makedirs(directory, exist_ok=True)
        if keep_at is None:
            fd, name = tempfile.mkstemp(prefix="corpus-", suffix=".ids", dir=directory)
        else:  # a checkpoint-style temp name: a later run's clean_stale_temp_files removes it
            # if this process is killed before the rename
            name = os.path.join(
                directory, f".{os.path.basename(keep_at)}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
            )
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as e:
        if own_dir and directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
        where = directory or "the temporary directory"
        raise CharRNNError(f"cannot create the corpus scratch file in {where}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk.tobytes())
        if keep_at is not None:
            os.replace(name, keep_at)
            return np.memmap(keep_at, dtype=dtype, mode="r", shape=(total,))
        ids = np.memmap(name, dtype=dtype, mode="r", shape=(total,))
    except BaseException as e:
        _remove_scratch(name, directory if own_dir else None)
        if isinstance(e, OSError):
            raise CharRNNError(f"cannot write the corpus scratch file {name}: {e.strerror or e}") from None
        raise
    try:
        # the map keeps the data reachable; removing the name now leaves nothing behind even
        # if the process is killed
        _remove_scratch(name, directory if own_dir else None, strict=True)
    except OSError:  # Windows: a mapped file cannot be removed, so remove it with the map
        weakref.finalize(ids, _remove_scratch, name, directory if own_dir else None)
    return ids


def _remove_scratch(name: str, directory: str | None, strict: bool = False) -> None:
    try:
        os.unlink(name)
        if directory is not None:
            shutil.rmtree(directory)
    except OSError:
        if strict:
            raise


def split_train_val(ids: np.ndarray, val_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) views of ids: the last val_frac of the characters is validation (a
    contiguous tail, as in nanoGPT), so validation text is text the model never trained on.
    val_frac 0 gives an empty validation set."""
    if not 0 <= val_frac < 1:
        raise ValueError(f"val_frac must lie in [0, 1), not {val_frac}")
    n = len(ids)
    n_val = int(n * val_frac)
    if val_frac > 0 and n_val < 2:
        raise CharRNNError(
            f"the validation split is too small: {val_frac:g} of {n:,} characters is {n_val}, and at least "
            "2 are needed; give more text, a larger --val-frac, or --val-frac 0 to train without validation"
        )
    if n - n_val < 2:
        raise CharRNNError(
            f"the training split is too small: {n - n_val:,} character(s) ({n:,} in all, {n_val:,} kept "
            "for validation), and at least 2 are needed; give more text or a smaller --val-frac"
        )
    return ids[: n - n_val], ids[n - n_val :]


class Batches:
    """Training windows for truncated BPTT with carried state.

    The ids are cut into N = batch_size contiguous streams of L = (len(ids) - 1) // N
    characters (the last few characters that do not fill a stream are unused); window j holds
    columns [k T, (k + 1) T) of every stream for k = j mod windows_per_epoch, its targets the
    same positions shifted by one character. Consecutive j therefore continue every stream,
    and the epoch wraps after windows_per_epoch = L // T windows."""

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int):
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be positive ({batch_size}, {seq_len} given)")
        n = len(ids)
        self.batch_size, self.seq_len = batch_size, seq_len
        self.stream_len = stream_length(n, batch_size)
        self.windows_per_epoch = self.stream_len // seq_len
        if self.windows_per_epoch == 0:
            raise CharRNNError(_too_short(n, batch_size, seq_len))
        used = batch_size * self.stream_len
        # views, not copies: ids may be a memory map larger than memory
        self._x = ids[:used].reshape(batch_size, self.stream_len)
        self._y = ids[1 : used + 1].reshape(batch_size, self.stream_len)

    def window(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """(x, y), each int64 (batch_size, seq_len), of window j mod windows_per_epoch."""
        start = (j % self.windows_per_epoch) * self.seq_len
        cols = slice(start, start + self.seq_len)
        return self._x[:, cols].astype(np.int64), self._y[:, cols].astype(np.int64)


def stream_length(num_ids: int, batch_size: int) -> int:
    """Characters in each of Batches' batch_size streams over num_ids ids."""
    return (num_ids - 1) // batch_size if num_ids else 0


def epoch_windows(num_ids: int, batch_size: int, seq_len: int) -> int:
    """Steps in one epoch of Batches over num_ids ids (0: too few for one window)."""
    return stream_length(num_ids, batch_size) // seq_len


def _too_short(n: int, batch_size: int, seq_len: int) -> str:
    """The message for training text too short for one window, with settings that would fit."""
    targets = n - 1  # every window position needs the next character as its target
    message = (
        f"the training text is too short: it has {n:,} characters, but --batch-size {batch_size} x "
        f"--seq-len {seq_len} needs at least {batch_size * seq_len + 1:,}"
    )
    if targets < 1:
        return message + "; give at least 2 characters of training text"
    options = []
    if targets // seq_len >= 1:
        options.append(f"--batch-size {targets // seq_len} --seq-len {seq_len}")
    if targets // batch_size >= 1:
        options.append(f"--batch-size {batch_size} --seq-len {targets // batch_size}")
    if not options:
        options.append(f"--batch-size 1 --seq-len {targets}")
    return message + "; try " + " or ".join(options) + " (or give more text)"


def fit_batch_size(num_chars: int, seq_len: int, max_batch: int) -> int:
    """The largest batch size <= max_batch (>= 1) whose streams of num_chars characters hold at
    least one window of seq_len; CharRNNError if not even one stream does."""
    fit = min(max_batch, (num_chars - 1) // seq_len)
    if fit < 1:
        raise CharRNNError(
            f"{num_chars:,} characters are too few for one window of --seq-len {seq_len} (needs "
            f"{seq_len + 1:,}); use a --seq-len of at most {max(num_chars - 1, 1)} or give more text"
        )
    return fit


def eval_windows(ids: np.ndarray, seq_len: int, max_streams: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(x, y) windows, int64 (S, T<=seq_len), that together predict every character of ids
    from the one before, exactly once, for validation loss with the state carried.

    S = as many streams as hold a full window, up to max_streams; each is contiguous and read
    front to back, so the state carries across its windows. The (len - 1) mod S characters
    left over at the end follow as a final single stream (a change of S: the caller starts it
    from a zero state)."""
    if seq_len < 1 or max_streams < 1:
        raise ValueError(f"seq_len and max_streams must be positive ({seq_len}, {max_streams} given)")
    n = len(ids)
    if n < 2:
        return
    streams = max(1, min(max_streams, (n - 1) // seq_len))
    length = (n - 1) // streams
    used = streams * length
    yield from _windows(
        ids[:used].reshape(streams, length), ids[1 : used + 1].reshape(streams, length), seq_len
    )
    if used < n - 1:
        yield from _windows(ids[used : n - 1][None], ids[used + 1 : n][None], seq_len)


def _sample_shape(num_ids: int, seq_len: int, streams: int, budget: int) -> tuple[int, int] | None:
    """(segments, length) of the evaluation sample; None when the budget covers every target."""
    if not budget or budget >= num_ids - 1:
        return None
    segments = max(1, min(streams, budget // seq_len))
    return segments, budget // segments


def sampled_eval_windows(
    ids: np.ndarray, seq_len: int, streams: int, budget: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """eval_windows over a fixed sample of about `budget` targets (0, or a budget that covers
    ids: all of them): `streams` segments of equal length at evenly spaced places, the same
    ones every time, so that successive evaluations compare and a long validation text is
    sampled from end to end instead of only at its start. Only those segments are read."""
    shape = _sample_shape(len(ids), seq_len, streams, budget)
    if shape is None:
        yield from eval_windows(ids, seq_len, streams)
        return
    S, L = shape
    starts = np.linspace(0, len(ids) - L - 1, S).round().astype(np.int64)
    x = np.stack([ids[a : a + L] for a in starts])  # (S, L)
    y = np.stack([ids[a + 1 : a + L + 1] for a in starts])
    yield from _windows(x, y, seq_len)


def eval_targets(num_ids: int, seq_len: int, streams: int, budget: int) -> int:
    """How many targets sampled_eval_windows scores."""
    shape = _sample_shape(num_ids, seq_len, streams, budget)
    return max(num_ids - 1, 0) if shape is None else shape[0] * shape[1]


def _windows(x: np.ndarray, y: np.ndarray, seq_len: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, x.shape[1], seq_len):
        cols = slice(start, start + seq_len)
        yield x[:, cols].astype(np.int64), y[:, cols].astype(np.int64)
