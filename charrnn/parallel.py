"""Data parallelism on several CPU cores: worker processes split the streams of a window.

Each worker runs `CharRNN.loss_and_grads` (training) or `CharRNN.nll` (validation, scoring) on
its rows of the window with one BLAS thread; for training the parent combines the results into
the whole batch's loss and gradient (a mean weighted by rows), then clips and updates as usual.

Why processes: NumPy's element-wise functions (exp, tanh, the gate products) use one core and
are about half of a step, and threads would hand the GIL back and forth around each of the ~25
NumPy calls of a time step. Two processes with one BLAS thread each train an LSTM 2x256 faster
than one process with two (docs/BENCHMARKS.md).

Memory: one shared anonymous file, mapped by every process, holds the weights (the parent's
params become views into it, so the optimizer's in-place update is what workers read at the
next step) and each worker's window, state and gradients. Control: one JSON line per message
over a socket pair. A worker exits when its socket closes, so it never outlives the parent
(kill -9 included); it ignores SIGINT and SIGTERM, which the parent turns into a save.
Dropout masks come from a seed the parent draws from its own generator for every worker and
step, so a run resumes exactly with the same number of workers.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .config import ModelConfig
from .errors import CharRNNError
from .model import CharRNN
from .mpienv import launched_size

# fewer rows than this per worker make each process's products too small to pay for the split
MIN_ROWS_PER_WORKER = 8
_ALIGN = 64  # bytes: every array starts on its own cache line
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may use: those of its affinity mask, at most its container's quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    quota = cgroup_cpus(cgroup)
    return min(cpus, quota) if quota else cpus


def cgroup_cpus(root: Path) -> int | None:
    """The CPU quota of a cgroup v2 (cpu.max) or v1 (cpu/cpu.cfs_quota_us and cfs_period_us)
    mounted at root, rounded up to whole CPUs; None without one."""
    with contextlib.suppress(OSError, ValueError):
        quota, period = (root / "cpu.max").read_text().split()  # "max 100000" or "150000 100000"
        return None if quota == "max" else math.ceil(int(quota) / int(period))
    with contextlib.suppress(OSError, ValueError):
        quota, period = (int((root / "cpu" / f"cpu.cfs_{n}_us").read_text()) for n in ("quota", "period"))
        return None if quota < 0 else math.ceil(quota / period)  # -1: no quota
    return None


def auto_workers(batch_size: int, cpus: int | None = None) -> int:
    """The worker count `--workers 0` means: one per core (available ones unless `cpus` is
    given), at most one per MIN_ROWS_PER_WORKER rows; 1 runs in-process."""
    return max(1, min(cpus or available_cpus(), batch_size // MIN_ROWS_PER_WORKER))


def resolve_workers(requested: int, rows: int) -> int:
    """The worker count for `--workers requested` (0: auto_workers) over `rows` streams: never
    more workers than streams."""
    return min(requested or auto_workers(rows), rows)


def split_rows(n: int, parts: int) -> list[slice]:
    """n rows as `parts` consecutive slices whose lengths differ by at most one."""
    bounds = [n * k // parts for k in range(parts + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def parallel_or_model(model: CharRNN, batch_size: int, seq_len: int, workers: int):
    """A context giving what computes loss_and_grads and nll: the ranks of an MPI job when this
    process is one of them, DataParallel for 2 or more workers, else the model itself, also
    (with a warning) when workers cannot start. A model on a GPU is never shared among worker
    processes: they share host memory, and one process keeps a GPU busy."""
    if launched_size() > 1:  # else this process is no rank of a job, and needs no MPI code
        from .distributed import MPIRunner, world  # distributed builds on this module

        if world() is not None:
            if model.xp is not np:  # the Allreduce buffers are host memory
                raise CharRNNError("--device gpu does not combine with mpiexec yet: use --device cpu")
            return contextlib.nullcontext(MPIRunner(model, world()))
    if workers < 2 or model.xp is not np:
        return contextlib.nullcontext(model)
    try:
        return DataParallel(model, batch_size, seq_len, workers)
    except (OSError, CharRNNError) as e:
        print(f"warning: no worker processes ({e}); running in one process", file=sys.stderr)
        return contextlib.nullcontext(model)


class Arena:
    """Named arrays laid out in one shared memory file. spec: {name: [shape, dtype]}."""

    def __init__(self, fd: int, spec: dict):
        self.fd, self.spec = fd, spec
        offsets, size = {}, 0
        for name, (shape, dtype) in spec.items():
            offsets[name] = size
            nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            size += -(-nbytes // _ALIGN) * _ALIGN
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)
        self._map = mmap.mmap(fd, max(size, 1))
        self.arrays = {
            name: np.ndarray(tuple(shape), np.dtype(dtype), self._map, offsets[name])
            for name, (shape, dtype) in spec.items()
        }

    @classmethod
    def create(cls, spec: dict) -> "Arena":
        # memfd: in memory, never on a disk, gone with the last process that maps it
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("charrnn", 0)
        else:
            with tempfile.TemporaryFile() as f:  # unlinked at once: nothing is left behind
                fd = os.dup(f.fileno())
        return cls(fd, spec)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]


def _state_names(model: CharRNN, w: int) -> list[str]:
    """Worker w's state arrays in the arena, in the order of a flattened state."""
    per_layer = 2 if model.config.cell == "lstm" else 1
    return [f"w{w}.state.{k}.{j}" for k in range(model.config.num_layers) for j in range(per_layer)]


def _flatten(state: tuple) -> list[np.ndarray]:
    """((h0, c0), (h1, c1), ...) -> [h0, c0, h1, c1, ...], the order of _state_names."""
    return [s for layer in state for s in layer]


def _nest(flat: list[np.ndarray], num_layers: int) -> tuple:
    """[h0, c0, h1, c1, ...] -> ((h0, c0), (h1, c1), ...), the model's state layout."""
    per_layer = len(flat) // num_layers
    return tuple(tuple(flat[k * per_layer : (k + 1) * per_layer]) for k in range(num_layers))


class DataParallel:
    """`loss_and_grads` and `nll` of a model over windows of batch_size rows and at most
    seq_len steps, computed by `workers` processes over row blocks.

    The model's params are moved into shared memory for the life of this object; close() (or
    leaving the `with` block) stops the workers and gives the model private copies again."""

    def __init__(self, model: CharRNN, batch_size: int, seq_len: int, workers: int):
        if os.name != "posix":  # file descriptors cannot be handed to a child elsewhere
            raise OSError("worker processes need a POSIX system")
        self.model, self.rows, self.seq_len = model, split_rows(batch_size, workers), seq_len
        self.shares = [(r.stop - r.start) / batch_size for r in self.rows]
        H, dt = model.config.hidden_size, model.dtype.str
        spec = {name: [list(p.shape), p.dtype.str] for name, p in model.params.items()}
        for w, r in enumerate(self.rows):
            n = r.stop - r.start
            spec.update({f"w{w}.{v}": [[n, seq_len], "<i8"] for v in ("x", "y")})
            spec[f"w{w}.nats"] = [[n, seq_len], "<f8"]
            spec.update({f"w{w}.g.{name}": [list(p.shape), p.dtype.str] for name, p in model.params.items()})
            spec.update({name: [[n, H], dt] for name in _state_names(model, w)})
        self.state_names = [_state_names(model, w) for w in range(workers)]
        self.arena = Arena.create(spec)
        for name, p in model.params.items():
            self.arena[name][...] = p
            model.params[name] = self.arena[name]
        self.procs, self.socks = [], []
        try:
            for w in range(workers):
                self._start(w, spec)
            for w in range(workers):
                self._reply(w)
        except BaseException:
            self.close()
            raise

    def _start(self, w: int, spec: dict) -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        # the worker imports this very charrnn, installed or not
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))
        cmd = [sys.executable, "-m", "charrnn.parallel", str(theirs.fileno()), str(self.arena.fd)]
        try:
            proc = subprocess.Popen(
                cmd, pass_fds=(theirs.fileno(), self.arena.fd), env=env, stdin=subprocess.DEVNULL
            )
        finally:
            theirs.close()
        self.procs.append(proc)
        self.socks.append(ours.makefile("rwb"))
        ours.close()  # the file object keeps the connection open
        setup = {"worker": w, "config": self.model.config.to_dict(), "params": list(self.model.params)}
        self._send(w, dict(setup, spec=spec))

    def _send(self, w: int, message: dict) -> None:
        try:
            self.socks[w].write(json.dumps(message).encode() + b"\n")
            self.socks[w].flush()
        except OSError:
            raise self._died(w) from None

    def _reply(self, w: int) -> dict:
        try:
            line = self.socks[w].readline()
        except OSError:
            line = b""
        if not line:
            raise self._died(w)
        reply = json.loads(line)
        if "error" in reply:
            raise CharRNNError(f"training worker {w} failed: {reply['error']}")
        return reply

    def _died(self, w: int) -> CharRNNError:
        code = self.procs[w].wait()
        how = f"signal {-code}" if code < 0 else f"exit status {code}"
        return CharRNNError(f"training worker {w} stopped ({how}); the weights were not updated")

    def _run(self, op: str, x, y, state, rng) -> list[dict]:
        """Hand every worker its rows of x, y (N, t <= seq_len) and state; -> their replies."""
        if x.shape[0] != self.rows[-1].stop or x.shape[1] > self.seq_len:
            raise ValueError(f"a window of {x.shape} does not fit workers made for {self.rows[-1].stop} rows")
        a, t = self.arena, x.shape[1]
        flat = [] if state is None else _flatten(state)
        for w, r in enumerate(self.rows):
            a[f"w{w}.x"][:, :t], a[f"w{w}.y"][:, :t] = x[r], y[r]
            for name, s in zip(self.state_names[w], flat):
                a[name][...] = s[r]
            seed = None if rng is None else int(rng.integers(2**63))
            request = {"op": op, "t": t, "state": state is not None, "seed": seed, "share": self.shares[w]}
            self._send(w, request)
        return [self._reply(w) for w in range(len(self.rows))]

    def _state(self) -> tuple:
        """The final state of the last call, the workers' rows joined: fresh arrays."""
        parts = [[self.arena[name] for name in names] for names in self.state_names]
        return _nest([np.concatenate(rows) for rows in zip(*parts)], self.model.config.num_layers)

    def loss_and_grads(self, x, y, state=None, rng=None):
        """As CharRNN.loss_and_grads, over every worker's rows. x, y (N, t). The grads returned
        are worker 0's buffers, free for the caller (Adam's scratch) until the next call."""
        replies = self._run("grads", x, y, state, rng)
        loss = sum(share * reply["loss"] for share, reply in zip(self.shares, replies))
        grads = {name: self.arena[f"w0.g.{name}"] for name in self.model.params}
        for name, g in grads.items():  # each worker wrote its gradient times its share
            for w in range(1, len(self.rows)):
                g += self.arena[f"w{w}.g.{name}"]
        return loss, grads, self._state()

    def nll(self, x, y, state=None):
        """As CharRNN.nll, over every worker's rows. x, y (N, t) -> (N, t) float64, state."""
        self._run("nll", x, y, state, None)
        t = x.shape[1]
        nats = np.concatenate([self.arena[f"w{w}.nats"][:, :t] for w in range(len(self.rows))])
        return nats, self._state()

    def close(self) -> None:
        for f in self.socks:
            with contextlib.suppress(OSError):
                f.close()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs, self.socks = [], []
        params = self.model.params
        for name in params:
            if params[name] is self.arena[name]:
                params[name] = params[name].copy()
        with contextlib.suppress(OSError):
            os.close(self.arena.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _worker(sock_fd: int, mem_fd: int) -> None:
    """A worker's life: set up from the first message, then one step per message until EOF."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # the parent decides when to stop, and saves
    conn = socket.socket(fileno=sock_fd).makefile("rwb")
    setup = json.loads(conn.readline())
    w, arena = setup["worker"], Arena(mem_fd, setup["spec"])
    config = ModelConfig.from_dict(setup["config"])
    model = CharRNN(config, {name: arena[name] for name in setup["params"]})
    state_names = _state_names(model, w)

    def answer(message: dict) -> None:
        conn.write(json.dumps(message).encode() + b"\n")
        conn.flush()

    answer({"ready": True})
    for line in conn:
        request = json.loads(line)
        try:
            state = (
                _nest([arena[name] for name in state_names], config.num_layers) if request["state"] else None
            )
            t = request["t"]
            x, y = arena[f"w{w}.x"][:, :t], arena[f"w{w}.y"][:, :t]
            if request["op"] == "nll":
                # overflowing weights give NaN, which the parent reports; no warning per window
                with np.errstate(over="ignore", invalid="ignore"):
                    arena[f"w{w}.nats"][:, :t], new_state = model.nll(x, y, state)
                reply = {}
            else:
                rng = None if request["seed"] is None else np.random.default_rng(request["seed"])
                loss, grads, new_state = model.loss_and_grads(x, y, state, rng)
                for name, g in grads.items():  # scaled here, in parallel, so the parent only adds
                    np.multiply(g, request["share"], out=arena[f"w{w}.g.{name}"])
                reply = {"loss": loss}
            for name, s in zip(state_names, _flatten(new_state)):
                arena[name][...] = s
            answer(reply)
        except MemoryError:
            answer({"error": "out of memory"})
        except Exception as e:  # reported by the parent as one line
            answer({"error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        _worker(int(sys.argv[1]), int(sys.argv[2]))
