"""A NumPy stand-in for the few CuPy APIs charrnn uses, for checking device code where no GPU is:

    PYTHONPATH=tests/cupy_standin python -m pytest tests/test_gpu.py

runs the GPU tests' logic on the CPU. It proves nothing about CuPy itself (kernels, cuBLAS,
cuRAND, float32 rounding on a GPU): only `make gpu-check` on a real device does. What it does
check is the host/device discipline: its arrays are an ndarray subclass whose type lives in a
module named "cupy" (so backend.array_module picks this module), and, like CuPy refusing implicit
conversion, any plain NumPy array mixed into an operation, an index or an assignment raises
TypeError. asarray and asnumpy copy, as a transfer does.
"""

import sys
import types

import numpy as np

__version__ = "numpy-stand-in"


class ndarray(np.ndarray):  # noqa: N801 (CuPy's name)
    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        for x in inputs + (out or ()):
            _refuse_host(x)
        args = [_base(x) for x in inputs]
        if out:
            kwargs["out"] = tuple(_base(o) for o in out)
        result = getattr(ufunc, method)(*args, **kwargs)
        if out:
            return out[0] if len(out) == 1 else out
        return _wrap(result)

    def __getitem__(self, index):
        for i in index if isinstance(index, tuple) else (index,):
            _refuse_host(i)
        return _wrap(super().__getitem__(index))

    def __setitem__(self, index, value):
        for i in index if isinstance(index, tuple) else (index,):
            _refuse_host(i)
        _refuse_host(value)
        super().__setitem__(index, value)

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed")


ndarray.__module__ = "cupy"


def _refuse_host(x):
    if isinstance(x, np.ndarray) and not isinstance(x, ndarray) and x.ndim > 0:
        raise TypeError(f"a host array {x.shape} {x.dtype} in a device operation")


def _base(x):
    return x.view(np.ndarray) if isinstance(x, ndarray) else x


def _wrap(x):
    """Results as device arrays; scalars as 0-d arrays, as CuPy returns them."""
    if isinstance(x, ndarray):
        return x
    if isinstance(x, np.ndarray):
        return x.view(ndarray)
    if isinstance(x, np.generic):
        return np.asarray(x).view(ndarray)
    if isinstance(x, tuple):
        return tuple(_wrap(y) for y in x)
    return x


def asarray(a, dtype=None):
    if isinstance(a, ndarray):
        return a if dtype is None else a.astype(dtype)
    return np.array(a, dtype=dtype, copy=True).view(ndarray)


def asnumpy(a):
    return np.array(_base(a), copy=True)


def __getattr__(name):
    """Every other function: NumPy's, on device arrays, returning device arrays."""
    f = getattr(np, name)
    if not callable(f) or isinstance(f, type):
        return f

    def on_device(*args, **kwargs):
        args = [[_base(y) for y in a] if isinstance(a, list) else _base(a) for a in args]
        if "out" in kwargs:
            out = kwargs["out"]
            f(*args, **{**kwargs, "out": _base(out)})
            return out
        return _wrap(f(*args, **kwargs))

    return on_device


class _RandomState:
    def __init__(self, seed=None, method=None):
        assert method == cuda.curand.CURAND_RNG_PSEUDO_PHILOX4_32_10
        self._rng = np.random.default_rng(seed)

    def random_sample(self, size=None, dtype=float):
        return self._rng.random(size, dtype=dtype).view(ndarray)


random = types.SimpleNamespace(RandomState=_RandomState)
cuda = types.SimpleNamespace(
    runtime=types.SimpleNamespace(
        getDeviceCount=lambda: 1,
        runtimeGetVersion=lambda: 0,
        driverGetVersion=lambda: 0,
        getDeviceProperties=lambda i: {"name": b"NumPy stand-in"},
    ),
    Device=lambda: types.SimpleNamespace(id=0, synchronize=lambda: None),
    curand=types.SimpleNamespace(CURAND_RNG_PSEUDO_PHILOX4_32_10=161),
)
sys.modules[__name__ + ".cuda"] = cuda  # for `from cupy.cuda import curand`


def get_default_memory_pool():
    return types.SimpleNamespace(total_bytes=lambda: 0)
