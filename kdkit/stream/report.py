"""Figures and tables of a detection run (the gateway notebook's): alarm timeline, latency
histogram, alarm table, and the true attack intervals of a labelled recording.

    fig = alarm_timeline(summary.decisions, det.threshold, attack_intervals(read_messages(path)))
    fig = latency_histogram(summary.latencies)
    rows = alarm_rows(summary.decisions)

Figures are closed in pyplot once drawn, as :mod:`kdkit.reporting.plots` does.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from kdkit.data.readers import Messages
from kdkit.stream.detector import Decision, format_can_id


def attack_intervals(msgs: Messages, join_s: float = 0.05) -> list[tuple[float, float]]:
    """``(start, end)`` times of the labelled attack bursts of a recording: attack messages less
    than ``join_s`` apart belong to one burst. Empty for an unlabelled recording."""
    ts = msgs.timestamp[msgs.label.astype(bool)]
    if ts.size == 0:
        return []
    cut = np.flatnonzero(np.diff(ts) > join_s)
    starts = np.concatenate([[0], cut + 1])
    ends = np.concatenate([cut, [ts.size - 1]])
    return [(float(ts[a]), float(ts[b])) for a, b in zip(starts, ends)]


def alarm_timeline(decisions: Sequence[Decision], threshold: float,
                   intervals: Sequence[tuple[float, float]] = (), title: str = "",
                   label_threshold: float = 0.0) -> Figure:
    """Each window's score at its end time, the threshold, and the truth: with labelled decisions
    (``attack_share``), the attack windows (share above ``label_threshold``) shaded over their time
    span and each alarm marked as a hit (on an attack window) or a false alarm; else the labelled
    attack bursts ``intervals`` shaded. Window spans stay visible where an attack injects one frame
    a window (DAGA), which a burst of one frame is not on a long axis."""
    fig, ax = plt.subplots(figsize=(10, 3.4))
    plt.close(fig)
    if decisions:
        t0 = decisions[0].start_time
        t = np.array([d.end_time for d in decisions]) - t0
        s = np.array([d.score for d in decisions])
        alarm = np.array([d.is_attack for d in decisions])
        shares = [d.attack_share for d in decisions]
        labelled = all(v is not None for v in shares)
        if labelled:
            truth = np.array(shares, np.float64) > label_threshold
            spans = _window_spans(decisions, truth, t0)
        else:
            spans = [(a - t0, max(b, a + 1e-3) - t0) for a, b in intervals]
        for k, (a, b) in enumerate(spans):
            ax.axvspan(a, b, color="tab:orange", alpha=0.3, lw=0,
                       label=("attack windows (labelled)" if labelled else "labelled attack") if k == 0 else None)
        ax.plot(t, s, color="tab:blue", lw=0.8, label="window score")
        if labelled:
            hit, false = alarm & truth, alarm & ~truth
            ax.scatter(t[hit], s[hit], color="tab:red", s=12, zorder=3, label=f"alarm on an attack window ({int(hit.sum())})")
            ax.scatter(t[false], s[false], color="black", marker="x", s=16, zorder=3,
                       label=f"false alarm ({int(false.sum())})")
        else:
            ax.scatter(t[alarm], s[alarm], color="tab:red", s=12, zorder=3, label=f"alarm ({int(alarm.sum())})")
    else:  # an idle bus, a short recording, every frame filtered out: say so instead of an empty frame
        _empty_note(ax, "no window closed: fewer messages arrived than one window holds")
    ax.axhline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.set_xlabel("seconds since the first window")
    ax.set_ylabel("score")
    ax.set_title(title or "alarm timeline")
    ax.legend(loc="upper right", fontsize=8)
    return fig


def _window_spans(decisions: Sequence[Decision], truth: np.ndarray, t0: float) -> list[tuple[float, float]]:
    """Time spans (since ``t0``) of the runs of consecutive windows where ``truth``: one span a run."""
    spans, start = [], None
    for k, (d, y) in enumerate(zip(decisions, truth)):
        if y and start is None:
            start = d.start_time
        if y and (k + 1 == len(decisions) or not truth[k + 1]):
            spans.append((start - t0, d.end_time - t0))
            start = None
    return spans


def _empty_note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=10, color="0.3")
    ax.set_xticks([]), ax.set_yticks([])


def latency_histogram(latencies_s: Sequence[float], title: str = "") -> Figure:
    """Decision latency per window (ms) with its p50 and p99."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    plt.close(fig)
    ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
    if ms.size:
        ax.hist(ms, bins=min(50, max(5, ms.size // 4)), color="tab:blue", alpha=0.8)
        for q, style in ((50, "-"), (99, "--")):
            v = float(np.percentile(ms, q))
            ax.axvline(v, color="black", ls=style, lw=1, label=f"p{q} {v:.3f} ms")
        ax.legend(fontsize=8)
    else:
        _empty_note(ax, "no window was decided: no latency to show")
    ax.set_xlabel("decision latency after the window's last frame (ms)")
    ax.set_ylabel("windows")
    ax.set_title(title or "decision latency")
    return fig


def alarm_rows(decisions: Sequence[Decision], limit: int = 50) -> list[dict]:
    """The first ``limit`` alarms as table rows (``attack_share`` None for unlabelled input). The
    window's span is in seconds since the first window's start, as :func:`alarm_timeline` plots
    it (a bus timestamp of ~1.5e9 s would show no difference between rows in a table)."""
    rows = []
    t0 = decisions[0].start_time if decisions else 0.0
    for d in decisions:
        if not d.is_attack:
            continue
        row = {"window": d.window, "start_s": round(d.start_time - t0, 6), "end_s": round(d.end_time - t0, 6),
               "score": round(d.score, 4), "oov_ids": " ".join(format_can_id(i) for i in d.oov_ids[:6])
               + (" ..." if len(d.oov_ids) > 6 else ""),
               "attack_share": None if d.attack_share is None else round(d.attack_share, 3)}
        rows.append(row)
        if len(rows) >= limit:
            break
    return rows


def detection_counts(decisions: Sequence[Decision], label_threshold: float = 0.0) -> dict:
    """Windows, alarms and, for labelled input, alarms on attack windows and on normal ones."""
    out = {"windows": len(decisions), "alarms": sum(d.is_attack for d in decisions)}
    labelled = [d for d in decisions if d.attack_share is not None]
    if labelled:
        attack = [d for d in labelled if d.attack_share > label_threshold]
        out.update(attack_windows=len(attack), detected=sum(d.is_attack for d in attack),
                   false_alarms=sum(d.is_attack for d in labelled if d.attack_share <= label_threshold))
    return out
