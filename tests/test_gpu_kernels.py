"""The fused GPU kernels (charrnn/gpu_kernels.py) checked without a GPU: their CUDA bodies,
compiled for the host as C++, run the whole model in float64 through cells.py's GPU branch
and must give what cells.py's NumPy code gives, forward, backward and step by step.

`HostKernel` keeps cupy.ElementwiseKernel's contract for C-contiguous float64 NumPy arrays:
a loop over the positions i of the non-raw arrays, each non-raw parameter a reference to its
element i, raw ones indexed by hand, T the element type. What this cannot check is CuPy itself
(its code generation, NVRTC, float32 on a device): tests/test_gpu.py does that on a GPU.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import types

import numpy as np
import pytest
from test_model import CELL_CASES, GRAD_CASES, make_model, random_ids, random_state

from charrnn import gpu_kernels

CXX = shutil.which("c++") or shutil.which("g++")
pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler to build the kernels for the host")


class HostKernel:
    """A cupy.ElementwiseKernel whose body runs on the host (float64, C-contiguous arrays)."""

    build_dir = None  # set by the fixture below

    def __init__(self, in_params: str, out_params: str, operation: str, name: str):
        specs = [(p, True) for p in in_params.split(",")] + [(p, False) for p in out_params.split(",")]
        self.kinds, args, refs = [], [], []
        for spec, is_input in specs:
            *kind, pname = spec.split()
            const = "const " if is_input else ""
            self.kinds.append(" ".join(kind))
            if kind == ["int32"]:
                args.append(f"int {pname}")
            elif kind == ["raw", "T"]:
                args.append(f"{const}T* {pname}")
            else:
                args.append(f"T* _raw_{pname}")
                refs.append(f"{const}T& {pname} = _raw_{pname}[i];")
        body = "\n".join(refs) + "\n" + operation
        source = (
            "#include <cmath>\n#include <cstddef>\nusing std::exp; using std::tanh; typedef double T;\n"
            f'extern "C" void {name}(long size, {", ".join(args)}) {{\n'
            f"for (ptrdiff_t i = 0; i < size; ++i) {{\n{body}\n}}\n}}\n"
        )
        src, lib = self.build_dir / f"{name}.cpp", self.build_dir / f"{name}.so"
        src.write_text(source)
        subprocess.run([CXX, "-O1", "-Wall", "-Werror", "-shared", "-fPIC", "-o", lib, src], check=True)
        self.fn = getattr(ctypes.CDLL(str(lib)), name)

    def __call__(self, *args):
        assert len(args) == len(self.kinds)
        size = next(a.size for kind, a in zip(self.kinds, args) if kind == "T")
        c_args = []
        for kind, a in zip(self.kinds, args):
            if kind == "int32":
                c_args.append(ctypes.c_int(int(a)))
                continue
            assert a.dtype == np.float64 and a.flags.c_contiguous, "the host form reads memory flat"
            assert kind != "T" or a.size == size
            c_args.append(a.ctypes.data_as(ctypes.c_void_p))
        self.fn(ctypes.c_long(size), *c_args)


@pytest.fixture(scope="module")
def host_fused(tmp_path_factory):
    HostKernel.build_dir = tmp_path_factory.mktemp("kernels")
    module = types.ModuleType("host_cuda")
    module.ElementwiseKernel = HostKernel
    return gpu_kernels.for_module(module)


@pytest.fixture
def fused(monkeypatch, host_fused):
    """NumPy arrays take cells.py's GPU branch, into the host-compiled kernels."""
    monkeypatch.setattr(gpu_kernels, "for_module", lambda xp: host_fused)


def test_numpy_and_the_cupy_stand_in_run_the_array_code():
    assert gpu_kernels.for_module(np) is None
    assert gpu_kernels.for_module(types.ModuleType("cupy")) is None


def array_code(monkeypatch, compute):
    """compute() with cells.py's NumPy array code, then the fused kernels again."""
    fused = gpu_kernels.for_module
    monkeypatch.setattr(gpu_kernels, "for_module", lambda xp: None)
    result = compute()
    monkeypatch.setattr(gpu_kernels, "for_module", fused)
    return result


FUSED_CELLS = ["lstm", "gru"]  # the vanilla RNN's step is already one product and one tanh


def flat(state):
    return [a for layer in state for a in layer]


@pytest.mark.parametrize("name", [*FUSED_CELLS, "lstm-1", "gru-1", "lstm-3-peep-embed-dropout"])
def test_fused_kernels_give_the_array_codes_loss_gradients_and_state(name, fused, monkeypatch):
    cfg, _ = GRAD_CASES.get(name, (CELL_CASES.get(name), True))
    model = make_model(**cfg)
    x, y = random_ids((3, 6), 1), random_ids((3, 6), 2)
    state = random_state(model, 3, 3)
    dropout = (lambda: np.random.default_rng(7)) if model.config.dropout else (lambda: None)
    want_loss, want_grads, want_state = array_code(
        monkeypatch, lambda: model.loss_and_grads(x, y, state, dropout())
    )
    loss, grads, new_state = model.loss_and_grads(x, y, state, dropout())
    assert loss == pytest.approx(want_loss, rel=1e-12)
    for k, g in want_grads.items():
        np.testing.assert_allclose(grads[k], g, rtol=1e-9, atol=1e-12, err_msg=k)
    for a, b in zip(flat(new_state), flat(want_state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", FUSED_CELLS)
def test_fused_step_equals_the_array_codes_forward(name, fused, monkeypatch):
    model = make_model(**CELL_CASES[name])
    x = random_ids((2, 7), 4)
    state = random_state(model, 2, 5)
    logits, want_state = array_code(monkeypatch, lambda: model.forward(x, state))
    for t in range(x.shape[1]):
        step_logits, state = model.step(x[:, t], state)
        np.testing.assert_allclose(step_logits, logits[:, t], rtol=1e-10, atol=1e-12)
    for a, b in zip(flat(state), flat(want_state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
