"""The dynamic batch sizer applied to a run config: build the model and data the run would
use, probe, and return the config with the batch size that fits."""
from __future__ import annotations

import dataclasses
from typing import Callable

from kdkit.models.layers import set_attention_kernel
from kdkit.training.batch_sizer import BatchSizeResult, DynamicBatchSizer
from kdkit.training.memory import MIB
from kdkit.training.precision import choose_precision, resolve_accelerator
from kdkit.workflows.run import build_student_or_teacher, load_data, vgae_train_sets


# ----------------------------------------------------------------------------- CLI glue
def sizer_for_config(cfg, data=None) -> DynamicBatchSizer:
    """A DynamicBatchSizer for the model, data, device and precision a TrainConfig trains."""

    data = data or load_data(cfg)
    model = build_student_or_teacher(cfg, data)
    set_attention_kernel(model, cfg.attention)  # as the trainer runs it: PyG's path needs ~2.5x the memory on CPU
    train = data.splits["train"]
    if cfg.model == "vgae":

        train = vgae_train_sets(data)[0]
    accelerator = resolve_accelerator(cfg.accelerator)
    # a batch holds at most one process's share of the training windows: a larger one would be
    # padded by nothing and give one step an epoch at a size no epoch ever reaches
    windows = max(1, len(train) // max(1, cfg.devices))
    # on a CPU the processes of one node share its RAM: each gets its share of the target (each GPU has its own)
    local = max(1, cfg.devices) if accelerator == "cpu" else 1
    sizer = DynamicBatchSizer(model, train, target_memory_usage=cfg.target_memory_usage / local,
                              min_batch_size=cfg.min_batch_size,
                              max_batch_size=max(cfg.min_batch_size, min(cfg.max_batch_size, windows)),
                              precision=choose_precision(cfg.precision, accelerator), device=accelerator)
    sizer.train_windows = windows
    return sizer


def describe(cfg, result: BatchSizeResult) -> str:
    state = "cached" if result.cached else f"probed in {result.seconds:.1f} s ({len(result.probes)} probes)"
    return (f"{cfg.model} {cfg.type} on {cfg.dataset}: batch size {result.batch_size} "
            f"(node budget {result.node_budget}; largest fit {result.largest_fit}, peak "
            f"{result.peak_bytes / MIB:.1f} MiB of {result.budget_bytes / MIB:.0f} MiB = "
            f"{100 * result.target_memory_usage:.0f} % of {'RAM available' if result.device == 'cpu' else result.device}; "
            f"{result.precision}; {state})")


def optimize_config_batch_size(cfg, data=None, echo: Callable[[str], None] = print):
    """Run the sizer for ``cfg`` and return ``cfg`` with its ``batch_size`` (a new frozen config)."""
    sizer = sizer_for_config(cfg, data)
    size = sizer.estimate_optimal_batch_size()
    echo(f"--optimize-batch-size: {describe(cfg, sizer.result)}")
    note = few_steps_note(size, sizer.train_windows, cfg.max_batch_size)
    if note:
        echo(f"--optimize-batch-size: {note}")
    if cfg.teacher:  # (a review measured 200 MiB of training growth with a 564 k teacher, 29 without)
        echo("--optimize-batch-size: measured on the student's step alone; the teacher's forward pass of each batch "
             "adds its activations on top: on a GPU near its limit, lower --target-memory-usage")
    return dataclasses.replace(cfg, batch_size=size)


FEW_STEPS = 10
"""Below this many optimizer steps an epoch, the batch the memory allows is said to be large for the data."""


def few_steps_note(batch_size: int, windows: int, max_batch_size: int) -> str | None:
    """A note when ``batch_size`` leaves fewer than :data:`FEW_STEPS` steps an epoch over ``windows``
    training windows (one process's share), else None."""
    steps = -(-windows // batch_size)
    if steps >= FEW_STEPS:
        return None
    capped = " (the training split's size: memory would allow more)" if batch_size >= windows else ""
    return (f"batch size {batch_size}{capped} gives {steps} optimizer step{'s' if steps != 1 else ''} an epoch over "
            f"{windows:,} training windows; for more updates per epoch set max_batch_size (--max-batch-size; now "
            f"{max_batch_size}) to about {max(1, windows // FEW_STEPS)}")
