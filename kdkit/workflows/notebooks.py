"""Executing the notebooks with papermill (kernel ``kdkit``) and checking notebook parameters:
names and types against the notebook's ``parameters`` cell, run keys against the run schema
(:class:`kdkit.config.TrainConfig`)."""
from __future__ import annotations

import ast
import difflib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import can

from kdkit.config import TrainConfig, schema, validate_overrides
from kdkit.data.datasets import dataset_name
from kdkit.models.registry import MODEL_CLASSES, PRESETS, check_sizes
from kdkit.reporting.records import epoch_printer, stop_note
from kdkit.training.checkpoint import load_checkpoint, provenance
from kdkit.training.precision import resolve_accelerator
from kdkit.workflows.run import calibration_sample, in_sample, train

# ----------------------------------------------------------------------------- executing notebooks
NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"


KERNEL = "kdkit"


def ensure_kernel(name: str = KERNEL) -> None:
    """Register this environment's Jupyter kernel ``name`` if it is missing (what ``make`` does)."""

    from jupyter_client.kernelspec import find_kernel_specs

    if name in find_kernel_specs():
        return
    from ipykernel.kernelspec import install

    try:
        install(kernel_name=name, display_name=f"{name} ({Path(sys.prefix).name})", prefix=sys.prefix)
    except OSError as err:
        raise RuntimeError(f"no Jupyter kernel {name!r} and {sys.prefix} is not writable ({err}); register one with "
                           f"`{sys.executable} -m ipykernel install --user --name {name}`") from err
    print(f"registered Jupyter kernel {name!r} for {sys.executable}")


def execute_notebook(name: str, run_dir: str | Path, **parameters: Any) -> dict:
    """Run ``notebooks/<name>.ipynb`` with papermill (kernel ``kdkit``) into ``run_dir``; return its metrics.json.

    The executed copy is ``<run_dir>/<name>.ipynb``; ``run_dir`` is passed as the notebook's parameter.
    """
    import papermill as pm

    source = NOTEBOOK_DIR / f"{name}.ipynb"
    if not source.is_file():
        raise FileNotFoundError(f"notebook {source} not found (kdkit must run from its source checkout for notebooks)")
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    ensure_kernel()
    pm.execute_notebook(str(source), str(run_dir / source.name), parameters={**parameters, "run_dir": str(run_dir)},
                        kernel_name=KERNEL, progress_bar=False)
    return json.loads((run_dir / "metrics.json").read_text())


def train_logged(cfg: TrainConfig, data=None) -> dict:
    """``train(cfg)`` as the notebooks run it: one line per epoch while it trains, then one saying how it
    ended (``trained all 20 epochs``, or ``stopped early after epoch 7/20: no better validation for 5
    epochs``); returns the run summary."""
    summary = train(cfg, progress=False, on_epoch_end=epoch_printer(cfg.epochs), data=data)
    every = f"trained all {cfg.epochs} epochs" if cfg.epochs != 1 else "trained its 1 epoch"
    print(stop_note(summary, cfg.epochs, cfg.patience) or every, flush=True)
    return summary


# ------------------------------------------------------------------ notebook parameters
def notebook_parameters(notebook: str | os.PathLike) -> dict:
    """Names and literal defaults of the notebook's cell tagged ``parameters``.

    Defaults that are not literals come back as ``...`` (any type accepted).

    Raises:
        ValueError: the notebook has no cell tagged ``parameters``.
    """
    return {name: default for name, (default, _) in _declared(notebook).items()}


def _declared(notebook: str | os.PathLike) -> dict[str, tuple[Any, str | None]]:
    """name -> (literal default or ``...``, annotation source or None) of the parameters cell."""
    nb = json.loads(Path(notebook).read_text())
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            params = {}
            for node in ast.parse(source).body:
                targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
                annotation = None
                if isinstance(node, ast.AnnAssign):  # int, or 'Optional[int]' (quoted: papermill reads it, Python need not)
                    ann = node.annotation
                    annotation = ann.value if isinstance(ann, ast.Constant) else ast.unparse(ann)
                for target in [t for t in targets if isinstance(t, ast.Name) and node.value]:
                    try:
                        params[target.id] = (ast.literal_eval(node.value), annotation)
                    except ValueError:
                        params[target.id] = (..., annotation)
            return params
    raise ValueError(f"{notebook}: no code cell tagged 'parameters' (papermill needs one)")


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "list": (list, tuple),
          "dict": (dict,)}


# notebook-only numbers and their smallest values: (minimum, whether the minimum itself is allowed)
_LIMITS = {"steps": (1, True), "burn_in": (0, True), "repeats": (1, True), "threads": (1, True),
           "preprocess_repeats": (1, True), "baseline_limit": (1, True), "infer_seconds": (0, False),
           "infer_calls": (1, True), "bus_seconds": (0, False), "paced_seconds": (0, False),
           "latency_calls": (1, True)}


def _check_limit(notebook, key: str, value: Any) -> None:
    if key not in _LIMITS or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    low, inclusive = _LIMITS[key]
    if value < low or (value == low and not inclusive):
        raise ValueError(f"{notebook} parameter {key}={value!r}: must be {'>=' if inclusive else '>'} {low}")


def _check_annotated(notebook, key: str, value: Any, default: Any, annotation: str | None) -> None:
    """A notebook-only parameter against its annotation (``int``, ``str | None``, ...) or its default's type,
    and a number against its smallest value (:data:`_LIMITS`)."""
    _check_limit(notebook, key, value)
    if annotation:
        optional = annotation.startswith("Optional[")
        parts = [p.strip() for p in annotation.removeprefix("Optional[").removesuffix("]" if optional else "").split("|")]
        if value is None:
            if "None" in parts or optional:
                return
            raise ValueError(f"{notebook} parameter {key}: None is not allowed (declared {annotation})")
        kinds = tuple(k for p in parts for k in _TYPES.get(p, ()))
        if kinds and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
            raise ValueError(f"{notebook} parameter {key}={value!r}: expected {annotation}")
        return
    if default is None or default is ... or value is None:
        return
    kinds = {float: (int, float), list: (list, tuple), tuple: (list, tuple)}.get(type(default), type(default))
    if not isinstance(value, kinds) or (isinstance(value, bool) and type(default) is not bool):
        raise ValueError(f"{notebook} parameter {key}={value!r}: the notebook's default is "
                         f"{type(default).__name__} {default!r}")


def closest_hint(name: str, names) -> str:
    """``"; did you mean 'epochs'?"`` for the one of ``names`` that ``name`` nearly is, else ``""``."""
    close = difflib.get_close_matches(name, list(names), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_parameters(notebook, parameters: dict, cls: type = TrainConfig,
                     declared: Mapping[str, tuple[Any, str | None]] | None = None) -> dict:
    """Checks ``parameters`` against the notebook's parameters cell and the run schema.

    A parameter named like a run-schema field (``epochs``, ``kd_alpha``, ...; also with a
    ``teacher_`` prefix, the notebooks' quick-teacher settings) is checked as that field:
    type, choices, range, ``None`` only where the field allows it. The others are checked
    against their annotation in the parameters cell (or the default's type). ``declared``: the
    parameters cell's names, defaults and annotations when they are not the file's
    (:func:`check_notebook`: the cell as the kernel ran it).

    Raises:
        ValueError: an unknown name, a value that is not JSON data, or a bad value, naming
            the notebook, the parameter and what is allowed.
    """
    declared = _declared(notebook) if declared is None else declared
    specs = {s.name: s for s in schema(cls)}
    shown = Path(notebook).name  # the file's name ("your copy of teacher.ipynb" from check_notebook for a copy)
    for key, value in parameters.items():
        if key not in declared:
            raise ValueError(f"parameter {key!r} is not in {Path(notebook).name}'s parameters cell"
                             f"{closest_hint(key, declared)} "
                             f"(known: {', '.join(sorted(declared))})")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(f"parameter {key}={value!r}: only JSON data (str, finite number, "
                             "bool, None, list, dict) can be passed to a notebook") from None
        default, annotation = declared[key]
        field = key if key in specs else key.removeprefix("teacher_")
        if field in specs:
            try:
                validate_overrides({field: value}, cls)
            except ValueError as err:
                raise ValueError(f"{shown} parameter {key}={value!r}: {err}") from None
        else:
            _check_annotated(shown, key, value, default, annotation)
    return parameters


def check_notebook(name: str, namespace: Mapping[str, Any]) -> dict:
    """The first code cell of kdkit's notebooks: the parameters cell's values (as papermill, the
    SLURM job or the user left them in ``namespace``) checked with :func:`check_parameters`.

    Returns:
        The parameters, by name.
    """
    path = NOTEBOOK_DIR / f"{name}.ipynb"
    if not injected_names(namespace):  # papermill (a SLURM job, a script) runs where its caller chose: stay there
        move_to_project_folder()
    own = _declared(path)
    declared = running_parameters(own, namespace)
    # a copy whose parameters cell differs from kdkit's is named as what it is in the messages
    shown = path if set(declared) == set(own) else Path(f"your copy of {path.name}")
    for key in injected_names(namespace):  # papermill -p NAME of a name the notebook does not have
        if key not in declared:
            check_parameters(shown, {key: namespace.get(key)}, declared=declared)  # raises, naming the closest name
    values = check_parameters(shown, {k: namespace[k] for k in declared if k in namespace}, declared=declared)
    check_model_sizes(path, values)
    check_teacher_checkpoint(path, values)
    if path.stem == "gateway":  # its files, threshold and bus, before the run record is written
        check_gateway_inputs(path, values)
    if isinstance(values.get("accelerator"), str):
        try:  # a device this machine lacks fails here, not in the training cell
            resolve_accelerator(values["accelerator"])
        except ValueError as err:
            raise ValueError(f"{path.name} parameter {err}") from None
    return values


def running_parameters(declared: Mapping[str, tuple[Any, str | None]],
                       namespace: Mapping[str, Any]) -> dict[str, tuple[Any, str | None]]:
    """The parameters cell as the kernel ran it: the names annotated in ``namespace`` (IPython keeps a
    cell's ``name: type = value`` in ``__annotations__``), with ``declared`` (kdkit's own cell) for
    the defaults of the names both have. A user's copy of a notebook with a parameter of its own,
    or without one of kdkit's, is checked against its own cell, not against kdkit's file. Without
    annotations (not a kernel, or a cell without them) it is ``declared``."""
    ran = namespace.get("__annotations__")
    if not isinstance(ran, Mapping) or not ran:
        return dict(declared)
    own = {}
    for key, annotation in ran.items():
        shown = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", None)
        default, file_annotation = declared.get(key, (..., None))
        own[key] = (default, shown or file_annotation)
    return own


def move_to_project_folder() -> Path | None:
    """A kernel that runs kdkit's own notebooks in their folder (JupyterLab's kernels start in the
    notebook's folder, nbval's too) moves to the checkout's root, where ``kdkit train`` and the README's
    papermill commands run: a relative ``run_dir``, spec file or teacher checkpoint then means the
    same in a notebook as on the command line (``runs/x``, not ``notebooks/runs/x``). Returns the
    folder it moved to, or None when the kernel is elsewhere (papermill from the root, a copy).
    :func:`check_notebook` does not call it under papermill: a papermill run (``kdkit slurm
    submit-notebook``'s job included) stays in the folder its caller chose, with its job files."""
    try:
        here = Path.cwd().resolve()
    except OSError:
        return None
    if here != NOTEBOOK_DIR.resolve():
        return None
    os.chdir(NOTEBOOK_DIR.parent)
    print(f"working folder: {NOTEBOOK_DIR.parent} (kdkit's checkout: relative paths such as run_dir resolve here, "
          "as for kdkit train)")
    return NOTEBOOK_DIR.parent


def check_teacher_checkpoint(notebook: str | os.PathLike, values: Mapping[str, Any]) -> None:
    """A notebook's ``teacher_checkpoint``, when given, must exist and be a teacher of the notebook's
    ``model`` family: checked in the first cell, before data, the teacher's evaluation or training.

    Raises:
        ValueError, FileNotFoundError: naming the parameters and what the file is.
    """
    given = values.get("teacher_checkpoint")
    if not given or not isinstance(given, str):
        return
    shown, path = Path(notebook).name, Path(given).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{shown} parameter teacher_checkpoint={given!r}: {path.resolve()} does not exist "
                                "(a teacher's best.pt; empty: train a quick teacher here)")
    ck = load_checkpoint(path)
    prov, kind = provenance(ck, path), (ck.get("model_config") or {}).get("kind")
    model = {**notebook_parameters(notebook), **values}.get("model")
    if prov.get("role") != "teacher":
        raise ValueError(f"{shown} parameter teacher_checkpoint={given!r}: a {prov.get('role')} checkpoint ({kind}), "
                         "not a teacher: give a teacher's best.pt, or leave it empty to train a quick teacher here")
    if isinstance(model, str) and kind != model:
        raise ValueError(f"{shown} parameters: teacher_checkpoint={given!r} is a {kind} teacher and model={model!r}; "
                         f"set model={kind!r} to distil it, or give a {model} teacher")
    check_teacher_data(notebook, values, given, prov)


def check_teacher_data(notebook: str | os.PathLike, values: Mapping[str, Any], given: str, prov: Mapping) -> None:
    """The teacher's training data against the notebook's ``dataset`` (and ``synthetic_seed`` for the
    built-in synthetic traffic): the student is distilled on the teacher's ID vocabulary, so a teacher
    of other data failed only after the data had loaded ("different ID vocabularies"), without naming
    the likely cause, another synthetic seed. Checked in the first cell instead.

    Raises:
        ValueError: naming ``teacher_checkpoint``, the parameter that differs and both values.
    """
    shown = Path(notebook).name
    values = {**notebook_parameters(notebook), **values}
    ours, theirs = values.get("dataset"), prov.get("dataset")
    if not isinstance(ours, str) or not isinstance(theirs, str):
        return
    if dataset_name(ours) != dataset_name(theirs):
        raise ValueError(f"{shown} parameters: teacher_checkpoint={given!r} was trained on dataset {theirs!r} and "
                         f"dataset={ours!r}: a student is distilled on its teacher's ID vocabulary; set "
                         f"dataset={theirs!r}, or give a teacher trained on {ours!r}")
    seed, their_seed = values.get("synthetic_seed"), prov.get("synthetic_seed")
    if (dataset_name(ours) == "synthetic" and isinstance(seed, int) and isinstance(their_seed, int)
            and seed != their_seed):
        raise ValueError(f"{shown} parameters: teacher_checkpoint={given!r} was trained on the synthetic traffic of "
                         f"synthetic_seed={their_seed} and synthetic_seed={seed}: each seed simulates other CAN IDs "
                         f"(another vocabulary); set synthetic_seed={their_seed}, or give a teacher trained on seed "
                         f"{seed}")


def check_student_checkpoint(notebook: str | os.PathLike, values: Mapping[str, Any], key: str = "checkpoint") -> str:
    """A notebook's student checkpoint parameter (the benchmark's ``checkpoint``), when given: the file
    must exist and be a student (its train_config's ``type``). Checked in the first cell: it was
    first read in the last section, after the long benchmarks had written their figures, and a
    teacher was measured and titled "student".

    Returns:
        The checkpoint's role for titles (``"student"``; also without a checkpoint: one is trained).

    Raises:
        FileNotFoundError, ValueError: naming the parameter, its value and what the file is.
    """
    given = values.get(key)
    if not given or not isinstance(given, str):
        return "student"
    shown, path = Path(notebook).name, Path(given).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{shown} parameter {key}={given!r}: {path.resolve()} does not exist (a student's "
                                "best.pt; empty: train a 1-epoch student here)")
    ck = load_checkpoint(path)
    role = provenance(ck, path).get("role") or (ck.get("train_config") or {}).get("type")
    if role != "student":
        kind = (ck.get("model_config") or {}).get("kind")
        raise ValueError(f"{shown} parameter {key}={given!r}: a {role} checkpoint ({kind}), not a student: the "
                         "inference benchmark measures a student; give a student's best.pt, or leave it empty to "
                         "train one here")
    return role


def check_gateway_inputs(notebook: str | os.PathLike, values: Mapping[str, Any]) -> None:
    """The gateway notebook's ``recording``, ``model_path``, ``threshold`` and ``bus``, checked in its
    first cell: they failed in the detection cells, after the run record had been written, with
    messages naming a file or ``--threshold`` but not the notebook parameter.

    Raises:
        FileNotFoundError, ValueError: naming the parameter and its value.
    """
    shown = Path(notebook).name
    recording, model_path, bus = values.get("recording"), values.get("model_path"), values.get("bus")
    if isinstance(recording, str) and recording and not bus and not Path(recording).expanduser().is_file():
        raise FileNotFoundError(f"{shown} parameter recording={recording!r}: {Path(recording).expanduser().resolve()} "
                                "is not a file (a recording to replay: .log .asc .blf .trc .csv, .gz too; empty: a "
                                "simulated DoS attack)")
    probability = True  # the quick model trained when model_path is empty is a GAT classifier
    if isinstance(model_path, str) and model_path:
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{shown} parameter model_path={model_path!r}: {path.resolve()} does not exist "
                                    "(an exported student .pt2 or a checkpoint best.pt; empty: train a small GAT here)")
        probability = _scores_probability(path)
    _check_gateway_threshold(shown, values.get("threshold"), probability)
    if isinstance(bus, str) and bus:
        _check_bus(shown, bus)


def _scores_probability(path: Path) -> bool:
    """Whether a checkpoint's or exported package's score is an attack probability (a GAT classifier;
    a package: logits, as its ``.json`` says), as the detector decides it; False when it cannot be
    told here (the detector's own checks then speak)."""
    try:
        if path.suffix == ".pt2":
            return json.loads(path.with_suffix(".json").read_text()).get("output_kind", "logits") == "logits"
        cls = MODEL_CLASSES.get((load_checkpoint(path).get("model_config") or {}).get("kind"))
    except (OSError, ValueError):
        return False
    return getattr(cls, "objective", None) == "classify"


def _check_gateway_threshold(shown: str, threshold: Any, probability: bool) -> None:
    """A given threshold must be a finite number, and within [0, 1] for a model whose score is an
    attack probability (outside it every window or none alarms)."""
    if threshold is None or isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        return  # a wrong type was refused by the parameter check
    if not math.isfinite(threshold):
        raise ValueError(f"{shown} parameter threshold={threshold!r}: must be a finite number (None: the model's own; "
                         "kdkit detect's --threshold)")
    if probability and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"{shown} parameter threshold={threshold!r}: outside [0, 1]: the model's score is an attack "
                         f"probability, so {'no window' if threshold > 1 else 'every window'} would alarm; leave it "
                         "None for the model's own")


def _check_bus(shown: str, bus: str) -> None:
    """``bus`` as INTERFACE:CHANNEL with an interface python-can knows."""
    iface, sep, channel = bus.partition(":")
    if not sep or not iface or not channel:
        raise ValueError(f"{shown} parameter bus={bus!r}: expected INTERFACE:CHANNEL, e.g. socketcan:can0 or "
                         "virtual:demo (empty: replay the recording)")
    known = sorted(getattr(can.interfaces, "VALID_INTERFACES", ()))
    if known and iface not in known:
        raise ValueError(f"{shown} parameter bus={bus!r}: python-can has no interface {iface!r}"
                         f"{closest_hint(iface, known)} (known: {', '.join(known)})")


def in_sample_warning(model: str | os.PathLike, recording: str | os.PathLike, show: bool = True) -> str | None:
    """What ``kdkit evaluate --input`` warns when a recording is one the model was trained (or
    calibrated) on: its recall there is in-sample, not a test (the gateway notebook reported it
    without a word). ``model``: a checkpoint, or an exported ``.pt2`` (its ``.json`` names the
    checkpoint). ``show``: print it (``Warning: ...``), as the notebook's output. None for unseen
    recordings, or when the model's provenance does not list its files."""
    path = Path(model)
    try:
        if path.suffix == ".pt2":
            path = Path(json.loads(path.with_suffix(".json").read_text()).get("checkpoint") or "")
        prov = provenance(load_checkpoint(path), path)
    except (OSError, ValueError):
        return None
    trained, calibrated = in_sample(prov, Path(recording)), None
    if trained:
        text = (f"{recording} is {trained}, a training recording of this model: its windows trained it, so the "
                "detections and recall below are in-sample, not a test; replay a recording it did not see")
    elif (calibrated := calibration_sample(prov, Path(recording))):
        text = (f"{recording} is a recording this model was {calibrated}, so its alarm rate here is the budget "
                "that was fitted, not a measure on unseen traffic; replay another recording of the car")
    else:
        return None
    if show:
        print(f"Warning: {text}", flush=True)
    return text


# the models a notebook builds: (preset size, prefix of its parameters)
_BUILDS = {"teacher": [("teacher", "")], "student": [("student", ""), ("teacher", "teacher_")]}


def check_model_sizes(notebook: str | os.PathLike, values: Mapping[str, Any]) -> None:
    """Sizes checked together, as ``train()`` does (``hidden`` against the preset's ID embedding), so a
    bad pair fails in the first cell (or a sweep's plan) and not after the quick teacher has trained.
    ``notebook``'s file name says which models it builds (kdkit's ``teacher`` and ``student``)."""
    path = Path(notebook)
    if path.stem not in _BUILDS:
        return
    values = {**notebook_parameters(path), **values}  # what is not given is the parameters cell's
    for size, prefix in _BUILDS[path.stem]:
        if prefix and values.get("teacher_checkpoint"):
            continue  # a given teacher is not built here
        if isinstance(values.get("model"), str) and values.get(f"{prefix}hidden") is not None:
            try:
                check_sizes(values["model"], size, values[f"{prefix}hidden"], values.get(f"{prefix}embedding_dim"))
            except ValueError as err:
                why = str(err)
                if f"{prefix}embedding_dim" not in values:  # the notebook has no such parameter: a larger hidden only
                    preset = PRESETS.get(values["model"], {}).get(size, {}).get("embedding_dim")
                    why = (f"the {values['model']} {size} preset's CAN-ID embedding (embedding_dim {preset}) takes "
                           f"part of each node's hidden channels: give {prefix}hidden above {preset}, or None for the "
                           "preset")
                raise ValueError(f"{path.name} parameter {prefix}hidden={values[f'{prefix}hidden']!r}: {why}") from None


PAPERMILL_COMMENT = "# Parameters"
"""The first line of the cell papermill injects (``papermill.translators.PythonTranslator.codify``)."""


def injected_names(namespace: Mapping[str, Any]) -> list[str]:
    """Names assigned by the last parameters cell papermill injected in this kernel, from the kernel's
    input history (IPython's ``In``); ``[]`` outside papermill.

    papermill assigns any ``-p NAME VALUE`` after the notebook's own parameters cell, known or not,
    with only a warning on its own stderr: the kernel sees an unknown name as just another variable.
    The injected cell's source is in the history, so its names can be checked.
    """
    history = namespace.get("In") or namespace.get("_ih") or []
    for source in reversed(list(history)):
        if isinstance(source, str) and source.startswith(PAPERMILL_COMMENT + "\n"):
            try:
                body = ast.parse(source).body
            except SyntaxError:
                return []
            return [t.id for node in body if isinstance(node, ast.Assign) for t in node.targets
                    if isinstance(t, ast.Name)]
    return []
