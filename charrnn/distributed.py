"""Data parallelism across machines with MPI: `mpiexec -n N charrnn train ...`.

Every rank runs the same program on the same data (SPMD): the same Trainer loop reads the same
window, and each rank computes loss_and_grads on its rows of it (parallel.split_rows), scaled
by its share of the rows. One in-place Allreduce (SUM) of one contiguous buffer per step, which
holds every gradient, the final hidden state of every row (zero in the rows of other ranks) and
the loss, gives every rank the whole batch's gradient, loss and state; every rank then clips
and runs Adam identically, so the weights stay identical without being sent. Before step 1 the
ranks check that they were given the same corpus, model and options, and rank 0's weights are
broadcast (--init-from's too); a checksum of the weights is compared every CHECK_EVERY steps,
and a difference stops the run.

Since every rank holds the whole state, and the generator from which one dropout seed per rank
and step is drawn (as DataParallel draws one per worker), a checkpoint of an MPI run is an
ordinary one: `--resume` with the same number of ranks continues bit for bit, and with another
number of ranks, or none, continues the same run up to float32 summation order (and, with
dropout, other masks).

Rank 0 alone writes checkpoints and metrics and prints; the other ranks' stdout and stderr go
to /dev/null. The ranks decide together when to stop (a signal or --max-time can reach one rank
a step before another). An error that every rank meets at the same point is a SharedError:
rank 0 reports it and every rank exits normally. An error on one rank alone is reported by that
rank and aborts the job (MPI_Abort), since the others would wait for it forever; so does a rank
that dies, which MPI's launcher notices.

mpi4py is imported only when an MPI launcher (mpiexec, srun) started this process.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import time

import click
import numpy as np

from .errors import CharRNNError
from .mpienv import launched_rank, launched_size
from .parallel import _flatten, _nest, split_rows
from .prepare import TIMED_CHOICES, prepare_run
from .rundir import RunDir
from .trainer import Trainer

INSTALL = "pip install -e '.[mpi]'"
CHECK_EVERY = 100  # steps between weight checksums
# a failing rank waits this long between its report and MPI_Abort: the abort tears the job down
# at once, and the launcher drops what it has not yet forwarded of every rank's output
ABORT_GRACE_S = 1.0
# every reason a run stops for, in the order that wins when ranks disagree
STOP_REASONS = ("max_steps", "epochs", "early_stop", "max_time", "SIGINT", "SIGTERM")

_world = None  # MPI.COMM_WORLD once init() joined a job of 2 or more ranks
_streams = (sys.stdout, sys.stderr)  # a quiet rank's own, for reporting its failure


class SharedError(CharRNNError):
    """An error every rank of an MPI job raised at the same point: rank 0 reports it, and every
    rank exits normally."""


def world():
    """The communicator of the MPI job this process is a rank of, or None."""
    return _world


def init() -> None:
    """Join the MPI job this process was started in, if any (of 2 or more ranks); ranks other
    than 0 then write nothing to stdout or stderr."""
    global _world
    size = launched_size()
    if size < 2 or _world is not None:
        return
    if launched_rank():
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (open for the process's life)
    try:
        from mpi4py import MPI
    except ImportError:
        raise CharRNNError(
            f"started by an MPI launcher ({size} processes), but mpi4py is missing: {INSTALL}"
        ) from None
    if MPI.COMM_WORLD.size != size:
        raise CharRNNError(
            f"the MPI launcher started {size} processes, but mpi4py sees {MPI.COMM_WORLD.size}: it was "
            "built for another MPI than this launcher's (use the mpiexec installed with it)"
        )
    _world = MPI.COMM_WORLD


def job(command, ctx):
    """command(ctx), as a rank of the MPI job this process was started in, if any. A failure of
    this rank alone is reported on its own stderr and ends the whole job when it exits."""
    init()
    if _world is None:
        return command(ctx)
    try:
        return command(ctx)
    except (SharedError, click.exceptions.Exit):
        raise
    except BaseException as e:
        # a usage error too: another rank may not meet it (its own arguments or files)
        sys.stdout, sys.stderr = _streams
        # after the CLI has reported it, before mpi4py's exit handler would wait for the others
        atexit.register(_abort, getattr(e, "exit_code", 1))
        if isinstance(e, CharRNNError) and _world.rank:
            raise CharRNNError(f"rank {_world.rank}: {e}") from None
        raise


def _abort(status: int) -> None:
    """MPI_Abort the job once this rank's report has had time to reach the launcher."""
    with contextlib.suppress(OSError, ValueError):  # a reader that has gone, a closed stream
        sys.stdout.flush()
        sys.stderr.flush()
    time.sleep(ABORT_GRACE_S)
    _world.Abort(status)


def everywhere(fn, *args, **kwargs):
    """fn(*args, **kwargs) on every rank, which must make no MPI call: a CharRNNError on any
    rank is raised on all as a SharedError, with the first failing rank's message."""
    try:
        result, failure = fn(*args, **kwargs), None
    except CharRNNError as e:
        result, failure = None, str(e)
    for rank, message in enumerate(_world.allgather(failure)):
        if message is not None:
            raise SharedError(f"rank {rank}: {message}" if rank else message)
    return result


def prepare_job(*args, **kwargs) -> Trainer:
    """prepare.prepare_run, as an MPITrainer when this process is a rank of an MPI job."""
    if _world is None:
        return prepare_run(*args, **kwargs)
    trainer = everywhere(prepare_run, *args, **kwargs)
    # each rank timed its own steps for the budget's choices: rank 0's hold for all
    if trainer.chosen.keys() & set(TIMED_CHOICES):
        trainer.choose(*_world.bcast((trainer.model.config, trainer.chosen), root=0))
    # different arguments or files on one machine would silently train another model there
    setup = {"corpus": trainer.corpus.fingerprint, "model": trainer.model.config, "options": trainer.tcfg}
    setups = _world.allgather(setup)
    for rank, theirs in enumerate(setups):
        differ = [what for what in setup if theirs[what] != setups[0][what]]
        if differ:
            raise SharedError(
                f"rank {rank} was given another {' and '.join(differ)} than rank 0: every rank must run "
                "the same command on the same files (a shared filesystem, or identical copies)"
            )
    if trainer.tcfg.batch_size < _world.size:
        raise SharedError(
            f"--batch-size {trainer.tcfg.batch_size} is less than the {_world.size} MPI ranks: "
            "every rank needs a stream"
        )
    print(f"MPI: {_world.size} ranks share each step's {trainer.tcfg.batch_size} streams", file=sys.stderr)
    return MPITrainer(trainer, _world)


class MPIRunner:
    """`loss_and_grads` and `nll` of a model over windows whose rows are shared among the ranks
    of comm: DataParallel's interface, so training and scoring run unchanged. Every rank makes
    the same calls with the same arguments and gets the same results."""

    def __init__(self, model, comm):
        self.model, self.comm, self.steps = model, comm, 0
        for p in model.params.values():  # rank 0's weights everywhere, --init-from's too
            comm.Bcast(p, root=0)
        self._buffers = {}

    def _buffer(self, shapes: list[tuple], dtype) -> tuple[np.ndarray, list[np.ndarray]]:
        """One contiguous array (kept for the next call of the same shapes), and views of it."""
        key = (tuple(shapes), np.dtype(dtype).str)
        if key not in self._buffers:
            sizes = [int(np.prod(s)) for s in shapes]
            flat = np.zeros(sum(sizes), dtype)
            ends = np.cumsum(sizes)
            self._buffers[key] = flat, [flat[e - n : e].reshape(s) for n, e, s in zip(sizes, ends, shapes)]
        return self._buffers[key]

    def _mine(self, rows: int) -> slice:
        return split_rows(rows, self.comm.size)[self.comm.rank]

    def _state_shapes(self, rows: int) -> list[tuple]:
        cfg = self.model.config
        return [(rows, cfg.hidden_size)] * (cfg.num_layers * (2 if cfg.cell == "lstm" else 1))

    def _allreduce(self, flat: np.ndarray) -> None:
        from mpi4py import MPI

        self.comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)

    def loss_and_grads(self, x, y, state=None, rng=None):
        """As CharRNN.loss_and_grads, over all rows of x, y (N, t). The grads returned are views
        of a buffer that the next call reuses (Adam's scratch until then)."""
        if self.steps % CHECK_EVERY == 0:
            self.check_weights()
        self.steps += 1
        mine, params = self._mine(len(x)), self.model.params
        # one seed per rank, drawn by every rank in the order DataParallel draws one per worker
        seeds = None if rng is None else [int(rng.integers(2**63)) for _ in range(self.comm.size)]
        own_rng = None if seeds is None else np.random.default_rng(seeds[self.comm.rank])
        own_state = None if state is None else _nest([s[mine] for s in _flatten(state)], len(state))
        loss, grads, new_state = self.model.loss_and_grads(x[mine], y[mine], own_state, own_rng)
        shapes = [p.shape for p in params.values()] + self._state_shapes(len(x)) + [(1,)]
        flat, views = self._buffer(shapes, self.model.dtype)
        share = (mine.stop - mine.start) / len(x)
        for name, out in zip(params, views):
            np.multiply(grads[name], share, out=out)
        states = views[len(params) : -1]
        for s, part in zip(states, _flatten(new_state)):
            s[...] = 0
            s[mine] = part
        loss_sum = views[-1]  # in float32 like the rest: the loss is reported, never differentiated
        loss_sum[0] = float(loss) * share
        self._allreduce(flat)
        state_out = _nest([s.copy() for s in states], self.model.config.num_layers)
        return float(loss_sum[0]), dict(zip(params, views)), state_out

    def nll(self, x, y, state=None):
        """As CharRNN.nll, over all rows of x, y (N, t) -> (N, t) float64, state."""
        mine = self._mine(len(x))
        flat, (nats, *states) = self._buffer([x.shape] + self._state_shapes(len(x)), np.float64)
        flat[...] = 0
        if mine.stop > mine.start:  # more ranks than streams leave some without any
            own_state = None if state is None else _nest([s[mine] for s in _flatten(state)], len(state))
            nats[mine], new_state = self.model.nll(x[mine], y[mine], own_state)
            for s, part in zip(states, _flatten(new_state)):
                s[mine] = part
        self._allreduce(flat)
        return nats.copy(), _nest([s.astype(self.model.dtype) for s in states], self.model.config.num_layers)

    def check_weights(self) -> None:
        """Stop every rank when their weights differ, which an Allreduce that gave the ranks
        different sums would cause."""
        from mpi4py import MPI

        total = sum(float(p.sum(dtype=np.float64)) for p in self.model.params.values())
        extremes = np.array([total, -total])
        self.comm.Allreduce(MPI.IN_PLACE, extremes, op=MPI.MAX)
        if extremes[0] != -extremes[1]:
            raise SharedError(
                f"the MPI ranks' weights differ after {self.steps} steps of this run (checksums "
                f"{float(-extremes[1])!r} to {float(extremes[0])!r}): this MPI's Allreduce does not give "
                "every rank the same sum"
            )


class RootRunDir(RunDir):
    """The run directory as the ranks of a job share it: rank 0 alone writes, and its view of
    the files is everyone's (another rank may not see them yet, or at all)."""

    def __init__(self, path, comm):
        super().__init__(path)
        self.comm = comm

    def save(self, name, ckpt) -> None:
        if self.comm.rank == 0:
            super().save(name, ckpt)

    def log_metrics(self, record: dict) -> None:
        if self.comm.rank == 0:
            super().log_metrics(record)

    def has_best(self) -> bool:
        return self.comm.bcast(super().has_best(), root=0)


class MPITrainer(Trainer):
    """A Trainer as a rank of an MPI job: its steps are MPIRunner's, it stops when any rank
    would, and rank 0 alone writes files."""

    def __init__(self, trainer: Trainer, comm):
        self.__dict__.update(vars(trainer))
        self.comm = comm
        self.run_dir = RootRunDir(self.run_dir.path, comm)

    def workers(self) -> int:
        return 1  # a rank is one process: more processes are more ranks

    def agree(self, reason: str | None) -> str | None:
        from mpi4py import MPI

        code = np.array([STOP_REASONS.index(reason) + 1 if reason else 0])
        self.comm.Allreduce(MPI.IN_PLACE, code, op=MPI.MAX)
        return STOP_REASONS[code[0] - 1] if code[0] else None

    def spent(self, started: float) -> float:
        # the clocks of the ranks differ by microseconds, but every rank must take one learning rate
        return self.comm.bcast(super().spent(started), root=0)

    def run(self, show_progress: bool | None = None):
        result = super().run(show_progress)
        if result.reason.startswith("SIG"):  # also on a rank the signal did not reach
            result.signal = signal.Signals[result.reason]
        return result

    def diverged(self, loss: float, norm: float) -> None:
        try:
            super().diverged(loss, norm)  # every rank at the same step; rank 0 saves
        except CharRNNError as e:
            raise SharedError(str(e)) from None
