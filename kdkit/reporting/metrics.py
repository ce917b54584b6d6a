"""Metrics per test scenario, for classifiers (GAT) and anomaly detectors (VGAE).

    kdkit evaluate --checkpoint runs/hcrl_sa_gat_teacher/checkpoints/best.pt --dataset hcrl_sa --json

For every official test folder and overall: accuracy, precision, recall, F1, MCC, ROC-AUC,
PR-AUC, detection rate at 1 % false-positive rate, the confusion matrix, and recall per
attack type. A GAT's score is its attack probability, a VGAE's its anomaly score; a window is
an attack when ``score >= threshold`` (:func:`kdkit.models.thresholds.is_attack`; 0.5 for a GAT,
the threshold stored with the model for a VGAE).

A metric that is undefined for a scenario is None, never a made-up 0: precision when nothing
was predicted attack, recall and F1 when the scenario has no attack windows, MCC, ROC-AUC,
PR-AUC and the detection rate when it has one class only. :func:`format_table` prints them as
``-``. MCC is 0, its limit, when both classes are there but every window is decided the same way.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from kdkit.data.graphs import GraphSet
from kdkit.data.loader import collate_indices, eval_batch_size, shard_bounds
from kdkit.models.thresholds import is_attack


def binary_metrics(y_true: np.ndarray, score: np.ndarray, threshold: float) -> dict:
    """All window-level metrics for one set of scores (attack: ``score >= threshold``).

    Undefined ones are None: precision without predicted attacks; recall and F1 without attack
    windows; MCC, ROC-AUC, PR-AUC and detection at 1 % FPR with one class only; the
    false-positive rate without normal windows. MCC is 0 when both classes are there but every
    window is decided the same way (alarm on all, or on none): its limit, the usual convention
    (sklearn's), so that a model that cannot tell the classes apart scores as chance in a mean over
    seeds instead of dropping out of it. Detection at 1 % FPR is a ranking measure: the best recall
    any threshold reaches at a false-positive rate <= 1 %, not the recall at ``threshold``.
    """
    from sklearn import metrics as skm  # here: ~0.3 s of every process's start-up otherwise

    y_true = np.asarray(y_true).astype(int)
    score = np.asarray(score, dtype=np.float64)
    if not np.isfinite(score).all():
        raise ValueError(f"{int((~np.isfinite(score)).sum())} scores are NaN or infinite; the model diverged")
    pred = is_attack(score, threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y_true, pred, labels=[0, 1]).ravel()
    both = len(np.unique(y_true)) == 2
    out = {
        "windows": int(len(y_true)), "attack_windows": int(y_true.sum()),
        "accuracy": float((tp + tn) / max(len(y_true), 1)),
        "precision": float(tp / (tp + fp)) if tp + fp else None,
        "recall": float(tp / (tp + fn)) if tp + fn else None,
        "f1": float(2 * tp / (2 * tp + fp + fn)) if tp + fn else None,
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
    """Highest true-positive rate reachable with false-positive rate <= ``max_fpr``, over every
    threshold (each distinct score); ``roc_curve``'s default dropped thresholds that lie on a line
    between two others, which can be the best one under the bound (0.1 reported where 0.2 is reached)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y_true, score, drop_intermediate=False)
    ok = fpr <= max_fpr + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


@torch.no_grad()
def predict_scores(model: torch.nn.Module, gs: GraphSet, batch_size: int | None = None,
                   device: str | torch.device = "cpu", bar: tqdm | None = None,
                   part: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Window scores of a GraphSet: attack probability (GAT), anomaly score (VGAE) or fused score (fusion).

    ``batch_size``: windows per pass (default :func:`eval_batch_size` of ``device``). ``bar``: a
    progress bar advanced by one per batch (default none). ``part=(rank, world_size)``: score
    only that rank's contiguous block of windows (:func:`shard_bounds`; default all).
    """

    model.eval()
    bs = batch_size or eval_batch_size(device)
    start, stop = shard_bounds(len(gs), *part)
    out = []
    for lo in range(start, stop, bs):
        if bar is not None:
            bar.update(1)
        batch = collate_indices(gs, torch.arange(lo, min(lo + bs, stop))).to(device)
        if hasattr(model, "window_score"):  # a fusion model: its fused score
            out.append(model.window_score(batch).float().cpu())
        elif hasattr(model, "anomaly_score"):
            out.append(model.anomaly_score(batch).float().cpu())
        else:
            out.append(torch.softmax(model(batch).float(), dim=-1)[:, 1].cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


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
            per_type[name] = {"windows": int(mask.sum()), "recall": float(is_attack(score[mask], threshold).mean())}
    res["per_attack_type"] = per_type
    return res


def evaluate_model(model: torch.nn.Module, splits: dict[str, GraphSet], threshold: float, batch_size: int | None = None,
                   device: str | torch.device = "cpu", scenarios: list[str] | None = None,
                   progress: bool | None = None, repeats: Iterable[str] = ()) -> dict:
    """Evaluate on every scenario (default: all splits except train/val) and overall.

    Args:
        model: a GAT (scored by attack probability) or VGAE (anomaly score).
        splits: ``{name: GraphSet}``, e.g. ``prepare(...).splits``.
        threshold: a window is an attack when its score is ``>=`` this.
        batch_size: windows per forward pass. Default :func:`eval_batch_size` of ``device``.
        device: where the model runs. Default CPU.
        scenarios: which splits to evaluate. Default: all but train/val.
        progress: a progress bar over the batches of all scenarios (on stderr). Default None:
            on when stderr is a terminal (the CLI), off otherwise (notebooks, logs).
        repeats: test recordings (paths) that repeat one of an earlier scenario or a training
            one (:func:`repeated_tests`): scored in their scenario, left out of ``overall``.

    Returns:
        ``{"scenarios": {name: metrics}, "overall": metrics, "scores": {name: ndarray}}``.
    """
    names = scenarios or [k for k in splits if k not in ("train", "val")]
    show = _isatty(sys.stderr) if progress is None else progress
    bs = batch_size or eval_batch_size(device)
    total = sum(math.ceil(len(splits[name]) / bs) for name in names)
    scores = {}
    with tqdm(total=total, desc="evaluate", unit="batch", leave=False, disable=not show) as bar:
        for name in names:
            bar.set_postfix_str(name, refresh=False)
            scores[name] = predict_scores(model, splits[name], bs, device, bar=bar)
    return evaluate_all_scores(splits, scores, threshold, repeats)


def repeated_tests(info: Mapping) -> set[str]:
    """The test recordings of a prepared dataset's ``info`` that ``overall`` leaves out: those that
    repeat a recording of an earlier scenario (the same content: ``overall`` counts their windows
    once) and those that are training recordings (``tests_in_training``: in-sample, no test; their
    scenario still reports them, with the warning ``kdkit data info`` gives)."""
    return {a for a, _ in info.get("test_repeats", [])} | {a for a, _ in info.get("tests_in_training", [])}


def evaluate_all_scores(splits: dict[str, GraphSet], scores: dict[str, np.ndarray], threshold: float,
                        repeats: Iterable[str] = ()) -> dict:
    """:func:`evaluate_model`'s result from scores already computed (``{scenario: scores}``, in
    window order), e.g. gathered from the ranks of a multi-process run. ``repeats``: as
    :func:`evaluate_model`."""
    results, all_y, all_s, all_t, all_keep = {}, [], [], [], []
    repeats = set(repeats)
    for name, s in scores.items():
        if len(s) != len(splits[name]):
            raise ValueError(f"{name}: {len(s)} scores for {len(splits[name])} windows")
        gs = splits[name]
        results[name] = evaluate_scores(gs, s, threshold)
        all_y.append(gs.y.numpy())
        all_s.append(s)
        all_t.append(np.asarray(gs.attack_types, dtype=object)[gs.attack_type.numpy()])
        # a recording an earlier scenario holds too (once in overall), or a training one: out of overall
        all_keep.append(~np.isin(gs.file_index.numpy(), [i for i, f in enumerate(gs.files) if f in repeats]))
    overall = {}
    if scores:
        y, s, types, keep = (np.concatenate(a) for a in (all_y, all_s, all_t, all_keep))
        pooled_all = keep.size > 0 and not keep.any()  # every test recording a training one: overall pools them, and says so
        if not pooled_all:
            y, s, types = y[keep], s[keep], types[keep]
        overall = binary_metrics(y, s, threshold)
        if pooled_all:
            overall["in_sample"] = True
        overall["per_attack_type"] = {str(t): {"windows": int((types == t).sum()),
                                               "recall": float(is_attack(s[types == t], threshold).mean())}
                                      for t in dict.fromkeys(types.tolist()) if t != "normal"}  # (index 0)
    return {"scenarios": results, "overall": overall, "scores": dict(scores)}


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


# column -> header; the two long names are abbreviated (documented in the table's legend)
TABLE_COLUMNS = {"windows": "windows", "attack_windows": "attacks", "accuracy": "accuracy", "precision": "precision",
                 "recall": "recall", "f1": "f1", "mcc": "mcc", "false_positive_rate": "fpr", "roc_auc": "roc_auc",
                 "detection_at_1pct_fpr": "det@1%fpr"}


def format_table(results: dict) -> str:
    """A plain-text table of the main metrics per scenario and overall, with a legend.

    Headers are the metric names of the results, except ``attacks`` (``attack_windows``), ``fpr``
    (``false_positive_rate``) and ``det@1%fpr`` (``detection_at_1pct_fpr``: the highest recall at
    a false-positive rate <= 1 %); an undefined metric prints as ``-``.
    """
    items = list(results["scenarios"].items()) + [("overall", results["overall"])]
    name_w = max([len("scenario"), *(len(name) for name, _ in items)]) + 2
    widths = {c: max(len(h), 9) + 2 for c, h in TABLE_COLUMNS.items()}
    rows = [f"{'scenario':<{name_w}}" + "".join(f"{h:>{widths[c]}}" for c, h in TABLE_COLUMNS.items())]
    for name, m in items:
        cells = []
        for c in TABLE_COLUMNS:
            v, w = m.get(c), widths[c]
            cells.append(f"{'-':>{w}}" if v is None or (isinstance(v, float) and math.isnan(v))
                         else f"{v:>{w}d}" if isinstance(v, int) else f"{v:>{w}.4f}")
        rows.append(f"{name:<{name_w}}" + "".join(cells))
    rows.append("attacks: attack windows; fpr: false-positive rate (share of normal windows alarmed); det@1%fpr: "
                "the best recall any threshold reaches at <= 1 % false-positive rate (a ranking measure, not the "
                "recall at the model's threshold)")
    rows.append("-: undefined (precision: no predicted attacks; recall, f1: no attack windows; mcc, roc_auc, "
                "det@1%fpr: one class only; fpr: no normal windows); mcc 0: every window decided the same way")
    return "\n".join(rows)
