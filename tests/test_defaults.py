"""The corpus-dependent defaults (charrnn/defaults.py)."""

from __future__ import annotations

import numpy as np

from charrnn.config import SMALL_TEXT_EVAL_EVERY, SMALL_TEXT_STEPS, WIDE_HIDDEN, ModelConfig, TrainConfig
from charrnn.defaults import (
    BLOCK_CHARS,
    LONG_RUN_DROPOUT,
    LONG_WINDOW,
    MANY_EPOCHS,
    SAMPLE_BLOCKS,
    SHORT_WINDOW,
    dropout_rate,
    epoch_bound,
    long_line_length,
    model_width,
    planned_epochs,
    window_length,
)
from charrnn.prepare import prepare_run, summary_line
from charrnn.text import TextPolicy
from charrnn.vocab import Vocab


def encoded(text: str) -> tuple[np.ndarray, Vocab]:
    vocab = Vocab.from_text(text)
    return vocab.encode(text)[0], vocab


def lines_of(lengths) -> str:
    return "".join("x" * n + "\n" for n in lengths)


def test_the_long_line_percentile_is_measured_exactly_on_a_small_text():
    ids, vocab = encoded(lines_of([10] * 98 + [70, 90]))
    assert long_line_length(ids, vocab.index["\n"], q=50) == 10
    assert long_line_length(ids, vocab.index["\n"], q=100) == 90


def test_verse_keeps_short_windows_and_code_gets_long_ones():
    assert window_length(*encoded(lines_of([40] * 200 + [60] * 2)))[0] == SHORT_WINDOW
    seq_len, why = window_length(*encoded(lines_of([30] * 95 + [79] * 5)))
    assert seq_len == LONG_WINDOW and "79" in why


def test_text_without_line_breaks_is_one_long_line():
    assert window_length(*encoded("abc " * 1000))[0] == LONG_WINDOW


def test_a_big_text_is_measured_on_a_fixed_sample_not_read_whole():
    ids, vocab = encoded(lines_of([20] * 9 + [99]))

    class Recorded:
        """A 1 G-char text made of ids repeated, which counts the chars read from it."""

        read = 0

        def __len__(self):
            return 10**9

        def __getitem__(self, window: slice):
            Recorded.read += window.stop - window.start
            return np.resize(np.roll(ids, -(window.start % len(ids))), window.stop - window.start)

    assert long_line_length(Recorded(), vocab.index["\n"], q=100) == 99
    assert Recorded.read == SAMPLE_BLOCKS * BLOCK_CHARS


def never_timed() -> float:
    raise AssertionError("the speed was measured although the step or epoch budget decides")


def test_the_tightest_budget_sets_the_planned_epochs():
    chars = 1_000_000
    assert planned_epochs(TrainConfig(epochs=20), chars, never_timed) == 20
    assert planned_epochs(TrainConfig(max_steps=2000), chars, never_timed) == 2000 * 32 * 50 / chars
    # a time budget is timed only when the others allow many epochs
    assert planned_epochs(TrainConfig(max_steps=100, max_time=3600), chars, never_timed) < 1
    assert planned_epochs(TrainConfig(max_time=180), chars, lambda: 20_000.0) == 180 * 20_000 / chars


def test_dropout_only_for_runs_that_go_over_their_text_many_times():
    assert dropout_rate(3.2)[0] == 0.0  # tiny-shakespeare in 3 minutes: dropout only slows learning
    assert dropout_rate(9.6)[0] == LONG_RUN_DROPOUT  # 10 epochs overfit without it
    assert dropout_rate(MANY_EPOCHS)[0] == LONG_RUN_DROPOUT
    assert "about 10 epochs" in dropout_rate(9.6)[1]


def test_a_time_or_step_budget_lifts_the_epoch_bound():
    tiny_shakespeare = 627  # steps an epoch
    assert epoch_bound({}, tiny_shakespeare) == (TrainConfig.epochs, TrainConfig.eval_every, None)
    assert epoch_bound({"max_time": 1200.0}, 8)[0] == 0  # `--max-time 20m` trains for 20 minutes
    assert epoch_bound({"max_steps": 5000, "max_time": 0.0}, 8)[0] == 0


def test_a_small_text_gets_the_epochs_of_enough_steps_and_evaluations_to_stop_them_early():
    epochs, eval_every, why = epoch_bound({}, 8)  # 28 k chars in windows of 32 x 100
    assert epochs * 8 >= SMALL_TEXT_STEPS > (epochs - 1) * 8
    assert eval_every == SMALL_TEXT_EVAL_EVERY < TrainConfig.eval_every
    assert why == f"{SMALL_TEXT_STEPS:,} steps on a text this small"
    assert epoch_bound({"eval_every": 7}, 8)[1] == 7  # what the user asks for stays
    assert epoch_bound({}, SMALL_TEXT_STEPS // TrainConfig.epochs)[0] == TrainConfig.epochs


def test_a_long_time_budget_widens_the_model_unless_the_text_is_small_for_it():
    # tiny-shakespeare, 2x512 GRU (2,496,577 parameters): 20 minutes allow about 6.7 epochs of it
    assert model_width(6.7, 2_496_577, 1_003_855)[0] == WIDE_HIDDEN
    assert model_width(1.1, 2_496_577, 1_003_855)[0] == ModelConfig.hidden_size  # 3 minutes
    small = model_width(60.0, 2_496_577, 28_000)
    assert small == (ModelConfig.hidden_size, "a 512 would be large for this text")


def test_a_small_text_run_says_its_epoch_bound_and_keeps_it(tmp_path):
    corpus = tmp_path / "small.txt"
    corpus.write_text(lines_of([30] * 300), encoding="utf-8")  # 9,300 chars: 10 windows of 16 x 50 an epoch
    model = {"hidden_size": 8, "num_layers": 1}
    trainer = prepare_run([corpus], model, {"batch_size": 16}, TextPolicy(), tmp_path / "run")
    assert trainer.batches.windows_per_epoch == 10
    assert trainer.tcfg.epochs == SMALL_TEXT_STEPS / 10
    assert trainer.tcfg.eval_every == SMALL_TEXT_EVAL_EVERY
    said = f"up to {SMALL_TEXT_STEPS // 10} epochs ({SMALL_TEXT_STEPS:,} steps on a text this small)"
    assert said in summary_line(trainer)
    given = prepare_run([corpus], model, {"batch_size": 16, "epochs": 3.0}, TextPolicy(), tmp_path / "run")
    assert (given.tcfg.epochs, given.tcfg.eval_every) == (3.0, TrainConfig.eval_every)
    assert "up to" not in summary_line(given)


def test_the_budget_is_timed_on_the_device_the_run_will_train_on(tmp_path, monkeypatch):
    timed_on = []
    monkeypatch.setattr(
        "charrnn.prepare.training_speed", lambda model, batches, xp: timed_on.append(xp) or 1e9
    )
    corpus = tmp_path / "text.txt"
    corpus.write_text(lines_of([30] * 3000), encoding="utf-8")
    device = object()  # stands for cupy: the Trainer is built on the host and timed there only by xp
    trainer = prepare_run(
        [corpus], {"num_layers": 1}, {"max_time": 60.0}, TextPolicy(), tmp_path / "run", xp=device
    )
    assert timed_on == [device, device]  # the 256, then the 512 the time allows
    assert trainer.model.config.hidden_size == WIDE_HIDDEN
