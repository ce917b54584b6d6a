"""What the Fabric trainer does beyond the plain loop on the process and the optimizer, each measured.

None of it changes the model's math or its ``state_dict``; only how the work is done differs.
Measured on the 2-core EPYC CI machine, GAT student on hcrl_sa, batch 64, 1 thread
(``kdkit bench train``); see docs/PERFORMANCE.md. The model-side speed-ups are parts of the
model itself: :class:`kdkit.models.layers.GATv2Layer` (self-loops once per batch under
``torch.compile`` via :func:`kdkit.models.layers.with_self_loops`, the loaders' transform) and
:class:`kdkit.models.layers.EdgeProjection` (fast edge-projection gradients).

- :func:`tune_cpu_allocator`: glibc ``malloc`` returns every freed tensor above its mmap
  threshold to the OS and faults the pages in again on the next step; a training loop
  allocates the same sizes every step, so keeping them in the heap saved ~25 % of a student
  step. Only on CPU, only with glibc; ``KDKIT_TUNE_MALLOC=0`` turns it off.
- ``AdamW(fused=True)``: one kernel for all parameters instead of a loop over tensors; biases
  and norm parameters (fewer than 2 dimensions) are not weight-decayed (:func:`make_optimizer`).
- :func:`clip_grad_norm_cpu`: gradient clipping with one norm over all gradients, and no
  multiplication when the norm is under the limit (~0.12 ms instead of ~0.37 ms a step for the
  34 tensors of the GAT student on CPU).

"""
from __future__ import annotations

import ctypes
import logging
import os

import torch

log = logging.getLogger(__name__)


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


def make_optimizer(params, cfg, device: torch.device, lr: float | None = None,
                   grad_scaler: bool = False) -> torch.optim.Optimizer:
    """AdamW, fused (one kernel for all parameters) where torch supports it for the device.

    ``grad_scaler``: the run's precision scales the loss (``16-mixed``: a ``GradScaler``). A fused
    AdamW unscales its own gradients, so the gradients cannot be unscaled before clipping
    (Fabric raises ``NotImplementedError`` on the first step): with gradient clipping
    (``cfg.grad_clip > 0``, the default) the optimizer is then the unfused one.

    ``lr``: the peak learning rate (default ``cfg.learning_rate``; the trainer passes it scaled
    for data-parallel runs, :func:`kdkit.training.optim.scaled_learning_rate`).

    Two parameter groups (nanoGPT's rule): weight decay ``cfg.weight_decay`` for tensors with
    at least 2 dimensions (weight matrices, embeddings, attention vectors stored as
    ``[1, heads, dim]``), none for tensors with fewer (biases, norm scales and shifts), whose
    decay only pulls them towards zero without regularising anything. Parameters without
    ``requires_grad`` are left out.
    """
    params = [p for p in params if p.requires_grad]
    fused = (device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
             and not (grad_scaler and getattr(cfg, "grad_clip", 0) > 0))
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate if lr is None else lr,
                             weight_decay=cfg.weight_decay,
                             fused=fused or None)


def clip_grad_norm_cpu(parameters, max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_(parameters, max_norm)`` for CPU tensors, cheaper.

    torch takes the 2-norm of each gradient, then of those norms, then multiplies every gradient
    by ``max_norm / (norm + 1e-6)`` clamped to 1: on CPU two operator calls per tensor, ~0.35 ms a
    step for the GAT student's 34 tensors (``kdkit bench train``). Here the gradients are
    concatenated and normed once, and multiplied only when that factor is below 1 (on CPU
    reading the norm costs nothing; torch multiplies by the clamped 1.0 too). A NaN or infinite norm scales every gradient as torch
    does (NaN, or 0 with NaN where a gradient was infinite), so a broken step still shows.
    The same result within float rounding (tests/test_speedups.py). Returns the total norm.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    total = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads]))
    coef = max_norm / (float(total) + 1e-6)
    if not coef >= 1.0:  # above the limit, or NaN
        torch._foreach_mul_(grads, coef)  # what clip_grad_norm_ calls
    return total


def upgrade_optimizer_state(state: dict, optimizer: torch.optim.Optimizer, params) -> dict:
    """An optimizer state saved with one parameter group (kdkit before weight decay was split,
    see :func:`make_optimizer`) mapped onto ``optimizer``'s groups; other states come back as is.

    Args:
        state: ``optimizer.state_dict()`` from a checkpoint.
        optimizer: the optimizer :func:`make_optimizer` built for the same parameters.
        params: those parameters in the order given to :func:`make_optimizer` (the old state's
            indices count them, trainable ones only).
    """
    groups = optimizer.param_groups
    if len(state["param_groups"]) == len(groups) or len(state["param_groups"]) != 1:
        return state
    old_order = [p for p in params if p.requires_grad]
    new_index = {id(p): i for i, p in enumerate(p for g in groups for p in g["params"])}
    if len(old_order) != len(new_index) or len(state["param_groups"][0]["params"]) != len(old_order):
        raise ValueError(f"the checkpoint's optimizer state holds {len(state['param_groups'][0]['params'])} "
                         f"parameters, the model {len(new_index)}: it belongs to another model")
    old_to_new = {old: new_index[id(p)] for old, p in zip(state["param_groups"][0]["params"], old_order)}
    hyper = {k: v for k, v in state["param_groups"][0].items() if k != "params"}
    start, new_groups = 0, []
    for g in groups:
        new_groups.append({**hyper, "weight_decay": g["weight_decay"], "params": list(range(start, start + len(g["params"])))})
        start += len(g["params"])
    return {"state": {old_to_new[k]: v for k, v in state["state"].items()}, "param_groups": new_groups}


def upgrade_scheduler_state(state: dict, optimizer: torch.optim.Optimizer) -> dict:
    """A scheduler state saved for one parameter group, its per-group lists repeated for each of
    ``optimizer``'s groups (see :func:`upgrade_optimizer_state`)."""
    n = len(optimizer.param_groups)
    return {k: (v * n if isinstance(v, list) and len(v) == 1 and n > 1 else v) for k, v in state.items()}
