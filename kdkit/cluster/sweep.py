"""Sweeps: one papermill run of a notebook per grid point x seed, as ONE SLURM job array or in
a local pool of processes, with the results of every task collected into one table.

    kdkit sweep --notebook notebooks/student.ipynb --grid grid.json --seeds 0,1,2 -p epochs 5 \\
        [--use-slurm --max-parallel 4] [--teacher-notebook notebooks/teacher.ipynb] [--dry-run]
    kdkit sweep status|wait|cancel|retry-failed|report SWEEP

Python (the same functions)::

    from kdkit.cluster import sweep
    spec = sweep.plan("notebooks/student.ipynb", {"kd_alpha": [0.5, 0.9]}, seeds=[0, 1],
                      parameters={"epochs": 1})          # checked; nothing written yet
    sweep_dir = sweep.create(spec)                      # runs/sweeps/<name>/
    sweep.run_local(sweep_dir, max_parallel=2)          # or sweep.submit(sweep_dir, orchestrator)
    sweep.collect(sweep_dir)["rows"]                    # also results.json / results.csv

A sweep dir holds ``sweep.json`` (the tasks and every submission), ``tasks/taskNNNN/`` (each
task's run dir: the executed notebook, its ``metrics.json``, ``task.json`` with the task's own
state and error), ``teacher/`` (a teacher notebook's run), ``logs/`` (SLURM logs), the rendered
``array-N.sbatch`` scripts and the collected ``results.json`` / ``results.csv``. On SLURM each
array task runs ``python -m kdkit.cli sweep run-task SWEEP_DIR``, which picks its parameters by
``SLURM_ARRAY_TASK_ID``; a teacher notebook runs first as its own job and the array starts
``afterok`` it. ``retry_failed`` resubmits the FAILED/TIMEOUT/PREEMPTED/... tasks as a new array
of just those indices into the same run dirs.
"""
from __future__ import annotations

import csv
import fcntl
import itertools
import json
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import tomllib

from kdkit.cluster.orchestrator import (
    MAX_REQUEUES,
    TERMINAL_STATES,
    FabricSlurmTrainingOrchestrator,
    SlurmError,
    SlurmUnavailable,
    absolute_dataset,
    parse_sbatch,
    parse_squeue,
    read_tail,
    signal_grace_for,
)
from kdkit.cluster.requeue import RESUME_ENV, STOP_FILE_ENV, saved_marker
from kdkit.cluster.sbatch import ShellArgs, render, validate
from kdkit.workflows.notebooks import (KERNEL, check_model_sizes, check_parameters, check_teacher_checkpoint,
                                      closest_hint, ensure_kernel, notebook_parameters)

SWEEPS_DIR = Path("runs") / "sweeps"
RETRY_STATES = frozenset({"FAILED", "PREEMPTED", "TIMEOUT", "NODE_FAIL", "CANCELLED", "BOOT_FAIL", "OUT_OF_MEMORY"})
KERNEL_START_TIMEOUT = 300   # seconds; papermill's 60 s fail a task when a loaded node starts kernels slowly
_ARRAY = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*(%\d+)?")
_RESERVED = ("run_dir",)   # set per task by the sweep


class SweepError(ValueError):
    """A sweep that cannot be planned, found or run as asked."""


# ------------------------------------------------------------------------------- planning
def load_grid(path: str | os.PathLike) -> dict[str, list]:
    """A grid file: JSON or TOML (by suffix) mapping notebook parameter -> list of values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grid file {path} does not exist")
    try:
        grid = tomllib.loads(path.read_text()) if path.suffix.lower() == ".toml" else json.loads(path.read_text())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise SweepError(f"grid file {path} is not valid {path.suffix.lstrip('.').upper() or 'JSON'}: {err}") from None
    return check_grid_shape(grid, str(path))


def check_grid_shape(grid, where: str = "grid") -> dict[str, list]:
    """``grid`` if it maps names to non-empty lists of distinct values."""
    if not isinstance(grid, dict) or not grid:
        raise SweepError(f"{where}: expected an object mapping notebook parameters to lists of values, "
                         f'e.g. {{"kd_alpha": [0.5, 0.9]}}, got {grid!r}')
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}: key {key!r} must map to a non-empty list of values, got {values!r}")
        for n, value in enumerate(values):
            if value in values[:n]:
                raise SweepError(f"{where}: key {key!r} lists the value {value!r} twice")
    return grid


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``."""
    parts = text.split(",")
    if any(not s.strip() for s in parts):  # "0,1,,2": a typo, not a list of three
        raise SweepError(f"--seeds {text!r}: an empty value between commas; expected e.g. 0,1,2")
    try:
        seeds = [int(s) for s in parts]
    except ValueError:
        raise SweepError(f"--seeds {text!r}: expected integers separated by commas, e.g. 0,1,2") from None
    if len(set(seeds)) != len(seeds) or not seeds:
        raise SweepError(f"--seeds {text!r}: expected distinct integers, e.g. 0,1,2")
    bad = [s for s in seeds if not 0 <= s < 2 ** 32]  # what numpy's and torch's seeding accept
    if bad:
        raise SweepError(f"--seeds {text!r}: {bad[0]} is not a seed (0 to 4294967295), checked before a task runs")
    return seeds


def expand(grid: dict[str, list], seeds: list[int] | None = None) -> list[dict]:
    """Tasks of a grid: the product of its lists in key order, seeds innermost.

    Returns:
        ``[{"task": 0, "seed": 0 or None, "params": {key: value}}, ...]``.
    """
    points = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    return [{"task": n, "seed": seed, "params": point}
            for n, (point, seed) in enumerate(itertools.product(points, seeds or [None]))]


def _absolute(params: dict) -> dict:
    """Dataset and checkpoint paths made absolute: the tasks start in the notebook's folder."""
    out = dict(params)
    if isinstance(out.get("dataset"), str):
        out["dataset"] = absolute_dataset(out["dataset"])
    for key in ("data_root", "teacher_checkpoint"):
        if isinstance(out.get(key), str) and out[key] and Path(out[key]).expanduser().exists():
            out[key] = str(Path(out[key]).expanduser().resolve())
    return out


def plan(notebook: str | os.PathLike, grid: dict[str, list], seeds: list[int] | None = None, *,
         parameters: dict | None = None, name: str | None = None, sweeps_dir: str | os.PathLike = SWEEPS_DIR,
         teacher_notebook: str | os.PathLike | None = None, teacher_parameters: dict | None = None,
         teacher_checkpoint: str | os.PathLike | None = None, kernel: str = KERNEL) -> dict:
    """A checked sweep (what ``sweep.json`` holds); writes and submits nothing.

    Args:
        notebook: the notebook every task runs (its ``parameters`` cell names what can vary).
        grid: notebook parameter -> list of values (:func:`load_grid`).
        seeds: values of the notebook's ``seed`` parameter, one task per grid point and seed.
            Default None (the notebook's own seed, one task per grid point).
        parameters: notebook parameters fixed for every task (e.g. ``{"epochs": 1}``). Default none.
        name: the sweep's name (its folder under ``sweeps_dir``). Default ``<notebook>_<timestamp>``.
        sweeps_dir: where sweeps live. Default ``runs/sweeps``.
        teacher_notebook: a notebook run once before the tasks (a teacher); its ``metrics.json``
            ``checkpoint`` becomes every task's ``teacher_checkpoint``. Default None.
        teacher_parameters: the teacher notebook's parameters. Default none.
        teacher_checkpoint: an existing teacher checkpoint for every task instead. Default None.
        kernel: Jupyter kernel of the runs. Default ``kdkit``.

    Raises:
        SweepError, ValueError: a key the notebook does not declare, or a value the notebook's
            annotation or the run schema refuses; the message names the key and the value.
        FileNotFoundError: the notebook, teacher notebook or teacher checkpoint is missing.
    """
    notebook = Path(notebook).expanduser().resolve()
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook {notebook} does not exist")
    grid = dict(check_grid_shape(grid)) if grid or not seeds else {}  # seeds alone: one setting over them
    parameters = _absolute(dict(parameters or {}))
    declared = notebook_parameters(notebook)
    for key in grid:
        if key in _RESERVED or key == "seed" and seeds:
            raise SweepError(f"grid key {key!r}: the sweep sets it for each task" +
                             (" (use --seeds for seeds)" if key == "seed" else ""))
        if key in parameters:
            raise SweepError(f"grid key {key!r} is also a fixed parameter ({key}={parameters[key]!r}): give it once")
        if key not in declared:
            raise SweepError(f"grid key {key!r} is not a parameter of {notebook}{closest_hint(key, declared)} "
                             f"(known: {', '.join(sorted(declared))})")
        for value in grid[key]:
            try:
                check_parameters(notebook, _absolute({key: value}))
            except ValueError as err:
                raise SweepError(f"grid key {key!r}, value {value!r}: {err}") from None
    if "run_dir" not in declared:
        raise SweepError(f"{notebook} has no 'run_dir' parameter: a sweep gives each task its own run dir")
    if seeds and "seed" not in declared:
        raise SweepError(f"--seeds given but {notebook} has no 'seed' parameter")
    if seeds and "seed" in parameters:  # each task's seed wins: the fixed one would be ignored without a word
        raise SweepError(f"parameter seed={parameters['seed']!r} and --seeds: the sweep sets each task's seed from "
                         "--seeds; give one of them")
    for key in _RESERVED:
        if key in parameters:
            raise SweepError(f"parameter {key}={parameters[key]!r}: the sweep sets it for each task "
                             f"(<sweeps dir>/<name>/tasks/taskNNNN); choose where with --name and --sweeps-dir")
    check_parameters(notebook, parameters)
    teacher = None
    if teacher_notebook is not None and teacher_checkpoint is not None:
        raise SweepError("give a teacher notebook or a teacher checkpoint, not both")
    if teacher_notebook is not None or teacher_checkpoint is not None:
        if "teacher_checkpoint" not in declared:
            raise SweepError(f"a teacher was given but {notebook} has no 'teacher_checkpoint' parameter")
        if "teacher_checkpoint" in grid or "teacher_checkpoint" in parameters:
            raise SweepError("teacher_checkpoint is set by the teacher (--teacher-notebook/--teacher-checkpoint)")
    if teacher_checkpoint is not None:
        path = Path(teacher_checkpoint).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"teacher checkpoint {path} does not exist")
        teacher = {"checkpoint": str(path)}
    elif teacher_notebook is not None:
        t_nb = Path(teacher_notebook).expanduser().resolve()
        if not t_nb.is_file():
            raise FileNotFoundError(f"teacher notebook {t_nb} does not exist")
        t_params = _absolute(dict(teacher_parameters or {}))
        if "run_dir" in t_params:
            raise SweepError(f"teacher parameter run_dir={t_params['run_dir']!r}: the sweep runs the teacher in "
                             "<sweep>/teacher")
        if "run_dir" not in notebook_parameters(t_nb):
            raise SweepError(f"teacher notebook {t_nb} has no 'run_dir' parameter: the sweep runs it in <sweep>/teacher")
        check_parameters(t_nb, t_params)
        check_model_sizes(t_nb, t_params)
        teacher = {"notebook": str(t_nb), "parameters": t_params, "run_dir": "teacher"}
    tasks = expand(grid, seeds)
    width = max(4, len(str(len(tasks) - 1)))
    for task in tasks:
        task["run_dir"] = f"tasks/task{task['task']:0{width}d}"
        values = check_parameters(notebook, _task_parameters({"parameters": parameters}, task, Path("/x")))
        try:
            check_model_sizes(notebook, values)
            # the teacher against each task (a gat teacher and a grid over model): as the notebook's first cell
            # would, so a task that cannot distil it fails the plan (and --dry-run), not later in its job
            if teacher_checkpoint is not None:
                check_teacher_checkpoint(notebook, {**values, "teacher_checkpoint": teacher["checkpoint"]})
            elif teacher_notebook is not None:
                _check_teacher_notebook_family(notebook, values, teacher)
        except (ValueError, FileNotFoundError) as err:
            raise SweepError(f"task {task['task']} ({task['params']}): {err}") from None
    name = name or f"{notebook.stem}_{datetime.now():%Y%m%d-%H%M%S}"
    validate({"run_name": name})
    return {"version": 1, "name": name, "sweeps_dir": str(Path(sweeps_dir).expanduser().resolve()),
            "notebook": str(notebook), "kernel": kernel, "grid": grid, "seeds": list(seeds or []),
            "parameters": parameters, "teacher": teacher, "tasks": tasks, "backend": None,
            "max_parallel": None, "submissions": [],
            # the tasks run where the sweep was planned: relative data roots, ./datasets.toml and the
            # default runs/ cache resolve as they did for the plan's checks (not in the notebook's folder)
            "cwd": os.getcwd()}


def _check_teacher_notebook_family(notebook: Path, values: dict, teacher: dict) -> None:
    """The family the teacher notebook trains (its ``model``) against a task's ``model``: its checkpoint
    does not exist at plan time, but a task of another family would refuse it in its first cell."""
    theirs = {**notebook_parameters(teacher["notebook"]), **teacher["parameters"]}.get("model")
    ours = {**notebook_parameters(notebook), **values}.get("model")
    if isinstance(theirs, str) and isinstance(ours, str) and theirs != ours:
        raise ValueError(f"the teacher notebook trains a {theirs} teacher (its model={theirs!r}) and this task has "
                         f"model={ours!r}: a student distils a teacher of its own family; sweep model over one "
                         "family, or give the teacher notebook -p model")


def _task_parameters(spec: dict, task: dict, sweep_dir: Path, teacher_checkpoint: str | None = None) -> dict:
    params = {**spec["parameters"], **task["params"], "run_dir": str(sweep_dir / task["run_dir"])}
    if task.get("seed") is not None:
        params["seed"] = task["seed"]
    if teacher_checkpoint is not None:
        params["teacher_checkpoint"] = teacher_checkpoint
    return params


def create(spec: dict) -> Path:
    """Writes the planned sweep to ``<sweeps_dir>/<name>/`` and returns that folder.

    Raises:
        FileExistsError: a sweep of that name exists.
    """
    sweep_dir = Path(spec["sweeps_dir"]) / spec["name"]
    if (sweep_dir / "sweep.json").exists():
        raise FileExistsError(f"sweep {sweep_dir} exists; choose another --name")
    for task in spec["tasks"]:
        (sweep_dir / task["run_dir"]).mkdir(parents=True, exist_ok=True)
    (sweep_dir / "logs").mkdir(exist_ok=True)
    spec = dict(spec, created=datetime.now().isoformat(timespec="seconds"))
    _write_json(sweep_dir / "sweep.json", spec)
    collect(sweep_dir)
    return sweep_dir


# ----------------------------------------------------------------------------- sweep files
def _write_json(path: Path, data) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, default=str)
        f.write("\n")
    os.replace(tmp, path)


class _Locked:
    """An exclusive lock on ``<sweep>/.lock`` (sweep.json and results updates)."""

    def __init__(self, sweep_dir: Path):
        self.path = Path(sweep_dir) / ".lock"

    def __enter__(self):
        self.file = open(self.path, "w")
        fcntl.flock(self.file, fcntl.LOCK_EX)

    def __exit__(self, *exc):
        self.file.close()


def load(sweep_dir: str | os.PathLike) -> dict:
    """The sweep's ``sweep.json``."""
    path = Path(sweep_dir) / "sweep.json"
    if not path.is_file():
        raise FileNotFoundError(f"{sweep_dir} is not a sweep (no sweep.json)")
    return json.loads(path.read_text())


def _update(sweep_dir: Path, **fields) -> dict:
    with _Locked(sweep_dir):
        spec = {**load(sweep_dir), **fields}
        _write_json(sweep_dir / "sweep.json", spec)
    return spec


def _add_submission(sweep_dir: Path, record: dict) -> None:
    with _Locked(sweep_dir):
        spec = load(sweep_dir)
        spec["submissions"].append(record)
        _write_json(sweep_dir / "sweep.json", spec)


def find(sweep: str | os.PathLike, sweeps_dir: str | os.PathLike = SWEEPS_DIR) -> Path:
    """A sweep's folder from its folder or its name under ``sweeps_dir``."""
    for cand in (Path(sweep), Path(sweeps_dir) / str(sweep)):
        if (cand / "sweep.json").is_file():
            return cand.resolve()
    known = ", ".join(p.parent.name for p in sorted(Path(sweeps_dir).glob("*/sweep.json"))) or "none"
    raise FileNotFoundError(f"no sweep {sweep!r} (neither a folder with sweep.json nor a name in {sweeps_dir}; "
                            f"known: {known})")


def list_sweeps(sweeps_dir: str | os.PathLike = SWEEPS_DIR) -> list[Path]:
    """Sweep folders under ``sweeps_dir``, oldest first."""
    return sorted((p.parent for p in Path(sweeps_dir).glob("*/sweep.json")), key=lambda p: p.stat().st_mtime)


def _task_record(run_dir: Path) -> dict:
    path = run_dir / "task.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:            # being replaced right now: atomic writes make this rare
        return {}


def _record_task(run_dir: Path, **fields) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_dir / "task.json", fields)


# ------------------------------------------------------------------------------ running tasks
def teacher_checkpoint_of(sweep_dir: Path, spec: dict) -> str | None:
    """The checkpoint every task gets as ``teacher_checkpoint`` (None: the sweep has no teacher)."""
    teacher = spec.get("teacher")
    if not teacher:
        return None
    if "checkpoint" in teacher:
        return teacher["checkpoint"]
    metrics = sweep_dir / teacher["run_dir"] / "metrics.json"
    checkpoint = json.loads(metrics.read_text()).get("checkpoint") if metrics.is_file() else None
    if not checkpoint or not Path(checkpoint).is_file():
        raise SweepError(f"the teacher run {sweep_dir / teacher['run_dir']} recorded no checkpoint "
                         f"(metrics.json 'checkpoint'); did it finish? (kdkit sweep status {sweep_dir})")
    return checkpoint


def _task_cwd(spec: dict, notebook: Path) -> str:
    """The folder a task's notebook runs in: where the sweep was planned (sweeps planned before
    2026-12-06 recorded none: the notebook's folder, as then), if it still exists."""
    cwd = spec.get("cwd")
    return cwd if cwd and Path(cwd).is_dir() else str(notebook.parent)


def run_task(sweep_dir: str | os.PathLike, task: int | None = None, *, teacher: bool = False) -> str:
    """Runs one task of the sweep (or its teacher) with papermill; returns its final state.

    The task's ``task.json`` says RUNNING, then COMPLETED or FAILED with the error; the
    results table is updated after. ``task`` defaults to ``$SLURM_ARRAY_TASK_ID``.

    Raises:
        SweepError: no such task. The notebook's own error is re-raised after it was recorded.
    """
    import papermill

    sweep_dir = Path(sweep_dir).resolve()
    spec = load(sweep_dir)
    job_id = _slurm_job_id()
    if teacher:
        if not (spec.get("teacher") or {}).get("notebook"):
            raise SweepError(f"sweep {sweep_dir} has no teacher notebook")
        notebook, run_dir = Path(spec["teacher"]["notebook"]), sweep_dir / spec["teacher"]["run_dir"]
        params = {**spec["teacher"]["parameters"], "run_dir": str(run_dir)}
    else:
        if task is None:
            if "SLURM_ARRAY_TASK_ID" not in os.environ:
                raise SweepError("no task given and SLURM_ARRAY_TASK_ID is not set (pass --task N)")
            task = int(os.environ["SLURM_ARRAY_TASK_ID"])
        if not 0 <= task < len(spec["tasks"]):
            raise SweepError(f"task {task} is not in sweep {sweep_dir} (tasks 0-{len(spec['tasks']) - 1})")
        entry = spec["tasks"][task]
        notebook, run_dir = Path(spec["notebook"]), sweep_dir / entry["run_dir"]
        params = _task_parameters(spec, entry, sweep_dir, teacher_checkpoint_of(sweep_dir, spec))
    started = datetime.now().isoformat(timespec="seconds")
    base = {"job_id": job_id, "host": socket.gethostname(), "pid": os.getpid(), "started": started,
            "parameters": params}
    _record_task(run_dir, state="RUNNING", **base)
    if spec.get("kernel", KERNEL) == KERNEL:
        ensure_kernel()
    try:
        papermill.execute_notebook(str(notebook), str(run_dir / notebook.name), parameters=params,
                                   kernel_name=spec.get("kernel", KERNEL), cwd=_task_cwd(spec, notebook),
                                   progress_bar=False, log_output=True, start_timeout=KERNEL_START_TIMEOUT)
    except BaseException as err:   # recorded for the results table, then re-raised: the job fails
        stop_file = os.environ.get(STOP_FILE_ENV)
        if stop_file and Path(saved_marker(stop_file)).exists():   # time limit or preemption: last.pt saved
            _record_task(run_dir, state="STOPPED", error="stopped by SLURM (time limit or preemption) after saving "
                         "last.pt; the job requeues itself or `kdkit sweep retry-failed` resumes it", **base)
            raise
        _record_task(run_dir, state="FAILED", error=_error_text(err), ended=_now(), **base)
        if not teacher:
            collect(sweep_dir)
        raise
    _record_task(run_dir, state="COMPLETED", error=None, ended=_now(), **base)
    if not teacher:
        collect(sweep_dir)
    return "COMPLETED"


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


def _error_text(err: BaseException, lines: int = 20) -> str:
    """The end of an error: the notebook cell's exception and traceback, or the exception."""
    trace = getattr(err, "traceback", None)     # papermill: the failing cell's traceback
    if not trace:
        return f"{type(err).__name__}: {err}"
    clean = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(trace)).strip().splitlines()
    return "\n".join(clean[-lines:])


def _slurm_job_id() -> str | None:
    array, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{index}" if array and index else os.environ.get("SLURM_JOB_ID")


def local_cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0))


def run_local(sweep_dir: str | os.PathLike, max_parallel: int | None = None, indices: list[int] | None = None,
              on_task_end=None, poll: float = 0.5, resume: bool = False) -> dict:
    """Runs the sweep's tasks here, at most ``max_parallel`` at a time (at most the cores).

    A teacher notebook runs first when its run has not completed. Each task is a
    ``python -m kdkit.cli sweep run-task`` process (its output in the task's ``task.log``).
    ``cancel`` (a ``CANCEL`` file in the sweep dir) stops the pool: running tasks are killed,
    the rest marked CANCELLED.

    Args:
        sweep_dir: the sweep (:func:`create`).
        max_parallel: tasks at once. Default: the cores.
        indices: the tasks to run. Default all.
        on_task_end: called with (task index, state) as each task ends. Default None.
        poll: seconds between checks of the running tasks. Default 0.5.
        resume: the runs continue from the ``last.pt`` in their run dirs (``KDKIT_RESUME=auto``).
            Default False.

    Returns:
        The collected results (:func:`collect`).
    """
    sweep_dir = Path(sweep_dir).resolve()
    spec = load(sweep_dir)
    k = max(1, min(max_parallel or local_cores(), local_cores()))
    indices = list(range(len(spec["tasks"]))) if indices is None else list(indices)
    _update(sweep_dir, backend="local", max_parallel=k)
    _add_submission(sweep_dir, {"job_id": None, "tasks": indices, "submitted": _now(), "teacher_job": None})
    (sweep_dir / "CANCEL").unlink(missing_ok=True)
    if spec.get("kernel", KERNEL) == KERNEL:
        ensure_kernel()                 # once, before the tasks start side by side
    for i in indices:
        _record_task(sweep_dir / spec["tasks"][i]["run_dir"], state="PENDING", job_id=None)
    collect(sweep_dir)
    teacher = spec.get("teacher") or {}
    if teacher.get("notebook") and _task_record(sweep_dir / teacher["run_dir"]).get("state") != "COMPLETED":
        proc = _start(sweep_dir, ["--teacher"], sweep_dir / teacher["run_dir"])
        if proc.wait() != 0:
            for i in indices:
                _record_task(sweep_dir / spec["tasks"][i]["run_dir"], state="CANCELLED", job_id=None,
                             error=f"the teacher run failed: see {sweep_dir / teacher['run_dir'] / 'task.log'}")
            return collect(sweep_dir)
    waiting, running = list(indices), {}
    while waiting or running:
        if (sweep_dir / "CANCEL").exists():
            for i, proc in running.items():
                proc.terminate()
                proc.wait()
            for i in [*running, *waiting]:
                _record_task(sweep_dir / spec["tasks"][i]["run_dir"], state="CANCELLED", job_id=None,
                             error="cancelled (kdkit sweep cancel)", ended=_now())
            break
        while waiting and len(running) < k:
            i = waiting.pop(0)
            running[i] = _start(sweep_dir, ["--task", str(i)], sweep_dir / spec["tasks"][i]["run_dir"], resume)
        for i, proc in list(running.items()):
            if proc.poll() is not None:
                del running[i]
                run_dir = sweep_dir / spec["tasks"][i]["run_dir"]
                if _task_record(run_dir).get("state") not in TERMINAL_STATES:   # died before recording an end
                    _record_task(run_dir, state="FAILED", job_id=None, ended=_now(),
                                 error=f"exit status {proc.returncode}\n" + read_tail(run_dir / "task.log", 20))
                state = collect(sweep_dir)["rows"][i]["state"]
                if on_task_end is not None:
                    on_task_end(i, state)
        time.sleep(poll)
    return collect(sweep_dir)


def _start(sweep_dir: Path, args: list[str], run_dir: Path, resume: bool = False) -> subprocess.Popen:
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, RESUME_ENV: "auto"} if resume else None
    with open(run_dir / "task.log", "w") as log:
        return subprocess.Popen([sys.executable, "-m", "kdkit.cli", "sweep", "run-task", str(sweep_dir), *args],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


# ---------------------------------------------------------------------------------- on SLURM
def array_spec(indices: list[int], max_parallel: int | None = None) -> str:
    """``--array`` value: ``[0..5], 2`` -> ``0-5%2``; ``[3, 5]`` -> ``3,5``."""
    parts, run = [], []
    for i in sorted(set(indices)):
        if run and i != run[-1] + 1:
            parts.append(run)
            run = []
        run.append(i)
    parts.append(run)
    text = ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in parts if r)
    return text + (f"%{max_parallel}" if max_parallel else "")


def render_job(sweep_dir: Path, name: str, orch: FabricSlurmTrainingOrchestrator, *, indices: list[int] | None,
               max_parallel: int | None = None, dependency: str | None = None, **resources) -> str:
    """The sbatch script of a sweep job: the array of ``indices``, or the teacher's job (None).

    Args:
        sweep_dir: the sweep's folder (it goes into #SBATCH lines: no spaces or quotes).
        name: the sweep's name (the job name).
        orch: the orchestrator whose preset and defaults give the resources.
        indices: array task indices; None renders the teacher's job.
        max_parallel: array tasks running at once (``%K``). Default no limit.
        dependency: e.g. ``afterok:123``. Default None.
        **resources: resource keys of the orchestrator (time, mem, partition, ...).
    """
    res = orch.resources(resources)
    sweep_dir = Path(validate({"runs_dir": sweep_dir})["runs_dir"])
    teacher = indices is None
    array = None if teacher else array_spec(indices, max_parallel)
    if array is not None and not _ARRAY.fullmatch(array):
        raise SweepError(f"--array={array!r}: not a Slurm array range")
    gpus = res.get("gpus") or 0
    log = sweep_dir / ("teacher/slurm-%j.out" if teacher else "logs/slurm-%A_%a.out")
    fields = dict(
        res, job_name=validate({"job_name": f"{name}_teacher" if teacher else name})["job_name"],
        workdir=res.get("workdir") or validate({"workdir": os.getcwd()})["workdir"], array=array,
        output=str(log), error=str(log.with_suffix(".err")) if res.get("separate_stderr") else str(log),
        module=res.get("modules"), dependency=validate({"dependency": dependency})["dependency"],
        kill_on_invalid_dep="yes" if dependency else None,
        signal_grace=signal_grace_for(res.get("signal_grace"), res.get("time")),   # None: no warning line
        max_requeues=MAX_REQUEUES if res.get("max_requeues") is None else res["max_requeues"],
        gres_gpu=(f"{res['gpu_type']}:{gpus}" if res.get("gpu_type") else str(gpus)) if gpus else None,
        sweep_dir=str(sweep_dir),
        task_command=ShellArgs(["python", "-m", "kdkit.cli", "sweep", "run-task", str(sweep_dir),
                                *(["--teacher"] if teacher else [])]))
    return render("array.sbatch", fields)


def submit(sweep_dir: str | os.PathLike, orch: FabricSlurmTrainingOrchestrator | None = None, *,
           max_parallel: int | None = None, indices: list[int] | None = None, resume: bool = False,
           **resources) -> str:
    """Submits the sweep as one job array (after its teacher's job, if it has a teacher notebook
    whose run has not completed); returns the array's job ID.

    Args:
        sweep_dir: the sweep (:func:`create`).
        orch: orchestrator (preset, defaults, Slurm runner). Default ``preset="cpu"``.
        max_parallel: array tasks running at once (``--array=...%K``). Default no limit.
        indices: tasks to submit. Default all.
        resume: the tasks' runs continue from the ``last.pt`` in their run dirs (``KDKIT_RESUME=auto``),
            as ``retry_failed`` asks. Default False.
        **resources: resource keys of the orchestrator for these jobs.

    Raises:
        SlurmError: sbatch refused the script.
    """
    sweep_dir = Path(sweep_dir).resolve()
    orch = orch or FabricSlurmTrainingOrchestrator(runs_dir=sweep_dir)
    spec = load(sweep_dir)
    indices = list(range(len(spec["tasks"]))) if indices is None else sorted(indices)
    max_parallel = max_parallel or spec.get("max_parallel")
    n = len(spec["submissions"])
    teacher_job = dependency = None
    teacher = spec.get("teacher") or {}
    if teacher.get("notebook") and _task_record(sweep_dir / teacher["run_dir"]).get("state") != "COMPLETED":
        script = render_job(sweep_dir, spec["name"], orch, indices=None, **resources)
        teacher_job = _sbatch(orch, sweep_dir / f"teacher-{n}.sbatch", script)
        _record_task(sweep_dir / teacher["run_dir"], state="PENDING", job_id=teacher_job)
        dependency = f"afterok:{teacher_job}"
    script = render_job(sweep_dir, spec["name"], orch, indices=indices, max_parallel=max_parallel,
                     dependency=dependency, **resources)
    job = _sbatch(orch, sweep_dir / f"array-{n}.sbatch", script, resume=resume)
    _update(sweep_dir, backend="slurm", max_parallel=max_parallel)
    # the resources the jobs got (preset, defaults and the ones given): retry_failed submits with them again
    used = {k: v for k, v in orch.resources(resources).items() if v is not None}
    _add_submission(sweep_dir, {"job_id": job, "tasks": indices, "array": array_spec(indices, max_parallel),
                                "teacher_job": teacher_job, "submitted": _now(), "preset": orch.preset,
                                "resources": used})
    collect(sweep_dir)
    return job


def _sbatch(orch, path: Path, script: str, resume: bool = False) -> str:
    path.write_text(script)
    proc = orch.run_slurm(["sbatch", "--parsable", *([f"--export=ALL,{RESUME_ENV}=auto"] if resume else []), str(path)])
    if proc.returncode != 0:
        raise SlurmError(f"sbatch rejected {path}: {proc.stderr.strip()}")
    return parse_sbatch(proc.stdout)[0]


def current_jobs(spec: dict) -> dict[int, str]:
    """Task index -> its SLURM job ID (``<array>_<index>``) in the latest submission holding it."""
    jobs = {}
    for sub in spec.get("submissions", []):
        for i in sub["tasks"]:
            jobs[i] = f"{sub['job_id']}_{i}" if sub.get("job_id") else None
    return jobs


def slurm_states(sweep_dir: str | os.PathLike, orch: FabricSlurmTrainingOrchestrator) -> dict[str, dict]:
    """The Slurm state of every task job and teacher job of the sweep: one ``squeue`` call for all
    arrays, then scontrol/sacct (``orch.status``) for the jobs squeue no longer lists.

    Raises:
        SlurmUnavailable: the controller did not answer.
    """
    spec = load(sweep_dir)
    jobs = [j for j in current_jobs(spec).values() if j]
    jobs += [s["teacher_job"] for s in spec.get("submissions", []) if s.get("teacher_job")]
    if not jobs:
        return {}
    arrays = sorted({j.split("_")[0] for j in jobs}, key=int)
    argv = ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r|%N", "--jobs=" + ",".join(arrays)]
    proc = orch.run_slurm(argv)
    if proc.returncode != 0 and "invalid job id" not in (proc.stderr or "").lower():
        raise SlurmUnavailable(f"the Slurm controller did not answer: {(proc.stderr or '').strip()} (from "
                               f"`{' '.join(argv)}`; `scontrol ping` checks the controller)")
    live = parse_squeue(proc.stdout) if proc.returncode == 0 else {}
    return {j: live.get(j) or orch.status(j) for j in jobs}


# ---------------------------------------------------------------------------------- results
def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def _row(spec: dict, sweep_dir: Path, task: dict, job: str | None, live: dict, previous: dict) -> dict:
    run_dir = sweep_dir / task["run_dir"]
    rec = _task_record(run_dir)
    own = rec if rec.get("job_id") == job else {}
    info = live.get(job) if job else None
    state, error = "PENDING", None
    if own.get("state") in TERMINAL_STATES:
        state, error = own["state"], own.get("error")
    elif info and info.get("state") not in (None, "UNKNOWN"):
        state = info["state"]
        if state in TERMINAL_STATES - {"COMPLETED"}:
            log = sweep_dir / "logs" / f"slurm-{job}.out"
            reason = f" ({info['reason']})" if info.get("reason") else ""
            error = "\n".join(t for t in (read_tail(log, 20), read_tail(log.with_suffix(".err"), 20)) if t)
            error = error or f"{state}{reason}"
            if "Dependency" in (info.get("reason") or ""):
                error = f"{state}{reason}: the teacher job failed (kdkit sweep status shows it)"
    elif previous.get("job_id") == job and previous.get("state") not in (None, "PENDING"):
        state, error = previous["state"], previous.get("error")
    elif own.get("state"):
        state = own["state"]
    if state == "RUNNING" and job is None and own.get("host") == socket.gethostname() and not _pid_alive(own.get("pid")):
        state, error = "FAILED", f"the task's process (pid {own.get('pid')}) ended without recording a result"
    metrics_path = run_dir / "metrics.json"
    try:
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    except json.JSONDecodeError:
        metrics = {}
    row = {"task": task["task"], "state": state, "seed": task.get("seed"), "params": task["params"],
           "run_dir": task["run_dir"], "job_id": job, "error": error, "metrics": metrics}
    if state != "COMPLETED" and metrics:
        # a running, stopped or failed notebook may have written part of its metrics (its quick
        # teacher's, an earlier attempt's): kept apart, so that a mean over the rows (results.csv)
        # takes in finished tasks only
        row.update(metrics={}, partial_metrics=metrics)
    return row


def collect(sweep_dir: str | os.PathLike, live: dict[str, dict] | None = None) -> dict:
    """Collects every task's state and ``metrics.json`` into ``results.json`` and ``results.csv``.

    A task's state is its own final record (``task.json``) of its current job, else the Slurm
    state in ``live`` (:func:`slurm_states`), else the last known one, else PENDING. A failed
    task keeps its error tail; the others' results are unaffected. Only a COMPLETED task's
    metrics are its ``metrics``; another's, if it wrote some, are its ``partial_metrics``.

    Returns:
        ``{"sweep", "notebook", "grid", "seeds", "rows": [{"task", "state", "seed", "params",
        "run_dir" (relative to the sweep dir), "job_id", "error", "metrics"}]}``.
    """
    sweep_dir = Path(sweep_dir).resolve()
    with _Locked(sweep_dir):
        spec = load(sweep_dir)
        path = sweep_dir / "results.json"
        try:
            old = {r["task"]: r for r in json.loads(path.read_text())["rows"]} if path.is_file() else {}
        except (json.JSONDecodeError, KeyError):
            old = {}
        jobs = current_jobs(spec)
        rows = [_row(spec, sweep_dir, t, jobs.get(t["task"]), live or {}, old.get(t["task"], {}))
                for t in spec["tasks"]]
        results = {"sweep": spec["name"], "notebook": spec["notebook"], "grid": spec["grid"],
                   "seeds": spec["seeds"], "rows": rows}
        _write_json(path, results)
        _write_csv(sweep_dir / "results.csv", list(spec["grid"]), rows)
    return results


def flatten(metrics: dict, prefix: str = "") -> dict:
    """Scalars of a nested dict with dotted keys; lists and the ``tables`` dict left out."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            if not prefix and key == "tables":
                continue
            out.update(flatten(value, f"{prefix}{key}."))
        elif not isinstance(value, (list, tuple)):
            out[f"{prefix}{key}"] = value
    return out


def _write_csv(path: Path, params: list[str], rows: list[dict]) -> None:
    flat = [flatten(r["metrics"]) for r in rows]
    fixed = {"task", "state", "seed", *params}      # a metric of the same name (the notebook's own copy) stays out
    metric_columns = [k for k in dict.fromkeys(k for f in flat for k in f) if k not in fixed]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "state", "seed", *params, *metric_columns])
        for row, values in zip(rows, flat):
            writer.writerow([row["task"], row["state"], row["seed"], *(row["params"][p] for p in params),
                             *(values.get(c) for c in metric_columns)])
    os.replace(tmp, path)


# ------------------------------------------------------------------------- status and control
def status(sweep_dir: str | os.PathLike, orch: FabricSlurmTrainingOrchestrator | None = None) -> dict:
    """The sweep's results with states refreshed (from Slurm for a SLURM sweep).

    Raises:
        SlurmUnavailable: the controller did not answer (results.json keeps the last known states).
    """
    sweep_dir = Path(sweep_dir).resolve()
    spec = load(sweep_dir)
    live = slurm_states(sweep_dir, orch or FabricSlurmTrainingOrchestrator(runs_dir=sweep_dir)) \
        if spec.get("backend") == "slurm" else None
    return collect(sweep_dir, live)


def teacher_state(sweep_dir: str | os.PathLike, orch: FabricSlurmTrainingOrchestrator | None = None) -> dict | None:
    """The teacher run's record (state, job_id, error), None when the sweep has no teacher notebook."""
    sweep_dir = Path(sweep_dir).resolve()
    spec = load(sweep_dir)
    teacher = spec.get("teacher") or {}
    if not teacher.get("notebook"):
        return None
    rec = _task_record(sweep_dir / teacher["run_dir"])
    if rec.get("state") not in TERMINAL_STATES and rec.get("job_id") and spec.get("backend") == "slurm":
        info = (orch or FabricSlurmTrainingOrchestrator(runs_dir=sweep_dir)).status(rec["job_id"])
        rec = {**rec, "state": info["state"], "error": info.get("log_tail")}
    return {"state": rec.get("state", "PENDING"), "job_id": rec.get("job_id"), "error": rec.get("error")}


def wait(sweep_dir: str | os.PathLike, orch: FabricSlurmTrainingOrchestrator | None = None,
         timeout: float | None = None, poll: float = 10.0) -> dict:
    """Polls :func:`status` until every task is in a final state; returns the results.

    Raises:
        TimeoutError: ``timeout`` seconds passed first.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        results = status(sweep_dir, orch)
        if all(r["state"] in TERMINAL_STATES for r in results["rows"]):
            return results
        if deadline is not None and time.monotonic() > deadline:
            left = sum(r["state"] not in TERMINAL_STATES for r in results["rows"])
            raise TimeoutError(f"sweep {sweep_dir}: {left} task(s) still not finished after {timeout} s")
        time.sleep(poll)


def cancel(sweep_dir: str | os.PathLike, orch: FabricSlurmTrainingOrchestrator | None = None) -> list[str]:
    """Cancels the sweep's unfinished jobs (SLURM: scancel of each array and teacher job; local: the
    pool stops). Returns what was cancelled."""
    sweep_dir = Path(sweep_dir).resolve()
    spec = load(sweep_dir)
    if spec.get("backend") != "slurm":
        (sweep_dir / "CANCEL").write_text(_now() + "\n")
        return ["local pool"]
    orch = orch or FabricSlurmTrainingOrchestrator(runs_dir=sweep_dir)
    done = []
    for sub in spec["submissions"]:
        for job in (sub.get("teacher_job"), sub.get("job_id")):
            if job:
                orch.cancel(job)
                done.append(job)
    return done


def failed_tasks(results: dict) -> list[int]:
    """Indices of the tasks ``retry_failed`` resubmits (FAILED, TIMEOUT, PREEMPTED, NODE_FAIL, ...)."""
    return [r["task"] for r in results["rows"] if r["state"] in RETRY_STATES]


def retry_failed(sweep_dir: str | os.PathLike, orch: FabricSlurmTrainingOrchestrator | None = None, *,
                 max_parallel: int | None = None, **resources) -> tuple[list[int], str | dict | None]:
    """Runs the failed tasks again into their own run dirs (they resume from what they left there).

    On SLURM: one new array of just those indices (``--array=3,5``), with the resources of the sweep's
    last submission (partition, account, GPUs, time, memory, ...; a GPU sweep was retried on the
    ``cpu`` preset's), ``resources`` on top (e.g. more ``time`` for a task that timed out); locally:
    the pool.

    Returns:
        (the retried indices, the new array's job ID or the local results; None if none failed).
    """
    sweep_dir = Path(sweep_dir).resolve()
    spec = load(sweep_dir)
    indices = failed_tasks(status(sweep_dir, orch))
    if not indices:
        return [], None
    if spec.get("backend") == "slurm":
        last = next((sub for sub in reversed(spec["submissions"]) if "resources" in sub), {})
        resources = {**last.get("resources", {}), **{k: v for k, v in resources.items() if v is not None}}
        return indices, submit(sweep_dir, orch, max_parallel=max_parallel, indices=indices, resume=True, **resources)
    if resources:
        raise ValueError(f"{', '.join(sorted(resources))}: SLURM resources, and sweep {spec['name']} runs here")
    return indices, run_local(sweep_dir, max_parallel=max_parallel, indices=indices, resume=True)


def run_sweep(notebook, grid, seeds=None, *, parameters=None, use_slurm=False, max_parallel=None, dry_run=False,
              name=None, sweeps_dir=SWEEPS_DIR, teacher_notebook=None, teacher_parameters=None,
              teacher_checkpoint=None, orchestrator=None, on_task_end=None, **resources):
    """Plans, creates and runs (locally, blocking) or submits (SLURM) a sweep in one call.

    Arguments as :func:`plan`, :func:`run_local` and :func:`submit`.

    Returns:
        The sweep dir; with ``dry_run`` a text of the tasks (and the SLURM scripts) instead.
    """
    spec = plan(notebook, grid, seeds, parameters=parameters, name=name, sweeps_dir=sweeps_dir,
                teacher_notebook=teacher_notebook, teacher_parameters=teacher_parameters,
                teacher_checkpoint=teacher_checkpoint)
    if dry_run:
        return describe(spec, orchestrator if use_slurm else None, max_parallel=max_parallel,
                        slurm=use_slurm, **resources)
    if use_slurm:
        orch = orchestrator or FabricSlurmTrainingOrchestrator(runs_dir=Path(spec["sweeps_dir"]) / spec["name"])
        orch.resources(resources)                     # a bad resource is refused before anything is written
        sweep_dir = create(spec)
        submit(sweep_dir, orch, max_parallel=max_parallel, **resources)
        return sweep_dir
    sweep_dir = create(spec)
    run_local(sweep_dir, max_parallel=max_parallel, on_task_end=on_task_end)
    return sweep_dir


def describe(spec: dict, orch=None, *, max_parallel=None, slurm=False, **resources) -> str:
    """A dry run: the tasks, one per line, and (SLURM) the scripts that would be submitted."""
    where = Path(spec["sweeps_dir"]) / spec["name"]
    lines = [f"sweep {spec['name']}: {len(spec['tasks'])} task(s) of {spec['notebook']} in {where}"]
    for t in spec["tasks"]:
        seed = "" if t["seed"] is None else f" seed={t['seed']}"
        lines.append(f"  {t['task']:>4}{seed} " + " ".join(f"{k}={json.dumps(v)}" for k, v in t["params"].items()))
    if slurm:
        sweep_dir = Path(spec["sweeps_dir"]) / spec["name"]
        orch = orch or FabricSlurmTrainingOrchestrator(runs_dir=sweep_dir)
        if (spec.get("teacher") or {}).get("notebook"):
            lines += ["", render_job(sweep_dir, spec["name"], orch, indices=None, **resources).rstrip()]
        lines += ["", render_job(sweep_dir, spec["name"], orch, indices=list(range(len(spec["tasks"]))),
                              max_parallel=max_parallel,
                              dependency="afterok:TEACHER_JOB" if (spec.get("teacher") or {}).get("notebook") else None,
                              **resources).rstrip()]
    return "\n".join(lines) + "\n"


def papermill_logging() -> None:
    """Sends papermill's cell output log to stderr (what ``run-task`` shows in the job log)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
