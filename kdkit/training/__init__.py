"""Fitting a model: the Lightning Fabric trainer and everything a training step needs.

Owns the model-plus-loss unit (:mod:`.task`), the Fabric trainer (:mod:`.trainer`), the
plain-PyTorch baseline loop (:mod:`.legacy`), checkpoint files (:mod:`.checkpoint`),
optimizer and schedule (:mod:`.optim`), the precision policy (:mod:`.precision`), machine
facts (:mod:`.hardware`), memory probes and OOM handling (:mod:`.memory`), the dynamic
batch sizer (:mod:`.batch_sizer`), the CPU speed-ups the trainer applies
(:mod:`.cpu_speedups`) and stopping a fit when the cluster asks (:mod:`.preemption`).

Layer 3: may import :mod:`kdkit.data`, :mod:`kdkit.models` and :mod:`kdkit.config`.
"""
from kdkit.training.checkpoint import load_checkpoint, model_from_checkpoint
from kdkit.training.task import Task
from kdkit.training.trainer import FabricTrainer

__all__ = ["FabricTrainer", "Task", "load_checkpoint", "model_from_checkpoint"]
