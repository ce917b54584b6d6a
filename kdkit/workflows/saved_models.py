"""``saved_models/``: the migration guide's checkpoint copies, beside the runs folder.

A finished run copies its ``best.pt`` there (:func:`save_compat_copy`) only when it is at least
as good as the copy already there, judged by the best validation metric recorded with each
copy in a sidecar ``<name>.json`` (:func:`compat_record`); otherwise the copy is kept and the
run says so.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

from kdkit.config import TrainConfig
from kdkit.data.datasets import dataset_name
from kdkit.models.registry import MODEL_CLASSES
from kdkit.training.checkpoint import load_checkpoint
from kdkit.workflows.run_dir import write_json

# saved_models/ names: the migration guide's for teachers and distilled students; a student trained
# without a teacher gets its own name, so it never replaces (or is mistaken for) a distilled one.
COMPAT_NAMES = {("gat", "teacher"): "best_teacher_model_{d}.pth", ("vgae", "teacher"): "autoencoder_{d}.pth",
                ("gat", "student"): "best_student_model_{d}.pth", ("vgae", "student"): "student_autoencoder_{d}.pth",
                ("gat", "student_nokd"): "best_student_nokd_model_{d}.pth",
                ("vgae", "student_nokd"): "student_nokd_autoencoder_{d}.pth"}


def compat_path(cfg: TrainConfig) -> Path:
    """``saved_models/<guide's name>`` beside the runs folder (``runs`` -> ``./saved_models``).

    A distilled student, a student trained alone and a teacher have different names; families
    without a guide name get ``best_<family>_<role>_model_<dataset>.pth``.
    """
    role = cfg.type if cfg.type != "student" else ("student" if cfg.teacher else "student_nokd")
    name = COMPAT_NAMES.get((cfg.model, role), f"best_{cfg.model}_{role}_model_{{d}}.pth").format(d=dataset_name(cfg.dataset))
    return Path(cfg.runs_dir).parent / "saved_models" / name


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def compat_record(copy: Path) -> dict | None:
    """What a ``saved_models`` copy is: its sidecar ``.json`` when it describes this very file, else
    inferred from the checkpoint's own history (value None when neither says); None without a copy."""
    if not copy.is_file():
        return None
    sidecar = copy.with_suffix(".json")
    try:
        record = json.loads(sidecar.read_text())
        if record.get("sha256") == _sha256(copy):
            return record
    except (OSError, ValueError):
        pass
    try:
        ck = load_checkpoint(copy)
    except (OSError, ValueError):
        return {"metric": None, "value": None, "run_dir": "?"}
    kind = (ck.get("model_config") or {}).get("kind")
    classify = getattr(MODEL_CLASSES.get(kind), "objective", "classify") in ("classify", "fuse")
    metric, mode = ("val_f1", "max") if classify else ("val_loss", "min")
    values = [r[metric] for r in ck.get("history") or [] if isinstance(r, dict) and r.get(metric) is not None]
    tc = ck.get("train_config") or {}
    run_dir = str(Path(tc["runs_dir"]) / tc["run_name"]) if tc.get("runs_dir") and tc.get("run_name") else "?"
    return {"metric": metric, "mode": mode, "value": (max if mode == "max" else min)(values) if values else None,
            "run_dir": run_dir, "inferred": True}


def _shown(path: Path) -> str:
    """``path`` as a user can pass it on from here (``--teacher``): relative to the working folder when
    it lies under it, else absolute (``saved_models/x.pth`` named a folder beside another runs folder)."""
    full = path.resolve()
    try:
        return str(full.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(full)


def save_compat_copy(best_path: Path, target: Path, record: dict) -> tuple[bool, str]:
    """Copy a finished run's best checkpoint to ``target`` unless the copy there is better.

    The copy there is replaced when this run's best validation metric is at least as good
    (``record``: metric, mode max|min, value, run_dir); else it is kept and the note says so. A
    copy ranked by a metric the record ``supersedes`` (a fusion copy ranked by its classification
    head's ``val_f1`` before ``val_fused_f1``) is replaced.
    A sidecar ``<name>.json`` records the metric, run and the copy's sha256. Copies are
    atomic, and concurrent runs take turns (a lock on ``saved_models/.lock``).

    Returns:
        (copied, a one-line note for the user).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    shown = _shown(target)
    value, metric = record["value"], record["metric"]
    with open(target.parent / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # short: the comparison and two renames
        old = compat_record(target)
        superseded = old is not None and old.get("metric") in record.get("supersedes", ())
        if old is not None and not superseded:
            known = old.get("metric") == metric and _finite(old.get("value"))
            better = known and _finite(value) and (value >= old["value"] if record["mode"] == "max"
                                                   else value <= old["value"])
            if not better:
                source = f"run {old.get('run_dir')}"
                if old.get("run_dir") == record["run_dir"]:
                    source = f"the earlier run in {old.get('run_dir')}, which this run overwrote"
                if not known:
                    why = f"it records no {metric} to compare with; delete it to let a run replace it"
                elif not _finite(value):
                    why = f"{metric} {old['value']:.4g} from {source}; this run has no {metric} to compare"
                else:
                    why = f"{metric} {old['value']:.4g} from {source}) over this run's {value:.4g}"
                return False, (f"{shown} kept ({why}{')' if not known or not _finite(value) else ''}; the run's own "
                               f"best.pt is in {Path(record['checkpoint']).parent.parent}")
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        try:
            shutil.copyfile(best_path, tmp)
            digest = _sha256(tmp)
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
        write_json(target.with_suffix(".json"),
                    {**record, "sha256": digest, "saved_at": time.strftime("%Y-%m-%d %H:%M:%S")})
    if old is None:
        return True, f"{shown} written ({metric} {value:.4g})"
    if superseded:
        return True, (f"{shown} replaced ({metric} {value:.4g}; the copy there, from run {old.get('run_dir')}, was "
                      f"ranked by {old['metric']}, which {metric} supersedes)")
    better = "<=" if record.get("mode") == "min" else ">="  # a loss is better when lower
    return True, f"{shown} replaced ({metric} {value:.4g} {better} {old['value']:.4g} from run {old.get('run_dir')})"
