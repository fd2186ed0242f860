"""What an MPI launcher (mpiexec, srun) tells a process through its environment, read without
NumPy: importing this module (charrnn/__init__.py does so first) gives every rank one BLAS
thread before NumPy loads its BLAS."""

from __future__ import annotations

import os

# the job's size and this process's rank in it: MPICH, Intel MPI and Slurm's PMI-2 / Open MPI /
# MVAPICH
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _first(variables) -> int | None:
    for name in variables:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return None


def launched_size() -> int:
    """How many processes the MPI launcher started (1 without one)."""
    return _first(SIZE_VARIABLES) or 1


def launched_rank() -> int:
    """This process's rank in them (0 without a launcher)."""
    return _first(RANK_VARIABLES) or 0


def one_blas_thread_per_rank() -> None:
    """A rank is one core's work, as a worker process is (parallel.py): one BLAS thread each,
    unless the environment already says how many. Ranks with two threads each on as many cores
    as ranks would fight over them."""
    if launched_size() > 1:
        for name in BLAS_THREADS:
            os.environ.setdefault(name, "1")


one_blas_thread_per_rank()
