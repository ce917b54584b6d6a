"""``kdkit bench train``: the legacy loop against the Fabric trainer on the same batches
(graphs/s, CPU seconds, peak memory), each variant in a fresh process, interleaved."""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch

from kdkit.config import make_config
from kdkit.training.hardware import machine_info
from kdkit.training.legacy import legacy_loader, legacy_step
from kdkit.training.memory import PeakMemory, trim_heap
from kdkit.training.optim import make_scheduler
from kdkit.training.task import Task
from kdkit.training.trainer import FabricTrainer, resolve_accelerator
from kdkit.workflows.run import build_student_or_teacher, class_weights, load_data, vgae_train_sets

MIB = 2**20


# ----------------------------------------------------------------------------- one measured run
def _setup(opts: dict):
    """Data, config and a Task with seeded initial weights: the part both variants share."""

    overrides = {"model": opts["model"], "type": opts["type"], "dataset": opts["dataset"],
                 "batch_size": opts["batch_size"], "accelerator": opts.get("accelerator", "auto"), "seed": 0,
                 "precision": opts.get("precision", "auto"), "epochs": 1000}
    if opts.get("data_root"):
        overrides["data_root"] = opts["data_root"]
    cfg = make_config(**overrides)
    _import_trainer_libraries(compile_model=bool(opts.get("compile_imports")))
    data = load_data(cfg)
    train_set = data.splits["train"] if cfg.model == "gat" else vgae_train_sets(data)[0]
    model = build_student_or_teacher(cfg, data)  # seeded with cfg.seed: same weights in every run
    task = Task(model, cfg, None, class_weights(train_set) if cfg.model == "gat" and cfg.class_weighting else None)
    return cfg, train_set, task


def _import_trainer_libraries(compile_model: bool = False) -> None:
    """Import what either trainer imports before the memory baseline is taken, so module code
    (Lightning, its loggers; ~40 MiB of torch.compile machinery when compiling) is not counted
    as training memory: it does not grow with the batch."""
    import importlib

    names = ["lightning.fabric", "lightning.fabric.loggers", "tensorboard", "torch_geometric.loader"]
    if compile_model:
        names += ["torch._dynamo", "torch._inductor.compile_fx"]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def _cycle(loader):
    """Endless batches: a new epoch (reshuffled) whenever the loader is exhausted."""
    epoch = 0
    while True:
        sampler = getattr(loader, "batch_sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _legacy_steps(cfg, train_set, task, device):
    """kdkit.legacy's loop body: PyG DataLoader over a list of Data, fp32, plain autograd."""

    task.to(device)
    loader = legacy_loader(train_set, cfg.batch_size, True, cfg.seed)
    optimizer = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=cfg.learning_rate,
                                  weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg, 10**6)
    task.train()
    batches = _cycle(loader)

    def step() -> int:
        batch = next(batches).to(device)
        legacy_step(task, optimizer, scheduler, batch, cfg.grad_clip)
        return batch.num_graphs

    return step, "32-true"


def _fabric_steps(cfg, train_set, task, compile_model: bool, run_dir: str):
    """FabricTrainer's step on fast batches, set up by ``FabricTrainer.prepare`` as ``fit`` does
    (fast path, compile, fused AdamW)."""

    cfg = dataclasses.replace(cfg, compile=compile_model)
    trainer = FabricTrainer(cfg, run_dir, progress=False)
    fabric = trainer.fabric
    fabric.launch()
    on_cuda = fabric.device.type == "cuda"
    loader, _val, task_m, optimizer = trainer.prepare(task, train_set, None)
    scheduler = make_scheduler(optimizer, cfg, 10**6)
    trainer._epoch = 0
    task_m.train()
    batches = _cycle(loader)

    def step() -> int:
        batch = next(batches)
        if on_cuda:
            batch = batch.to(fabric.device, non_blocking=True)
        trainer._run_batch(task, task_m, optimizer, scheduler, train_set, batch)
        return batch.num_graphs

    return step, trainer.precision


def run_variant(opts: dict) -> dict:
    """One variant (``opts["variant"]`` = legacy | fabric), measured in this process."""

    if opts.get("threads"):
        torch.set_num_threads(int(opts["threads"]))
    cfg, train_set, task = _setup(opts)

    device = torch.device(resolve_accelerator(cfg.accelerator))
    trim_heap()
    with tempfile.TemporaryDirectory() as tmp:
        with PeakMemory(device if device.type == "cuda" else "cpu") as setup_mem:  # not timed; memory counted
            if opts["variant"] == "legacy":
                step, precision = _legacy_steps(cfg, train_set, task, device)
            else:
                step, precision = _fabric_steps(cfg, train_set, task, bool(opts.get("compile")), tmp)
            t_burn = time.perf_counter()
            for _ in range(opts["burn_in"]):
                step()
            burn_seconds = time.perf_counter() - t_burn
        graphs, times, cpu = 0, [], []
        for _ in range(opts["steps"]):  # timed without the memory sampler (its thread would compete)
            t, c = time.perf_counter(), time.process_time()
            graphs += step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        # then more steps with the memory sampled every 0.2 ms (not timed: the sampler competes)
        with PeakMemory(device if device.type == "cuda" else "cpu", interval=0.0002) as mem:
            for _ in range(max(opts["steps"] // 2, 5)):
                step()
    wall, cpu_s = sum(times), sum(cpu)
    # CPU: the steps' peak above the memory before setup (loader, training state, activations),
    # by the allocator's bytes in use (like CUDA's allocated) and by RSS (like CUDA's reserved)
    on_cpu = device.type != "cuda"
    rss_peak = mem.peak_bytes + (mem.start_bytes - setup_mem.start_bytes if on_cpu else 0)
    alloc_peak = None
    if on_cpu and mem.alloc_peak_bytes is not None:
        alloc_peak = mem.alloc_peak_bytes + (mem.alloc_start_bytes - setup_mem.alloc_start_bytes)
    peak = alloc_peak if alloc_peak is not None else rss_peak
    return {"variant": opts["variant"], "precision": precision, "compiled": bool(opts.get("compile")),
            "graphs": graphs, "seconds": wall, "cpu_seconds": cpu_s, "graphs_per_s": graphs / wall,
            "graphs_per_cpu_s": graphs / max(cpu_s, 1e-9), "step_ms_median": 1000 * statistics.median(times),
            "burn_in_seconds": burn_seconds, "peak_mib": peak / MIB, "rss_peak_mib": rss_peak / MIB,
            "setup_peak_mib": setup_mem.peak_bytes / MIB, "threads": torch.get_num_threads(), "device": str(device),
            "memory_measured_by": "allocated bytes (glibc mallinfo2), 0.2 ms samples" if alloc_peak is not None else mem.how}


def _run_isolated(opts: dict) -> dict:
    """run_variant in a fresh Python process (clean heap, clean peak RSS)."""
    env = dict(os.environ)
    if opts.get("threads"):
        env["OMP_NUM_THREADS"] = str(opts["threads"])
    proc = subprocess.run([sys.executable, "-m", "kdkit.bench.train", "--worker", json.dumps(opts)],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"bench worker {opts['variant']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _summary(runs: list[dict], key: str) -> dict:
    vals = [r[key] for r in runs]
    return {"median": round(statistics.median(vals), 2), "min": round(min(vals), 2), "max": round(max(vals), 2)}


def bench_train(model: str = "gat", type: str = "teacher", dataset: str = "synthetic", steps: int = 20,
                repeats: int = 3, burn_in: int = 3, batch_size: int = 64, precision: str = "auto",
                compile: str = "off", threads: int | None = None, data_root: str | None = None,
                isolate: bool = True, accelerator: str = "auto") -> dict:
    """Legacy loop vs Fabric path, same model, data, batch size and steps (see the module docstring).

    Args:
        model, type, dataset: what to train (model preset ``model``/``type``).
        steps: measured optimizer steps per repeat. Default 20.
        repeats: runs of each variant, alternating. Default 3.
        burn_in: untimed steps before measuring (compilation, allocator warm-up). Default 3.
        batch_size: graphs per batch for both. Default 64.
        precision: the Fabric path's precision (``auto`` = the trainer's policy). Legacy is fp32.
        compile: ``on`` compiles the Fabric path's model (``torch.compile(dynamic=True)``). Default off.
        threads: torch threads for both variants (default: torch's default).
        data_root: folder holding the datasets (default ``$KDKIT_DATA_ROOT``).
        isolate: each run in a fresh process (default True; False runs in this process, for smoke tests).
        accelerator: ``auto`` | ``cpu`` | ``cuda``.
    """

    base = {"model": model, "type": type, "dataset": dataset, "steps": steps, "burn_in": burn_in,
            "batch_size": batch_size, "precision": precision, "threads": threads, "data_root": data_root,
            "accelerator": accelerator, "compile_imports": compile == "on"}
    variants = {"legacy": {**base, "variant": "legacy", "precision": "32-true"},
                "fabric": {**base, "variant": "fabric", "compile": compile == "on"}}
    runs: dict[str, list[dict]] = {"legacy": [], "fabric": []}
    for _ in range(repeats):
        for name, opts in variants.items():
            runs[name].append(_run_isolated(opts) if isolate else run_variant(opts))
    out: dict[str, Any] = {"benchmark": "train", "model": model, "type": type, "dataset": dataset, "steps": steps,
                           "repeats": repeats, "burn_in": burn_in, "batch_size": batch_size, "isolated": isolate}
    for name, rs in runs.items():
        out[name] = {"precision": rs[0]["precision"], "compiled": rs[0]["compiled"], "threads": rs[0]["threads"],
                     "device": rs[0]["device"], "graphs_per_s": _summary(rs, "graphs_per_s"),
                     "graphs_per_cpu_s": _summary(rs, "graphs_per_cpu_s"), "step_ms": _summary(rs, "step_ms_median"),
                     "peak_mib": _summary(rs, "peak_mib"), "rss_peak_mib": _summary(rs, "rss_peak_mib"),
                     "burn_in_seconds": _summary(rs, "burn_in_seconds")}
    lg, fb = out["legacy"], out["fabric"]
    out["speedup"] = round(fb["graphs_per_s"]["median"] / max(lg["graphs_per_s"]["median"], 1e-9), 2)
    out["speedup_cpu_time"] = round(fb["graphs_per_cpu_s"]["median"] / max(lg["graphs_per_cpu_s"]["median"], 1e-9), 2)
    out["memory_ratio"] = round(fb["peak_mib"]["median"] / max(lg["peak_mib"]["median"], 1e-9), 2)
    out["memory_ratio_rss"] = round(fb["rss_peak_mib"]["median"] / max(lg["rss_peak_mib"]["median"], 1e-9), 2)
    out["memory_measured_by"] = runs["fabric"][0]["memory_measured_by"]
    out["machine"] = machine_info()
    return out


if __name__ == "__main__":  # the isolated worker: python -m kdkit.bench.train --worker JSON
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        import warnings

        warnings.filterwarnings("ignore")
        print(json.dumps(run_variant(json.loads(sys.argv[2]))))
    else:
        sys.exit("usage: python -m kdkit.bench.train --worker JSON (use `kdkit bench train`)")
