"""Decision thresholds on window scores: the one rule every part of kdkit uses, and choosing a
threshold from validation data (a false-positive budget on attack-free scores, or Youden's J on
labelled windows).

The rule: a window is an attack when ``score >= threshold`` (ties are attacks). A GAT's score is
its attack probability ``softmax(logits)[:, 1]`` with threshold :data:`GAT_THRESHOLD`; a VGAE's is
its anomaly score with the threshold stored in its checkpoint. Training's validation F1,
``kdkit evaluate``, the reports and the README's gateway example all decide with it.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger(__name__)

GAT_THRESHOLD = 0.5  # a GAT window is an attack when its attack probability is >= 0.5


def is_attack(score, threshold: float):
    """``score >= threshold``: the attack decision, for a numpy array or a tensor (same type back)."""
    return score >= threshold


def choose_threshold(scores, labels=None, quantile: float = 0.99) -> float:
    """Choose an anomaly-score threshold; a window is an attack when ``score >= threshold``.

    Args:
        scores: per-window scores (array-like or tensor).
        labels: 0/1 labels of the same windows, or None for attack-free validation data.
        quantile: without labels, the share of the (normal) scores that must stay below the
            threshold: at most ``floor((1 - quantile) * n)`` of the ``n`` scores are ``>=`` it, so
            the false-positive rate on these scores is ``<= 1 - quantile`` (ties included).
            Default 0.99.

    Returns:
        With labels, the ROC threshold maximising Youden's J = TPR - FPR (scikit-learn's
        ``roc_curve`` thresholds follow the same ``>=`` rule). Without, the smallest of the
        scores that keeps the false-positive budget; when the budget allows no false positive
        (``(1 - quantile) * n < 1``) the next float above the largest score.
    """
    s = torch.as_tensor(scores, dtype=torch.float64).detach().cpu().numpy().ravel()  # lists: no float32 rounding
    if s.size == 0:
        raise ValueError("choose_threshold: no scores given")
    if labels is None:
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"quantile={quantile} must be in (0, 1]")
        return quantile_threshold(s, quantile)

    y = torch.as_tensor(labels).detach().cpu().numpy().ravel()
    if y.shape != s.shape:
        raise ValueError(f"choose_threshold: {s.size} scores but {y.size} labels")
    if len(np.unique(y)) < 2:
        raise ValueError("choose_threshold: labels hold one class only; pass labels=None to "
                         "use a quantile of attack-free scores")
    t = youden_threshold(s, y)
    if t is None:
        # no threshold tells attacks from normal windows (constant scores, or attacks scoring lower):
        # roc_curve's +inf, a model that never alarms, was returned without a word
        normal = s[y == 0]
        t = quantile_threshold(normal, quantile)
        log.warning("choose_threshold: no threshold separates the %d attack windows from the %d normal ones "
                    "(Youden's J <= 0: the scores do not rank attacks higher); the threshold is the %g quantile "
                    "of the normal windows' scores instead, %.6g", int((y != 0).sum()), normal.size, quantile, t)
    return t


def youden_threshold(scores, labels) -> float | None:
    """The ROC threshold maximising Youden's J = TPR - FPR on labelled windows of both classes; None
    when no threshold has J > 0 (``roc_curve``'s first threshold, +inf, alarms on nothing: never
    chosen)."""
    from sklearn.metrics import roc_curve  # here: ~0.3 s of every process's start-up otherwise

    fpr, tpr, thresholds = roc_curve(np.asarray(labels).ravel(), np.asarray(scores, dtype=np.float64).ravel())
    j = (tpr - fpr)[1:]
    if j.size == 0 or j.max() <= 0:
        return None
    return float(thresholds[1:][int(np.argmax(j))])


def midway_threshold(scores: np.ndarray, quantile: float) -> float:
    """:func:`quantile_threshold`'s budget, with the threshold midway between the highest score that
    must stay below it and the lowest one allowed to alarm (not on that score itself): an engine whose
    float rounding differs (the native engine, an exported package) then decides the boundary window
    alike. Without it an adapted fusion model's calibration window scored exactly 0.0 (an alarm) in
    the checkpoint and -2.3e-05 in its ``.pt2``."""
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    exact = quantile_threshold(s, quantile)
    below = s[s < exact]
    if not below.size:
        return exact
    mid = (float(below[-1]) + exact) / 2.0
    return mid if mid > below[-1] else exact


def quantile_threshold(scores: np.ndarray, quantile: float) -> float:
    """The smallest score ``t`` with at most ``floor((1 - quantile) * n)`` scores ``>= t``.

    A plain ``np.quantile`` does not keep that budget under the ``>=`` rule: on ``0..100`` its
    0.9 quantile is 90, and 11 of the 101 scores (10.9 %) are ``>= 90``; with ties at the
    quantile even more. Here ``0..100`` at 0.9 gives 91 (10 scores, 9.9 %).
    """
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    n = s.size
    allowed = min(int(np.floor((1.0 - quantile) * n + 1e-9)), n - 1)  # false positives the budget allows
    boundary = s[n - allowed - 1]  # the highest score that must stay below the threshold
    above = s[s > boundary]
    if above.size:
        return _float32_up(float(above[0]))
    return _float32_up(float(boundary), ulps=ABOVE_ALL_ULPS)


ABOVE_ALL_ULPS = 16
"""When no score may alarm (fewer than ``1 / (1 - quantile)`` scores), the threshold is this many
float32 steps above the highest score instead of one: a window's score moves by a few steps when it
is scored in another batch (BLAS blocks rows by the batch's size), and one step was measured too
little (a fusion student's highest calibration window, fitted in batches of 256, alarmed when its
run scored the split in larger ones)."""


def _float32_up(t: float, ulps: int = 0) -> float:
    """The smallest float32 value >= ``t``, then ``ulps`` float32 steps above it.

    Models score in float32 and compare (or subtract) the threshold there: a float64 threshold just
    above the highest allowed score rounds down onto it, and that window alarms after all. On the
    float32 grid, ``score >= t`` means the same in either precision."""
    t32 = np.float32(t)
    if t32 < t:
        t32 = np.nextafter(t32, np.float32(np.inf))
    for _ in range(ulps):
        t32 = np.nextafter(t32, np.float32(np.inf))
    return float(t32)
