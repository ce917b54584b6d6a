"""SLURM orchestration: submit sbatch scripts, track and wait for jobs.

Commands (see kdkit/cli/slurm.py)::

    kdkit train --model gat --dataset hcrl_ch --type teacher --use-slurm --slurm-preset a100
    kdkit slurm submit-notebook notebooks/teacher.ipynb -p dataset hcrl_ch --preset cpu
    kdkit slurm status | kdkit slurm wait 123 | kdkit slurm logs 123 --tail 100
    kdkit slurm cancel 123

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

from kdkit.cluster.sbatch import RESOURCE_KEYS, ShellArgs, load_presets, render, to_yaml, validate
from kdkit.config import TrainConfig, to_argv, validate_overrides
from kdkit.workflows.notebooks import check_parameters, notebook_parameters

TERMINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
    "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"})


KNOWN_STATES = TERMINAL_STATES | {
    "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED",
    "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED",
    "RESV_DEL_HOLD", "UNKNOWN"}


class SlurmError(RuntimeError):
    """A Slurm command failed (job rejected, unknown job, no Slurm on this machine)."""


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
        """All jobs by ID (empty when the file does not exist yet)."""
        if not self.path.is_file():
            return {}
        return json.loads(self.path.read_text())["jobs"]

    def update(self, job_id: str, **fields) -> dict:
        """Merges ``fields`` into job ``job_id``'s record and saves; returns the record."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            jobs = self.load()
            record = jobs.setdefault(job_id, {"job_id": job_id})
            record.update(fields)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".slurm_jobs.")
            with os.fdopen(fd, "w") as f:
                json.dump({"version": 1, "jobs": jobs}, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        return dict(record)


# ------------------------------------------------------------------------ orchestrator
class FabricSlurmTrainingOrchestrator:
    """Submits kdkit training runs and notebooks as SLURM batch jobs and tracks them.

    Args:
        runs_dir: where run dirs and ``slurm_jobs.json`` live. Default ``"runs"``.
        preset: resource preset from ``slurm_templates/presets.ini`` (``cpu``, ``v100``,
            ``a100``, ``h100``). Default ``"cpu"``.
        runner: runs a Slurm command list and returns a ``CompletedProcess``; tests
            pass a fake. Default: ``subprocess.run``.
        schema: the run schema training jobs are checked against and whose fields become
            ``kdkit train`` flags. Default :class:`~kdkit.config.TrainConfig`.
        **defaults: resource overrides for every job: partition, account, qos, time,
            cpus_per_task, mem, gpus, gpu_type, constraint, mail_user, mail_type,
            modules (list), venv (default: this interpreter's venv, if any),
            conda_env (replaces venv), kernel (default ``"kdkit"``), workdir (default:
            the current directory), separate_stderr (default False).
    """

    def __init__(self, runs_dir: str | os.PathLike = "runs", preset: str = "cpu", *,
                 runner=None, schema: type = TrainConfig, **defaults):
        presets = load_presets()
        if preset not in presets:
            raise ValueError(f"preset={preset!r} unknown; known: {', '.join(presets)}")
        self.runs_dir = Path(validate({"runs_dir": runs_dir})["runs_dir"])
        self.preset, self.schema = preset, schema
        in_venv = sys.prefix != sys.base_prefix
        self.defaults = {"venv": sys.prefix if in_venv else None, "kernel": "kdkit",
                         "separate_stderr": False, **presets[preset]}
        self.defaults = self._resources(defaults)
        self.registry = JobRegistry(self.runs_dir / "slurm_jobs.json")
        self._runner = runner or (lambda argv: subprocess.run(
            argv, capture_output=True, text=True, timeout=120, check=False))

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
                              self._new_run_name(f"{model}_{dataset}_teacher"))
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
        name = validate({"run_name": run_name or self._new_run_name(notebook.stem)})["run_name"]
        run_dir = self.runs_dir / name
        parameters = dict(parameters or {})
        if "run_dir" in notebook_parameters(notebook):
            parameters.setdefault("run_dir", str(run_dir))
        check_parameters(notebook, parameters)
        fields = dict(self._resources(resources), notebook=str(notebook),
                      output_notebook=str(run_dir / notebook.name), notebook_dir=str(notebook.parent),
                      parameters_yaml=to_yaml(parameters), dependency=dependency)
        return self._submit("notebook.sbatch", name, fields, parameters, dry_run)

    def _submit_training(self, model, dataset, model_type, teacher, *, epochs=None,
                         config=None, run_name=None, devices=None, num_nodes=1,
                         dependency=None, dry_run=False, **resources):
        res = self._resources(resources)
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
        if teacher is not None and dependency is None and not Path(teacher).is_file():
            raise FileNotFoundError(f"teacher checkpoint {teacher} does not exist")
        validate(dict(model=model, dataset=dataset, model_type=model_type, teacher=teacher, epochs=epochs))
        validate_overrides({"model": model, "dataset": dataset, "type": model_type}, self.schema)
        name = run_name or self._new_run_name(f"{model}_{dataset}_{model_type}")
        validate({"run_name": name})
        run = {"model": model, "dataset": dataset, "type": model_type}
        if teacher is not None:
            run["teacher"] = str(Path(teacher).resolve())
        if epochs is not None:
            run["epochs"] = epochs
        run.update(sorted((config or {}).items()))
        run.update(run_name=name, runs_dir=str(self.runs_dir), devices=devices, num_nodes=num_nodes)
        if run.get("data_root"):
            run["data_root"] = str(Path(run["data_root"]).resolve())
        if devices > 1 or num_nodes > 1:
            run.setdefault("strategy", "ddp")
        # the run schema checks every key and value here: a bad one is refused before sbatch
        train_args = ShellArgs(to_argv(run, self.schema))
        fields = dict(res, train_args=train_args, nodes=num_nodes, ntasks_per_node=devices, dependency=dependency)
        return self._submit("train.sbatch", name, fields, run, dry_run)

    def _resources(self, overrides: dict) -> dict:
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

    def _new_run_name(self, prefix: str) -> str:
        base = f"{prefix}_{datetime.now():%Y%m%d-%H%M%S}"
        name, n = base, 1
        while (self.runs_dir / name).exists():
            n += 1
            name = f"{base}-{n}"
        return name

    def _submit(self, template, name, fields, parameters, dry_run):
        run_dir = self.runs_dir / name
        log = run_dir / "slurm-%j.out"
        fields = validate(dict(fields, job_name=name, workdir=fields.get("workdir") or os.getcwd()))
        gpus = fields.get("gpus") or 0
        fields.update(
            run_dir=str(run_dir), output=str(log), module=fields.get("modules"),
            error=str(run_dir / "slurm-%j.err") if fields.get("separate_stderr") else str(log),
            kill_on_invalid_dep="yes" if fields.get("dependency") else None,
            gres_gpu=(f"{fields['gpu_type']}:{gpus}" if fields.get("gpu_type") else str(gpus))
            if gpus else None)
        script = render(template, fields)
        if dry_run:
            return script
        if (run_dir / "job.sbatch").exists():
            raise FileExistsError(f"{run_dir} already holds a job; choose another run_name")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "job.sbatch").write_text(script)
        (run_dir / "parameters.json").write_text(json.dumps(parameters, indent=1, default=str) + "\n")
        proc = self._slurm(["sbatch", "--parsable", str(run_dir / "job.sbatch")])
        if proc.returncode != 0:
            raise SlurmError(f"sbatch rejected {run_dir / 'job.sbatch'}: {proc.stderr.strip()}")
        job_id, cluster = parse_sbatch(proc.stdout)
        self.registry.update(job_id, cluster=cluster, name=name, kind=template.split(".")[0],
                             run_dir=str(run_dir), log=str(run_dir / f"slurm-{job_id}.out"),
                             dependency=fields.get("dependency"), state="PENDING",
                             submitted=datetime.now().isoformat(timespec="seconds"))
        return job_id

    # ---- monitoring
    def status(self, job_id: str) -> dict:
        """The job's record, refreshed from Slurm unless already final.

        Returns:
            dict with job_id, state, exit_code, reason, nodes, run_dir, log, and, for a
            final state other than COMPLETED, ``log_tail`` (last 20 log lines).
        """
        job_id = str(job_id)
        record = self.registry.load().get(job_id, {"job_id": job_id})
        if record.get("state") not in TERMINAL_STATES:
            record = self._refresh(job_id, record, self._query(job_id, record.get("cluster")))
        return self._with_tail(record)

    def check_all_jobs(self) -> list[dict]:
        """Every registered job (oldest first), active ones refreshed with one squeue call."""
        jobs = self.registry.load()
        active = [j for j, r in jobs.items() if r.get("state") not in TERMINAL_STATES]
        live = {}
        if active:
            proc = self._slurm(["squeue", "-h", "-t", "all", "-o", "%i|%T|%r|%N", "-j", ",".join(active)])
            live = parse_squeue(proc.stdout) if proc.returncode == 0 else {}
        for job_id in active:
            info = live.get(job_id)
            if info is None or info["state"] in TERMINAL_STATES:   # exit code: ask scontrol
                info = self._query(job_id, jobs[job_id].get("cluster"))
            jobs[job_id] = self._refresh(job_id, jobs[job_id], info)
        return [self._with_tail(r) for r in sorted(jobs.values(), key=lambda r: int(r["job_id"].split("_")[0]))]

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 5.0) -> dict:
        """Polls until the job reaches a final state; returns :meth:`status`'s dict.

        Stops on every final state (COMPLETED, FAILED, CANCELLED, TIMEOUT,
        OUT_OF_MEMORY, NODE_FAIL, PREEMPTED, BOOT_FAIL, DEADLINE, ...) and on a job
        Slurm has not known (state ``UNKNOWN``) for ``max(3 * poll, 60)`` seconds.

        Args:
            job_id: the job.
            timeout: seconds before giving up. Default None (no limit).
            poll: seconds between polls. Default 5.

        Raises:
            TimeoutError: ``timeout`` passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        unknown_since = None
        while True:
            info = self.status(job_id)
            if info["state"] != "UNKNOWN":
                unknown_since = None
            elif unknown_since is None:
                unknown_since = time.monotonic()
            if info["state"] in TERMINAL_STATES or (
                    unknown_since is not None and time.monotonic() - unknown_since > max(3 * poll, 60)):
                return info
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {info['state']} after {timeout} s")
            time.sleep(poll)

    def cancel(self, job_id: str) -> None:
        """Cancels the job (``scancel``); its state becomes CANCELLED."""
        cluster = self.registry.load().get(str(job_id), {}).get("cluster")
        proc = self._slurm(["scancel", *self._cluster_args(cluster), str(job_id)])
        if proc.returncode != 0:
            raise SlurmError(f"scancel {job_id}: {proc.stderr.strip()}")

    def logs(self, job_id: str, tail: int = 50) -> str:
        """The last ``tail`` lines of the job's log ('' while it has not started)."""
        record = self.registry.load().get(str(job_id)) or self.status(job_id)
        text = read_tail(record.get("log"), tail)
        err = Path(record.get("log") or "x.out").with_suffix(".err")
        if err.is_file():
            text += f"\n--- {err}\n" + read_tail(err, tail)
        return text

    # ---- Slurm calls
    def _slurm(self, argv: list[str]) -> subprocess.CompletedProcess:
        try:
            return self._runner(argv)
        except FileNotFoundError:
            raise SlurmError(f"{argv[0]} not found: run this on a SLURM login node "
                             "(or start a local test cluster: .ci/slurm-cluster.sh start)") from None
        except subprocess.TimeoutExpired as err:
            raise SlurmError(f"{' '.join(argv)} got no answer in {err.timeout} s: is slurmctld up?") from None

    @staticmethod
    def _cluster_args(cluster):
        return ["-M", cluster] if cluster else []

    def _query(self, job_id: str, cluster=None) -> dict:
        """Live/recent jobs from scontrol; older ones from sacct, then sacct -c (jobcomp)."""
        proc = self._slurm(["scontrol", *self._cluster_args(cluster), "show", "job", "-o", job_id])
        if proc.returncode == 0 and "JobId=" in proc.stdout:
            return parse_scontrol(proc.stdout)
        fmt = ["-n", "-P", "-X", "-o", "JobID,State,ExitCode,NodeList", "-j", job_id]
        for extra in ([], ["-c"]):
            proc = self._slurm(["sacct", *self._cluster_args(cluster), *extra, *fmt])
            if proc.returncode == 0 and job_id in parse_sacct(proc.stdout):
                return parse_sacct(proc.stdout)[job_id]
        return {"job_id": job_id, "state": "UNKNOWN"}

    def _refresh(self, job_id, record, info) -> dict:
        fields = {k: v for k, v in info.items() if v is not None and k != "job_id"}
        if record.get("log"):
            fields.pop("log", None)        # ours (in the run dir) beats scontrol's
        if job_id not in self.registry.load():
            return {**record, **fields}
        return self.registry.update(job_id, updated=datetime.now().isoformat(timespec="seconds"), **fields)

    @staticmethod
    def _with_tail(record: dict) -> dict:
        record = dict(record)
        record.setdefault("state", "UNKNOWN")
        if record["state"] in TERMINAL_STATES - {"COMPLETED"}:
            record["log_tail"] = read_tail(record.get("log"), 20)
        return record
