"""SLURM orchestration: render sbatch scripts from templates, submit, track, wait.

Commands (see kdkit/slurm_cli.py)::

    kdkit train --model gat --dataset hcrl_ch --type teacher --use-slurm --slurm-preset a100
    kdkit slurm submit-notebook notebooks/teacher.ipynb -p dataset hcrl_ch --preset cpu
    kdkit slurm status | kdkit slurm wait 123 | kdkit slurm logs 123 --tail 100
    kdkit slurm cancel 123

Python::

    from kdkit.slurm import FabricSlurmTrainingOrchestrator
    orch = FabricSlurmTrainingOrchestrator(runs_dir="runs", preset="a100", account="myproj")
    teacher, student = orch.submit_pipeline("hcrl_ch", model="gat")  # student afterok teacher
    orch.wait(student)["state"]          # 'COMPLETED', 'FAILED', 'TIMEOUT', ...
    orch.check_all_jobs()                # every job in runs/slurm_jobs.json, refreshed

Every job gets ``runs/<run_name>/`` holding ``job.sbatch`` (the rendered script),
``parameters.json`` and ``slurm-<jobid>.out``; the registry ``runs/slurm_jobs.json``
survives restarts. Scripts come from ``slurm_templates/`` at the repo top (override
the directory with ``KDKIT_SLURM_TEMPLATES``). A local test cluster:
``.ci/slurm-cluster.sh start``.
"""
from __future__ import annotations

import ast
import configparser
import fcntl
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from string import Template

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "slurm_templates"
TERMINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
    "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"})
KNOWN_STATES = TERMINAL_STATES | {
    "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED",
    "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED",
    "RESV_DEL_HOLD", "UNKNOWN"}
RESOURCE_KEYS = ("partition", "account", "qos", "time", "cpus_per_task", "mem", "gpus",
                 "gpu_type", "constraint", "mail_user", "mail_type", "modules", "venv",
                 "conda_env", "kernel", "workdir", "separate_stderr")


class SlurmError(RuntimeError):
    """A Slurm command failed (job rejected, unknown job, no Slurm on this machine)."""


# --------------------------------------------------------------------------- validation
def _no_control(field: str, value: str) -> str:
    if re.search(r"[\x00-\x1f\x7f]", value):
        raise ValueError(f"{field}={value!r}: newlines and control characters are not allowed")
    return value


def _check(ok, field, value, expected):
    if not ok:
        raise ValueError(f"{field}={value!r}: expected {expected}")
    return value


def _pattern(regex: str, what: str):
    rx = re.compile(regex)
    return lambda f, v: _check(isinstance(v, str) and rx.fullmatch(v), f, v, f"a {what} matching {regex}")


def _int(low: int):
    return lambda f, v: _check(type(v) is int and v >= low, f, v, f"an integer >= {low}")


def _path(field, value):
    return str(Path(_no_control(field, os.fspath(value))).expanduser().resolve())


def _sbatch_path(field, value):   # no spaces, quotes or % in #SBATCH paths
    return _pattern(r"/[A-Za-z0-9_./+@:=-]*", "path usable in #SBATCH lines")(field, _path(field, value))


_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
_MAIL = r"NONE|BEGIN|END|FAIL|REQUEUE|ALL|INVALID_DEPEND|STAGE_OUT|TIME_LIMIT(_\d\d)?|ARRAY_TASKS"
VALIDATORS = {
    "job_name": _pattern(_NAME, "job name"),
    "run_name": _pattern(_NAME, "run name"),
    "dataset": _pattern(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", "dataset name"),
    "model": _pattern(r"gat|vgae", "model (gat or vgae)"),
    "model_type": _pattern(r"teacher|student", "model type (teacher or student)"),
    "partition": _pattern(r"[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*", "partition name (list)"),
    "account": _pattern(r"[A-Za-z0-9_.-]+", "account name"),
    "qos": _pattern(r"[A-Za-z0-9_.-]+", "QOS name"),
    "time": _pattern(r"\d+(:\d\d){0,2}|\d+-\d+(:\d\d){0,2}|INFINITE|UNLIMITED",
                     "Slurm time (MM, HH:MM:SS, D-HH:MM:SS)"),
    "mem": _pattern(r"\d+[KMGT]?", "memory size (e.g. 16G)"),
    "cpus_per_task": _int(1), "nodes": _int(1), "ntasks_per_node": _int(1),
    "devices": _int(1), "num_nodes": _int(1), "epochs": _int(1), "gpus": _int(0),
    "gpu_type": _pattern(r"[A-Za-z0-9_.-]+", "GPU type"),
    "constraint": _pattern(r"[A-Za-z0-9_.,&|\[\]*:()!-]+", "constraint expression"),
    "mail_user": _pattern(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+", "e-mail address"),
    "mail_type": _pattern(rf"({_MAIL})(,({_MAIL}))*", "mail type list"),
    "dependency": _pattern(r"singleton|[a-z]+(:[A-Za-z0-9_+]+)+([,?][a-z]+(:[A-Za-z0-9_+]+)+)*",
                           "dependency (e.g. afterok:123)"),
    "modules": _pattern(r"[A-Za-z0-9_.+/-]+", "module name"),
    "kernel": _pattern(r"[A-Za-z0-9_.-]+", "Jupyter kernel name"),
    "conda_env": _pattern(r"[A-Za-z0-9_.+/-]+", "conda env name or prefix"),
    "workdir": _sbatch_path, "runs_dir": _sbatch_path, "venv": _path, "teacher": _path, "notebook": _path,
    "separate_stderr": lambda f, v: _check(isinstance(v, bool), f, v, "True or False"),
}


def validate(fields: dict) -> dict:
    """Checks every set field against its allow-list; returns normalised fields.

    Raises:
        ValueError: naming the field, the bad value and what is allowed.
    """
    out = {}
    for key, value in fields.items():
        if value is not None and key in VALIDATORS:
            check = VALIDATORS[key]
            value = [check(key, v) for v in value] if key == "modules" else check(key, value)
        out[key] = value
    return out


# ------------------------------------------------------------------ templates & presets
def template_path(name: str) -> Path:
    """The template file ``name``: from ``$KDKIT_SLURM_TEMPLATES`` if there, else the repo's."""
    override = os.environ.get("KDKIT_SLURM_TEMPLATES")
    if override and (Path(override) / name).is_file():
        return Path(override) / name
    return TEMPLATE_DIR / name


def load_presets() -> dict[str, dict]:
    """Resource presets (cpu, v100, a100, h100, ...) from ``presets.ini``."""
    parser, path = configparser.ConfigParser(), template_path("presets.ini")
    parser.read(path)
    presets = {}
    for name in parser.sections():
        preset = {k: (int(v) if k in ("cpus_per_task", "gpus") and v else v or None)
                  for k, v in parser[name].items()}
        unknown = set(preset) - set(RESOURCE_KEYS)
        if unknown:
            raise ValueError(f"{path} [{name}]: unknown key(s) {sorted(unknown)}; known: {RESOURCE_KEYS}")
        presets[name] = preset
    return presets


_SBATCH_SAFE = re.compile(r"[A-Za-z0-9_.,:/@%+=&|\[\]*()!-]+")


def render(template_name: str, values: dict) -> str:
    """Fills ``slurm_templates/<template_name>`` line by line.

    Lines starting with ``##`` and lines with a placeholder whose value is None (or an
    empty list) are dropped; a list value repeats its line per item. Values in
    ``#SBATCH`` lines must be plain tokens; values in shell lines go through
    ``shlex.quote``.

    Raises:
        ValueError: a value contains control characters or unsafe #SBATCH characters.
        KeyError: the template uses a placeholder not in ``values``.
    """
    text = template_path(template_name).read_text()
    lines = []
    for line in text.splitlines():
        if line.startswith("##"):      # template-only comment
            continue
        names = {m.group("named") or m.group("braced")
                 for m in Template.pattern.finditer(line)} - {None}
        missing = names - values.keys()
        if missing:
            raise KeyError(f"{template_name} uses placeholder(s) {sorted(missing)} that kdkit does not fill")
        vals = {n: values[n] for n in names}
        if any(v is None or v == [] for v in vals.values()):
            continue
        listed = [n for n, v in vals.items() if isinstance(v, (list, tuple))]
        for item in (vals[listed[0]] if listed else [None]):
            sub = {}
            for name, value in vals.items():
                text_value = _no_control(name, str(item if name in listed else value))
                if line.startswith("#SBATCH"):
                    if not _SBATCH_SAFE.fullmatch(text_value):
                        raise ValueError(f"{name}={text_value!r} cannot go in an #SBATCH line")
                else:
                    text_value = shlex.quote(text_value)
                sub[name] = text_value
            lines.append(Template(line).substitute(sub))
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ notebook parameters
def notebook_parameters(notebook: str | os.PathLike) -> dict:
    """Names and literal defaults of the notebook's cell tagged ``parameters``.

    Defaults that are not literals come back as ``...`` (any type accepted).

    Raises:
        ValueError: the notebook has no cell tagged ``parameters``.
    """
    nb = json.loads(Path(notebook).read_text())
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            params = {}
            for node in ast.parse(source).body:
                targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
                for target in [t for t in targets if isinstance(t, ast.Name) and node.value]:
                    try:
                        params[target.id] = ast.literal_eval(node.value)
                    except ValueError:
                        params[target.id] = ...
            return params
    raise ValueError(f"{notebook}: no code cell tagged 'parameters' (papermill needs one)")


def check_parameters(notebook, parameters: dict) -> dict:
    """Checks ``parameters`` against the notebook's parameters cell (names and types).

    Raises:
        ValueError: an unknown name, a value that is not JSON data, or a type that does
            not match the notebook's default (ints pass for floats; None default: any).
    """
    declared = notebook_parameters(notebook)
    for key, value in parameters.items():
        if key not in declared:
            raise ValueError(f"parameter {key!r} is not in {notebook}'s parameters cell "
                             f"(known: {', '.join(sorted(declared))})")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(f"parameter {key}={value!r}: only JSON data (str, finite number, "
                             "bool, None, list, dict) can be passed to a notebook") from None
        default = declared[key]
        if default is None or default is ... or value is None:
            continue
        kinds = {float: (int, float), list: (list, tuple), tuple: (list, tuple)}.get(type(default), type(default))
        if not isinstance(value, kinds) or (isinstance(value, bool) and type(default) is not bool):
            raise ValueError(f"parameter {key}={value!r}: the notebook's default is "
                             f"{type(default).__name__} {default!r}")
    return parameters


def to_yaml(value) -> str:
    """One-line YAML (flow style) for papermill's ``-y``: JSON with YAML-1.1-safe floats."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {to_yaml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(to_yaml(v) for v in value) + "]"
    if isinstance(value, float):   # PyYAML reads 1e-05 as a string: it wants 1.0e-05
        mantissa, _, exponent = repr(value).partition("e")
        mantissa = mantissa if "." in mantissa else mantissa + ".0"
        return mantissa + (f"e{'' if exponent[0] in '+-' else '+'}{exponent}" if exponent else "")
    return json.dumps(value)


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
        **defaults: resource overrides for every job: partition, account, qos, time,
            cpus_per_task, mem, gpus, gpu_type, constraint, mail_user, mail_type,
            modules (list), venv (default: this interpreter's venv, if any),
            conda_env (replaces venv), kernel (default ``"kdkit"``), workdir (default:
            the current directory), separate_stderr (default False).
    """

    def __init__(self, runs_dir: str | os.PathLike = "runs", preset: str = "cpu", *,
                 runner=None, **defaults):
        presets = load_presets()
        if preset not in presets:
            raise ValueError(f"preset={preset!r} unknown; known: {', '.join(presets)}")
        self.runs_dir = Path(validate({"runs_dir": runs_dir})["runs_dir"])
        self.preset = preset
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
        name = run_name or self._new_run_name(f"{model}_{dataset}_{model_type}")
        args = validate(dict(model=model, dataset=dataset, model_type=model_type, teacher=teacher,
                             epochs=epochs, run_name=name, devices=devices, num_nodes=num_nodes,
                             config=None if config is None else json.dumps(config, sort_keys=True)))
        fields = dict(res, **args, runs_dir=str(self.runs_dir), nodes=num_nodes,
                      ntasks_per_node=devices, dependency=dependency)
        return self._submit("train.sbatch", args["run_name"], fields, args, dry_run)

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


# ---------------------------------------------------- CLI hooks (kdkit/slurm_cli.py)
def register_cli(subparsers) -> None:
    """Adds ``kdkit slurm status|wait|cancel|logs|submit-notebook``."""
    from kdkit import slurm_cli
    slurm_cli.register_cli(subparsers)


def add_slurm_arguments(parser) -> None:
    """Adds ``--use-slurm --slurm-preset --partition ... --dry-run`` to ``kdkit train``."""
    from kdkit import slurm_cli
    slurm_cli.add_slurm_arguments(parser)


def submit_train_from_args(args) -> str:
    """Submits ``kdkit train ... --use-slurm``; returns the job ID (the script if dry run)."""
    from kdkit import slurm_cli
    return slurm_cli.submit_train_from_args(args)
