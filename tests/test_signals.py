"""Interrupting training: SIGINT / SIGTERM save at a step boundary and exit 130 / 143 with no
completed step lost; kill -9 at random moments never leaves an unloadable checkpoint or lets
the step go backwards; a non-finite loss never reaches a checkpoint.

`make test` runs a short kill storm; `make stress` (marker `stress`) runs the long one."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from charrnn.checkpoint import load_checkpoint
from charrnn.cli import main
from charrnn.model import CharRNN

TINY = [
    "--hidden-size",
    "16",
    "--layers",
    "1",
    "--seq-len",
    "16",
    "--batch-size",
    "4",
    "--patience",
    "0",
    "-q",
]


def start(corpus, out, *extra, env=None, new_session=False) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "charrnn", "train", str(corpus), "-o", str(out), *TINY, *map(str, extra)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, OPENBLAS_NUM_THREADS="1", **(env or {})),
        start_new_session=new_session,
    )


def metrics_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    # a kill can land mid-line: only whole records count
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]


def wait_for_step(out: Path, proc: subprocess.Popen, step: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics_steps(out) and metrics_steps(out)[-1] >= step:
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within {timeout}s")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_and_exits(corpus, tmp_path, sig, code):
    out = tmp_path / "run"
    proc = start(corpus, out, "--max-steps", 10**6, "--eval-every", 3, "--save-every", 10**6)
    wait_for_step(out, proc, 6)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    done = int(re.search(r"stopped after step (\d+)", stderr).group(1))
    ckpt = load_checkpoint(out / "last.npz")
    assert ckpt.progress["step"] == done >= metrics_steps(out)[-1]  # zero completed steps lost


def group_alive(pgid: int) -> bool:
    """Whether a live process of the group is left. Zombies do not count: a worker that exited
    stays one until whatever adopted it (init, or a container's PID 1) reaps it."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue  # the process ended while being read
        if int(group) == pgid and state != "Z":
            return True
    return False


def group_gone(pgid: int, timeout: float = 15) -> bool:
    """True once no live process of the group is left, waiting up to timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return True
        time.sleep(0.05)
    return False


def test_ctrl_c_with_workers_saves_and_leaves_no_process(corpus, tmp_path):
    out = tmp_path / "run"
    # Ctrl-C in a terminal signals the whole process group: the workers ignore it, the parent saves
    proc = start(corpus, out, "--max-steps", 10**6, "--eval-every", 3, "--workers", 2, new_session=True)
    wait_for_step(out, proc, 6)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    done = int(re.search(r"stopped after step (\d+)", stderr).group(1))
    assert load_checkpoint(out / "last.npz").progress["step"] == done >= metrics_steps(out)[-1]
    assert group_gone(proc.pid)


def test_workers_exit_when_the_parent_is_killed(corpus, tmp_path):
    out = tmp_path / "run"
    proc = start(corpus, out, "--max-steps", 10**6, "--eval-every", 3, "--workers", 2, new_session=True)
    wait_for_step(out, proc, 3)
    proc.kill()
    proc.communicate()
    assert group_gone(proc.pid)


def test_second_interrupt_during_save_is_harmless(corpus, tmp_path):
    out = tmp_path / "run"
    # a slowed save keeps the second signal inside it
    proc = start(corpus, out, "--max-steps", 10**6, "--eval-every", 3, env={"CHARRNN_TEST_SAVE_DELAY": "0.5"})
    wait_for_step(out, proc, 3)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert load_checkpoint(out / "last.npz").progress["step"] >= 3


def kill_storm(corpus: Path, out: Path, kills: int, seed: int, workers: int = 1) -> None:
    rng = random.Random(seed)
    save_every = 2
    last_step = 0
    in_save = max_lost = 0
    for i in range(kills):
        # no epoch limit: the storm outlasts the default 20 epochs of this corpus (step 3,280), and
        # kills of runs that have nothing left to train would test nothing
        args = ["--max-steps", 10**6, "--epochs", 0, "--eval-every", 1, "--save-every", save_every]
        args += ["--eval-chars", 64, "--workers", workers]
        resume = ["--resume"] if (out / "last.npz").exists() else []
        env = {"CHARRNN_TEST_SAVE_DELAY": "0.02"}
        proc = start(corpus, out, *args, *resume, env=env, new_session=True)
        time.sleep(rng.uniform(0.6, 2.0))
        proc.kill()
        proc.communicate()
        assert group_gone(proc.pid), f"kill {i}: a worker outlived its parent"
        if not (out / "last.npz").exists():
            continue
        step = load_checkpoint(out / "last.npz").progress["step"]  # always loads
        assert step >= last_step, f"kill {i}: step went back from {last_step} to {step}"
        completed = max(metrics_steps(out), default=0)
        assert completed - step <= save_every, f"kill {i}: lost {completed - step} steps"
        last_step = step
        in_save += any(".tmp-" in p.name for p in out.iterdir())  # killed between write and rename
        max_lost = max(max_lost, completed - step)
    # the next start cleans up whatever temp files the kills left behind
    result = CliRunner().invoke(
        main, ["train", str(corpus), "-o", str(out), "--resume", "--max-steps", last_step + 1, "-q"]
    )
    assert result.exit_code == 0, result.output
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]
    assert last_step > 0
    print(
        f"\n[stress] kill -9 storm ({workers} worker(s)): {kills} kills, {in_save} inside a save (temp "
        f"file left, cleaned at the next start), reached step {last_step}, at most {max_lost} completed "
        f"steps lost (save interval {save_every}); every last.npz loaded, no worker outlived its parent"
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_kill_storm_short(corpus, tmp_path, workers):
    kill_storm(corpus, tmp_path / "run", kills=8, seed=1, workers=workers)


@pytest.mark.stress
@pytest.mark.parametrize("workers", [1, 2])
def test_kill_storm_long(corpus, tmp_path, workers):
    kill_storm(corpus, tmp_path / "run", kills=200 // workers, seed=2, workers=workers)


@pytest.mark.stress
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_storm(corpus, tmp_path, sig, code):
    rng = random.Random(3)
    out = tmp_path / "run"
    saved = early = 0
    for _ in range(100):
        resume = ["--resume"] if (out / "last.npz").exists() else []
        # no epoch limit: 100 runs add up to more than the default 20 epochs of this corpus
        proc = start(
            corpus, out, "--max-steps", 10**6, "--epochs", 0, "--eval-every", 1, "--eval-chars", 64, *resume
        )
        time.sleep(rng.uniform(0.7, 1.5))
        before = max(metrics_steps(out), default=0)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
        if proc.returncode == code:
            assert load_checkpoint(out / "last.npz").progress["step"] >= before
            saved += 1
        else:  # the signal came before training began (Python still importing): nothing to lose
            assert proc.returncode == -sig or "KeyboardInterrupt" in stderr, stderr
            early += 1
    step = load_checkpoint(out / "last.npz").progress["step"]
    print(
        f"\n[stress] {signal.Signals(sig).name} storm: 100 signals, {saved} saved and exited {code}, "
        f"{early} before training began; reached step {step}, no completed step lost"
    )


def test_nan_loss_stops_without_writing_nan(corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = CharRNN.loss_and_grads
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        loss, grads, state = real(self, *args, **kwargs)
        return (float("nan") if calls["n"] == 6 else loss), grads, state

    monkeypatch.setattr(CharRNN, "loss_and_grads", poisoned)
    result = CliRunner().invoke(
        main, ["train", str(corpus), "-o", str(out), *TINY, "--max-steps", 20, "--save-every", 2]
    )
    assert result.exit_code == 1
    assert "diverged at step 6" in result.stderr
    ckpt = load_checkpoint(out / "last.npz")
    assert ckpt.progress["step"] == 5
    assert all(np.isfinite(p).all() for p in ckpt.params.values())
