"""SLURM orchestration: submit sbatch scripts, track and wait for jobs.

Commands (see kdkit/cli/slurm.py)::

    kdkit train --model gat --dataset hcrl_ch --type teacher --use-slurm --slurm-preset a100
    kdkit slurm submit-notebook notebooks/teacher.ipynb -p dataset hcrl_ch --preset cpu
    kdkit slurm status | kdkit slurm wait 123 | kdkit slurm logs 123 --tail 100
    kdkit slurm cancel 123
    kdkit slurm resubmit 123             # a PREEMPTED/TIMEOUT/NODE_FAIL job again, resuming its last.pt

Python::

    from kdkit.cluster.orchestrator import FabricSlurmTrainingOrchestrator
    orch = FabricSlurmTrainingOrchestrator(runs_dir="runs", preset="a100", account="myproj")
    teacher, student = orch.submit_pipeline("hcrl_ch", model="gat")  # student afterok teacher
    orch.wait(student)["state"]          # 'COMPLETED', 'FAILED', 'TIMEOUT', ...
    orch.check_all_jobs()                # every job in runs/slurm_jobs.json, refreshed

Every job gets ``runs/<run_name>/`` holding ``job.sbatch`` (the rendered script),
``parameters.json`` and ``slurm-<jobid>.out``; the registry ``runs/slurm_jobs.json``
survives restarts. Scripts come from ``slurm_templates/`` at the repo top (override
the directory with ``KDKIT_SLURM_TEMPLATES``); rendering and value checks live in
kdkit/cluster/sbatch.py. A local test cluster:
``.ci/slurm-cluster.sh start``.

Every job asks SLURM for USR1 ``signal_grace`` seconds (default 120) before its time limit and
runs its command under :mod:`kdkit.cluster.requeue`: the run saves ``last.pt`` at its current step
and the job requeues itself (at most ``max_requeues`` times, default 3); training jobs pass
``--resume auto``, so the requeued job continues where it stopped (docs/PREEMPTION.md).
:meth:`~FabricSlurmTrainingOrchestrator.resubmit` starts a job that ended PREEMPTED, TIMEOUT or
NODE_FAIL (or ran out of requeues) again from its run folder, resuming the same way.

Job IDs must look like ``123`` or ``123_4`` (:func:`check_job_id`) and reach Slurm only after
``--`` or as ``--jobs=``, never where they could be read as an option. Each squeue, scontrol,
sacct or scancel call gets ``query_timeout`` seconds (default 10); a controller that does not
answer raises :class:`SlurmUnavailable` at once (one squeue call covers every job), and the
registry keeps each job's last known state, marked ``stale`` with ``last_error``, never UNKNOWN.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from kdkit.cluster.requeue import REQUEUE_EXIT_CODE, RESUME_ENV
from kdkit.cluster.sbatch import RESOURCE_KEYS, ShellArgs, load_presets, render, to_yaml, validate
from kdkit.config import TrainConfig, to_argv, validate_overrides
from kdkit.data.datasets import REGISTRY, dataset_name
from kdkit.models.registry import check_sizes
from kdkit.workflows.notebooks import check_model_sizes, check_parameters, notebook_parameters
from kdkit.workflows.run_dir import clear_run_outputs, existing_run

TERMINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
    "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"})


KNOWN_STATES = TERMINAL_STATES | {
    "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED",
    "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED",
    "RESV_DEL_HOLD", "UNKNOWN"}


RESUBMITTABLE = frozenset({"PREEMPTED", "TIMEOUT", "NODE_FAIL"})
"""Final states :meth:`FabricSlurmTrainingOrchestrator.resubmit` starts again (plus FAILED with
exit code 85: stopped with a checkpoint after its last requeue)."""

SIGNAL_GRACE, MAX_REQUEUES = 120, 3
"""Defaults of the resource keys ``signal_grace`` (seconds of warning before the time limit) and
``max_requeues``; a preset or a keyword overrides them."""

QUERY_TIMEOUT = 10.0
"""Seconds one squeue/scontrol/sacct/scancel call may take (Slurm's own default MessageTimeout);
``KDKIT_SLURM_QUERY_TIMEOUT`` or the orchestrator's ``query_timeout`` changes it."""

SUBMIT_TIMEOUT = 120.0
"""Seconds one sbatch call may take."""

_JOB_ID = re.compile(r"[0-9]+(_[0-9]+)?")


class SlurmError(RuntimeError):
    """A Slurm command failed (job rejected, unknown job, no Slurm on this machine)."""


class SlurmUnavailable(SlurmError):
    """The Slurm controller did not answer (timed out or refused); no job state was changed.

    Attributes:
        jobs: the last known records of the jobs being checked (``check_all_jobs``), each
            marked ``stale``; empty otherwise.
    """

    def __init__(self, message: str, jobs: list[dict] | None = None):
        super().__init__(message)
        self.jobs = list(jobs or [])


class RegistryError(ValueError):
    """The job registry file (``runs/slurm_jobs.json``) cannot be read as one."""


def _json_type(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def check_job_id(job_id) -> str:
    """``job_id`` as a string if it is a SLURM job ID (``123``, or ``123_4`` for an array task).

    Every ID kdkit hands to scancel/squeue/sacct/scontrol goes through here, so a value such
    as ``--name=x`` can never reach them as an option.

    Raises:
        ValueError: naming the value and what a job ID looks like.
    """
    text = str(job_id)
    if isinstance(job_id, bool) or not _JOB_ID.fullmatch(text):
        raise ValueError(f"job ID {text!r} is not a SLURM job ID: expected digits such as 123, or 123_4 for "
                         "an array task (`kdkit slurm status` lists the jobs kdkit submitted)")
    return text


# ---------------------------------------------------------------------------- parsing
def parse_sbatch(stdout: str) -> tuple[str, str | None]:
    """Job ID and cluster from ``sbatch --parsable`` output (``123`` or ``123;cluster``)."""
    lines = [ln.strip() for ln in stdout.strip().splitlines() if ln.strip()]
    match = re.fullmatch(r"(\d+(?:_\d+)?)(?:;(\S+))?", lines[-1] if lines else "")
    if not match:
        raise SlurmError(f"cannot read a job ID from sbatch output {stdout!r}")
    return match.group(1), match.group(2)


def normalize_state(raw: str) -> str:
    """``CANCELLED by 0`` -> ``CANCELLED``, ``OUT_OF_ME+`` -> ``OUT_OF_MEMORY``."""
    word = (raw or "").strip().split(" ")[0].upper()
    if word.endswith("+"):
        word = next((s for s in sorted(KNOWN_STATES) if s.startswith(word[:-1])), word[:-1])
    return word or "UNKNOWN"


def _clean(value):
    return None if value in (None, "", "(null)", "None", "N/A") else value


def parse_scontrol(text: str) -> dict:
    """Fields of one job from ``scontrol show job -o ID`` (``Key=Value`` pairs)."""
    key = r"[A-Za-z][A-Za-z0-9_/:]*"
    pairs = re.findall(rf"(?:^|\s)({key})=(.*?)(?=\s+{key}=|\s*$)", text.strip())
    raw = dict(pairs)
    return {"job_id": raw.get("JobId"), "state": normalize_state(raw.get("JobState", "")),
            "exit_code": raw.get("ExitCode"), "reason": _clean(raw.get("Reason")),
            "nodes": _clean(raw.get("NodeList")), "log": _clean(raw.get("StdOut"))}


def _rows(text: str, keys: tuple[str, ...]) -> dict[str, dict]:
    jobs = {}
    for line in text.splitlines():
        parts = line.strip().split("|", len(keys) - 1)   # the node list (commas) comes last
        if len(parts) == len(keys) and re.fullmatch(r"\d+(_\d+)?", parts[0]):
            row = {k: _clean(v) for k, v in zip(keys, parts)}
            jobs[parts[0]] = dict(row, state=normalize_state(parts[1]))
    return jobs


def parse_squeue(text: str) -> dict[str, dict]:
    """Jobs from ``squeue -h -o '%i|%T|%r|%N'``."""
    return _rows(text, ("job_id", "state", "reason", "nodes"))


def parse_sacct(text: str) -> dict[str, dict]:
    """Jobs from ``sacct -n -P -X -o JobID,State,ExitCode,NodeList`` (last row per ID wins)."""
    return _rows(text, ("job_id", "state", "exit_code", "nodes"))


def read_tail(path: str | os.PathLike | None, lines: int = 50) -> str:
    """The last ``lines`` lines of a text file ('' if it does not exist yet)."""
    if not path or not Path(path).is_file():
        return ""
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


# --------------------------------------------------------------------------- registry
class JobRegistry:
    """Submitted jobs in a JSON file, updated under a lock and replaced atomically.

    Args:
        path: the JSON file, e.g. ``runs/slurm_jobs.json``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def load(self) -> dict[str, dict]:
        """All jobs by ID (empty when the file does not exist yet).

        Raises:
            RegistryError: the file is not JSON, or not ``{"jobs": {JOB_ID: {...}, ...}}``;
                the message names the file and says what to do.
        """
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise self._error(f"it is not JSON ({err})") from None
        expected = '{"version": 1, "jobs": {JOB_ID: {...}, ...}}'
        if not isinstance(data, dict):
            raise self._error(f"expected an object {expected}, found a JSON {_json_type(data)}")
        if "jobs" not in data:
            raise self._error(f"it has no 'jobs' (keys: {', '.join(sorted(data)) or 'none'}); expected {expected}")
        jobs = data["jobs"]
        if not isinstance(jobs, dict):
            raise self._error(f"'jobs' is a JSON {_json_type(jobs)}, not an object of jobs; expected {expected}")
        for job_id, record in jobs.items():
            if not _JOB_ID.fullmatch(job_id) or not isinstance(record, dict):
                raise self._error(f"entry {job_id!r} is not a job (a SLURM job ID mapped to an object): {record!r}")
        return {job_id: {**record, "job_id": job_id} for job_id, record in jobs.items()}

    def _error(self, what: str) -> RegistryError:
        return RegistryError(f"{self.path} is not a kdkit job registry: {what}. Move it aside "
                             f"(mv {self.path} {self.path}.bad) and kdkit starts a new one; the jobs it listed "
                             "keep running (squeue -u $USER shows them)")

    def update(self, job_id: str, drop: tuple[str, ...] = (), **fields) -> dict:
        """Merges ``fields`` into job ``job_id``'s record, removes the keys in ``drop``, and
        saves; returns the record."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            jobs = self.load()
            record = jobs.setdefault(job_id, {"job_id": job_id})
            record.update(fields)
            for key in drop:
                record.pop(key, None)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".slurm_jobs.")
            with os.fdopen(fd, "w") as f:
                json.dump({"version": 1, "jobs": jobs}, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        return dict(record)


# ------------------------------------------------------------------------ orchestrator
def absolute_dataset(dataset: str) -> str:
    """A dataset folder or spec file (``file.toml[:name]``) as an absolute path, since a job may
    start in another folder; registry keys and declared names unchanged."""
    if dataset in REGISTRY:
        return dataset
    head, sep, pick = dataset.partition(":") if re.match(r"^.+\.(toml|json):[^/\\]+$", dataset, re.I) \
        else (dataset, "", "")
    path = Path(head).expanduser()
    return str(path.resolve()) + sep + pick if path.exists() else dataset


def _job_number(job_id: str) -> tuple[int, ...]:
    """A job ID as numbers, for ordering (``"100"`` after ``"99"``; ``"123_4"``: (123, 4))."""
    return tuple(int(part) for part in re.findall(r"\d+", str(job_id))) or (-1,)


class FabricSlurmTrainingOrchestrator:
    """Submits kdkit training runs and notebooks as SLURM batch jobs and tracks them.

    Args:
        runs_dir: where run dirs and ``slurm_jobs.json`` live. Default ``"runs"``.
        preset: resource preset from ``slurm_templates/presets.ini`` (``cpu``, ``v100``,
            ``a100``, ``h100``). Default ``"cpu"``.
        runner: runs a Slurm command list and returns a ``CompletedProcess`` (raising
            ``subprocess.TimeoutExpired`` when it hangs); tests pass a fake. Default:
            ``subprocess.run`` with ``query_timeout`` for queries and scancel, 120 s for sbatch.
        query_timeout: seconds one squeue/scontrol/sacct/scancel call may take before the
            controller counts as down. Default ``$KDKIT_SLURM_QUERY_TIMEOUT`` or 10.
        schema: the run schema training jobs are checked against and whose fields become
            ``kdkit train`` flags. Default :class:`~kdkit.config.TrainConfig`.
        **defaults: resource overrides for every job: partition, account, qos, time,
            cpus_per_task, mem, gpus, gpu_type, constraint, mail_user, mail_type,
            modules (list), venv (default: this interpreter's venv, if any),
            conda_env (replaces venv), kernel (default ``"kdkit"``), workdir (default:
            the current directory), separate_stderr (default False), signal_grace
            (seconds between SLURM's USR1 warning and the time limit; default 120; 0: none),
            max_requeues (default 3).
    """

    def __init__(self, runs_dir: str | os.PathLike = "runs", preset: str = "cpu", *,
                 runner=None, query_timeout: float | None = None, schema: type = TrainConfig, **defaults):
        presets = load_presets()
        if preset not in presets:
            raise ValueError(f"preset={preset!r} unknown; known: {', '.join(presets)}")
        self.runs_dir = Path(validate({"runs_dir": runs_dir})["runs_dir"])
        self.preset, self.schema = preset, schema
        in_venv = sys.prefix != sys.base_prefix
        self.defaults = {"venv": sys.prefix if in_venv else None, "kernel": "kdkit", "separate_stderr": False,
                         "signal_grace": SIGNAL_GRACE, "max_requeues": MAX_REQUEUES, **presets[preset]}
        self.defaults = self.resources(defaults)
        self.registry = JobRegistry(self.runs_dir / "slurm_jobs.json")
        self.query_timeout = _query_timeout(query_timeout)
        self._runner = runner or (lambda argv: subprocess.run(
            argv, capture_output=True, text=True, check=False,
            timeout=SUBMIT_TIMEOUT if argv[0] == "sbatch" else self.query_timeout))

    # ---- submission
    def submit_gat_training(self, dataset: str, model_type: str, teacher=None, **overrides):
        """Submits ``srun kdkit train --model gat ...``; returns the job ID.

        Args:
            dataset: dataset name (``hcrl_ch``, ``synthetic``, ...).
            model_type: ``teacher`` or ``student``.
            teacher: teacher checkpoint for a student (made absolute). Default None.
            **overrides: epochs, config (dict or JSON string), run_name, devices
                (tasks per node; default the GPU count or 1), num_nodes (default 1),
                dependency (e.g. ``"afterok:123"``), dry_run (return the script
                instead of submitting), and any resource key of the constructor.
        """
        return self._submit_training("gat", dataset, model_type, teacher, **overrides)

    def submit_training(self, model: str, dataset: str, model_type: str, teacher=None, **overrides):
        """Submits ``srun kdkit train --model MODEL ...``; see :meth:`submit_gat_training`."""
        return self._submit_training(model, dataset, model_type, teacher, **overrides)

    def submit_run(self, run: dict, *, dependency=None, dry_run=False, **resources):
        """Submits the run a dict of :class:`kdkit.config.TrainConfig` keys describes (what the CLI
        and the widget panel build); every key travels as a ``kdkit train`` flag.

        Returns:
            The job ID (the script when ``dry_run``).
        """
        run = dict(run)
        if "dataset" not in run:
            raise ValueError("the run has no dataset")
        run.pop("runs_dir", None)  # the orchestrator's runs_dir holds the job
        model, dataset, kind = run.pop("model", "gat"), run.pop("dataset"), run.pop("type", "teacher")
        teacher = run.pop("teacher", None)
        training = {k: run.pop(k) for k in ("epochs", "run_name", "devices", "num_nodes") if k in run}
        return self._submit_training(model, dataset, kind, teacher, config=run or None, dependency=dependency,
                                     dry_run=dry_run, **training, **resources)

    def submit_vgae_training(self, dataset: str, model_type: str, teacher=None, **overrides):
        """Like :meth:`submit_gat_training`, for the VGAE."""
        return self._submit_training("vgae", dataset, model_type, teacher, **overrides)

    def submit_pipeline(self, dataset: str, model: str = "gat", *, teacher_overrides=None,
                        student_overrides=None, **common) -> tuple[str, str]:
        """Submits a teacher and a student that starts only if the teacher succeeds.

        The student gets ``--teacher <runs>/<teacher run>/checkpoints/best.pt`` and
        ``--dependency=afterok:<teacher job>`` (killed if the teacher fails).

        Args:
            dataset: dataset name.
            model: ``gat`` or ``vgae``. Default ``"gat"``.
            teacher_overrides: keywords for the teacher job only. Default None.
            student_overrides: keywords for the student job only. Default None.
            **common: keywords for both (see :meth:`submit_gat_training`); a
                ``run_name`` becomes ``<run_name>_teacher`` and ``<run_name>_student``.

        Returns:
            (teacher job ID, student job ID); the two scripts when ``dry_run=True``.
        """
        base = common.pop("run_name", None)
        teacher_kw = {**common, **(teacher_overrides or {})}
        student_kw = {**common, **(student_overrides or {})}
        teacher_kw.setdefault("run_name", f"{base}_teacher" if base else
                              self._new_run_name(f"{model}_{dataset}_teacher", claim=not common.get("dry_run")))
        student_kw.setdefault("run_name", f"{base}_student" if base else None)
        teacher_job = self._submit_training(model, dataset, "teacher", None, **teacher_kw)
        checkpoint = self.runs_dir / teacher_kw["run_name"] / "checkpoints" / "best.pt"
        after = "TEACHER_JOB_ID" if student_kw.get("dry_run") else teacher_job
        student_job = self._submit_training(model, dataset, "student", checkpoint,
                                            dependency=f"afterok:{after}", **student_kw)
        return teacher_job, student_job

    def submit_notebook(self, notebook, parameters: dict | None = None, *, run_name=None,
                        dependency=None, dry_run=False, **resources):
        """Submits ``papermill NOTEBOOK RUN_DIR/NOTEBOOK -k KERNEL -y PARAMETERS``.

        Parameters are checked against the notebook's parameters cell; ``run_dir`` is
        set to the job's run dir when the notebook declares it and it is not given.

        Args:
            notebook: path of the ``.ipynb``.
            parameters: notebook parameters (JSON data). Default none.
            run_name: run dir name. Default ``<notebook stem>_<timestamp>``.
            dependency: Slurm dependency, e.g. ``"afterok:123"``. Default None.
            dry_run: return the rendered script instead of submitting. Default False.
            **resources: resource keys of the constructor.
        """
        notebook = Path(validate({"notebook": notebook})["notebook"])
        if not notebook.is_file():
            raise FileNotFoundError(f"notebook {notebook} does not exist")
        name = validate({"run_name": run_name or self._new_run_name(notebook.stem, claim=not dry_run)})["run_name"]
        run_dir = self.runs_dir / name
        parameters = dict(parameters or {})
        if isinstance(parameters.get("dataset"), str):
            parameters["dataset"] = absolute_dataset(parameters["dataset"])
        if "run_dir" in notebook_parameters(notebook):
            parameters.setdefault("run_dir", str(run_dir))
        check_parameters(notebook, parameters)
        check_model_sizes(notebook, parameters)
        res = self.resources(resources)
        # the kernel runs in the job's working directory (where it was submitted, or `workdir`), as
        # sweeps do: relative data roots, ./datasets.toml and the runs/ cache resolve as for the
        # submitter, and nothing is written into the notebook's (maybe read-only) folder
        fields = dict(res, notebook=str(notebook), output_notebook=str(run_dir / notebook.name),
                      notebook_dir=res.get("workdir") or os.getcwd(),
                      parameters_yaml=to_yaml(parameters), dependency=dependency)
        return self._submit("notebook.sbatch", name, fields, parameters, dry_run)

    def _submit_training(self, model, dataset, model_type, teacher, *, epochs=None,
                         config=None, run_name=None, devices=None, num_nodes=1,
                         dependency=None, dry_run=False, **resources):
        res = self.resources(resources)
        devices = devices or max(res.get("gpus") or 0, 1)
        if res.get("gpus"):
            res["gpus"] = devices          # one task per GPU
        if isinstance(config, str):
            try:
                config = json.loads(config)
            except json.JSONDecodeError as err:
                raise ValueError(f"config is not valid JSON: {err}") from None
        if config is not None and not isinstance(config, dict):
            raise ValueError(f"config must be a JSON object, got {config!r}")
        if teacher is not None:
            teacher = Path(teacher).expanduser()
        if teacher is not None and dependency is None:
            # a teacher job still queued or running will write (or rewrite: best.pt after every better epoch) that
            # checkpoint: the student waits for it, even when a first best.pt is already there
            job = self.teacher_job(teacher)
            if job is None and not Path(teacher).is_file():
                raise FileNotFoundError(f"teacher checkpoint {teacher} does not exist (nor is it the checkpoint of a "
                                        f"queued or running job in {self.registry.path})")
            if job is not None:
                dependency = f"afterok:{job}"  # the student starts once the teacher's job has succeeded
        validate(dict(model=model, dataset=dataset, model_type=model_type, teacher=teacher, epochs=epochs))
        validate_overrides({"model": model, "dataset": dataset, "type": model_type}, self.schema)
        check_sizes(model, model_type, (config or {}).get("hidden"), (config or {}).get("embedding_dim"))
        dataset = absolute_dataset(dataset)
        # <dataset>_<model>_<type> as a local run's default name, with the time: a name per job
        name = run_name or self._new_run_name(f"{dataset_name(dataset)}_{model}_{model_type}", claim=not dry_run)
        validate({"run_name": name})
        run = {"model": model, "dataset": dataset, "type": model_type}
        if teacher is not None:
            run["teacher"] = str(Path(teacher).expanduser().resolve())
        if epochs is not None:
            run["epochs"] = epochs
        run.update(sorted((config or {}).items()))
        run.update(run_name=name, runs_dir=str(self.runs_dir), devices=devices, num_nodes=num_nodes)
        if run.get("data_root"):  # ~ as a local run reads it (resolve alone made it <cwd>/~/...)
            run["data_root"] = str(Path(run["data_root"]).expanduser().resolve())
        if devices > 1 or num_nodes > 1:
            run.setdefault("strategy", "ddp")
        # the run schema checks every key and value here: a bad one is refused before sbatch. No --resume:
        # the first attempt trains as `kdkit train` does here (a folder holding a run is refused, --overwrite
        # replaces it); a requeued attempt continues from the run folder's last.pt (the requeue wrapper sets
        # KDKIT_RESUME=auto, as `kdkit slurm resubmit` does). With --resume auto on every attempt, a job with
        # --overwrite continued the local run it was to replace.
        train_args = ShellArgs(to_argv(run, self.schema))
        fields = dict(res, train_args=train_args, nodes=num_nodes, ntasks_per_node=devices, dependency=dependency)
        if not dry_run:
            run_dir = self.runs_dir / name
            held = existing_run(run_dir) if not (run_dir / "job.sbatch").exists() else []
            if held and not run.get("overwrite"):
                raise FileExistsError(f"run dir {run_dir} already holds a run ({', '.join(held)}); the job would "
                                      "replace it. Pass --overwrite to replace it, or choose another --run-name")
            if held:  # replaced now: no attempt of the job can take the old last.pt for its own
                clear_run_outputs(run_dir)
        return self._submit("train.sbatch", name, fields, run, dry_run)

    def teacher_job(self, checkpoint) -> str | None:
        """The job of this registry that will write ``checkpoint`` (``<run dir>/checkpoints/*.pt``)
        and has not ended yet (PENDING or RUNNING, refreshed from Slurm), else None: a student given
        that checkpoint waits for it (``afterok``)."""
        path = Path(checkpoint).expanduser().resolve()
        if path.parent.name != "checkpoints":
            return None
        # the newest job first: by number (the registry is saved with its IDs sorted as text, so "99" came
        # after "100", and a timed-out "99" hid its resubmission "100" still pending: no afterok)
        records = sorted(self.registry.load().items(), key=lambda item: _job_number(item[0]), reverse=True)
        for job_id, record in records:
            if record.get("run_dir") and Path(record["run_dir"]).resolve() == path.parent.parent \
                    and record.get("kind") == "train":
                try:
                    state = self.status(job_id).get("state")
                except SlurmUnavailable:
                    state = record.get("state")
                return job_id if state in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING") else None
        return None

    def resources(self, overrides: dict) -> dict:
        """This orchestrator's defaults with ``overrides`` (resource keys only; an unknown key is a
        ``TypeError`` naming the valid ones), checked before anything is written or submitted."""
        unknown = set(overrides) - set(RESOURCE_KEYS)
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(sorted(unknown))}; "
                            f"resource options: {', '.join(RESOURCE_KEYS)}")
        res = {**dict.fromkeys(RESOURCE_KEYS), **self.defaults, **overrides}
        if overrides.get("conda_env"):
            res["venv"] = None
        if isinstance(res.get("modules"), str):          # "cuda/12.1 gcc/12" from presets.ini
            res["modules"] = res["modules"].replace(",", " ").split()
        return validate(res)

    def _new_run_name(self, prefix: str, claim: bool = False) -> str:
        """``<prefix>_<date-time>`` (``-2``, ``-3``, ... when taken). ``claim``: its folder is made here, so
        that submissions started in the same second (a loop of them, several shells) each get their own
        name; without, all but one were refused as "already holds a job"."""
        base = f"{prefix}_{datetime.now():%Y%m%d-%H%M%S}"
        name, n = base, 1
        while True:
            run_dir = self.runs_dir / name
            if not run_dir.exists():
                if not claim:
                    return name
                try:
                    run_dir.mkdir(parents=True)
                    return name
                except FileExistsError:  # another submission took it in between
                    pass
            n += 1
            name = f"{base}-{n}"

    def _submit(self, template, name, fields, parameters, dry_run):
        run_dir = self.runs_dir / name
        log = run_dir / "slurm-%j.out"
        fields = validate(dict(fields, job_name=name, workdir=fields.get("workdir") or os.getcwd()))
        gpus = fields.get("gpus") or 0
        fields.update(
            run_dir=str(run_dir), output=str(log), module=fields.get("modules"),
            error=str(run_dir / "slurm-%j.err") if fields.get("separate_stderr") else str(log),
            kill_on_invalid_dep="yes" if fields.get("dependency") else None,
            signal_grace=signal_grace_for(fields.get("signal_grace"), fields.get("time")),
            max_requeues=MAX_REQUEUES if fields.get("max_requeues") is None else fields["max_requeues"],
            gres_gpu=(f"{fields['gpu_type']}:{gpus}" if fields.get("gpu_type") else str(gpus))
            if gpus else None)
        script = render(template, fields)
        if dry_run:
            return script
        self.registry.load()              # a broken registry is refused before anything is submitted
        if (run_dir / "job.sbatch").exists():
            raise FileExistsError(f"{run_dir} already holds a job; choose another run name (--run-name)")
        created = not run_dir.exists() or not any(run_dir.iterdir())  # (a generated name's folder is made empty)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "job.sbatch").write_text(script)
        (run_dir / "parameters.json").write_text(json.dumps(parameters, indent=1, default=str) + "\n")
        try:
            proc = self.run_slurm(["sbatch", "--parsable", str(run_dir / "job.sbatch")])
            if proc.returncode != 0:
                raise SlurmError(f"sbatch rejected the job ({proc.stderr.strip() or f'exit status {proc.returncode}'}); "
                                 "nothing was submitted")
        except SlurmUnavailable:  # no answer in time: the job may be queued all the same, its files stay
            raise
        except SlurmError:  # refused or no sbatch: no run folder is left behind for a job that does not exist
            for leftover in ("job.sbatch", "parameters.json"):
                (run_dir / leftover).unlink(missing_ok=True)
            if created and not any(run_dir.iterdir()):
                run_dir.rmdir()
            raise
        job_id, cluster = parse_sbatch(proc.stdout)
        self.registry.update(job_id, cluster=cluster, name=name, kind=template.split(".")[0],
                             run_dir=str(run_dir), log=str(run_dir / f"slurm-{job_id}.out"),
                             dependency=fields.get("dependency"), state="PENDING",
                             submitted=datetime.now().isoformat(timespec="seconds"))
        return job_id

    def resubmit(self, job_id: str, *, time: str | None = None, mem: str | None = None) -> str:
        """Submits a job that ended PREEMPTED, TIMEOUT or NODE_FAIL (or stopped with a checkpoint
        after its last requeue: FAILED, exit code 85; or CANCELLED after it saved ``last.pt``)
        again from its run folder's ``job.sbatch``,
        with ``KDKIT_RESUME=auto``: it continues from the run's ``last.pt``.

        ``time`` and ``mem`` replace the script's limits for this submission (``sbatch --time/--mem``
        win over its ``#SBATCH`` lines): a job that hit its time limit can get more.

        Returns:
            The new job's ID (registered with ``resubmitted_from``; the old record gets
            ``resubmitted_as``).

        Raises:
            ValueError: not a job ID, an array task (``kdkit sweep retry-failed`` resubmits
                those), or a job in another state.
            FileNotFoundError: its run folder has no ``job.sbatch``.
            SlurmError: sbatch refused.
        """
        job_id = check_job_id(job_id)
        limits = validate({k: v for k, v in (("time", time), ("mem", mem)) if v is not None})
        if "_" in job_id:
            raise ValueError(f"job {job_id} is an array task: `kdkit sweep retry-failed SWEEP` resubmits a sweep's "
                             "stopped tasks")
        info = self.status(job_id)
        state, exit_code = info.get("state"), info.get("exit_code")
        out_of_requeues = state == "FAILED" and exit_code == f"{REQUEUE_EXIT_CODE}:0"
        # a run cancelled by hand after it saved a checkpoint can be continued too, on request
        cancelled_with_checkpoint = state == "CANCELLED" and bool(info.get("run_dir")) and \
            (Path(info["run_dir"]) / "checkpoints" / "last.pt").is_file()
        if state not in RESUBMITTABLE and not out_of_requeues and not cancelled_with_checkpoint:
            raise ValueError(f"job {job_id} is {state}{f' (exit code {exit_code})' if exit_code else ''}: only a job "
                             f"that ended {', '.join(sorted(RESUBMITTABLE))}, FAILED with exit code "
                             f"{REQUEUE_EXIT_CODE}:0 (stopped with a checkpoint after its last requeue), or CANCELLED "
                             "with a last.pt in its run folder, is resubmitted; submit a new run otherwise")
        if not info.get("run_dir") or not (Path(info["run_dir"]) / "job.sbatch").is_file():
            raise FileNotFoundError(f"job {job_id}: no job.sbatch in its run folder {info.get('run_dir')} (was it "
                                    f"submitted by kdkit into {self.runs_dir}?)")
        run_dir = Path(info["run_dir"])
        proc = self.run_slurm(["sbatch", "--parsable", *(f"--{k}={v}" for k, v in limits.items()),
                               f"--export=ALL,{RESUME_ENV}=auto", str(run_dir / "job.sbatch")])
        if proc.returncode != 0:
            raise SlurmError(f"sbatch rejected {run_dir / 'job.sbatch'}: {proc.stderr.strip()}")
        new_id, cluster = parse_sbatch(proc.stdout)
        self.registry.update(new_id, cluster=cluster, name=info.get("name"), kind=info.get("kind"),
                             run_dir=str(run_dir), log=str(run_dir / f"slurm-{new_id}.out"), dependency=None,
                             state="PENDING", submitted=datetime.now().isoformat(timespec="seconds"),
                             resubmitted_from=job_id)
        self.registry.update(job_id, resubmitted_as=new_id)
        return new_id

    # ---- monitoring
    def status(self, job_id: str) -> dict:
        """The job's record, refreshed from Slurm unless already final.

        A job Slurm no longer knows keeps its last known state in the registry, marked
        ``stale`` with a ``last_error``; one kdkit never saw gets state ``UNKNOWN``.

        Returns:
            dict with job_id, state, exit_code, reason, nodes, run_dir, log, and, for a
            final state other than COMPLETED, ``log_tail`` (last 20 log lines).

        Raises:
            ValueError: ``job_id`` is not a SLURM job ID.
            SlurmUnavailable: the controller did not answer (the registry keeps the state).
        """
        job_id = check_job_id(job_id)
        record = self.registry.load().get(job_id, {"job_id": job_id})
        if record.get("state") not in TERMINAL_STATES:
            try:
                info = self._query(job_id, record.get("cluster"))
            except SlurmUnavailable as err:
                self._mark_stale(job_id, str(err))
                raise
            record = self._refresh(job_id, record, info)
        return self._with_tail(record)

    def check_all_jobs(self) -> list[dict]:
        """Every registered job (oldest first), active ones refreshed with one squeue call.

        Raises:
            SlurmUnavailable: the controller did not answer; its ``jobs`` are the last known
                records (kept in the registry, marked ``stale``).
        """
        jobs = self.registry.load()
        active = [j for j, r in jobs.items() if r.get("state") not in TERMINAL_STATES]
        if active:
            try:
                infos = self._query_many(active, jobs)
            except SlurmUnavailable as err:
                for job_id in active:
                    jobs[job_id] = self._mark_stale(job_id, str(err))
                raise SlurmUnavailable(str(err), self._sorted(jobs)) from None
            for job_id in active:
                jobs[job_id] = self._refresh(job_id, jobs[job_id], infos[job_id])
        return self._sorted(jobs)

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 5.0) -> dict:
        """Polls until the job reaches a final state; returns :meth:`status`'s dict.

        Stops on every final state (COMPLETED, FAILED, CANCELLED, TIMEOUT,
        OUT_OF_MEMORY, NODE_FAIL, PREEMPTED, BOOT_FAIL, DEADLINE, ...) and on a job
        Slurm has not known (state ``UNKNOWN``, or its last known state marked ``stale``)
        for ``max(3 * poll, 60)`` seconds. A controller that does not answer the first
        poll fails at once; one that stops answering later gets the same grace.

        Args:
            job_id: the job.
            timeout: seconds before giving up. Default None (no limit).
            poll: seconds between polls. Default 5.

        Raises:
            ValueError: ``job_id`` is not a SLURM job ID.
            TimeoutError: ``timeout`` passed first.
            SlurmUnavailable: the controller did not answer (see above).
        """
        job_id = check_job_id(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        grace = max(3 * poll, 60)
        unknown_since = down_since = None
        first = True
        while True:
            try:
                info = self.status(job_id)
            except SlurmUnavailable:
                down_since = time.monotonic() if down_since is None else down_since
                if first or time.monotonic() - down_since > grace or (
                        deadline is not None and time.monotonic() > deadline):
                    raise
                first = False
                time.sleep(poll)
                continue
            first, down_since = False, None
            if info["state"] != "UNKNOWN" and not info.get("stale"):
                unknown_since = None
            elif unknown_since is None:
                unknown_since = time.monotonic()
            if info["state"] in TERMINAL_STATES or (
                    unknown_since is not None and time.monotonic() - unknown_since > grace):
                return info
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {info['state']} after {timeout} s")
            time.sleep(poll)

    def cancel(self, job_id: str) -> None:
        """Cancels the job (``scancel -- ID``); its state becomes CANCELLED.

        Raises:
            ValueError: ``job_id`` is not a SLURM job ID (nothing is sent to scancel).
            SlurmError: scancel refused or did not answer.
        """
        job_id = check_job_id(job_id)
        cluster = self.registry.load().get(job_id, {}).get("cluster")
        proc = self.run_slurm(["scancel", *self._cluster_args(cluster), "--", job_id])
        if proc.returncode != 0:
            raise SlurmError(f"scancel {job_id}: {proc.stderr.strip()}")

    def logs(self, job_id: str, tail: int = 50) -> str:
        """The last ``tail`` lines of the job's log ('' while it has not started).

        Raises:
            ValueError: ``job_id`` is not a SLURM job ID.
        """
        job_id = check_job_id(job_id)
        record = self.registry.load().get(job_id) or self.status(job_id)
        text = read_tail(record.get("log"), tail)
        err = Path(record.get("log") or "x.out").with_suffix(".err")
        if err.is_file():
            text += f"\n--- {err}\n" + read_tail(err, tail)
        return text

    # ---- Slurm calls
    def run_slurm(self, argv: list[str]) -> subprocess.CompletedProcess:
        """Run a Slurm command (sbatch, scancel, ...) through this orchestrator's runner;
        :class:`SlurmUnavailable` when the command is not installed."""
        try:
            return self._runner(argv)
        except FileNotFoundError:
            raise SlurmError(f"{argv[0]} not found: run this on a SLURM login node "
                             "(or start a local test cluster: .ci/slurm-cluster.sh start)") from None
        except subprocess.TimeoutExpired as err:
            after = ("the job may have been submitted all the same: check `squeue --me` before resubmitting"
                     if argv[0] == "sbatch" else "job states in the registry were kept")
            raise SlurmUnavailable(
                f"the Slurm controller did not answer: `{' '.join(argv)}` got no answer in {err.timeout:g} s: "
                f"is slurmctld up? (`scontrol ping` tells; {after})") from None

    def _ask_controller(self, argv: list[str]) -> subprocess.CompletedProcess:
        """Runs squeue/scontrol; any failure other than "Invalid job id" means the controller is down."""
        proc = self.run_slurm(argv)
        if proc.returncode != 0 and "invalid job id" not in (proc.stderr or "").lower():
            why = (proc.stderr or "").strip() or f"no message, exit status {proc.returncode}"
            raise SlurmUnavailable(f"the Slurm controller did not answer: {why} (from `{' '.join(argv)}`; "
                                   "`scontrol ping` checks the controller; job states in the registry were kept)")
        return proc

    @staticmethod
    def _cluster_args(cluster):
        return ["-M", cluster] if cluster else []

    def _query(self, job_id: str, cluster=None) -> dict:
        """Live/recent jobs from scontrol; older ones from sacct, then sacct -c (jobcomp)."""
        info = self._scontrol(job_id, cluster)
        return info or self._sacct([job_id], cluster).get(job_id) or self._unknown(job_id)

    def _query_many(self, job_ids: list[str], records: dict) -> dict[str, dict]:
        """One squeue call for all jobs; scontrol for those it lists as final or not at all
        (exit codes), then one sacct call per cluster for those scontrol forgot."""
        proc = self._ask_controller(["squeue", "-h", "-t", "all", "-o", "%i|%T|%r|%N",
                                     "--jobs=" + ",".join(job_ids)])
        live = parse_squeue(proc.stdout) if proc.returncode == 0 else {}
        found = {}
        for job_id in job_ids:
            info = live.get(job_id)
            if info is None or info["state"] in TERMINAL_STATES:      # exit code: ask scontrol
                info = self._scontrol(job_id, records[job_id].get("cluster")) or info
            if info is not None:
                found[job_id] = info
        by_cluster: dict = {}
        for job_id in job_ids:
            if job_id not in found:
                by_cluster.setdefault(records[job_id].get("cluster"), []).append(job_id)
        for cluster, missing in by_cluster.items():
            found.update(self._sacct(missing, cluster))
        return {job_id: found.get(job_id) or self._unknown(job_id) for job_id in job_ids}

    def _scontrol(self, job_id: str, cluster=None) -> dict | None:
        proc = self._ask_controller(["scontrol", *self._cluster_args(cluster), "-o", "--", "show", "job", job_id])
        return parse_scontrol(proc.stdout) if proc.returncode == 0 and "JobId=" in proc.stdout else None

    def _sacct(self, job_ids: list[str], cluster=None) -> dict[str, dict]:
        """Accounting rows (then job-completion rows) of jobs the controller forgot; {} when
        accounting is off or does not answer (the state stays unknown, nothing fails)."""
        found: dict[str, dict] = {}
        for extra in ([], ["-c"]):
            missing = [j for j in job_ids if j not in found]
            if not missing:
                break
            argv = ["sacct", *self._cluster_args(cluster), *extra, "-n", "-P", "-X",
                    "-o", "JobID,State,ExitCode,NodeList", "--jobs=" + ",".join(missing)]
            try:
                proc = self.run_slurm(argv)
            except SlurmUnavailable:
                continue
            if proc.returncode == 0:
                rows = parse_sacct(proc.stdout)
                found.update((j, rows[j]) for j in missing if j in rows)
        return found

    @staticmethod
    def _unknown(job_id: str) -> dict:
        return {"job_id": job_id, "state": "UNKNOWN",
                "error": "Slurm does not know this job any more (not in squeue, scontrol or sacct)"}

    def _refresh(self, job_id, record, info) -> dict:
        now = datetime.now().isoformat(timespec="seconds")
        if info.get("state") == "UNKNOWN" and record.get("state") not in (None, "UNKNOWN"):
            fields, drop = {"stale": True, "last_error": info.get("error"), "last_error_at": now}, ()
        else:                                                   # a real answer clears an old error
            fields = {k: v for k, v in info.items() if v is not None and k not in ("job_id", "error")}
            drop = ("stale", "last_error", "last_error_at")
            if info.get("state") and info.get("reason") in (None, "None"):
                drop += ("reason",)  # a reason of an earlier state (Dependency, BeginTime) does not carry over
                fields.pop("reason", None)
            if record.get("log"):
                fields.pop("log", None)        # ours (in the run dir) beats scontrol's
        if job_id not in self.registry.load():
            return {**{k: v for k, v in record.items() if k not in drop}, **fields}
        return self.registry.update(job_id, drop=drop, updated=now, **fields)

    def _mark_stale(self, job_id: str, error: str) -> dict:
        """Records that the job could not be checked; its last known state stays."""
        jobs = self.registry.load()
        if job_id not in jobs:
            return {"job_id": job_id}
        return self.registry.update(job_id, stale=True, last_error=error,
                                    last_error_at=datetime.now().isoformat(timespec="seconds"))

    def _sorted(self, jobs: dict) -> list[dict]:
        return [self._with_tail(r) for r in sorted(jobs.values(), key=lambda r: int(r["job_id"].split("_")[0]))]

    @staticmethod
    def _with_tail(record: dict) -> dict:
        record = dict(record)
        record.setdefault("state", "UNKNOWN")
        if record["state"] in TERMINAL_STATES - {"COMPLETED"}:
            record["log_tail"] = read_tail(record.get("log"), 20)
        return record


def slurm_seconds(limit: str | None) -> int | None:
    """A Slurm time limit (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) in seconds; None
    for none, ``INFINITE`` or ``UNLIMITED``."""
    if not limit or limit in ("INFINITE", "UNLIMITED"):
        return None
    days, _, rest = limit.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:                  # D-HH, D-HH:MM, D-HH:MM:SS
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 3:     # HH:MM:SS
        hours, minutes, seconds = parts
    else:                     # MM, MM:SS
        hours, (minutes, seconds) = 0, (parts + [0])[:2]
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


def signal_grace_for(grace: int | None, limit: str | None) -> int | None:
    """The warning time a job asks for: ``grace`` seconds, at most half its time limit (a grace as
    long as the limit would stop the run at its first step); None for 0 (no warning)."""
    if not grace:
        return None
    seconds = slurm_seconds(limit)
    return grace if seconds is None else max(min(grace, seconds // 2), 1)


def _query_timeout(value) -> float:
    """``value``, else ``$KDKIT_SLURM_QUERY_TIMEOUT``, else :data:`QUERY_TIMEOUT`; checked."""
    source = "query_timeout"
    if value is None and os.environ.get("KDKIT_SLURM_QUERY_TIMEOUT"):
        value, source = os.environ["KDKIT_SLURM_QUERY_TIMEOUT"], "environment variable KDKIT_SLURM_QUERY_TIMEOUT"
    if value is None:
        return QUERY_TIMEOUT
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not 0 < seconds < float("inf") or isinstance(value, bool):
        raise ValueError(f"{source}={value!r}: expected a number of seconds > 0, e.g. 10")
    return seconds
