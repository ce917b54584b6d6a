"""kdkit.cluster against a real one-node SLURM cluster (.ci/slurm-cluster.sh, started by the
``slurm_cluster`` fixture in conftest.py).

    .venv/bin/python -m pytest tests/test_slurm_cluster.py -m slurm -q

Training jobs run a stand-in ``kdkit`` (written below, first on PATH; the dataset name
picks its behaviour) so chains, DDP, failures, cancels and timeouts are tested without
real training. The tests at the end run the real ``kdkit train`` and the real notebooks;
they skip while those are missing, except under CI=true, where they fail.
The TIMEOUT job (~80 s) is submitted first and checked last so the file takes ~2 min.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from kdkit.cli.slurm import register as register_cli
from kdkit.cluster.orchestrator import FabricSlurmTrainingOrchestrator

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "tests" / "golden" / "slurm" / "params.ipynb"   # stand-in: writes metrics.json
SMALL = {"cpus_per_task": 1, "mem": "500M", "time": "5"}          # fits the 2-core test node
SLEEP, FAIL = {"data_root": "sleep"}, {"data_root": "fail"}         # the fake kdkit's behaviours

FAKE_KDKIT = '''#!{python}
"""Stand-in for `kdkit train`; the last part of --data-root picks the behaviour: sleep, fail, ddp,
anything else = train (a teacher writes checkpoints/best.pt, a student reads --teacher)."""
import argparse, json, os, sys, time
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("command", choices=["train"])
for flag in ("--model", "--dataset", "--type", "--teacher", "--data-root", "--learning-rate", "--epochs", "--run-name",
             "--runs-dir", "--devices", "--num-nodes"):
    p.add_argument(flag)
a, _other = p.parse_known_args()
run = Path(a.runs_dir, a.run_name)
behaviour = Path(a.data_root).name if a.data_root else ""
if behaviour == "sleep":
    time.sleep(600)
if behaviour == "fail":
    print("boom: dataset 'fail' cannot be read", file=sys.stderr)
    sys.exit(1)
if behaviour == "ddp":
    import torch
    from lightning_fabric import Fabric
    from lightning_fabric.plugins.environments import SLURMEnvironment

    fabric = Fabric(accelerator="cpu", devices=int(a.devices), num_nodes=int(a.num_nodes), strategy="ddp")
    fabric.launch()
    total = fabric.all_reduce(torch.tensor([fabric.global_rank + 1.0]), reduce_op="sum")
    (run / f"rank{{fabric.global_rank}}.json").write_text(json.dumps(
        {{"rank": fabric.global_rank, "world": fabric.world_size, "sum": total.item(),
         "slurm_detected": SLURMEnvironment.detect(), "backend": str(torch.distributed.get_backend())}}))
    fabric.barrier()  # no rank may exit while another is still inside gloo (it aborts the step)
    torch.distributed.destroy_process_group()
    sys.exit(0)
if int(os.environ.get("SLURM_PROCID", 0)) == 0:
    if a.type == "teacher":
        time.sleep(3)
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run / "checkpoints" / "best.pt").write_text("weights of " + a.run_name)
    (run / "metrics.json").write_text(json.dumps({{
        "type": a.type, "teacher": a.teacher, "learning_rate": a.learning_rate, "epochs": a.epochs,
        "teacher_content": Path(a.teacher).read_text() if a.teacher else None,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}}))
'''


def _require(ok: bool, why: str) -> None:
    """Skips when a prerequisite is missing; under CI=true that is a failure."""
    if not ok:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true but {why}")
        pytest.skip(why)


def _kdkit_train_available() -> bool:
    exe = Path(sys.prefix, "bin", "kdkit")
    return exe.is_file() and subprocess.run([exe, "train", "--help"], capture_output=True).returncode == 0


REAL_NOTEBOOKS = {n: REPO / "notebooks" / f"{n}.ipynb" for n in ("teacher", "student")}


@pytest.fixture(scope="module")
def cluster(slurm_cluster, tmp_path_factory):
    """Orchestrators over one runs dir. The slow jobs (the TIMEOUT job, the real training
    pipeline, the real notebooks) are submitted here, first, and checked by the last tests."""
    root = tmp_path_factory.mktemp("slurm")
    (root / "bin").mkdir()
    (root / "bin" / "kdkit").write_text(FAKE_KDKIT.format(python=sys.executable))
    (root / "bin" / "kdkit").chmod(0o755)
    env = dict(os.environ, PATH=f"{root / 'bin'}:{Path(sys.executable).parent}:{os.environ['PATH']}")
    runner = lambda argv: subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)  # noqa: E731
    fake = FabricSlurmTrainingOrchestrator(root / "runs", runner=runner, venv=None, workdir=root, **SMALL)
    timeout_job = fake.submit_gat_training("synthetic", "teacher", time="1", run_name="times_out", config=SLEEP)
    # Real jobs: this venv activated, data and graph cache in the temp dir (kdkit's env vars).
    real_env = {"KDKIT_CACHE_DIR": str(root / "cache"), "KDKIT_SYNTHETIC_ROOT": str(root / "synthetic-seed{seed}"),
                **os.environ}
    real = FabricSlurmTrainingOrchestrator(root / "runs", workdir=root, **SMALL, runner=lambda argv: subprocess.run(
        argv, env=real_env, capture_output=True, text=True, timeout=60))
    real_train = real_notebooks = None
    if _kdkit_train_available():
        real_train = real.submit_pipeline("synthetic", epochs=1, teacher_overrides={"devices": 2}, time="15")
    if all(p.is_file() for p in REAL_NOTEBOOKS.values()):
        teacher = real.submit_notebook(REAL_NOTEBOOKS["teacher"], {"epochs": 1}, time="15")
        # teacher.ipynb trains run "<model>_teacher" inside its run_dir
        checkpoint = real.runs_dir / real.registry.load()[teacher]["name"] / "gat_teacher" / "checkpoints" / "best.pt"
        real_notebooks = teacher, real.submit_notebook(REAL_NOTEBOOKS["student"], {"teacher_checkpoint": str(checkpoint), "epochs": 1},
                                                       dependency=f"afterok:{teacher}", time="15")
    return SimpleNamespace(root=root, runs=root / "runs", fake=fake, runner=runner, timeout_job=timeout_job,
                           real=real, real_train=real_train, real_notebooks=real_notebooks)


def _metrics(run_dir) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def _run_dir(orch, job) -> Path:
    return Path(orch.registry.load()[job]["run_dir"])


def test_notebook_chain_with_papermill(cluster):
    """Notebook A writes metrics.json; B starts after A (afterok) and reads A's file."""
    from jupyter_client.kernelspec import find_kernel_specs

    kernel = "kdkit" if "kdkit" in find_kernel_specs() else "python3"
    orch = FabricSlurmTrainingOrchestrator(cluster.runs, workdir=cluster.root, **SMALL)
    note = "it's $(touch PWNED) `id`"
    a = orch.submit_notebook(NOTEBOOK, {"dataset": "hcrl_sa", "epochs": 2, "note": note, "tags": ["x"]}, kernel=kernel)
    a_dir = _run_dir(orch, a)
    b = orch.submit_notebook(NOTEBOOK, {"input_path": str(a_dir / "metrics.json")}, kernel=kernel,
                             dependency=f"afterok:{a}")
    info = orch.wait(b, timeout=240, poll=1)
    assert info["state"] == "COMPLETED", orch.logs(a) + orch.logs(b)
    assert orch.status(a)["state"] == "COMPLETED"
    first = _metrics(a_dir)
    assert first == {"dataset": "hcrl_sa", "epochs": 2, "learning_rate": 0.001, "tags": ["x"], "note": note,
                     "input": None, "job": a}
    assert _metrics(_run_dir(orch, b))["input"] == first
    for name in ("job.sbatch", "parameters.json", "params.ipynb", f"slurm-{a}.out"):
        assert (a_dir / name).is_file(), name
    assert json.loads((a_dir / "parameters.json").read_text())["note"] == note
    assert not (REPO / "PWNED").exists() and not (NOTEBOOK.parent / "PWNED").exists()


def test_pipeline_student_waits_for_teacher_and_gets_its_checkpoint(cluster):
    orch = cluster.fake
    teacher, student = orch.submit_pipeline("synthetic", epochs=1, config={"learning_rate": 0.01})
    assert orch.status(student)["state"] == "PENDING"          # the teacher sleeps 3 s
    info = orch.wait(student, timeout=180, poll=1)
    assert info["state"] == "COMPLETED", orch.logs(student)
    t_dir, s_dir = _run_dir(orch, teacher), _run_dir(orch, student)
    got = _metrics(s_dir)
    assert got["teacher"] == str(t_dir / "checkpoints" / "best.pt")
    assert got["teacher_content"] == f"weights of {t_dir.name}"
    assert got["learning_rate"] == "0.01" and got["epochs"] == "1"


def test_two_task_srun_fabric_ddp_all_reduce(cluster):
    orch = cluster.fake
    job = orch.submit_gat_training("synthetic", "teacher", devices=2, config={"data_root": "ddp"})
    info = orch.wait(job, timeout=240, poll=1)
    assert info["state"] == "COMPLETED", orch.logs(job)
    ranks = [json.loads((_run_dir(orch, job) / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1]
    for r in ranks:
        assert r == dict(r, world=2, sum=3.0, slurm_detected=True, backend="gloo")


def test_gpu_preset_request_reaches_the_job(cluster):
    gpu = FabricSlurmTrainingOrchestrator(cluster.runs, preset="a100", runner=cluster.runner, venv=None,
                                          workdir=cluster.root, **SMALL)
    job = gpu.submit_gat_training("synthetic", "teacher")
    assert "#SBATCH --gres=gpu:a100:1" in (_run_dir(gpu, job) / "job.sbatch").read_text()
    assert gpu.wait(job, timeout=180, poll=1)["state"] == "COMPLETED", gpu.logs(job)
    assert _metrics(_run_dir(gpu, job))["cuda_visible_devices"] == "0"     # Slurm bound one (fake) GPU


def test_cancel_a_running_job(cluster):
    orch = cluster.fake
    job = orch.submit_gat_training("synthetic", "teacher", config=SLEEP)
    deadline = time.monotonic() + 120
    while orch.status(job)["state"] != "RUNNING":
        assert time.monotonic() < deadline, orch.status(job)
        time.sleep(0.5)
    orch.cancel(job)
    assert orch.wait(job, timeout=180, poll=1)["state"] == "CANCELLED"


def test_failing_teacher_reports_exit_code_and_log_and_kills_student(cluster):
    orch = cluster.fake
    teacher, student = orch.submit_pipeline("synthetic", config=FAIL)
    info = orch.wait(teacher, timeout=180, poll=1)
    assert info["state"] == "FAILED" and info["exit_code"] == "1:0"
    assert "boom: dataset 'fail' cannot be read" in info["log_tail"]
    dependent = orch.wait(student, timeout=180, poll=1)                  # kill_invalid_depend
    assert dependent["state"] == "CANCELLED" and dependent["reason"] == "DependencyNeverSatisfied"


def test_cli_status_logs_and_wait(cluster, capsys):
    parser = argparse.ArgumentParser(prog="kdkit")
    register_cli(parser.add_subparsers(dest="command", required=True))
    job = cluster.fake.submit_gat_training("synthetic", "teacher", run_name="cli_fail", config=FAIL)
    run = lambda *argv: (lambda a: a.func(a))(parser.parse_args(["slurm", "--runs-dir", str(cluster.runs), *argv]))  # noqa: E731
    assert run("wait", job, "--poll", "1", "--timeout", "180") == 1
    out = capsys.readouterr().out
    assert f"{job}  FAILED" in out and "exit_code=1:0" in out and "boom" in out
    assert run("logs", job, "--tail", "5") == 0 and "boom" in capsys.readouterr().out
    assert run("status") == 0 and "cli_fail" in capsys.readouterr().out


# ------------------------------------ real kdkit train / notebooks (CI must run these)
@pytest.mark.slow
def test_real_kdkit_train_pipeline_with_ddp_teacher(cluster):
    _require(cluster.real_train is not None, f"{sys.prefix}/bin/kdkit train is not installed (make venv)")
    orch, (teacher, student) = cluster.real, cluster.real_train
    info = orch.wait(student, timeout=600, poll=2)
    assert orch.status(teacher)["state"] == "COMPLETED", orch.logs(teacher)
    assert info["state"] == "COMPLETED", orch.logs(student)
    assert "Starting with 2 processes" in orch.logs(teacher, tail=10_000)       # srun + Fabric DDP
    for job in (teacher, student):
        assert (_run_dir(orch, job) / "checkpoints" / "best.pt").is_file()
        assert _metrics(_run_dir(orch, job))


@pytest.mark.slow
def test_real_notebooks_teacher_then_student(cluster):
    _require(cluster.real_notebooks is not None, "notebooks/teacher.ipynb and student.ipynb do not exist yet")
    orch, (teacher, student) = cluster.real, cluster.real_notebooks
    info = orch.wait(student, timeout=600, poll=2)
    assert orch.status(teacher)["state"] == "COMPLETED", orch.logs(teacher)
    assert info["state"] == "COMPLETED", orch.logs(student)
    t_metrics, s_metrics = _metrics(_run_dir(orch, teacher)), _metrics(_run_dir(orch, student))
    assert t_metrics["notebook"] == "teacher" and s_metrics["notebook"] == "student"
    assert s_metrics["teacher"]["checkpoint"] == str(_run_dir(orch, teacher) / "gat_teacher" / "checkpoints" / "best.pt")


# ------------------------------------------------------------------ last: the TIMEOUT job
def test_time_limit_gives_timeout_and_registry_survives_restart(cluster):
    info = cluster.fake.wait(cluster.timeout_job, timeout=240, poll=2)
    assert info["state"] == "TIMEOUT", info
    fresh = FabricSlurmTrainingOrchestrator(cluster.runs)               # as after a restart
    jobs = {j["name"]: j for j in fresh.check_all_jobs()}
    assert jobs["times_out"]["state"] == "TIMEOUT"
    assert jobs["cli_fail"]["state"] == "FAILED" and jobs["cli_fail"]["exit_code"] == "1:0"
    assert all(j["state"] in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"} for j in jobs.values()), jobs
