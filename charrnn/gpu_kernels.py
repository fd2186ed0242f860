"""One fused CUDA kernel for the element-wise work of an LSTM or GRU time step, on CuPy arrays.

cells.py writes a step's gate arithmetic as about 13 array calls forward and 17 backward per
layer, which suits NumPy. On a GPU every call is a kernel launch costing microseconds whatever
its size, and `make gpu-check` on an H100 (docs/BENCHMARKS.md) measured charrnn at 0.33x cuDNN
training an LSTM 3x1024 and 0.30x PyTorch sampling: the launches, not the products, set the
pace. Here each group is one `cupy.ElementwiseKernel` over the (N, H) positions of the step,
so a step costs its recurrent product and one launch each way.

The kernels compute the equations of cells.py's docstring with its buffers and layouts:
pre-activations are replaced in place by the activated gates (gate order LSTM_GATES, GRU_GATES)
and, backward, the activated gates by the gradients of their pre-activations, so nothing else
in the engine can tell which form ran. tests/test_gpu_kernels.py compiles the bodies for the
host as C++ and runs the model through them against the NumPy code (float64, every gradient);
tests/test_gpu.py checks them on a device: gradient checks in float64, the GPU against the CPU
on the same weights, the step path against the training path.

`for_module(xp)` gives them for CuPy and None for NumPy, and for an array module without
`ElementwiseKernel` (the tests' NumPy stand-in for CuPy), which then runs cells.py's array code.
Kernels compile on first use, once per dtype; CuPy keeps the binaries in ~/.cupy/kernel_cache.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

# Each thread owns one (row, column) of the step's (N, H) outputs and reads that column of every
# gate from the (N, G) gate block, passed raw (flat, G = gates * H per row).
_GATE_INDEX = """
const ptrdiff_t row = i / H, col = i % H;
const ptrdiff_t k = row * GATES * H + col;
"""

_LSTM_FORWARD = """
T ai = gates[k] + xw[k], af = gates[k + H] + xw[k + H];
T ao = gates[k + 2 * H] + xw[k + 2 * H];
const T ag = gates[k + 3 * H] + xw[k + 3 * H];
if (has_peep) {
    ai += peep[col] * c_prev;
    af += peep[H + col] * c_prev;
}
const T ig = 1 / (1 + exp(-ai)), fg = 1 / (1 + exp(-af)), gg = tanh(ag);
const T c = fg * c_prev + ig * gg;
if (has_peep) ao += peep[2 * H + col] * c;
const T og = 1 / (1 + exp(-ao)), tc = tanh(c);
gates[k] = ig;
gates[k + H] = fg;
gates[k + 2 * H] = og;
gates[k + 3 * H] = gg;
c_out = c;
tanh_c_out = tc;
h_out = og * tc;
"""

_LSTM_BACKWARD = """
const T ig = gates[k], fg = gates[k + H], og = gates[k + 2 * H], gg = gates[k + 3 * H];
const T dh = dh_next + dh_out;
T dc = dc_carry + dh * og * (1 - tanh_c * tanh_c);
const T dao = dh * tanh_c * og * (1 - og);
if (has_peep) dc += dao * peep[2 * H + col];
const T dai = dc * gg * ig * (1 - ig);
const T daf = dc * c_prev * fg * (1 - fg);
gates[k] = dai;
gates[k + H] = daf;
gates[k + 2 * H] = dao;
gates[k + 3 * H] = dc * ig * (1 - gg * gg);
dc_carry = has_peep ? dc * fg + dai * peep[col] + daf * peep[H + col] : dc * fg;
"""

_GRU_FORWARD = """
const T r = 1 / (1 + exp(-(gates[k] + xw[k])));
const T z = 1 / (1 + exp(-(gates[k + H] + xw[k + H])));
const T hn = gates[k + 2 * H] + bhn[col];
const T nv = tanh(xw[k + 2 * H] + r * hn);
gates[k] = r;
gates[k + H] = z;
gates[k + 2 * H] = nv;
hn_out = hn;
h_out = nv + z * (h_prev - nv);
"""

_GRU_BACKWARD = """
const T r = gates[k], z = gates[k + H], nv = gates[k + 2 * H];
const T dh = dh_next + dh_out;
const T dan = dh * (1 - z) * (1 - nv * nv);
gates[k] = dan * hn * r * (1 - r);
gates[k + H] = dh * (h_prev - nv) * z * (1 - z);
gates[k + 2 * H] = dan * r;
hn = dan;
dh_direct = dh * z;
"""


# name -> (gates per position, in_params, out_params, body), in ElementwiseKernel's terms
KERNELS = {
    "lstm_forward": (
        4,
        "T c_prev, raw T xw, raw T peep, int32 has_peep, int32 H",
        "raw T gates, T c_out, T tanh_c_out, T h_out",
        _LSTM_FORWARD,
    ),
    "lstm_backward": (
        4,
        "T dh_next, T dh_out, T tanh_c, T c_prev, raw T peep, int32 has_peep, int32 H",
        "raw T gates, T dc_carry",
        _LSTM_BACKWARD,
    ),
    "gru_forward": (
        3,
        "T h_prev, raw T xw, raw T bhn, int32 H",
        "raw T gates, T hn_out, T h_out",
        _GRU_FORWARD,
    ),
    "gru_backward": (
        3,
        "T dh_next, T dh_out, T h_prev, int32 H",
        "raw T gates, T hn, T dh_direct",
        _GRU_BACKWARD,
    ),
}


def operation(name: str) -> str:
    """The loop body of kernel `name`: its position's indices, then its equations."""
    gates, _, _, body = KERNELS[name]
    return _GATE_INDEX.replace("GATES", str(gates)) + body


def _peep_args(peep, gates):
    """A kernel's peephole arguments: the weights and 1, or 0 and the gates standing in unread."""
    return (gates, 0) if peep is None else (peep, 1)


@functools.cache
def for_module(xp):
    """The fused step kernels for array module xp, or None where cells.py's array code runs."""
    if not hasattr(xp, "ElementwiseKernel"):
        return None
    lstm_forward, lstm_backward, gru_forward, gru_backward = (
        xp.ElementwiseKernel(KERNELS[name][1], KERNELS[name][2], operation(name), f"charrnn_{name}")
        for name in KERNELS
    )

    def lstm_activate(a, xw, c_prev, peep, c_out, tanh_c_out, h_out):
        """a (N, 4H) holds h_prev @ Wh; xw (N, 4H); c_prev (N, H); peep (3H,) or None."""
        lstm_forward(c_prev, xw, *_peep_args(peep, a), c_prev.shape[1], a, c_out, tanh_c_out, h_out)

    def lstm_gate_grads(dh_next, dh_out, dc, a, tanh_c, c_prev, peep):
        """a (N, 4H): activated gates in, pre-activation gradients out; dc (N, H) carried back
        from step t to t - 1 in place; dh_next + dh_out (N, H) is the gradient of h_t."""
        lstm_backward(dh_next, dh_out, tanh_c, c_prev, *_peep_args(peep, a), dc.shape[1], a, dc)

    def gru_activate(a, xw, h_prev, bhn, hn_out, h_out):
        """a (N, 3H) holds h_prev @ Wh; xw (N, 3H); h_prev (N, H); bhn (H,)."""
        gru_forward(h_prev, xw, bhn, h_prev.shape[1], a, hn_out, h_out)

    def gru_gate_grads(dh_next, dh_out, h_prev, a, hn, dh_direct):
        """a (N, 3H): r, z, n in, the gradients of a_r, a_z and of hn out; hn (N, H) becomes
        the gradient of a_n; dh_direct (N, H) gets the part of dh_{t-1} that skips Wh."""
        gru_backward(dh_next, dh_out, h_prev, h_prev.shape[1], a, hn, dh_direct)

    return SimpleNamespace(
        lstm_activate=lstm_activate,
        lstm_gate_grads=lstm_gate_grads,
        gru_activate=gru_activate,
        gru_gate_grads=gru_gate_grads,
    )
