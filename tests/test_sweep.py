"""kdkit sweep without a cluster: grid expansion and checks, the array script (golden files),
collecting results with missing and failed tasks, Slurm states of array tasks, retry-failed's
indices, the local pool (a stand-in notebook, then the real student notebook), the CLI and
the panel's sweep control.

    .venv/bin/python -m pytest tests/test_sweep.py -q
    KDKIT_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_sweep.py -k golden   # rewrite goldens
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest

from kdkit.cli.main import build_parser, main
from kdkit.cluster import sweep as sw
from kdkit.cluster.orchestrator import FabricSlurmTrainingOrchestrator

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden" / "sweep"
TASK_NB = GOLDEN / "task.ipynb"     # stand-in: writes metrics.json (x, seed, overall.f1, ...) into run_dir
STUDENT = REPO / "notebooks" / "student.ipynb"


class FakeSlurm:
    """sbatch numbers jobs from 100; squeue answers from ``tasks`` ({"100_3": "FAILED"}); scontrol
    and sacct know nothing more; scancel is recorded."""

    def __init__(self):
        self.calls, self.tasks, self.scripts, self.next_id = [], {}, {}, 99

    def __call__(self, argv):
        self.calls.append(argv)
        def ok(out=""):
            return subprocess.CompletedProcess(argv, 0, out, "")

        if argv[0] == "sbatch":
            self.next_id += 1
            self.scripts[str(self.next_id)] = Path(argv[-1]).read_text()
            return ok(f"{self.next_id}\n")
        if argv[0] == "squeue":
            arrays = argv[-1].removeprefix("--jobs=").split(",")
            return ok("".join(f"{j}|{s}|None|node1\n" for j, s in self.tasks.items() if j.split("_")[0] in arrays))
        if argv[0] == "scancel":
            return ok()
        return subprocess.CompletedProcess(argv, 1, "", "slurm_load_jobs error: Invalid job id specified")


@pytest.fixture
def fake():
    return FakeSlurm()


@pytest.fixture
def orch(tmp_path, fake):
    return FabricSlurmTrainingOrchestrator(tmp_path / "runs", runner=fake, venv=None, workdir=tmp_path)


# ------------------------------------------------------------------------------- grids
def test_expand_is_the_product_with_seeds_innermost():
    tasks = sw.expand({"kd_temperature": [2.0, 4.0], "kd_alpha": [0.5, 0.7, 0.9]}, seeds=[0, 1])
    assert len(tasks) == 12 and [t["task"] for t in tasks] == list(range(12))
    assert tasks[0] == {"task": 0, "seed": 0, "params": {"kd_temperature": 2.0, "kd_alpha": 0.5}}
    assert tasks[1] == {"task": 1, "seed": 1, "params": {"kd_temperature": 2.0, "kd_alpha": 0.5}}
    assert tasks[2]["params"] == {"kd_temperature": 2.0, "kd_alpha": 0.7}
    assert tasks[11] == {"task": 11, "seed": 1, "params": {"kd_temperature": 4.0, "kd_alpha": 0.9}}
    assert [t["seed"] for t in sw.expand({"kd_alpha": [0.5, 0.9]})] == [None, None]


def test_plan_checks_every_key_and_value_against_the_notebook_and_the_schema(tmp_path):
    spec = sw.plan(STUDENT, {"kd_temperature": [2.0, 4.0], "hidden": [16, None]}, seeds=[0, 1, 2],
                   parameters={"epochs": 1}, name="ok", sweeps_dir=tmp_path)
    assert len(spec["tasks"]) == 12 and spec["tasks"][5]["run_dir"] == "tasks/task0005"
    assert spec["notebook"] == str(STUDENT) and spec["parameters"] == {"epochs": 1}
    bad = [({"kd_tmperature": [2.0]}, r"grid key 'kd_tmperature' is not a parameter of .*student.ipynb; did you mean 'kd_temperature'\? \(known: .*kd_temperature"),
           ({"kd_alpha": [0.5, 1.5]}, r"grid key 'kd_alpha', value 1.5: .*kd_alpha"),
           ({"batch_size": [32, "two"]}, r"grid key 'batch_size', value 'two'"),
           ({"precision": ["32-true", "fp8"]}, r"grid key 'precision', value 'fp8'"),
           ({"heads": [2, 2.5]}, r"grid key 'heads', value 2.5"),
           ({"threads": [1, "x"]}, r"grid key 'threads', value 'x'"),
           ({"kd_alpha": 0.5}, r"key 'kd_alpha' must map to a non-empty list"),
           ({"kd_alpha": []}, r"key 'kd_alpha' must map to a non-empty list"),
           ({"kd_alpha": [0.5, 0.5]}, r"key 'kd_alpha' lists the value 0.5 twice"),
           ({"seed": [0, 1]}, r"grid key 'seed': the sweep sets it .*--seeds"),
           ({"run_dir": ["a"]}, r"grid key 'run_dir': the sweep sets it"),
           ({"epochs": [1, 2]}, r"grid key 'epochs' is also a fixed parameter"),
           ([1, 2], r"expected an object mapping notebook parameters to lists")]
    for grid, message in bad:
        with pytest.raises(ValueError, match=message):
            sw.plan(STUDENT, grid, seeds=[0], parameters={"epochs": 1}, sweeps_dir=tmp_path)
    with pytest.raises(ValueError, match="parameter 'epoch' is not in"):
        sw.plan(STUDENT, {"kd_alpha": [0.5]}, parameters={"epoch": 1}, sweeps_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="teacher checkpoint .*missing.pt does not exist"):
        sw.plan(STUDENT, {"kd_alpha": [0.5]}, teacher_checkpoint=tmp_path / "missing.pt", sweeps_dir=tmp_path)
    with pytest.raises(ValueError, match="teacher_checkpoint is set by the teacher"):
        sw.plan(STUDENT, {"teacher_checkpoint": ["a", "b"]}, teacher_notebook=REPO / "notebooks" / "teacher.ipynb",
                sweeps_dir=tmp_path)
    with pytest.raises(ValueError, match="teacher_parameters|parameter 'kd_alpha' is not in .*teacher.ipynb"):
        sw.plan(STUDENT, {"kd_alpha": [0.5]}, teacher_notebook=REPO / "notebooks" / "teacher.ipynb",
                teacher_parameters={"kd_alpha": 0.5}, sweeps_dir=tmp_path)
    with pytest.raises(ValueError, match="run name"):
        sw.plan(STUDENT, {"kd_alpha": [0.5]}, name="bad name", sweeps_dir=tmp_path)
    # run_dir is the sweep's: a fixed one would be ignored, so it is refused
    with pytest.raises(ValueError, match=r"parameter run_dir='x': the sweep sets it for each task .*--name and --sweeps-dir"):
        sw.plan(STUDENT, {"kd_alpha": [0.5]}, parameters={"run_dir": "x"}, sweeps_dir=tmp_path)
    # so is a fixed seed beside --seeds (-p seed 1 --seeds 0,1,2 ran seeds 0, 1, 2 without a word)
    with pytest.raises(ValueError, match=r"parameter seed=1 and --seeds: the sweep sets each task's seed"):
        sw.plan(STUDENT, {"kd_alpha": [0.5]}, [0, 1], parameters={"seed": 1}, sweeps_dir=tmp_path)
    with pytest.raises(ValueError, match=r"teacher parameter run_dir='x': the sweep runs the teacher in <sweep>/teacher"):
        sw.plan(STUDENT, {"kd_alpha": [0.5]}, teacher_notebook=REPO / "notebooks" / "teacher.ipynb",
                teacher_parameters={"run_dir": "x"}, sweeps_dir=tmp_path)
    # sizes that only fail together (hidden against the preset's ID embedding), per task and for the teacher
    # (the notebooks have no embedding_dim parameter: the advice is a larger hidden, the preset's embedding named)
    with pytest.raises(ValueError, match=r"task 1 \({'hidden': 8}\): student.ipynb parameter hidden=8: the gat student "
                                         r"preset's CAN-ID embedding \(embedding_dim 8\) .* give hidden above 8"):
        sw.plan(STUDENT, {"hidden": [16, 8]}, sweeps_dir=tmp_path)
    with pytest.raises(ValueError, match=r"teacher.ipynb parameter hidden=4: the gat teacher preset's CAN-ID embedding "
                                         r"\(embedding_dim 16\)"):
        sw.plan(STUDENT, {"kd_alpha": [0.5]}, teacher_notebook=REPO / "notebooks" / "teacher.ipynb",
                teacher_parameters={"hidden": 4}, sweeps_dir=tmp_path)
    assert not any(tmp_path.iterdir())      # planning writes nothing


def test_grid_files_json_and_toml(tmp_path):
    (tmp_path / "g.json").write_text('{"kd_alpha": [0.5, 0.9], "hidden": [8, 16]}')
    (tmp_path / "g.toml").write_text("kd_alpha = [0.5, 0.9]\nhidden = [8, 16]\n")
    assert sw.load_grid(tmp_path / "g.json") == sw.load_grid(tmp_path / "g.toml") == {"kd_alpha": [0.5, 0.9],
                                                                                     "hidden": [8, 16]}
    (tmp_path / "bad.json").write_text('{"kd_alpha": [0.5,]}')
    with pytest.raises(ValueError, match=r"grid file .*bad.json is not valid JSON"):
        sw.load_grid(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="grid file .*none.json does not exist"):
        sw.load_grid(tmp_path / "none.json")
    assert sw.parse_seeds("0, 1,2") == [0, 1, 2]
    for text in ("0,x", "1,1", "", "0,1,,2", "-1", "4294967296"):  # the last three failed in the task, or not at all
        with pytest.raises(ValueError, match="--seeds"):
            sw.parse_seeds(text)


def test_array_spec():
    assert sw.array_spec(list(range(27)), 2) == "0-26%2"
    assert sw.array_spec([3, 5]) == "3,5"
    assert sw.array_spec([5, 0, 1, 2, 7, 8], 4) == "0-2,5,7-8%4"


# ---------------------------------------------------------------------- golden scripts
def _golden_cases():
    sweep_dir = Path("/scratch/kdkit/runs/sweeps/kd_grid")
    cpu = FabricSlurmTrainingOrchestrator(sweep_dir, preset="cpu", venv="/opt/venvs/kdkit", workdir="/home/me/kdkit")
    gpu = FabricSlurmTrainingOrchestrator(sweep_dir, preset="a100", account="proj42", conda_env="kdkit",
                                          modules=["cuda/12.1"], workdir="/home/me/kdkit", separate_stderr=True)
    return {
        "array_cpu": lambda: sw.render_job(sweep_dir, "kd_grid", cpu, indices=list(range(27)), max_parallel=2),
        "array_a100_after_teacher": lambda: sw.render_job(sweep_dir, "kd_grid", gpu, indices=list(range(8)),
                                                          max_parallel=4, dependency="afterok:41", time="04:00:00"),
        "array_retry": lambda: sw.render_job(sweep_dir, "kd_grid", cpu, indices=[3, 5], max_parallel=2),
        "teacher_cpu": lambda: sw.render_job(sweep_dir, "kd_grid", cpu, indices=None),
    }


@pytest.mark.parametrize("case", sorted(_golden_cases()))
def test_rendered_array_scripts_match_golden(case):
    script = _golden_cases()[case]().replace(str(REPO), "<REPO>")
    path = GOLDEN / f"{case}.sbatch"
    if os.environ.get("KDKIT_UPDATE_GOLDEN"):
        path.write_text(script)
    assert script == path.read_text(), f"rendered {case} differs from {path} (KDKIT_UPDATE_GOLDEN=1 rewrites)"


def test_array_script_carries_the_requeue_interface():
    script = _golden_cases()["array_cpu"]()
    lines = script.splitlines()
    assert "#SBATCH --array=0-26%2" in lines and "#SBATCH --requeue" in lines
    assert "#SBATCH --signal=B:USR1@120" in lines and "#SBATCH --open-mode=append" in lines   # the requeue defaults
    assert lines[-1].startswith("exec python -m kdkit.cluster.requeue --max-requeues 3 -- "
                                "python -m kdkit.cli sweep run-task /scratch/kdkit/runs/sweeps/kd_grid")
    assert "--teacher" in _golden_cases()["teacher_cpu"]() and "#SBATCH --array" not in _golden_cases()["teacher_cpu"]()
    with pytest.raises(ValueError, match="cannot go in an #SBATCH line|path usable in #SBATCH"):
        sw.render_job(Path("/tmp/my sweeps/x"), "x", FabricSlurmTrainingOrchestrator("/tmp/r"), indices=[0])


# ------------------------------------------------------------------- results and states
def _sweep(tmp_path, grid=None, seeds=(0, 1), **kw) -> Path:
    spec = sw.plan(TASK_NB, grid or {"x": [1.0, 2.0, 3.0]}, list(seeds) if seeds else None, name="s",
                   sweeps_dir=tmp_path / "sweeps", **kw)
    return sw.create(spec)


def _task_json(sweep_dir, i, **fields):
    (sweep_dir / f"tasks/task{i:04d}/task.json").write_text(json.dumps(fields))


def _metrics(sweep_dir, i, **metrics):
    (sweep_dir / f"tasks/task{i:04d}/metrics.json").write_text(json.dumps(metrics))


def test_collect_keeps_finished_results_beside_failed_and_missing_tasks(tmp_path):
    d = _sweep(tmp_path)                                  # 3 x values x 2 seeds = 6 tasks, none run
    assert [r["state"] for r in json.loads((d / "results.json").read_text())["rows"]] == ["PENDING"] * 6
    _task_json(d, 0, state="COMPLETED", job_id=None)
    _metrics(d, 0, overall={"f1": 0.5, "mcc": None}, history=[1, 2], tables={"t": {"x": 1}}, notebook="task",
             x=1.0, seed=0)                              # the notebook's copies of its parameters: not repeated
    _task_json(d, 1, state="FAILED", job_id=None, error="ValueError: stand-in failure for x=1.0")
    _metrics(d, 1, overall={"f1": 0.1})                   # written before the failure: kept apart
    _task_json(d, 2, state="COMPLETED", job_id=None)      # completed but no metrics.json: {}
    results = sw.collect(d)
    assert set(results) == {"sweep", "notebook", "grid", "seeds", "rows"}
    assert (results["sweep"], results["notebook"], results["grid"], results["seeds"]) == (
        "s", str(TASK_NB), {"x": [1.0, 2.0, 3.0]}, [0, 1])
    rows = results["rows"]
    assert [r["state"] for r in rows] == ["COMPLETED", "FAILED", "COMPLETED", "PENDING", "PENDING", "PENDING"]
    assert rows[0] == {"task": 0, "state": "COMPLETED", "seed": 0, "params": {"x": 1.0}, "run_dir": "tasks/task0000",
                       "job_id": None, "error": None, "metrics": json.loads((d / "tasks/task0000/metrics.json").read_text())}
    assert rows[1]["error"] == "ValueError: stand-in failure for x=1.0" and rows[1]["metrics"] == {}
    assert rows[1]["partial_metrics"] == {"overall": {"f1": 0.1}}  # not in a mean over finished tasks
    assert rows[2]["metrics"] == {} and rows[5] == dict(rows[5], seed=1, params={"x": 3.0}, metrics={}, error=None)
    assert json.loads((d / "results.json").read_text()) == results
    with open(d / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["task", "state", "seed", "x", "overall.f1", "overall.mcc", "notebook"]
    assert table[0] == {"task": "0", "state": "COMPLETED", "seed": "0", "x": "1.0", "overall.f1": "0.5",
                        "overall.mcc": "", "notebook": "task"}
    assert table[1]["overall.f1"] == "" and table[1]["state"] == "FAILED" and table[3]["overall.f1"] == ""


def test_a_local_task_whose_process_died_counts_as_failed(tmp_path):
    d = _sweep(tmp_path, seeds=None)
    dead = subprocess.Popen(["true"])
    dead.wait()
    _task_json(d, 0, state="RUNNING", job_id=None, host=os.uname().nodename, pid=dead.pid)
    _task_json(d, 1, state="RUNNING", job_id=None, host=os.uname().nodename, pid=os.getpid())
    rows = sw.collect(d)["rows"]
    assert rows[0]["state"] == "FAILED" and f"pid {dead.pid}" in rows[0]["error"]
    assert rows[1]["state"] == "RUNNING"


def test_slurm_states_of_array_tasks_reach_the_rows(tmp_path, orch, fake):
    d = _sweep(tmp_path)
    job = sw.submit(d, orch, max_parallel=2)
    assert job == "100" and "#SBATCH --array=0-5%2" in fake.scripts["100"]
    assert sw.collect(d)["rows"][0]["job_id"] == "100_0"
    fake.tasks = {"100_0": "COMPLETED", "100_1": "RUNNING", "100_2": "TIMEOUT", "100_3": "PENDING",
                  "100_4": "OUT_OF_MEMORY"}          # 100_5 unknown to squeue, scontrol and sacct
    (d / "logs" / "slurm-100_2.out").write_text("epoch 1\nslurmstepd: *** JOB 102 DUE TO TIME LIMIT ***\n")
    _task_json(d, 0, state="COMPLETED", job_id="100_0")
    _metrics(d, 0, overall={"f1": 0.75})
    _task_json(d, 4, state="RUNNING", job_id="100_4")   # killed: its own record never got further
    rows = sw.status(d, orch)["rows"]
    assert [r["state"] for r in rows] == ["COMPLETED", "RUNNING", "TIMEOUT", "PENDING", "OUT_OF_MEMORY", "PENDING"]
    assert "DUE TO TIME LIMIT" in rows[2]["error"] and rows[4]["error"] == "OUT_OF_MEMORY"
    assert rows[0]["metrics"] == {"overall": {"f1": 0.75}} and rows[0]["error"] is None
    squeues = [c for c in fake.calls if c[0] == "squeue"]
    assert squeues[-1][:4] == ["squeue", "-h", "-r", "-t"] and squeues[-1][-1] == "--jobs=100"
    fake.tasks = {}                                      # Slurm forgot: the last known states stay
    assert [r["state"] for r in sw.collect(d)["rows"]][:5] == ["COMPLETED", "RUNNING", "TIMEOUT", "PENDING",
                                                               "OUT_OF_MEMORY"]


def test_retry_failed_resubmits_exactly_the_failed_tasks_into_their_run_dirs(tmp_path, orch, fake):
    d = _sweep(tmp_path)
    sw.submit(d, orch, max_parallel=2)
    fake.tasks = {"100_0": "COMPLETED", "100_1": "FAILED", "100_2": "PREEMPTED", "100_3": "RUNNING",
                  "100_4": "NODE_FAIL", "100_5": "COMPLETED"}
    assert sw.failed_tasks(sw.status(d, orch)) == [1, 2, 4]
    indices, job = sw.retry_failed(d, orch, time="02:00:00")  # a task that timed out gets more time
    assert (indices, job) == ([1, 2, 4], "101")
    assert "#SBATCH --array=1-2,4%2" in fake.scripts["101"].splitlines()
    assert "#SBATCH --time=02:00:00" in fake.scripts["101"].splitlines()
    sbatch = [c for c in fake.calls if c[0] == "sbatch"]
    assert "--export=ALL,KDKIT_RESUME=auto" in sbatch[1] and not any(a.startswith("--export") for a in sbatch[0])
    assert f"run-task {d}" in fake.scripts["101"]        # the same sweep, so the same task run dirs
    spec = sw.load(d)
    assert [s["array"] for s in spec["submissions"]] == ["0-5%2", "1-2,4%2"]
    assert sw.current_jobs(spec) == {0: "100_0", 1: "101_1", 2: "101_2", 3: "100_3", 4: "101_4", 5: "100_5"}
    fake.tasks.update({"101_1": "PENDING", "101_2": "RUNNING", "101_4": "PENDING"})
    _task_json(d, 1, state="FAILED", job_id="100_1", error="old")    # the first try's record: not this job's
    rows = sw.status(d, orch)["rows"]
    assert [(r["job_id"], r["state"]) for r in rows] == [("100_0", "COMPLETED"), ("101_1", "PENDING"),
                                                        ("101_2", "RUNNING"), ("100_3", "RUNNING"),
                                                        ("101_4", "PENDING"), ("100_5", "COMPLETED")]
    assert sw.cancel(d, orch) == ["100", "101"]
    assert [c for c in fake.calls if c[0] == "scancel"] == [["scancel", "--", "100"], ["scancel", "--", "101"]]
    fake.tasks = {j: "COMPLETED" for j in sw.current_jobs(spec).values()}
    assert sw.retry_failed(d, orch) == ([], None)


def test_retry_failed_keeps_the_sweeps_resources(tmp_path, fake, monkeypatch):
    """retry-failed built its array from the cpu preset: a GPU sweep's partition, account, GPUs, memory,
    signal grace and requeue limit were dropped (and a task that timed out could get a shorter limit)."""
    from kdkit.cli import sweep as cli_sweep

    gpu = FabricSlurmTrainingOrchestrator(tmp_path / "runs", preset="a100", runner=fake, venv=None, workdir=tmp_path)
    d = _sweep(tmp_path)
    sw.submit(d, gpu, partition="gpu", account="lab", time="00:20:00", mem="1G", signal_grace=30, max_requeues=5)
    first = fake.scripts["100"].splitlines()
    fake.tasks = {"100_0": "COMPLETED", "100_1": "TIMEOUT", **{f"100_{i}": "COMPLETED" for i in range(2, 6)}}
    # the command line's orchestrator: the preset the sweep was submitted with, not cpu
    monkeypatch.setattr(cli_sweep, "FabricSlurmTrainingOrchestrator",
                        lambda runs_dir, preset: FabricSlurmTrainingOrchestrator(runs_dir, preset=preset, runner=fake,
                                                                                 venv=None, workdir=tmp_path))
    args = build_parser("sweep").parse_args(["sweep", "retry-failed", str(d), "--time", "01:00:00"])
    orch = cli_sweep._orchestrator(args, d)
    assert orch.preset == "a100"
    indices, job = sw.retry_failed(d, orch, time=args.time, mem=args.mem)
    retried = fake.scripts[job].splitlines()
    kept = [line for line in first if line.startswith(("#SBATCH --partition", "#SBATCH --account", "#SBATCH --mem",
                                                       "#SBATCH --gres", "#SBATCH --signal", "#SBATCH --cpus"))]
    assert len(kept) >= 5 and all(line in retried for line in kept)
    assert "#SBATCH --time=01:00:00" in retried and "#SBATCH --time=00:20:00" in first
    assert [line for line in retried if "max-requeues" in line] == [line for line in first if "max-requeues" in line]
    fake.tasks.update({f"{job}_1": "FAILED"})
    _, again = sw.retry_failed(d, orch)  # the time given to the retry goes on with the next one
    assert "#SBATCH --time=01:00:00" in fake.scripts[again].splitlines()


def test_teacher_notebook_job_comes_first_and_the_array_waits_for_it(tmp_path, orch, fake):
    d = _sweep(tmp_path, teacher_notebook=TASK_NB, teacher_parameters={"x": 9.0})
    job = sw.submit(d, orch, max_parallel=3)
    assert job == "101" and "--teacher" in fake.scripts["100"] and "#SBATCH --array" not in fake.scripts["100"]
    lines = fake.scripts["101"].splitlines()
    assert "#SBATCH --dependency=afterok:100" in lines and "#SBATCH --kill-on-invalid-dep=yes" in lines
    assert sw.teacher_state(d, orch)["job_id"] == "100"


# ------------------------------------------------------------------------------ local pool
def test_local_pool_runs_collects_and_retries_only_the_failed_task(kdkit_env, tmp_path):
    d = _sweep(tmp_path, {"x": [1.0, 2.0, 3.0]}, seeds=None, parameters={"mode": "break_file"},
               teacher_notebook=TASK_NB, teacher_parameters={"x": 7.0})
    (d / "tasks/task0001/BREAK").write_text("")          # task 1 (x=2.0) fails while this exists
    ended = []
    results = sw.run_local(d, max_parallel=2, on_task_end=lambda i, s: ended.append((i, s)))
    rows = results["rows"]
    assert [r["state"] for r in rows] == ["COMPLETED", "FAILED", "COMPLETED"], [r["error"] for r in rows]
    assert sorted(ended) == [(0, "COMPLETED"), (1, "FAILED"), (2, "COMPLETED")]
    assert "ValueError: stand-in failure for x=2.0" in rows[1]["error"] and rows[1]["metrics"] == {}
    assert rows[2]["metrics"]["x"] == 3.0 and rows[2]["metrics"]["overall"]["f1"] == 0.3
    assert rows[0]["metrics"]["teacher"] == "weights x=7.0"      # every task got the teacher run's checkpoint
    assert (d / "tasks/task0002/task.ipynb").is_file() and (d / "teacher/metrics.json").is_file()
    first_start = json.loads((d / "tasks/task0000/task.json").read_text())["started"]

    (d / "tasks/task0001/BREAK").unlink()
    indices, again = sw.retry_failed(d, max_parallel=2)
    assert indices == [1] and [r["state"] for r in again["rows"]] == ["COMPLETED"] * 3
    assert json.loads((d / "tasks/task0000/task.json").read_text())["started"] == first_start  # not rerun
    assert again["rows"][1]["metrics"]["x"] == 2.0 and again["rows"][1]["error"] is None
    with open(d / "results.csv", newline="") as f:
        assert [(row["state"], row["overall.f1"]) for row in csv.DictReader(f)] == [
            ("COMPLETED", "0.1"), ("COMPLETED", "0.2"), ("COMPLETED", "0.3")]


def test_a_task_process_that_dies_before_its_run_is_failed_with_its_log(kdkit_env, tmp_path):
    d = _sweep(tmp_path, {"x": [1.0]}, seeds=None, teacher_notebook=TASK_NB)
    (d / "teacher").mkdir()
    (d / "teacher" / "task.json").write_text(json.dumps({"state": "COMPLETED", "job_id": None}))  # but no metrics.json
    (row,) = sw.run_local(d, max_parallel=1)["rows"]
    assert row["state"] == "FAILED" and row["error"].startswith("exit status 2\n")
    assert "the teacher run" in row["error"] and "recorded no checkpoint" in row["error"]


def test_cancel_stops_the_local_pool(kdkit_env, tmp_path):
    import threading
    import time

    d = _sweep(tmp_path, {"x": [1.0, 2.0, 3.0]}, seeds=None, parameters={"sleep": 600.0})
    box = {}
    pool = threading.Thread(target=lambda: box.update(results=sw.run_local(d, max_parallel=1, poll=0.2)))
    pool.start()
    deadline = time.monotonic() + 300
    while sw.collect(d)["rows"][0]["state"] != "RUNNING":
        assert time.monotonic() < deadline and pool.is_alive()
        time.sleep(0.5)
    assert sw.cancel(d) == ["local pool"]
    pool.join(120)
    assert not pool.is_alive()
    rows = box["results"]["rows"]
    assert [r["state"] for r in rows] == ["CANCELLED"] * 3 and rows[1]["error"] == "cancelled (kdkit sweep cancel)"
    assert sw.failed_tasks(box["results"]) == [0, 1, 2]    # retry-failed would run them again


def test_local_sweep_of_the_student_notebook(kdkit_env, tmp_path):
    """A tiny real sweep: student.ipynb on synthetic data, 1 epoch, tiny models, 2 at a time."""
    tiny = {"epochs": 1, "teacher_epochs": 1, "teacher_layers": 1, "teacher_heads": 1, "layers": 1, "heads": 1,
            "latency_calls": 5}
    d = sw.run_sweep(STUDENT, {"kd_alpha": [0.3, 0.9]}, parameters=tiny, name="real", sweeps_dir=tmp_path,
                     max_parallel=2)
    results = json.loads((d / "results.json").read_text())
    assert [r["state"] for r in results["rows"]] == ["COMPLETED", "COMPLETED"], [r["error"] for r in results["rows"]]
    for row, alpha in zip(results["rows"], (0.3, 0.9)):
        assert row["metrics"]["kd_alpha"] == alpha and row["params"] == {"kd_alpha": alpha}
        assert 0.0 <= row["metrics"]["student_kd"]["overall"]["f1"] <= 1.0
        assert row["metrics"]["student_kd"]["epochs_run"] == 1
    with open(d / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["kd_alpha"] for t in table] == ["0.3", "0.9"]
    assert float(table[1]["student_kd.overall.f1"]) == results["rows"][1]["metrics"]["student_kd"]["overall"]["f1"]


# ---------------------------------------------------------------------------- front ends
def test_cli_dry_run_status_and_errors(tmp_path, capsys):
    grid = tmp_path / "grid.json"
    grid.write_text('{"x": [1.0, 2.0]}')
    argv = ["sweep", "--sweeps-dir", str(tmp_path / "sweeps"), "--notebook", str(TASK_NB), "--grid", str(grid),
            "--seeds", "0,1,2", "--name", "cli"]
    assert main([*argv, "--use-slurm", "--max-parallel", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "sweep cli: 6 task(s)" in out and "     5 seed=2 x=2.0" in out and "#SBATCH --array=0-5%2" in out
    assert not (tmp_path / "sweeps").exists()
    grid.write_text('{"x": [1.0, "big"]}')
    assert main(argv) == 2
    assert "grid key 'x', value 'big'" in capsys.readouterr().err
    grid.write_text('{"y": [1.0]}')
    assert main(argv) == 2
    assert "grid key 'y' is not a parameter of" in capsys.readouterr().err
    d = _sweep(tmp_path)
    _task_json(d, 1, state="FAILED", job_id=None, error="ValueError: boom")
    assert main(["sweep", "--sweeps-dir", str(tmp_path / "sweeps"), "status", "s"]) == 0
    out = capsys.readouterr().out
    assert "6 task(s): 1 FAILED, 5 PENDING" in out and "| ValueError: boom" in out
    assert main(["sweep", "--sweeps-dir", str(tmp_path / "sweeps"), "status", "--json", str(d)]) == 0
    assert json.loads(capsys.readouterr().out)["rows"][1]["state"] == "FAILED"
    assert main(["sweep", "--sweeps-dir", str(tmp_path / "sweeps"), "status", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no sweep 'nope'" in err and "known: s)" in err
    assert main(["sweep", "--sweeps-dir", str(tmp_path / "sweeps")]) == 2


def test_panel_sweep_runs_the_notebook_with_the_panels_settings(kdkit_env, tmp_path):
    from kdkit.ui.widgets import panel

    p = panel(dataset="synthetic", epochs=3, runs_dir=str(tmp_path / "runs"))
    p.sweep_notebook.value = str(TASK_NB)
    p.sweep_grid.value = "{x: 1}"
    p.sweep_button.click()
    assert "Sweep grid is not valid JSON" in p.status.value and p._thread is None
    p.sweep_grid.value = '{"x": [1.0, 5.0]}'
    p.sweep_seeds.value = "3"
    assert p.sweep_parameters(TASK_NB, {"x": [1.0]}, [3]) == {"dataset": "synthetic", "epochs": 3}
    results = p.run_sweep(blocking=True)
    assert [r["state"] for r in results["rows"]] == ["COMPLETED", "COMPLETED"], p.status.value
    assert [(r["metrics"]["x"], r["metrics"]["seed"], r["metrics"]["epochs"]) for r in results["rows"]] == [
        (1.0, 3, 3), (5.0, 3, 3)]
    assert p.sweep_dir.parent == tmp_path / "runs" / "sweeps" and (p.progress.value, p.progress.max) == (2, 2)
    assert "sweep done: 2/2 completed" in p.status.value


def test_tasks_run_where_the_sweep_was_planned(tmp_path, monkeypatch):
    """Not in the notebook's folder: relative data roots, ./datasets.toml and the default runs/
    cache resolve as they did when the plan was checked (and nothing lands in notebooks/runs/)."""
    import papermill

    here = tmp_path / "work"
    here.mkdir()
    monkeypatch.chdir(here)
    d = _sweep(tmp_path, seeds=None)
    spec = sw.load(d)
    assert spec["cwd"] == str(here)
    seen = {}

    def fake_execute(src, dst, **kw):
        seen.update(kw)
        Path(dst).write_text(Path(src).read_text())

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    monkeypatch.chdir(tmp_path)  # a SLURM task or the pool may start elsewhere
    assert sw.run_task(d, 0) == "COMPLETED"
    assert seen["cwd"] == str(here)
    assert sw._task_cwd({}, TASK_NB) == str(TASK_NB.parent)  # a sweep planned before: as then
    assert sw._task_cwd({"cwd": str(tmp_path / "gone")}, TASK_NB) == str(TASK_NB.parent)


def test_sweep_and_submit_notebook_read_p_values_as_papermill_does():
    """The README's papermill command passes `-p threads None`; `kdkit sweep -p threads None` took it
    as the string 'None' and refused it. -p values are JSON, or papermill's None / True / False."""
    from kdkit.cli.slurm import _parameter_value

    assert [_parameter_value(v) for v in ("None", "True", "False", "null", "3", "0.5", "[1, 2]", "runs/x")] == \
        [None, True, False, None, 3, 0.5, [1, 2], "runs/x"]


def test_status_names_the_model_whose_f1_it_shows():
    """`f1=0.0000` per task read like a failure and did not say which model (the KD student's)."""
    from kdkit.cli.sweep import format_results

    row = {"task": 0, "state": "COMPLETED", "job_id": None, "params": {"kd_alpha": 0.7}, "seed": 1, "error": None,
           "metrics": {"student_kd": {"overall": {"f1": 0.8}}, "student_alone": {"overall": {"f1": 0.5}}}}
    teacher_only = {**row, "task": 1, "metrics": {"overall": {"f1": 0.9}}}
    text = format_results({"sweep": "s", "rows": [row, teacher_only]})
    assert "kd_alpha=0.7 seed=1  KD student F1 0.8000" in text and "overall F1 0.9000" in text and "f1=" not in text
