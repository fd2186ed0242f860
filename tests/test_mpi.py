"""MPI data parallelism (`mpiexec -n 2 charrnn ...`): the same run as one process or as
`--workers 2`, exact resume with any number of ranks, rank 0 alone writing, a killed rank ending
the job, and one-line errors. The tests that launch ranks skip without the mpi extra (mpi4py and
an mpiexec); every launch has a timeout, so a hang fails the test instead of the suite."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
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
from charrnn.config import ModelConfig
from charrnn.distributed import MPIRunner, SharedError
from charrnn.model import CharRNN

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "mpi_bench.py"
LAUNCH_TIMEOUT = 120  # seconds: far above a launch's few seconds, far below a hung CI job
TINY = ["--hidden-size", "24", "--seq-len", "16", "--batch-size", "8", "--patience", "0", "-q"]
# the runs are cut into budgets (--max-steps 20, then 40): a warmdown would anneal the first one
TINY += ["--eval-every", "20", "--save-every", "20", "--warmdown", "0"]


def _mpiexec() -> str | None:
    beside = Path(sys.executable).with_name("mpiexec")  # the mpich wheel's, in the venv
    return str(beside) if beside.exists() else shutil.which("mpiexec")


@pytest.fixture(scope="module")
def mpiexec() -> str:
    pytest.importorskip("mpi4py")
    path = _mpiexec()
    if path is None:
        pytest.skip("no mpiexec")
    return path


def env(**extra) -> dict:
    return dict(os.environ, OPENBLAS_NUM_THREADS="1", **extra)


def charrnn(*args, ranks: int = 1, mpiexec: str | None = None, **kwargs) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "charrnn", *map(str, args)]
    if ranks > 1:
        cmd = [mpiexec, "-n", str(ranks), *cmd]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, env=kwargs.pop("env", env()), **kwargs
    )


@pytest.fixture(scope="module")
def runs(corpus, mpiexec, tmp_path_factory):
    """Train the same runs once for the module: {name: run directory}."""
    root = tmp_path_factory.mktemp("runs")

    def train(name, *extra, ranks=1):
        result = charrnn("train", corpus, "-o", root / name, *TINY, *extra, ranks=ranks, mpiexec=mpiexec)
        assert result.returncode == 0, result.stderr
        return result

    dropout = ("--dropout", "0.2")
    logs = {
        "mpi": train("mpi", "--max-steps", 40, *dropout, ranks=2),
        "workers": train("workers", "--max-steps", 40, *dropout, "--workers", 2),
        "mpi_half": train("mpi_half", "--max-steps", 20, *dropout, ranks=2),
        "alone": train("alone", "--max-steps", 40, "--workers", 1),
        "mpi_plain": train("mpi_plain", "--max-steps", 40, ranks=2),
        "alone_half": train("alone_half", "--max-steps", 20, "--workers", 1),
    }
    # the 20-step runs continued: one process's under MPI, MPI's with workers and under MPI
    resumed = {"mpi_resumed": "alone_half", "workers_resumed": "mpi_half", "mpi_half_resumed": "mpi_half"}
    for name, source in resumed.items():
        shutil.copytree(root / source, root / name)
    logs["mpi_resumed"] = train("mpi_resumed", "--resume", "--max-steps", 40, ranks=2)
    logs["workers_resumed"] = train("workers_resumed", "--resume", "--max-steps", 40, "--workers", 2)
    logs["mpi_half_resumed"] = train("mpi_half_resumed", "--resume", "--max-steps", 40, ranks=2)
    return {name: root / name for name in logs}, logs


def arrays(run_dir: Path) -> dict:
    """Every array a run's last.npz restores: weights, Adam's moments, the carried state."""
    ckpt = load_checkpoint(run_dir / "last.npz")
    out = {f"param/{k}": v for k, v in ckpt.params.items()}
    out.update({f"adam/{k}": v for k, v in ckpt.optimizer.items()})
    out.update({f"hidden/{k}.{j}": s for k, layer in enumerate(ckpt.hidden) for j, s in enumerate(layer)})
    assert ckpt.progress["step"] == 40
    return out


def test_two_ranks_equal_two_workers_bit_for_bit(runs):
    dirs, _ = runs
    mpi, workers = arrays(dirs["mpi"]), arrays(dirs["workers"])
    for name, a in mpi.items():  # dropout included: the same seeds per stream block
        np.testing.assert_array_equal(a, workers[name], err_msg=name)


def test_two_ranks_equal_one_process_up_to_summation_order(runs):
    dirs, _ = runs
    mpi, alone = arrays(dirs["mpi_plain"]), arrays(dirs["alone"])
    for name in (n for n in mpi if n.startswith("param/")):
        # float32 sums in another order, 40 Adam steps: measured differences are below 1e-6
        np.testing.assert_allclose(mpi[name], alone[name], rtol=0, atol=2e-5, err_msg=name)
    assert not all(np.array_equal(mpi[n], alone[n]) for n in mpi)  # the comparison is not vacuous


def test_resume_under_mpi_is_exact(runs):
    dirs, _ = runs
    done, resumed = arrays(dirs["mpi"]), arrays(dirs["mpi_half_resumed"])
    for name, a in done.items():
        np.testing.assert_array_equal(resumed[name], a, err_msg=name)


def test_resume_with_another_number_of_ranks_continues_the_run(runs):
    dirs, _ = runs
    # an MPI checkpoint continued by two worker processes: the same seeds, so exactly
    done, resumed = arrays(dirs["mpi"]), arrays(dirs["workers_resumed"])
    for name, a in done.items():
        np.testing.assert_array_equal(resumed[name], a, err_msg=name)
    # a one-process checkpoint continued by two ranks: the same run up to summation order
    alone, mpi = arrays(dirs["alone"]), arrays(dirs["mpi_resumed"])
    for name in (n for n in alone if n.startswith("param/")):
        np.testing.assert_allclose(mpi[name], alone[name], rtol=0, atol=2e-5, err_msg=name)


def test_rank_0_alone_prints_and_writes(runs):
    dirs, logs = runs
    log = logs["mpi"]
    assert log.stdout == ""
    assert log.stderr.count("MPI: 2 ranks share each step's 8 streams") == 1
    assert log.stderr.count("stopped after step 40 (max_steps)") == 1
    assert "Traceback" not in log.stderr
    records = [json.loads(line) for line in (dirs["mpi"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [20, 40]  # one record per evaluation, not one per rank
    assert sorted(p.name for p in dirs["mpi"].iterdir()) == ["best.npz", "last.npz", "metrics.jsonl"]
    # the same validation loss as two worker processes: validation is shared and reduced
    workers = [json.loads(line) for line in (dirs["workers"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_loss"] for r in records] == [r["val_loss"] for r in workers]


def test_mpi_checkpoints_are_ordinary(runs):
    dirs, _ = runs
    info = CliRunner().invoke(main, ["info", str(dirs["mpi"] / "last.npz"), "--json"])
    assert info.exit_code == 0 and json.loads(info.output)["step"] == 40
    sample = CliRunner().invoke(main, ["sample", "-c", str(dirs["mpi"]), "-n", "30", "--seed", "1"])
    assert sample.exit_code == 0 and len(sample.output) > 30


def test_scoring_under_mpi_equals_one_process(runs, corpus, mpiexec):
    dirs, _ = runs
    args = ("score", "-c", dirs["alone"], corpus, "--json", "--streams", 8)
    alone, shared = charrnn(*args), charrnn(*args, ranks=2, mpiexec=mpiexec)
    assert shared.returncode == 0, shared.stderr
    assert len(shared.stdout.splitlines()) == 1  # rank 0 alone prints
    a, s = json.loads(alone.stdout), json.loads(shared.stdout)
    assert (s["chars"], s["streams"]) == (a["chars"], a["streams"]) == (a["chars"], 8)
    assert s["nats"] == pytest.approx(a["nats"], rel=1e-6)


def rank_pid(marker: str, rank: int, timeout: float = 30) -> int:
    """The pid of the charrnn process of this rank among those started with marker in their
    environment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for environ in Path("/proc").glob("[0-9]*/environ"):
            try:
                variables = environ.read_bytes().split(b"\0")
            except OSError:
                continue
            if f"MARK={marker}".encode() in variables and f"PMI_RANK={rank}".encode() in variables:
                return int(environ.parent.name)
        time.sleep(0.1)
    raise AssertionError(f"no process of rank {rank}")


def wait_for_save(out: Path, proc: subprocess.Popen, step: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        path = out / "metrics.jsonl"
        if path.exists() and any(
            line.startswith(f'{{"step": {step},') for line in path.read_text().splitlines()
        ):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within 60 s")


def start(corpus, out, mpiexec, marker) -> subprocess.Popen:
    cmd = [mpiexec, "-n", "2", sys.executable, "-m", "charrnn", "train", str(corpus), "-o", str(out), *TINY]
    cmd += ["--max-steps", "100000", "--eval-every", "5", "--save-every", "5"]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(MARK=marker)
    )


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds a rank's process through /proc")
def test_a_killed_rank_ends_the_job_and_leaves_a_checkpoint(corpus, mpiexec, tmp_path):
    out = tmp_path / "run"
    proc = start(corpus, out, mpiexec, marker=tmp_path.name)
    try:
        wait_for_save(out, proc, 15)  # so last.npz holds step 10 or later
        os.kill(rank_pid(tmp_path.name, 1), signal.SIGKILL)
        killed = time.monotonic()
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert time.monotonic() - killed < 30
    assert proc.returncode != 0
    assert "Killed (signal 9)" in stdout + stderr  # the launcher says how the rank ended
    step = load_checkpoint(out / "last.npz").progress["step"]
    assert step >= 10
    resumed = charrnn("train", corpus, "-o", out, *TINY, "--resume", "--max-steps", step + 2)
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(out / "last.npz").progress["step"] == step + 2


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_to_the_launcher_saves_once(corpus, mpiexec, tmp_path, sig, status):
    out = tmp_path / "run"
    proc = start(corpus, out, mpiexec, marker=tmp_path.name)
    try:
        wait_for_save(out, proc, 10)
        proc.send_signal(sig)  # mpiexec passes it on to every rank
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == status, stderr
    stops = re.findall(rf"stopped after step (\d+) \({sig.name}\)", stderr)
    assert len(stops) == 1, stderr
    assert load_checkpoint(out / "last.npz").progress["step"] == int(stops[0]) >= 10


@pytest.mark.parametrize(
    "args, status, message",
    [
        (["--workers", "2"], 2, "Invalid value for '--workers': cannot be combined with mpiexec"),
        (["--batch-size", "1"], 1, "Error: --batch-size 1 is less than the 2 MPI ranks"),
    ],
)
def test_options_that_cannot_combine_with_mpi(corpus, mpiexec, tmp_path, args, status, message):
    result = charrnn("train", corpus, "-o", tmp_path, "-q", *args, ranks=2, mpiexec=mpiexec)
    assert result.returncode == status
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "module, rank, message",
    [
        ("raise ImportError('No module named mpi4py')", "0",
         "Error: started by an MPI launcher (2 processes), but mpi4py is missing: pip install -e '.[mpi]'"),
        ("raise ImportError('No module named mpi4py')", "1", ""),  # the other ranks stay quiet
        ("from types import SimpleNamespace\nCOMM_WORLD = SimpleNamespace(size=1)", "0",
         "Error: the MPI launcher started 2 processes, but mpi4py sees 1: it was built for another MPI"),
    ],
)  # fmt: skip
def test_a_broken_mpi4py_is_one_line(corpus, tmp_path, module, rank, message):
    """An MPI launcher's environment and an mpi4py that cannot import, or that belongs to another
    MPI: no mpiexec or mpi4py is needed to test it."""
    fake = tmp_path / "site" / "mpi4py"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(module if module.startswith("raise") else "")
    (fake / "MPI.py").write_text(module)
    path = os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])
    result = charrnn(
        "train", corpus, "-o", tmp_path / "run", env=env(PYTHONPATH=path, PMI_SIZE="2", PMI_RANK=rank)
    )
    assert result.returncode == 1
    assert message in result.stderr
    assert len(result.stderr.splitlines()) == (1 if message else 0)
    assert not (tmp_path / "run").exists()


class OtherRank:
    """A communicator of rank 0 of 2 whose other rank's weights sum to `other` (for MAX)."""

    rank, size = 0, 2

    def __init__(self, other: float):
        self.other = other

    def Bcast(self, buf, root):
        pass

    def Allreduce(self, sendbuf, recvbuf, op):
        np.maximum(recvbuf, [self.other, -self.other], out=recvbuf)


def test_weights_that_drift_apart_stop_the_run():
    pytest.importorskip("mpi4py")
    model = CharRNN.create(ModelConfig(vocab_size=5, hidden_size=4, num_layers=1))
    total = sum(float(p.sum(dtype=np.float64)) for p in model.params.values())
    MPIRunner(model, OtherRank(total)).check_weights()
    with pytest.raises(SharedError, match="the MPI ranks' weights differ"):
        MPIRunner(model, OtherRank(total + 1e-6)).check_weights()


def test_the_benchmark_runs_and_every_figure_is_positive(mpiexec, tmp_path):
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT,
        env=env(),
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    assert [t["mode"] for t in figures["training"]] == ["one process", "workers", "mpiexec"]
    assert list(figures["allreduce"]) == ["shm", "tcp lo"]
    rows = [r for records in figures["allreduce"].values() for r in records] + figures["training"]
    numbers = [v for row in rows + figures["model"] for v in row.values() if isinstance(v, (int, float))]
    assert numbers and all(math.isfinite(v) and v > 0 for v in numbers)
    assert "eff@64" in done.stdout


@pytest.mark.parametrize("given, threads", [(None, "1"), ("3", "3")])
def test_a_rank_gets_one_blas_thread_unless_told(given, threads):
    variables = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    variables.update(PMI_SIZE="2", **({"OPENBLAS_NUM_THREADS": given} if given else {}))
    probe = "import charrnn, os; print(os.environ['OPENBLAS_NUM_THREADS'])"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=variables, timeout=60
    )
    assert done.stdout.strip() == threads, done.stderr


@pytest.mark.parametrize(
    "theirs, what",
    [(None, "corpus"), (["--dropout", "0.1"], "model"), (["--lr", "0.01"], "options")],
)
def test_ranks_given_different_runs_are_refused(corpus, mpiexec, tmp_path, theirs, what):
    other = tmp_path / "numbers.txt"  # the same name and length, one character changed
    text = corpus.read_text(encoding="utf-8")
    other.write_text("eno" + text[3:], encoding="utf-8")
    train = [sys.executable, "-m", "charrnn", "train", "-o", str(tmp_path / "run"), *TINY]
    rank_1 = [str(other)] if theirs is None else [str(corpus), *theirs]  # None: the other corpus
    cmd = [mpiexec, "-n", "1", *train, str(corpus), ":", "-n", "1", *train, *rank_1]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, env=env())
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"Error: rank 1 was given another {what} than rank 0: every rank must run the same command on "
        "the same files (a shared filesystem, or identical copies)"
    )


def test_an_error_on_one_rank_alone_ends_the_job(corpus, mpiexec, tmp_path):
    """The other rank would otherwise wait for it forever in its next collective."""
    train = [sys.executable, "-m", "charrnn", "train", "-o", str(tmp_path / "run"), *TINY]
    cmd = [mpiexec, "-n", "1", *train, str(corpus), ":", "-n", "1", *train, str(tmp_path / "missing.txt")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, env=env())
    assert done.returncode == 2  # rank 1's usage error
    assert "missing.txt' does not exist" in done.stderr
    assert "MPI_Abort(MPI_COMM_WORLD, 2) - process 1" in done.stderr


def test_two_hosts_over_tcp_equal_two_workers(runs, corpus, mpiexec, tmp_path):
    """Two network namespaces joined by a veth pair stand for two machines: the ranks reach
    each other through TCP only (benchmarks/mpi_bench.py sets them up, as root, with MPICH)."""
    from mpi4py import MPI

    if os.geteuid() != 0 or shutil.which("ip") is None or "MPICH" not in MPI.Get_library_version():
        pytest.skip("needs root, iproute2 and MPICH")
    spec = importlib.util.spec_from_file_location("mpi_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "run"
    train = [sys.executable, "-m", "charrnn", "train", str(corpus), "-o", str(out), *TINY]
    cmd = bench.on_two_hosts([*train, "--max-steps", "40", "--dropout", "0.2"])
    try:
        with bench.two_hosts(""):
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, env=env(**bench.VETH)
            )
    except subprocess.CalledProcessError as e:
        pytest.skip(f"no network namespaces here: {e}")
    assert done.returncode == 0, done.stderr
    dirs, _ = runs
    over_tcp, workers = arrays(out), arrays(dirs["workers"])
    for name, a in over_tcp.items():
        np.testing.assert_array_equal(a, workers[name], err_msg=name)


def test_rank_0s_weights_are_everyones(runs, corpus, mpiexec, tmp_path):
    """Start-up broadcasts rank 0's weights: with --init-from another checkpoint on rank 1, the
    run is still the one that starts from rank 0's."""
    dirs, _ = runs
    train = [sys.executable, "-m", "charrnn", "train", str(corpus), *TINY, "--max-steps", "20"]
    ours, theirs = (str(dirs[name] / "last.npz") for name in ("alone", "alone_half"))  # one model
    mixed = [*train, "-o", str(tmp_path / "mixed"), "--init-from"]
    cmd = [mpiexec, "-n", "1", *mixed, ours, ":", "-n", "1", *mixed, theirs]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, env=env())
    assert done.returncode == 0, done.stderr
    reference = charrnn(*train[3:], "-o", tmp_path / "ours", "--init-from", ours, "--workers", 2)
    assert reference.returncode == 0, reference.stderr
    a, b = (load_checkpoint(tmp_path / name / "last.npz").params for name in ("mixed", "ours"))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
