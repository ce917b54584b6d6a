"""A GAT layer's tail ``dropout(elu(layer_norm(h + c)))`` as one fused CPU operator.

Each layer of a :class:`kdkit.models.layers.GATStack` ends with a residual add, a LayerNorm, an
ELU and dropout: in eager PyTorch four operators forward and four backward, each a pass over the
``[nodes, hidden]`` tensor, with an operator call and an autograd node each. On a student batch
(~1,900 nodes x 32) those passes are tiny and the calls dominate; torch's ELU also ran at
~2.5 ns an element on the 2-core AMD EPYC VM (its ``exp``), slower than the LayerNorm. Here one
numba loop does the four forward, one does their gradients, and the ELU's ``exp`` is a short
polynomial that LLVM vectorizes (float32; float64 uses ``math.expm1``).

The math is torch's within float rounding: LayerNorm with the biased variance and ``eps`` inside
the square root, ``elu(y) = y if y > 0 else expm1(y)`` (alpha 1), and the same dropout masks as
:func:`kdkit.models.dropout.dropout` for the same seed (the mask is drawn by
:func:`kdkit.models.dropout.dropout_mask`, so ``torch.manual_seed`` gives the unfused path's
masks). A NaN in a row makes that row NaN. ``tests/test_norm_act.py`` checks values and
gradients against ``F.dropout(F.elu(F.layer_norm(h + c)))``.

Every row sum sits in a loop that stores nothing. The sums are reassociated so that they
vectorize, and a loop that also stores to an array gets a run-time overlap check from LLVM: it
falls back to the scalar loop when the store's address lies within 256 bytes after a row it reads.
The row buffers are allocated when the kernel is called, so that happened now and then, for the
last rows of an input that the heap placed just before a buffer. Those rows then summed in
another order, and the same training differed in the last bits from run to run (docs/PREEMPTION.md,
"Limits"). A loop that only reads needs no check, so it takes one path for every row.

It is used in eager CPU training and evaluation of float32/float64 models (the default kernels,
``attention: auto``); ``attention: stock``, GPUs, ``torch.compile`` (whose own generated C++
fuses these four), ``torch.export`` and other dtypes keep the PyTorch operators.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from kdkit.data.jit import leaf_kernel
from kdkit.models.dropout import dropout_mask

_F32 = np.float32
_LOG2E, _LN2_HI, _LN2_LO = _F32(1.4426950408889634), _F32(0.693359375), _F32(-2.12194440e-4)
_ONE, _HALF, _P2, _P4, _P8, _P16 = _F32(1.0), _F32(0.5), _F32(2.0**-2), _F32(2.0**-4), _F32(2.0**-8), _F32(2.0**-16)
# Taylor coefficients of expm1(r) = r + r^2/2 + ... + r^7/7! (|r| <= ln2/2: error < 1e-8)
_C2, _C3, _C4, _C5, _C6, _C7 = (_F32(1 / 2), _F32(1 / 6), _F32(1 / 24), _F32(1 / 120), _F32(1 / 720),
                                _F32(1 / 5040))


def _elu(y):
    """``(elu(y), d elu / dy)``; compiled through the numba overload below, per float type."""
    raise NotImplementedError("kdkit.models.norm_act._elu runs only compiled")


def _elu_f32(y):
    """float32, branch-free so that LLVM vectorizes it: ``expm1(y)`` for ``y <= 0`` as
    ``2^n * q + (2^n - 1)`` with ``y = n ln2 + r``, ``q = expm1(r)`` a degree-7 polynomial and
    ``2^n`` a product of selects on the bits of ``-n`` (a table lookup would not vectorize). Below
    ``y = -17.5`` float32's ``expm1`` is -1 to within 6e-8, so ``y`` is clamped there and
    ``-n <= 25``. A NaN ``y`` gives NaN."""
    t = min(max(y, _F32(-17.5)), _F32(0.0))
    n = np.floor(t * _LOG2E + _F32(0.5))
    r = (t - n * _LN2_HI) - n * _LN2_LO
    q = r + r * r * (_C2 + r * (_C3 + r * (_C4 + r * (_C5 + r * (_C6 + r * _C7)))))
    k = np.int32(-n)
    p = (((_HALF if k & 1 else _ONE) * (_P2 if k & 2 else _ONE))
         * ((_P4 if k & 4 else _ONE) * (_P8 if k & 8 else _ONE)) * (_P16 if k & 16 else _ONE))
    e = p * q + (p - _ONE)
    pos = y > _F32(0.0)
    return (y if pos | (y != y) else e), (_ONE if pos else e + _ONE)


def _elu_f64(y):
    """float64: ``math.expm1``."""
    e = math.expm1(y)
    pos = y > 0.0
    return (y if pos | (y != y) else e), (1.0 if pos else e + 1.0)


def _forward_loops(h, c, weight, bias, eps, mask, use_mask, need_grad, out, xhat, dfac, rstd):
    """``out = mask * elu(layer_norm(h + c))`` row by row; with ``need_grad`` also the normalised
    input ``xhat``, the ELU's derivative ``dfac`` and ``rstd`` = 1 / std per row for the backward."""
    N, C = h.shape
    dt = h.dtype.type
    zero, inv_c, eps = dt(0), dt(1.0 / C), dt(eps)  # everything in h's float type
    v, xr, ar, dr = np.empty(C, h.dtype), np.empty(C, h.dtype), np.empty(C, h.dtype), np.empty(C, h.dtype)
    for n in range(N):  # row buffers and no branch inside the inner loops: they vectorize
        for j in range(C):
            v[j] = h[n, j] + c[n, j]
        s = zero
        for j in range(C):  # a sum in a loop that stores nothing: see the module docstring
            s += v[j]
        mu = s * inv_c
        q = zero
        for j in range(C):
            d = v[j] - mu
            q += d * d
        r = dt(1.0) / math.sqrt(q * inv_c + eps)
        for j in range(C):
            xr[j] = (v[j] - mu) * r
        for j in range(C):
            a, da = _elu(xr[j] * weight[j] + bias[j])
            ar[j] = a
            dr[j] = da
        if use_mask:
            for j in range(C):
                out[n, j] = ar[j] * mask[n, j]
        else:
            for j in range(C):
                out[n, j] = ar[j]
        if need_grad:  # the mask is folded into the derivative: the backward needs no mask
            for j in range(C):
                xhat[n, j] = xr[j]
            if use_mask:
                for j in range(C):
                    dfac[n, j] = dr[j] * mask[n, j]
            else:
                for j in range(C):
                    dfac[n, j] = dr[j]
            rstd[n] = r


def _backward_loops(grad, xhat, dfac, rstd, weight, g_v, g_weight, g_bias):
    """Gradients of :func:`_forward_loops` w.r.t. ``h + c`` (``g_v``), the weight and the bias;
    ``dfac`` is the ELU's derivative times the dropout mask."""
    N, C = grad.shape
    zero, inv_c = grad.dtype.type(0), grad.dtype.type(1.0 / C)
    t, gy = np.empty(C, grad.dtype), np.empty(C, grad.dtype)
    for j in range(C):
        g_weight[j] = zero
        g_bias[j] = zero
    for n in range(N):  # as in the forward: no branch inside the inner loops
        for j in range(C):
            t[j] = grad[n, j] * dfac[n, j]
        for j in range(C):
            g_weight[j] += t[j] * xhat[n, j]
            g_bias[j] += t[j]
            gy[j] = t[j] * weight[j]
        s1 = zero
        s2 = zero
        for j in range(C):  # the row sums in a loop that stores nothing (module docstring)
            s1 += gy[j]
            s2 += gy[j] * xhat[n, j]
        m1 = s1 * inv_c
        m2 = s2 * inv_c
        r = rstd[n]
        for j in range(C):
            g_v[n, j] = r * (gy[j] - m1 - xhat[n, j] * m2)


_kernels: dict[str, object] = {}


def _kernel(name: str):
    if name not in _kernels:
        import numba  # imported here: only the CPU path needs it
        from numba.extending import overload

        @overload(_elu, inline="always")
        def _elu_typed(y):
            return _elu_f32 if y == numba.float32 else _elu_f64

        # reassociation lets the row sums vectorize; no "nnan"/"ninf": NaN and inf must propagate
        fast = dict(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract", "nsz", "arcp"})
        _kernels["forward"] = leaf_kernel(numba.njit(**fast)(_forward_loops))
        _kernels["backward"] = leaf_kernel(numba.njit(**fast)(_backward_loops))
    return _kernels[name]


def _check(h: Tensor, c: Tensor, weight: Tensor, bias: Tensor) -> None:
    if h.dim() != 2 or c.shape != h.shape or weight.shape != (h.shape[1],) or bias.shape != weight.shape:
        raise ValueError(f"kdkit::norm_elu_dropout: h {tuple(h.shape)}, c {tuple(c.shape)}, weight "
                         f"{tuple(weight.shape)}, bias {tuple(bias.shape)}: need [N, C], [N, C], [C], [C]")


def _forward_impl(h: Tensor, c: Tensor, weight: Tensor, bias: Tensor, eps: float, mask: Tensor | None,
                  need_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    _check(h, c, weight, bias)
    dt = h.dtype
    N, C = h.shape
    out = torch.empty((N, C), dtype=dt)
    shape = (N, C) if need_grad else (0, 0)
    xhat, dfac, rstd = torch.empty(shape, dtype=dt), torch.empty(shape, dtype=dt), torch.empty(shape[0], dtype=dt)
    m = mask if mask is not None else out  # not read when use_mask is False
    _kernel("forward")(h.detach().contiguous().numpy(), c.detach().contiguous().numpy(),
                       weight.detach().to(dt).contiguous().numpy(), bias.detach().to(dt).contiguous().numpy(),
                       eps, m.numpy(), mask is not None, need_grad, out.numpy(), xhat.numpy(), dfac.numpy(),
                       rstd.numpy())
    return out, xhat, dfac, rstd


def _backward_impl(grad: Tensor, xhat: Tensor, dfac: Tensor, rstd: Tensor,
                   weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    dt = xhat.dtype
    g_v = torch.empty_like(xhat)
    g_w, g_b = torch.empty(xhat.shape[1], dtype=dt), torch.empty(xhat.shape[1], dtype=dt)
    grad = grad.to(dt).contiguous()
    _kernel("backward")(grad.numpy(), xhat.numpy(), dfac.numpy(), rstd.numpy(),
                        weight.detach().to(dt).contiguous().numpy(), g_v.numpy(), g_w.numpy(), g_b.numpy())
    return g_v, g_w.to(weight.dtype), g_b.to(weight.dtype)


class _NormActFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, c, weight, bias, eps, mask):
        need_grad = any(ctx.needs_input_grad[:4])
        out, xhat, dfac, rstd = _forward_impl(h, c, weight, bias, eps, mask, need_grad)
        if need_grad:
            ctx.save_for_backward(xhat, dfac, rstd, weight)  # the mask is folded into dfac
        return out

    @staticmethod
    def backward(ctx, grad_out):
        xhat, dfac, rstd, weight = ctx.saved_tensors
        g_v, g_w, g_b = _backward_impl(grad_out, xhat, dfac, rstd, weight)
        need = ctx.needs_input_grad
        return (g_v if need[0] else None, g_v if need[1] else None, g_w if need[2] else None,
                g_b if need[3] else None, None, None)


def uses_fused_norm_act(h: Tensor, norm: torch.nn.Module) -> bool:
    """Whether :func:`norm_elu_dropout` runs the fused operator for ``h`` and this norm: an
    affine ``nn.LayerNorm`` over the last dimension, float32/float64 on CPU, eager."""
    return (isinstance(norm, torch.nn.LayerNorm) and norm.weight is not None and norm.bias is not None
            and len(norm.normalized_shape) == 1 and h.device.type == "cpu"
            and h.dtype in (torch.float32, torch.float64)
            and not torch.compiler.is_compiling() and not torch.jit.is_scripting())


def norm_elu_dropout(h: Tensor, c: Tensor, norm: torch.nn.LayerNorm, p: float, training: bool) -> Tensor:
    """``dropout(elu(norm(h + c)), p, training)`` with kdkit's dropout masks, fused on CPU where
    :func:`uses_fused_norm_act` holds (the caller checks it). Under bf16/fp16 autocast ``h`` and
    ``c`` arrive in the low precision; the result is float32, as autocast's LayerNorm gives."""
    if c.dtype != h.dtype:
        h, c = h.float(), c.float()
    mask = dropout_mask(h.shape, p, h.dtype) if training and p > 0 else None
    return _NormActFn.apply(h, c, norm.weight, norm.bias, float(norm.eps), mask)
