"""MPI data parallelism on this machine, and the scaling model of docs/SCALING.md:
`.venv/bin/python benchmarks/mpi_bench.py [--ranks 2] [--steps 15] [--json out.json]`.

What runs (LSTM, V = 65, batch 64, seq 100, float32):
    allreduce  under `mpiexec -n RANKS`, over shared memory and (MPICH only) through its TCP
               network module on the loopback interface; with --netns (root, 2 ranks) also
               between two network namespaces joined by a veth pair, as two hosts, unshaped and
               shaped to 1 Gb/s: one in-place Allreduce (SUM) of the float32 buffer MPIRunner
               sends each step (every gradient, the carried state of the 64 streams, the loss)
               for 2x256, 2x1024 and 3x1024, and of the stop vote (one int64) that the ranks
               agree on before each step; medians
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
import contextlib
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
TCP = {"MPIR_CVAR_NOLOCAL": "1", "MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp"}
NAMESPACES = ("charrnn-bench-0", "charrnn-bench-1")  # with --netns: one host per rank
VETH = dict(TCP, FI_TCP_IFACE="eth9")  # the link between them
# (name, environment, namespaces' link rate: None without namespaces, "" unshaped)
TRANSPORTS = [
    ("shm", {}, None),
    ("tcp lo", TCP, None),
    ("veth", VETH, ""),
    ("veth 1G", VETH, "1gbit"),
]
ROOT = Path(__file__).resolve().parent.parent
TEXT = {"capture_output": True, "text": True}


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


def measure_allreduce(ranks: int, models, transport: dict, compute: bool, hosts: bool) -> list[dict]:
    spec = ",".join(f"{layers}x{hidden}" for layers, hidden in models)
    rank = [sys.executable, __file__, "--allreduce-rank", spec, *([] if compute else ["--no-compute"])]
    cmd = on_two_hosts(rank) if hosts else [mpiexec(), "-n", str(ranks), *rank]
    env = dict(one_thread(), **transport)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800, check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


def on_two_hosts(program: list[str]) -> list[str]:
    """The mpiexec command that runs program as one rank in each of two_hosts' namespaces
    (":" separates the programs of one job)."""
    return [mpiexec()] + [
        arg for ns in NAMESPACES for arg in (":", "-n", "1", "ip", "netns", "exec", ns, *program)
    ][1:]


@contextlib.contextmanager
def two_hosts(rate: str):
    """Two network namespaces joined by a veth pair named eth9 (10.77.0.1 and .2), shaped to
    rate unless it is empty: two hosts on one machine. Needs root and iproute2."""
    a, b = NAMESPACES
    cmds = [
        f"ip netns add {a}",
        f"ip netns add {b}",
        f"ip link add eth9 netns {a} type veth peer name eth9 netns {b}",
    ]
    for k, ns in enumerate(NAMESPACES):
        cmds += [f"ip -n {ns} addr add 10.77.0.{k + 1}/24 dev eth9", f"ip -n {ns} link set eth9 up"]
        cmds += [f"ip -n {ns} link set lo up"]
        if rate:
            cmds.append(
                f"ip netns exec {ns} tc qdisc add dev eth9 root tbf rate {rate} burst 256kb latency 10ms"
            )
    try:
        for cmd in cmds:
            subprocess.run(cmd.split(), check=True)
        # libfabric fails to open its endpoint on a link that is not up yet
        for ns in NAMESPACES:
            while (
                "state UP"
                not in subprocess.run(["ip", "-n", ns, "-o", "link", "show", "eth9"], **TEXT).stdout
            ):
                time.sleep(0.1)
        time.sleep(1)
        yield
    finally:
        for ns in NAMESPACES:
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL, check=False)


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
    ap.add_argument(
        "--netns", action="store_true", help="also between two network namespaces (root, 2 ranks)"
    )
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
    allreduce = {}
    for name, transport, rate in TRANSPORTS:
        if rate is not None and not (args.netns and args.ranks == 2):
            continue
        log(f"allreduce ({name}){' and compute' if not allreduce else ''} under mpiexec -n {args.ranks} ...")
        with contextlib.nullcontext() if rate is None else two_hosts(rate):
            allreduce[name] = measure_allreduce(
                args.ranks, allreduce_models, transport, not allreduce, rate is not None
            )
    reduced = allreduce["shm"]
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
    votes = ", ".join(f"{name} {records[0]['vote_s'] * 1e6:.1f}" for name, records in allreduce.items())
    print(f"stop vote (8-byte Allreduce), us: {votes}")
    print(
        f"\n{'model':<8} {'params+state':>13} {'MB':>7}"
        + "".join(f" {name + ' ms':>11}" for name in allreduce)
        + f" {'grads ms':>9} {'adam ms':>8} {'shm share':>10}"
    )
    for k, r in enumerate(reduced):
        share = r["allreduce_s"] / (r["allreduce_s"] + r["compute_s"] + r["update_s"])
        print(
            f"{r['model']:<8} {r['elements']:>13,} {r['bytes'] / 1e6:>7.2f}"
            + "".join(f" {records[k]['allreduce_s'] * 1e3:>11.2f}" for records in allreduce.values())
            + f" {r['compute_s'] * 1e3:>9.0f} {r['update_s'] * 1e3:>8.1f} {share:>10.1%}"
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
            json.dumps({"allreduce": allreduce, "training": training, "model": model}, indent=2)
        )


if __name__ == "__main__":
    main()
