"""Sampling draws from the distribution it claims: softmax(logits / temperature), cut by top-k
and top-p, checked against frequencies of many draws."""

from __future__ import annotations

import numpy as np
import pytest

from charrnn.config import SampleOptions
from charrnn.sampling import (
    RecentChars,
    RepeatedSequences,
    choose,
    generate,
    next_distribution,
    penalize_repeats,
    penalize_sequences,
)
from charrnn.vocab import Vocab

LOGITS = np.array([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]], dtype=np.float32)
DRAWS = 40_000


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def frequencies(opts: SampleOptions) -> np.ndarray:
    rng = np.random.default_rng(0)
    batch = np.repeat(LOGITS, DRAWS, axis=0)  # every row an independent stream
    return np.bincount(choose(batch, opts, rng), minlength=LOGITS.shape[1]) / DRAWS


@pytest.mark.parametrize(
    "opts, expected",
    [
        (SampleOptions(temperature=1.0), softmax(LOGITS[0].astype(float))),
        (SampleOptions(temperature=0.5), softmax(LOGITS[0] / 0.5)),
        (SampleOptions(temperature=2.0, top_k=3), np.r_[softmax(LOGITS[0, :3] / 2.0), 0, 0, 0]),
        # cumulative mass of the sorted softmax: 0.56, 0.77, 0.89 ... top-p 0.7 keeps two characters
        (SampleOptions(temperature=1.0, top_p=0.7), np.r_[softmax(LOGITS[0, :2]), 0, 0, 0, 0]),
    ],
)
def test_draws_follow_the_distribution(opts, expected):
    np.testing.assert_allclose(
        next_distribution(LOGITS, opts.temperature, opts.top_k, opts.top_p)[0],
        expected,
        rtol=1e-6,
        atol=1e-12,
    )
    freq = frequencies(opts)
    # binomial standard error is at most 0.0025 for 40,000 draws: 5 of them
    np.testing.assert_allclose(freq, expected, atol=0.0125)
    assert np.all(freq[expected == 0] == 0)  # a cut character is never drawn


def test_greedy_takes_the_largest():
    assert choose(np.array([[0.1, 3.0, 2.9]]), SampleOptions(temperature=0), np.random.default_rng(0)) == [1]


def test_the_repeat_penalty_moves_recent_characters_toward_unlikely():
    logits = np.array([[2.0, -1.0, 3.0, -2.0]])
    seen = np.array([[True, True, False, False]])
    np.testing.assert_array_equal(penalize_repeats(logits, seen, 2.0), [[1.0, -2.0, 3.0, -2.0]])


def test_recent_characters_slide_with_the_window():
    recent = RecentChars(2, 5, window=3, first=[np.array([0, 1])])
    for ids in ([2, 2], [3, 2], [4, 2]):
        recent.push(np.array(ids))
    # stream 0 wrote 0 2 3 4 (0 has left its last 3); stream 1 wrote 1 2 2 2
    np.testing.assert_array_equal(recent.seen(), [[0, 0, 1, 1, 1], [0, 0, 1, 0, 0]])


class Stuck:
    """A model that always prefers 'a', then 'b' a little less, whatever it read."""

    def step(self, ids, state=None):
        return np.tile(np.array([[0.0, 5.0, 4.0]]), (len(ids), 1)), state  # newline, a, b

    def forward(self, x, state=None):
        return None, state


def test_a_repeat_penalty_breaks_a_loop_and_is_off_at_one():
    vocab = Vocab.from_text("ab\n")
    greedy = {"length": 6, "temperature": 0.0}

    def text(**options):
        return "".join(p[0] for p in generate(Stuck(), vocab, SampleOptions(**greedy, **options)))

    assert text() == text(repeat_penalty=1.0) == "aaaaaa"
    # 'a' falls to 5 / 2 = 2.5 < 4 once written; with a window of 1 it comes back after one 'b'
    assert text(repeat_penalty=2.0, repeat_window=1) == "ababab"


def longest_repeats(text: list[int], window: int, breaker: int, vocab_size: int) -> np.ndarray:
    """DRY's lengths by their definition, one position at a time: for each character c, the
    longest n such that the text's last n characters (none of them the breaker) also stand just
    before a c among the last `window` positions."""
    m, out = len(text), np.zeros(vocab_size, dtype=np.int64)
    for p in range(max(0, m - window), m):
        n = 0
        while n < p and text[p - 1 - n] == text[m - 1 - n] != breaker:
            n += 1
        out[text[p]] = max(out[text[p]], n)
    return out


def test_repeated_sequences_follow_their_definition():
    rng = np.random.default_rng(0)
    for _ in range(200):  # three characters and a breaker (3): repeats of every length turn up
        texts = rng.integers(4, size=(2, int(rng.integers(1, 40)))) * (rng.random() < 0.5)
        texts[:, rng.random(texts.shape[1]) < 0.3] = 1  # runs of one character, too
        repeats = RepeatedSequences(2, 4, window=12, breaker=3, first=texts[:, :1].T)
        for column in texts[:, 1:].T:
            repeats.push(column)
        expected = [longest_repeats(list(t), 12, 3, 4) for t in texts]
        np.testing.assert_array_equal(repeats.lengths(), expected)


def test_the_dry_penalty_grows_with_the_repeat_past_the_allowed_length():
    logits = np.zeros((1, 4))
    lengths = np.array([[1, 2, 3, 5]])
    np.testing.assert_allclose(penalize_sequences(logits, lengths, 0.8, 2.0, 2), [[0, -0.8, -1.6, -6.4]])


def test_dry_ends_a_run_at_its_allowed_length_and_is_off_at_zero():
    vocab = Vocab.from_text("ab\n")
    greedy = {"length": 12, "temperature": 0.0}

    def text(**options):
        return "".join(p[0] for p in generate(Stuck(), vocab, SampleOptions(**greedy, **options)))

    assert text() == text(dry_multiplier=0.0) == "a" * 12
    # after "aaaa" the suffix "aaa" stood before an 'a' already: 5 - 2 * 1.5 ** 0 = 3 < 4, so 'b'
    dry = {"dry_multiplier": 2.0, "dry_base": 1.5, "dry_allowed_length": 3, "dry_window": 64}
    assert text(**dry).startswith("aaaab")


def test_a_newline_ends_every_repeat():
    text = np.array([[0], [1], [2], [0], [1], [2]])  # "ab\nab\n", the newline being 2
    lengths = RepeatedSequences(1, 3, 16, breaker=2, first=text).lengths()
    np.testing.assert_array_equal(lengths, [[0, 0, 0]])
    # with no breaker, "ab\n" stood before an 'a' already
    assert RepeatedSequences(1, 3, 16, breaker=-1, first=text).lengths()[0, 0] == 3
