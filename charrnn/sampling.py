"""Generating text: prime, temperature, top-k, top-p, repeat penalties, seeds, stop strings, streaming.

The prime text runs through the same whole-sequence forward as training (one call), then each
new character goes through `CharRNN.step`, which shares its activation code with training.
Several samples are one batch: each row of the state is an independent stream.
A model on a GPU keeps its state there; each step's logits (N, V) come back to the host, where
the character is chosen and printed; a seed repeats its text on the same device.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .backend import to_host
from .config import SampleOptions
from .errors import CharRNNError
from .model import CharRNN
from .vocab import Vocab


def next_distribution(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """logits (N, V) -> probabilities (N, V) float64 after temperature, top-k and top-p."""
    z = logits.astype(np.float64) / temperature
    if 0 < top_k < z.shape[1]:
        kth = np.partition(z, -top_k, axis=1)[:, -top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    z -= z.max(axis=1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=1, keepdims=True)
    if top_p < 1.0:
        order = np.argsort(-probs, axis=1)
        sorted_p = np.take_along_axis(probs, order, axis=1)
        # keep the smallest prefix whose mass reaches top_p (always at least the top character)
        drop_sorted = np.cumsum(sorted_p, axis=1) - sorted_p >= top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=1)
        probs[drop] = 0.0
        probs /= probs.sum(axis=1, keepdims=True)
    return probs


def choose(logits: np.ndarray, opts: SampleOptions, rng: np.random.Generator) -> np.ndarray:
    """Pick one id per row of logits (N, V) -> (N,)."""
    if opts.temperature == 0:
        return logits.argmax(axis=1)
    probs = next_distribution(logits, opts.temperature, opts.top_k, opts.top_p)
    cdf = np.cumsum(probs, axis=1)
    u = rng.random((len(cdf), 1)) * cdf[:, -1:]
    return np.minimum((cdf <= u).sum(axis=1), probs.shape[1] - 1)


class RecentChars:
    """Which characters each of n streams wrote among its last `window` (N, V) bool."""

    def __init__(self, n: int, vocab_size: int, window: int, first: np.ndarray):
        # column vocab_size counts the empty slots of a window not yet filled, so every push
        # takes one character out of each row without a test
        self.counts = np.zeros((n, vocab_size + 1), dtype=np.int32)
        self.counts[:, vocab_size] = window
        self.ring = np.full((n, window), vocab_size, dtype=np.int64)
        self.rows, self.pos = np.arange(n), 0
        for ids in first:
            self.push(np.broadcast_to(ids, (n,)))

    def push(self, ids: np.ndarray) -> None:
        self.counts[self.rows, self.ring[:, self.pos]] -= 1
        self.counts[self.rows, ids] += 1
        self.ring[:, self.pos] = ids
        self.pos = (self.pos + 1) % self.ring.shape[1]

    def seen(self) -> np.ndarray:
        return self.counts[:, :-1] > 0


def penalize_repeats(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """llama.cpp's and Hugging Face's repetition penalty: the logit of each character in the
    recent window moves toward less likely (divided by penalty when positive, multiplied when
    negative). logits, seen (N, V) -> new logits (N, V)."""
    return np.where(seen, np.where(logits > 0, logits / penalty, logits * penalty), logits)


class RepeatedSequences:
    """DRY ("don't repeat yourself", llama.cpp's --dry-*) for n streams: for each character,
    the length of the longest suffix of the text being written that, in the last `window`
    characters, was followed by that character before. The suffix never reaches back past a
    newline, so one line may open like earlier ones; what is caught is a line copying itself or
    another line at length, a run of one character being the shortest such copy.

    match (N, W) holds, for each position j of the window, the length of the common suffix of
    the text before j and the whole text; appending x extends it where the text at j-1 is x.
    """

    def __init__(self, n: int, vocab_size: int, window: int, breaker: int, first: np.ndarray):
        self.vocab_size, self.breaker = vocab_size, breaker
        self.ids = np.full((n, window), vocab_size, dtype=np.int64)  # vocab_size: empty slot
        self.match = np.zeros((n, window), dtype=np.int64)
        self.rows = np.broadcast_to(np.arange(n)[:, None], (n, window))
        for ids in first:
            self.push(np.broadcast_to(ids, (n,)))

    def push(self, ids: np.ndarray) -> None:
        match = np.where(self.ids == ids[:, None], self.match + 1, 0)
        match[ids == self.breaker] = 0
        # entry j grew into a match for the position after j, which is entry j once the window slides
        self.match = match
        self.ids = np.concatenate([self.ids[:, 1:], ids[:, None]], axis=1)

    def lengths(self) -> np.ndarray:
        """(N, V): the longest earlier match followed by each character (0 when none)."""
        out = np.zeros((len(self.ids), self.vocab_size + 1), dtype=np.int64)
        np.maximum.at(out, (self.rows, self.ids), self.match)
        return out[:, :-1]


def penalize_sequences(
    logits: np.ndarray, lengths: np.ndarray, multiplier: float, base: float, allowed: int
) -> np.ndarray:
    """DRY's penalty: a character that would extend a repeat of `allowed` or more characters loses
    multiplier * base ** (length - allowed) from its logit. logits, lengths (N, V) -> (N, V)."""
    excess = np.minimum(lengths - allowed, 200)  # base ** 200 is past any logit, and finite
    return np.where(excess >= 0, logits - multiplier * base ** excess.astype(np.float64), logits)


def prime_state(model: CharRNN, vocab: Vocab, prime: str, n: int, unknown: str, rng: np.random.Generator):
    """Run the prime through the model for n streams. -> (last input ids (n,), state, prime as used).

    Without a prime, the model starts as it did at the start of each training stream (zero
    state) reading a newline, when the vocabulary has one, else a random character."""
    if prime:
        ids, skipped = vocab.encode(prime, unknown=unknown)
        if not len(ids):
            raise CharRNNError("the prime has no character in the model's vocabulary")
        used = vocab.decode(ids)
        state = None
        if len(ids) > 1:
            x = np.broadcast_to(ids[:-1].astype(np.int64), (n, len(ids) - 1))
            _, state = model.forward(np.ascontiguousarray(x), None)
        return np.full(n, int(ids[-1])), state, used
    if "\n" in vocab:
        return np.full(n, vocab.index["\n"]), None, ""
    first = rng.integers(len(vocab), size=n)
    return first, None, None  # None: each stream's visible text starts with its random character


def generate(model: CharRNN, vocab: Vocab, opts: SampleOptions) -> Iterator[list[str]]:
    """Yield, step by step, one new piece of text per stream (the prime first).

    A stream that has produced its stop string yields "" from then on; generation ends when
    every stream has stopped or reached opts.length new characters."""
    rng = np.random.default_rng(opts.seed)
    n = opts.num_samples
    ids, state, used = prime_state(model, vocab, opts.prime, n, opts.unknown, rng)
    if used is None:
        yield [vocab.chars[i] for i in ids]
    elif used:
        yield [used] * n
    tails = [""] * n
    done = np.zeros(n, dtype=bool)
    recent = repeats = None
    if opts.repeat_penalty != 1.0 or opts.dry_multiplier > 0:  # a long prime is encoded again only here
        written = vocab.encode(used, unknown="skip")[0] if used else ids[None, :]
    if opts.repeat_penalty != 1.0:
        recent = RecentChars(n, len(vocab), opts.repeat_window, written[-opts.repeat_window :])
    if opts.dry_multiplier > 0:
        breaker = vocab.index.get("\n", -1)
        repeats = RepeatedSequences(n, len(vocab), opts.dry_window, breaker, written[-opts.dry_window :])
    for _ in range(opts.length):
        with np.errstate(over="ignore", invalid="ignore"):
            logits, state = model.step(ids, state)
        logits = to_host(logits)
        if not np.isfinite(logits).all():  # sampling from NaN would quietly print garbage
            raise CharRNNError(
                "the model's outputs overflow (its weights are too large for floating-point "
                "arithmetic), so the checkpoint cannot generate text"
            )
        if recent is not None:
            logits = penalize_repeats(logits, recent.seen(), opts.repeat_penalty)
        if repeats is not None:
            logits = penalize_sequences(
                logits, repeats.lengths(), opts.dry_multiplier, opts.dry_base, opts.dry_allowed_length
            )
        ids = choose(logits, opts, rng)
        for memory in (recent, repeats):
            if memory is not None:
                memory.push(ids)
        pieces = []
        for k, i in enumerate(ids.tolist()):
            if done[k]:
                pieces.append("")
                continue
            ch = vocab.chars[i]
            pieces.append(ch)
            if opts.stop:
                tails[k] = (tails[k] + ch)[-len(opts.stop) :]
                done[k] = tails[k] == opts.stop
        yield pieces
        if done.all():
            return
