"""Building SLURM batch scripts: value allow-lists, template rendering, resource presets.

kdkit/cluster/orchestrator.py calls these; they also work on their own::

    from kdkit.cluster.sbatch import render, validate, load_presets, to_yaml
    fields = validate({"job_name": "demo", "time": "01:00:00", "mem": "8G"})
    load_presets()["a100"]                     # resources from slurm_templates/presets.ini
    to_yaml({"lr": 1e-05})                     # '{"lr": 1.0e-05}' for papermill -y

(Notebook parameters are checked by :func:`kdkit.workflows.notebooks.check_parameters`.)

Every value is checked against an allow-list (``VALIDATORS``) before it reaches a
script; ``#SBATCH`` lines take plain tokens only and shell lines get ``shlex.quote``.
Templates come from ``slurm_templates/`` at the repo top (override the directory with
``KDKIT_SLURM_TEMPLATES``).
"""
from __future__ import annotations

import configparser
import json
import os
import re
import shlex
from pathlib import Path
from string import Template

from kdkit.models.registry import MODEL_CLASSES

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "slurm_templates"


RESOURCE_KEYS = ("partition", "account", "qos", "time", "cpus_per_task", "mem", "gpus",
                 "gpu_type", "constraint", "mail_user", "mail_type", "modules", "venv",
                 "conda_env", "kernel", "workdir", "separate_stderr", "signal_grace", "max_requeues")
"""Resource keys of presets and of :class:`~kdkit.cluster.orchestrator.FabricSlurmTrainingOrchestrator`.
``signal_grace``: seconds before the time limit at which SLURM sends the job USR1 (0: no warning);
``max_requeues``: how often a job stopped by the time limit or preemption requeues itself
(see :mod:`kdkit.cluster.requeue`)."""


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
    "dataset": _pattern(r"[A-Za-z0-9_./~][A-Za-z0-9_./:+@~-]{0,1023}", "dataset key, folder or spec file (no spaces)"),
    "model": _pattern("|".join(MODEL_CLASSES), f"model ({', '.join(MODEL_CLASSES)})"),
    "model_type": _pattern(r"teacher|student", "model type (teacher or student)"),
    "partition": _pattern(r"[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*", "partition name (list)"),
    "account": _pattern(r"[A-Za-z0-9_.-]+", "account name"),
    "qos": _pattern(r"[A-Za-z0-9_.-]+", "QOS name"),
    "time": _pattern(r"\d+(:\d\d){0,2}|\d+-\d+(:\d\d){0,2}|INFINITE|UNLIMITED",
                     "Slurm time (MM, HH:MM:SS, D-HH:MM:SS)"),
    "mem": _pattern(r"\d+[KMGT]?", "memory size (e.g. 16G)"),
    "cpus_per_task": _int(1), "nodes": _int(1), "ntasks_per_node": _int(1),
    "devices": _int(1), "num_nodes": _int(1), "epochs": _int(1), "gpus": _int(0),
    "signal_grace": _int(0), "max_requeues": _int(0),
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


_INT_KEYS = ("cpus_per_task", "gpus", "signal_grace", "max_requeues")


def load_presets() -> dict[str, dict]:
    """Resource presets (cpu, v100, a100, h100, ...) from ``presets.ini``."""
    parser, path = configparser.ConfigParser(), template_path("presets.ini")
    parser.read(path)
    presets = {}
    for name in parser.sections():
        try:
            preset = {k: (int(v) if k in _INT_KEYS and v else v or None) for k, v in parser[name].items()}
        except ValueError as err:
            raise ValueError(f"{path} [{name}]: {err} (cpus_per_task, gpus, signal_grace and max_requeues are "
                             "whole numbers)") from None
        unknown = set(preset) - set(RESOURCE_KEYS)
        if unknown:
            raise ValueError(f"{path} [{name}]: unknown key(s) {sorted(unknown)}; known: {RESOURCE_KEYS}")
        presets[name] = preset
    return presets


class ShellArgs(tuple):
    """A command line's arguments for one placeholder: shell-quoted, one ``--flag value`` per line."""


def _argv_lines(argv: list[str]) -> str:
    groups: list[list[str]] = []
    for word in argv:
        if word.startswith("--") or not groups:
            groups.append([word])
        else:
            groups[-1].append(word)
    return " \\\n    ".join(shlex.join(g) for g in groups)


_SBATCH_SAFE = re.compile(r"[A-Za-z0-9_.,:/@%+=&|\[\]*()!-]+")


def render(template_name: str, values: dict) -> str:
    """Fills ``slurm_templates/<template_name>`` line by line.

    Lines starting with ``##`` and lines with a placeholder whose value is None (or an
    empty list) are dropped; a list value repeats its line per item;
    a :class:`ShellArgs` value becomes shell-quoted words on its line. Values in
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
        listed = [n for n, v in vals.items() if isinstance(v, (list, tuple)) and not isinstance(v, ShellArgs)]
        for item in (vals[listed[0]] if listed else [None]):
            sub = {}
            for name, value in vals.items():
                if isinstance(value, ShellArgs):
                    if line.startswith("#SBATCH"):
                        raise ValueError(f"{name}: arguments cannot go in an #SBATCH line")
                    sub[name] = _argv_lines([_no_control(name, str(v)) for v in value])
                    continue
                text_value = _no_control(name, str(item if name in listed else value))
                if line.startswith("#SBATCH"):
                    if not _SBATCH_SAFE.fullmatch(text_value):
                        raise ValueError(f"{name}={text_value!r} cannot go in an #SBATCH line")
                else:
                    text_value = shlex.quote(text_value)
                sub[name] = text_value
            lines.append(Template(line).substitute(sub))
    return "\n".join(lines) + "\n"


def to_yaml(value) -> str:
    """One-line YAML (flow style) for papermill's ``-y``: JSON with YAML-1.1-safe floats."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{to_yaml(str(k))}: {to_yaml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        # JSON's escapes, ASCII, except a character above U+FFFF: JSON writes it as a surrogate pair,
        # which PyYAML reads as two lone surrogates (the notebook job then died on an emoji); YAML's \U
        return '"' + "".join(f"\\U{ord(c):08X}" if ord(c) > 0xFFFF else json.dumps(c)[1:-1] for c in value) + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(to_yaml(v) for v in value) + "]"
    if isinstance(value, float):   # PyYAML reads 1e-05 as a string: it wants 1.0e-05
        mantissa, _, exponent = repr(value).partition("e")
        mantissa = mantissa if "." in mantissa else mantissa + ".0"
        return mantissa + (f"e{'' if exponent[0] in '+-' else '+'}{exponent}" if exponent else "")
    return json.dumps(value)
