"""Training and inference benchmarks: the legacy loop against the Fabric path, and the
inference throughput and latency of a trained model.

    kdkit bench train --model gat --type teacher --dataset hcrl_sa --steps 20 --repeats 3 --json
    kdkit bench train --model gat --type student --dataset hcrl_sa --threads 1 --compile on
    kdkit bench infer --checkpoint runs/hcrl_sa_gat_student/checkpoints/best.pt --json

``bench train`` runs, on the same model preset (same initial weights), the same data, batch
size and number of steps:

- ``legacy``: :mod:`kdkit.legacy`'s loop, a PyG ``DataLoader`` over a list of ``Data``, fp32;
- ``fabric``: :class:`kdkit.trainer.FabricTrainer`'s step (``_run_batch``), set up by
  ``FabricTrainer.prepare`` as ``fit`` does: fast batches gathered from the packed store, the
  :mod:`kdkit.fastpath` (allocator tuning and fast edge-projection gradients on CPU, fused
  AdamW), the precision policy's choice (or ``--precision``), optionally ``torch.compile``
  with the GAT's self-loops added once per batch (``--compile on``).

Each variant runs in a fresh process (so one variant's heap cannot hide the other's memory),
alternating legacy / fabric per repeat (so a busy machine slows both alike). Trainer setup is
not timed; ``--burn-in`` steps (default 3; compilation happens there) are not timed; memory
is measured on further steps after the timed ones (its sampling thread would slow them).
Reported: graphs/s by wall clock and per CPU second of the process (steadier on a shared machine),
median over repeats with min and max, the peak memory of the training steps above the memory
before the trainer was set up (loader + training state + activations), the fabric/legacy
ratios, and the machine. Peak memory on CUDA: ``max_memory_allocated``. On CPU, two figures:
``peak_mib``, the allocator's bytes in use (glibc ``mallinfo2``, the CPU counterpart of CUDA's
allocated bytes; ``memory_ratio`` compares these), and ``rss_peak_mib``, the resident set,
which also holds freed heap that glibc keeps for reuse (the counterpart of CUDA's reserved
memory; ``memory_ratio_rss``). Both sampled every 0.2 ms.

``bench infer`` loads a checkpoint and, on one core (``torch.set_num_threads(1)``), measures
batched throughput (windows/s and messages/s = windows/s x window) and single-window latency
(p50/p99 of gather-from-store + forward, one window at a time), fp32 and bf16 autocast, eager
and compiled; by wall clock and per CPU second of the measuring thread (``time.thread_time``,
what an idle core gives; on a shared machine the wall clock also counts time spent waiting).
Both include gathering the windows from the graph store (a GAT's with
:func:`kdkit.fastgat.gather_windows`, consecutive windows sliced). A GAT compiles (``compiled``:
``torch.compile``; ``aot``: :mod:`kdkit.export`'s package) as :class:`kdkit.fastgat.GATScorer`,
the same scores without GATv2's per-node scatter max; eager variants run the stock model.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdkit.fastgat import GATScorer, gather_windows, scorer_inputs
from kdkit.fastpath import tune_cpu_allocator

MIB = 2**20


# ----------------------------------------------------------------------------- one measured run
def _setup(opts: dict):
    """Data, config and a Task with seeded initial weights: the part both variants share."""
    from kdkit.config import make_config
    from kdkit.pipeline import build_student_or_teacher, class_weights, load_data, vgae_train_sets
    from kdkit.trainer import Task

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
    from kdkit.legacy import legacy_loader, legacy_step
    from kdkit.trainer import make_scheduler

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
    import dataclasses

    from kdkit.trainer import FabricTrainer, make_scheduler

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
    from kdkit.batching_auto import PeakMemory, trim_heap

    if opts.get("threads"):
        torch.set_num_threads(int(opts["threads"]))
    cfg, train_set, task = _setup(opts)
    from kdkit.trainer import resolve_accelerator

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
    proc = subprocess.run([sys.executable, "-m", "kdkit.bench_train", "--worker", json.dumps(opts)],
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
    from kdkit.bench import machine_info

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
            ``fp32-aot`` (GAT only: :mod:`kdkit.export`'s ahead-of-time compiled package).
        split: which split's windows to score. Default ``val``.
    """
    import contextlib

    from kdkit.batching import collate_indices
    from kdkit.bench import machine_info
    from kdkit.pipeline import checkpoint_data
    from kdkit.trainer import load_checkpoint, model_from_checkpoint

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
        fast = mode in ("compiled", "aot") and kind == "gat"  # kdkit.fastgat's scorer: no scatter max
        t_export = time.perf_counter()
        if mode == "aot":  # ahead-of-time compiled package (kdkit export), timed as warm-up
            from kdkit.export import export_model, load_exported

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


# ----------------------------------------------------------------------------- CLI
def cmd_bench_train(args: argparse.Namespace) -> int:
    result = bench_train(model=args.model, type=args.type, dataset=args.dataset, steps=args.steps, repeats=args.repeats,
                         burn_in=args.burn_in, batch_size=args.batch_size, precision=args.precision,
                         compile=args.compile, threads=args.threads, data_root=args.data_root,
                         isolate=not args.in_process, accelerator=args.accelerator)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['model']} {result['type']} on {result['dataset']}: {result['steps']} steps x {result['repeats']} "
          f"repeats, batch {result['batch_size']}")
    for name in ("legacy", "fabric"):
        r = result[name]
        print(f"  {name:<7} {r['precision']:<11}{' compiled' if r['compiled'] else '':<10} "
              f"{r['graphs_per_s']['median']:>9.1f} graphs/s [{r['graphs_per_s']['min']:.1f}..{r['graphs_per_s']['max']:.1f}]"
              f"  {r['graphs_per_cpu_s']['median']:>8.1f} graphs/CPU-s  peak {r['peak_mib']['median']:.1f} MiB"
              f" (RSS {r['rss_peak_mib']['median']:.1f} MiB)")
    print(f"  fabric/legacy: {result['speedup']}x graphs/s ({result['speedup_cpu_time']}x per CPU second), "
          f"{result['memory_ratio']}x peak memory ({result['memory_ratio_rss']}x RSS); memory: {result['memory_measured_by']}")
    return 0


def cmd_bench_infer(args: argparse.Namespace) -> int:
    result = bench_infer(args.checkpoint, args.dataset, args.data_root, args.batch_size, args.seconds, args.single,
                         args.variants, args.split)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['model']} ({result['parameters']:,} parameters) on {result['dataset']}/{result['split']}, one core:")
    for name, r in result["variants"].items():
        print(f"  {name:<14} {r['messages_per_s']:>12,} messages/s  {r['windows_per_s']:>8,} windows/s  "
              f"p50 {r['latency_ms_p50']:.3f} ms  p99 {r['latency_ms_p99']:.3f} ms  |  per CPU second: "
              f"{r['messages_per_cpu_s']:,} messages/s, p50 {r['latency_cpu_ms_p50']:.3f} ms, p99 {r['latency_cpu_ms_p99']:.3f} ms")
    return 0


def add_bench_parsers(bench_sub) -> None:
    """``kdkit bench train`` and ``kdkit bench infer`` (called from kdkit.cli)."""
    from kdkit.datasets import REGISTRY

    p = bench_sub.add_parser("train", help="legacy loop vs Fabric path: graphs/s and peak memory")
    p.add_argument("--model", choices=["gat", "vgae"], default="gat", help="model family (default gat)")
    p.add_argument("--type", choices=["teacher", "student"], default="teacher", help="model preset (default teacher)")
    p.add_argument("--dataset", choices=sorted(REGISTRY), default="synthetic", help="dataset key (default synthetic)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--steps", type=int, default=20, help="measured steps per repeat (default 20)")
    p.add_argument("--repeats", type=int, default=3, help="repeats of each variant, alternating (default 3)")
    p.add_argument("--burn-in", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--batch-size", type=int, default=64, help="graphs per batch for both (default 64)")
    p.add_argument("--precision", default="auto", choices=["auto", "32-true", "bf16-mixed", "16-mixed"],
                   help="Fabric path precision (default: the trainer's policy); legacy is always fp32")
    p.add_argument("--compile", choices=["on", "off"], default="off", help="torch.compile the Fabric path's model")
    p.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's default)")
    p.add_argument("--accelerator", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--in-process", action="store_true", help="run every variant in this process (faster, less clean memory)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_train)

    p = bench_sub.add_parser("infer", help="batched messages/s and single-window p50/p99 latency on one core")
    p.add_argument("--checkpoint", required=True, help="a kdkit checkpoint (best.pt)")
    p.add_argument("--dataset", choices=sorted(REGISTRY), default=None, help="default: the checkpoint's dataset")
    p.add_argument("--data-root", default=None)
    p.add_argument("--split", default="val", help="split whose windows are scored (default val)")
    p.add_argument("--batch-size", type=int, default=64, help="windows per batch (default 64)")
    p.add_argument("--seconds", type=float, default=3.0, help="measuring time per throughput figure (default 3)")
    p.add_argument("--single", type=int, default=2000, help="single-window calls for p50/p99 (default 2000)")
    p.add_argument("--variants", default="all", help="all, or a comma list of fp32-eager,bf16-eager,fp32-compiled,bf16-compiled,fp32-aot")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_infer)


if __name__ == "__main__":  # the isolated worker: python -m kdkit.bench_train --worker JSON
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        import warnings

        warnings.filterwarnings("ignore")
        print(json.dumps(run_variant(json.loads(sys.argv[2]))))
    else:
        sys.exit("usage: python -m kdkit.bench_train --worker JSON (use `kdkit bench train`)")
