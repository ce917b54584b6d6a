"""The precision policy: one function decides fp32 / bf16-mixed / 16-mixed from the hardware.

    from kdkit.precision import choose_precision
    choose_precision("auto", "cpu")   # "32-true", or "bf16-mixed" where bf16 is native and measured faster

An explicit request always wins (16-mixed on a CPU runs as bf16-mixed, as Fabric would, and says
so). The CPU verdict (is a GATv2 training step faster under bf16 autocast?) is measured once per CPU model and torch version and stored in
``<cache dir>/precision_policy.json``, so a ratio near the threshold cannot flip between runs.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

import torch

from kdkit.data.datasets import default_cache_dir
from kdkit.models.layers import GATv2Layer
from kdkit.training.hardware import machine_info

log = logging.getLogger(__name__)


# bf16 matmuls on CPU go through oneDNN, which caches a kernel per input shape in two caches of
# 1024 entries; graph batches change shape every step, so under bf16-mixed the RSS grew ~6 MB
# per step for the first thousand steps (GAT teacher, hcrl-sa: +400 MB after 40 steps). With 16
# entries it levels off at once and a step is as fast (measured: 8.2-8.4 s vs 8.1-8.3 s for 40
# steps; 1 entry costs 15-25 %). Read when oneDNN first runs, so set here; the user's value wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")


os.environ.setdefault("LRU_CACHE_CAPACITY", "16")


_BF16_CPU_SPEEDUP: float | None = None


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("amx_bf16", "avx512_bf16"))


def measure_cpu_bf16_speedup() -> float:
    """fp32 / bf16-autocast CPU time of one GATv2 training step at the teacher's width (cached).

    A GATv2 layer rather than a bare matmul: its attention gains little from bf16 and autocast
    adds casts, so a matmul alone overstates the gain. kdkit's own :class:`GATv2Layer` as training
    runs it (the fused attention kernel on CPU, which computes in fp32 under autocast): measured
    on PyG's path instead, one run here said bf16 1.27x where the fused teacher step gains nothing
    (217 -> 220 ms; this layer: 1.01x). CPU
    time (not wall time), one thread, and the best of interleaved repeats keep the verdict
    stable on a busy machine. The verdict is stored per CPU model and torch version in
    ``<cache dir>/precision_policy.json`` (default ``runs/cache``): a ratio near the threshold
    must not flip the precision from one run to the next. Measured with the real models
    (``kdkit bench train``, AMD EPYC with avx512_bf16, one thread): the GAT teacher trains
    1.4-1.5x faster per CPU second in bf16, the student 1.1-1.5x.
    """
    global _BF16_CPU_SPEEDUP
    if _BF16_CPU_SPEEDUP is None:
        _BF16_CPU_SPEEDUP = _stored_bf16_speedup()
    if _BF16_CPU_SPEEDUP is not None:
        return _BF16_CPU_SPEEDUP
    # one process measures, the others wait and read its verdict: the ranks of a DDP run decide at once,
    # and measured side by side on shared cores they landed on both sides of 1.2 (one rank bf16, one fp32)
    with _verdict_lock():
        _BF16_CPU_SPEEDUP = _stored_bf16_speedup()
        if _BF16_CPU_SPEEDUP is None:
            _BF16_CPU_SPEEDUP = _measure_bf16_speedup()
            _store_bf16_speedup(_BF16_CPU_SPEEDUP)
    return _BF16_CPU_SPEEDUP


@contextlib.contextmanager
def _verdict_lock():
    """An exclusive lock beside the verdict file (none when the cache folder cannot be written)."""
    path, _ = _precision_store()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_name(path.name + ".lock"), "a")
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _measure_bf16_speedup() -> float:
    """The measurement of :func:`measure_cpu_bf16_speedup`: fp32 / bf16 CPU seconds of the step."""
    gen = torch.Generator().manual_seed(0)
    n, e = 1000, 1600  # half a batch of 64 hcrl-sa windows
    x, edge_attr = torch.randn(n, 64, generator=gen), torch.randn(e, 7, generator=gen)
    edge_index = torch.randint(0, n, (2, e), generator=gen)
    conv = GATv2Layer(64, 64, heads=8, edge_dim=7)  # attention "auto": the fused kernel on CPU

    def step(bf16: bool) -> float:
        t = time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = conv(x, edge_index, edge_attr)
        out.float().sum().backward()
        return time.process_time() - t

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        step(False), step(True)  # warm-up
        fp32, bf16 = zip(*[(step(False), step(True)) for _ in range(8)])  # interleaved: same interference
    finally:
        torch.set_num_threads(threads)
    return min(fp32) / max(min(bf16), 1e-9)


def _precision_store() -> tuple[Path, str]:

    # "fused attention": verdicts measured on PyG's attention (older kdkit) do not apply
    return (default_cache_dir() / "precision_policy.json",
            f"{machine_info()['cpu']} | torch {torch.__version__} | fused attention")


def _stored_bf16_speedup() -> float | None:
    path, key = _precision_store()
    try:
        return float(json.loads(path.read_text())[key])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _store_bf16_speedup(value: float) -> None:
    path, key = _precision_store()
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
        data[key] = round(value, 3)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)
    except (OSError, ValueError) as err:
        log.warning("could not store the bf16 verdict in %s (%s)", path, err)


def cuda_rule(accelerator: str) -> str | None:
    """CUDA compute capability >= 8 (A100, H100, H200) -> ``bf16-mixed``; 7.x (V100, T4: fp16
    tensor cores, bf16 only emulated) -> ``16-mixed``; older -> ``32-true`` (no fast fp16)."""
    if accelerator not in ("cuda", "gpu") or not torch.cuda.is_available():
        return None
    major, _ = torch.cuda.get_device_capability()
    return "bf16-mixed" if major >= 8 else "16-mixed" if major == 7 else "32-true"


def cpu_rule(accelerator: str) -> str | None:
    """CPU -> ``bf16-mixed`` only when bf16 is native (AMX / avx512_bf16) and a GATv2 training
    step is measured at least 1.2x faster in bf16 (cached per machine); else ``32-true``."""
    if accelerator in ("cuda", "gpu") and torch.cuda.is_available():
        return None
    return "bf16-mixed" if cpu_has_native_bf16() and measure_cpu_bf16_speedup() >= 1.2 else "32-true"


# The precision policy: asked in order, the first rule that answers (not None) decides. A rule
# takes the resolved accelerator ("cpu", "cuda", ...) and returns a Fabric precision string.
PRECISION_RULES: list[Callable[[str], str | None]] = [cuda_rule, cpu_rule]


def choose_precision(requested: str = "auto", accelerator: str = "cpu") -> str:
    """The precision policy: one place decides from the hardware, the user may override.

    ``"auto"`` asks :data:`PRECISION_RULES` in order (:func:`cuda_rule`, then
    :func:`cpu_rule`); ``32-true`` if none answers. An explicit request wins (``16`` and
    ``bf16`` are normalised).
    """
    aliases = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed"}
    if requested != "auto":
        chosen = aliases.get(requested, requested)
        if chosen == "16-mixed" and accelerator == "cpu":  # what Fabric would run: the run records what it ran
            log.warning("precision %s: fp16 autocast does not run on a CPU; the run uses bf16-mixed instead (as "
                        "Lightning Fabric would) and records it", requested)
            return "bf16-mixed"
        return chosen
    for rule in PRECISION_RULES:
        chosen = rule(accelerator)
        if chosen is not None:
            return chosen
    return "32-true"


def resolve_accelerator(requested: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a CUDA device is there, else ``cpu``; ``gpu`` -> ``cuda``.

    Raises:
        ValueError: ``cuda``/``gpu`` asked for where torch sees no CUDA device (Lightning's own
            error names its accelerator class, not the setting).
    """
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested in ("cuda", "gpu") and not torch.cuda.is_available():
        raise ValueError(f"accelerator {requested!r}: torch sees no CUDA device on this machine "
                         f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use 'auto' or 'cpu'")
    return "cuda" if requested == "gpu" else requested
