"""Executing the notebooks with papermill (kernel ``kdkit``) and checking notebook parameters:
names and types against the notebook's ``parameters`` cell, run keys against the run schema
(:class:`kdkit.config.TrainConfig`)."""
from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping

from kdkit.config import TrainConfig, schema, validate_overrides

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


def _check_annotated(notebook, key: str, value: Any, default: Any, annotation: str | None) -> None:
    """A notebook-only parameter against its annotation (``int``, ``str | None``, ...) or its default's type."""
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


def check_parameters(notebook, parameters: dict, cls: type = TrainConfig) -> dict:
    """Checks ``parameters`` against the notebook's parameters cell and the run schema.

    A parameter named like a run-schema field (``epochs``, ``kd_alpha``, ...; also with a
    ``teacher_`` prefix, the notebooks' quick-teacher settings) is checked as that field:
    type, choices, range, ``None`` only where the field allows it. The others are checked
    against their annotation in the parameters cell (or the default's type).

    Raises:
        ValueError: an unknown name, a value that is not JSON data, or a bad value, naming
            the notebook, the parameter and what is allowed.
    """
    declared = _declared(notebook)
    specs = {s.name: s for s in schema(cls)}
    for key, value in parameters.items():
        if key not in declared:
            raise ValueError(f"parameter {key!r} is not in {notebook}'s parameters cell "
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
                raise ValueError(f"{notebook} parameter {key}={value!r}: {err}") from None
        else:
            _check_annotated(notebook, key, value, default, annotation)
    return parameters


def check_notebook(name: str, namespace: Mapping[str, Any]) -> dict:
    """The first code cell of kdkit's notebooks: the parameters cell's values (as papermill, the
    SLURM job or the user left them in ``namespace``) checked with :func:`check_parameters`.

    Returns:
        The parameters, by name.
    """
    path = NOTEBOOK_DIR / f"{name}.ipynb"
    values = {k: namespace[k] for k in _declared(path) if k in namespace}
    return check_parameters(path, values)
