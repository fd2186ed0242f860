"""MPI data parallelism on this machine, and the scaling model of docs/SCALING.md:
`.venv/bin/python benchmarks/mpi_bench.py [--ranks 2] [--steps 15] [--json out.json]`.

What runs (LSTM, V = 65, batch 64, seq 100, float32):
    allreduce  under `mpiexec -n RANKS`, over shared memory and (MPICH only) through its TCP
               network module on the loopback interface: one in-place Allreduce (SUM) of the
               float32 buffer MPIRunner sends each step (every gradient, the carried state of
               the 64 streams, the loss) for 2x256, 2x1024 and 3x1024, and of the stop vote (one
               int64) that the ranks agree on before each step; medians
    compute    at the same time, every rank's loss_and_grads on its 64 / RANKS rows (one BLAS
               thread), and clipping plus Adam's update of all weights, which every rank does
               whole: a step's compute, for the Allreduce's share of a step
    training   chars/s of `charrnn train` for 2x256 and 2x512 in one process (RANKS BLAS
               threads), with --workers RANKS and under mpiexec -n RANKS (one BLAS thread per
               process): the speed of the second evaluation period in metrics.jsonl, which
               leaves out start-up and validation
    model      step time = compute / N + Allreduce(bytes, N) on N machines like this one, at 10
               and 100 Gb/s, from the measured compute: efficiency at 4, 16 and 64 machines and
               the batch below which another machine stops paying (docs/SCALING.md)
The data goes to stdout, progress to stderr. `--quick` runs tiny sizes to check the script.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BATCH, SEQ, VOCAB = 64, 100, 65
ALLREDUCE_MODELS = [(2, 256), (2, 1024), (3, 1024)]  # (layers, hidden)
TRAINING_MODELS = [(2, 256), (2, 512)]
LATENCY = 50e-6  # seconds per message between machines (TCP over Ethernet; an assumption)
NETWORKS = {"10 Gb/s": 10e9 / 8, "100 Gb/s": 100e9 / 8}  # bytes/s
MACHINES = (4, 16, 64)
# MPICH: treat the other ranks as remote, and reach them with libfabric's TCP provider
TRANSPORTS = {
    "shared memory": {},
    "TCP loopback": {"MPIR_CVAR_NOLOCAL": "1", "MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp"},
}
ROOT = Path(__file__).resolve().parent.parent


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def mpiexec() -> str:
    beside = Path(sys.executable).with_name("mpiexec")
    return str(beside) if beside.exists() else "mpiexec"


def buffer_elements(layers: int, hidden: int) -> int:
    """What MPIRunner reduces per step: parameters, the state of BATCH streams, the loss."""
    from charrnn.config import ModelConfig
    from charrnn.model import param_shapes

    shapes = param_shapes(ModelConfig(vocab_size=VOCAB, hidden_size=hidden, num_layers=layers))
    return sum(math.prod(s) for s in shapes.values()) + BATCH * hidden * 2 * layers + 1


def timed(fn, reps: int) -> float:
    """Median seconds of fn() over reps calls (a fixed number: every rank must make the same
    collective calls)."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def allreduce_rank(models: list[tuple[int, int]], compute: bool) -> None:
    """Run by every rank under mpiexec; rank 0 prints one JSON object per model."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    vote = np.zeros(1, np.int64)
    vote_s = timed(lambda: comm.Allreduce(MPI.IN_PLACE, vote, op=MPI.MAX), 1000)
    for layers, hidden in models:
        record = measure_model(comm, layers, hidden, compute)
        if comm.rank == 0:
            print(json.dumps(dict(record, vote_s=vote_s)), flush=True)


def measure_model(comm, layers: int, hidden: int, compute: bool) -> dict:
    from mpi4py import MPI

    from charrnn.config import ModelConfig
    from charrnn.model import CharRNN
    from charrnn.optim import Adam, clip_grad_norm
    from charrnn.parallel import split_rows

    n = buffer_elements(layers, hidden)
    buf = np.ones(n, np.float32)

    def reduce():
        comm.Barrier()  # every rank starts together, as after a step of equal work
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)

    reduce_s = timed(reduce, 20)
    record = {"model": f"{layers}x{hidden}", "elements": n, "bytes": 4 * n, "ranks": comm.size}
    if not compute:
        return dict(record, allreduce_s=reduce_s)
    model = CharRNN.create(ModelConfig(vocab_size=VOCAB, hidden_size=hidden, num_layers=layers))
    rows = split_rows(BATCH, comm.size)[comm.rank]
    x = np.random.default_rng(0).integers(VOCAB, size=(rows.stop - rows.start, SEQ))
    comm.Barrier()
    compute_s = timed(lambda: model.loss_and_grads(x, x), 3)
    compute_s = comm.allreduce(compute_s, op=MPI.MAX)  # a step waits for the slowest rank
    adam, grads = Adam(model.params), {k: np.full_like(p, 1e-3) for k, p in model.params.items()}
    update_s = timed(lambda: (clip_grad_norm(grads, 5.0), adam.update(model.params, grads, 1e-9)), 5)
    return dict(record, allreduce_s=reduce_s, compute_s=compute_s, update_s=update_s)


def measure_allreduce(ranks: int, models, transport: dict, compute: bool) -> list[dict]:
    spec = ",".join(f"{layers}x{hidden}" for layers, hidden in models)
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, __file__, "--allreduce-rank", spec]
    cmd += [] if compute else ["--no-compute"]
    env = dict(one_thread(), **transport)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800, check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


def one_thread(threads: int = 1) -> dict:
    return dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))


def write_corpus(path: Path, chars: int) -> None:
    """Random text over VOCAB characters: training speed does not depend on what it says."""
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:'!?\n-()"))
    path.write_text("".join(np.random.default_rng(0).choice(alphabet[:VOCAB], chars)), encoding="utf-8")


def training_speed(mode: str, ranks: int, layers: int, hidden: int, steps: int, corpus: Path) -> float:
    """chars/s of the second of two evaluation periods of `steps` steps."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "charrnn", "train", str(corpus), "-o", out, "-q"]
        cmd += ["--hidden-size", str(hidden), "--layers", str(layers), "--batch-size", str(BATCH)]
        cmd += ["--seq-len", str(SEQ), "--max-steps", str(2 * steps), "--eval-every", str(steps)]
        cmd += ["--eval-chars", "2000", "--save-every", "0", "--patience", "0"]
        env = one_thread()
        if mode == "one process":
            cmd += ["--workers", "1"]
            env = one_thread(ranks)
        elif mode == "workers":
            cmd += ["--workers", str(ranks)]
        else:
            cmd = [mpiexec(), "-n", str(ranks), *cmd]
        subprocess.run(cmd, env=env, cwd=ROOT, check=True, timeout=3600, stdout=subprocess.DEVNULL)
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return records[1]["chars_per_sec"]


def allreduce_time(bytes_: float, machines: int, bandwidth: float) -> float:
    """Reduce-scatter then allgather (recursive halving and doubling, MPICH's choice for large
    buffers): 2 log2(N) messages and 2 (N - 1) / N of the buffer sent by every machine."""
    return 2 * math.log2(machines) * LATENCY + 2 * (machines - 1) / machines * bytes_ / bandwidth


def scaling_model(records: list[dict]) -> list[dict]:
    """Per model and network, with a step of T(N) = C B / N + A(N) + U on N machines (C: one
    machine's compute per row, shared by its ranks; A: the Allreduce between machines; U:
    clipping and Adam, which every rank does whole): the efficiency T(1) / (N T(N)) at MACHINES
    for batch BATCH, and the batch B* below which it falls under 50%, where another machine no
    longer pays for itself: B* = (N A + (N - 2) U) / C."""
    rows = []
    for r in records:
        per_row, update = r["compute_s"] / BATCH, r["update_s"]
        alone = per_row * BATCH + update
        for network, bandwidth in NETWORKS.items():
            row = {"model": r["model"], "network": network, "one_machine_step_s": alone}
            for n in MACHINES:
                reduce = allreduce_time(r["bytes"], n, bandwidth)
                row[f"efficiency_{n}"] = alone / (n * (per_row * BATCH / n + reduce + update))
                row[f"break_even_batch_{n}"] = math.ceil((n * reduce + (n - 2) * update) / per_row)
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=15, help="steps per evaluation period")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    ap.add_argument("--json", type=Path, help="also write every figure to this file")
    ap.add_argument("--allreduce-rank", help=argparse.SUPPRESS)
    ap.add_argument("--no-compute", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.allreduce_rank:
        models = [tuple(map(int, m.split("x"))) for m in args.allreduce_rank.split(",")]
        allreduce_rank(models, not args.no_compute)
        return
    allreduce_models = [(1, 32)] if args.quick else ALLREDUCE_MODELS
    training_models = [(1, 32)] if args.quick else TRAINING_MODELS
    steps = 2 if args.quick else args.steps
    log(f"allreduce and compute under mpiexec -n {args.ranks} ...")
    reduced = measure_allreduce(args.ranks, allreduce_models, TRANSPORTS["shared memory"], True)
    log("allreduce through TCP on the loopback interface ...")
    tcp = measure_allreduce(args.ranks, allreduce_models, TRANSPORTS["TCP loopback"], False)
    training = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "random.txt"
        write_corpus(corpus, 20_000 if args.quick else 400_000)
        for layers, hidden in training_models:
            for mode in ("one process", "workers", "mpiexec"):
                log(f"training lstm {layers}x{hidden}, {mode} ...")
                speed = training_speed(mode, args.ranks, layers, hidden, steps, corpus)
                training.append({"model": f"{layers}x{hidden}", "mode": mode, "chars_per_sec": speed})
    model = scaling_model(reduced)

    print(
        f"MPI on this machine: {args.ranks} ranks over shared memory, LSTM V={VOCAB}, "
        f"batch {BATCH}, seq {SEQ}"
    )
    print(
        f"stop vote (8-byte Allreduce): {reduced[0]['vote_s'] * 1e6:.1f} us over shared memory, "
        f"{tcp[0]['vote_s'] * 1e6:.1f} us over TCP loopback"
    )
    print(
        f"\n{'model':<8} {'params+state':>13} {'MB':>7} {'shm ms':>8} {'tcp ms':>8} {'grads ms':>9} "
        f"{'adam ms':>8} {'shm share':>10}"
    )
    for r, t in zip(reduced, tcp):
        share = r["allreduce_s"] / (r["allreduce_s"] + r["compute_s"] + r["update_s"])
        print(
            f"{r['model']:<8} {r['elements']:>13,} {r['bytes'] / 1e6:>7.2f} {r['allreduce_s'] * 1e3:>8.2f} "
            f"{t['allreduce_s'] * 1e3:>8.2f} {r['compute_s'] * 1e3:>9.0f} {r['update_s'] * 1e3:>8.1f} "
            f"{share:>10.1%}"
        )
    print(f"\n{'training':<10} {'mode':<12} {'chars/s':>9}")
    for t in training:
        mode = f"-n {args.ranks}" if t["mode"] == "mpiexec" else t["mode"]
        print(f"lstm {t['model']:<5} {mode:<12} {t['chars_per_sec']:>9,.0f}")
    print(
        f"\nscaling model: machines like this one ({args.ranks} ranks), "
        f"latency {LATENCY * 1e6:.0f} us, batch {BATCH}"
    )
    head = "".join(f" {f'eff@{n}':>7}" for n in MACHINES) + "".join(f" {f'B*@{n}':>8}" for n in MACHINES)
    print(f"{'model':<8} {'network':<9} {'step s':>7}{head}")
    for m in model:
        effs = "".join(f" {m[f'efficiency_{n}']:>7.0%}" for n in MACHINES)
        batches = "".join(f" {m[f'break_even_batch_{n}']:>8,}" for n in MACHINES)
        print(f"{m['model']:<8} {m['network']:<9} {m['one_machine_step_s']:>7.2f}{effs}{batches}")
    if args.json:
        args.json.write_text(
            json.dumps({"allreduce": reduced, "training": training, "model": model}, indent=2)
        )


if __name__ == "__main__":
    main()
