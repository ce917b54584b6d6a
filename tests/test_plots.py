"""kdkit.plots on hand-made inputs: what is drawn equals what was given."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from matplotlib.figure import Figure

from kdkit.reporting import plots

HISTORY = [{"epoch": 0, "train_loss": 0.9, "val_loss": 0.7, "val_f1": 0.5},
           {"epoch": 1, "train_loss": 0.4, "val_loss": 0.5, "val_f1": 0.8}]


def _bars(ax):
    return [p for p in ax.patches if type(p).__name__ == "Rectangle"]


def test_training_curves_plots_loss_and_f1_per_epoch():
    fig = plots.training_curves(HISTORY, "t")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    loss_ax, f1_ax = fig.axes
    lines = {ln.get_label(): ln for ln in loss_ax.get_lines()}
    assert list(lines["train loss"].get_xdata()) == [1, 2]
    assert list(lines["train loss"].get_ydata()) == [0.9, 0.4]
    assert list(lines["val loss"].get_ydata()) == [0.7, 0.5]
    assert list(f1_ax.get_lines()[0].get_ydata()) == [0.5, 0.8]


def test_training_curves_without_f1_has_one_panel():
    fig = plots.training_curves([{"epoch": 0, "train_loss": 3.0, "val_loss": 2.0}])
    assert len(fig.axes) == 1


def test_roc_pr_curves_one_line_per_two_class_scenario():
    labels = {"a": np.array([0, 0, 1, 1]), "only_normal": np.array([0, 0, 0])}
    scores = {"a": np.array([0.1, 0.4, 0.35, 0.8]), "only_normal": np.array([0.1, 0.2, 0.3])}
    fig = plots.roc_pr_curves(labels, scores)
    roc, pr = fig.axes
    assert len(roc.get_lines()) == 2  # scenario a + the chance diagonal
    assert len(pr.get_lines()) == 1
    assert "AUC 0.750" in roc.get_lines()[0].get_label()
    assert any("only_normal" in t.get_text() for t in fig.texts)


def test_confusion_matrices_show_the_counts():
    res = {"scenarios": {"s1": {"confusion_matrix": [[5, 1], [2, 7]]}},
           "overall": {"confusion_matrix": [[5, 1], [2, 7]]}}
    fig = plots.confusion_matrices(res)
    assert len(fig.axes) == 2
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == ["1", "2", "5", "7"]


def test_f1_per_scenario_bar_heights():
    fig = plots.f1_per_scenario({"teacher": {"s1": 0.9, "s2": 0.6}, "student": {"s1": 0.7}})
    heights = [b.get_height() for b in _bars(fig.axes[0])]
    assert heights[:2] == [0.9, 0.6]
    assert heights[2] == 0.7 and np.isnan(heights[3])


def test_f1_per_scenario_marks_an_undefined_f1():
    """F1 is None for a scenario without attack windows: no bar, labelled n/a (not an F1 of 0)."""
    fig = plots.f1_per_scenario({"teacher": {"s1": 0.9, "no_attacks": None}})
    heights = [b.get_height() for b in _bars(fig.axes[0])]
    assert heights[0] == 0.9 and np.isnan(heights[1])
    assert "n/a" in [t.get_text() for t in fig.axes[0].texts]


def test_benchmark_bars_are_medians_with_min_max_error_bars():
    rows = [{"model": "gat", "variant": "legacy", "graphs_per_s": [1.0, 2.0, 10.0]},
            {"model": "gat", "variant": "fabric", "graphs_per_s": [4.0, 4.0, 5.0]}]
    fig = plots.benchmark_bars(rows, "graphs_per_s", "graphs / s")
    ax = fig.axes[0]
    assert [b.get_height() for b in _bars(ax)] == [2.0, 4.0]
    legacy_err = next(c for c in ax.collections if c.get_segments()).get_segments()[0]
    assert tuple(legacy_err[:, 1]) == (1.0, 10.0)  # min and max of the repeats


def test_model_comparison_one_panel_per_metric():
    rows = [{"name": "teacher", "parameters": 1000, "size_bytes": 4000, "latency_ms_p50": 2.0},
            {"name": "student", "parameters": 100, "size_bytes": 400, "latency_ms_p50": None}]
    fig = plots.model_comparison(rows)
    assert len(fig.axes) == 3
    assert [b.get_height() for b in _bars(fig.axes[0])] == [1000, 100]
    assert np.isnan(_bars(fig.axes[2])[1].get_height())


@pytest.mark.parametrize("make", [lambda: plots.training_curves(HISTORY),
                                  lambda: plots.f1_per_scenario({"m": {"s": 0.5}})])
def test_figures_are_closed_in_pyplot_and_save_as_png(make, tmp_path):
    from matplotlib import pyplot as plt

    before = len(plt.get_fignums())
    fig = make()
    assert len(plt.get_fignums()) == before  # not left open: shown once, as the cell's value
    fig.savefig(tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_benchmark_bars_take_bench_train_summaries():
    rows = [{"model": "gat", "variant": "fabric", "graphs_per_s": {"median": 5.0, "min": 3.0, "max": 9.0}}]
    ax = plots.benchmark_bars(rows, "graphs_per_s", "graphs / s").axes[0]
    assert [b.get_height() for b in _bars(ax)] == [5.0]
    err = next(c for c in ax.collections if c.get_segments()).get_segments()[0]
    assert tuple(err[:, 1]) == (3.0, 9.0)


def test_inference_bars_p50_with_p99_whisker():
    rows = [{"variant": "fp32-eager", "messages_per_s": 1000.0, "latency_ms_p50": 1.5, "latency_ms_p99": 4.0},
            {"variant": "bf16-eager", "messages_per_s": 800.0, "latency_ms_p50": 2.0, "latency_ms_p99": 2.5}]
    thr, lat = plots.inference_bars(rows).axes
    assert [b.get_height() for b in _bars(thr)] == [1000.0, 800.0]
    assert [b.get_height() for b in _bars(lat)] == [1.5, 2.0]
    err = next(c for c in lat.collections if c.get_segments()).get_segments()
    assert [tuple(s[:, 1]) for s in err] == [(1.5, 4.0), (2.0, 2.5)]


# ----------------------------------------------------------------------------- research figures
def test_stamp_writes_the_smoke_label_on_the_figure():
    fig = plots.stamp(plots.training_curves(HISTORY), "smoke run: 2 steps, not a measurement")
    assert [t.get_text() for t in fig.texts].count("smoke run: 2 steps, not a measurement") == 2
    assert plots.stamp(plots.training_curves(HISTORY), None).texts == []


def test_attack_recall_one_bar_per_model_and_attack_type():
    fig = plots.attack_recall({"teacher": {"s1": {"DoS": 1.0, "fuzzing": 0.5}},
                               "student": {"s1": {"DoS": 0.75}, "s2": {"gear": 0.25}}})
    ax = fig.axes[0]
    heights = [b.get_height() for b in _bars(ax)]
    assert heights[:3] == [1.0, 0.5] + [pytest.approx(np.nan, nan_ok=True)]  # teacher: DoS, fuzzing, (no gear)
    assert heights[3:] == [0.75, pytest.approx(np.nan, nan_ok=True), 0.25]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["DoS\ns1", "fuzzing\ns1", "gear\ns2"]


def test_score_histograms_split_the_classes_and_draw_the_threshold():
    y = {"test_01_a": np.array([0, 0, 0, 1, 1]), "only_normal": np.array([0, 0])}
    s = {"test_01_a": np.array([0.1, 0.2, 0.3, 0.8, 0.9]), "only_normal": np.array([0.1, 0.7])}
    fig = plots.score_histograms(y, s, 0.6)
    assert len([a for a in fig.axes if a.axison]) == 2
    first = fig.axes[0]
    assert sum(b.get_height() for b in _bars(first)) == 5  # 3 normal + 2 attack windows
    (line,) = first.get_lines()
    assert list(line.get_xdata()) == [0.6, 0.6]
    assert sum(b.get_height() for b in _bars(fig.axes[1])) == 2 and len(fig.axes[1].get_legend().texts) == 2


def test_roc_pr_over_teacher_marks_each_operating_point():
    y = {"s": np.array([0, 0, 1, 1]), "normal_only": np.array([0, 0])}
    student = {"s": np.array([0.1, 0.6, 0.7, 0.2]), "normal_only": np.array([0.1, 0.2])}
    teacher = {"s": np.array([0.1, 0.2, 0.8, 0.9]), "normal_only": np.array([0.1, 0.2])}
    fig = plots.roc_pr_over_teacher(y, student, teacher, 0.5, 0.5)
    assert len(fig.axes) == 2  # the one-class scenario has no curve
    roc, pr = fig.axes
    points = {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata()))
              for ln in roc.get_lines() if "threshold" in ln.get_label()}
    assert points == {"teacher at threshold 0.5": ([0.0], [1.0]), "student (KD) at threshold 0.5": ([0.5], [0.5])}
    pr_points = [(list(ln.get_xdata()), list(ln.get_ydata())) for ln in pr.get_lines() if ln.get_marker() == "o"]
    assert pr_points == [([1.0], [1.0]), ([0.5], [0.5])]  # (recall, precision) of teacher, student


def test_training_curves_overlay_one_line_per_run_and_panel():
    fig = plots.training_curves_overlay({"a": HISTORY, "b": [{"epoch": 0, "val_loss": 0.3}]})
    f1_ax, loss_ax = fig.axes
    assert [ln.get_label() for ln in loss_ax.get_lines()] == ["a", "b"]
    assert list(loss_ax.get_lines()[1].get_ydata()) == [0.3] and list(f1_ax.get_lines()[0].get_ydata()) == [0.5, 0.8]


def test_grid_heatmap_annotates_mean_std_and_runs():
    from kdkit.reporting import sweep_plots

    cells = {(2.0, 0.5): {"kd_f1": [0.6, 0.8], "kd_gain": [0.1, 0.3]}, (4.0, 0.5): {"kd_f1": [0.9], "kd_gain": []}}
    fig = sweep_plots.grid_heatmap(cells, "T", [2.0, 4.0], "alpha", [0.5])
    f1_ax, gain_ax = fig.axes[0], fig.axes[1]
    assert [t.get_text() for t in f1_ax.texts] == ["0.700\n± 0.141\nn=2", "0.900\nn=1"]
    assert [t.get_text() for t in gain_ax.texts] == ["0.200\n± 0.141\nn=2", "-"]
    assert f1_ax.images[0].get_array()[0, 1] == pytest.approx(0.9)


def test_pareto_front_and_plot():
    from kdkit.reporting import sweep_plots

    front = sweep_plots.pareto_front([(10, 0.5), (5, 0.4), (20, 0.45), (5, 0.3), (30, 0.9)])
    assert front == [(5, 0.4), (10, 0.5), (30, 0.9)]
    pts = [{"model": "teacher", "f1": 0.9, "parameters": 1000, "latency_ms_p99": 3.0},
           {"model": "student (KD)", "f1": 0.8, "parameters": 100, "latency_ms_p99": None}]
    params_ax, lat_ax = sweep_plots.pareto(pts).axes
    assert len(params_ax.collections) == 2 and len(lat_ax.collections) == 1  # no latency: no dot there
    front = next(ln for ln in params_ax.get_lines() if ln.get_label() == "Pareto front")
    assert list(front.get_ydata()) == [0.8, 0.9]


def test_training_curves_overlay_of_many_runs_names_the_colour_groups():
    hist = {f"run {i}": HISTORY for i in range(13)}
    colors = {f"run {i}": "C0" if i < 7 else "C1" for i in range(13)}
    fig = plots.training_curves_overlay(hist, colors=colors, groups={"T = 2": "C0", "T = 4": "C1"})
    assert [t.get_text() for t in fig.axes[-1].get_legend().texts] == ["T = 2", "T = 4"]
    assert fig.axes[0].get_lines()[12].get_color() == "C1"
    assert plots.training_curves_overlay(hist).axes[-1].get_legend() is None


def test_gateway_plots_of_an_empty_bus_say_so():
    """An idle bus (or a recording shorter than one window) closes no window: the timeline and the
    latency figure say that instead of showing an empty frame."""
    from kdkit.stream import report as gateway

    timeline = gateway.alarm_timeline([], 0.5, title="idle")
    texts = [t.get_text() for t in timeline.axes[0].texts]
    assert texts == ["no window closed: fewer messages arrived than one window holds"]
    latency = gateway.latency_histogram([])
    assert [t.get_text() for t in latency.axes[0].texts] == ["no window was decided: no latency to show"]


def test_the_alarm_timeline_shades_attack_windows_and_tells_hits_from_false_alarms():
    """DAGA injects about one frame a window: its 1-ms attack bursts were invisible on a 150 s axis,
    so 380 correct alarms looked like false ones. Labelled decisions shade their attack windows'
    spans (adjacent ones joined) and mark each alarm as a hit or a false alarm."""
    from kdkit.reporting.records import gateway_line
    from kdkit.stream import report as gateway
    from kdkit.stream.detector import Decision

    def d(i, share, score):
        return Decision(window=i, first_message=100 * i, start_time=10.0 + i, end_time=10.0 + i + 0.99, messages=100,
                        score=score, threshold=0.5, is_attack=score >= 0.5, oov_ids=(), latency_s=0.0, cpu_s=0.0,
                        attack_share=share)

    decisions = [d(0, 0.0, 0.1), d(1, 0.01, 0.9), d(2, 0.02, 0.2), d(3, 0.0, 0.7), d(4, 0.0, 0.1)]
    ax = gateway.alarm_timeline(decisions, 0.5).axes[0]
    spans = [p for p in ax.patches]  # axvspan rectangles
    assert len(spans) == 1  # windows 1 and 2 touch: one span from 1 s to 2.99 s
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "alarm on an attack window (1)" in labels and "false alarm (1)" in labels
    assert "attack windows (labelled)" in labels
    counts = gateway.detection_counts(decisions)
    line = gateway_line({"counts": counts, "summary": {"unknown_vehicle": True}})
    assert line.startswith("gateway: 5 windows, 2 alarms (40.0%); attack windows 2, detected 1, false alarms 1")
    assert "did not look like a vehicle the model was trained on" in line
