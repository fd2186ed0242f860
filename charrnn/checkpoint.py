"""Checkpoints: one self-contained .npz per checkpoint, saved atomically, loaded by a validating
reader that never unpickles. docs/checkpoint-format.md specifies the format for other programs.

Members of the zip archive (each a .npy array; np.load(path) shows them without ".npy"):

    meta.npy                 uint8 (n,)  UTF-8 JSON: format_version, dtype, model_config,
                                         train_config, text_policy, optimizer, hidden_batch, progress
    vocab.npy                int32 (V,)  code points, strictly increasing (id k = k-th smallest)
    param/<name>.npy         every entry of model.param_shapes, all float32 or all float64
    adam/m.<name>.npy, adam/v.<name>.npy, adam/t.npy      when meta.optimizer is "adam"
    hidden/l<k>.h.npy (and hidden/l<k>.c.npy for lstm)    (N, H), when meta.hidden_batch is N

Everything a file could lie about is settled before anything large is allocated: the member
list, each member's declared size (against the file's size, deflate's maximum ratio and what
the config allows: zip bombs) and each .npy header (dtype, order and exact shape against the
config: shape bombs). Only then is data read, through zipfile's CRC check. Values are checked
last: a sorted, valid vocabulary and finite floats. The saver applies the same checks, so a
file the loader would refuse is never written. Arrays are written from the host (a model
trained on a GPU saves NumPy copies), so every checkpoint is device-free.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import json
import math
import os
import re
import secrets
import stat
import sys
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from .backend import to_host
from .config import ModelConfig, TrainConfig
from .errors import CheckpointError
from .model import CharRNN, param_shapes
from .text import TextPolicy
from .vocab import Vocab

FORMAT_VERSION = 1

_MAX_META = 1 << 20  # bytes of JSON; real ones are a few KiB
_MAX_NPY_HEADER = 4096  # numpy writes 64 to a few hundred bytes
_DEFLATE_MAX_RATIO = 1032  # deflate's ceiling: one 258-byte match per 2 bits
_ZIP64_FROM = 1 << 31  # members this large need zip64 records (zip32 sizes stop at 4 GiB)
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)  # zip's epoch: identical checkpoints are identical bytes
_TEMP_NAME = re.compile(r"\..+\.tmp-\d+-[0-9a-f]{8}")

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_INTS = tuple(np.dtype(t) for t in ("i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8"))
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}

_META_KEYS = (
    "format_version",
    "dtype",
    "model_config",
    "train_config",
    "text_policy",
    "optimizer",
    "hidden_batch",
    "progress",
)
# The fields of `progress` that training reads back on resume, checked here so that a damaged
# file fails when it is loaded, with the field named, rather than later with a TypeError.
_PROGRESS_TYPES = {
    "step": int,
    "window": int,
    "best_step": int,
    "stale_evals": int,
    "best_val": float,
    "elapsed": float,
    "epoch": float,
    "schedule": dict,
    "rng": dict,
    "corpus": dict,
}
_SCHEDULE_TYPES = {"scale": float, "best": float, "bad_evals": int}


@dataclass
class Checkpoint:
    """A model (config, weights, vocabulary, text policy) plus, for exact resume, the training
    config, Adam's state, the hidden state carried between windows and the progress counters."""

    model_config: ModelConfig
    params: dict[str, np.ndarray]
    vocab: Vocab
    text_policy: TextPolicy
    train_config: TrainConfig | None = None
    optimizer: dict[str, np.ndarray] | None = None  # Adam.state_dict()
    hidden: tuple | None = None  # per layer (h,) or (h, c), each (N, H)
    progress: dict = field(default_factory=dict)  # JSON-able counters, schedule and rng state
    format_version: int = FORMAT_VERSION

    def model(self) -> CharRNN:
        return CharRNN(self.model_config, self.params)

    def describe(self) -> dict[str, Any]:
        """A flat, JSON-able summary (`charrnn info`); None where training recorded nothing."""
        cfg, p = self.model_config, self.progress
        best = p.get("best_val")
        return {
            "cell": cfg.cell + (" (peephole)" if cfg.peephole else ""),
            "layers": cfg.num_layers,
            "hidden_size": cfg.hidden_size,
            "embedding_size": cfg.embedding_size,
            "vocab_size": cfg.vocab_size,
            "parameters": sum(a.size for a in self.params.values()),
            "dtype": self.params["Wy"].dtype.name,
            "step": p.get("step"),
            "epoch": p.get("epoch"),
            # strict JSON has no Infinity: a run not yet evaluated has no best loss
            "best_val": best if isinstance(best, float) and math.isfinite(best) else None,
            "best_step": p.get("best_step"),
            "corpus": ", ".join(p["corpus"]["names"]) if "corpus" in p else None,
            "resumable": self.optimizer is not None,
            "encoding": self.text_policy.encoding,
            "format_version": self.format_version,
        }


class _FieldError(Exception):
    """A problem with one field (a member or a meta entry; None: the file as a whole)."""

    def __init__(self, where: str | None, problem: str):
        super().__init__(problem)
        self.where, self.problem = where, problem

    def message(self, path: Path) -> str:
        return f"{path}: {self.where} {self.problem}" if self.where else f"{path} {self.problem}"


class _Spec(NamedTuple):
    dtypes: tuple[np.dtype, ...]
    shape: tuple[int | None, ...]  # None: any length up to _MAX_META (only meta's)


_META_SPEC = _Spec((np.dtype(np.uint8),), (None,))


class _Meta(NamedTuple):
    model_config: ModelConfig
    train_config: TrainConfig | None
    text_policy: TextPolicy
    dtype: np.dtype
    optimizer: str | None
    hidden_batch: int | None
    progress: dict
    format_version: int


# ---------------------------------------------------------------------- layout


def _member_specs(cfg: ModelConfig, dtype: np.dtype, optimizer: str | None, hidden_batch: int | None) -> dict:
    """Every member's key (its name without ".npy") and allowed dtypes and exact shape, in file order."""
    shapes = param_shapes(cfg)
    specs = {"meta": _META_SPEC, "vocab": _Spec(_INTS, (cfg.vocab_size,))}
    specs.update({f"param/{n}": _Spec((dtype,), s) for n, s in shapes.items()})
    if optimizer == "adam":
        for moment in ("m", "v"):
            specs.update({f"adam/{moment}.{n}": _Spec((dtype,), s) for n, s in shapes.items()})
        specs["adam/t"] = _Spec(_INTS, ())
    if hidden_batch is not None:
        for k in range(cfg.num_layers):
            specs.update(
                {
                    f"hidden/l{k}.{p}": _Spec((dtype,), (hidden_batch, cfg.hidden_size))
                    for p in _state_parts(cfg)
                }
            )
    return specs


def _state_parts(cfg: ModelConfig) -> tuple[str, ...]:
    """Member suffixes of one layer's carried state, in the order of CharRNN's state tuples."""
    return ("h", "c") if cfg.cell == "lstm" else ("h",)


def _check_spec(key: str, dtype: np.dtype, shape: tuple, spec: _Spec) -> None:
    # byte order is not part of the contract: a big-endian writer's arrays load as native ones
    if dtype.newbyteorder("=") not in spec.dtypes:
        allowed = " or ".join(d.name for d in spec.dtypes)
        raise _FieldError(key, f"has dtype {dtype}, expected {allowed}")
    fits = len(shape) == len(spec.shape) and all(
        want is None or n == want for n, want in zip(shape, spec.shape)
    )
    if not fits:
        want = "(n,)" if spec.shape == (None,) else str(spec.shape)
        raise _FieldError(key, f"has shape {shape}, expected {want} for this model config")


def _check_values(arrays: dict[str, np.ndarray]) -> None:
    """The checks on array contents shared by save and load."""
    _check_vocab(arrays["vocab"])
    for key, a in arrays.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise _FieldError(key, "has non-finite values (NaN or Inf)")
    if "adam/t" in arrays and arrays["adam/t"] < 0:
        raise _FieldError("adam/t", f"is negative ({int(arrays['adam/t'])})")


def _check_vocab(cps: np.ndarray) -> None:
    cps = cps.astype(np.int64)
    if (np.diff(cps) <= 0).any():
        raise _FieldError("vocab", "is not strictly increasing (duplicate or unsorted code points)")
    if cps[0] < 0 or cps[-1] > 0x10FFFF:
        raise _FieldError("vocab", f"has code points outside 0..0x10FFFF ({cps[0]}..{cps[-1]})")
    surrogates = cps[(cps >= 0xD800) & (cps <= 0xDFFF)]
    if len(surrogates):
        raise _FieldError(
            "vocab", f"has the surrogate code point U+{surrogates[0]:04X}, which is not a character"
        )


# ---------------------------------------------------------------------- saving


def _test_save_delay() -> None:
    """Fault-injection tests widen the window between writing and renaming so that their kills
    and signals land inside a save; unset, it costs one dictionary lookup."""
    delay = os.environ.get("CHARRNN_TEST_SAVE_DELAY")
    if delay:
        time.sleep(float(delay))


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> None:
    """Write ckpt to path atomically: a complete new file or, on any failure, the old one."""
    path = Path(path)
    try:
        arrays = _arrays_of(ckpt)
    except _FieldError as e:
        raise CheckpointError(f"refusing to save {path}: {e.where or 'the checkpoint'} {e.problem}") from None
    # the name marks a leftover of a crash for clean_stale_temp_files
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(tmp, "xb") as f:
            _write_npz(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        _test_save_delay()
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError):
            reason = e.strerror or str(e)
            raise CheckpointError(
                f"could not save {path}: {reason}; the previous checkpoint is unchanged"
            ) from None
        raise
    # Makes the rename durable. The new file is in place whatever happens here, and a
    # filesystem that cannot sync directories (EINVAL) offers nothing stronger.
    with contextlib.suppress(OSError):
        _fsync_dir(path.parent)


def _arrays_of(ckpt: Checkpoint) -> dict[str, np.ndarray]:
    """The members of ckpt's file, meta first, checked against the layout and _check_values."""
    ckpt = dataclasses.replace(
        ckpt, params=to_host(ckpt.params), optimizer=to_host(ckpt.optimizer), hidden=to_host(ckpt.hidden)
    )
    cfg = ckpt.model_config
    dtypes = sorted({p.dtype.name for p in ckpt.params.values()})
    if len(dtypes) != 1:
        raise _FieldError("param", f"dtypes must all be float32 or all float64, not a mix of {dtypes}")
    hidden_batch = None if ckpt.hidden is None else int(ckpt.hidden[0][0].shape[0])
    meta = {
        "format_version": FORMAT_VERSION,
        "dtype": dtypes[0],
        "model_config": cfg.to_dict(),
        "train_config": None if ckpt.train_config is None else ckpt.train_config.to_dict(),
        "text_policy": ckpt.text_policy.to_dict(),
        "optimizer": None if ckpt.optimizer is None else "adam",
        "hidden_batch": hidden_batch,
        "progress": ckpt.progress,
    }
    try:
        text = json.dumps(meta, default=_numpy_scalar)
    except (TypeError, ValueError) as e:
        raise _FieldError("progress", f"is not JSON-serialisable ({e})") from None
    arrays = {"meta": np.frombuffer(text.encode("utf-8"), np.uint8), "vocab": ckpt.vocab.codepoints}
    arrays.update({f"param/{n}": a for n, a in ckpt.params.items()})
    arrays.update({f"adam/{k}": np.asarray(a) for k, a in (ckpt.optimizer or {}).items()})
    for k, layer in enumerate(ckpt.hidden or ()):
        arrays.update({f"hidden/l{k}.{p}": a for p, a in zip("hc", layer)})

    specs = _member_specs(cfg, np.dtype(dtypes[0]), meta["optimizer"], hidden_batch)
    _check_names(arrays.keys(), specs)
    for key, spec in specs.items():
        _check_spec(key, arrays[key].dtype, arrays[key].shape, spec)
    _check_values(arrays)
    return {key: arrays[key] for key in specs}


def _numpy_scalar(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"{x!r} is a {type(x).__name__}")


def _write_npz(f: BinaryIO, arrays: dict[str, np.ndarray]) -> None:
    # uncompressed: trained float weights barely compress, and saving stays as fast as the disk
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        for key, a in arrays.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=_FIXED_DATE)
            with zf.open(info, "w", force_zip64=a.nbytes >= _ZIP64_FROM) as m:
                # a transposed view would otherwise be written in Fortran order, which the loader refuses
                c_order = a if a.flags.c_contiguous else a.copy(order="C")
                np.lib.format.write_array(m, c_order, allow_pickle=False)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clean_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Remove the temp files that saves interrupted by a crash or kill -9 left in directory."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for p in sorted(directory.iterdir()):
        if _TEMP_NAME.fullmatch(p.name) and p.is_file() and not _writer_alive(p.name):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _writer_alive(temp_name: str) -> bool:
    """Whether the process named in a temp file's name (".x.tmp-<pid>-<hex>") runs here and is
    not this one: the ranks of an MPI job share a run directory, and one must not remove the
    file another is still writing."""
    pid = int(temp_name.rsplit("-", 2)[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, but another user's
        return True
    return True


def latest_checkpoint(root: str | os.PathLike = "checkpoints", name: str = "best.npz") -> Path | None:
    """The most recently modified file called `name` anywhere under root (None: there is none)."""
    found = []
    for dirpath, _, filenames in os.walk(root):
        if name in filenames:
            p = Path(dirpath) / name
            with contextlib.suppress(OSError):  # removed or unreadable since the walk saw it
                st = p.stat()
                if stat.S_ISREG(st.st_mode):
                    found.append((st.st_mtime_ns, str(p), p))
    return max(found)[2] if found else None


# ---------------------------------------------------------------------- loading


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and validate a checkpoint. Any problem raises CheckpointError naming the file and
    the field; no other exception escapes and nothing in the file is ever unpickled."""
    path = Path(path)
    try:
        return _load(path)
    except _FieldError as e:
        raise CheckpointError(e.message(path)) from None
    except Exception as e:  # a hostile file can trip zipfile, numpy or json in many ways: all mean "damaged"
        raise CheckpointError(
            f"{path} is damaged or not a charrnn checkpoint ({type(e).__name__}: {e})"
        ) from None


def _load(path: Path) -> Checkpoint:
    _check_regular_file(path)
    try:
        with open(path, "rb") as f:
            meta, arrays = _read_archive(f)
    except OSError as e:  # the file itself failed (EIO, EACCES), not its contents
        raise _FieldError(None, f"cannot be read: {e.strerror or e}") from None
    _check_values(arrays)
    return _assemble(meta, arrays)


def _check_regular_file(path: Path) -> None:
    # stat before opening: opening a FIFO would block, and a device has no end
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _FieldError(None, "does not exist") from None
    if stat.S_ISDIR(st.st_mode):
        raise _FieldError(None, "is a directory, not a checkpoint file")
    if not stat.S_ISREG(st.st_mode):
        raise _FieldError(None, "is not a regular file (a device, pipe or socket?)")


def _read_archive(f: BinaryIO) -> tuple[_Meta, dict[str, np.ndarray]]:
    size = os.fstat(f.fileno()).st_size
    if size == 0:
        raise _FieldError(None, "is empty (0 bytes): not a checkpoint")
    _sniff(f)
    with zipfile.ZipFile(f) as zf:
        infos = _index(zf, size)
        if "meta.npy" not in infos:
            raise _FieldError("meta", "is missing: not a charrnn checkpoint")
        _check_member(zf, infos["meta.npy"], "meta", _META_SPEC)
        meta = _parse_meta(_read_member(zf, infos["meta.npy"], "meta").tobytes())
        specs = _member_specs(meta.model_config, meta.dtype, meta.optimizer, meta.hidden_batch)
        _check_names(infos.keys(), specs, suffix=".npy")
        # every header before any data, so a bad member costs no allocation of the others
        for key, spec in specs.items():
            _check_member(zf, infos[key + ".npy"], key, spec)
        return meta, {key: _read_member(zf, infos[key + ".npy"], key) for key in specs}


def _sniff(f: BinaryIO) -> None:
    """Name the common wrong files before zipfile gives its generic error."""
    head = f.read(6)
    if head.startswith(b"\x93NUMPY"):
        raise _FieldError(None, "is a single NumPy array (.npy), not a charrnn checkpoint (.npz archive)")
    if head.startswith(b"\x80"):
        raise _FieldError(
            None, "is a Python pickle, not a charrnn checkpoint; charrnn never unpickles (it can run code)"
        )
    if not head.startswith(b"PK"):
        raise _FieldError(None, "is not a charrnn checkpoint (not a zip/.npz archive)")


def _index(zf: zipfile.ZipFile, file_size: int) -> dict[str, zipfile.ZipInfo]:
    """The members by name, each checked for what its zip records declare."""
    infos = zf.infolist()
    duplicates = sorted(n for n, c in Counter(i.filename for i in infos).items() if c > 1)
    if duplicates:
        raise _FieldError(None, f"has duplicate members {duplicates}")
    for info in infos:
        name, declared, packed = info.filename, info.file_size, info.compress_size
        if info.flag_bits & 0x1:
            raise _FieldError(name, "is encrypted")
        if info.compress_type == zipfile.ZIP_STORED:
            if packed != declared:
                raise _FieldError(name, f"is stored uncompressed but declares {declared} bytes in {packed}")
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            if declared > _DEFLATE_MAX_RATIO * packed:
                raise _FieldError(
                    name,
                    f"declares {declared:,} bytes from {packed:,} deflated: more than deflate can expand",
                )
        else:
            raise _FieldError(
                name, f"uses zip compression method {info.compress_type}; only stored and deflate are read"
            )
        if info.header_offset + packed > file_size:
            raise _FieldError(
                name,
                f"declares {packed:,} bytes at offset {info.header_offset:,} of a {file_size:,}-byte file",
            )
    return {i.filename: i for i in infos}


def _check_names(names, specs: dict[str, _Spec], suffix: str = "") -> None:
    expected = {key + suffix for key in specs}
    for key in specs:
        if key + suffix not in names:
            raise _FieldError(key, "is missing")
    extra = sorted(set(names) - expected)
    if extra:
        raise _FieldError(None, f"has unexpected members {extra}")


def _check_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, spec: _Spec) -> None:
    """Check a member's declared size and .npy header against spec, reading no array data."""
    itemsize = max(d.itemsize for d in spec.dtypes)
    limit = _MAX_NPY_HEADER + itemsize * math.prod(_MAX_META if n is None else n for n in spec.shape)
    if info.file_size > limit:
        raise _FieldError(key, f"declares {info.file_size:,} bytes where at most {limit:,} are expected")
    with _member_errors(key), zf.open(info) as m:
        version = np.lib.format.read_magic(m)
        if version not in _HEADER_READERS:
            raise _FieldError(key, f"has unsupported .npy format version {version}")
        shape, fortran_order, dtype = _HEADER_READERS[version](m, max_header_size=_MAX_NPY_HEADER)
        header_size = m.tell()
    _check_spec(key, dtype, shape, spec)
    if fortran_order:
        raise _FieldError(key, "is in Fortran order; the format stores C order")
    # read_array reads exactly this much, so the data must fill the member: no allocation beyond
    # what the file holds, and reading to the member's end is what makes zipfile check its CRC
    body = math.prod(shape) * dtype.itemsize
    if header_size + body != info.file_size:
        raise _FieldError(
            key, f"holds {info.file_size:,} bytes but its header describes {header_size + body:,}"
        )


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str) -> np.ndarray:
    with _member_errors(key), zf.open(info) as m:
        a = np.lib.format.read_array(m, allow_pickle=False, max_header_size=_MAX_NPY_HEADER)
    return a.astype(a.dtype.newbyteorder("="), copy=False)


@contextlib.contextmanager
def _member_errors(key: str) -> Iterator[None]:
    """Name the member whose reading failed. zipfile's CRC check fires on whichever read
    reaches a member's end, the header's for a small member."""
    try:
        yield
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
        raise _FieldError(key, f"is damaged ({e})") from None
    except ValueError as e:  # numpy's complaints about the .npy bytes
        raise _FieldError(key, f"is not a readable .npy array ({e})") from None


def _parse_meta(raw: bytes) -> _Meta:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _FieldError("meta", "is not UTF-8 text") from None
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise _FieldError("meta", f"is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise _FieldError("meta", "is not a JSON object")
    version = meta.get("format_version")
    if not _is(version, int) or version < 1:
        raise _FieldError("meta.format_version", f"must be a positive integer, not {version!r}")
    if version > FORMAT_VERSION:
        raise _FieldError(
            None, f"was written by a newer charrnn (format {version} > {FORMAT_VERSION}); upgrade charrnn"
        )
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise _FieldError("meta", f"lacks the fields {missing}")
    unknown = sorted(set(meta) - set(_META_KEYS))
    if unknown:
        raise _FieldError("meta", f"has unknown fields {unknown}")
    if meta["dtype"] not in [d.name for d in _FLOATS]:
        raise _FieldError("meta.dtype", f"must be float32 or float64, not {meta['dtype']!r}")
    if meta["optimizer"] not in (None, "adam"):
        raise _FieldError("meta.optimizer", f"must be null or 'adam', not {meta['optimizer']!r}")
    hidden_batch = meta["hidden_batch"]
    if hidden_batch is not None and not (_is(hidden_batch, int) and hidden_batch >= 1):
        raise _FieldError("meta.hidden_batch", f"must be null or a positive integer, not {hidden_batch!r}")
    train = meta["train_config"]
    return _Meta(
        model_config=_config_from_json(ModelConfig, meta["model_config"], "model_config"),
        train_config=None if train is None else _config_from_json(TrainConfig, train, "train_config"),
        text_policy=_text_policy(meta["text_policy"]),
        dtype=np.dtype(meta["dtype"]),
        optimizer=meta["optimizer"],
        hidden_batch=hidden_batch,
        progress=_check_progress(meta["progress"]),
        format_version=version,
    )


def _is(value: Any, kind: type) -> bool:
    """JSON typing: bool is not a number, and an int is a valid float."""
    if isinstance(value, bool):
        return kind is bool
    return isinstance(value, (int, float) if kind is float else kind)


def _config_from_json(cls: type, d: Any, where: str) -> Any:
    """A frozen config dataclass from JSON, each field type-checked before the class's own checks."""
    if not isinstance(d, dict):
        raise _FieldError(where, "is not a JSON object")
    values = dict(d)
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        kind = {"int": int, "float": float, "bool": bool, "str": str}.get(getattr(f.type, "__name__", f.type))
        if kind is not None and not _is(d[f.name], kind):
            raise _FieldError(f"{where}.{f.name}", f"must be {kind.__name__}, not {d[f.name]!r}")
        if kind is float:
            # compared, not converted first: float() of a huge JSON integer overflows
            if not abs(d[f.name]) <= sys.float_info.max:
                raise _FieldError(f"{where}.{f.name}", f"must be finite, not {d[f.name]!r}")
            values[f.name] = float(d[f.name])
    try:
        return cls.from_dict(values)
    except (TypeError, ValueError) as e:
        raise _FieldError(where, f"is invalid: {e}") from None


def _text_policy(d: Any) -> TextPolicy:
    policy = _config_from_json(TextPolicy, d, "text_policy")
    try:
        codecs.lookup(policy.encoding)
    except LookupError:
        raise _FieldError("text_policy.encoding", f"names an unknown encoding {policy.encoding!r}") from None
    try:
        codecs.lookup_error(policy.errors)
    except LookupError:
        raise _FieldError("text_policy.errors", f"names an unknown error handler {policy.errors!r}") from None
    return policy


def _check_progress(progress: Any) -> dict:
    if not isinstance(progress, dict):
        raise _FieldError("progress", "is not a JSON object")
    for where, d, types in (
        ("progress", progress, _PROGRESS_TYPES),
        ("progress.schedule", progress.get("schedule", {}), _SCHEDULE_TYPES),
    ):
        for name, kind in types.items():
            if name in d and not _is(d[name], kind):
                raise _FieldError(f"{where}.{name}", f"must be {kind.__name__}, not {d[name]!r}")
    if "rng" in progress:
        try:
            np.random.PCG64().state = progress["rng"]
        except (TypeError, ValueError, KeyError) as e:
            raise _FieldError("progress.rng", f"is not a PCG64 generator state ({e})") from None
    return progress


def _assemble(meta: _Meta, arrays: dict[str, np.ndarray]) -> Checkpoint:
    cfg = meta.model_config
    params = {name: arrays[f"param/{name}"] for name in param_shapes(cfg)}
    optimizer = None
    if meta.optimizer is not None:
        optimizer = {key[len("adam/") :]: a for key, a in arrays.items() if key.startswith("adam/")}
        optimizer["t"] = optimizer["t"].astype(np.int64)
    hidden = None
    if meta.hidden_batch is not None:
        hidden = tuple(
            tuple(arrays[f"hidden/l{k}.{p}"] for p in _state_parts(cfg)) for k in range(cfg.num_layers)
        )
    return Checkpoint(
        model_config=cfg,
        params=params,
        vocab=Vocab(arrays["vocab"]),
        text_policy=meta.text_policy,
        train_config=meta.train_config,
        optimizer=optimizer,
        hidden=hidden,
        progress=meta.progress,
        format_version=meta.format_version,
    )
