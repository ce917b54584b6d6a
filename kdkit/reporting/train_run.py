"""A ``kdkit train`` run folder as a report record, so that its HTML report opens with the same
headline table and figures as a notebook run's.

A run folder holds ``summary.json`` (the test metrics per scenario), ``test_scores.npz`` (the
window scores per test scenario) and ``config.json``. :func:`train_run_record` turns it into what
a notebook's ``metrics.json`` and ``scores.npz`` hold:

- the model entry (:func:`kdkit.reporting.records.run_metrics` of the summary) under its role:
  ``teacher``, ``student_kd`` (trained with a teacher) or ``student_alone``;
- for a KD student, the teacher's entry when the teacher checkpoint's run folder (with its
  ``summary.json``) is found and was trained on the same data;
- a student alone of the same architecture and data among the other runs given (``kdkit report``
  of a folder holding both students): the KD gain;
- the scores, with the window labels of the test split they were computed on. The labels are
  not stored in a run folder: they come from the prepared dataset named in ``config.json``
  (the graph cache, built when missing), and are used only when they reproduce every model's
  recorded confusion matrix on every scenario exactly.

Whatever is left out is said in :attr:`TrainRun.notes`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from kdkit.data.datasets import PrepareConfig, file_sha256, prepare
from kdkit.models.thresholds import is_attack
from kdkit.reporting.records import run_metrics

SUMMARY_FILE = "summary.json"
TEST_SCORES_FILE = "test_scores.npz"
TEST_LABELS_FILE = "test_labels.npz"  # the test windows' labels, written beside the scores
CONFIG_FILE = "config.json"
# config.json keys that shape the prepared graphs, as kdkit.workflows.run.prepare_config reads them
PREPARE_KEYS = ("window", "stride", "label_threshold", "val_fraction", "on_bad_rows")
DATA_KEYS = ("dataset", "data_root", "synthetic_seed", *PREPARE_KEYS)


@dataclass
class TrainRun:
    """What the report draws from a ``kdkit train`` run folder.

    Attributes:
        record: model entries as in a student notebook's metrics.json (``teacher``,
            ``student_kd``, ``student_alone``), plus ``model`` and ``dataset``.
        scores: ``{model key or "label": {scenario: array}}`` (as :func:`~kdkit.reporting.records.load_scores`);
            empty without labels.
        main: the record key of the run itself.
        folders: ``{record key: run folder}``.
        notes: what is left out, and why.
    """

    record: dict
    scores: dict
    main: str
    folders: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def is_train_run(folder: str | Path) -> bool:
    """A ``kdkit train`` run folder: it holds ``summary.json`` with test metrics."""
    summary = read_json(Path(folder) / SUMMARY_FILE)
    return bool(summary and (summary.get("test") or {}).get("scenarios"))


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``; None when missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def role_key(summary: Mapping) -> str:
    """The record key of a run: ``teacher``, ``student_kd`` or ``student_alone``."""
    if summary.get("type") == "teacher":
        return "teacher"
    return "student_kd" if summary.get("kd") else "student_alone"


def data_settings(folder: Path, summary: Mapping) -> dict:
    """The dataset and graph settings of a run (config.json; the summary's dataset without one)."""
    cfg = read_json(folder / CONFIG_FILE) or {}
    return {k: cfg.get(k, summary.get(k)) for k in DATA_KEYS}


def teacher_folder(summary: Mapping, folder: Path) -> tuple[Path | None, str]:
    """The run folder of a KD student's teacher (from ``summary["teacher"]["path"]``) and a note
    when it is not found or is not that teacher (another size, or, for runs that recorded the
    teacher file's sha256, another file: a ``saved_models/`` copy replaced by a better teacher
    since). A teacher whose file was replaced is looked for by its hash among the run folders
    beside the student's."""
    info = summary.get("teacher") or {}
    path = info.get("path")
    if not path:
        return None, ""
    want = info.get("sha256")
    ckpt = Path(path)
    candidates = [ckpt]
    run_dir = Path(summary.get("run_dir") or "")
    if not ckpt.is_absolute() and not run_dir.is_absolute() and run_dir.parts:
        # trained from another working directory: the summary's run_dir is relative to it
        here = folder.resolve()
        n = len(run_dir.parts)
        if here.parts[-n:] == run_dir.parts and len(here.parents) >= n:
            candidates.append(here.parents[n - 1] / ckpt)
    candidates.append(folder.resolve().parent / (ckpt.parent.parent.name if ckpt.parent.name == "checkpoints"
                                                  else ckpt.parent.name) / "checkpoints" / ckpt.name)
    for cand in list(candidates):  # a saved_models/ copy: its sidecar names the run it was copied from
        source = _copied_from(cand)
        if source is not None:
            candidates.append(source)
    replaced = None
    for cand in candidates:
        run = cand.parent.parent if cand.parent.name == "checkpoints" else cand.parent
        teacher = read_json(run / SUMMARY_FILE)
        if teacher is None or teacher.get("type") != "teacher":
            continue
        if want and not _holds_checkpoint(run, teacher, want):
            replaced = replaced or run
            continue
        if any(info.get(k) is not None and teacher.get(k) != info[k] for k in ("parameters", "size_bytes")):
            return None, (f"teacher left out: {run} holds a teacher of {teacher.get('parameters')} parameters, "
                          f"this student was distilled from one of {info.get('parameters')} ({path})")
        return run, ""
    if want:
        for run in sorted(p for p in folder.resolve().parent.iterdir() if p.is_dir()):
            teacher = read_json(run / SUMMARY_FILE)
            if teacher is not None and teacher.get("type") == "teacher" and _holds_checkpoint(run, teacher, want):
                return run, ""
    if replaced is not None:
        return None, (f"teacher left out: {path} is no longer the teacher this student was distilled from (the file "
                      f"changed since: now the best checkpoint of {replaced}), and no run folder beside "
                      f"{folder.resolve()} holds the original")
    return None, (f"teacher left out: no run folder with summary.json for its checkpoint {path} "
                  "(only a kdkit train run folder records the teacher's test metrics)")


def _holds_checkpoint(run: Path, summary: Mapping, sha256: str) -> bool:
    """Whether a teacher run folder's best checkpoint is the file with this content hash."""
    best = Path(summary.get("best_checkpoint") or "")
    for ck in (run / "checkpoints" / best.name if best.name else None, run / "checkpoints" / "best.pt"):
        if ck is not None and ck.is_file():
            return file_sha256(ck) == sha256
    return False


def _copied_from(copy: Path) -> Path | None:
    """The run checkpoint a ``saved_models/`` copy was made from, from its sidecar ``<name>.json``
    (``kdkit.workflows.saved_models``) when the sidecar describes this very file (its sha256)."""
    record = read_json(copy.with_suffix(".json")) if copy.suffix != ".json" else None
    if not record or not record.get("checkpoint") or not copy.is_file():
        return None
    if record.get("sha256") != file_sha256(copy):
        return None  # replaced since: the sidecar is another copy's
    source = Path(record["checkpoint"])
    return source if source.is_absolute() else copy.parent.parent / source


def run_seed(folder: Path):
    """The training seed of a run folder (its config.json), None when it does not record one."""
    return (read_json(folder / CONFIG_FILE) or {}).get("seed")


NOT_SETTINGS = ("seed", "run_name", "runs_dir", "teacher", "overwrite", "save_compat", "threads", "num_workers",
                "data_root", "progress")
"""config.json keys that differ between the seeds of one setting (each seed's own teacher, folders, threads)."""


def same_setting(a: Path, b: Path) -> bool:
    """Whether two run folders were trained with one setting but for :data:`NOT_SETTINGS` (their
    config.json; folders without one are not of one setting)."""
    ca, cb = read_json(a / CONFIG_FILE), read_json(b / CONFIG_FILE)
    if not ca or not cb:
        return False
    keys = (set(ca) | set(cb)) - set(NOT_SETTINGS)
    return all(ca.get(k) == cb.get(k) for k in keys)


def same_student(a: Mapping, b: Mapping, a_data: Mapping, b_data: Mapping) -> bool:
    """Two students of one architecture (model, parameters, bytes) on the same data and graphs."""
    return (all(a.get(k) == b.get(k) for k in ("model", "parameters", "size_bytes")) and a_data == b_data
            and set(a["test"]["scenarios"]) == set(b["test"]["scenarios"]))


def train_run_record(folder: str | Path, others: Sequence[str | Path] = (), with_scores: bool = True) -> TrainRun:
    """The record, scores and notes of a ``kdkit train`` run folder (see the module docstring).

    Args:
        folder: the run folder (holding ``summary.json``).
        others: other run folders of the same report; a student alone among them of the same
            architecture and data as a KD student ``folder`` is put beside it.
        with_scores: read the scores for the figures (False: the record and notes only).
    """
    folder = Path(folder)
    summary = read_json(folder / SUMMARY_FILE)
    if summary is None:
        raise FileNotFoundError(f"no readable {SUMMARY_FILE} in {folder}: not a kdkit train run folder")
    data = data_settings(folder, summary)
    main = role_key(summary)
    runs = {main: (folder, summary)}
    notes = []
    if main == "student_kd":
        tdir, note = teacher_folder(summary, folder)
        if tdir is not None:
            teacher = read_json(tdir / SUMMARY_FILE)
            tdata = data_settings(tdir, teacher)
            if tdata != data:
                diff = {k: (tdata[k], data[k]) for k in DATA_KEYS if tdata[k] != data[k]}
                notes.append(f"teacher left out: its run {tdir} was tested on other data or graphs "
                             f"(teacher, student: {diff})")
            else:
                runs["teacher"] = (tdir, teacher)
                notes.append(f"teacher: the run {tdir} (its checkpoint {summary['teacher'].get('path')})")
        elif note:
            notes.append(note)
        seed = run_seed(folder)
        for other in others:
            other = Path(other)
            alone = read_json(other / SUMMARY_FILE)
            # the KD gain is paired per seed: a student alone of another seed would mix the seeds' spread in
            if (alone and other.resolve() != folder.resolve() and role_key(alone) == "student_alone"
                    and run_seed(other) == seed
                    and same_student(summary, alone, data, data_settings(other, alone))):
                runs["student_alone"] = (other, alone)
                notes.append(f"student alone: the run {other} (same model, size, data, graphs and seed)")
                break
    order = [k for k in ("teacher", "student_kd", "student_alone") if k in runs]
    record = {"model": summary.get("model"), "dataset": summary.get("dataset"),
              **{k: run_metrics(runs[k][1]) for k in order}}
    if not with_scores:
        scores, note = {}, ""
    elif (folder / CONFIG_FILE).is_file():
        scores, note = run_scores({k: runs[k] for k in order}, data)
    else:
        scores, note = {}, f"no score figures: no {CONFIG_FILE} in {folder} to rebuild the test labels from"
    if note:
        notes.append(note)
    return TrainRun(record, scores, main, {k: runs[k][0] for k in order}, notes)


def stored_labels(folders: list[Path]) -> dict[str, np.ndarray]:
    """``{scenario: y}`` from the first run folder holding ``test_labels.npz`` (written by runs
    since 2026-12-06; checked against the recorded results like rebuilt labels); {} if none."""
    for folder in folders:
        try:
            with np.load(Path(folder) / TEST_LABELS_FILE) as npz:
                return {k: npz[k] for k in npz.files}
        except (OSError, ValueError):
            continue
    return {}


def split_labels(data: Mapping) -> dict[str, np.ndarray]:
    """``{scenario: y}`` of the test scenarios of the prepared dataset with a run's settings."""
    pcfg = PrepareConfig(**{k: data[k] for k in PREPARE_KEYS if data.get(k) is not None})
    prepared = prepare(data["dataset"], pcfg, data.get("data_root"), synthetic_seed=data.get("synthetic_seed") or 0)
    return {name: prepared.splits[name].y.numpy().astype(np.uint8) for name in prepared.scenarios}


def confusion(y: np.ndarray, score: np.ndarray, threshold: float) -> list[list[int]]:
    """``[[tn, fp], [fn, tp]]`` of ``score >= threshold`` against ``y``."""
    y = np.asarray(y).astype(bool)
    pred = np.asarray(is_attack(np.asarray(score), threshold), dtype=bool)
    return [[int((~y & ~pred).sum()), int((~y & pred).sum())], [int((y & ~pred).sum()), int((y & pred).sum())]]


def run_scores(runs: Mapping[str, tuple[Path, Mapping]], data: Mapping) -> tuple[dict, str]:
    """``({model key or "label": {scenario: array}}, note)``: each run's ``test_scores.npz`` with the
    labels of the test split, checked against every recorded confusion matrix; ``({}, why)``
    when the labels cannot be had or do not match."""
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for key, (folder, _) in runs.items():
        try:
            with np.load(folder / TEST_SCORES_FILE) as npz:
                arrays[key] = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as err:
            return {}, f"no score figures: {folder / TEST_SCORES_FILE} is unreadable ({type(err).__name__}: {err})"
    try:
        labels = stored_labels([folder for folder, _ in runs.values()]) or split_labels(data)
    except Exception as err:  # noqa: BLE001 - any failure to rebuild the split only costs the figures
        return {}, (f"no score figures: the test labels of dataset {data.get('dataset')!r} (config.json) could not "
                    f"be read ({type(err).__name__}: {err})")
    for key, (folder, summary) in runs.items():
        threshold = float(summary.get("threshold", 0.5))
        for name, m in summary["test"]["scenarios"].items():
            score, y = arrays[key].get(name), labels.get(name)
            if score is None or y is None or len(score) != len(y) or confusion(y, score, threshold) != m.get(
                    "confusion_matrix"):
                return {}, (f"no score figures: the test split of dataset {data.get('dataset')!r} prepared now does "
                            f"not reproduce the recorded results of {folder} on {name} (the data changed since "
                            "training?)")
    scenarios = list(dict.fromkeys(name for _, summary in runs.values() for name in summary["test"]["scenarios"]))
    out = {"label": {k: labels[k] for k in scenarios}}
    out.update({key: {k: arrays[key][k] for k in scenarios if k in arrays[key]} for key in runs})
    return out, ""
