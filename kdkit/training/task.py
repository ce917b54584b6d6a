"""``Task``: a model, its loss (cross-entropy, VGAE reconstruction, or KD from a teacher) and its
validation metric: the unit both trainers fit."""
from __future__ import annotations

import copy

import torch
from torch import nn

from kdkit.config import TrainConfig
from kdkit.models.distill import DistillationLoss, FusionKD, augmented_kd, perturb_windows, sensitivity_kd
from kdkit.models.thresholds import GAT_THRESHOLD, is_attack


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
        if teacher is not None and cfg.kd_augment != "off" and self.objective != "reconstruct":
            raise ValueError(f"config key 'kd_augment'={cfg.kd_augment!r}: the KD on corrupted windows is for "
                             f"VGAE students; this student is a {self.kind} (set kd_augment to 'off')")
        if teacher is not None and self.objective == "fuse":
            self.kd = FusionKD.from_models(model, teacher, temperature=cfg.kd_temperature, alpha=cfg.kd_alpha,
                                           beta=cfg.kd_feature_weight, score_weight=cfg.kd_score_weight,
                                           class_weight=class_weights)
        elif teacher is not None:
            extra = {"class_weight": class_weights} if self.objective == "classify" else {}
            self.kd = DistillationLoss.from_models(model, teacher, temperature=cfg.kd_temperature, alpha=cfg.kd_alpha,
                                                   beta=cfg.kd_feature_weight, latent_weight=cfg.kd_latent_weight,
                                                   edge_kd_weight=cfg.kd_edge_weight, **extra)
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
        batch = copy.copy(batch)  # shallow: the same tensors, node_id replaced below (a clone copied all)
        batch.node_id = batch.node_id.masked_fill(hide[batch.batch], 0)
        return batch

    def augmented_loss(self, batch, loss, parts, s_out, t_out):
        """Add the VGAE KD on corrupted copies of ``batch`` (``kd_augment``): the student learns how
        the teacher scores windows unlike the training ones (an unknown attack is one)."""
        corrupted = perturb_windows(batch)
        with torch.no_grad():
            t_cor = self.teacher(corrupted)
        s_cor = self.model(corrupted)
        if self.cfg.kd_augment == "rise":
            aug = sensitivity_kd(s_out, s_cor, t_out, t_cor, batch, corrupted)
        else:
            aug = augmented_kd(s_cor, t_cor, corrupted)
        loss = loss + self.cfg.kd_augment_weight * aug
        return loss, {**parts, "augment_kd": aug.detach(), "total": loss.detach()}

    def forward(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss of a batch (what Fabric's wrapped module calls)."""
        return self.training_loss(batch)

    def training_loss(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, components)``; the components are detached 0-dim tensors on the loss's device.

        Nothing is read to the host here: a ``float()`` per step would wait for the device every
        step. The trainer reads the losses a few times per epoch.
        """
        batch = self.hide_vehicle(batch)
        if self.kd is not None:
            teacher = self.teacher
            teacher.eval()
            features = {"return_features": True} if self.objective == "classify" else {}
            with torch.no_grad():
                t_out = teacher(batch, **features)
            s_out = self.model(batch, **features)
            loss, parts = self.kd(s_out, t_out, batch)
            if self.objective == "reconstruct" and self.cfg.kd_augment != "off":
                loss, parts = self.augmented_loss(batch, loss, parts, s_out, t_out)
            return loss, {k: v.detach() for k, v in parts.items()}
        if self.objective == "classify":
            logits = self.model(batch)
            loss = nn.functional.cross_entropy(logits.float(), batch.y, weight=self.class_weights)
            return loss, {"ce": loss.detach()}
        if self.objective == "fuse":
            parts = self.model.loss(batch, class_weight=self.class_weights)
            return parts["loss"], {k: v for k, v in parts.items() if k != "loss"}
        parts = self.model.loss(batch)
        return parts["loss"], {k: v.detach() for k, v in parts.items() if k != "loss"}

    @torch.no_grad()
    def validate(self, loader) -> dict[str, float]:
        """Validation loss and, for a classifier, F1 (the monitored metric), over all ranks.

        Under DDP every rank scores its own shard; the sums (loss, windows, TP, FP, FN) are added
        over the ranks (``torch.distributed.all_reduce``) before the loss and F1 are computed, so
        the result is the one process's on the union of the shards (an F1 averaged over ranks is
        not: shards differ in size and attack share). Every rank returns the same global values.
        The sums stay on the device until the end (no host read per batch).
        """
        self.model.eval()
        device = next(self.model.parameters()).device
        # [summed loss, windows, tp, fp, fn]; float64 keeps the counts exact far beyond any set size
        stats = torch.zeros(5, dtype=torch.float64, device=device)
        for batch in loader:
            if self.objective in ("classify", "fuse"):
                out = self.model(batch)
                logits = (out.logits if self.objective == "fuse" else out).float()
                # the decision evaluation makes: attack probability >= 0.5 (ties included)
                pred, y = is_attack(torch.softmax(logits, dim=-1)[:, 1], GAT_THRESHOLD).long(), batch.y
                if self.objective == "fuse":  # the pair's/student's whole loss: CE + attack-free reconstruction
                    stats[0] += self.model.loss(batch, out)["loss"].detach().double() * batch.num_graphs
                else:
                    stats[0] += nn.functional.cross_entropy(logits, y, reduction="sum").double()
                stats[2] += ((pred == 1) & (y == 1)).sum()
                stats[3] += ((pred == 1) & (y == 0)).sum()
                stats[4] += ((pred == 0) & (y == 1)).sum()
            else:
                stats[0] += self.model.loss(batch)["loss"].detach().double() * batch.num_graphs
            stats[1] += batch.num_graphs
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(stats, op=torch.distributed.ReduceOp.SUM)
        tot, n, tp, fp, fn = stats.tolist()
        out = {"val_loss": tot / max(n, 1)}
        if self.objective in ("classify", "fuse"):
            out["val_f1"] = 2 * tp / max(2 * tp + fp + fn, 1)
        self.model.train()
        return out

    @property
    def monitor(self) -> tuple[str, str]:
        """(metric, mode) for early stopping and the best checkpoint."""
        return ("val_f1", "max") if self.objective in ("classify", "fuse") else ("val_loss", "min")

    @property
    def tiebreak(self) -> str | None:
        """The lower-is-better metric that decides between epochs of equal :attr:`monitor` value:
        a classifier's validation F1 often reaches 1.0 in the first epochs, and the earliest of
        those is not the best model (its validation loss still falls); None for the VGAE."""
        return "val_loss" if self.objective in ("classify", "fuse") else None
