"""Recurrent kernels: the only time loops in charrnn.

Each cell consumes the input projection of the whole window, computed by the caller in one
matrix product over all N*T positions (bias included), and runs only the recurrent product
`h @ Wh` inside its loop:

    a_t = xw_t + h_{t-1} @ Wh                      xw (T, N, G), Wh (H, G), G = gates * H

Vanilla RNN (G = H):
    h_t = tanh(a_t)            or relu(a_t)

LSTM (G = 4H, gate order LSTM_GATES = i, f, o, g; optional diagonal peepholes p_i, p_f, p_o):
    i = sigmoid(a_i + p_i * c_{t-1})     f = sigmoid(a_f + p_f * c_{t-1})
    g = tanh(a_g)                        c_t = f * c_{t-1} + i * g
    o = sigmoid(a_o + p_o * c_t)         h_t = o * tanh(c_t)

GRU, the cuDNN / PyTorch form (G = 3H, gate order GRU_GATES = r, z, n; the recurrent bias of
the r and z gates is folded into the input bias, only b_hn stays inside the loop):
    r = sigmoid(a_r)                     z = sigmoid(a_z)
    n = tanh(xw_n + r * (h_{t-1} @ Wh_n + b_hn))
    h_t = (1 - z) * n + z * h_{t-1}

Arrays are time-major, (T, N, .), so every step reads and writes one contiguous slab.
`*_forward(xw, state, ...) -> (hs, state, cache)` returns hs (T, N, H) and the final state;
`*_backward(dhs, dstate, cache) -> (dxw, dstate0, grads)` takes the upstream gradient of every
output (dstate may be None: truncated BPTT sends nothing back from the next window) and
consumes its cache: activation buffers are overwritten with gate gradients, as in torch-rnn,
so the cache costs G + 2H floats per position and position-wise backward allocates nothing.
`*_step(xw, state, ...) -> (h, state)` runs one step through the same activation code and the
same recurrent product (matmul_rows) as the forward loop, so sampling equals training bit for bit.
`keep=False` runs a forward that will have no backward (scoring, priming a sample): its gate and
cell buffers are one step deep and reused, so they stay in cache, and the cache returned is None.
States are tuples: (h,) for RNN and GRU, (h, c) for LSTM.
Each kernel takes its array functions from its inputs (backend.array_module): NumPy arrays run
on the CPU, CuPy arrays on the GPU, through the same lines, except the LSTM's and GRU's
element-wise step work, which on a GPU is one fused kernel per step (gpu_kernels.py) computing
the same equations into the same buffers.
"""

from __future__ import annotations

import functools

import numpy as np

from . import gpu_kernels
from .backend import array_module
from .functional import sigmoid_, sigmoid_neg_

LSTM_GATES = ("i", "f", "o", "g")
GRU_GATES = ("r", "z", "n")
GATES = {"rnn": 1, "lstm": len(LSTM_GATES), "gru": len(GRU_GATES)}

# up to this many rows, a recurrent product runs as one matrix-vector product per row
MATVEC_ROWS = 4


def matmul_rows(h, W, out):
    """out = h @ W for h (N, K), W (K, G). OpenBLAS's gemm on 2-4 rows costs about as much as on
    64 (it packs all of W each call): 2 rows of a 256 x 1024 product take 75 us as one gemm and
    37 us as two matrix-vector products (docs/BENCHMARKS.md). One row is a gemv either way. A
    GPU takes the one product."""
    xp = array_module(h)
    if xp is np and 1 < len(h) <= MATVEC_ROWS:
        for r in range(len(h)):
            xp.matmul(h[r], W, out=out[r])
    else:
        xp.matmul(h, W, out=out)
    return out


# ---------------------------------------------------------------- vanilla RNN


def _rnn_activate(a: np.ndarray, relu: bool) -> None:
    xp = array_module(a)
    if relu:
        xp.maximum(a, 0, out=a)
    else:
        xp.tanh(a, out=a)


def rnn_forward(xw, state, Wh, relu=False, keep=True):
    """xw (T, N, H), state (h0 (N, H),), Wh (H, H) -> hs (T, N, H), (hT,), cache (None unless
    keep)."""
    xp = array_module(xw)
    T, N, H = xw.shape
    hbuf = xp.empty((T + 1, N, H), dtype=xw.dtype)  # the outputs are all the cache there is
    hbuf[0] = state[0]
    for t in range(T):
        matmul_rows(hbuf[t], Wh, hbuf[t + 1])
        hbuf[t + 1] += xw[t]
        _rnn_activate(hbuf[t + 1], relu)
    return hbuf[1:], (hbuf[T].copy(),), (hbuf, Wh, relu) if keep else None


def rnn_backward(dhs, dstate, cache):
    """dhs (T, N, H), dstate (dhT,) or None -> dxw (T, N, H), (dh0,), {"Wh": (H, H)}."""
    xp = array_module(dhs)
    hbuf, Wh, relu = cache
    T, N, H = dhs.shape
    da = xp.empty_like(dhs)
    dh = xp.zeros((N, H), dhs.dtype) if dstate is None else dstate[0].copy()
    for t in range(T - 1, -1, -1):
        dh += dhs[t]
        h = hbuf[t + 1]
        if relu:
            xp.multiply(dh, h > 0, out=da[t])
        else:
            xp.multiply(h, h, out=da[t])
            xp.subtract(1, da[t], out=da[t])
            da[t] *= dh
        xp.matmul(da[t], Wh.T, out=dh)
    dWh = hbuf[:-1].reshape(T * N, H).T @ da.reshape(T * N, H)
    return da, (dh,), {"Wh": dWh}


def rnn_step(xw, state, Wh, relu=False):
    """xw (N, H), state (h (N, H),) -> h (N, H), (h,)."""
    h = state[0]
    a = matmul_rows(h, Wh, array_module(h).empty((len(h), Wh.shape[1]), h.dtype))
    a += xw
    _rnn_activate(a, relu)
    return a, (a,)


# ---------------------------------------------------------------- LSTM


@functools.cache
def _lstm_exp_scale(xp, H: int, dtype: np.dtype):
    """(4H,) row on xp's device: -1 over i, f, o and -2 over g. Scaling the pre-activations by
    it lets one exp over the whole contiguous (N, 4H) block serve every gate:
    sigmoid(a) = 1 / (1 + exp(-a)) and tanh(a) = 2 sigmoid(2a) - 1. Scaling by a power of two is
    exact. Cached per array module, so each device builds its copy once."""
    scale = np.full(4 * H, -1.0, dtype)
    scale[3 * H :] = -2.0
    scale.flags.writeable = False
    return xp.asarray(scale)


def _lstm_activate(a, xw, c_prev, peep, c_out, tanh_c_out, h_out, tmp):
    """Turn a (N, 4H), which holds h_prev @ Wh, and xw (N, 4H) into the activated i, f, o, g in
    a's place and write c_t, tanh(c_t), h_t; tmp (N, H) is scratch."""
    xp = array_module(a)
    if fused := gpu_kernels.for_module(xp):
        return fused.lstm_activate(a, xw, c_prev, peep, c_out, tanh_c_out, h_out)
    H = c_prev.shape[1]
    a += xw
    i, f, o, g = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
    a *= _lstm_exp_scale(xp, H, a.dtype)
    if peep is None:
        sigmoid_neg_(a)
    else:  # the o gate sees c_t, so it waits; the scaled peephole terms enter with a minus
        xp.multiply(peep[:H], c_prev, out=tmp)
        i -= tmp
        xp.multiply(peep[H : 2 * H], c_prev, out=tmp)
        f -= tmp
        sigmoid_neg_(a[:, : 2 * H])
        sigmoid_neg_(g)
    g *= 2.0  # g held sigmoid(2 a_g)
    g -= 1.0
    xp.multiply(f, c_prev, out=c_out)
    xp.multiply(i, g, out=tmp)
    c_out += tmp
    if peep is not None:
        xp.multiply(peep[2 * H :], c_out, out=tmp)
        o -= tmp
        sigmoid_neg_(o)
    xp.tanh(c_out, out=tanh_c_out)
    xp.multiply(o, tanh_c_out, out=h_out)


def lstm_forward(xw, state, Wh, peep=None, keep=True):
    """xw (T, N, 4H), state (h0, c0) each (N, H), Wh (H, 4H), peep (3H,) ordered i, f, o or None
    -> hs (T, N, H), (hT, cT), cache (None unless keep).

    Without keep, the gate, cell and tanh(c) buffers hold one step (two for c: the previous and
    the new) and are indexed modulo their depth, so both forms run this one loop."""
    xp = array_module(xw)
    T, N, G = xw.shape
    H = G // 4
    depth = T if keep else 1
    gates = xp.empty((depth, N, G), dtype=xw.dtype)  # activated i, f, o, g; later their gradients
    hbuf = xp.empty((T + 1, N, H), dtype=xw.dtype)
    cbuf = xp.empty((T + 1 if keep else 2, N, H), dtype=xw.dtype)
    tanh_c = xp.empty((depth, N, H), dtype=xw.dtype)
    tmp = xp.empty((N, H), dtype=xw.dtype)
    hbuf[0], cbuf[0] = state
    C = len(cbuf)
    with np.errstate(over="ignore"):  # sigmoid_neg_'s exp
        for t in range(T):
            a = matmul_rows(hbuf[t], Wh, gates[t % depth])
            _lstm_activate(
                a, xw[t], cbuf[t % C], peep, cbuf[(t + 1) % C], tanh_c[t % depth], hbuf[t + 1], tmp
            )
    final = (hbuf[T].copy(), cbuf[T % C].copy())
    return hbuf[1:], final, (gates, hbuf, cbuf, tanh_c, Wh, peep) if keep else None


def _lstm_gate_grads(dh, dh_out, dc, a, tc, c_prev, peep, scratch):
    """lstm_backward's element-wise work at one step. a (N, 4H) holds step t's activated gates
    and gets the gradients of their pre-activations; dh + dh_out (N, H) is the gradient of h_t
    (dh is free afterwards: the caller overwrites it); dc (N, H) goes from c_t to c_{t-1} in
    place; scratch is tmp (N, H), dv and deriv (N, 4H).

    The gradient of every gate's value is first collected into dv, then the whole contiguous
    block becomes pre-activation gradients with two passes: strided per-gate slices cost two to
    four times as much per element in NumPy."""
    xp = array_module(dh)
    tmp, dv, deriv = scratch
    H = dh.shape[1]
    dh += dh_out
    i, f, o, g = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
    dv_i, dv_f, dv_o, dv_g = dv[:, :H], dv[:, H : 2 * H], dv[:, 2 * H : 3 * H], dv[:, 3 * H :]
    xp.multiply(dh, tc, out=dv_o)  # h = o * tanh(c)
    xp.multiply(tc, tc, out=tmp)  # dc += dh * o * (1 - tanh(c)^2)
    xp.subtract(1.0, tmp, out=tmp)
    tmp *= o
    tmp *= dh
    dc += tmp
    if peep is not None:  # o's pre-activation saw c_t: its gradient reaches dc now
        xp.subtract(1.0, o, out=tmp)
        tmp *= o
        tmp *= dv_o
        tmp *= peep[2 * H :]
        dc += tmp
    xp.multiply(dc, g, out=dv_i)  # c = f * c_prev + i * g
    xp.multiply(dc, i, out=dv_g)
    xp.multiply(dc, c_prev, out=dv_f)
    dc *= f
    # activation derivatives over the whole block: (1 - a) * a for the sigmoid gates and
    # (1 - g) * (1 + g) = 1 - g^2 for g, after g's slot gets its + 1
    xp.subtract(1.0, a, out=deriv)
    g += 1.0
    a *= deriv
    a *= dv
    if peep is not None:
        xp.multiply(i, peep[:H], out=tmp)
        dc += tmp
        xp.multiply(f, peep[H : 2 * H], out=tmp)
        dc += tmp


def lstm_backward(dhs, dstate, cache):
    """dhs (T, N, H), dstate (dhT, dcT) or None -> dxw (T, N, 4H), (dh0, dc0),
    {"Wh": (H, 4H)} plus {"peep": (3H,)} for a peephole cell."""
    xp = array_module(dhs)
    gates, hbuf, cbuf, tanh_c, Wh, peep = cache
    T, N, H = dhs.shape
    if dstate is None:
        dh, dc = xp.zeros((N, H), dhs.dtype), xp.zeros((N, H), dhs.dtype)
    else:
        dh, dc = dstate[0].copy(), dstate[1].copy()
    WhT = xp.ascontiguousarray(Wh.T)  # a contiguous B is ~5% faster for the small products
    if fused := gpu_kernels.for_module(xp):
        gate_grads = fused.lstm_gate_grads
    else:
        scratch = (
            xp.empty((N, H), dhs.dtype),
            xp.empty((N, 4 * H), dhs.dtype),
            xp.empty((N, 4 * H), dhs.dtype),
        )
        gate_grads = functools.partial(_lstm_gate_grads, scratch=scratch)
    for t in range(T - 1, -1, -1):
        gate_grads(dh, dhs[t], dc, gates[t], tanh_c[t], cbuf[t], peep)
        xp.matmul(gates[t], WhT, out=dh)
    dxw = gates
    flat = dxw.reshape(T * N, 4 * H)
    grads = {"Wh": hbuf[:-1].reshape(T * N, H).T @ flat}
    if peep is not None:
        grads["peep"] = xp.concatenate(
            [
                xp.einsum("tnh,tnh->h", dxw[:, :, :H], cbuf[:-1]),
                xp.einsum("tnh,tnh->h", dxw[:, :, H : 2 * H], cbuf[:-1]),
                xp.einsum("tnh,tnh->h", dxw[:, :, 2 * H : 3 * H], cbuf[1:]),
            ]
        )
    return dxw, (dh, dc), grads


def lstm_step(xw, state, Wh, peep=None):
    """xw (N, 4H), state (h, c) each (N, H) -> h (N, H), (h, c)."""
    xp = array_module(xw)
    h, c = state
    a = matmul_rows(h, Wh, xp.empty((len(h), Wh.shape[1]), h.dtype))
    c_new, tanh_c, h_new = xp.empty_like(c), xp.empty_like(c), xp.empty_like(h)
    with np.errstate(over="ignore"):
        _lstm_activate(a, xw, c, peep, c_new, tanh_c, h_new, xp.empty_like(c))
    return h_new, (h_new, c_new)


# ---------------------------------------------------------------- GRU


def _gru_activate(a, xw, h_prev, bhn, hn_out, h_out):
    """a (N, 3H) holds h_prev @ Wh on entry and r, z, n on exit; writes h_prev @ Wh_n + b_hn
    to hn_out and h_t to h_out."""
    xp = array_module(a)
    if fused := gpu_kernels.for_module(xp):
        return fused.gru_activate(a, xw, h_prev, bhn, hn_out, h_out)
    H = h_prev.shape[1]
    a[:, : 2 * H] += xw[:, : 2 * H]
    sigmoid_(a[:, : 2 * H])
    r, z, n = a[:, :H], a[:, H : 2 * H], a[:, 2 * H :]
    xp.add(n, bhn, out=hn_out)
    xp.multiply(r, hn_out, out=n)
    n += xw[:, 2 * H :]
    xp.tanh(n, out=n)
    xp.subtract(h_prev, n, out=h_out)  # h = n + z * (h_prev - n)
    h_out *= z
    h_out += n


def gru_forward(xw, state, Wh, bhn, keep=True):
    """xw (T, N, 3H), state (h0 (N, H),), Wh (H, 3H), bhn (H,) -> hs (T, N, H), (hT,), cache
    (None unless keep: the gate and hn buffers then hold one step, as in lstm_forward)."""
    xp = array_module(xw)
    T, N, G = xw.shape
    H = G // 3
    depth = T if keep else 1
    gates = xp.empty((depth, N, G), dtype=xw.dtype)  # r, z, n; later the gradients of a_r, a_z and of hn
    hn = xp.empty((depth, N, H), dtype=xw.dtype)  # h @ Wh_n + b_hn; later the gradient of a_n
    hbuf = xp.empty((T + 1, N, H), dtype=xw.dtype)
    hbuf[0] = state[0]
    with np.errstate(over="ignore"):  # sigmoid_'s exp
        for t in range(T):
            a = matmul_rows(hbuf[t], Wh, gates[t % depth])
            _gru_activate(a, xw[t], hbuf[t], bhn, hn[t % depth], hbuf[t + 1])
    return hbuf[1:], (hbuf[T].copy(),), (gates, hn, hbuf, Wh) if keep else None


def _gru_gate_grads(dh, dh_out, h_prev, a, hn, dh_direct, tmp):
    """gru_backward's element-wise work at one step. a (N, 3H) holds step t's r, z, n and gets
    the gradients of a_r, a_z and of hn = h_prev @ Wh_n + b_hn; hn (N, H) gets the gradient of
    a_n; dh + dh_out (N, H) is the gradient of h_t (dh is free afterwards); dh_direct (N, H)
    gets the part of dh_{t-1} that skips Wh; tmp (N, H) is scratch."""
    xp = array_module(dh)
    H = dh.shape[1]
    dh += dh_out
    r, z, n = a[:, :H], a[:, H : 2 * H], a[:, 2 * H :]
    xp.subtract(h_prev, n, out=tmp)  # dz = dh * (h_prev - n)
    tmp *= dh
    xp.subtract(1, z, out=dh_direct)  # da_n = dh * (1 - z) * (1 - n^2), into n's slot
    n *= n
    xp.subtract(1, n, out=n)
    n *= dh_direct
    n *= dh
    xp.multiply(dh, z, out=dh_direct)  # the path h_prev -> h that skips Wh
    tmp *= z  # da_z = dz * z * (1 - z)
    xp.subtract(1, z, out=z)
    z *= tmp
    xp.multiply(n, hn, out=tmp)  # dr = da_n * hn
    hn[...] = n  # hn's slot keeps da_n, the input-side gradient of the n gate
    n *= r  # n's slot becomes d(hn) = da_n * r, the recurrent-side one
    tmp *= r  # da_r = dr * r * (1 - r)
    xp.subtract(1, r, out=r)
    r *= tmp


def gru_backward(dhs, dstate, cache):
    """dhs (T, N, H), dstate (dhT,) or None -> dxw (T, N, 3H), (dh0,),
    {"Wh": (H, 3H), "bhn": (H,)}."""
    xp = array_module(dhs)
    gates, hn, hbuf, Wh = cache
    T, N, H = dhs.shape
    dh = xp.zeros((N, H), dhs.dtype) if dstate is None else dstate[0].copy()
    dh_direct = xp.empty((N, H), dhs.dtype)
    if fused := gpu_kernels.for_module(xp):
        gate_grads = fused.gru_gate_grads
    else:
        gate_grads = functools.partial(_gru_gate_grads, tmp=xp.empty((N, H), dhs.dtype))
    for t in range(T - 1, -1, -1):
        gate_grads(dh, dhs[t], hbuf[t], gates[t], hn[t], dh_direct)
        xp.matmul(gates[t], Wh.T, out=dh)
        dh += dh_direct
    flat = gates.reshape(T * N, 3 * H)
    grads = {"Wh": hbuf[:-1].reshape(T * N, H).T @ flat, "bhn": gates[:, :, 2 * H :].sum(axis=(0, 1))}
    gates[:, :, 2 * H :] = hn
    return gates, (dh,), grads


def gru_step(xw, state, Wh, bhn):
    """xw (N, 3H), state (h (N, H),) -> h (N, H), (h,)."""
    xp = array_module(xw)
    h = state[0]
    a = matmul_rows(h, Wh, xp.empty((len(h), Wh.shape[1]), h.dtype))
    hn, h_new = xp.empty_like(h), xp.empty_like(h)
    with np.errstate(over="ignore"):
        _gru_activate(a, xw, h, bhn, hn, h_new)
    return h_new, (h_new,)
