"""The learning-rate schedule the trainers step once per optimizer step (cosine with warm-up,
one-cycle, or none)."""
from __future__ import annotations

import math

import torch

from kdkit.config import TrainConfig


def scaled_learning_rate(cfg: TrainConfig, world_size: int) -> float:
    """The peak learning rate for ``world_size`` data-parallel processes (``cfg.lr_scaling``).

    Each process takes ``batch_size`` windows a step, so the global batch grows with the
    processes and an epoch has ``world_size`` times fewer steps. ``sqrt`` (default) multiplies
    the learning rate by the square root of the process count, the rule for adaptive optimizers
    such as AdamW (Malladi et al., 2022); ``linear`` by the count (Goyal et al., 2017, for SGD);
    ``none`` keeps it. One process: ``cfg.learning_rate`` in every case.
    """
    n = max(int(world_size), 1)
    factor = {"sqrt": math.sqrt(n), "linear": float(n), "none": 1.0}[cfg.lr_scaling]
    return cfg.learning_rate * factor


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    if cfg.scheduler == "onecycle":
        max_lr = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(total_steps, 1))
    if cfg.scheduler == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    warm = max(min(cfg.warmup_steps, total_steps // 4), 1)

    def cosine(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min((step - warm) / max(total_steps - warm, 1), 1.0)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
