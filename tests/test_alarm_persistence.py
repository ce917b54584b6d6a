"""benchmarks/alarm_persistence.py: the causal persistence rules per recording in time order, and
their thresholds from the validation calibration windows only.

Run: .venv/bin/python -m pytest tests/test_alarm_persistence.py -q
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import load_benchmark


def _bench():
    return load_benchmark("alarm_persistence")


def test_rules_are_causal_per_recording_in_time_order():
    b = _bench()
    # two recordings interleaved and out of time order in the array
    score = np.array([5.0, 1.0, 3.0, 10.0, 2.0, 0.0])
    files = np.array([0, 1, 0, 1, 0, 1])
    start = np.array([2.0, 0.5, 1.0, 0.0, 0.0, 1.5])
    # recording 0 in time order: 2 (t0), 3 (t1), 5 (t2); recording 1: 10 (t0), 1 (t0.5), 0 (t1.5)
    mean2 = b.persist(score, files, start, "mean", 2)
    assert mean2.tolist() == [4.0, 5.5, 2.5, 10.0, 2.0, 0.5]
    min3 = b.persist(score, files, start, "min", 3)
    assert min3.tolist() == [2.0, 1.0, 2.0, 10.0, 2.0, 0.0]
    med3 = b.persist(score, files, start, "median", 3)
    assert med3.tolist() == [3.0, 5.5, 2.5, 10.0, 2.0, 1.0]
    assert b.persist(score, files, start, "mean", 1).tolist() == score.tolist()
    with pytest.raises(ValueError, match="rule 'max'"):
        b.persist(score, files, start, "max", 2)
    with pytest.raises(ValueError, match="k=0"):
        b.persist(score, files, start, "mean", 0)


def test_threshold_comes_from_the_calibration_windows_only():
    b = _bench()
    rng = np.random.default_rng(0)
    n = 2000
    val = {"s": rng.normal(-3, 1, n), "y": np.zeros(n, int), "f": np.repeat([0, 1], n // 2),
           "t": np.tile(np.arange(n // 2, dtype=float), 2), "ref": np.repeat([True, False], n // 2)}
    test_y = np.r_[np.zeros(500, int), np.ones(100, int)]
    test = {"s": np.r_[rng.normal(-3, 1, 500), np.full(100, 5.0)], "y": test_y,
            "f": np.zeros(600, int), "t": np.arange(600, dtype=float)}
    first = b.evaluate(val, {"t": test}, "mean", 3, 0.999)
    val2 = {**val, "s": val["s"].copy()}
    val2["s"][~val["ref"]] = 100.0  # windows outside the calibration set, e.g. an attack recording's
    assert b.evaluate(val2, {"t": test}, "mean", 3, 0.999)["threshold"] == first["threshold"]
    # a sustained attack is found; the raw rule keeps the model's threshold 0
    assert first["t"]["f1"] > 0.95
    raw = b.evaluate(val, {"t": test}, "raw", 1, 0.999)
    assert raw["threshold"] == 0.0 and raw["t"]["fpr"] == pytest.approx(float((test["s"][:500] >= 0).mean()))


def test_drive_baseline_takes_out_a_drive_shift_but_not_an_attack():
    b = _bench()
    # a drive whose normal scores sit 2 units above the calibration median (0), then an attack at +10
    score = np.r_[np.full(6, 2.0), np.full(3, 10.0), np.full(2, 2.0)]
    files, start = np.zeros(11, int), np.arange(11, dtype=float)
    out = b.drive_baseline(score, files, start, center=0.0, threshold=5.0, horizon=4, warmup=3)
    # the first 3 windows are taken as they are; then the shift (median 2 - center 0) comes off
    assert out.tolist() == [2.0, 2.0, 2.0, 0.0, 0.0, 0.0, 8.0, 8.0, 8.0, 0.0, 0.0]
    # the attack's windows alarmed, so they never entered the baseline; a downward shift is kept
    low = b.drive_baseline(np.full(5, -3.0), np.zeros(5, int), np.arange(5.0), 0.0, 5.0, 4, 1)
    assert low.tolist() == [-3.0] * 5
    # per recording: a second recording starts without the first one's baseline
    two = b.drive_baseline(np.r_[np.full(4, 2.0), np.full(4, 2.0)], np.repeat([0, 1], 4),
                           np.tile(np.arange(4.0), 2), 0.0, 5.0, 4, 3)
    assert two.tolist() == [2.0, 2.0, 2.0, 0.0] * 2


def test_frozen_baseline_is_taken_once_from_the_drive_start():
    b = _bench()
    # a drive starting 2 above the calibration median (threshold 3), then an attack ramp
    score = np.r_[np.full(4, 2.0), 5.0, 9.0, 2.5]
    out = b.frozen_baseline(score, np.zeros(7, int), np.arange(7.0), center=0.0, first=3, threshold=3.0)
    # the first 3 windows under 3 give the shift 2; windows from the 3rd on (after it is known) lose it
    assert out.tolist() == [2.0, 2.0, 2.0, 0.0, 3.0, 7.0, 0.5]
    # a drive that never has `first` quiet windows keeps its scores
    assert b.frozen_baseline(np.full(3, 9.0), np.zeros(3, int), np.arange(3.0), 0.0, 2, 3.0).tolist() == [9.0] * 3
