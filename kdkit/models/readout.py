"""The graph readout ``[mean pool | max pool]`` of node embeddings as one fused CPU operator.

A GAT classifier reads each window out as ``cat(global_mean_pool(h), global_max_pool(h))``.
PyG computes it with two scatters forward and, for the maximum, a gather, a comparison, a
count of ties and a scatter backward, each a pass over the ``[nodes, features]`` tensor and each
a separate operator call. Eager, replacing them saved ~0.4 ms of a ~13 ms student step; under
``torch.compile`` the generated C++ for those scatters with dynamic shapes took ~2.5 ms a step
(``kdkit bench train``, 1-head GAT student, docs/PERFORMANCE.md). Here one numba loop writes
both halves forward and one writes the gradient backward, registered as the ``torch.library``
operator ``kdkit::mean_max_pool`` (opaque inside a compiled graph, like
:mod:`kdkit.models.fused_attention`).

The math is PyG's: the mean of a graph with no nodes is 0 and so is its maximum
(``scatter_reduce(..., "amax", include_self=False)`` on zeros); the maximum's gradient is split
evenly between the nodes that tie for it, as torch's ``scatter_reduce`` backward does.
``tests/test_readout.py`` checks values and gradients against PyG's functions. A NaN in a
graph's embeddings makes its mean NaN (so the loss is NaN and the trainer stops), whatever the
maximum holds.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch_geometric.nn import global_max_pool, global_mean_pool

from kdkit.data.jit import leaf_kernel


def _forward_loops(x, batch, out, count):
    """``out[g] = [mean of x over graph g | max of x over graph g]``; ``count[g]`` = its nodes.
    ``batch`` may be in any order. Memory-bound: ~0.1 ms for a 64-window student batch."""
    N, F = x.shape
    G = out.shape[0]
    sums = np.zeros((G, F), dtype=x.dtype)
    maxs = np.full((G, F), -np.inf, dtype=x.dtype)
    for g in range(G):
        count[g] = 0
    for n in range(N):
        g = batch[n]
        count[g] += 1
        for f in range(F):
            sums[g, f] += x[n, f]
        for f in range(F):  # np.maximum vectorizes (and keeps a NaN); the builtin max did not
            maxs[g, f] = np.maximum(maxs[g, f], x[n, f])
    zero = x.dtype.type(0)
    for g in range(G):
        c = count[g]
        if c > 0:
            for f in range(F):
                out[g, f] = sums[g, f] / c
            for f in range(F):
                out[g, F + f] = maxs[g, f]
        else:  # a graph without nodes: 0 and 0, as PyG
            for f in range(2 * F):
                out[g, f] = zero


def _backward_loops(grad, x, batch, out, count, g_x):
    """``g_x[n] = grad_mean[g] / count[g] + grad_max[g] / ties[g]`` where ``x[n]`` is its
    graph's maximum (``ties``: how many nodes hold it), else only the mean's share. The maxima
    are copied out of ``out`` first: indexing ``out[g, F + f]`` in the per-node loops kept LLVM
    from vectorizing them (~5x slower)."""
    N, F = x.shape
    G = out.shape[0]
    one, zero = x.dtype.type(1), x.dtype.type(0)
    mx = np.empty((G, F), dtype=x.dtype)
    ties = np.zeros((G, F), dtype=x.dtype)
    for g in range(G):
        for f in range(F):
            mx[g, f] = out[g, F + f]
    for n in range(N):
        g = batch[n]
        for f in range(F):
            ties[g, f] += one if x[n, f] == mx[g, f] else zero
    share = np.empty((G, F), dtype=x.dtype)
    for g in range(G):  # per graph: the mean's share, and the maximum's share per tied node
        c = max(count[g], 1)
        for f in range(F):
            share[g, f] = grad[g, f] / c
        for f in range(F):
            ties[g, f] = grad[g, F + f] / max(ties[g, f], one)
    for n in range(N):
        g = batch[n]
        for f in range(F):
            g_x[n, f] = share[g, f] + (ties[g, f] if x[n, f] == mx[g, f] else zero)


_kernels: dict[str, object] = {}


def _kernel(name: str):
    if name not in _kernels:
        import numba  # imported here: only the CPU path needs it

        fn = {"forward": _forward_loops, "backward": _backward_loops}[name]
        _kernels[name] = leaf_kernel(numba.njit(cache=True, nogil=True, error_model="numpy",
                                                fastmath={"reassoc", "contract", "nsz", "arcp"})(fn))
    return _kernels[name]


def _pool_impl(x: Tensor, batch: Tensor, num_graphs: int) -> tuple[Tensor, Tensor]:
    out = torch.empty((num_graphs, 2 * x.shape[1]), dtype=x.dtype)
    count = torch.empty(num_graphs, dtype=torch.int64)
    b = batch.contiguous().numpy()
    if b.shape != (x.shape[0],):
        raise ValueError(f"kdkit::mean_max_pool: batch has shape {tuple(b.shape)} for {x.shape[0]} nodes")
    if b.size and (b.min() < 0 or b.max() >= num_graphs):  # the loops do not check bounds: fail here
        raise ValueError(f"kdkit::mean_max_pool: batch spans {b.min()}..{b.max()} but there are {num_graphs} graphs")
    _kernel("forward")(x.detach().contiguous().numpy(), b, out.numpy(), count.numpy())
    return out, count


def _pool_backward_impl(grad: Tensor, x: Tensor, batch: Tensor, out: Tensor, count: Tensor) -> Tensor:
    g_x = torch.empty_like(x)  # every row is written by the kernel
    _kernel("backward")(grad.contiguous().numpy(), x.detach().contiguous().numpy(), batch.contiguous().numpy(),
                        out.detach().numpy(), count.numpy(), g_x.numpy())
    return g_x


# As in kdkit.models.fused_attention: a custom operator for torch.compile (opaque in the compiled
# graph), an autograd.Function in eager mode (no operator dispatch, ~0.1 ms a call less).
@torch.library.custom_op("kdkit::mean_max_pool", mutates_args=())
def _pool_op(x: Tensor, batch: Tensor, num_graphs: int) -> tuple[Tensor, Tensor]:
    return _pool_impl(x, batch, num_graphs)


@_pool_op.register_fake
def _(x, batch, num_graphs):
    return x.new_empty((num_graphs, 2 * x.shape[1])), batch.new_empty((num_graphs,))


@torch.library.custom_op("kdkit::mean_max_pool_backward", mutates_args=())
def _pool_backward_op(grad: Tensor, x: Tensor, batch: Tensor, out: Tensor, count: Tensor) -> Tensor:
    return _pool_backward_impl(grad, x, batch, out, count)


@_pool_backward_op.register_fake
def _(grad, x, batch, out, count):
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    x, batch, _ = inputs
    ctx.save_for_backward(x, batch, output[0], output[1])


def _backward(ctx, grad_out, grad_count):
    x, batch, out, count = ctx.saved_tensors
    return _pool_backward_op(grad_out, x, batch, out, count), None, None


_pool_op.register_autograd(_backward, setup_context=_setup_context)


class _PoolFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, batch, num_graphs):
        out, count = _pool_impl(x, batch, num_graphs)
        ctx.save_for_backward(x, batch, out, count)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, batch, out, count = ctx.saved_tensors
        return _pool_backward_impl(grad_out, x, batch, out, count), None, None


def uses_fused_pool(x: Tensor) -> bool:
    """Whether :func:`mean_max_pool` runs the fused CPU operator for ``x`` (else PyG's functions:
    GPU, other dtypes, ``torch.export`` for ``kdkit export``, TorchScript)."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and not torch.compiler.is_exporting() and not torch.jit.is_scripting())


def mean_max_pool(x: Tensor, batch: Tensor, num_graphs: int, fused: bool = True) -> Tensor:
    """``cat([global_mean_pool(x, batch, num_graphs), global_max_pool(x, batch, num_graphs)], -1)``:
    ``[num_graphs, 2 * F]``. ``fused=False`` (a model set to ``attention: "stock"``) or inputs
    the operator does not cover take PyG's functions."""
    if fused and uses_fused_pool(x):
        if torch.compiler.is_compiling():
            return _pool_op(x, batch, num_graphs)[0]
        return _PoolFn.apply(x, batch, num_graphs)
    return torch.cat([global_mean_pool(x, batch, num_graphs), global_max_pool(x, batch, num_graphs)], dim=-1)
