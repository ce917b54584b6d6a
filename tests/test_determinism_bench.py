"""benchmarks/determinism.py: the comparison finds the first kernel call whose outputs differ and
says whether its inputs were equal; a real two-run check on synthetic data (in a subprocess: the
script wraps kdkit's kernels while it runs).

Run: .venv/bin/python -m pytest tests/test_determinism_bench.py -q
"""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO, load_benchmark


def test_first_difference_names_the_kernel_and_whether_its_inputs_were_equal():
    d = load_benchmark("determinism")
    ref = [("norm_act.forward", ["h", "c", "o0"], ["h", "c", "out"]), ("step", [], []),
           ("norm_act.forward", ["h2", "c2", "o1"], ["h2", "c2", "out2"])]
    same_inputs = [ref[0], ref[1], ("norm_act.forward", ["h2", "c2", "o9"], ["h2", "c2", "OTHER"])]
    assert d._first_difference(ref, same_inputs) == {"call": 2, "step": 1, "kernel": "norm_act.forward",
                                                     "read_only_inputs_equal": True, "outputs_differing": [2]}
    other_inputs = [ref[0], ref[1], ("norm_act.forward", ["h3", "c2", "o1"], ["h3", "c2", "OTHER"])]
    assert d._first_difference(ref, other_inputs)["read_only_inputs_equal"] is False
    assert d._first_difference(ref, list(ref)) is None
    assert d._first_difference(ref, ref[:2])["note"] == "different call counts"


def test_two_runs_in_one_process_record_every_kernel_and_match(kdkit_env):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "determinism.py"), "--runs", "2", "--epochs", "1"],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["kernel_calls_per_run"] > 50  # forward and backward of every layer, every step
    assert out["differences"] == [{"run": 1, "weights_equal": True, "first_kernel_difference": None}]
    assert out["all_equal"] is True
