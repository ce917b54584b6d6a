"""The dynamic batch sizer applied to a run config: build the model and data the run would
use, probe, and return the config with the batch size that fits."""
from __future__ import annotations

import dataclasses
from typing import Callable

from kdkit.training.batch_sizer import BatchSizeResult, DynamicBatchSizer
from kdkit.training.memory import MIB
from kdkit.training.precision import choose_precision, resolve_accelerator
from kdkit.workflows.run import build_student_or_teacher, load_data, vgae_train_sets


# ----------------------------------------------------------------------------- CLI glue
def sizer_for_config(cfg, data=None) -> DynamicBatchSizer:
    """A DynamicBatchSizer for the model, data, device and precision a TrainConfig trains."""

    data = data or load_data(cfg)
    model = build_student_or_teacher(cfg, data)
    train = data.splits["train"]
    if cfg.model == "vgae":

        train = vgae_train_sets(data)[0]
    accelerator = resolve_accelerator(cfg.accelerator)
    return DynamicBatchSizer(model, train, target_memory_usage=cfg.target_memory_usage,
                             min_batch_size=cfg.min_batch_size, max_batch_size=cfg.max_batch_size,
                             precision=choose_precision(cfg.precision, accelerator), device=accelerator)


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
    return dataclasses.replace(cfg, batch_size=size)
