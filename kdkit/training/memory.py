"""Peak memory (CUDA allocated, CPU RSS, glibc allocator bytes in use), per-phase peaks of a
run, and out-of-memory detection and release."""
from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import resource
import threading
import time
from typing import Any, Iterator

import psutil
import torch

log = logging.getLogger(__name__)


MIB = 2**20


# ----------------------------------------------------------------------------- peak memory
def rss_bytes() -> int:
    """Resident set size of this process now (bytes), from /proc when there is one."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return psutil.Process().memory_info().rss


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo2():
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2  # glibc >= 2.33
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    return fn


_MALLINFO2 = _mallinfo2()


def allocated_bytes() -> int | None:
    """Bytes the C allocator has handed out and not had back (glibc ``mallinfo2``: heap in use
    plus mmapped blocks): the CPU tensors' memory, like CUDA's ``memory_allocated``; RSS also
    counts freed heap glibc keeps. None where there is no ``mallinfo2``."""
    if _MALLINFO2 is None:
        return None
    info = _MALLINFO2()
    return int(info.uordblks + info.hblkhd)


def _ru_maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _hwm_bytes() -> int | None:
    """The kernel's peak RSS of this process (``VmHWM``) since start or the last reset."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


# CPU blocks whose peak is the kernel's VmHWM. Each reset of the process-wide mark first folds the
# mark so far into every open block, so nested blocks (a batch-size probe inside a phase) stay exact.
_HWM_LOCK = threading.Lock()
_HWM_OPEN: list[PeakMemory] = []


def trim_heap(collect: bool = True) -> None:
    """Give freed heap back to the OS (glibc ``malloc_trim``), so RSS growth measured next is
    not hidden by memory an earlier step left in the allocator; first collect garbage cycles
    when ``collect`` (that takes most of a second in a process with torch and PyG loaded)."""
    if collect:
        gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS may then under-read a smaller probe
        pass


class PeakMemory:
    """Peak memory of this process inside a ``with`` block.

    On CPU the peak RSS is the kernel's own high-water mark (``VmHWM``, reset at the start of
    the block), so a peak shorter than any sampling interval still counts; where that reset is
    not available (not Linux) a thread samples RSS every ``interval`` seconds, and getrusage's
    lifetime ``ru_maxrss`` is used when it rose inside the block. The reset is process-wide:
    after a block, ``VmHWM`` and ``ru_maxrss`` no longer hold the process's lifetime peak.

    Args:
        device: ``"cpu"`` or a CUDA device; CUDA measures allocator bytes, CPU measures RSS.
        interval: seconds between RSS (and allocator) samples on CPU (default 0.001).

    After the block: ``peak_bytes`` (CUDA: peak allocated; CPU: peak RSS growth over the
    start), ``start_bytes`` and ``how`` (a one-line description of the method). On CPU with
    glibc also ``alloc_peak_bytes``: the peak growth of the allocator's bytes in use
    (:func:`allocated_bytes`, sampled with RSS), the CPU counterpart of CUDA's peak allocated.
    """

    def __init__(self, device: str | torch.device = "cpu", interval: float = 0.001):
        self.device = torch.device(device)
        self.interval = interval
        self.peak_bytes = 0
        self.start_bytes = 0
        self.how = ""
        self._stop = threading.Event()
        self._max = 0
        self.alloc_peak_bytes: int | None = None
        self.alloc_start_bytes = self._alloc_max = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            rss = rss_bytes()
            if rss > self._max:
                self._max = rss
            if self._alloc_max is not None:
                self._alloc_max = max(self._alloc_max, allocated_bytes())

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
            self.how = "torch.cuda.max_memory_allocated after reset_peak_memory_stats"
            return self
        with _HWM_LOCK:
            hwm = _hwm_bytes()
            for block in _HWM_OPEN:
                block._max = max(block._max, hwm)
            self._hwm = hwm is not None and _reset_hwm()
            if self._hwm:
                _HWM_OPEN.append(self)
        self.start_bytes = self._max = rss_bytes()
        self.alloc_start_bytes = self._alloc_max = allocated_bytes()
        self._ru_start = _ru_maxrss_bytes()
        self.how = ("peak RSS growth: the kernel's VmHWM, reset at the start" if self._hwm else
                    f"peak RSS growth: {self.interval * 1e3:g} ms RSS samples, or getrusage ru_maxrss when it rose")
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
            return
        self._stop.set()
        self._thread.join()
        peak = max(self._max, rss_bytes())
        if self._hwm:  # exact: no sample can miss a short peak
            with _HWM_LOCK:
                peak = max(peak, _hwm_bytes() or 0)
                _HWM_OPEN.remove(self)
        ru = _ru_maxrss_bytes()
        if ru > self._ru_start:  # a new lifetime peak was reached inside the block: exact
            peak = max(peak, ru)
        self.peak_bytes = max(peak - self.start_bytes, 0)
        if self.alloc_start_bytes is not None:
            self._alloc_max = max(self._alloc_max, allocated_bytes())
            self.alloc_peak_bytes = max(self._alloc_max - self.alloc_start_bytes, 0)


@contextlib.contextmanager
def phase_peak(name: str, record: dict | None = None, device: str | torch.device | None = None,
               release: bool = True) -> Iterator[dict]:
    """Record the peak memory and duration of one phase (train, evaluate, ...) and log it.

    Args:
        name: the phase name, the key in ``record``.
        record: a dict (e.g. the run summary's ``memory`` entry) that receives ``{name: {...}}``:
            ``seconds``, ``rss_start_mib``, ``rss_growth_peak_mib``, ``rss_peak_mib``, on CUDA
            ``cuda_peak_mib``, and ``peak_mib`` (the CUDA peak on CUDA, else the RSS peak). The
            yielded dict receives the same keys when the phase ends.
        device: where the phase runs (default: CUDA when available, else CPU). RSS is always
            measured; the CUDA peak too when the device is CUDA.
        release: free garbage and cached allocator memory when the phase ends (default True).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    with PeakMemory("cpu", interval=0.01) as rss:
        cuda = PeakMemory(device) if device.type == "cuda" else contextlib.nullcontext()
        with cuda:
            yield out
    out.update({"seconds": round(time.perf_counter() - t0, 3), "rss_start_mib": round(rss.start_bytes / MIB, 1),
                "rss_growth_peak_mib": round(rss.peak_bytes / MIB, 1),
                "rss_peak_mib": round((rss.start_bytes + rss.peak_bytes) / MIB, 1)})
    if device.type == "cuda":
        out["cuda_peak_mib"] = round(cuda.peak_bytes / MIB, 1)
    out["peak_mib"] = out.get("cuda_peak_mib", out["rss_peak_mib"])  # the device's figure
    if release:
        release_memory()  # collects garbage once; the trim below need not collect again
        trim_heap(collect=False)
    if record is not None:
        record[name] = out
    log.info("phase %s: %.1f s, RSS %.0f MiB at start, peak growth %.0f MiB%s", name, out["seconds"],
             out["rss_start_mib"], out["rss_growth_peak_mib"],
             f", CUDA peak {out['cuda_peak_mib']:.0f} MiB" if "cuda_peak_mib" in out else "")


@contextlib.contextmanager
def collections_skip_older_objects() -> Iterator[None]:
    """Inside the block, garbage collections skip every object that existed when it began.

    A long-lived process (a notebook kernel, a test run) holds the ~430,000 objects that torch,
    PyG and Fabric leave, and each full collection walked them all, ~0.2 s, at every phase end of
    a run (:func:`phase_peak`). What a run makes and drops is made inside the block, so it is still
    collected. The older objects are frozen (``gc.freeze``) and unfrozen when the block ends, unless
    the process had frozen objects before it (the ``kdkit`` command freezes its imports: unfreezing
    would undo that, so there they stay frozen). Blocks nest.
    """
    frozen_before = gc.get_freeze_count() > 0
    gc.freeze()
    try:
        yield
    finally:
        if not frozen_before:
            gc.unfreeze()


def is_oom(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, Python's MemoryError, or the CPU allocator's RuntimeError."""
    if isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(err).lower()
    return "out of memory" in text or "can't allocate memory" in text  # DefaultCPUAllocator's wording


def release_memory() -> None:
    """Free cached allocator memory between phases (teacher -> student, train -> evaluate)."""

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
