"""Metrics per test scenario, for classifiers (GAT) and anomaly detectors (VGAE).

    kdkit evaluate --checkpoint runs/hcrl_sa_gat_teacher/checkpoints/best.pt --dataset hcrl_sa --json

For every official test folder and overall: accuracy, precision, recall, F1, MCC, ROC-AUC,
PR-AUC, detection rate at 1 % false-positive rate, the confusion matrix, and recall per
attack type. A GAT's score is its attack probability (decision at 0.5); a VGAE's score is
its anomaly score, decided by the threshold stored with the model.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from sklearn import metrics as skm

from kdkit.data.graphs import GraphSet
from kdkit.data.loader import graph_loader


def binary_metrics(y_true: np.ndarray, score: np.ndarray, threshold: float) -> dict:
    """All window-level metrics for one set of scores; undefined ones (one class only) are None."""
    y_true = np.asarray(y_true).astype(int)
    score = np.asarray(score, dtype=np.float64)
    if not np.isfinite(score).all():
        raise ValueError(f"{int((~np.isfinite(score)).sum())} scores are NaN or infinite; the model diverged")
    pred = (score > threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y_true, pred, labels=[0, 1]).ravel()
    both = len(np.unique(y_true)) == 2
    out = {
        "windows": int(len(y_true)), "attack_windows": int(y_true.sum()),
        "accuracy": float((tp + tn) / max(len(y_true), 1)),
        "precision": float(tp / (tp + fp)) if tp + fp else 0.0,
        "recall": float(tp / (tp + fn)) if tp + fn else None,
        "f1": float(skm.f1_score(y_true, pred, zero_division=0.0)),
        "mcc": float(skm.matthews_corrcoef(y_true, pred)) if both else None,
        "roc_auc": float(skm.roc_auc_score(y_true, score)) if both else None,
        "pr_auc": float(skm.average_precision_score(y_true, score)) if both else None,
        "detection_at_1pct_fpr": detection_rate_at_fpr(y_true, score, 0.01) if both else None,
        "false_positive_rate": float(fp / (fp + tn)) if fp + tn else None,
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
        "threshold": float(threshold),
    }
    return out


def detection_rate_at_fpr(y_true: np.ndarray, score: np.ndarray, max_fpr: float) -> float:
    """Highest true-positive rate reachable with false-positive rate <= ``max_fpr``."""
    fpr, tpr, _ = skm.roc_curve(y_true, score)
    ok = fpr <= max_fpr + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


@torch.no_grad()
def predict_scores(model: torch.nn.Module, gs: GraphSet, batch_size: int = 256, device: str | torch.device = "cpu") -> np.ndarray:
    """Window scores of a GraphSet: attack probability (GAT) or anomaly score (VGAE)."""

    model.eval()
    out = []
    for batch in graph_loader(gs, batch_size=batch_size, shuffle=False, num_workers=0):
        batch = batch.to(device)
        if hasattr(model, "anomaly_score"):
            out.append(model.anomaly_score(batch).float().cpu())
        else:
            out.append(torch.softmax(model(batch).float(), dim=-1)[:, 1].cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


def evaluate_scores(gs: GraphSet, score: np.ndarray, threshold: float) -> dict:
    """Metrics overall plus recall per attack type for one scenario."""
    y = gs.y.numpy()
    res = binary_metrics(y, score, threshold)
    per_type = {}
    types = gs.attack_type.numpy()
    for i, name in enumerate(gs.attack_types):
        if i == 0:
            continue
        mask = types == i
        if mask.any():
            per_type[name] = {"windows": int(mask.sum()), "recall": float((score[mask] > threshold).mean())}
    res["per_attack_type"] = per_type
    return res


def evaluate_model(model: torch.nn.Module, splits: dict[str, GraphSet], threshold: float, batch_size: int = 256,
                   device: str | torch.device = "cpu", scenarios: list[str] | None = None) -> dict:
    """Evaluate on every scenario (default: all splits except train/val) and overall.

    Returns ``{"scenarios": {name: metrics}, "overall": metrics, "scores": {name: ndarray}}``.
    """
    names = scenarios or [k for k in splits if k not in ("train", "val")]
    results, all_y, all_s, scores = {}, [], [], {}
    for name in names:
        s = predict_scores(model, splits[name], batch_size, device)
        scores[name] = s
        results[name] = evaluate_scores(splits[name], s, threshold)
        all_y.append(splits[name].y.numpy())
        all_s.append(s)
    overall = binary_metrics(np.concatenate(all_y), np.concatenate(all_s), threshold) if names else {}
    return {"scenarios": results, "overall": overall, "scores": scores}


def format_table(results: dict) -> str:
    """A plain-text table of the main metrics per scenario."""
    cols = ("windows", "attack_windows", "accuracy", "precision", "recall", "f1", "mcc", "roc_auc", "detection_at_1pct_fpr")
    head = f"{'scenario':<42}" + "".join(f"{c[:10]:>11}" for c in cols)
    rows = [head]
    for name, m in list(results["scenarios"].items()) + [("overall", results["overall"])]:
        cells = []
        for c in cols:
            v = m.get(c)
            cells.append(f"{'-':>11}" if v is None or (isinstance(v, float) and math.isnan(v))
                         else f"{v:>11d}" if isinstance(v, int) else f"{v:>11.4f}")
        rows.append(f"{name:<42}" + "".join(cells))
    return "\n".join(rows)
