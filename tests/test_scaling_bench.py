"""benchmarks/scaling.py: the table comes from the runs (speed-ups against the one-process run,
fixed costs, quality), a real one-round run of ``kdkit train`` with 1 and 2 processes on
synthetic data, and the gloo all-reduce measurement.

Run: .venv/bin/python -m pytest tests/test_scaling_bench.py -q
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_benchmark


def _scaling():
    return load_benchmark("scaling")


def _run(variant: str, epochs: list[float], wall: float, fixed: float = 0.5) -> dict:
    return {"role": "student", "variant": variant, "processes": 2 if variant == "p2t1" else 1, "threads": 1,
            "wall_s": wall, "cpu_s": wall * 1.5, "epoch_s": epochs, "timings": {"evaluate_s": 3.0, "total_s": wall - 9},
            "train_fixed_s": fixed, "outside_run_s": 9.0, "steps": 10 if variant == "p2t1" else 20,
            "val_loss": 0.1, "val_f1": 1.0, "test_f1": 0.9, "world_size": 1, "parameters": 1000}


def test_table_speedups_come_from_the_runs():
    s = _scaling()
    runs = [_run("p1t2", [10.0, 12.0], 40.0), _run("p2t1", [5.0, 6.0], 38.0, fixed=10.0),
            _run("p1t2", [11.0, 11.0], 42.0), _run("p2t1", [6.0, 6.0], 36.0, fixed=11.0)]
    table = s.summarise(runs)["student"]
    assert table["p1t2"]["epoch_s"]["median"] == pytest.approx(11.0)
    assert table["p2t1"]["epoch_s"] == {"min": 5.5, "median": 5.75, "max": 6.0, "n": 2}
    assert table["p2t1"]["epoch_speedup_vs_p1t2"] == pytest.approx(round(11.0 / 5.75, 2))
    assert table["p2t1"]["wall_speedup_vs_p1t2"] == pytest.approx(round(41.0 / 37.0, 2))
    assert table["p2t1"]["train_fixed_s"]["median"] == pytest.approx(10.5) and table["p2t1"]["steps"] == 10
    assert table["p2t1"]["epoch_s_after_first"] == {"min": 6.0, "median": 6.0, "max": 6.0, "n": 2}
    assert table["p2t1"]["epochs"] == 2
    md = s.markdown({"student": table}, {"1000": {"min": 0.1, "median": 0.2, "max": 0.5, "n": 3}})
    assert "| student | 2 processes x 1 thread | 5.8 (5.5-6.0) | 1.91x |" in md
    assert "1,000 fp32 values" in md
    assert "Fewer than 3 epochs" in md


def test_one_round_of_real_runs_on_synthetic(kdkit_env, tmp_path):
    s = _scaling()
    out = tmp_path / "scaling.json"
    assert s.main(["--dataset", "synthetic", "--roles", "student", "--variants", "p1t2,p2t1", "--epochs", "1",
                   "--repeats", "1", "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]) == 0
    import json

    record = json.loads(out.read_text())
    by_variant = {r["variant"]: r for r in record["runs"]}
    assert by_variant["p2t1"]["world_size"] == 2 and by_variant["p1t2"]["world_size"] == 1
    assert by_variant["p2t1"]["launcher"] == "fork" and by_variant["p1t2"]["launcher"] is None
    # two processes split each epoch's windows: half the optimizer steps (batch 64 per process)
    assert by_variant["p2t1"]["steps"] == pytest.approx(by_variant["p1t2"]["steps"] / 2, abs=1)
    assert all(r["epoch_s"] and r["timings"]["evaluate_s"] > 0 for r in record["runs"])
    (size, ms), = record["allreduce_ms"].items()
    assert int(size) == by_variant["p1t2"]["parameters"] and 0 < ms["median"] < 1000
    assert record["machine"]


def test_cpu_of_a_worker_that_outlives_its_parent_is_counted(tmp_path):
    """A worker started by Lightning's launcher may outlive rank zero, which does not wait for it;
    as subreaper the benchmark inherits it and counts its CPU seconds (they were lost before)."""
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "orphan.py"
    script.write_text(textwrap.dedent(f'''
        import json, subprocess, sys, time
        sys.path.insert(0, {str(load_benchmark("scaling").__file__.rsplit("/", 1)[0])!r})
        import scaling
        counted = sys.argv[1] == "1"
        if counted:
            assert scaling.become_subreaper()
        # the "rank zero": starts a CPU-burning "worker" and exits without waiting for it
        parent = "import subprocess, sys; subprocess.Popen([sys.executable, '-c', " \\
                 "'import time\\\\nt = time.process_time()\\\\nwhile time.process_time() - t < 1.0: pass'])"
        cpu0 = scaling.children_cpu()
        subprocess.run([sys.executable, "-c", parent], check=True)
        scaling.reap_orphans()
        if not counted:
            time.sleep(1.5)  # the orphan ends under init meanwhile
        print(json.dumps(scaling.children_cpu() - cpu0))
    '''))
    with_reaper = float(subprocess.run([sys.executable, str(script), "1"], capture_output=True, text=True,
                                       check=True, timeout=60).stdout)
    without = float(subprocess.run([sys.executable, str(script), "0"], capture_output=True, text=True,
                                   check=True, timeout=60).stdout)
    assert with_reaper >= 1.0 > without


def test_variant_names_with_a_batch_per_process():
    s = _scaling()
    assert s.parse_variant("p2t1") == (2, 1, None, None)
    assert s.parse_variant("p2t1b128") == (2, 1, None, 128)
    assert s.parse_variant("p1t2b256") == (1, None, None, 256)
    for bad in ("p3t1", "p2t1b", "p2t1b0", "p2t1bx"):
        with pytest.raises(ValueError, match="unknown variant"):
            s.parse_variant(bad)
    cmd = s.train_cmd("kdkit", "student", 2, type("A", (), {"model": "gat", "dataset": "synthetic", "epochs": 1,
                                                            "seed": 0})(), Path("runs"), "x", 128)
    assert cmd[cmd.index("--batch-size") + 1] == "128"
    table = s.summarise([_run("p1t2", [10.0], 40.0), {**_run("p2t1", [4.0], 30.0), "variant": "p2t1b128"}])
    assert "| student | 2 processes x 1 thread, batch 128 | 4.0 (4.0-4.0) | 2.5x |" in s.markdown(table, None)


def test_ddp_step_times_the_parts_of_a_synchronised_step(kdkit_env, tmp_path):
    """benchmarks/ddp_step.py on synthetic data: one rank alone and two ranks synchronising by
    hand; the parts of the synchronised step add up to (at most) the step."""
    bench = load_benchmark("ddp_step")
    out = tmp_path / "step.json"
    result = bench.main(["--dataset", "synthetic", "--modes", "alone,split", "--steps", "4", "--burn-in", "1",
                         "--rounds", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    alone, split = result["modes"]["alone"], result["modes"]["split"]
    assert alone["step_ms"]["median"] > 0 and "parts_ms" not in alone
    parts = split["parts_ms"]
    assert set(parts) == {"forward_backward", "barrier", "allreduce", "optimizer"}
    assert all(v["median"] >= 0 for v in parts.values()) and parts["allreduce"]["median"] > 0
    # each part's median is the slower rank's, so their sum may exceed the step's median a little
    assert sum(v["median"] for v in parts.values()) <= 1.5 * split["step_ms"]["median"] + 1
    assert split["graphs_per_s"]["median"] > 0
