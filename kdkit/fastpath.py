"""The training fast path: what the Fabric trainer does beyond the plain loop, each step measured.

All of it leaves the model's math and its ``state_dict`` unchanged; only how the work is done
differs. Measured on the 2-core EPYC CI machine, GAT student on hcrl_sa, batch 64, 1 thread
(``kdkit bench train``); see the README's performance table.

- :func:`tune_cpu_allocator`: glibc ``malloc`` returns every freed tensor above its mmap
  threshold to the OS and faults the pages in again on the next step; a training loop
  allocates the same sizes every step, so keeping them in the heap saved ~25 % of a student
  step. Only on CPU, only with glibc; ``KDKIT_TUNE_MALLOC=0`` turns it off.
- :func:`self_loops_outside` + :func:`with_self_loops`: GATv2's self-loops added once per batch
  (by the loader) instead of in every layer; the layers' data-dependent
  ``remove_self_loops`` would split a compiled GAT into 6 graphs, without it it compiles to one.
- :func:`fast_edge_projections`: the gradient of an edge projection ``Linear(7, heads * hidden)``
  over thousands of edges is ``grad.T @ edge_attr``, a (128 x E) x (E x 7) product for which
  MKL takes a slow path (1.35 ms; the same numbers as ``(edge_attr.T @ grad).T`` take 0.2 ms).
- ``AdamW(fused=True)``: one kernel for all parameters instead of a loop over tensors.

    from kdkit.fastpath import prepare_gat_for_compile, with_self_loops
    prepare_gat_for_compile(model)     # layers stop adding self-loops; feed it graphs that have them:
    looped = with_self_loops(batch)    # once per batch (the trainer's loaders do it)
    restore_gat(model)                 # back to the stock layers (checkpoints never differ)
"""
from __future__ import annotations

import ctypes
import logging
import os
import types

import torch
from torch import nn

log = logging.getLogger("kdkit.fastpath")

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc mallopt parameters (malloc.h)
_TUNED = False


def tune_cpu_allocator(mmap_threshold: int = 256 * 2**20, trim_threshold: int = 256 * 2**20,
                       top_pad: int = 64 * 2**20) -> bool:
    """Keep freed tensors in glibc's heap for the next step instead of unmapping them.

    Returns True when the settings were applied (glibc, not turned off by
    ``KDKIT_TUNE_MALLOC=0``). Process-wide and idempotent. The price: up to
    ``trim_threshold`` bytes of freed heap stay resident (RSS) for reuse.
    """
    global _TUNED
    if _TUNED:
        return True
    if os.environ.get("KDKIT_TUNE_MALLOC", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = all(libc.mallopt(param, value) == 1 for param, value in
                 ((M_MMAP_THRESHOLD, mmap_threshold), (M_TRIM_THRESHOLD, trim_threshold), (M_TOP_PAD, top_pad)))
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        return False
    _TUNED = ok
    if ok:
        log.info("glibc malloc tuned for training: mmap threshold %d MiB, trim threshold %d MiB",
                 mmap_threshold >> 20, trim_threshold >> 20)
    return ok


# ----------------------------------------------------------------------------- self-loops once per batch
def _gatv2_layers(model: nn.Module) -> list:
    from torch_geometric.nn import GATv2Conv

    return [m for m in model.modules() if isinstance(m, GATv2Conv)]


def with_self_loops(batch):
    """Add every GATv2 layer's self-loops to the batch once, exactly as ``GATv2Conv`` does
    inside each layer (drop existing self-loops, add one per node with the mean of its incoming
    edge features). With :func:`self_loops_outside` the model's output is unchanged."""
    from torch_geometric.utils import add_self_loops, remove_self_loops

    edge_index, edge_attr = remove_self_loops(batch.edge_index, batch.edge_attr)
    batch.edge_index, batch.edge_attr = add_self_loops(edge_index, edge_attr, fill_value="mean",
                                                       num_nodes=batch.x.size(0))
    return batch


def self_loops_outside(model: nn.Module) -> nn.Module:
    """Turn off ``add_self_loops`` in the model's GATv2 layers (feed it :func:`with_self_loops`
    batches). Only for models whose loss does not read ``edge_index`` itself (the GAT
    classifier; the VGAE reconstructs the batch's edges)."""
    for conv in _gatv2_layers(model):
        if conv.fill_value != "mean":
            raise ValueError(f"self_loops_outside: a GATv2 layer fills self-loop edge features with "
                             f"{conv.fill_value!r}, with_self_loops uses 'mean'")
        if conv.add_self_loops:
            conv.add_self_loops = False
            conv._kdkit_loops_outside = True
    return model


def restore_self_loops(model: nn.Module) -> nn.Module:
    """Undo :func:`self_loops_outside` (only on layers it changed)."""
    for conv in _gatv2_layers(model):
        if getattr(conv, "_kdkit_loops_outside", False):
            conv.add_self_loops = True
            del conv._kdkit_loops_outside
    return model


# ----------------------------------------------------------------------------- edge projections
class _SkinnyLinear(torch.autograd.Function):
    """``x @ w.T`` (no bias) whose weight gradient is computed as ``(x.T @ g).T``: the same
    numbers, a layout MKL handles fast when ``x`` has few columns. Autocast-aware."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
            x, w = x.to(dtype), weight.to(dtype)
        else:
            w = weight
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(x, w)
        with torch.autocast(x.device.type, enabled=False):
            return x @ w.t()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, w = ctx.saved_tensors
        grad = grad.to(x.dtype)
        gx = (grad @ w) if ctx.needs_input_grad[0] else None
        gw = (x.t() @ grad).t().to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return gx, gw


def _skinny_forward(self, x: torch.Tensor) -> torch.Tensor:
    return _SkinnyLinear.apply(x, self.weight)


def fast_edge_projections(model: nn.Module, max_in_features: int = 16) -> int:
    """Give the GATv2 layers' bias-free edge projections (``lin_edge``, at most
    ``max_in_features`` inputs) the fast weight-gradient layout (see the module docstring).
    Returns how many layers changed; :func:`restore_edge_projections` undoes it."""
    n = 0
    for conv in _gatv2_layers(model):
        lin = getattr(conv, "lin_edge", None)
        if lin is None or getattr(lin, "bias", None) is not None or lin.weight.dim() != 2:
            continue
        if lin.weight.size(1) > max_in_features or "forward" in vars(lin):
            continue
        lin.forward = types.MethodType(_skinny_forward, lin)
        n += 1
    return n


def restore_edge_projections(model: nn.Module) -> None:
    for conv in _gatv2_layers(model):
        lin = getattr(conv, "lin_edge", None)
        if lin is not None and getattr(vars(lin).get("forward"), "__func__", None) is _skinny_forward:
            del lin.forward


def prepare_gat_for_compile(model: nn.Module) -> nn.Module:
    """Self-loops outside and no input range check (a device sync and a graph break): the GAT
    then compiles to one graph. Feed it graphs with self-loops; :func:`restore_gat` undoes it."""
    self_loops_outside(model)
    node_input = getattr(model, "node_input", None)
    if node_input is not None and "_kdkit_validate" not in vars(node_input):
        node_input._kdkit_validate = node_input.validate_inputs
        node_input.validate_inputs = False
    return model


def restore_gat(model: nn.Module) -> nn.Module:
    """Undo :func:`prepare_gat_for_compile` (or :func:`self_loops_outside`)."""
    restore_self_loops(model)
    node_input = getattr(model, "node_input", None)
    if node_input is not None and "_kdkit_validate" in vars(node_input):
        node_input.validate_inputs = vars(node_input).pop("_kdkit_validate")
    return model


def make_optimizer(params, cfg, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, fused (one kernel for all parameters) where torch supports it for the device."""
    params = [p for p in params if p.requires_grad]
    fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=fused or None)
