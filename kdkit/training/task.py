"""``Task``: a model, its loss (cross-entropy, VGAE reconstruction, or KD from a teacher) and its
validation metric: the unit both trainers fit."""
from __future__ import annotations

import torch
from torch import nn

from kdkit.config import TrainConfig
from kdkit.models.distill import DistillationLoss


# ----------------------------------------------------------------------------- tasks
class Task(nn.Module):
    """What is trained: the model, its loss and its validation metric.

    Holds the student/teacher model and (for KD) the distillation loss with its trainable
    projections, so one ``fabric.setup`` covers every trainable parameter. The teacher is
    kept outside the module tree (never trained, never wrapped by DDP).
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, teacher: nn.Module | None = None,
                 class_weights: torch.Tensor | None = None):
        super().__init__()
        self.model, self.kind, self.objective = model, model.config["kind"], model.objective
        self.cfg = cfg
        self._teacher = [teacher] if teacher is not None else []  # a list hides it from nn.Module
        self.kd = None
        if teacher is not None:

            extra = {"class_weight": class_weights} if self.objective == "classify" else {}
            self.kd = DistillationLoss.from_models(model, teacher, temperature=cfg.kd_temperature, alpha=cfg.kd_alpha,
                                                   beta=cfg.kd_feature_weight, latent_weight=cfg.kd_latent_weight, **extra)
        self.register_buffer("class_weights", class_weights if class_weights is not None else torch.ones(2))

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0] if self._teacher else None

    def hide_vehicle(self, batch):
        """Unknown-vehicle augmentation: in a random share of windows every node's ID becomes
        the OOV bucket, so the model must also judge a window from ID-agnostic features (an
        unseen vehicle's IDs are all out of vocabulary)."""
        p = self.cfg.vehicle_dropout
        if not self.training or p <= 0:
            return batch
        hide = torch.rand(batch.num_graphs, device=batch.node_id.device) < p
        batch = batch.clone()
        batch.node_id = batch.node_id.masked_fill(hide[batch.batch], 0)
        return batch

    def forward(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of a batch (what Fabric's wrapped module calls)."""
        return self.training_loss(batch)

    def training_loss(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self.hide_vehicle(batch)
        if self.kd is not None:
            teacher = self.teacher
            teacher.eval()
            features = {"return_features": True} if self.objective == "classify" else {}
            with torch.no_grad():
                t_out = teacher(batch, **features)
            s_out = self.model(batch, **features)
            loss, parts = self.kd(s_out, t_out, batch)
            return loss, {k: float(v) for k, v in parts.items()}
        if self.objective == "classify":
            logits = self.model(batch)
            loss = nn.functional.cross_entropy(logits.float(), batch.y, weight=self.class_weights)
            return loss, {"ce": float(loss.detach())}
        parts = self.model.loss(batch)
        return parts["loss"], {k: float(v.detach()) for k, v in parts.items() if k != "loss"}

    @torch.no_grad()
    def validate(self, loader) -> dict[str, float]:
        """Validation loss and, for a classifier, F1 (the monitored metric)."""
        self.model.eval()
        tot, n, tp, fp, fn = 0.0, 0, 0, 0, 0
        for batch in loader:
            if self.objective == "classify":
                logits = self.model(batch).float()
                tot += float(nn.functional.cross_entropy(logits, batch.y, reduction="sum"))
                pred = logits.argmax(-1)
                tp += int(((pred == 1) & (batch.y == 1)).sum())
                fp += int(((pred == 1) & (batch.y == 0)).sum())
                fn += int(((pred == 0) & (batch.y == 1)).sum())
            else:
                tot += float(self.model.loss(batch)["loss"]) * batch.num_graphs
            n += batch.num_graphs
        out = {"val_loss": tot / max(n, 1)}
        if self.objective == "classify":
            out["val_f1"] = 2 * tp / max(2 * tp + fp + fn, 1)
        self.model.train()
        return out

    @property
    def monitor(self) -> tuple[str, str]:
        """(metric, mode) for early stopping and the best checkpoint."""
        return ("val_f1", "max") if self.objective == "classify" else ("val_loss", "min")
