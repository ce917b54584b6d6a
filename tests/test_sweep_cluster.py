"""kdkit sweep on a real one-node SLURM cluster (.ci/slurm-cluster.sh, the ``slurm_cluster``
fixture in conftest.py): the real teacher and student notebooks on synthetic data, tiny settings.

    .venv/bin/python -m pytest tests/test_sweep_cluster.py -m slurm -q

One teacher job, then ONE job array of 6 student tasks (3 temperatures x 2 seeds, ``%2``)
``afterok`` it. Task 3 fails on purpose: its run dir's ``metrics.json`` is a folder, so the
notebook's first write fails at run time. The other five complete and are collected;
``retry-failed`` resubmits task 3 alone (``--array=3%2``) into the same run dir once the folder
is gone; the sweep HTML report is built from the collected table. 3.5 min on the 2-core VM
(8.3 min while other jobs kept its load at ~12).
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from kdkit.cli.main import main
from kdkit.cluster import sweep as sw
from kdkit.cluster.orchestrator import FabricSlurmTrainingOrchestrator
from kdkit.reporting.sweep import build_sweep_report

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent
STUDENT, TEACHER = REPO / "notebooks" / "student.ipynb", REPO / "notebooks" / "teacher.ipynb"
SMALL = {"cpus_per_task": 1, "mem": "1G", "time": "20"}
TINY_STUDENT = {"epochs": 1, "layers": 1, "heads": 1, "latency_calls": 5}
TINY_TEACHER = {"epochs": 1, "layers": 1, "heads": 2}
BROKEN = 3


@pytest.fixture(scope="module")
def swept(slurm_cluster, tmp_path_factory):
    """The sweep, submitted once; the tests below follow it in order."""
    root = tmp_path_factory.mktemp("sweep_cluster")
    env = {**os.environ, "KDKIT_CACHE_DIR": str(root / "cache"), "KDKIT_SYNTHETIC_ROOT": str(root / "synthetic-seed{seed}")}

    def runner(argv):
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)

    spec = sw.plan(STUDENT, {"kd_temperature": [2.0, 4.0, 8.0]}, seeds=[0, 1], parameters=TINY_STUDENT,
                   name="kd_cluster", sweeps_dir=root / "sweeps", teacher_notebook=TEACHER,
                   teacher_parameters=TINY_TEACHER)
    sweep_dir = sw.create(spec)
    orch = FabricSlurmTrainingOrchestrator(sweep_dir, runner=runner, workdir=root, **SMALL)
    (sweep_dir / spec["tasks"][BROKEN]["run_dir"] / "metrics.json").mkdir()   # RunRecord cannot write it
    array = sw.submit(sweep_dir, orch, max_parallel=2)
    return sweep_dir, orch, array


def test_one_array_after_the_teacher_job(swept):
    sweep_dir, _orch, array = swept
    spec = sw.load(sweep_dir)
    (sub,) = spec["submissions"]
    assert sub["job_id"] == array and sub["tasks"] == list(range(6)) and sub["array"] == "0-5%2"
    script = (sweep_dir / "array-0.sbatch").read_text().splitlines()
    assert "#SBATCH --array=0-5%2" in script and f"#SBATCH --dependency=afterok:{sub['teacher_job']}" in script
    assert sw.collect(sweep_dir)["rows"][4]["job_id"] == f"{array}_4"


def test_array_runs_two_at_a_time_and_collects_all_but_the_broken_task(swept):
    sweep_dir, orch, _array = swept
    most, deadline = 0, time.monotonic() + 1500
    while True:               # sw.wait, polling here to see that %2 holds
        rows = sw.status(sweep_dir, orch)["rows"]
        most = max(most, sum(r["state"] == "RUNNING" for r in rows))
        if all(r["state"] in sw.TERMINAL_STATES for r in rows):
            break
        assert time.monotonic() < deadline, [(r["task"], r["state"]) for r in rows]
        time.sleep(2)
    assert 1 <= most <= 2
    teacher = sw.teacher_state(sweep_dir, orch)
    assert teacher["state"] == "COMPLETED", teacher
    states = [r["state"] for r in rows]
    assert states == ["COMPLETED"] * BROKEN + ["FAILED"] + ["COMPLETED"] * 2, [r["error"] for r in rows]
    assert "IsADirectoryError" in rows[BROKEN]["error"] and rows[BROKEN]["metrics"] == {}
    checkpoint = sw.teacher_checkpoint_of(sweep_dir, sw.load(sweep_dir))
    for row in rows[:BROKEN] + rows[BROKEN + 1:]:
        m = row["metrics"]
        assert (m["kd_temperature"], row["seed"]) == (row["params"]["kd_temperature"], row["task"] % 2)
        assert m["teacher"]["checkpoint"] == checkpoint        # the teacher job's checkpoint, in every task
        assert m["student_kd"]["epochs_run"] == 1 and 0.0 <= m["student_kd"]["overall"]["f1"] <= 1.0
        assert (sweep_dir / row["run_dir"] / "student.ipynb").is_file()
    with open(sweep_dir / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(t["task"], t["state"], t["seed"], t["kd_temperature"]) for t in table] == [
        ("0", "COMPLETED", "0", "2.0"), ("1", "COMPLETED", "1", "2.0"), ("2", "COMPLETED", "0", "4.0"),
        ("3", "FAILED", "1", "4.0"), ("4", "COMPLETED", "0", "8.0"), ("5", "COMPLETED", "1", "8.0")]
    assert table[3]["student_kd.overall.f1"] == "" and float(table[4]["student_kd.overall.f1"]) == \
        rows[4]["metrics"]["student_kd"]["overall"]["f1"]


def test_retry_failed_resubmits_only_the_failed_task_into_its_run_dir(swept, capsys):
    sweep_dir, orch, array = swept
    (sweep_dir / "tasks" / f"task{BROKEN:04d}" / "metrics.json").rmdir()
    before = {r["task"]: r for r in sw.collect(sweep_dir)["rows"]}
    indices, job = sw.retry_failed(sweep_dir, orch)
    assert indices == [BROKEN] and job != array
    assert "#SBATCH --array=3%2" in (sweep_dir / "array-1.sbatch").read_text().splitlines()
    assert not (sweep_dir / "teacher-1.sbatch").exists()       # the teacher completed: not run again
    results = sw.wait(sweep_dir, orch, timeout=900, poll=2)
    rows = results["rows"]
    assert [r["state"] for r in rows] == ["COMPLETED"] * 6, [r["error"] for r in rows]
    assert rows[BROKEN]["job_id"] == f"{job}_{BROKEN}" and rows[BROKEN]["run_dir"] == before[BROKEN]["run_dir"]
    for r in rows:
        if r["task"] != BROKEN:
            assert r["job_id"] == f"{array}_{r['task']}" and r["metrics"] == before[r["task"]]["metrics"]
    assert main(["sweep", "status", str(sweep_dir)]) == 0
    assert "6 task(s): 6 COMPLETED" in capsys.readouterr().out


def test_sweep_report_from_the_cluster_sweep(swept):
    sweep_dir, _orch, _array = swept
    report = build_sweep_report(sweep_dir)
    text = Path(report).read_text()
    assert Path(report).parent == sweep_dir and "<table" in text and "kd_temperature" in text
    assert json.loads((sweep_dir / "results.json").read_text())["sweep"] == "kd_cluster"
