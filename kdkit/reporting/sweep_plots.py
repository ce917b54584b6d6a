"""Figures of a sweep (many student-notebook runs over a grid): heat map, Pareto, overlaid curves.

    from kdkit.reporting import sweep_plots
    fig = sweep_plots.grid_heatmap(cells, "kd_temperature", [2.0, 4.0], "kd_alpha", [0.5, 0.9])
    fig = sweep_plots.pareto(points)        # F1 against parameters and against p99 latency

:mod:`kdkit.reporting.sweep` computes the inputs from a sweep's ``results.json``.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from kdkit.reporting.headline import mean_std
from kdkit.reporting.plots import _new

MODEL_COLORS = {"teacher": "grey", "student (KD)": "tab:orange", "student alone": "tab:blue"}


def grid_heatmap(cells: Mapping[tuple, Mapping[str, Sequence[float]]], x_name: str, x_values: Sequence,
                 y_name: str, y_values: Sequence, panels: Sequence[tuple[str, str]] = (
                     ("kd_f1", "KD student: overall F1"), ("kd_gain", "KD gain in F1 (KD - alone)"))) -> Figure:
    """One heat map panel per quantity over two grid parameters: mean over seeds (and over the
    other grid parameters), annotated ``mean ± std`` and the number of runs.

    Args:
        cells: ``{(x value, y value): {quantity: [per-run values]}}``.
        x_name, x_values: the grid parameter on the x axis and its values in order.
        y_name, y_values: the one on the y axis (a one-row map when the grid has one parameter:
            pass ``y_name=""`` and ``y_values=[None]``).
        panels: ``(quantity, title)`` pairs; the KD gain uses a diverging colour map around 0.
    """
    fig, axes = _new(len(panels), size=(max(3.6, 1.25 * len(x_values) + 1.6), max(2.6, 0.95 * len(y_values) + 1.4)))
    for ax, (key, title) in zip(axes, panels):
        stats = [[mean_std((cells.get((x, y)) or {}).get(key, [])) for x in x_values] for y in y_values]
        grid = np.array([[m for m, _, _ in row] for row in stats], dtype=float)
        finite = grid[np.isfinite(grid)]
        if key.endswith("gain"):
            lim = max(float(np.abs(finite).max()) if finite.size else 0.0, 1e-3)
            im = ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        else:
            im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for (i, j), (m, s, n) in _cells(stats).items():
            text = "-" if not n else f"{m:.3f}" + ("" if s is None else f"\n± {s:.3f}") + f"\nn={n}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if _dark(im, m) else "black")
        ax.set_xticks(range(len(x_values)), [_value(v) for v in x_values], fontsize=8)
        ax.set_yticks(range(len(y_values)), [_value(v) for v in y_values] if y_name else [""], fontsize=8)
        ax.set_xlabel(x_name)
        ax.set_ylabel(y_name)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


def _cells(stats: list[list[tuple]]) -> dict[tuple[int, int], tuple]:
    return {(i, j): cell for i, row in enumerate(stats) for j, cell in enumerate(row)}


def _dark(im, value: float) -> bool:
    if value is None or not math.isfinite(value):
        return False
    r, g, b, _ = im.cmap(im.norm(value))
    return 0.299 * r + 0.587 * g + 0.114 * b < 0.5


def _value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def pareto(points: Sequence[Mapping], title: str = "accuracy against cost") -> Figure:
    """Overall F1 against parameters and against measured p99 latency, one dot per run and model,
    the Pareto front (no other run both cheaper and better) as a line.

    Args:
        points: ``{"model": label, "f1", "parameters", "latency_ms_p99"}`` per run and model; a
            missing cost leaves the dot out of that panel.
        title: figure title.
    """
    fig, axes = _new(2, size=(5.0, 3.8))
    for ax, cost, label in zip(axes, ("parameters", "latency_ms_p99"), ("parameters", "p99 latency (ms / window)")):
        usable = [p for p in points if p.get(cost) is not None and p.get("f1") is not None]
        for model in dict.fromkeys(p["model"] for p in usable):
            mine = [p for p in usable if p["model"] == model]
            ax.scatter([p[cost] for p in mine], [p["f1"] for p in mine], s=22, alpha=0.75, label=model,
                       color=MODEL_COLORS.get(model))
        front = pareto_front([(float(p[cost]), float(p["f1"])) for p in usable])
        if front:
            ax.step([c for c, _ in front], [f for _, f in front], where="post", color="black", lw=1, ls="--",
                    label="Pareto front")
        if cost == "parameters" and usable:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # log minor labels overlap
        ax.set(xlabel=label, ylabel="overall F1", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        if usable:
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point dominates (lower or equal cost and higher score), cheapest first."""
    front: list[tuple[float, float]] = []
    for cost, score in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or score > front[-1][1]:
            front.append((cost, score))
    return front
