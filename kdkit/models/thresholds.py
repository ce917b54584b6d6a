"""Choosing a decision threshold on anomaly scores from validation data (quantile of attack-free
scores, or Youden's J on labelled windows)."""
from __future__ import annotations

import numpy as np
import torch


def choose_threshold(scores, labels=None, quantile: float = 0.99) -> float:
    """Choose an anomaly-score threshold; a window is an attack when ``score >= threshold``.

    Args:
        scores: per-window scores (array-like or tensor).
        labels: 0/1 labels of the same windows, or None for attack-free validation data.
        quantile: without labels, the quantile of the (normal) scores. Default 0.99.

    Returns:
        With labels, the ROC threshold maximising Youden's J = TPR - FPR; without, the
        ``quantile`` of ``scores``.
    """
    s = torch.as_tensor(scores).detach().cpu().double().numpy().ravel()
    if s.size == 0:
        raise ValueError("choose_threshold: no scores given")
    if labels is None:
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"quantile={quantile} must be in (0, 1]")
        return float(np.quantile(s, quantile))
    from sklearn.metrics import roc_curve

    y = torch.as_tensor(labels).detach().cpu().numpy().ravel()
    if y.shape != s.shape:
        raise ValueError(f"choose_threshold: {s.size} scores but {y.size} labels")
    if len(np.unique(y)) < 2:
        raise ValueError("choose_threshold: labels hold one class only; pass labels=None to "
                         "use a quantile of attack-free scores")
    fpr, tpr, thresholds = roc_curve(y, s)
    return float(thresholds[int(np.argmax(tpr - fpr))])
