"""``kdkit bench train``: the plain PyG loop a user writes (``benchmarks/plain_pyg_loop.py``) against
the Fabric trainer on the same model and data (graphs/s, CPU seconds, peak memory), each variant in
fresh processes, interleaved, with min/median/max over the repeats and the precision used and why."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from kdkit.config import make_config
from kdkit.models.layers import GATStack, GATv2Layer, set_attention_kernel
from kdkit.training.hardware import machine_info
from kdkit.training.memory import PeakMemory, allocated_bytes, collections_skip_older_objects, rss_bytes, trim_heap
from kdkit.training.optim import make_scheduler
from kdkit.training.precision import cpu_has_native_bf16, measure_cpu_bf16_speedup
from kdkit.training.task import Task
from kdkit.training.trainer import FabricTrainer, resolve_accelerator
from kdkit.workflows.run import build_student_or_teacher, class_weights, load_data, vgae_train_sets

MIB = 2**20

MODELS = ("gat", "vgae")
"""The families both sides can train: the plain loop (``benchmarks/plain_pyg_loop.py``) knows a
classifier's cross-entropy and an autoencoder's own loss, not the fusion model's, and the Fabric
side's training set and class weights follow the same two cases."""

SAME_FOR_BOTH = {"vehicle_dropout": 0.0, "num_workers": 0}
"""Run-config keys the benchmark fixes so that both sides do the same work: no unknown-vehicle
augmentation (``Task.hide_vehicle``: a random draw, a copy and a masked fill per batch, and another
loss, which the plain loop does not do), and batches collated in the measuring process (a GPU
hardware preset gives the Fabric side 8 DataLoader workers, whose CPU seconds no one counts, while
the plain loop collates in-process)."""


def check_model(model: str) -> None:
    """Refuse a model family the plain loop cannot train like ``kdkit train`` does (see :data:`MODELS`)."""
    if model not in MODELS:
        raise ValueError(f"--model {model!r}: kdkit bench train compares {' and '.join(MODELS)} only; the plain PyG "
                         "loop has no fusion loss, and a fusion run would time training on the VGAE's normal-only "
                         "windows without class weights, not what kdkit train does")


# ----------------------------------------------------------------------------- one measured run
def _setup(opts: dict):
    """Data, config and a Task with seeded initial weights: the part both variants share.

    The config carries :data:`SAME_FOR_BOTH` (no vehicle dropout, no DataLoader workers), so the
    Fabric side's Task computes the plain loop's loss in-process (tests/test_bench_train.py checks
    the loss on this very config)."""

    check_model(opts["model"])
    overrides = {**SAME_FOR_BOTH, "model": opts["model"], "type": opts["type"], "dataset": opts["dataset"],
                 "batch_size": opts["batch_size"], "accelerator": opts.get("accelerator", "auto"), "seed": 0,
                 "precision": opts.get("precision", "auto"), "epochs": 1000, "attention": opts.get("attention", "auto")}
    if opts.get("data_root"):
        overrides["data_root"] = opts["data_root"]
    cfg = make_config(**overrides)
    _import_trainer_libraries(compile_model=bool(opts.get("compile_imports")))
    data = load_data(cfg)
    train_set = data.splits["train"] if cfg.model == "gat" else vgae_train_sets(data)[0]
    model = build_student_or_teacher(cfg, data)  # seeded with cfg.seed: same weights in every run
    task = Task(model, cfg, None, class_weights(train_set) if cfg.model == "gat" and cfg.class_weighting else None)
    return cfg, train_set, task


def _sum_loop(values):  # a trivial kernel: its first call sets numba itself up
    total = 0.0
    for v in values:
        total += v
    return total


def _load_numba() -> int:
    """Set numba's machinery up before the memory baseline, as the imports are: its first
    compiled call (even of a three-line loop) installs its typing registries and LLVM's code
    generator, ~7 MiB of malloc'd memory once per process, whatever runs next and at any batch
    size. The Fabric path's kernels (fused attention, layer tail, readout, batch gather) are then
    loaded in its first steps and their code stays counted, as do the graphs ``torch.compile``
    builds. Returns the bytes set up (reported beside the peak, and in a second ratio)."""
    try:
        import numba
    except ImportError:
        return 0
    import numpy as np

    trim_heap()
    before = allocated_bytes()
    numba.njit(cache=True)(_sum_loop)(np.ones(2))
    trim_heap()
    after = allocated_bytes()
    return max(after - before, 0) if before is not None and after is not None else 0


def _import_trainer_libraries(compile_model: bool = False) -> None:
    """Import what either trainer imports before the memory baseline is taken, so module code
    (Lightning, its loggers; ~40 MiB of torch.compile machinery when compiling) is not counted
    as training memory: it does not grow with the batch."""
    import importlib

    names = ["lightning_fabric", "lightning_fabric.loggers", "tensorboard", "torch_geometric.loader"]
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


PLAIN_LOOP = Path(__file__).resolve().parents[2] / "benchmarks" / "plain_pyg_loop.py"


def plain_loop_module():
    """``benchmarks/plain_pyg_loop.py`` (the baseline), imported from the kdkit checkout."""
    if not PLAIN_LOOP.is_file():
        raise FileNotFoundError(f"the baseline loop {PLAIN_LOOP} is missing: `kdkit bench train` runs from a kdkit "
                                "checkout (pip install -e .), where benchmarks/ sits beside kdkit/")
    spec = importlib.util.spec_from_file_location("kdkit_plain_pyg_loop", PLAIN_LOOP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _plain_steps(cfg, train_set, task, device, data_list: list | None = None):
    """The plain PyG loop: DataLoader over a list of Data, the model, AdamW, backward, step; fp32.
    ``data_list``: the training set as ``Data`` (``train_set.to_data_list()`` when None), made by
    the caller before its memory baseline when the training-only figure is wanted."""

    plain = plain_loop_module()
    model = task.model.to(device).train()
    set_attention_kernel(model, "stock")  # the loop a PyG user writes runs PyG's GATv2Conv path
    weight = task.class_weights.to(device) if task.objective == "classify" and cfg.class_weighting else None
    optimizer = plain.plain_optimizer(model, cfg.learning_rate, cfg.weight_decay)
    if data_list is None:
        data_list = train_set.to_data_list()
    batches = _cycle(plain.plain_loader(data_list, cfg.batch_size, cfg.seed))

    def step() -> int:
        batch = next(batches).to(device)
        plain.plain_step(model, optimizer, batch, weight)
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
    """One variant (``opts["variant"]`` = plain | fabric), measured in this process."""

    if opts.get("threads"):
        torch.set_num_threads(int(opts["threads"]))
    cfg, train_set, task = _setup(opts)

    device = torch.device(resolve_accelerator(cfg.accelerator))
    numba_setup = _load_numba() if device.type == "cpu" else 0
    # The plain loop trains from a list of Data, a copy of the training set the Fabric side does not
    # make (its store was loaded above, before any baseline). Made here, before the memory baseline,
    # and measured on its own: peak_mib adds it back (the figure as before), training_peak_mib does not.
    data_list, list_alloc, list_rss = None, 0, 0
    if opts["variant"] == "plain":
        trim_heap()
        a0, r0 = allocated_bytes(), rss_bytes()
        data_list = train_set.to_data_list()
        trim_heap()
        a1, r1 = allocated_bytes(), rss_bytes()
        list_alloc = max(a1 - a0, 0) if a0 is not None and a1 is not None else 0
        list_rss = max(r1 - r0, 0)
    trim_heap()
    with tempfile.TemporaryDirectory() as tmp:
        with PeakMemory(device if device.type == "cuda" else "cpu") as setup_mem:  # not timed; memory counted
            if opts["variant"] == "plain":
                step, precision = _plain_steps(cfg, train_set, task, device, data_list)
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
    training_peak = alloc_peak if alloc_peak is not None else rss_peak  # without the plain loop's data list
    if on_cpu:  # the data list lives in host memory: a CUDA peak never counted it
        rss_peak += list_rss
        if alloc_peak is not None:
            alloc_peak += list_alloc
    peak = alloc_peak if alloc_peak is not None else rss_peak
    convs = [m for m in task.model.modules() if isinstance(m, GATv2Layer)]
    attention = "stock" if opts["variant"] == "plain" or not convs else convs[0].attention
    stacks = [m for m in task.model.modules() if isinstance(m, GATStack)]
    kdkit_masks = bool(stacks) and stacks[0].fast_dropout and on_cpu  # else F.dropout (eager and compiled alike)
    return {"variant": opts["variant"], "precision": precision, "compiled": bool(opts.get("compile")),
            "attention": attention, "dropout_masks": "kdkit" if kdkit_masks else "torch",
            "graphs": graphs, "seconds": wall, "cpu_seconds": cpu_s, "graphs_per_s": graphs / wall,
            "graphs_per_cpu_s": graphs / max(cpu_s, 1e-9), "step_ms_median": 1000 * statistics.median(times),
            "burn_in_seconds": burn_seconds, "peak_mib": peak / MIB, "rss_peak_mib": rss_peak / MIB,
            "training_peak_mib": training_peak / MIB,
            "data_list_mib": ((list_alloc if alloc_peak is not None else list_rss) if on_cpu else 0) / MIB,
            "setup_peak_mib": setup_mem.peak_bytes / MIB, "numba_setup_mib": numba_setup / MIB,
            "threads": torch.get_num_threads(), "device": str(device),
            "memory_measured_by": "allocated bytes (glibc mallinfo2), 0.2 ms samples" if alloc_peak is not None else mem.how}


# A worker's start, as the kdkit command's (``kdkit.cli.main``): the imports with the garbage collector
# off, then their objects frozen out of its reach. Importing this module took 4.6-5.4 s with the
# collector on, 3.1 s so; and no full collection over the imports' ~430,000 objects can land
# inside the timed steps (either variant's: both run in such workers).
_WORKER_START = ("import gc, sys\n"
                 "gc.disable()\n"
                 "from kdkit.bench.train import worker_main\n"
                 "gc.freeze()\n"
                 "gc.enable()\n"
                 "worker_main(sys.argv[1])\n")


def worker_main(opts_json: str) -> None:
    """One isolated run: :func:`run_variant` of the JSON options, its result as one JSON line."""
    import warnings

    warnings.filterwarnings("ignore")
    print(json.dumps(run_variant(json.loads(opts_json))))


def _run_isolated(opts: dict) -> dict:
    """run_variant in a fresh Python process (clean heap, clean peak RSS)."""
    env = dict(os.environ)
    if opts.get("threads"):
        env["OMP_NUM_THREADS"] = str(opts["threads"])
    proc = subprocess.run([sys.executable, "-c", _WORKER_START, json.dumps(opts)],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"bench worker {opts['variant']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _summary(runs: list[dict], key: str) -> dict:
    vals = [r[key] for r in runs]
    return {"median": round(statistics.median(vals), 2), "min": round(min(vals), 2), "max": round(max(vals), 2)}


def precision_reason(requested: str, accelerator: str, chosen: str) -> str:
    """Why the Fabric variant ran at ``chosen`` (what the precision policy saw)."""
    if requested != "auto":
        return f"asked for with --precision {requested}"
    if accelerator == "cuda":
        major, minor = torch.cuda.get_device_capability()
        return f"policy: CUDA compute capability {major}.{minor} -> {chosen}"
    if not cpu_has_native_bf16():
        return "policy: this CPU has no native bf16 (avx512_bf16/amx_bf16) -> fp32"
    ratio = measure_cpu_bf16_speedup()
    return (f"policy: native bf16, a GATv2 training step measured {ratio:.2f}x faster in bf16 on this CPU "
            f"({'>=' if ratio >= 1.2 else '<'} 1.2 needed) -> {chosen}")


def bench_train(model: str = "gat", type: str = "teacher", dataset: str = "synthetic", steps: int = 20,
                repeats: int = 3, burn_in: int = 3, batch_size: int = 64, precision: str = "auto",
                compile: str = "off", threads: int | None = None, data_root: str | None = None,
                isolate: bool = True, accelerator: str = "auto", attention: str = "auto") -> dict:
    """The plain PyG loop vs the Fabric path, same model, initial weights, data, batch size and steps.

    Args:
        model, type, dataset: what to train (model preset ``model``/``type``).
        steps: measured optimizer steps per repeat. Default 20.
        repeats: runs of each variant, alternating (plain, fabric, plain, ...). Default 3.
        burn_in: untimed steps before measuring (compilation, allocator warm-up). Default 3.
        batch_size: graphs per batch for both. Default 64.
        precision: the Fabric path's precision (``auto`` = the trainer's policy). The plain loop is fp32.
        compile: ``on`` compiles the Fabric path's model (``torch.compile(dynamic=True)``). Default off.
        threads: torch threads for both variants (default: torch's default).
        data_root: folder holding the datasets (default ``$KDKIT_DATA_ROOT``).
        isolate: each run in a fresh process (default True; False runs in this process, for smoke tests).
        accelerator: ``auto`` | ``cpu`` | ``cuda``.
        attention: the Fabric path's GATv2 attention kernel (``auto`` | ``fused`` | ``stock``, the run
            config key; ``stock`` also means torch's dropout masks); the plain loop always runs PyG's
            stock path and torch's masks. Each side records both (``attention``, ``dropout_masks``).

    Raises:
        ValueError: ``model`` not in :data:`MODELS`; ``steps``, ``repeats`` or ``batch_size`` below 1,
            ``burn_in`` below 0 (named as the ``kdkit bench train`` flag).
    """
    check_model(model)
    for flag, value, least in (("--steps", steps, 1), ("--repeats", repeats, 1), ("--batch-size", batch_size, 1),
                               ("--burn-in", burn_in, 0)):
        if value < least:
            raise ValueError(f"{flag} {value}: must be at least {least}")

    base = {"model": model, "type": type, "dataset": dataset, "steps": steps, "burn_in": burn_in,
            "batch_size": batch_size, "precision": precision, "threads": threads, "data_root": data_root,
            "accelerator": accelerator, "compile_imports": compile == "on"}
    variants = {"plain": {**base, "variant": "plain", "precision": "32-true"},
                "fabric": {**base, "variant": "fabric", "compile": compile == "on", "attention": attention}}
    runs: dict[str, list[dict]] = {"plain": [], "fabric": []}
    with collections_skip_older_objects():  # in-process runs: each run's trim_heap collects its own garbage only
        for _ in range(repeats):
            for name, opts in variants.items():
                runs[name].append(_run_isolated(opts) if isolate else run_variant(opts))
    out: dict[str, Any] = {"benchmark": "train", "model": model, "type": type, "dataset": dataset, "steps": steps,
                           "repeats": repeats, "burn_in": burn_in, "batch_size": batch_size, "isolated": isolate,
                           "baseline": "plain PyG loop (benchmarks/plain_pyg_loop.py): DataLoader over a list of "
                                       "Data, model, AdamW, backward, step; fp32",
                           "config": {**SAME_FOR_BOTH,
                                      "why": "the same work on both sides: no unknown-vehicle augmentation "
                                             "(the plain loop has none) and batches collated in the measuring "
                                             "process (no DataLoader workers whose CPU would go uncounted)"}}
    for name, rs in runs.items():
        out[name] = {"precision": rs[0]["precision"], "compiled": rs[0]["compiled"], "threads": rs[0]["threads"],
                     "attention": rs[0]["attention"], "dropout_masks": rs[0]["dropout_masks"],
                     "device": rs[0]["device"], "graphs_per_s": _summary(rs, "graphs_per_s"),
                     "graphs_per_cpu_s": _summary(rs, "graphs_per_cpu_s"), "step_ms": _summary(rs, "step_ms_median"),
                     "cpu_seconds": _summary(rs, "cpu_seconds"), "wall_seconds": _summary(rs, "seconds"),
                     "peak_mib": _summary(rs, "peak_mib"), "rss_peak_mib": _summary(rs, "rss_peak_mib"),
                     "training_peak_mib": _summary(rs, "training_peak_mib"),
                     "data_list_mib": _summary(rs, "data_list_mib"),
                     "burn_in_seconds": _summary(rs, "burn_in_seconds"), "numba_setup_mib": _summary(rs, "numba_setup_mib")}
    fabric_device = runs["fabric"][0]["device"].split(":")[0]
    out["fabric"]["precision_reason"] = precision_reason(precision, fabric_device, out["fabric"]["precision"])
    pl, fb = out["plain"], out["fabric"]
    out["speedup"] = round(fb["graphs_per_s"]["median"] / max(pl["graphs_per_s"]["median"], 1e-9), 2)
    out["speedup_cpu_time"] = round(fb["graphs_per_cpu_s"]["median"] / max(pl["graphs_per_cpu_s"]["median"], 1e-9), 2)
    out["memory_ratio"] = round(fb["peak_mib"]["median"] / max(pl["peak_mib"]["median"], 1e-9), 2)
    # the same with numba's set-up counted as the Fabric path's training memory (the plain loop runs no
    # numba; the Fabric path always does: its batch gather is compiled, whatever the attention kernel)
    out["memory_ratio_with_numba_setup"] = round((fb["peak_mib"]["median"] + fb["numba_setup_mib"]["median"])
                                                 / max(pl["peak_mib"]["median"], 1e-9), 2)
    out["memory_ratio_rss"] = round(fb["rss_peak_mib"]["median"] / max(pl["rss_peak_mib"]["median"], 1e-9), 2)
    out["memory_ratio_training_only"] = round(fb["training_peak_mib"]["median"]
                                              / max(pl["training_peak_mib"]["median"], 1e-9), 2)
    out["memory_measured_by"] = (
        f"{runs['fabric'][0]['memory_measured_by']}, above each side's memory before its setup. memory_ratio "
        "(and _rss, _with_numba_setup): peak_mib, which counts the plain loop's to_data_list() copy of the "
        f"training set (data_list_mib, {pl['data_list_mib']['median']} MiB, measured on its own just before "
        "the setup and added) and nothing of the Fabric side's graph store (memory-mapped, loaded before its "
        "baseline); memory_ratio_training_only: training_peak_mib, the same without the data list: loader, "
        "training state, batches and activations only")
    out["machine"] = machine_info()
    return out


if __name__ == "__main__":  # one isolated worker by hand: python -m kdkit.bench.train --worker JSON
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2])
    else:
        sys.exit("usage: python -m kdkit.bench.train --worker JSON (use `kdkit bench train`)")
