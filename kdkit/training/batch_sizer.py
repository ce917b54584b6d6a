"""``DynamicBatchSizer``: the largest batch that fits a memory budget, found by probing real
training steps on replicated windows (binary search, OOM back-off, cached per machine)."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import psutil
import torch
from torch_geometric.data import Batch
from torch_geometric.loader import DynamicBatchSampler

from kdkit.data.datasets import default_cache_dir
from kdkit.data.graphs import GraphSet
from kdkit.models.layers import GATv2Layer
from kdkit.training.memory import MIB, PeakMemory, is_oom, release_memory, trim_heap
from kdkit.training.precision import choose_precision

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- probe inputs
def _num_nodes(g) -> int:
    return int(g.num_nodes)


def probe_graph(sample_input: Any, quantile: float = 0.95):
    """The graph at ``quantile`` of node count in ``sample_input`` (a ``Data``, a list of
    ``Data``, a :class:`~kdkit.graphs.GraphSet` or any indexable dataset of ``Data``)."""

    if isinstance(sample_input, GraphSet):
        if len(sample_input) == 0:
            raise ValueError("DynamicBatchSizer: the sample GraphSet holds no graphs")
        sizes = sample_input.num_nodes
        return sample_input.to_data(int(np.argsort(sizes, kind="stable")[int(quantile * (len(sizes) - 1))]))
    if hasattr(sample_input, "splits") and "train" in getattr(sample_input, "splits", {}):  # PreparedDataset
        return probe_graph(sample_input.splits["train"], quantile)
    if hasattr(sample_input, "edge_index") and hasattr(sample_input, "x"):  # one Data
        if getattr(sample_input, "num_graphs", 1) > 1 and hasattr(sample_input, "to_data_list"):
            return probe_graph(sample_input.to_data_list(), quantile)
        return sample_input
    if isinstance(sample_input, (Sequence, torch.utils.data.Dataset)) and not isinstance(sample_input, (str, bytes)):
        n = len(sample_input)
        if n == 0:
            raise ValueError("DynamicBatchSizer: sample_input is empty")
        sizes = np.array([_num_nodes(sample_input[i]) for i in range(n)])
        return sample_input[int(np.argsort(sizes, kind="stable")[int(quantile * (n - 1))])]
    raise TypeError(f"DynamicBatchSizer: sample_input must be a PyG Data, a list of Data or a GraphSet, "
                    f"got {type(sample_input).__name__}")


def replicate(graph, b: int):
    """``Batch.from_data_list([graph] * b)`` without b Python objects (probes reach 10^4 graphs)."""

    n, e = int(graph.num_nodes), int(graph.edge_index.size(1))
    out = Batch()
    for key, value in graph:
        if key == "edge_index":
            out.edge_index = value.repeat(1, b) + (torch.arange(b) * n).repeat_interleave(e)
        elif torch.is_tensor(value) and value.dim() > 0:
            out[key] = value.repeat(b, *([1] * (value.dim() - 1)))
    out.batch = torch.arange(b).repeat_interleave(n)
    out.ptr = torch.arange(b + 1) * n
    out._num_graphs = b
    return out


def default_loss(model: torch.nn.Module, batch) -> torch.Tensor:
    """The training loss a probe backpropagates: the VGAE's own loss, else cross-entropy."""
    if hasattr(model, "loss"):
        return model.loss(batch)["loss"]
    return torch.nn.functional.cross_entropy(model(batch).float(), batch.y)


def autocast_for(precision: str, device: torch.device):
    """The autocast context Fabric's mixed precision uses for ``precision`` on ``device``."""
    if precision in ("bf16-mixed", "bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision in ("16-mixed", "16"):  # Fabric turns 16-mixed into bf16-mixed on CPU
        return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- the result and its cache
@dataclass(frozen=True)
class BatchSizeResult:
    """What the sizer found. ``node_budget`` == PyG ``DynamicBatchSampler(max_num=..., mode="node")``."""

    batch_size: int            # graphs per batch, after the safety margin
    node_budget: int           # batch_size x nodes of the probe graph
    largest_fit: int           # largest probed batch size that fitted (before the margin)
    nodes_per_graph: int       # probe graph: nodes (95th percentile of node count)
    edges_per_graph: int       # probe graph: edges
    peak_bytes: int            # measured peak at largest_fit
    budget_bytes: int          # target_memory_usage x device memory (CPU: x available RAM)
    device: str
    precision: str
    target_memory_usage: float
    min_batch_size: int
    max_batch_size: int
    probes: list = field(default_factory=list)  # [batch size, peak bytes or None (out of memory)]
    seconds: float = 0.0
    measured_by: str = ""
    cached: bool = False

    @property
    def max_num(self) -> int:
        """``max_num`` for ``torch_geometric.loader.DynamicBatchSampler(mode="node")``."""
        return self.node_budget

    def pyg_batch_sampler(self, dataset, shuffle: bool = True):
        """A PyG ``DynamicBatchSampler`` over ``dataset`` (a list of ``Data``) with this node budget."""

        return DynamicBatchSampler(dataset, max_num=self.node_budget, mode="node", shuffle=shuffle)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_MEMORY_CACHE: dict[str, dict] = {}


def cache_path() -> Path:

    return default_cache_dir() / "batch_sizes.json"


def _read_disk_cache() -> dict:
    path = cache_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as err:
        log.warning("ignoring unreadable batch-size cache %s (%s)", path, err)
        return {}
    return data if isinstance(data, dict) else {}


def _write_disk_cache(key: str, value: dict) -> None:
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _read_disk_cache()
    data[key] = value
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{torch.cuda.get_device_name(idx)}"
    return "cpu"


# ----------------------------------------------------------------------------- the sizer
class DynamicBatchSizer:
    """The largest batch of graphs whose training step fits in a share of device memory.

    Args:
        model: the model to train (a copy is probed; the model itself is not changed).
        sample_input: a PyG ``Data``, a list of ``Data`` or a ``GraphSet``: the probe batch
            replicates its graph at the 95th percentile of node count.
        target_memory_usage: share of device memory (CPU: of available RAM) a step may use
            at its peak. Default 0.85.
        min_batch_size: smallest size returned; also returned when even it does not fit
            (with a warning). Default 1.
        max_batch_size: largest size probed. Default 1024.
        precision: ``32-true``, ``bf16-mixed`` or ``16-mixed`` (default: the trainer's policy
            :func:`kdkit.training.precision.choose_precision` for ``device``).
        device: ``cpu`` or ``cuda[:i]`` (default: CUDA when available). No CUDA is not an error.
        safety_margin: share taken off the largest fitting size. Default 0.05.
        loss_fn: ``f(model, batch) -> loss`` (default :func:`default_loss`).
        use_cache: read and write the in-memory and on-disk cache. Default True.
        memory_bytes: override the device memory the target applies to (tests, shared GPUs).
    """

    probes_run = 0  # class-wide count of probe steps (tests assert a cache hit probes nothing)

    def __init__(self, model: torch.nn.Module, sample_input: Any, target_memory_usage: float = 0.85,
                 min_batch_size: int = 1, max_batch_size: int = 1024, precision: str | None = None,
                 device: str | torch.device | None = None, safety_margin: float = 0.05,
                 loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None, use_cache: bool = True,
                 memory_bytes: int | None = None):
        if not 0.0 < target_memory_usage <= 1.0:
            raise ValueError(f"target_memory_usage must be in (0, 1], got {target_memory_usage}")
        if not 1 <= min_batch_size <= max_batch_size:
            raise ValueError(f"need 1 <= min_batch_size <= max_batch_size, got {min_batch_size}, {max_batch_size}")
        if not 0.0 <= safety_margin < 1.0:
            raise ValueError(f"safety_margin must be in [0, 1), got {safety_margin}")

        self.model, self.target = model, float(target_memory_usage)
        self.min_batch_size, self.max_batch_size = int(min_batch_size), int(max_batch_size)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("DynamicBatchSizer: device='cuda' but torch sees no CUDA device; use device='cpu'")
        self.precision = choose_precision(precision or "auto", self.device.type)
        self.safety_margin, self.loss_fn, self.use_cache = safety_margin, loss_fn or default_loss, use_cache
        self.graph = probe_graph(sample_input)
        self.memory_bytes = memory_bytes
        self.result: BatchSizeResult | None = None

    # -- the cache key: everything the answer depends on
    def cache_key(self) -> str:
        cfg = getattr(self.model, "config", None) or {"class": type(self.model).__name__,
                                                      "parameters": sum(p.numel() for p in self.model.parameters())}
        # the attention kernel (the run's `attention`): PyG's path peaks ~2.5x higher than the fused one on CPU
        kernels = sorted({m.attention for m in self.model.modules() if isinstance(m, GATv2Layer)})
        payload = {"model": cfg, "attention": kernels, "device": device_name(self.device), "precision": self.precision,
                   "target": self.target,
                   "min": self.min_batch_size, "max": self.max_batch_size, "margin": self.safety_margin,
                   "graph": [int(self.graph.num_nodes), int(self.graph.edge_index.size(1))],
                   "memory_bytes": self.memory_bytes}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]

    def _budget(self) -> int:
        if self.memory_bytes is not None:
            total = self.memory_bytes
        elif self.device.type == "cuda":
            total = torch.cuda.get_device_properties(self.device).total_memory
        else:

            total = psutil.virtual_memory().available
        return int(self.target * total)

    def _batch(self, b: int):
        return replicate(self.graph, b).to(self.device)

    def probe(self, b: int) -> int | None:
        """Peak bytes of one training step at batch size ``b``, or None when it ran out of memory."""

        DynamicBatchSizer.probes_run += 1
        oom = False
        trim_heap(collect=False)  # a step's tensors die by reference count; no gc.collect per probe
        meter = PeakMemory(self.device)
        try:
            with meter:
                batch = self._batch(b)
                model = self._probe_model
                with autocast_for(self.precision, self.device):
                    loss = self.loss_fn(model, batch)
                loss.backward()
                self._probe_opt.step()
                self._probe_opt.zero_grad(set_to_none=True)
                del loss, batch
        except (RuntimeError, MemoryError) as err:
            if not is_oom(err):
                raise
            oom = True  # handled outside the except block, so the failed step's tensors are freed
        self._probe_opt.zero_grad(set_to_none=True)
        self._measured_by = meter.how
        if oom:
            release_memory()
            return None
        return meter.peak_bytes

    def estimate_optimal_batch_size(self) -> int:
        """Probe (or read the cache) and return the batch size; details in ``self.result``."""
        key = self.cache_key()
        if self.use_cache:
            hit = _MEMORY_CACHE.get(key) or _read_disk_cache().get(key)
            if hit is not None:
                _MEMORY_CACHE[key] = hit
                self.result = BatchSizeResult(**{**hit, "cached": True})
                return self.result.batch_size
        self.result = self._search()
        if self.use_cache:
            value = {k: v for k, v in self.result.to_dict().items() if k != "cached"}
            _MEMORY_CACHE[key] = value
            try:
                _write_disk_cache(key, value)
            except OSError as err:
                log.warning("could not write the batch-size cache %s (%s)", cache_path(), err)
        return self.result.batch_size

    def _search(self) -> BatchSizeResult:
        t0 = time.perf_counter()
        budget = self._budget()
        self._probe_model = copy.deepcopy(self.model).to(self.device).train()
        self._probe_opt = torch.optim.AdamW([p for p in self._probe_model.parameters() if p.requires_grad], lr=1e-9)
        probes: list[list] = []

        def fits(b: int) -> bool:
            peak = self.probe(b)
            probes.append([b, peak])
            log.info("batch-size probe %d: %s (budget %.0f MiB)", b,
                     "out of memory" if peak is None else f"peak {peak / MIB:.1f} MiB", budget / MIB)
            return peak is not None and peak <= budget

        try:
            self.probe(self.min_batch_size)  # warm-up: lazy allocations of the first step are not a batch's cost
            lo, hi = 0, None  # lo fits (0 = nothing yet), hi does not fit
            b = self.min_batch_size
            while True:  # exponential growth
                if fits(b):
                    lo = b
                    if b >= self.max_batch_size:
                        break
                    b = min(b * 2, self.max_batch_size)
                else:
                    hi = b
                    break
            if hi is not None and lo > 0:  # bisect to ~2 % of lo
                while hi - lo > max(1, int(0.02 * lo)):
                    mid = (lo + hi) // 2
                    if fits(mid):
                        lo = mid
                    else:
                        hi = mid
        finally:
            del self._probe_model, self._probe_opt
            release_memory()  # collects garbage once
            trim_heap(collect=False)
        if lo == 0:
            log.warning("even batch size %d does not fit in %.0f MiB (%.0f %% of %s memory); using it anyway",
                        self.min_batch_size, budget / MIB, 100 * self.target, self.device.type)
            chosen, largest = self.min_batch_size, self.min_batch_size
        else:
            largest = lo
            # the margin guards against memory; when max_batch_size bounded the search, it is the answer
            margin = self.safety_margin if hi is not None else 0.0
            chosen = max(self.min_batch_size, min(self.max_batch_size, int(lo * (1 - margin)) or 1))
        peak = next((p for bb, p in reversed(probes) if bb == largest and p is not None), 0)
        n_nodes, n_edges = int(self.graph.num_nodes), int(self.graph.edge_index.size(1))
        return BatchSizeResult(batch_size=chosen, node_budget=chosen * n_nodes, largest_fit=largest,
                               nodes_per_graph=n_nodes, edges_per_graph=n_edges, peak_bytes=int(peak or 0),
                               budget_bytes=budget, device=device_name(self.device), precision=self.precision,
                               target_memory_usage=self.target, min_batch_size=self.min_batch_size,
                               max_batch_size=self.max_batch_size, probes=probes,
                               seconds=round(time.perf_counter() - t0, 3), measured_by=self._how())

    def _how(self) -> str:
        if getattr(self, "_measured_by", None):  # what the last probe's PeakMemory used
            return self._measured_by
        return ("torch.cuda.max_memory_allocated after reset_peak_memory_stats" if self.device.type == "cuda"
                else "peak RSS growth (kdkit.training.memory.PeakMemory)")
