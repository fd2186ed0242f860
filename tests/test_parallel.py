"""Data-parallel training: worker processes over row blocks compute what one process computes."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from charrnn.config import ModelConfig
from charrnn.errors import CharRNNError
from charrnn.model import CharRNN
from charrnn.parallel import (
    DataParallel,
    auto_workers,
    available_cpus,
    cgroup_cpus,
    parallel_or_model,
    split_rows,
)
from charrnn.scoring import PARALLEL_MIN_CHARS, score_ids
from charrnn.validation import evaluate

N, T, V = 9, 7, 20
start = DataParallel._start


def window(rng):
    return rng.integers(V, size=(N, T)), rng.integers(V, size=(N, T))


def random_state(model, rng):
    return tuple(tuple(rng.standard_normal(s.shape) for s in layer) for layer in model.initial_state(N))


@pytest.mark.parametrize(
    "cfg",
    [
        dict(cell="lstm", num_layers=2, hidden_size=12),
        dict(cell="gru", num_layers=2, hidden_size=12, embedding_size=5),
        dict(cell="rnn", num_layers=1, hidden_size=12),
        dict(cell="lstm", num_layers=1, hidden_size=12, peephole=True),
    ],
)
@pytest.mark.parametrize("workers", [2, 3])
def test_workers_equal_one_process(cfg, workers):
    rng = np.random.default_rng(0)
    model = CharRNN.create(ModelConfig(vocab_size=V, **cfg), seed=1, dtype=np.float64)
    x, y = window(rng)
    for state in (None, random_state(model, rng)):
        loss, grads, new_state = model.loss_and_grads(x, y, state)
        with DataParallel(model, N, T, workers) as dp:
            p_loss, p_grads, p_state = dp.loss_and_grads(x, y, state)
            assert p_loss == pytest.approx(loss, rel=1e-12)
            for name, g in grads.items():
                np.testing.assert_allclose(p_grads[name], g, rtol=1e-10, atol=1e-13, err_msg=name)
            for layer, p_layer in zip(new_state, p_state):
                for s, p in zip(layer, p_layer):
                    np.testing.assert_allclose(p, s, rtol=1e-12, atol=1e-14)


def test_workers_read_the_updated_weights_and_hand_them_back():
    rng = np.random.default_rng(0)
    model = CharRNN.create(ModelConfig(vocab_size=V, hidden_size=8, num_layers=1), dtype=np.float64)
    x, y = window(rng)
    with DataParallel(model, N, T, 2) as dp:
        before, _, _ = dp.loss_and_grads(x, y)
        model.params["Wy"] *= 3.0  # an in-place update, as Adam's
        after, _, _ = dp.loss_and_grads(x, y)
        assert after == pytest.approx(model.loss_and_grads(x, y)[0], rel=1e-12)
        assert after != pytest.approx(before)
    assert all(p.flags.owndata for p in model.params.values())  # no view of the closed shared memory
    assert model.loss_and_grads(x, y)[0] == pytest.approx(after, rel=1e-12)


def test_dropout_is_reproducible_from_the_parents_generator():
    rng = np.random.default_rng(0)
    model = CharRNN.create(ModelConfig(vocab_size=V, hidden_size=8, dropout=0.5), dtype=np.float64)
    x, y = window(rng)
    with DataParallel(model, N, T, 2) as dp:
        a = dp.loss_and_grads(x, y, None, np.random.default_rng(5))[0]
        b = dp.loss_and_grads(x, y, None, np.random.default_rng(5))[0]
        c = dp.loss_and_grads(x, y, None, np.random.default_rng(6))[0]
    assert a == b and a != c


def test_a_dead_worker_is_one_clear_error():
    rng = np.random.default_rng(0)
    model = CharRNN.create(ModelConfig(vocab_size=V, hidden_size=8, num_layers=1))
    x, y = window(rng)
    with DataParallel(model, N, T, 2) as dp:
        dp.loss_and_grads(x, y)
        os.kill(dp.procs[1].pid, signal.SIGKILL)
        with pytest.raises(CharRNNError, match=r"training worker 1 stopped \(signal 9\)"):
            dp.loss_and_grads(x, y)


def test_a_failing_worker_reports_its_error():
    rng = np.random.default_rng(0)
    model = CharRNN.create(ModelConfig(vocab_size=V, hidden_size=8, num_layers=1))
    x, y = window(rng)
    x[-1, 0] = V + 5  # an id past the vocabulary, in the second worker's rows
    with DataParallel(model, N, T, 2) as dp, pytest.raises(CharRNNError, match="worker 1 failed: IndexError"):
        dp.loss_and_grads(x, y)


def test_split_rows_and_auto_workers():
    assert split_rows(9, 2) == [slice(0, 4), slice(4, 9)]
    assert [s.stop - s.start for s in split_rows(10, 3)] == [3, 3, 4]
    assert auto_workers(4) == 1  # too few rows to split
    assert 1 <= auto_workers(4096) <= (os.cpu_count() or 1)


def test_nll_and_evaluation_equal_one_process():
    rng = np.random.default_rng(0)
    model = CharRNN.create(ModelConfig(vocab_size=V, hidden_size=10, cell="gru"), seed=2, dtype=np.float64)
    x, y = window(rng)
    state = random_state(model, rng)
    with DataParallel(model, N, T, 2) as dp:
        for t in (T, 3):  # a window may be shorter than the longest the workers were made for
            nats, new_state = model.nll(x[:, :t], y[:, :t], state)
            p_nats, p_state = dp.nll(x[:, :t], y[:, :t], state)
            np.testing.assert_allclose(p_nats, nats, rtol=1e-12)
            np.testing.assert_allclose(p_state[0][0], new_state[0][0], rtol=1e-12, atol=1e-14)
        ids = rng.integers(V, size=500)
        # 500 characters in N streams of T, then a tail the workers do not take
        assert evaluate(model, ids, T, N, dp) == pytest.approx(evaluate(model, ids, T, N), rel=1e-12)
        with pytest.raises(ValueError, match="does not fit"):
            dp.nll(x[:4], y[:4])


def test_scoring_with_workers_equals_one_process(monkeypatch):
    rng = np.random.default_rng(1)
    model = CharRNN.create(ModelConfig(vocab_size=V, hidden_size=8, num_layers=1), dtype=np.float64)
    ids = rng.integers(V, size=PARALLEL_MIN_CHARS + 123)
    alone = score_ids(model, ids, streams=16, workers=1)
    started = []
    monkeypatch.setattr(
        DataParallel, "_start", lambda self, w, spec: started.append(w) or start(self, w, spec)
    )
    shared = score_ids(model, ids, streams=16, workers=2)
    assert started == [0, 1]
    assert shared[1:] == alone[1:] == (len(ids) - 1, 16)
    assert shared[0] == pytest.approx(alone[0], rel=1e-12)


def test_workers_that_cannot_start_leave_training_in_one_process(monkeypatch, capsys):
    model = CharRNN.create(ModelConfig(vocab_size=V, hidden_size=8, num_layers=1))

    def no_processes(*args, **kwargs):
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr("subprocess.Popen", no_processes)
    with parallel_or_model(model, N, T, 2) as runner:
        assert runner is model
    assert "no worker processes" in capsys.readouterr().err
    assert all(p.flags.owndata for p in model.params.values())


@pytest.mark.parametrize(
    "files, cpus",
    [
        ({"cpu.max": "150000 100000\n"}, 2),  # cgroup v2: 1.5 CPUs, rounded up
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_a_containers_cpu_quota_limits_the_workers(tmp_path, files, cpus):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpus(tmp_path) == cpus
    assert available_cpus(tmp_path) == min(len(os.sched_getaffinity(0)), cpus or os.cpu_count())
