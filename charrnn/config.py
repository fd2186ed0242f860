"""Frozen configuration dataclasses and the choices and constants the CLI's options are built
from. ModelConfig and TrainConfig are stored in every checkpoint as JSON, so a field added later
needs a default (old checkpoints must keep loading).

Nothing here imports NumPy: `charrnn --help` and `--version` build every option from this
module without loading it."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from .errors import CharRNNError

CELLS = ("lstm", "gru", "rnn")
NONLINEARITIES = ("tanh", "relu")
DEVICES = ("auto", "cpu", "gpu")
UNKNOWN_POLICIES = ("error", "skip")
ONE_HOT_MAX_VOCAB = 256
# the window lengths a new run chooses between (defaults.window_length says why)
SHORT_WINDOW, LONG_WINDOW = 50, 100
LONG_LINE = 64  # a 99th-percentile line longer than this no longer fits a short window
WIDE_HIDDEN = 512  # the width of a run whose --max-time allows many epochs of it (defaults.py)
# a run without a budget on a text too small for this many steps in 20 epochs gets more
# epochs and evaluations this often (defaults.epoch_bound)
SMALL_TEXT_STEPS, SMALL_TEXT_EVAL_EVERY = 600, 100


def default_embedding_size(vocab_size: int) -> int:
    """One-hot input is a cheap row gather, but its (V, G) weights get a full Adam update every
    step; for thousands of characters (Japanese, Chinese) a small embedding is far cheaper."""
    return 0 if vocab_size <= ONE_HOT_MAX_VOCAB else 64


@dataclass(frozen=True)
class ModelConfig:
    """The shape of the network. `embedding_size` 0 folds the one-hot input into the rows of
    layer 0's input weights; a positive value adds a learned (V, E) embedding first."""

    vocab_size: int
    cell: str = "gru"  # learns faster per step and per second than the lstm (docs/RESULTS.md)
    hidden_size: int = 256
    num_layers: int = 2
    dropout: float = 0.0
    embedding_size: int = 0
    peephole: bool = False
    nonlinearity: str = "tanh"

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, not {self.cell!r}")
        if self.nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}")
        if self.peephole and self.cell != "lstm":
            raise ValueError("peephole connections exist only for the lstm cell")
        if self.nonlinearity != "tanh" and self.cell != "rnn":
            raise ValueError("nonlinearity applies only to the rnn cell")
        if self.vocab_size < 1 or self.hidden_size < 1 or self.num_layers < 1:
            raise ValueError("vocab_size, hidden_size and num_layers must be positive")
        if self.embedding_size < 0:
            raise ValueError("embedding_size must be >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return _from_dict(cls, d)


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained; the defaults are `charrnn train`'s (the CLI reads them from here).
    Times are seconds; 0 disables a limit or a schedule."""

    seq_len: int = SHORT_WINDOW
    batch_size: int = 32
    lr: float = 2e-3
    lr_decay: float = 1.0
    lr_decay_every: int = 0
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    # the last fraction of a bounded run (steps, epochs or time) over which lr falls to 0
    warmdown: float = 0.3
    grad_clip: float = 5.0
    val_frac: float = 0.1
    seed: int = 0
    epochs: float = 20.0
    max_steps: int = 0
    max_time: float = 0.0
    patience: int = 5
    eval_every: int = 400
    eval_chars: int = 65_536  # a fixed sample of validation text (data.sampled_eval_windows); 0: all
    save_every: int = 200
    workers: int = 0  # processes sharing each step's streams; 0: one per core (parallel.auto_workers)
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        return _from_dict(cls, d)


@dataclass(frozen=True)
class ServeLimits:
    """What `charrnn serve` allows: a request beyond a limit gets a 4xx JSON error naming it, and
    generations beyond max_concurrent get 503 at once instead of a queue without bound."""

    max_length: int = 10_000  # new characters per sample
    max_samples: int = 8  # num_samples per request
    max_body_bytes: int = 1 << 20  # a request's JSON body
    max_score_chars: int = 100_000  # under scoring.PARALLEL_MIN_CHARS: scored in the server's process
    max_concurrent: int = 8  # generations and scores in flight; more wait in no queue


MAX_WINDOW = 100_000  # characters a repeat penalty looks back over


@dataclass(frozen=True)
class SampleOptions:
    """How to sample; the defaults are `charrnn sample`'s. Checked on creation, so a bad value
    from any caller (the CLI, the Python API, a server request) is one CharRNNError naming it."""

    length: int = 1000
    temperature: float = 0.8  # 0 means greedy (argmax)
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0  # 1: no nucleus cut
    prime: str = ""
    seed: int | None = None
    num_samples: int = 1
    stop: str = ""
    unknown: str = "error"
    # llama.cpp's repeat_penalty over its last repeat_last_n tokens; 1: off
    repeat_penalty: float = 1.0
    repeat_window: int = 64
    # llama.cpp's DRY sampler (--dry-multiplier, --dry-base, --dry-allowed-length,
    # --dry-penalty-last-n) with the newline as its one sequence breaker; 0: off
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 24
    dry_window: int = 64

    def __post_init__(self) -> None:
        for name in ("prime", "stop"):
            if not isinstance(getattr(self, name), str):
                raise CharRNNError(f"{name} must be a string, not {json_kind(getattr(self, name))}")
        _check_int("length", self.length, 0)
        _check_int("top_k", self.top_k, 0)
        _check_int("num_samples", self.num_samples, 1)
        # a window is memory (num_samples x window) taken at once: a request must not ask for GBs
        _check_int("repeat_window", self.repeat_window, 1, MAX_WINDOW)
        _check_int("dry_allowed_length", self.dry_allowed_length, 1)
        _check_int("dry_window", self.dry_window, 1, MAX_WINDOW)
        if self.seed is not None:
            _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_float("temperature", self.temperature, lambda x: x >= 0, ">= 0")
        _check_float("top_p", self.top_p, lambda x: 0 < x <= 1, "in (0, 1]")
        _check_float("repeat_penalty", self.repeat_penalty, lambda x: x >= 1, ">= 1")
        _check_float("dry_multiplier", self.dry_multiplier, lambda x: 0 <= x <= 100, "in [0, 100]")
        _check_float("dry_base", self.dry_base, lambda x: 1 <= x <= 10, "in [1, 10]")
        if self.unknown not in UNKNOWN_POLICIES:
            raise CharRNNError(f"unknown must be one of {', '.join(UNKNOWN_POLICIES)}, not {self.unknown!r}")


def json_kind(value) -> str:
    """How a JSON client would name value's type, for error messages."""
    return "null" if value is None else type(value).__name__


def _check_int(name: str, value, lo: int, hi: int | None = None) -> None:
    # bool is an int to Python, but `true` for a length is a client's mistake
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise CharRNNError(f"{name} must be an integer, not {json_kind(value)}")
    if value < lo or (hi is not None and value > hi):
        raise CharRNNError(f"{name} must be >= {lo}{f' and <= {hi}' if hi is not None else ''}, not {value}")


def _check_float(name: str, value, in_range: Callable[[float], bool], bounds: str) -> None:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise CharRNNError(f"{name} must be a number, not {json_kind(value)}")
    if not (math.isfinite(value) and in_range(value)):
        raise CharRNNError(f"{name} must be a finite number {bounds}, not {value}")


def _from_dict(cls: type, d: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return cls(**d)
