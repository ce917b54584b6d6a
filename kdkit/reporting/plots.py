"""Figures for notebooks and reports; every function returns a matplotlib ``Figure``.

    from kdkit import plots
    fig = plots.training_curves(summary["history"])
    fig = plots.roc_pr_curves(labels, scores)          # {scenario: y}, {scenario: score}
    fig = plots.confusion_matrices(summary["test"])
    fig = plots.f1_per_scenario({"teacher": {...}, "student (KD)": {...}})
    fig = plots.benchmark_bars(rows, "graphs_per_s", "graphs / s")
    fig.savefig("curves.png")                         # or RunRecord.figure(fig, name) in a notebook

Figures are closed in pyplot right after they are drawn: a notebook shows a figure once,
as the value of its cell, and a long CLI run does not pile up open figures.
"""
from __future__ import annotations

import textwrap
from typing import Iterable, Mapping, Sequence

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from matplotlib.lines import Line2D


def _short(name: str, width: int = 22) -> str:
    """Scenario folder names are long (test_03_known_vehicle_unknown_attack): wrap them."""
    return "\n".join(textwrap.wrap(name.replace("_", " "), width)) or name


def _new(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.0, 3.6), **kw) -> tuple[Figure, np.ndarray]:
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False, **kw)
    plt.close(fig)
    return fig, axes.ravel()


def training_curves(history: Sequence[Mapping], title: str = "") -> Figure:
    """Loss per epoch (train and validation) and, when recorded, validation F1.

    Args:
        history: ``summary["history"]``: one dict per epoch with ``epoch``, ``train_loss``,
            ``val_loss`` and for a classifier ``val_f1``.
        title: figure title. Default none.
    """
    has_f1 = any("val_f1" in h for h in history)
    fig, (ax, *rest) = _new(2 if has_f1 else 1)
    epochs = [int(h["epoch"]) + 1 for h in history]
    for key, style in (("train_loss", "o-"), ("val_loss", "s--")):
        if any(key in h for h in history):
            ax.plot(epochs, [h.get(key, np.nan) for h in history], style, label=key.replace("_", " "))
    ax.set(xlabel="epoch", ylabel="loss", title="loss")
    ax.legend()
    if has_f1:
        rest[0].plot(epochs, [h.get("val_f1", np.nan) for h in history], "o-", color="tab:green")
        rest[0].set(xlabel="epoch", ylabel="F1", title="validation F1", ylim=(0, 1.02))
    for a in fig.axes:
        a.xaxis.get_major_locator().set_params(integer=True)
        a.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def roc_pr_curves(labels: Mapping[str, np.ndarray], scores: Mapping[str, np.ndarray], title: str = "") -> Figure:
    """ROC and precision-recall curves, one line per test scenario.

    Scenarios with one class only (no attack windows) have no curve and are listed as such.
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    fig, (roc, pr) = _new(2, size=(5.5, 4.2))
    skipped = []
    for name, y in labels.items():
        y, s = np.asarray(y).astype(int), np.asarray(scores[name], dtype=float)
        if len(np.unique(y)) < 2:
            skipped.append(name)
            continue
        fpr, tpr, _ = roc_curve(y, s)
        prec, rec, _ = precision_recall_curve(y, s)
        roc.plot(fpr, tpr, label=f"{_short(name, 40)} (AUC {roc_auc_score(y, s):.3f})")
        pr.plot(rec, prec, label=f"{_short(name, 40)} (AP {average_precision_score(y, s):.3f})")
    roc.plot([0, 1], [0, 1], ":", color="grey")
    roc.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.02))
    pr.set(xlabel="recall", ylabel="precision", title="precision-recall", xlim=(0, 1), ylim=(0, 1.02))
    for a in (roc, pr):
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7, loc="lower right" if a is roc else "lower left")
    if skipped:
        fig.text(0.01, 0.01, "one class only, no curve: " + ", ".join(skipped), fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_matrices(results: Mapping, title: str = "") -> Figure:
    """One 2x2 confusion matrix per scenario and overall, from ``summary["test"]``."""
    items = list(results["scenarios"].items()) + ([("overall", results["overall"])] if results.get("overall") else [])
    ncols = min(len(items), 5)
    nrows = -(-len(items) // ncols)
    fig, axes = _new(ncols, nrows, size=(2.7, 2.9))
    for ax, (name, m) in zip(axes, items):
        cm = np.asarray(m["confusion_matrix"])
        ax.imshow(cm / max(cm.sum(), 1), cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, f"{v}", ha="center", va="center", color="black", fontsize=9)
        ax.set_xticks([0, 1], ["normal", "attack"])
        ax.set_yticks([0, 1], ["normal", "attack"])
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(_short(name), fontsize=8)
    for ax in axes[len(items):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def f1_per_scenario(f1: Mapping[str, Mapping[str, float]], title: str = "F1 per test scenario") -> Figure:
    """Grouped bars: scenarios on x, one bar per model.

    Args:
        f1: ``{model label: {scenario: f1}}``; a missing scenario is left blank, an undefined
            F1 (None: the scenario has no attack windows) gets no bar and the label ``n/a``.
    """
    models = list(f1)
    scenarios = list(dict.fromkeys(s for m in f1.values() for s in m))
    fig, (ax,) = _new(size=(max(6.0, 1.6 * len(scenarios) * max(len(models), 1) / 2), 4.0))
    width = 0.8 / max(len(models), 1)
    x = np.arange(len(scenarios))
    for i, name in enumerate(models):
        got = [f1[name].get(s, np.nan) for s in scenarios]
        vals = [np.nan if v is None else float(v) for v in got]
        pos = x + (i - (len(models) - 1) / 2) * width
        bars = ax.bar(pos, vals, width, label=name)
        ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.2f}" for v in vals], fontsize=7)
        for p, g in zip(pos, got):
            if g is None:
                ax.text(p, 0.01, "n/a", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [_short(s, 16) for s in scenarios], fontsize=8)
    ax.set(ylabel="F1", ylim=(0, 1.1), title=title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def model_comparison(rows: Sequence[Mapping], metrics: Iterable[tuple[str, str]] = (
        ("parameters", "parameters"), ("size_bytes", "bytes"), ("latency_ms_p50", "latency p50 (ms / window)"))) -> Figure:
    """One bar panel per metric (parameters, bytes, latency), one bar per model row.

    Args:
        rows: dicts with ``name`` and the metric keys; a row without a key gets no bar.
        metrics: ``(key, axis label)`` pairs, one panel each.
    """
    metrics = list(metrics)
    fig, axes = _new(len(metrics), size=(3.6, 3.4))
    names = [r["name"] for r in rows]
    for ax, (key, label) in zip(axes, metrics):
        vals = [float(r[key]) if r.get(key) is not None else np.nan for r in rows]
        bars = ax.bar(range(len(rows)), vals, color=[f"C{i}" for i in range(len(rows))])
        ax.bar_label(bars, labels=[_fmt(v) for v in vals], fontsize=7)
        ax.set_xticks(range(len(rows)), names, fontsize=8, rotation=15)
        ax.set_title(label, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _fmt(v: float) -> str:
    if not np.isfinite(v):
        return ""
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def _spread(values: list) -> tuple[float, float, float]:
    """(median, min, max) of per-repeat values, or of one ``{"median", "min", "max"}`` summary."""
    if len(values) == 1 and isinstance(values[0], Mapping):
        return float(values[0]["median"]), float(values[0]["min"]), float(values[0]["max"])
    vals = np.asarray([v for x in values for v in np.atleast_1d(x)], dtype=float)
    if not vals.size:
        return np.nan, np.nan, np.nan
    return float(np.median(vals)), float(vals.min()), float(vals.max())


def benchmark_bars(rows: Sequence[Mapping], metric: str, ylabel: str, group: str = "model", hue: str = "variant",
                   title: str = "", log: bool = False) -> Figure:
    """Median bars with the spread of the repeats as error bars (min to max).

    Args:
        rows: one dict per bar (or per measurement): ``group`` and ``hue`` keys name the bar,
            ``metric`` holds the per-repeat values (a list or one number), or a summary
            ``{"median", "min", "max"}`` as ``kdkit bench train`` reports it.
        metric: key of the values to plot, e.g. ``"graphs_per_s"``.
        ylabel: y-axis label.
        group: key whose values go on the x axis (default ``"model"``).
        hue: key whose values get one colour each (default ``"variant"``).
        title: figure title. Default none.
        log: logarithmic y axis (for throughputs that differ by orders of magnitude).
    """
    groups = list(dict.fromkeys(str(r[group]) for r in rows))
    hues = list(dict.fromkeys(str(r[hue]) for r in rows))
    fig, (ax,) = _new(size=(max(5.5, 1.3 * len(groups) * max(len(hues), 1) / 1.5), 4.0))
    width = 0.8 / max(len(hues), 1)
    x = np.arange(len(groups))
    for i, h in enumerate(hues):
        med, lo, hi = [], [], []
        for g in groups:
            m, vmin, vmax = _spread([r[metric] for r in rows if str(r[group]) == g and str(r[hue]) == h])
            med.append(m)
            lo.append(m - vmin if np.isfinite(m) else 0.0)
            hi.append(vmax - m if np.isfinite(m) else 0.0)
        bars = ax.bar(x + (i - (len(hues) - 1) / 2) * width, med, width, yerr=[lo, hi], capsize=3, label=h)
        ax.bar_label(bars, labels=[_fmt(v) for v in med], fontsize=7, padding=2)
    ax.set_xticks(x, groups, fontsize=8)
    ax.set(ylabel=ylabel, title=title or f"{ylabel} (median, bars: min-max of repeats)")
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def inference_bars(rows: Sequence[Mapping], title: str = "student inference, one core") -> Figure:
    """Throughput (messages/s) and single-window latency (bar p50, whisker up to p99) per variant.

    Args:
        rows: ``kdkit.compare.infer_rows(bench_infer(...))``: ``variant``, ``messages_per_s``,
            ``latency_ms_p50``, ``latency_ms_p99``.
    """
    fig, (thr, lat) = _new(2, size=(4.8, 3.6))
    names = [r["variant"] for r in rows]
    x = np.arange(len(rows))
    bars = thr.bar(x, [r["messages_per_s"] for r in rows], color=[f"C{i}" for i in x])
    thr.bar_label(bars, labels=[_fmt(r["messages_per_s"]) for r in rows], fontsize=7)
    thr.set(ylabel="messages / s", title="batched throughput")
    p50 = np.array([r["latency_ms_p50"] for r in rows], dtype=float)
    p99 = np.array([r["latency_ms_p99"] for r in rows], dtype=float)
    bars = lat.bar(x, p50, yerr=[np.zeros_like(p50), p99 - p50], capsize=3, color=[f"C{i}" for i in x])
    lat.bar_label(bars, labels=[f"{a:.2f} / {b:.2f}" for a, b in zip(p50, p99)], fontsize=7, padding=2)
    lat.set(ylabel="ms per window", title="latency p50 (whisker: p99)")
    for ax in (thr, lat):
        ax.set_xticks(x, names, fontsize=8, rotation=15)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- research figures of a run
def stamp(fig: Figure, label: str | None) -> Figure:
    """Writes ``label`` (e.g. :func:`kdkit.reporting.records.smoke_label`) across the figure; none: unchanged.

    A smoke run's timings are not a measurement: the stamp travels with the PNG wherever it is shown.
    """
    if label:
        fig.text(0.5, 0.5, label, ha="center", va="center", rotation=12, fontsize=13, color="tab:red", alpha=0.35,
                 weight="bold", wrap=True, gid="smoke-stamp")
        fig.text(0.99, 0.005, label, ha="right", va="bottom", fontsize=8, color="tab:red")
    return fig


def attack_recall(recall: Mapping[str, Mapping[str, Mapping[str, float]]],
                  title: str = "recall per attack type") -> Figure:
    """Grouped bars: one group per (scenario, attack type), one bar per model.

    Args:
        recall: ``{model label: {scenario: {attack type: recall}}}``, e.g. from each model's
            ``scenarios[name]["per_attack_type"]`` in a student notebook's metrics.json.
    """
    models = list(recall)
    groups = list(dict.fromkeys((sc, t) for m in recall.values() for sc, types in m.items() for t in types))
    fig, (ax,) = _new(size=(max(6.0, 0.45 * len(groups) * max(len(models), 1)), 4.0))
    width = 0.8 / max(len(models), 1)
    x = np.arange(len(groups))
    for i, name in enumerate(models):
        vals = [float(recall[name].get(sc, {}).get(t, np.nan)) for sc, t in groups]
        bars = ax.bar(x + (i - (len(models) - 1) / 2) * width, vals, width, label=name)
        ax.bar_label(bars, labels=[_fmt(v) for v in vals], fontsize=6)
    ax.set_xticks(x, [f"{t}\n{_scenario_tag(sc)}" for sc, t in groups], fontsize=7)
    ax.set(ylabel="recall (attack windows detected)", ylim=(0, 1.1), title=title)
    if models:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _scenario_tag(name: str) -> str:
    """``test_03_known_vehicle_unknown_attack`` -> ``test 03``: short enough for a tick label."""
    parts = name.split("_")
    return " ".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else _short(name, 14)


def score_histograms(labels: Mapping[str, np.ndarray], scores: Mapping[str, np.ndarray], threshold: float,
                     title: str = "") -> Figure:
    """Scores of normal and attack windows per scenario, with the decision threshold as a line.

    Args:
        labels: ``{scenario: y}`` (1 = attack).
        scores: ``{scenario: score}`` of one model.
        threshold: a window is an attack when its score is ``>=`` this.
        title: figure title. Default none.
    """
    names = list(scores)
    fig, axes = _new(min(len(names), 4) or 1, max(-(-len(names) // 4), 1), size=(3.4, 2.8))
    for ax, name in zip(axes, names):
        y, s = np.asarray(labels[name]).astype(int), np.asarray(scores[name], dtype=float)
        bins = np.histogram_bin_edges(np.concatenate([s, [threshold]]), bins=30)
        for cls, color, label in ((0, "tab:blue", "normal"), (1, "tab:red", "attack")):
            if (y == cls).any():
                ax.hist(s[y == cls], bins=bins, color=color, alpha=0.55, label=f"{label} ({int((y == cls).sum())})")
        ax.axvline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.3g}")
        ax.set_yscale("log")
        ax.set_title(_short(name, 30), fontsize=8)
        ax.set_xlabel("score", fontsize=8)
        ax.set_ylabel("windows", fontsize=8)
        ax.legend(fontsize=6)
    for ax in axes[len(names):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def roc_pr_over_teacher(labels: Mapping[str, np.ndarray], student: Mapping[str, np.ndarray],
                        teacher: Mapping[str, np.ndarray] | None, student_threshold: float,
                        teacher_threshold: float | None = None, student_label: str = "student (KD)") -> Figure:
    """Per scenario (one column each): the student's ROC (top row) and PR curves (bottom row) over
    the teacher's, with each model's operating point (its threshold) marked.

    Args:
        labels: ``{scenario: y}``.
        student, teacher: ``{scenario: score}``; teacher may be None (no curve).
        student_threshold, teacher_threshold: where each model decides (the marked point).
        student_label: legend name of the student.
    """
    from sklearn.metrics import precision_recall_curve, roc_curve

    names = [n for n in student if len(np.unique(np.asarray(labels[n]).astype(int))) == 2]
    fig, axes = _new(max(len(names), 1), 2, size=(3.3, 3.1))
    curves = [(teacher, teacher_threshold, "teacher", "grey", "--"),
              (student, student_threshold, student_label, "tab:orange", "-")]
    for col, name in enumerate(names):
        roc, pr = axes[col], axes[len(names) + col]
        y = np.asarray(labels[name]).astype(int)
        for scores, thr, label, color, ls in curves:
            if scores is None or name not in scores:
                continue
            s = np.asarray(scores[name], dtype=float)
            fpr, tpr, _ = roc_curve(y, s)
            prec, rec, _ = precision_recall_curve(y, s)
            roc.plot(fpr, tpr, ls=ls, color=color, label=label)
            pr.plot(rec, prec, ls=ls, color=color, label=label)
            if thr is not None:
                pred = s >= thr
                tp, fp = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum())
                op_fpr, op_tpr = fp / max(int((y == 0).sum()), 1), tp / max(int((y == 1).sum()), 1)
                roc.plot([op_fpr], [op_tpr], "o", color=color, ms=6, mec="black",
                         label=f"{label} at threshold {thr:.3g}")
                if tp + fp:
                    pr.plot([op_tpr], [tp / (tp + fp)], "o", color=color, ms=6, mec="black")
        roc.plot([0, 1], [0, 1], ":", color="lightgrey")
        roc.set(xlabel="false-positive rate", ylabel="true-positive rate", xlim=(-0.01, 1), ylim=(0, 1.02))
        pr.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        roc.set_title(f"ROC\n{_short(name, 40)}", fontsize=8)
        pr.set_title(f"precision-recall\n{_short(name, 40)}", fontsize=8)
        for a in (roc, pr):
            a.grid(alpha=0.3)
        roc.legend(fontsize=6, loc="lower right")
    if not names:
        axes[0].text(0.5, 0.5, "no scenario with both classes: no curve", ha="center", va="center")
        for a in axes:
            a.axis("off")
    fig.tight_layout()
    return fig


def training_curves_overlay(histories: Mapping[str, Sequence[Mapping]], title: str = "",
                            colors: Mapping[str, str] | None = None, groups: Mapping[str, str] | None = None) -> Figure:
    """Validation F1 (when recorded) and validation loss per epoch of several runs on shared axes.

    Args:
        histories: ``{run label: history}`` (each as in :func:`training_curves`).
        title: figure title. Default none.
        colors: ``{run label: colour}``, e.g. one colour per grid value. Default: one per run.
        groups: ``{legend text: colour}`` naming the colours (e.g. ``{"kd_alpha = 0.5": "C0"}``),
            the legend when there are more than 12 runs. Default none: no legend then.
            Up to 12 runs, the legend names each run.
    """
    has_f1 = any("val_f1" in h for hist in histories.values() for h in hist)
    keys = (["val_f1"] if has_f1 else []) + ["val_loss"]
    fig, axes = _new(len(keys), size=(5.2, 3.8))
    for i, (label, hist) in enumerate(histories.items()):
        epochs = [int(h["epoch"]) + 1 for h in hist]
        color = (colors or {}).get(label, f"C{i % 10}")
        for ax, key in zip(axes, keys):
            ax.plot(epochs, [h.get(key, np.nan) for h in hist], "o-", ms=3, lw=1.2, color=color, alpha=0.8, label=label)
    for ax, key in zip(axes, keys):
        ax.set(xlabel="epoch", ylabel=key.replace("val_", "validation ").replace("f1", "F1"))
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    if has_f1:
        axes[0].set_ylim(0, 1.02)
    if 0 < len(histories) <= 12:
        axes[-1].legend(fontsize=7)
    elif groups:
        axes[-1].legend(handles=[Line2D([], [], color=c, marker="o", ms=3, label=t) for t, c in groups.items()],
                        fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
