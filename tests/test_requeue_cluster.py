"""Surviving the cluster on the real one-node SLURM cluster (the ``slurm_cluster`` fixture).

    .venv/bin/python -m pytest tests/test_requeue_cluster.py -m slurm -q

Three real ``kdkit train`` jobs of one config (synthetic data, a small GAT, no compile):
``ref`` runs uninterrupted; ``cut`` gets ``scancel --signal=USR1 --batch`` once its first epoch
is logged (the marker), saves last.pt at its current step, requeues itself and resumes; ``out``
(``max_requeues=0``) stops the same way, ends FAILED with exit code 85 and is resumed by
``kdkit slurm resubmit``. All three must end with identical weights and history. Slurm holds a
requeued job for ~2 min (Reason=BeginTime); the test releases it 3 s later (``scontrol update
StartTime=now``) to keep the wall time near 2 min. Skips without Slurm or the real ``kdkit``,
except under CI=true, where it fails.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import require

from kdkit.cli.slurm import register as register_cli
from kdkit.cluster.orchestrator import FabricSlurmTrainingOrchestrator, parse_scontrol

pytestmark = pytest.mark.slurm

RESOURCES = {"cpus_per_task": 1, "mem": "2G", "time": "15"}
# long enough that the signal after the first epoch lands mid-training; dropout and ID dropout on, so
# the resumed job must restore the generators too
CONFIG = {"hidden": 16, "layers": 2, "heads": 2, "embedding_dim": 4, "batch_size": 32, "patience": 100,
          "precision": "32-true", "compile": False, "save_compat": False, "warmup_steps": 2, "dropout": 0.2,
          "id_dropout": 0.1, "num_workers": 0}
EPOCHS = 5  # the marker is the first epoch's row: four epochs left for the signal to land in


def _kdkit_train_available() -> bool:
    exe = Path(sys.prefix, "bin", "kdkit")
    return exe.is_file() and subprocess.run([exe, "train", "--help"], capture_output=True, check=False).returncode == 0


def _scontrol(job: str) -> str:
    return subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, timeout=30, check=False).stdout


def _epochs_logged(run_dir: Path) -> list[dict]:
    metrics = run_dir / "logs" / "metrics.csv"
    if not metrics.is_file():
        return []
    with open(metrics, newline="") as handle:
        return list(csv.DictReader(handle))


def _signal_after_first_epoch(orch, jobs: list[str]) -> None:
    """The marker: a job's first epoch in metrics.csv; then, a few steps into its second epoch,
    USR1 to its batch shell (the wrapper). The jobs are watched together, each signalled on its
    own marker: signalled one after the other, or half a first epoch later (the first epoch also
    loads the compiled kernels and can take several times a later one), the signal reached a job
    whose 2-3 s epochs had all run, during its test pass, and it completed."""
    run_dirs = {job: Path(orch.registry.load()[job]["run_dir"]) for job in jobs}
    deadline = time.monotonic() + 300
    while run_dirs:
        for job, run_dir in list(run_dirs.items()):
            if _epochs_logged(run_dir):
                time.sleep(0.3)  # into the second epoch's steps
                subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, timeout=30)
                del run_dirs[job]
            else:
                assert time.monotonic() < deadline, orch.logs(job)
                assert orch.status(job)["state"] in ("PENDING", "RUNNING"), orch.logs(job)
        time.sleep(0.1)


def _release_when_held(job: str, timeout: float = 120) -> str:
    """Wait until Slurm requeued the job (it pends with Reason=BeginTime), then let it start now."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = _scontrol(job)
        if "Reason=BeginTime" in text:
            # not at once: slurmd refuses a launch whose credential is from the same second as the revocation
            # of the killed attempt's ("Job credential revoked", the job then ends FAILED with no output); the
            # ~2 min hold Slurm itself puts on a requeued job is there for that
            time.sleep(3)
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=30)
            return text
        time.sleep(0.5)
    raise AssertionError(f"job {job} was not requeued: {_scontrol(job)}")


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _same_run(a: dict, b: dict) -> None:
    for name in ("best.pt", "last.pt"):
        wa, wb = _weights(Path(a["run_dir"]) / "checkpoints" / name), _weights(Path(b["run_dir"]) / "checkpoints" / name)
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (name, k)
    drop = ("epoch_seconds", "train_peak_mib", "val_peak_mib")  # measured, not computed
    assert [{k: v for k, v in h.items() if k not in drop} for h in a["history"]] == \
        [{k: v for k, v in h.items() if k not in drop} for h in b["history"]]


def test_signalled_job_requeues_itself_and_resumes_to_identical_weights(slurm_cluster, kdkit_env, tmp_path):
    require(_kdkit_train_available(), f"{sys.prefix}/bin/kdkit train is not runnable")
    from kdkit.data.datasets import prepare

    prepare("synthetic")  # the graph cache the three jobs share is written once, here
    orch = FabricSlurmTrainingOrchestrator(tmp_path / "runs", workdir=tmp_path, **RESOURCES)
    jobs = {name: orch.submit_gat_training("synthetic", "teacher", epochs=EPOCHS, config=CONFIG, run_name=name,
                                           **extra)
            for name, extra in (("cut", {}), ("out", {"max_requeues": 0}), ("ref", {}))}
    runs = {name: tmp_path / "runs" / name for name in jobs}
    _signal_after_first_epoch(orch, [jobs["cut"], jobs["out"]])

    held = _release_when_held(jobs["cut"])
    assert "Restarts=1" in held
    info = orch.wait(jobs["cut"], timeout=600, poll=1)
    assert info["state"] == "COMPLETED", orch.logs(jobs["cut"], tail=80)
    assert parse_scontrol(_scontrol(jobs["cut"]))["state"] == "COMPLETED" and "Restarts=1" in _scontrol(jobs["cut"])
    jobcomp = subprocess.run(["sacct", "-c", "-n", "-P", "-o", "JobID,State", f"--jobs={jobs['cut']}"],
                             capture_output=True, text=True, timeout=30, check=False).stdout.split()
    assert jobcomp[-1] == f"{jobs['cut']}|COMPLETED" and len(jobcomp) >= 2  # a record per attempt
    # the signal can cut a progress bar's multi-byte character in two (as kdkit slurm logs, read leniently)
    log = Path(orch.registry.load()[jobs["cut"]]["log"]).read_text(errors="replace")
    assert "kdkit train: stopped on request" in log
    assert f"job {jobs['cut']} saved {runs['cut'] / 'checkpoints' / 'last.pt'} and was requeued (restart 1 of at " \
           "most 3)" in log
    cut = json.loads((runs["cut"] / "summary.json").read_text())
    assert cut["resumed_from"] == str(runs["cut"] / "checkpoints" / "last.pt")
    assert 1 <= cut["resumed_at_epoch"] < EPOCHS  # mid-training, after the marker
    assert f"resumed from {cut['resumed_from']} at epoch {cut['resumed_at_epoch']}" in log

    # max_requeues=0: stopped with a checkpoint, not requeued: FAILED with 85; resubmit resumes it
    out_info = orch.wait(jobs["out"], timeout=300, poll=1)
    assert (out_info["state"], out_info["exit_code"]) == ("FAILED", "85:0"), orch.logs(jobs["out"], tail=80)
    assert "(--max-requeues 0): not requeued; `kdkit slurm resubmit" in orch.logs(jobs["out"], tail=80)
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    args = parser.parse_args(["slurm", "--runs-dir", str(tmp_path / "runs"), "resubmit", jobs["out"]])
    assert args.func(args) == 0
    again = orch.registry.load()[jobs["out"]]["resubmitted_as"]
    assert orch.wait(again, timeout=600, poll=1)["state"] == "COMPLETED", orch.logs(again, tail=80)

    ref_info = orch.wait(jobs["ref"], timeout=600, poll=1)
    assert ref_info["state"] == "COMPLETED", orch.logs(jobs["ref"], tail=80)
    ref = json.loads((runs["ref"] / "summary.json").read_text())
    assert ref["resumed_from"] is None and "Restarts=0" in _scontrol(jobs["ref"])
    out = json.loads((runs["out"] / "summary.json").read_text())
    assert out["resumed_from"] == str(runs["out"] / "checkpoints" / "last.pt")
    _same_run(ref, cut)
    _same_run(ref, out)
    assert cut["test"]["overall"] == ref["test"]["overall"] == out["test"]["overall"]


# a stand-in trainer: catches TERM/USR1, waits for the stop file, "saves" and exits 85 as kdkit train does
STOPPING_CHILD = r'''
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: None)
signal.signal(signal.SIGUSR1, lambda *a: None)
open(sys.argv[1], "w").write("started")
while not os.path.exists(os.environ["KDKIT_STOP_FILE"]):
    time.sleep(0.05)
sys.exit(85)
'''


def test_scancel_of_a_running_job_is_a_cancel_not_a_preemption(slurm_cluster, tmp_path):
    """A person's scancel sends the job the same TERM as a preemption; the job must end CANCELLED,
    not requeue itself and run on (found by a user: `kdkit slurm cancel` left the job pending)."""
    child, started, log = tmp_path / "child.py", tmp_path / "started", tmp_path / "job.out"
    child.write_text(STOPPING_CHILD)
    script = tmp_path / "job.sbatch"
    script.write_text(f"#!/bin/bash\n#SBATCH --requeue\n#SBATCH --mem=200M\n#SBATCH --output={log}\n"
                      f"cd {Path(__file__).resolve().parent.parent}\n"
                      f"exec {sys.executable} -m kdkit.cluster.requeue -- {sys.executable} {child} {started}\n")
    job = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=True,
                         timeout=30).stdout.strip().split(";")[0]
    deadline = time.monotonic() + 120
    while not started.exists():
        assert time.monotonic() < deadline, _scontrol(job)
        time.sleep(0.1)
    subprocess.run(["scancel", job], check=True, timeout=30)
    deadline = time.monotonic() + 120
    while "JobState=CANCELLED" not in (text := _scontrol(job)):
        assert time.monotonic() < deadline and "JobState=PENDING" not in text, text
        time.sleep(0.5)
    assert "Restarts=0" in text
    out = log.read_text(errors="replace")
    assert f"job {job} was cancelled (JOB {job} ON " in out and "not requeued" in out, out
