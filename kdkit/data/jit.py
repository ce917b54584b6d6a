"""kdkit's numba kernels, with the LLVM IR numba keeps for linking them into other compiled code freed.

Every compiled loop of kdkit (the fused attention, the layer tail, the readout, the dropout masks,
the batch gather, the graph builders, the candump scanner, the native GAT) is called from Python
only: no compiled function calls another. numba keeps, beside each loaded kernel's machine code,
an LLVM module of its IR (``CPUCodeLibrary._shared_module``), parsed from the disk cache or
cloned when it was compiled, so that other compiled code could link it in. Nothing ever does here,
and these modules were most of the memory the kernels took: measured with glibc's allocated bytes
around the first call of each of the 9 kernels of a GAT student's training step (2026-12-07,
hcrl_sa, numba 0.68), 5.7 MiB in all, of which freeing the modules gave back 4.0 MiB, the same in
the detector's process and in a SLURM job. :func:`leaf_kernel` wraps a dispatcher so that the
modules of its specialisations are freed once they are loaded (on the call that loaded them).

Only for kernels that no compiled code calls: numba would need the module to link such a call
(it raises "library unfit for linking" without it).
"""
from __future__ import annotations

from typing import Any


class LeafKernel:
    """A numba dispatcher called from Python only; calls pass straight through, and after a call
    that loaded a new specialisation its linking IR is freed (:func:`release_linking_ir`)."""

    __slots__ = ("dispatcher", "_released")

    def __init__(self, dispatcher: Any) -> None:
        self.dispatcher = dispatcher
        self._released = 0  # specialisations whose IR was freed
        if len(dispatcher.overloads):  # compiled for an explicit signature when it was made
            self._release()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.dispatcher(*args, **kwargs)
        if len(self.dispatcher.overloads) != self._released:
            self._release()
        return out

    def _release(self) -> None:
        release_linking_ir(self.dispatcher)
        self._released = len(self.dispatcher.overloads)

    def __getattr__(self, name: str) -> Any:  # py_func, overloads, signatures, ... of the dispatcher
        if name.startswith("__") or name in LeafKernel.__slots__:  # copy/pickle probing an instance without them
            raise AttributeError(name)
        return getattr(self.dispatcher, name)

    def __reduce__(self):  # pickled as its dispatcher (numba pickles a dispatcher by its function)
        return LeafKernel, (self.dispatcher,)


def release_linking_ir(dispatcher: Any) -> int:
    """Free the LLVM modules numba keeps to link ``dispatcher``'s specialisations into other
    compiled code; returns how many were freed. Their machine code stays loaded and callable. A
    numba without that attribute (another version's layout) is left as it is."""
    freed = 0
    for result in list(getattr(dispatcher, "overloads", {}).values()):
        library = getattr(result, "library", None)
        if getattr(library, "_shared_module", None) is not None:
            library._shared_module = None
            freed += 1
    return freed


def leaf_kernel(dispatcher: Any) -> LeafKernel:
    """``numba.njit(...)(fn)`` as a :class:`LeafKernel` (see the module docstring)."""
    return LeafKernel(dispatcher)
