"""kdkit.compare on hand-made summaries and benchmark results (the runs themselves are
exercised by the notebooks in tests/test_notebooks.py)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from kdkit.bench import compare


def _summary(f1s, overall, parameters):
    return {"parameters": parameters, "test": {"scenarios": {f"s{i}": {"f1": f} for i, f in enumerate(f1s)},
                                               "overall": {"f1": overall}}}


def test_f1_by_model_and_rows():
    models = {"teacher": _summary((0.5, 1.0), 0.75, 100), "student": _summary((0.25, 0.5), 0.375, 10)}
    assert compare.f1_by_model(models) == {"teacher": {"s0": 0.5, "s1": 1.0}, "student": {"s0": 0.25, "s1": 0.5}}
    assert compare.f1_rows(models) == [{"scenario": "s0", "teacher": 0.5, "student": 0.25},
                                       {"scenario": "s1", "teacher": 1.0, "student": 0.5},
                                       {"scenario": "overall", "teacher": 0.75, "student": 0.375}]


def test_load_teacher_names_a_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="teacher_checkpoint .*missing.pt does not exist"):
        compare.load_teacher(tmp_path / "missing.pt", data=None)


def test_split_list():
    assert compare.split_list(" gat, vgae,,") == ["gat", "vgae"]


def _s(med, lo, hi):
    return {"median": med, "min": lo, "max": hi}


def _bench(model, precision, plain, fabric, speedup):
    side = lambda g, prec: {"precision": prec, "graphs_per_s": _s(*g), "peak_mib": _s(10.0, 9.0, 11.0),  # noqa: E731
                            "step_ms": _s(5.0, 4.0, 6.0)}
    return {"model": model, "type": "teacher", "plain": side(plain, "32-true"), "fabric": side(fabric, precision),
            "speedup": speedup, "memory_ratio": 1.0}


RESULTS = [_bench("gat", "32-true", (100.0, 90.0, 110.0), (200.0, 150.0, 210.0), 2.0),
           _bench("gat", "bf16-mixed", (120.0, 80.0, 130.0), (300.0, 290.0, 310.0), 2.5)]


def test_train_rows_pool_plain_loop_runs_into_one_bar():
    rows = compare.train_rows(RESULTS)
    assert [(r["model"], r["variant"]) for r in rows] == [("gat teacher", "plain PyG loop (fp32)"),
                                                          ("gat teacher", "fabric (32-true)"),
                                                          ("gat teacher", "fabric (bf16-mixed)")]
    assert rows[0]["graphs_per_s"] == {"median": 110.0, "min": 80.0, "max": 130.0}
    assert rows[2]["graphs_per_s"] == {"median": 300.0, "min": 290.0, "max": 310.0}


def test_speedup_rows_epoch_time_from_graphs_per_second():
    data = SimpleNamespace(splits={"train": SimpleNamespace(y=torch.tensor([0, 0, 0, 1] * 100))})
    assert compare.train_windows(data, "gat") == 400 and compare.train_windows(data, "vgae") == 300
    row = compare.speedup_rows(RESULTS[:1], data)[0]
    assert row["model"] == "GAT Teacher" and row["precision"] == "32-true"
    assert row["plain_epoch_s"] == pytest.approx(4.0) and row["fabric_epoch_s"] == pytest.approx(2.0)
    assert row["speedup"] == 2.0 and row["plain_peak_mib"] == 10.0


def test_infer_rows():
    res = {"variants": {"fp32-eager": {"messages_per_s": 10, "latency_ms_p50": 1.0, "latency_ms_p99": 2.0}}}
    assert compare.infer_rows(res) == [{"variant": "fp32-eager", "messages_per_s": 10, "latency_ms_p50": 1.0,
                                        "latency_ms_p99": 2.0}]
    spread = {"variants": {"eager": {"messages_per_s_spread": {"min": 2618481.0, "median": 2700000.5, "max": 2.8e6}}}}
    assert compare.infer_rows(spread) == [{"variant": "eager", "messages_per_s_spread": "2,618,481-2,700,000-2,800,000"}]


def test_best_epoch_is_the_first_best_of_the_monitored_metric():
    f1_history = [{"epoch": 0, "val_f1": 0.5, "val_loss": 0.9}, {"epoch": 1, "val_f1": 0.8, "val_loss": 0.7},
                  {"epoch": 2, "val_f1": 0.8, "val_loss": 0.2}, {"epoch": 3, "val_f1": 0.6, "val_loss": 0.1}]
    assert compare.best_epoch(f1_history) == 2  # 1-based; the first of the tied bests, as the trainer keeps it
    loss_history = [{"epoch": 0, "val_loss": 0.9}, {"epoch": 1, "val_loss": float("nan")},
                    {"epoch": 2, "val_loss": 0.4}, {"epoch": 3, "val_loss": 0.5}]
    assert compare.best_epoch(loss_history) == 3  # a VGAE: lowest validation loss
    assert compare.best_epoch([]) is None


def test_load_teacher_reports_the_best_epoch_and_the_epochs_run(synthetic, student_checkpoint, tmp_path, monkeypatch):
    """A best.pt holds the history up to its own epoch; the epochs run come from last.pt."""
    monkeypatch.setattr(compare, "evaluate_model", lambda *a, **k: {"scenarios": {}, "overall": {}, "scores": {}})
    history = [{"epoch": e, "val_f1": f, "val_loss": 1.0 - f} for e, f in enumerate((0.4, 0.9, 0.7, 0.8))]
    ckpt = torch.load(student_checkpoint, weights_only=True)
    run = tmp_path / "teacher" / "checkpoints"
    run.mkdir(parents=True)
    torch.save({**ckpt, "epoch": 1, "history": history[:2]}, run / "best.pt")
    alone = compare.load_teacher(run / "best.pt", synthetic)
    assert alone["best_epoch"] == 2 and alone["epochs_run"] is None  # without last.pt: unknown, not 2
    torch.save({**ckpt, "epoch": 3, "history": history}, run / "last.pt")
    teacher = compare.load_teacher(run / "best.pt", synthetic)
    assert teacher["best_epoch"] == 2 and teacher["epochs_run"] == 4 and len(teacher["history"]) == 4
    assert compare.load_teacher(run / "last.pt", synthetic)["epochs_run"] == 4
