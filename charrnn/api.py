"""The Python API: what `charrnn train | sample | score | perplexity | info` do, as calls.

    import charrnn
    model = charrnn.load("checkpoints/demo")        # a .npz, or a run directory (its best.npz)
    text = model.generate("def ", length=200, temperature=0.7, seed=1)
    for piece in model.stream("def ", length=200):  # the text as it is made
        print(piece, end="", flush=True)
    model.score("for i in range(3):\\n").bits_per_char
    model.surprisal("for i in range(3):\\n")         # nats per character, NaN for the first
    result = charrnn.train("corpus.txt", "checkpoints/run", max_time=60)

A Model is a loaded checkpoint and nothing that changes: every call makes its own hidden state
and random generator, so threads may share one Model (`charrnn serve` does). The commands are
thin layers over these calls, so the options, their defaults and the results are the same.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .backend import resolve_device
from .checkpoint import Checkpoint, load_checkpoint
from .config import SampleOptions
from .data import expand_paths
from .errors import CharRNNError
from .sampling import generate
from .scoring import Score, score_file, score_lines, score_text, text_surprisal
from .text import TextPolicy, read_text
from .vocab import Vocab, to_codepoints

if TYPE_CHECKING:
    from .trainer import RunResult


def load(path: str | os.PathLike[str], device: str = "cpu") -> Model:
    """Load a checkpoint: a .npz file, or a run directory (its best.npz). device: cpu, gpu
    (needs CuPy) or auto. CheckpointError when the file is missing or damaged."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.npz"
    return Model(load_checkpoint(path), path, device)


class Model:
    """A trained model ready to generate and score text."""

    def __init__(self, checkpoint: Checkpoint, path: Path, device: str = "cpu"):
        self.checkpoint = checkpoint
        self.path = path
        self.network = checkpoint.model().to(resolve_device(device))

    def __repr__(self) -> str:
        cfg = self.network.config
        shape = f"{cfg.cell} {cfg.num_layers}x{cfg.hidden_size}, {cfg.vocab_size} characters"
        return f"<charrnn.Model {shape}: {self.path}>"

    @property
    def vocab(self) -> Vocab:
        return self.checkpoint.vocab

    @property
    def text_policy(self) -> TextPolicy:
        return self.checkpoint.text_policy

    # ------------------------------------------------------------------ generating

    def stream(
        self,
        prime: str = "",
        length: int = SampleOptions.length,
        temperature: float = SampleOptions.temperature,
        top_k: int = SampleOptions.top_k,
        top_p: float = SampleOptions.top_p,
        seed: int | None = None,
        stop: str = "",
        repeat_penalty: float = SampleOptions.repeat_penalty,
        repeat_window: int = SampleOptions.repeat_window,
        dry_multiplier: float = SampleOptions.dry_multiplier,
        dry_base: float = SampleOptions.dry_base,
        dry_allowed_length: int = SampleOptions.dry_allowed_length,
        dry_window: int = SampleOptions.dry_window,
        unknown: str = "error",
    ) -> Iterator[str]:
        """Yield a sample piece by piece as it is made: the prime first, then one character at a
        time, until `length` new characters or the `stop` string has been written.

        temperature 0 is greedy; top_k 0 and top_p 1 keep every character; the same seed gives
        the same text; repeat_penalty > 1 makes the characters of the last repeat_window less
        likely (llama.cpp's); dry_multiplier > 0 turns on llama.cpp's DRY, which stops the text
        repeating a stretch of dry_allowed_length or more characters of its last dry_window
        (runs of one character, looping lines); unknown="skip" leaves out prime characters the model never saw
        (else CharRNNError lists them). Bad values raise CharRNNError here, before any work."""
        opts = SampleOptions(
            length=length,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            prime=prime,
            seed=seed,
            stop=stop,
            unknown=unknown,
            repeat_penalty=repeat_penalty,
            repeat_window=repeat_window,
            dry_multiplier=dry_multiplier,
            dry_base=dry_base,
            dry_allowed_length=dry_allowed_length,
            dry_window=dry_window,
        )
        return (pieces[0] for pieces in self.samples(opts))

    def samples(self, options: SampleOptions) -> Iterator[list[str]]:
        """The pieces of options.num_samples samples made together as one batch: one list per
        step, a piece per sample ("" for a sample that has met its stop string)."""
        return generate(self.network, self.vocab, options)

    def generate(self, prime: str = "", **options: Any) -> str:
        """One sample, the prime included, as `charrnn sample` prints it. Takes stream's options."""
        return "".join(self.stream(prime, **options))

    def generate_many(self, n: int, prime: str = "", **options: Any) -> list[str]:
        """n samples made together as one batch (`charrnn sample --num-samples n`); each is
        independent of the others, and one seed repeats all n. Takes stream's options."""
        texts: list[list[str]] = [[] for _ in range(n)]
        for pieces in self.samples(SampleOptions(prime=prime, num_samples=n, **options)):
            for text, piece in zip(texts, pieces):
                text.append(piece)
        return ["".join(t) for t in texts]

    # ------------------------------------------------------------------ scoring

    def score(
        self, text: str, exact: bool = False, streams: int = 64, unknown: str = "error", name: str = "text"
    ) -> Score:
        """How well the model predicts text (as given: no newline policy is applied): a Score
        with nats_per_char, bits_per_char and perplexity. Every character after the first is
        predicted from all before it; `streams` parallel streams share a long text (a text under
        about 1,000 characters is always scored exactly), exact=True runs one."""
        return score_text(self.network, self.vocab, text, name, 1 if exact else streams, unknown, workers=1)

    def score_file(
        self,
        path: str | os.PathLike[str],
        exact: bool = False,
        streams: int = 64,
        unknown: str = "error",
        workers: int = 0,
        show_progress: bool | None = False,
    ) -> Score:
        """score() for a file read with the checkpoint's text policy, without holding it all in
        memory; texts of 100,000 characters or more share their streams among `workers`
        processes (0: one per core)."""
        streams = 1 if exact else streams
        return score_file(
            self.network,
            self.vocab,
            self.text_policy,
            Path(path),
            streams,
            unknown,
            workers,
            show_progress=show_progress,
        )

    def score_lines(self, text: str, unknown: str = "error", name: str = "text") -> list[Score]:
        """Each non-empty line scored on its own, as a sentence (after and before a newline,
        from zero state); the Scores are named name:line-number."""
        return score_lines(self.network, self.vocab, text, name, unknown)

    def surprisal(self, text: str, unknown: str = "error") -> np.ndarray:
        """Nats of each character of text given all the characters before it: a float array as
        long as text, NaN for the first (nothing predicts it) and for characters the model never
        saw (unknown="skip"; "error" refuses them)."""
        return text_surprisal(self.network, self.vocab, text, unknown)[0]

    def known(self, text: str) -> np.ndarray:
        """A bool array as long as text: which of its characters are in the model's vocabulary."""
        return self.vocab.lookup(to_codepoints(text)) >= 0

    def read_file(self, path: str | os.PathLike[str]) -> str:
        """A file's text as the model reads it: the checkpoint's encoding and newline policy."""
        return read_text(Path(path), self.text_policy)

    def info(self) -> dict[str, Any]:
        """What `charrnn info --json` prints: model, vocabulary, training progress, format."""
        return self.checkpoint.describe()


# ---------------------------------------------------------------------- training

MODEL_OPTIONS = ("cell", "hidden_size", "num_layers", "dropout", "embedding_size", "peephole", "nonlinearity")
TRAIN_OPTIONS = (
    "seq_len", "batch_size", "lr", "lr_decay", "lr_decay_every", "plateau_factor", "plateau_patience",
    "warmdown", "grad_clip", "val_frac", "seed", "epochs", "max_steps", "max_time", "patience", "eval_every",
    "eval_chars", "save_every", "workers",
)  # fmt: skip
POLICY_OPTIONS = ("encoding", "errors", "newline")


def train(
    corpus: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None = None,
    *,
    resume: bool = False,
    init_from: str | os.PathLike[str] | None = None,
    unknown: str = "error",
    device: str = "auto",
    show_progress: bool | None = None,
    verbose: bool = True,
    **options: Any,
) -> RunResult:
    """Train a model as `charrnn train` does, with its options under their Python names:
    cell, hidden_size, num_layers, dropout, embedding_size, peephole, nonlinearity (the model);
    seq_len, batch_size, lr, lr_decay, lr_decay_every, plateau_factor, plateau_patience, warmdown,
    grad_clip, val_frac, seed, epochs, max_steps, max_time (seconds), patience, eval_every,
    eval_chars, save_every, workers (the run); encoding, errors, newline (the text policy).

    An option left out takes the CLI's default (ModelConfig, TrainConfig and TextPolicy hold
    them), except that seq_len, hidden_size, dropout and embedding_size are chosen from the corpus and the
    budget as the CLI chooses them, and that on resume or init_from it keeps the checkpoint's
    value (resume refuses a change to what is learnt). corpus: files, directories or glob
    patterns; out: the run directory (default checkpoints/<corpus name>/). verbose prints the
    start-up and final lines on stderr; show_progress None shows a bar when stderr is a
    terminal. SIGINT / SIGTERM stop the run after a save: the result's `signal` says which."""
    # the training stack is imported here, so that loading, sampling and scoring start without it
    from . import distributed
    from .prepare import summary_line

    unknown_names = set(options) - set(MODEL_OPTIONS + TRAIN_OPTIONS + POLICY_OPTIONS)
    if unknown_names:
        raise TypeError(f"train() got unknown options: {', '.join(sorted(unknown_names))}")
    if resume and init_from:
        raise CharRNNError("resume and init_from exclude each other")
    xp = resolve_device(device)  # a missing GPU is refused before anything is read or written
    paths = [corpus] if isinstance(corpus, (str, os.PathLike)) else list(corpus)
    policy_options = {n: options[n] for n in POLICY_OPTIONS if n in options}
    try:
        trainer = distributed.prepare_job(
            expand_paths(paths),
            {n: options[n] for n in MODEL_OPTIONS if n in options},
            {n: options[n] for n in TRAIN_OPTIONS if n in options},
            TextPolicy(**policy_options),
            Path(out) if out is not None else None,
            resume,
            Path(init_from) if init_from is not None else None,
            unknown,
            policy_options,
            show_progress=show_progress,
            xp=xp,
        )
    except ValueError as e:  # a config dataclass refusing a combination (e.g. peephole on a gru)
        raise CharRNNError(str(e)) from None
    trainer.to_device(xp)
    say = (lambda line: print(line, file=sys.stderr)) if verbose else (lambda line: None)
    say(summary_line(trainer))
    result = trainer.run(show_progress=show_progress)
    best = (
        f"best loss {result.best_val:.4f} at step {result.best_step} (on {trainer.validation.coverage()})"
        if result.best_step
        else "no evaluation yet"
    )
    say(f"stopped after step {result.step} ({result.reason}); {best}; checkpoints in {result.out_dir}")
    return result
