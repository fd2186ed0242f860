"""Checkpoints: bit-exact round trips, and a loader that survives hostile files.

Every malformed file must raise CheckpointError naming the file (and the field, where there is
one); nothing may be unpickled, nothing large allocated for a bomb, no damaged byte may turn
into different weights, and a failed save must leave the previous checkpoint as it was.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import pickle
import re
import time
import tracemalloc
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charrnn.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    clean_stale_temp_files,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from charrnn.cli import main
from charrnn.config import ModelConfig, TrainConfig
from charrnn.errors import CheckpointError
from charrnn.model import CharRNN
from charrnn.optim import Adam
from charrnn.text import TextPolicy
from charrnn.text import read_text as charrnn_read_text
from charrnn.vocab import Vocab

ASTRAL = (10, 65, 0xE9, 0x4E2D, 0x1F600, 0x10FFFF)  # newline, Latin, CJK, emoji, the last code point


def make_checkpoint(
    cell: str = "lstm",
    vocab=(10, 65, 97),
    hidden_size: int = 2,
    num_layers: int = 2,
    embedding_size: int = 0,
    peephole: bool = False,
    nonlinearity: str = "tanh",
    dtype=np.float32,
    optimizer: bool = True,
    hidden_batch: int | None = 2,
    train: bool = True,
    seed: int = 0,
) -> Checkpoint:
    """A checkpoint whose every stored float is random, so any lost bit shows."""
    cfg = ModelConfig(
        vocab_size=len(vocab),
        cell=cell,
        hidden_size=hidden_size,
        num_layers=num_layers,
        embedding_size=embedding_size,
        peephole=peephole,
        nonlinearity=nonlinearity,
    )
    rng = np.random.default_rng(seed)
    model = CharRNN.create(cfg, seed=seed, dtype=dtype)
    adam = None
    if optimizer:
        adam = Adam(model.params).state_dict()
        for k in adam:
            adam[k] = np.array(7, np.int64) if k == "t" else rng.standard_normal(adam[k].shape).astype(dtype)
    hidden = None
    if hidden_batch:
        parts = 2 if cell == "lstm" else 1  # (h, c) or (h,)
        hidden = tuple(
            tuple(rng.standard_normal((hidden_batch, hidden_size)).astype(dtype) for _ in range(parts))
            for _ in range(num_layers)
        )
    progress = {
        "step": 7,
        "window": 9,
        "epoch": 0.5,
        "best_val": math.inf,
        "best_step": 0,
        "stale_evals": 0,
        "elapsed": 1.25,
        "schedule": {"scale": 0.5, "best": 1.5, "bad_evals": 1},
        "rng": np.random.default_rng(seed).bit_generator.state,  # 128-bit integers
        "corpus": {"fingerprint": "ab12", "names": ["x.txt"], "chars": 1000},
    }
    return Checkpoint(
        model_config=cfg,
        params=model.params,
        vocab=Vocab(vocab),
        text_policy=TextPolicy(),
        train_config=TrainConfig(batch_size=hidden_batch or 1) if train else None,
        optimizer=adam,
        hidden=hidden,
        progress=progress if optimizer else {},
    )


def same_array(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def assert_identical(a: Checkpoint, b: Checkpoint) -> None:
    assert (a.model_config, a.train_config, a.text_policy) == (b.model_config, b.train_config, b.text_policy)
    assert same_array(a.vocab.codepoints, b.vocab.codepoints)
    assert list(a.params) == list(b.params)
    assert all(same_array(a.params[k], b.params[k]) for k in a.params)
    assert (a.optimizer is None) == (b.optimizer is None)
    if a.optimizer is not None:
        assert sorted(a.optimizer) == sorted(b.optimizer)
        assert all(same_array(np.asarray(a.optimizer[k]), b.optimizer[k]) for k in a.optimizer)
    assert (a.hidden is None) == (b.hidden is None)
    if a.hidden is not None:
        assert [len(layer) for layer in a.hidden] == [len(layer) for layer in b.hidden]
        assert all(same_array(x, y) for la, lb in zip(a.hidden, b.hidden) for x, y in zip(la, lb))
    assert a.progress == b.progress
    assert a.format_version == b.format_version == FORMAT_VERSION


def round_trip(path: Path, ckpt: Checkpoint) -> Checkpoint:
    save_checkpoint(path, ckpt)
    return load_checkpoint(path)


# ---------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"cell": "gru"},
        {"cell": "rnn"},
        {"cell": "rnn", "nonlinearity": "relu", "num_layers": 3},
        {"peephole": True},
        {"embedding_size": 3},
        {"cell": "gru", "embedding_size": 2, "dtype": np.float64},
        {"dtype": np.float64, "peephole": True},
        {"vocab": ASTRAL},
        {"vocab": (0x1F600,), "hidden_size": 1, "num_layers": 1},
        {"optimizer": False},
        {"hidden_batch": None},
        {"train": False, "optimizer": False, "hidden_batch": None},
    ],
    ids=repr,
)
def test_round_trip_is_bit_exact(tmp_path, options):
    ckpt = make_checkpoint(**options)
    loaded = round_trip(tmp_path / "c.npz", ckpt)
    assert_identical(ckpt, loaded)
    x = np.zeros((1, 3), np.int64)
    assert same_array(ckpt.model().forward(x)[0], loaded.model().forward(x)[0])


@st.composite
def checkpoints(draw) -> Checkpoint:
    cell = draw(st.sampled_from(["lstm", "gru", "rnn"]))
    code_points = st.integers(0, 0x10FFFF).filter(lambda c: not 0xD800 <= c <= 0xDFFF)
    vocab = sorted(draw(st.sets(code_points, min_size=1, max_size=12)))
    return make_checkpoint(
        cell,
        vocab=tuple(vocab),
        hidden_size=draw(st.integers(1, 4)),
        num_layers=draw(st.integers(1, 3)),
        embedding_size=draw(st.integers(0, 3)),
        peephole=cell == "lstm" and draw(st.booleans()),
        nonlinearity="relu" if cell == "rnn" and draw(st.booleans()) else "tanh",
        dtype=draw(st.sampled_from([np.float32, np.float64])),
        optimizer=draw(st.booleans()),
        hidden_batch=draw(st.sampled_from([None, 1, 3])),
        train=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ckpt=checkpoints())
def test_round_trip_property(tmp_path, ckpt):
    assert_identical(ckpt, round_trip(tmp_path / "c.npz", ckpt))


def test_same_state_gives_same_bytes(tmp_path):
    ckpt = make_checkpoint()
    save_checkpoint(tmp_path / "a.npz", ckpt)
    save_checkpoint(str(tmp_path / "b.npz"), ckpt)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_plain_numpy_reads_the_documented_members(tmp_path):
    ckpt = make_checkpoint(cell="lstm", num_layers=1)
    save_checkpoint(tmp_path / "c.npz", ckpt)
    with np.load(tmp_path / "c.npz") as z:  # allow_pickle=False by default
        meta = json.loads(z["meta"].tobytes().decode("utf-8"))
        assert same_array(z["param/l0.Wx"], ckpt.params["l0.Wx"])
        assert z["vocab"].dtype == np.int32 and z["adam/t"] == 7
        assert {"hidden/l0.h", "hidden/l0.c", "adam/m.Wy", "adam/v.by"} <= set(z.files)
    assert meta["format_version"] == FORMAT_VERSION and meta["hidden_batch"] == 2


def test_describe_is_json(tmp_path):
    ckpt = round_trip(tmp_path / "c.npz", make_checkpoint(peephole=True))
    d = json.loads(json.dumps(ckpt.describe(), allow_nan=False))
    assert d["cell"] == "lstm (peephole)" and d["parameters"] == ckpt.model().num_params()
    assert (d["step"], d["best_val"], d["corpus"], d["resumable"]) == (7, None, "x.txt", True)
    bare = make_checkpoint(optimizer=False).describe()
    assert (bare["step"], bare["corpus"], bare["resumable"]) == (None, None, False)


def test_transposed_views_are_saved_in_c_order(tmp_path):
    ckpt = make_checkpoint(hidden_size=3, vocab=(1, 2, 3, 4))
    ckpt.params = {k: np.asfortranarray(p) for k, p in ckpt.params.items()}
    assert_identical(ckpt, round_trip(tmp_path / "c.npz", ckpt))


def test_deflated_copy_loads(tmp_path):
    ckpt = make_checkpoint()
    save_checkpoint(tmp_path / "c.npz", ckpt)
    write_members(tmp_path / "c.npz", read_members(tmp_path / "c.npz"), zipfile.ZIP_DEFLATED)
    assert_identical(ckpt, load_checkpoint(tmp_path / "c.npz"))


# ---------------------------------------------------------------------- editing files


def read_members(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def write_members(path: Path, members, compression=zipfile.ZIP_STORED, patch=None) -> None:
    """Write a zip; patch maps member names to ZipInfo fields to overwrite in the central
    directory only, which is how a file lies about its members."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names a test wants
        with zipfile.ZipFile(path, "w", compression) as zf:
            for name, data in members:
                zf.writestr(name, data)
            for info in zf.infolist():
                for attr, value in (patch or {}).get(info.filename, {}).items():
                    setattr(info, attr, value)


def npy(array, allow_pickle: bool = False, version=None) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asanyarray(array), version, allow_pickle)
    return buf.getvalue()


def npy_header(dtype: str, shape: tuple) -> bytes:
    """A .npy header alone: it promises an array that is not there."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def replace(name: str, data):
    """An edit putting data (bytes, or an array to serialise) at member name, added if absent."""
    blob = data if isinstance(data, bytes) else npy(data)

    def edit(members):
        if name not in [n for n, _ in members]:
            return [*members, (name, blob)]
        return [(n, blob if n == name else d) for n, d in members]

    return edit


def drop(name: str):
    return lambda members: [(n, d) for n, d in members if n != name]


def duplicate(name: str):
    return lambda members: [*members, *[(n, d) for n, d in members if n == name]]


def edit_meta(change):
    """An edit applying change(meta_dict) to the JSON in meta.npy."""

    def edit(members):
        meta = json.loads(np.lib.format.read_array(io.BytesIO(dict(members)["meta.npy"])).tobytes())
        change(meta)
        return replace("meta.npy", np.frombuffer(json.dumps(meta).encode(), np.uint8))(members)

    return edit


def setting(*keys_and_value):
    """meta[k1][k2]... = value."""
    *keys, last, value = keys_and_value

    def change(meta):
        for k in keys:
            meta = meta[k]
        meta[last] = value

    return change


def deleting(key):
    return lambda meta: meta.pop(key)


@pytest.fixture
def saved(tmp_path) -> Path:
    path = tmp_path / "c.npz"
    save_checkpoint(path, make_checkpoint())
    return path


def load_error(path: Path) -> str:
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    message = str(e.value)
    assert str(path) in message and "\n" not in message
    return message


# ---------------------------------------------------------------------- schema violations

OBJ = np.array([None], dtype=object)
WX = np.zeros((3, 8), np.float32)  # l0.Wx of the default checkpoint: V=3, 4H=8
SCHEMA_CASES = {
    "missing param": (drop("param/l1.Wh.npy"), "param/l1.Wh is missing"),
    "missing adam moment": (drop("adam/v.Wy.npy"), "adam/v.Wy is missing"),
    "missing hidden": (drop("hidden/l1.c.npy"), "hidden/l1.c is missing"),
    "missing meta": (drop("meta.npy"), "meta is missing"),
    "extra member": (replace("evil.npy", np.zeros(1)), r"unexpected members \['evil.npy'\]"),
    "extra layer state": (replace("hidden/l2.h.npy", np.zeros((2, 2), np.float32)), "unexpected members"),
    "name without .npy": (replace("param/Wy", np.zeros((2, 3), np.float32)), "unexpected members"),
    "duplicate member": (duplicate("param/l0.Wh.npy"), r"duplicate members \['param/l0.Wh.npy'\]"),
    "float16 weights": (replace("param/Wy.npy", np.zeros((2, 3), np.float16)), "param/Wy has dtype float16"),
    "mixed float dtypes": (
        replace("param/by.npy", np.zeros(3)),
        "param/by has dtype float64, expected float32",
    ),
    "object member": (replace("param/by.npy", npy(OBJ, allow_pickle=True)), "param/by has dtype object"),
    "structured dtype": (replace("param/by.npy", np.zeros(3, [("x", "<f4")])), "param/by has dtype"),
    "wrong shape": (
        replace("param/l0.Wx.npy", np.zeros((4, 8), np.float32)),
        r"shape \(4, 8\), expected \(3, 8\)",
    ),
    "transposed shape": (replace("param/l0.Wx.npy", WX.T.copy()), r"param/l0.Wx has shape \(8, 3\)"),
    "fortran order": (replace("param/l0.Wx.npy", np.asfortranarray(WX)), "param/l0.Wx is in Fortran order"),
    "npy version 3": (replace("param/by.npy", npy(np.zeros(3, np.float32), version=(3, 0))), "version"),
    "not an npy member": (replace("param/by.npy", b"hello"), "param/by is not a readable .npy array"),
    "array data missing": (
        replace("param/Wy.npy", npy(np.zeros((2, 3), np.float32))[:-4]),
        "header describes",
    ),
    "trailing data": (
        replace("param/Wy.npy", npy(np.zeros((2, 3), np.float32)) + b"junk"),
        "header describes",
    ),
    "vocab duplicate": (
        replace("vocab.npy", np.array([10, 10, 97], np.int32)),
        "vocab is not strictly increasing",
    ),
    "vocab unsorted": (
        replace("vocab.npy", np.array([65, 10, 97], np.int32)),
        "vocab is not strictly increasing",
    ),
    "vocab surrogate": (
        replace("vocab.npy", np.array([10, 65, 0xD800], np.int32)),
        "surrogate code point U\\+D800",
    ),
    "vocab past unicode": (
        replace("vocab.npy", np.array([10, 65, 0x110000], np.int32)),
        "outside 0..0x10FFFF",
    ),
    "vocab negative": (replace("vocab.npy", np.array([-1, 10, 65], np.int32)), "outside 0..0x10FFFF"),
    "vocab float": (replace("vocab.npy", np.array([10.0, 65.0, 97.0])), "vocab has dtype float64"),
    "vocab length": (replace("vocab.npy", np.array([10, 65, 97, 98], np.int32)), r"vocab has shape \(4,\)"),
    "newer format": (
        edit_meta(setting("format_version", 2)),
        r"newer charrnn \(format 2 > 1\); upgrade charrnn",
    ),
    "format as string": (
        edit_meta(setting("format_version", "1")),
        "meta.format_version must be a positive integer",
    ),
    "meta not json": (replace("meta.npy", np.frombuffer(b"{nope", np.uint8)), "meta is not valid JSON"),
    "meta not utf-8": (replace("meta.npy", np.frombuffer(b'{"\xff": 1}', np.uint8)), "meta is not UTF-8"),
    "meta nested deep": (
        replace("meta.npy", np.frombuffer(b"[" * 100_000, np.uint8)),
        "meta is not valid JSON",
    ),
    "meta not object": (replace("meta.npy", np.frombuffer(b"[1]", np.uint8)), "meta is not a JSON object"),
    "meta int32": (
        replace("meta.npy", np.frombuffer(b"{}  ", np.int32)),
        "meta has dtype int32, expected uint8",
    ),
    "meta 2-d": (replace("meta.npy", np.frombuffer(b"{}", np.uint8)[None]), r"meta has shape \(1, 2\)"),
    "meta object dtype": (replace("meta.npy", npy(OBJ, allow_pickle=True)), "meta has dtype object"),
    "meta lacks a field": (edit_meta(deleting("progress")), r"lacks the fields \['progress'\]"),
    "meta unknown field": (edit_meta(setting("extra", 1)), r"unknown fields \['extra'\]"),
    "bad cell": (
        edit_meta(setting("model_config", "cell", "transformer")),
        "model_config is invalid: cell must",
    ),
    "size as string": (
        edit_meta(setting("model_config", "hidden_size", "2")),
        "model_config.hidden_size must be int",
    ),
    "size as bool": (
        edit_meta(setting("model_config", "num_layers", True)),
        "model_config.num_layers must be int",
    ),
    "nan dropout": (
        edit_meta(setting("model_config", "dropout", math.nan)),
        "model_config.dropout must be finite",
    ),
    "huge lr": (edit_meta(setting("train_config", "lr", 10**400)), "train_config.lr must be finite"),
    "vocab_size missing": (
        edit_meta(lambda m: m["model_config"].pop("vocab_size")),
        "model_config is invalid",
    ),
    "lr as string": (edit_meta(setting("train_config", "lr", "fast")), "train_config.lr must be float"),
    "unknown train field": (edit_meta(setting("train_config", "x", 1)), "train_config is invalid: unknown"),
    "train_config list": (edit_meta(setting("train_config", [])), "train_config is not a JSON object"),
    "unknown encoding": (
        edit_meta(setting("text_policy", "encoding", "klingon")),
        "text_policy.encoding names",
    ),
    "unknown errors": (edit_meta(setting("text_policy", "errors", "shrug")), "text_policy.errors names"),
    "float16 meta dtype": (edit_meta(setting("dtype", "float16")), "meta.dtype must be float32 or float64"),
    "unknown optimizer": (edit_meta(setting("optimizer", "sgd")), "meta.optimizer must be null or 'adam'"),
    "hidden_batch zero": (
        edit_meta(setting("hidden_batch", 0)),
        "meta.hidden_batch must be null or a positive",
    ),
    "hidden_batch wrong": (
        edit_meta(setting("hidden_batch", 3)),
        r"hidden/l0.h has shape \(2, 2\), expected \(3, 2\)",
    ),
    "no optimizer said": (edit_meta(setting("optimizer", None)), r"unexpected members \['adam/m.Wy.npy'"),
    "progress list": (edit_meta(setting("progress", [])), "progress is not a JSON object"),
    "step as string": (edit_meta(setting("progress", "step", "7")), "progress.step must be int"),
    "bad rng": (
        edit_meta(setting("progress", "rng", "bit_generator", "MT19937")),
        "progress.rng is not a PCG64",
    ),
    "bad schedule": (
        edit_meta(setting("progress", "schedule", "scale", None)),
        "progress.schedule.scale must be",
    ),
    "nan weight": (
        replace("param/l0.b.npy", np.full(8, np.nan, np.float32)),
        "param/l0.b has non-finite values",
    ),
    "inf moment": (replace("adam/v.Wy.npy", np.full((2, 3), np.inf, np.float32)), "adam/v.Wy has non-finite"),
    "nan state": (
        replace("hidden/l1.c.npy", np.full((2, 2), np.nan, np.float32)),
        "hidden/l1.c has non-finite",
    ),
    "negative t": (replace("adam/t.npy", np.array(-1)), r"adam/t is negative \(-1\)"),
    "float t": (replace("adam/t.npy", np.array(1.0)), "adam/t has dtype float64"),
}


@pytest.mark.parametrize("case", list(SCHEMA_CASES))
def test_schema_violations_name_the_field(saved, case):
    edit, expected = SCHEMA_CASES[case]
    write_members(saved, edit(read_members(saved)))
    message = load_error(saved)
    assert re.search(expected, message), message


def test_unsupported_compression(saved):
    write_members(saved, read_members(saved), zipfile.ZIP_BZIP2)
    assert "meta.npy uses zip compression method 12; only stored and deflate are read" in load_error(saved)


def test_unedited_rewrite_still_loads(saved):
    """The editing helpers themselves change nothing: every failure above is the edit's."""
    before = load_checkpoint(saved)
    write_members(saved, edit_meta(lambda meta: None)(read_members(saved)))
    assert_identical(before, load_checkpoint(saved))


# ---------------------------------------------------------------------- not checkpoints at all


class Touch:
    """Unpickling this creates a file: the proof that something was unpickled."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def write_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"param/Wy": Touch(marker)}))


def write_object_member(path: Path, marker: Path) -> None:
    save_checkpoint(path, make_checkpoint())
    members = replace("param/by.npy", npy(np.array([Touch(marker)]), allow_pickle=True))(read_members(path))
    write_members(path, members)


def write_savez_of_objects(path: Path, marker: Path) -> None:
    with open(path, "wb") as f:
        np.savez(f, Wy=np.array([Touch(marker)], dtype=object))


@pytest.mark.parametrize(
    "write, expected",
    [
        (write_pickle, "is a Python pickle"),
        (write_object_member, "param/by has dtype object"),
        (write_savez_of_objects, "meta is missing"),
    ],
)
def test_nothing_is_unpickled(tmp_path, write, expected):
    marker = tmp_path / "unpickled"
    pickle.loads(pickle.dumps(Touch(marker)))  # the payload is live...
    assert marker.exists()
    marker.unlink()
    write(tmp_path / "c.npz", marker)
    assert expected in load_error(tmp_path / "c.npz")
    assert not marker.exists()  # ...and the loader never ran it


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda p: p.write_bytes(npy(np.zeros(3))), r"is a single NumPy array \(.npy\)"),
        (lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
        (Path.mkdir, "is a directory"),
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(bytes(4096)), "not a zip/.npz archive"),
        (lambda p: p.write_text("print('hi')\n"), "not a zip/.npz archive"),
        (lambda p: write_members(p, []), "meta is missing"),
        (lambda p: p.write_bytes(b"PK\x03\x04" + bytes(100)), "damaged or not a charrnn checkpoint"),
        (os.mkfifo, "is not a regular file"),  # opening a FIFO would block: it must not be opened
    ],
    ids=["npy", "empty", "directory", "missing", "zeros", "text", "empty zip", "zip header only", "fifo"],
)
def test_wrong_kinds_of_file(tmp_path, make, expected):
    path = tmp_path / "c.npz"
    make(path)
    assert re.search(expected, load_error(path))


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_dev_zero():
    assert "is not a regular file" in load_error(Path("/dev/zero"))


# ---------------------------------------------------------------------- bombs


def deflate_stream(prefix: bytes, zero_mib: int) -> bytes:
    """Raw deflate data that inflates to prefix + zero_mib MiB of zeros, built in milliseconds:
    full flushes make each compressed MiB independent, so one can be repeated."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    mib = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    return head + mib * zero_mib + b"\x03\x00"  # an empty final block ends the stream


def test_deflate_stream_inflates_as_claimed():
    stream = deflate_stream(b"head", 3)
    assert zlib.decompress(stream, -15) == b"head" + bytes(3 << 20)


BIG = 500 << 20
WY = npy_header("<f4", (2, 3))  # param/Wy of the default checkpoint


def bomb(members, name, data, **fields):
    """Put data at member name, stored, and make the central directory declare fields."""
    return replace(name, data)(members), {name: fields}


BOMBS = {
    # a stored member declaring hundreds of MB that the file does not have
    "stored size lie": (
        lambda m: bomb(m, "param/Wy.npy", WY, file_size=BIG, compress_size=BIG),
        "of a .*-byte file",
    ),
    # deflated, declaring more than deflate could ever expand those bytes to
    "deflate ratio lie": (
        lambda m: bomb(m, "param/Wy.npy", b"x" * 100, compress_type=zipfile.ZIP_DEFLATED, file_size=BIG),
        "more than deflate can expand",
    ),
    # deflated data that really inflates to 500 MB, and says so
    "honest zip bomb": (
        lambda m: bomb(
            m,
            "param/Wy.npy",
            deflate_stream(WY, 500),
            compress_type=zipfile.ZIP_DEFLATED,
            file_size=BIG + len(WY),
        ),
        "param/Wy declares 524,288,128 bytes where at most 4,120 are expected",
    ),
    # the same data declaring the right size: reading stops there, and the CRC fails
    "understated zip bomb": (
        lambda m: bomb(
            m,
            "param/Wy.npy",
            deflate_stream(WY, 500),
            compress_type=zipfile.ZIP_DEFLATED,
            file_size=len(WY) + 24,
        ),
        "param/Wy is damaged .*Bad CRC-32",
    ),
    "shape bomb": (
        lambda m: bomb(m, "param/Wy.npy", npy_header("<f4", (10**6, 10**6))),
        r"shape \(1000000, 1000000\)",
    ),
    # meta promises a huge batch of carried state and the headers agree, but the data is not there
    "config bomb": (
        lambda m: (
            edit_meta(setting("hidden_batch", 10**12))(
                [(n, npy_header("<f4", (10**12, 2)) if n.startswith("hidden/") else d) for n, d in m]
            ),
            None,
        ),
        "hidden/l0.h holds 128 bytes but its header describes 8,000,000,000,128",
    ),
}


@pytest.mark.parametrize("case", list(BOMBS))
def test_bombs_are_refused_fast_without_allocating(saved, case):
    make, expected = BOMBS[case]
    members, patch = make(read_members(saved))
    write_members(saved, members, patch=patch)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        message = load_error(saved)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert re.search(expected, message), message
    assert elapsed < 1.0
    assert peak < 4 << 20


# ---------------------------------------------------------------------- damaged files


@pytest.fixture
def tiny(tmp_path) -> tuple[Checkpoint, bytes]:
    """The smallest checkpoint with every kind of member, and its bytes."""
    ckpt = make_checkpoint("rnn", vocab=(10, 65), hidden_size=1, num_layers=1, hidden_batch=1)
    save_checkpoint(tmp_path / "tiny.npz", ckpt)
    return ckpt, (tmp_path / "tiny.npz").read_bytes()


def outcomes(path: Path, variants, original: Checkpoint) -> dict[str, int]:
    """Load each variant of the file: it must raise CheckpointError or equal the original."""
    counts = {"refused": 0, "identical": 0}
    for data in variants:
        path.write_bytes(data)
        try:
            loaded = load_checkpoint(path)
        except CheckpointError:
            counts["refused"] += 1
        else:
            assert_identical(original, loaded)
            counts["identical"] += 1
    return counts


def test_every_truncation_is_refused(tmp_path, tiny):
    ckpt, data = tiny
    counts = outcomes(tmp_path / "cut.npz", (data[:n] for n in range(len(data))), ckpt)
    assert counts == {"refused": len(data), "identical": 0}


def test_random_corruptions_never_change_the_weights(tmp_path, tiny):
    ckpt, data = tiny
    rng = np.random.default_rng(12345)

    def corrupted():
        for _ in range(3000):
            buf = np.frombuffer(data, np.uint8).copy()
            where = rng.integers(0, len(buf), size=rng.integers(1, 4))
            # xor with a nonzero byte: every chosen byte really changes
            buf[where] ^= rng.integers(1, 256, size=len(where), dtype=np.uint8)
            yield buf.tobytes()

    counts = outcomes(tmp_path / "bad.npz", corrupted(), ckpt)
    # most bytes are headers, names, sizes or CRC-protected data; the rest (timestamps, local
    # header copies of sizes) do not affect what is read
    assert counts["refused"] > 2500 and counts["identical"] > 0, counts


def test_corrupted_data_fails_the_crc(tmp_path, saved):
    members = read_members(saved)
    data = bytearray(saved.read_bytes())
    start = data.index(dict(members)["param/Wy.npy"][-24:])  # Wy's 6 floats
    data[start] ^= 1  # one flipped bit in a weight: a valid float, caught only by the CRC
    saved.write_bytes(bytes(data))
    assert "param/Wy is damaged (Bad CRC-32" in load_error(saved)


# ---------------------------------------------------------------------- saving


@pytest.mark.parametrize(
    "target, error",
    [
        ("os.replace", OSError(errno.ENOSPC, "No space left on device")),
        ("os.replace", OSError(errno.EROFS, "Read-only file system")),
        ("os.fsync", OSError(errno.EIO, "Input/output error")),
        ("write_array", OSError(errno.ENOSPC, "No space left on device")),
        ("os.replace", KeyboardInterrupt()),
    ],
    ids=["replace ENOSPC", "replace EROFS", "fsync EIO", "write ENOSPC", "replace interrupted"],
)
def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch, target, error):
    path = tmp_path / "last.npz"
    save_checkpoint(path, make_checkpoint(seed=1))
    before = path.read_bytes()

    def fail(*args, **kwargs):
        if target == "write_array":
            args[0].write(b"partial")
        raise error

    if target == "write_array":
        monkeypatch.setattr(np.lib.format, "write_array", fail)
    else:
        monkeypatch.setattr(os, target.split(".")[1], fail)
    with pytest.raises(CheckpointError if isinstance(error, OSError) else KeyboardInterrupt) as e:
        save_checkpoint(path, make_checkpoint(seed=2))
    monkeypatch.undo()
    if isinstance(error, OSError):
        assert (
            str(e.value) == f"could not save {path}: {error.strerror}; the previous checkpoint is unchanged"
        )
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.npz"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_save_into_read_only_directory(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match="Permission denied; the previous checkpoint is unchanged"):
            save_checkpoint(tmp_path / "last.npz", make_checkpoint())
    finally:
        tmp_path.chmod(0o700)


def test_save_onto_a_directory(tmp_path):
    (tmp_path / "last.npz").mkdir()
    with pytest.raises(CheckpointError, match="could not save"):
        save_checkpoint(tmp_path / "last.npz", make_checkpoint())
    assert [p.name for p in tmp_path.iterdir()] == ["last.npz"]


def poison(kind: str, value: float):
    def edit(ckpt: Checkpoint) -> None:
        arrays = {"param": ckpt.params["l1.Wh"], "moment": ckpt.optimizer["m.by"], "state": ckpt.hidden[0][1]}
        arrays[kind].flat[1] = value

    return edit


@pytest.mark.parametrize(
    "edit, expected",
    [
        (poison("param", math.nan), "param/l1.Wh has non-finite values"),
        (poison("param", -math.inf), "param/l1.Wh has non-finite values"),
        (poison("moment", math.inf), "adam/m.by has non-finite values"),
        (poison("state", math.nan), "hidden/l0.c has non-finite values"),
        (
            lambda c: c.params.update(Wy=c.params["Wy"].astype(np.float64)),
            "dtypes must all be float32 or all float64",
        ),
        (
            lambda c: c.params.update(by=np.zeros(4, np.float32)),
            r"param/by has shape \(4,\), expected \(3,\)",
        ),
        (lambda c: c.params.pop("l0.b"), "param/l0.b is missing"),
        (lambda c: c.optimizer.pop("t"), "adam/t is missing"),
        (
            # Vocab() refuses this itself; the saver must too when handed a tampered object.
            lambda c: setattr(c.vocab, "codepoints", np.array([65, 10, 97], np.int32)),
            "vocab is not strictly increasing",
        ),
        (lambda c: c.progress.update(x=object()), "progress is not JSON-serialisable"),
        (
            lambda c: setattr(c, "hidden", c.hidden * 2),
            r"the checkpoint has unexpected members \['hidden/l2.c'",
        ),
    ],
)
def test_save_refuses_what_load_would_refuse(tmp_path, edit, expected):
    ckpt = make_checkpoint()
    edit(ckpt)
    with pytest.raises(CheckpointError, match=f"refusing to save {re.escape(str(tmp_path))}.*{expected}"):
        save_checkpoint(tmp_path / "c.npz", ckpt)
    assert list(tmp_path.iterdir()) == []


def test_numpy_scalars_in_progress_are_saved_as_numbers(tmp_path):
    ckpt = make_checkpoint()
    ckpt.progress.update(best_val=np.float32(1.5), step=np.int64(3))
    progress = round_trip(tmp_path / "c.npz", ckpt).progress
    assert (progress["best_val"], progress["step"]) == (1.5, 3)
    assert (type(progress["best_val"]), type(progress["step"])) == (float, int)


def test_stale_temp_files_are_cleaned(tmp_path, monkeypatch):
    names = []  # the temp name a real save uses, as kill -9 would leave it

    def fail(src, dst):
        names.append(Path(src).name)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(CheckpointError):
        save_checkpoint(tmp_path / "last.npz", make_checkpoint())
    monkeypatch.undo()
    assert re.fullmatch(r"\.last\.npz\.tmp-\d+-[0-9a-f]{8}", names[0])
    keep = ["last.npz", ".last.npz.tmp-x", "notes.tmp-1-abcdef12", ".hidden"]
    for name in [*keep, names[0], ".best.npz.tmp-99-0123abcd"]:
        (tmp_path / name).write_bytes(b"")
    removed = clean_stale_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted([names[0], ".best.npz.tmp-99-0123abcd"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
    assert clean_stale_temp_files(tmp_path / "missing") == []


def test_latest_checkpoint_picks_the_newest(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None
    files = {"a/best.npz": 100, "b/deep/best.npz": 300, "c/best.npz": 200, "d/last.npz": 400}
    for name, mtime in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
        os.utime(tmp_path / name, (mtime, mtime))
    (tmp_path / "e/best.npz").mkdir(parents=True)  # a directory, not a checkpoint
    assert latest_checkpoint(tmp_path) == tmp_path / "b/deep/best.npz"
    assert latest_checkpoint(tmp_path, "last.npz") == tmp_path / "d/last.npz"
    assert latest_checkpoint(str(tmp_path / "c")) == tmp_path / "c/best.npz"


# ---------------------------------------------------------------------- the documented PyTorch reader


def documented_script() -> dict:
    doc = (Path(__file__).parents[1] / "docs" / "checkpoint-format.md").read_text(encoding="utf-8")
    script = re.search(r"## Loading the weights in PyTorch.*?```python\n(.*?)```", doc, re.S).group(1)
    namespace: dict = {}
    exec(compile(script, "checkpoint-format.md", "exec"), namespace)
    return namespace


def big_endian(path: Path) -> None:
    """Rewrite every multi-byte member of a checkpoint in big-endian byte order."""
    members = [(name, np.load(io.BytesIO(data))) for name, data in read_members(path)]
    write_members(path, [(name, npy(a.astype(a.dtype.newbyteorder(">")))) for name, a in members])


@pytest.mark.parametrize(
    "options",
    [
        {"cell": "lstm"},
        {"cell": "gru"},
        {"cell": "rnn", "nonlinearity": "relu"},
        {"cell": "lstm", "embedding_size": 4, "dtype": np.float64},
        {"cell": "gru", "embedding_size": 3},
        {"cell": "lstm", "big_endian": True},
        {"cell": "gru", "dtype": np.float64, "big_endian": True},
    ],
    ids=repr,
)
def test_documented_pytorch_script_reproduces_score_exact(tmp_path, options):
    pytest.importorskip("torch")
    score = documented_script()["score"]
    text = "the cat sat on the mat, ünïcødé 😀\u2028and the dog\n" * 2
    vocab = Vocab.from_text(text)
    options = dict(options)
    dtype = options.pop("dtype", np.float32)
    swap = options.pop("big_endian", False)
    cfg = ModelConfig(vocab_size=len(vocab), hidden_size=8, num_layers=2, **options)
    model = CharRNN.create(cfg, seed=1, dtype=dtype)
    rng = np.random.default_rng(2)
    for p in model.params.values():  # away from the initialisation, so every weight matters
        p += rng.normal(0, 0.3, p.shape).astype(dtype)
    ckpt = tmp_path / "c.npz"
    save_checkpoint(ckpt, Checkpoint(cfg, model.params, vocab, TextPolicy()))
    if swap:
        big_endian(ckpt)
        assert np.load(ckpt)["param/Wy"].dtype.byteorder == ">"
    # a byte-order mark, CRLF and lone CR line ends, and a character the model never saw (§)
    f = tmp_path / "t.txt"
    f.write_bytes(
        b"\xef\xbb\xbf" + text.replace("\n", "\r").replace("\r", "\r\n", 1).replace("dog", "d§og").encode()
    )

    def charrnn_score(*args):
        result = CliRunner().invoke(main, ["score", "-c", str(ckpt), str(f), "--exact", "--json", *args])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    ours, theirs = charrnn_score("--unknown", "skip"), score(ckpt, f, skip_unknown=True)
    assert theirs["chars"] == ours["chars"] == len(text) - 1 and ours["skipped"] == 2
    assert set(theirs) <= set(ours)  # the names of score --json
    # float32: torch and charrnn sum in different orders (measured: at most 7e-9 nats/char apart)
    tol = {"rel": 1e-12} if dtype == np.float64 else {"abs": 1e-8}
    assert theirs["nats_per_char"] == pytest.approx(ours["nats_per_char"], **tol)
    assert theirs["perplexity"] == pytest.approx(
        ours["perplexity"], rel=1e-12 if dtype == np.float64 else 1e-7
    )
    with pytest.raises(ValueError, match="not in the vocabulary: \\['§'\\]"):
        score(ckpt, f)  # as charrnn score without --unknown skip refuses it


@pytest.mark.parametrize(
    "encoding, text",
    [
        ("utf-8", "\ufeff\ufeffa\r\nb\rc\r\r\nd\x85e\u2028f\u2029g\x0bh\x0ci\x1cj\n"),
        ("utf-8-sig", "\ufeff\ufeffa\r\nb"),
        ("utf-16", "\ufeff\ufeffa\r\nb"),
        ("utf-16-le", "\ufeffa\rb"),
        ("latin-1", "caf\xe9\r\n"),
    ],
)
def test_documented_read_text_is_charrnns(tmp_path, encoding, text):
    pytest.importorskip("torch")
    read_text = documented_script()["read_text"]
    f = tmp_path / "t.txt"
    f.write_bytes(text.encode(encoding))
    for newline in ("normalize", "keep"):
        policy = TextPolicy(encoding=encoding, newline=newline)
        assert read_text(f, policy.to_dict()) == charrnn_read_text(f, policy)
