"""Checkpoint files: one plain dict per file (weights, model config, training config, vocabulary,
feature layout, threshold, optimizer state), written atomically and loaded with
``weights_only`` and a clear error for anything that is not a kdkit checkpoint."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdkit.models.registry import model_from_config

CHECKPOINT_KEYS = {"format", "model", "model_config", "train_config", "vocab", "node_features", "edge_features",
                   "threshold", "optimizer", "scheduler", "kd", "epoch", "step", "rng", "best_metric", "bad_epochs",
                   "history", "batch_size", "kdkit_version"}


CHECKPOINT_FORMAT = 1


# ----------------------------------------------------------------------------- checkpoints
def atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict:
    """Load a kdkit checkpoint safely (``weights_only``) and check its keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for foreign pickles
        raise ValueError(f"{path}: not a loadable kdkit checkpoint ({type(err).__name__}: {str(err)[:200]})") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a kdkit checkpoint (format {ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__})")
    extra = set(ckpt) - CHECKPOINT_KEYS
    if extra:
        raise ValueError(f"{path}: unexpected checkpoint keys {sorted(extra)}; expected a subset of {sorted(CHECKPOINT_KEYS)}")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> nn.Module:

    model = model_from_config(ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    return model
