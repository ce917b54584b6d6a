"""``kdkit bench infer``: student inference throughput and single-window latency on one core,
per variant (eager, compiled, AOT-exported; fp32 and bf16)."""
from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kdkit.data.loader import collate_indices, gather_windows
from kdkit.deploy.export import export_model, load_exported
from kdkit.models.scorer import GATScorer, scorer_inputs
from kdkit.training.checkpoint import load_checkpoint, model_from_checkpoint
from kdkit.training.cpu_speedups import tune_cpu_allocator
from kdkit.training.hardware import machine_info
from kdkit.workflows.run import checkpoint_data


# ----------------------------------------------------------------------------- inference
def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def bench_infer(checkpoint: str | Path, dataset: str | None = None, data_root: str | None = None,
                batch_size: int = 64, seconds: float = 3.0, single: int = 2000, variants: str = "all",
                split: str = "val") -> dict:
    """Inference throughput and latency of a checkpoint on one core (see the module docstring).

    Args:
        checkpoint: a kdkit checkpoint (``best.pt``).
        dataset: windows to score (default: the checkpoint's training dataset).
        data_root: folder holding the datasets.
        batch_size: windows per batch for the throughput figure. Default 64: on the EPYC test
            machine the AOT student scored 1.47-1.61 M messages/s at 32 hcrl-sa windows, 1.51-1.65 M
            at 64, 1.32-1.52 M at 128 and 0.94-1.19 M at 256 (3 alternating runs each; smaller
            per-edge tensors stay in cache).
        seconds: measuring time per throughput figure (after one untimed pass). Default 3.
        single: single-window calls timed for p50/p99 (after 100 untimed). Default 2000.
        variants: ``all`` or a comma list of ``fp32-eager``, ``bf16-eager``, ``fp32-compiled``, ``bf16-compiled``,
            ``fp32-aot`` (GAT only: :mod:`kdkit.deploy.export`'s ahead-of-time compiled package).
        split: which split's windows to score. Default ``val``.
    """

    torch.set_num_threads(1)
    tune_cpu_allocator()  # as for training: freed activations stay in the heap for the next batch
    ckpt = load_checkpoint(checkpoint)
    window = int(ckpt.get("train_config", {}).get("window", 100))
    data = checkpoint_data(ckpt, dataset, data_root)
    gs = data.splits[split]
    kind = ckpt["model_config"]["kind"]
    n = len(gs)
    spans = [np.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]

    def score(m, batch):
        return m.anomaly_score(batch) if kind == "vgae" else m(batch)

    known = ["fp32-eager", "bf16-eager", "fp32-compiled", "bf16-compiled", "fp32-aot"]
    wanted = [v for v in known if kind == "gat" or v != "fp32-aot"] if variants == "all" else variants.split(",")
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise ValueError(f"--variants: unknown {unknown}; choose from {known}")
    results = {}
    n_params = sum(p.numel() for p in model_from_checkpoint(ckpt).parameters())
    for name in wanted:
        prec, mode = name.split("-")
        model = model_from_checkpoint(ckpt).eval()
        model.node_input.validate_inputs = False
        fast = mode in ("compiled", "aot") and kind == "gat"  # kdkit.models.scorer's scorer: no scatter max
        t_export = time.perf_counter()
        if mode == "aot":  # ahead-of-time compiled package (kdkit export), timed as warm-up

            with tempfile.TemporaryDirectory() as tmp:  # what a gateway runs: load_exported (checks included)
                package = export_model(model, collate_indices(gs, list(range(min(8, n)))), Path(tmp) / "m.pt2")
                model = load_exported(package)
        elif mode == "compiled":
            import torch._dynamo as dynamo

            dynamo.reset()
            if fast:
                compiled = torch.compile(GATScorer(model), dynamic=True)
                model = lambda batch, compiled=compiled: compiled(*scorer_inputs(batch))  # noqa: E731
            else:
                model = torch.compile(model, dynamic=True)

        def gather(idx):  # store -> batch, timed with the model
            return gather_windows(gs, idx) if kind == "gat" else collate_indices(gs, idx)

        amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if prec == "bf16" else contextlib.nullcontext
        with torch.inference_mode(), amp():
            for idx in spans[:2]:  # untimed: compilation, allocator warm-up
                score(model, gather(idx))
            score(model, gather([0]))
            t_compile = time.perf_counter() - t_export
            windows, t0, c0 = 0, time.perf_counter(), time.thread_time()
            while time.perf_counter() - t0 < seconds:
                for idx in spans:
                    score(model, gather(idx))
                    windows += len(idx)
            dt, dc = time.perf_counter() - t0, time.thread_time() - c0
            lat, lat_cpu = [], []
            for i in range(single + 100):
                t, c = time.perf_counter(), time.thread_time()
                score(model, gather([i % n]))
                if i >= 100:
                    lat.append(time.perf_counter() - t)
                    lat_cpu.append(time.thread_time() - c)
        results[name] = {"windows_per_s": round(windows / dt), "messages_per_s": round(windows / dt * window),
                         "messages_per_cpu_s": round(windows / max(dc, 1e-9) * window),
                         "latency_ms_p50": round(1000 * _percentile(lat, 50), 3),
                         "latency_ms_p99": round(1000 * _percentile(lat, 99), 3),
                         "latency_cpu_ms_p50": round(1000 * _percentile(lat_cpu, 50), 3),
                         "latency_cpu_ms_p99": round(1000 * _percentile(lat_cpu, 99), 3),
                         "warmup_seconds": round(t_compile, 2)}
    best = max(results, key=lambda k: results[k]["messages_per_s"])
    fastest_p99 = min(results, key=lambda k: results[k]["latency_ms_p99"])
    return {"benchmark": "infer", "checkpoint": str(checkpoint), "model": kind, "parameters": n_params,
            "dataset": data.name, "split": split, "windows": n, "window": window, "batch_size": batch_size,
            "nodes_per_window": round(float(gs.num_nodes.mean()), 1), "edges_per_window": round(float(gs.num_edges.mean()), 1),
            "threads": 1, "variants": results, "best_throughput": best, "best_p99": fastest_p99,
            "latency_includes": "gather of one window from the graph store + forward (no graph building from messages)",
            "cpu_figures": "per CPU second of the measuring thread (time.thread_time): what an idle core would give",
            "machine": machine_info()}
