"""The learning-rate schedule the trainers step once per optimizer step (cosine with warm-up,
one-cycle, or none)."""
from __future__ import annotations

import math

import torch

from kdkit.config import TrainConfig


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.learning_rate, total_steps=max(total_steps, 1))
    if cfg.scheduler == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    warm = max(min(cfg.warmup_steps, total_steps // 4), 1)

    def cosine(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min((step - warm) / max(total_steps - warm, 1), 1.0)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
