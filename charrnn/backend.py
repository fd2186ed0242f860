"""The array-module seam: one engine, run by NumPy on a CPU and by CuPy on an NVIDIA GPU.

Every kernel asks `array_module(*arrays)` for the module of its inputs and calls `xp.` for
everything, creation functions included, so the cells, model, loss, optimizer, sampler and
scorer exist once. The parameters decide: a model whose weights are CuPy arrays computes on
the GPU. Text, vocabulary, data windows and checkpoint files stay NumPy on the host; a window
is copied to the device once per step (CharRNN converts its ids), and the loss and the
gradient norm come back once per step.

CuPy is imported only in `resolve_device`, when a GPU is asked for or auto-detected; a CuPy
array's presence is recognised by its type's module name, so NumPy-only runs never import it.
The CuPy APIs used, all documented NumPy counterparts or device basics:
  - the NumPy-compatible functions and ufuncs with `out=` (matmul, exp, tanh, ...): the kernels
  - `cupy.asarray` / `cupy.asnumpy`: moving weights, Adam's state and carried state (to_device,
    to_host; checkpoints are written from host arrays and so stay device-free)
  - `cupy.cuda.runtime.getDeviceCount`, `cupy.cuda.Device().id`: is there a GPU, which one
  - `cupy.random.RandomState(seed, method=CURAND_RNG_PSEUDO_PHILOX4_32_10).random_sample`:
    dropout masks drawn on the device (`uniform`), seeded from the host generator
  - `cupy.ElementwiseKernel`: one fused kernel per LSTM / GRU time step and direction
    (gpu_kernels.py)
Where CuPy needs different code the difference is one named branch, tested on both:
`uniform` here, `model.onehot_scatter_add_rows` for the gradient of the one-hot input or
embedding (a few large products instead of the CPU's loop over distinct ids), and the cells'
step arithmetic (gpu_kernels.py: `make gpu-check` on an H100 showed its many small launches
setting the pace). Not used, on purpose: `cupyx.scatter_add`, whose atomic float additions land
in a different order on every run, so a seeded run would not repeat nor resume bit for bit.
"""

from __future__ import annotations

import sys

import numpy as np

from .errors import CharRNNError

INSTALL_HINT = (
    "pip install -e '.[gpu]' (CuPy for CUDA 12 drivers and newer; '.[gpu13]' installs the CUDA 13 build)"
)


def _is_cupy(a) -> bool:
    return type(a).__module__.split(".")[0] == "cupy"


def array_module(*arrays):
    """numpy, or cupy when any of arrays is a CuPy array (cupy is then already imported).
    Kernels call it once per time step, so a NumPy array costs one type comparison."""
    for a in arrays:
        if type(a) is not np.ndarray and _is_cupy(a):
            return sys.modules["cupy"]
    return np


def to_host(tree):
    """tree (an array, or dicts / tuples / lists of them, None allowed) with every CuPy array
    copied to a NumPy one; NumPy arrays and other leaves are returned as they are (no copy)."""
    if isinstance(tree, dict):
        return {k: to_host(v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(to_host(v) for v in tree)
    return sys.modules["cupy"].asnumpy(tree) if _is_cupy(tree) else tree


def to_device(tree, xp):
    """tree with every array moved to xp's device: to_host for numpy, cupy.asarray for cupy
    (an array already there is not copied)."""
    if xp is np:
        return to_host(tree)
    if isinstance(tree, dict):
        return {k: to_device(v, xp) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(to_device(v, xp) for v in tree)
    return xp.asarray(tree) if isinstance(tree, np.ndarray) or _is_cupy(tree) else tree


def resolve_device(device: str):
    """The array module for `--device auto|cpu|gpu`. auto means the GPU when CuPy imports and
    sees a device, else NumPy; gpu without them is a CharRNNError naming the install command."""
    if device == "cpu":
        return np
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device is visible")
    except Exception as e:  # ImportError, or CUDA errors from a missing driver or device
        if device == "auto":
            return np
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CharRNNError(f"--device gpu needs CuPy and an NVIDIA GPU ({reason}): {INSTALL_HINT}") from None
    return cupy


def device_label(xp) -> str:
    """'cpu' or 'gpu <id>', for the start-up line."""
    return "cpu" if xp is np else f"gpu {xp.cuda.Device().id}"


def uniform(rng: np.random.Generator, shape: tuple, xp):
    """U[0, 1) numbers of `shape` on xp's device, for dropout masks.

    On the CPU they come from rng itself (float64). On the GPU, copying them from the host
    would cost more than the step, so the device draws them (float32) from a counter-based
    Philox generator seeded by one number from rng: rng's state, which the checkpoint keeps,
    still decides every mask, so runs repeat and resume exactly on the same device."""
    if xp is np:
        return rng.random(shape, dtype=np.float64)
    from cupy.cuda import curand  # what cupy.random itself imports the generator kinds from

    seed = int(rng.integers(2**63))
    philox = xp.random.RandomState(seed, method=curand.CURAND_RNG_PSEUDO_PHILOX4_32_10)
    return philox.random_sample(shape, dtype=np.float32)
