"""GATv2 attention as one fused CPU kernel: scores, softmax and aggregation without per-edge tensors.

PyG's ``GATv2Conv`` computes, for every edge ``j -> i`` and head ``h``,

    z   = x_l[j] + x_r[i] + W_e e_ij                 # [E, H, C]
    s   = a . LeakyReLU(z)                           # [E, H]
    att = softmax of s over the edges into i         # [E, H]
    out[i] = sum_j att * x_l[j]                      # [N, H, C]

with gathers and scatters, each a pass over an ``[edges, heads, channels]`` tensor that autograd
also keeps for the backward pass. A window's graph is tiny (~30 nodes, ~50 edges), so a batch's
step is bound by those memory passes, not by arithmetic (``docs/PERFORMANCE.md``); eager PyTorch
cannot fuse them. Here the same math runs as loops over the edges compiled with numba (three
for the forward pass, two for the backward pass): the forward keeps only ``att`` ([E, H]) for
the backward pass, which recomputes ``z`` and writes the gradients of ``x_l``, ``x_r``, the edge
projection's weight and ``a`` directly. The edge projection ``W_e e`` is summed inside the
loops for kdkit's 7 edge features (one pass, the seven products written out) and for many heads x
channels; otherwise it is one matrix product before the loops in each pass, not kept between them
(:func:`_edges_inline`). The weight's gradient is summed inside the backward loops.

Under ``torch.compile``, :func:`gatv2_attention` calls a ``torch.library`` custom operator
(``kdkit::gatv2_attention``) with its own autograd formula and a shape-only ("fake")
implementation, so the compiler keeps it as one opaque call inside a compiled graph instead of
breaking the graph; in eager mode it calls the same loops through an ``autograd.Function``.
CPU and float32/float64 only; :class:`kdkit.models.layers.GATv2Layer` falls back to the stock PyG path elsewhere (CUDA,
attention dropout in training, ``torch.export``). The result equals the stock layer's within
float rounding (``tests/test_fused_attention.py``: forward and every gradient).
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
from torch import Tensor

from kdkit.data.jit import leaf_kernel

_NEG_SLOPE_DEFAULT = 0.2


def _forward_loops(xl, xr, pe, ea, we, att, src, dst, consts, num_nodes, alpha, out):
    """Fill ``alpha`` [E, H] (attention) and ``out`` [N, H, C].

    ``pe`` is the projected edge features ``W_e e`` as [E, H, C] (one matrix product before the
    loops, :func:`_projected`), or [0, H, C]: then, if ``we`` [D, H, C] is not empty, ``W_e e``
    is summed here edge by edge from ``ea`` [E, D] (see :func:`_edges_inline` for which is
    faster when). ``consts`` = [0, 1, negative slope, 1e-16] in the
    arrays' dtype, so that every sum stays in that dtype (a Python float would promote float32
    arithmetic to float64). The inner loops over channels are branch-free so that LLVM
    vectorizes them."""
    E, H, C = alpha.shape[0], xl.shape[1], xl.shape[2]
    has_edge = pe.shape[0] > 0
    inline, D = pe.shape[0] == 0 and we.shape[0] > 0, we.shape[0]
    inline7 = inline and D == 7
    zero, slope, eps = consts[0], consts[2], consts[3]
    mx = np.full((num_nodes, H), -np.inf, dtype=xl.dtype)
    den = np.zeros((num_nodes, H), dtype=xl.dtype)
    z = np.empty(C, dtype=xl.dtype)
    for k in range(E):  # scores, and each destination's maximum (softmax stability, as PyG)
        j, i = src[k], dst[k]
        for h in range(H):
            if has_edge:
                for c in range(C):
                    z[c] = xl[j, h, c] + xr[i, h, c] + pe[k, h, c]
            else:
                for c in range(C):
                    z[c] = xl[j, h, c] + xr[i, h, c]
                if inline7:  # kdkit's 7 edge features: one pass over z instead of seven
                    v0, v1, v2, v3, v4, v5, v6 = ea[k, 0], ea[k, 1], ea[k, 2], ea[k, 3], ea[k, 4], ea[k, 5], ea[k, 6]
                    for c in range(C):
                        z[c] += (((v0 * we[0, h, c] + v1 * we[1, h, c]) + (v2 * we[2, h, c] + v3 * we[3, h, c]))
                                 + ((v4 * we[4, h, c] + v5 * we[5, h, c]) + v6 * we[6, h, c]))
                elif inline:
                    for d in range(D):
                        v = ea[k, d]
                        for c in range(C):
                            z[c] += v * we[d, h, c]
            s = zero
            for c in range(C):
                s += att[h, c] * max(z[c], z[c] * slope)
            alpha[k, h] = s
            if s > mx[i, h]:
                mx[i, h] = s
    for k in range(E):
        i = dst[k]
        for h in range(H):
            e = math.exp(alpha[k, h] - mx[i, h])
            alpha[k, h] = e
            den[i, h] += e
    seen = np.zeros(num_nodes, dtype=np.bool_)
    for k in range(E):  # normalise (PyG adds 1e-16 to the sum) and aggregate
        j, i = src[k], dst[k]
        for h in range(H):
            alpha[k, h] = alpha[k, h] / (den[i, h] + eps)
            a = alpha[k, h]
            if seen[i]:
                for c in range(C):
                    out[i, h, c] += a * xl[j, h, c]
            else:  # the row's first write: no zero fill beforehand
                for c in range(C):
                    out[i, h, c] = a * xl[j, h, c]
        seen[i] = True
    for n in range(num_nodes):  # rows no edge wrote (nodes without incoming edges): 0, as PyG
        if not seen[n]:
            out[n] = zero


def _backward_loops(grad, xl, xr, pe, ea, we, att, src, dst, consts, alpha, g_xl, g_xr, g_we, g_att):
    """Write the gradients ``g_xl``, ``g_xr`` [N, H, C] and accumulate ``g_we`` [D, H, C] and
    ``g_att`` [H, C] (zeroed by the caller); ``z`` is recomputed from ``pe`` (the projected edge
    features, recomputed by the caller) or, with ``pe`` empty, from ``ea`` and ``we`` as in the
    forward loops, not stored. The edge weight's gradient is summed here,
    edge by edge: writing the per-edge gradient of ``pe`` out for one matrix product measured
    slower. A node row is assigned on its first write and accumulated after it (rows never
    written are zeroed at the end), which saves a zero fill of each [N, H, C] array: ~0.7 ms a
    teacher layer each.
    Each inner loop touches few arrays: LLVM vectorizes a loop only if it can check at run time
    that its arrays do not overlap, and gives up beyond a handful of them."""
    E, H, C, D = alpha.shape[0], xl.shape[1], xl.shape[2], g_we.shape[0]
    has_edge = pe.shape[0] > 0
    inline = pe.shape[0] == 0 and we.shape[0] > 0
    inline7 = inline and D == 7
    zero, one, slope = consts[0], consts[1], consts[2]
    num_nodes = xl.shape[0]
    g_alpha = np.empty((E, H), dtype=xl.dtype)
    dot = np.zeros((num_nodes, H), dtype=xl.dtype)
    seen_l, seen_r = np.zeros(num_nodes, dtype=np.bool_), np.zeros(num_nodes, dtype=np.bool_)
    gz = np.empty(C, dtype=xl.dtype)
    for k in range(E):  # through the aggregation: out[i] += a * x_l[j]
        j, i = src[k], dst[k]
        for h in range(H):
            a = alpha[k, h]
            ga = zero
            for c in range(C):
                ga += grad[i, h, c] * xl[j, h, c]
            if seen_l[j]:
                for c in range(C):
                    g_xl[j, h, c] += a * grad[i, h, c]
            else:  # the row's first write: no zero fill beforehand
                for c in range(C):
                    g_xl[j, h, c] = a * grad[i, h, c]
            g_alpha[k, h] = ga
            dot[i, h] += a * ga
        seen_l[j] = True
    for k in range(E):  # through the softmax, LeakyReLU and the sum z = x_l[j] + x_r[i] + W_e e
        j, i = src[k], dst[k]
        for h in range(H):
            gs = alpha[k, h] * (g_alpha[k, h] - dot[i, h])
            if has_edge:
                for c in range(C):
                    gz[c] = xl[j, h, c] + xr[i, h, c] + pe[k, h, c]  # z for now
            else:
                for c in range(C):
                    gz[c] = xl[j, h, c] + xr[i, h, c]
                if inline7:  # as in the forward loops, the same sums in the same order
                    v0, v1, v2, v3, v4, v5, v6 = ea[k, 0], ea[k, 1], ea[k, 2], ea[k, 3], ea[k, 4], ea[k, 5], ea[k, 6]
                    for c in range(C):
                        gz[c] += (((v0 * we[0, h, c] + v1 * we[1, h, c]) + (v2 * we[2, h, c] + v3 * we[3, h, c]))
                                  + ((v4 * we[4, h, c] + v5 * we[5, h, c]) + v6 * we[6, h, c]))
                elif inline:
                    for d in range(D):
                        v = ea[k, d]
                        for c in range(C):
                            gz[c] += v * we[d, h, c]
            for c in range(C):
                z = gz[c]
                dz = one if z > zero else slope  # LeakyReLU's derivative (torch's: slope at 0)
                g_att[h, c] += gs * z * dz
                gz[c] = gs * att[h, c] * dz
            for c in range(C):
                g_xl[j, h, c] += gz[c]
            if seen_r[i]:
                for c in range(C):
                    g_xr[i, h, c] += gz[c]
            else:
                for c in range(C):
                    g_xr[i, h, c] = gz[c]
            for d in range(D):
                v = ea[k, d]
                for c in range(C):
                    g_we[d, h, c] += v * gz[c]
        seen_r[i] = True
    for n in range(num_nodes):  # rows no edge wrote
        if not seen_l[n]:
            g_xl[n] = zero
        if not seen_r[n]:
            g_xr[n] = zero


_kernels: dict[str, object] = {}
# Reassociation lets LLVM vectorize the channel sums; no "nnan"/"ninf": a NaN or inf in the
# inputs propagates to the output as in the stock layer.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


def _kernel(name: str):
    """The loops compiled by numba on first use (cached on disk beside this file)."""
    if name not in _kernels:
        import numba  # imported here: only the fused CPU path needs it

        started = time.perf_counter()
        fn = {"forward": _forward_loops, "backward": _backward_loops}[name]
        _kernels[name] = leaf_kernel(numba.njit(cache=True, nogil=True, fastmath=_FASTMATH, error_model="numpy")(fn))
        took = time.perf_counter() - started
        if took > 2.0:
            logging.getLogger("kdkit.models").info("compiled the fused GATv2 %s kernel in %.1f s (numba, first use)",
                                                   name, took)
    return _kernels[name]


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


# Heads x channels from which the loops sum W_e e themselves for any number of edge features
# instead of taking one product: their generic sum (one pass over the channels per feature) is
# slow for few channels (1-head student, 32: ~180 us a layer against ~55 us for the product);
# with many the product's [E, H * C] output is the cost (teacher, 8 x 64: ~10 MB written per
# call, 2-5 ms in a training step against ~1 ms summed in the loops; kdkit bench train).
INLINE_EDGES_FROM = 128


def _edges_inline(H: int, C: int, D: int) -> bool:
    """Whether the loops sum ``W_e e`` themselves: always for kdkit's 7 edge features (the loops
    write the seven products out in one pass: in an in-process A/B of whole training steps against
    the generic sum (teacher) and the product (1-head student), the teacher's step was ~3.5 %
    shorter and the student's level or a few % shorter, docs/PERFORMANCE.md), else from
    :data:`INLINE_EDGES_FROM` heads x channels."""
    return D == 7 or H * C >= INLINE_EDGES_FROM


def _projected(edge_attr: Tensor, w_edge: Tensor, H: int, C: int) -> np.ndarray:
    """``W_e e`` for every edge as [E, H, C] (one matrix product), or [0, H, C] without edge
    features or when the loops sum it themselves (:func:`_edges_inline`)."""
    if w_edge.shape[0] == 0 or _edges_inline(H, C, w_edge.shape[0]):
        return np.empty((0, H, C), dtype=np.float32 if w_edge.dtype == torch.float32 else np.float64)
    # torch's product with autocast off (under bf16 autocast it would run in bf16), not numpy's:
    # numpy's OpenBLAS starts its own threads, which then spin on another core after every call
    # (a 1-thread training run used two cores)
    with torch.autocast("cpu", enabled=False):
        return _np(torch.mm(edge_attr.detach(), w_edge.detach())).reshape(-1, H, C)


def _consts(like: Tensor, negative_slope: float) -> np.ndarray:
    return np.array([0.0, 1.0, negative_slope, 1e-16], dtype=np.float32 if like.dtype == torch.float32 else np.float64)


def _forward_impl(xl: Tensor, xr: Tensor, edge_attr: Tensor, w_edge: Tensor, att: Tensor, edge_index: Tensor,
                  negative_slope: float) -> tuple[Tensor, Tensor]:
    N, H, C = xl.shape
    E = edge_index.shape[1]
    out = torch.empty((N, H, C), dtype=xl.dtype)  # every row is written by the kernel
    alpha = torch.empty((E, H), dtype=xl.dtype)
    ei = _np(edge_index)
    if E and (ei.min() < 0 or ei.max() >= N):  # the compiled loops do not check bounds: fail here, clearly
        raise ValueError(f"kdkit::gatv2_attention: edge_index spans {ei.min()}..{ei.max()} but there are {N} nodes")
    _kernel("forward")(_np(xl), _np(xr), _projected(edge_attr, w_edge, H, C), _np(edge_attr),
                       _np(w_edge).reshape(-1, H, C), _np(att), ei[0], ei[1], _consts(xl, negative_slope), N,
                       alpha.numpy(), out.numpy())
    return out, alpha


def _backward_impl(grad: Tensor, xl: Tensor, xr: Tensor, edge_attr: Tensor, w_edge: Tensor, att: Tensor,
                   edge_index: Tensor, alpha: Tensor, negative_slope: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    _, H, C = xl.shape
    g_xl, g_xr = torch.empty_like(xl), torch.empty_like(xr)  # every row is written by the kernel
    g_att, g_w = torch.zeros_like(att), torch.zeros_like(w_edge)
    ei = _np(edge_index)
    _kernel("backward")(_np(grad), _np(xl), _np(xr), _projected(edge_attr, w_edge, H, C), _np(edge_attr),
                        _np(w_edge).reshape(-1, H, C), _np(att), ei[0], ei[1], _consts(xl, negative_slope),
                        _np(alpha), g_xl.numpy(), g_xr.numpy(), g_w.numpy().reshape(-1, H, C), g_att.numpy())
    return g_xl, g_xr, g_w, g_att


# Two entry points to the same loops. Under torch.compile: the custom operators below, which the
# compiler keeps as opaque calls. In eager mode: an autograd.Function, because a custom
# operator's Python dispatch costs ~0.1 ms a call (forward and backward), ~0.6 ms of a 1-head
# student's ~12 ms step with its three layers (kdkit bench train).
@torch.library.custom_op("kdkit::gatv2_attention", mutates_args=())
def _attention_op(xl: Tensor, xr: Tensor, edge_attr: Tensor, w_edge: Tensor, att: Tensor, edge_index: Tensor,
                  negative_slope: float) -> tuple[Tensor, Tensor]:
    return _forward_impl(xl, xr, edge_attr, w_edge, att, edge_index, negative_slope)


@_attention_op.register_fake
def _(xl, xr, edge_attr, w_edge, att, edge_index, negative_slope):
    return xl.new_empty(xl.shape), xl.new_empty((edge_index.shape[1], xl.shape[1]))


@torch.library.custom_op("kdkit::gatv2_attention_backward", mutates_args=())
def _attention_backward_op(grad: Tensor, xl: Tensor, xr: Tensor, edge_attr: Tensor, w_edge: Tensor, att: Tensor,
                           edge_index: Tensor, alpha: Tensor,
                           negative_slope: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _backward_impl(grad, xl, xr, edge_attr, w_edge, att, edge_index, alpha, negative_slope)


@_attention_backward_op.register_fake
def _(grad, xl, xr, edge_attr, w_edge, att, edge_index, alpha, negative_slope):
    return xl.new_empty(xl.shape), xr.new_empty(xr.shape), w_edge.new_empty(w_edge.shape), att.new_empty(att.shape)


def _setup_context(ctx, inputs, output):
    xl, xr, edge_attr, w_edge, att, edge_index, negative_slope = inputs
    ctx.save_for_backward(xl, xr, edge_attr, w_edge, att, edge_index, output[1])
    ctx.negative_slope = negative_slope


def _backward(ctx, grad_out, grad_alpha):
    xl, xr, edge_attr, w_edge, att, edge_index, alpha = ctx.saved_tensors  # no gradient flows into alpha
    g_xl, g_xr, g_w, g_att = _attention_backward_op(grad_out.contiguous(), xl, xr, edge_attr, w_edge, att,
                                                    edge_index, alpha, ctx.negative_slope)
    return g_xl, g_xr, None, (g_w if w_edge.shape[0] else None), g_att, None, None


_attention_op.register_autograd(_backward, setup_context=_setup_context)


class _AttentionFn(torch.autograd.Function):
    """The eager-mode entry point: the same loops as :func:`_attention_op`, without the operator dispatch."""

    @staticmethod
    def forward(ctx, xl, xr, edge_attr, w_edge, att, edge_index, negative_slope):
        out, alpha = _forward_impl(xl, xr, edge_attr, w_edge, att, edge_index, negative_slope)
        ctx.save_for_backward(xl, xr, edge_attr, w_edge, att, edge_index, alpha)
        ctx.negative_slope = negative_slope
        return out

    @staticmethod
    def backward(ctx, grad_out):
        xl, xr, edge_attr, w_edge, att, edge_index, alpha = ctx.saved_tensors
        g_xl, g_xr, g_w, g_att = _backward_impl(grad_out.contiguous(), xl, xr, edge_attr, w_edge, att, edge_index,
                                                alpha, ctx.negative_slope)
        return g_xl, g_xr, None, (g_w if w_edge.shape[0] else None), g_att, None, None


def gatv2_attention(x_l: Tensor, x_r: Tensor, edge_index: Tensor, att: Tensor, edge_attr: Tensor | None = None,
                    edge_weight: Tensor | None = None, negative_slope: float = _NEG_SLOPE_DEFAULT) -> Tensor:
    """GATv2's attention and aggregation, fused: ``out[i] = sum_j softmax_j(a . LeakyReLU(x_l[j] + x_r[i]
    + W_e e_ji)) * x_l[j]``, per head.

    Args:
        x_l, x_r: ``lin_l(x)`` and ``lin_r(x)`` as ``[N, H, C]``.
        edge_index: ``[2, E]`` int64 (source, destination), any order; self-loops already added.
        att: the attention vector, ``[H, C]`` or GATv2Conv's ``[1, H, C]``.
        edge_attr: edge features ``[E, D]`` (no gradient is computed for them), or None.
        edge_weight: the edge projection's weight ``[H * C, D]`` (``lin_edge.weight``); with ``edge_attr``.
        negative_slope: LeakyReLU's slope. Default 0.2 (GATv2Conv's).

    Returns:
        ``[N, H, C]``, before GATv2Conv's concat/mean and bias. Differentiable in ``x_l``, ``x_r``,
        ``att`` and ``edge_weight``.
    """
    _, H, C = x_l.shape
    if (edge_attr is None) != (edge_weight is None):
        raise ValueError("gatv2_attention: give both edge_attr and edge_weight, or neither")
    if edge_attr is None:
        edge_attr, w_edge = x_l.new_empty((edge_index.shape[1], 0)), x_l.new_empty((0, H * C))
    else:
        if edge_attr.requires_grad:
            raise ValueError("gatv2_attention: edge_attr requires a gradient, which the fused kernel does not compute")
        w_edge = edge_weight.t()  # [D, H * C]
    args = (x_l.contiguous(), x_r.contiguous(), edge_attr.to(x_l.dtype).contiguous(), w_edge.contiguous(),
            att.reshape(H, C).contiguous(), edge_index, float(negative_slope))
    if torch.compiler.is_compiling():
        return _attention_op(*args)[0]
    return _AttentionFn.apply(*args)
