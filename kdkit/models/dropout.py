"""Dropout with a cheap CPU mask: the same regularisation as ``F.dropout``, ~10x cheaper random numbers.

torch's CPU dropout draws its mask with ``bernoulli_`` from a Mersenne twister, ~15 ns a number
on one core here: ~2 ms for one ``[1900, 64]`` mask, several percent of a GAT training step on
a batch of CAN windows (``docs/PERFORMANCE.md``). Here each 64-bit word of a counter-based hash
(splitmix64 of ``seed + index``) gives four 16-bit uniforms, in a loop compiled with numba that
LLVM vectorizes (~0.1 ms for the same mask). The seed is drawn from torch's default generator, so
``torch.manual_seed`` (and Lightning's ``seed_everything``) reproduce the masks; the keep
probability is exact to 1/65,536. The masks differ from ``F.dropout``'s (other random numbers),
not their distribution.

:func:`dropout` takes this path on CPU for float32/float64 tensors and falls back to ``F.dropout``
elsewhere (GPU, other dtypes, TorchScript). Under ``torch.compile`` the mask comes from the
operator ``kdkit::dropout_mask`` (opaque to the compiler; its seed drawn inside the compiled graph):
the C++ that inductor generates for ``F.dropout``'s random numbers with dynamic shapes cost ~1.4 ms
a GAT layer on a student batch, ~10x the compiled hash (``kdkit bench train --compile on``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kdkit.data.jit import leaf_kernel

_M1, _M2, _M3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S16, _S27, _S30, _S31, _LOW16 = np.uint64(16), np.uint64(27), np.uint64(30), np.uint64(31), np.uint64(0xFFFF)


def _mask_loop(mask, threshold, scale, seed):
    """Fill the 1-D ``mask`` with ``scale`` (kept) or 0 (dropped): element ``n`` is dropped when
    bits ``16 * (n % 4)`` to ``16 * (n % 4) + 15`` of splitmix64(seed + (n // 4) * golden) fall
    below ``threshold`` (= p * 65536)."""
    n = mask.shape[0]
    zero = scale - scale
    thr, s = np.uint64(threshold), np.uint64(seed)
    for w in range(n // 4):  # four elements a word: a branch-free body that LLVM vectorizes
        z = s + np.uint64(w) * _M1
        z = (z ^ (z >> _S30)) * _M2
        z = (z ^ (z >> _S27)) * _M3
        z = z ^ (z >> _S31)
        for q in range(4):
            u = (z >> (_S16 * np.uint64(q))) & _LOW16
            mask[4 * w + q] = scale if u >= thr else zero
    for idx in range(4 * (n // 4), n):  # the last 1-3, from the next word
        z = s + np.uint64(idx // 4) * _M1
        z = (z ^ (z >> _S30)) * _M2
        z = (z ^ (z >> _S27)) * _M3
        z = z ^ (z >> _S31)
        u = (z >> (_S16 * np.uint64(idx % 4))) & _LOW16
        mask[idx] = scale if u >= thr else zero


_compiled = []


def _kernel():
    if not _compiled:
        import numba  # imported here: only the CPU path needs it

        _compiled.append(leaf_kernel(numba.njit(cache=True, nogil=True)(_mask_loop)))
    return _compiled[0]


def uses_fast_mask(x: Tensor) -> bool:
    """Whether :func:`dropout` draws its mask with the compiled hash for this tensor."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and not torch.compiler.is_exporting() and not torch.jit.is_scripting())


def _fill_mask(mask: Tensor, p: float, seed: int) -> Tensor:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability p={p} must be in [0, 1)")
    np_dtype = np.float32 if mask.dtype == torch.float32 else np.float64
    _kernel()(mask.view(-1).numpy(), round(p * 65536), np_dtype(1.0 / (1.0 - p)), seed)
    return mask


@torch.library.custom_op("kdkit::dropout_mask", mutates_args=())
def _mask_op(like: Tensor, p: float, seed: Tensor) -> Tensor:
    """The mask for ``like``'s shape and dtype from ``seed`` (a 0-d int64 tensor, so that it can
    be drawn inside a compiled graph): :func:`dropout` under ``torch.compile``."""
    return _fill_mask(torch.empty(like.shape, dtype=like.dtype), p, int(seed))


@_mask_op.register_fake
def _(like, p, seed):
    return like.new_empty(like.shape)


def dropout_mask(shape: tuple[int, ...] | torch.Size, p: float, dtype: torch.dtype = torch.float32,
                 generator: torch.Generator | None = None) -> Tensor:
    """A CPU dropout mask of ``shape``: ``1 / (1 - p)`` where kept, 0 where dropped (probability
    ``p``, rounded to a multiple of 1/65,536). The seed comes from ``generator`` (torch's default
    generator when None)."""
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    return _fill_mask(torch.empty(shape, dtype=dtype), p, seed)


def dropout(x: Tensor, p: float, training: bool = True, fast: bool = True) -> Tensor:
    """``F.dropout(x, p, training)`` with the cheap CPU mask where it applies (see the module
    docstring); ``fast=False`` is ``F.dropout`` itself."""
    if not training or p == 0.0:
        return x
    if not fast or p >= 1.0 or not uses_fast_mask(x):
        return F.dropout(x, p, training=True)
    if torch.compiler.is_compiling():  # p is checked where the mask is filled (_fill_mask)
        return x * _mask_op(x.detach(), p, torch.randint(0, 2**62, (), dtype=torch.int64))
    return x * dropout_mask(x.shape, p, x.dtype)
