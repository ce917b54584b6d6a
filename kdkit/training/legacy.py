"""The plain-PyTorch "legacy" trainer: the baseline the benchmarks compare against.

fp32, a standard ``torch_geometric.loader.DataLoader`` over a list of ``Data`` objects (PyG
collate every batch), no caching, no Fabric. Same models, same data, same losses
(:class:`kdkit.training.task.Task`), so one step of both trainers gives the same loss at fp32.

    kdkit train --model gat --dataset synthetic --type teacher --trainer legacy
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch_geometric.loader import DataLoader

from kdkit.config import TrainConfig
from kdkit.data.graphs import GraphSet
from kdkit.training.checkpoint import CHECKPOINT_FORMAT, atomic_torch_save
from kdkit.training.optim import make_scheduler
from kdkit.training.task import Task
from kdkit.training.trainer import FitResult


def legacy_loader(gs: GraphSet, batch_size: int, shuffle: bool, seed: int = 0):

    gen = torch.Generator().manual_seed(seed)
    return DataLoader(gs.to_data_list(), batch_size=batch_size, shuffle=shuffle, generator=gen)


def legacy_step(task: Task, optimizer: torch.optim.Optimizer, scheduler, batch, grad_clip: float) -> float:
    """One plain fp32 optimizer step; returns the loss."""
    loss, _ = task.training_loss(batch)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(task.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return float(loss.detach())


def legacy_fit(task: Task, cfg: TrainConfig, train_set: GraphSet, val_set: GraphSet, run_dir: str | Path,
               checkpoint_extra: dict | None = None, max_steps: int | None = None) -> FitResult:
    """Train with a plain loop on CPU/CUDA in fp32; mirrors FabricTrainer.fit's outputs."""
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if cfg.accelerator in ("auto", "cuda", "gpu") and torch.cuda.is_available() else "cpu")
    task.to(device)
    if task.teacher is not None:
        task.teacher.to(device)
    ckpt_dir = Path(run_dir) / "checkpoints"
    train_loader = legacy_loader(train_set, cfg.batch_size, True, cfg.seed)
    val_loader = [b.to(device) for b in legacy_loader(val_set, max(cfg.batch_size, 256), False)]
    optimizer = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=cfg.learning_rate,
                                  weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg, cfg.epochs * len(train_loader))
    metric, mode = task.monitor
    sign = 1.0 if mode == "max" else -1.0
    best, bad, step, history, t0 = -math.inf, 0, 0, [], time.perf_counter()
    for epoch in range(cfg.epochs):
        if bad >= cfg.patience:
            break
        task.train()
        losses = []
        for batch in train_loader:
            losses.append(legacy_step(task, optimizer, scheduler, batch.to(device), cfg.grad_clip))
            step += 1
            if max_steps and step >= max_steps:
                break
        val = task.validate(val_loader)
        history.append({"epoch": epoch, "step": step, "train_loss": sum(losses) / max(len(losses), 1), **val})
        state = {"format": CHECKPOINT_FORMAT, "model": task.model.state_dict(), "model_config": task.model.config,
                 "train_config": cfg.to_dict(), "epoch": epoch, "step": step, "history": history, **(checkpoint_extra or {})}
        if sign * val[metric] > best:
            best, bad = sign * val[metric], 0
            atomic_torch_save(state, ckpt_dir / "best.pt")
        else:
            bad += 1
        atomic_torch_save(state, ckpt_dir / "last.pt")
        if max_steps and step >= max_steps:
            break
    epochs_run = history[-1]["epoch"] + 1 if history else 0  # not the loop's: an early stop breaks before training
    return FitResult(ckpt_dir / "best.pt", ckpt_dir / "last.pt", sign * best, epochs_run, history, time.perf_counter() - t0)
