"""One run end to end: the functions every front end calls (CLI, notebooks, widgets, SLURM jobs).

    from kdkit.config import make_config
    from kdkit.workflows import train, evaluate_checkpoint
    summary = train(make_config(model="gat", type="teacher", dataset="synthetic", epochs=3))
    evaluate_checkpoint(summary["best_checkpoint"], "synthetic")

``train`` prepares the graphs, checks that every split has windows, builds the model (and
loads and checks the teacher for a KD student), fits it with the Fabric or legacy trainer,
picks the VGAE threshold on validation data, evaluates every test scenario and writes
``runs/<run-name>/`` (config, metrics, checkpoints, ``summary.json``, ``metrics.json``) plus a
copy in ``saved_models/`` (beside the runs folder) unless a better one is there.

A run owns its folder: it holds an exclusive lock on ``<run>/.lock`` for its whole life (a
second process with the same run name fails at once), and a folder that already holds a run
is refused unless ``overwrite`` (its previous outputs are removed) or ``resume`` from a
checkpoint of that folder.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from kdkit.config import TrainConfig
from kdkit.data.datasets import PrepareConfig, PreparedDataset, prepare
from kdkit.data.graphs import EDGE_FEATURES, GRAPH_FORMAT_VERSION, NODE_FEATURES, GraphSet
from kdkit.data.readers import read_messages
from kdkit.models.registry import MODEL_CLASSES, build_model, count_parameters, model_size_bytes
from kdkit.models.thresholds import choose_threshold
from kdkit.reporting.metrics import evaluate_model, predict_scores
from kdkit.training.checkpoint import (
    GRAPH_SETTINGS,
    atomic_torch_save,
    load_checkpoint,
    make_provenance,
    model_from_checkpoint,
    provenance,
    vocab_hash,
)
from kdkit.training.legacy import legacy_fit
from kdkit.training.memory import phase_peak, release_memory
from kdkit.training.task import Task
from kdkit.training.trainer import FabricTrainer, check_resumable

log = logging.getLogger(__name__)

# saved_models/ names: the migration guide's for teachers and distilled students; a student trained
# without a teacher gets its own name, so it never replaces (or is mistaken for) a distilled one.
COMPAT_NAMES = {("gat", "teacher"): "best_teacher_model_{d}.pth", ("vgae", "teacher"): "autoencoder_{d}.pth",
                ("gat", "student"): "best_student_model_{d}.pth", ("vgae", "student"): "student_autoencoder_{d}.pth",
                ("gat", "student_nokd"): "best_student_nokd_model_{d}.pth",
                ("vgae", "student_nokd"): "student_nokd_autoencoder_{d}.pth"}

# What ``train`` writes into a run folder; ``overwrite`` removes these and nothing else (a SLURM
# job's script and logs in the same folder stay).
RUN_OUTPUTS = ("config.json", "summary.json", "metrics.json", "test_scores.npz", "fabric_training.log", "report.html",
               "evaluation_*.json", "checkpoints", "logs", "tb")


class RunDirError(ValueError):
    """A run folder that is in use by another process, or holds a run this one would replace."""


def prepare_config(cfg: TrainConfig) -> PrepareConfig:
    return PrepareConfig(window=cfg.window, stride=cfg.stride, label_threshold=cfg.label_threshold,
                         val_fraction=cfg.val_fraction, seed=0, on_bad_rows=cfg.on_bad_rows)


def checkpoint_data(ckpt: dict, dataset: str | None = None, data_root: str | None = None,
                    synthetic_seed: int = 0, on_bad_rows: str | None = None) -> PreparedDataset:
    """The prepared dataset with the graph settings a checkpoint was trained with (window,
    stride, labels, split, bad-row handling unless ``on_bad_rows`` is given); ``dataset``
    defaults to the checkpoint's training dataset."""
    tc = ckpt.get("train_config", {})
    window = int(tc.get("window", 100))
    pcfg = PrepareConfig(window=window, stride=int(tc.get("stride", window)), label_threshold=tc.get("label_threshold", 0.0),
                         val_fraction=tc.get("val_fraction", 0.2),
                         on_bad_rows=on_bad_rows or tc.get("on_bad_rows", "error"))
    return prepare(dataset or tc.get("dataset", "synthetic"), pcfg, data_root or tc.get("data_root"),
                   synthetic_seed=synthetic_seed)


def load_data(cfg: TrainConfig, progress: bool = False) -> PreparedDataset:
    return prepare(cfg.dataset, prepare_config(cfg), cfg.data_root, progress=progress, synthetic_seed=cfg.synthetic_seed)


def model_overrides(cfg: TrainConfig) -> dict:
    """TrainConfig model keys -> constructor options of the model class (the class decides)."""
    return MODEL_CLASSES[cfg.model].options_from_run(cfg)


def check_compatible(ckpt: dict, data: PreparedDataset, what: str = "teacher") -> None:
    """A checkpoint must have been trained on the same ID vocabulary, feature layout and graph format."""
    recorded = (ckpt.get("provenance") or {}).get("graph", {}).get("graph_format")
    if (ckpt.get("node_features") != list(NODE_FEATURES) or ckpt.get("edge_features") != list(EDGE_FEATURES)
            or recorded not in (None, GRAPH_FORMAT_VERSION)):
        raise ValueError(f"{what} checkpoint was built with another feature layout "
                         f"(graph format {recorded or 'unknown'} vs {GRAPH_FORMAT_VERSION}); retrain it")
    vocab = ckpt.get("vocab")
    if vocab != data.vocab.to_list():
        theirs = set(vocab or [])
        ours = set(data.vocab.to_list())
        raise ValueError(f"{what} checkpoint's ID vocabulary ({len(theirs)} IDs) does not match dataset {data.name!r} "
                         f"({len(ours)} IDs; {len(theirs ^ ours)} differ): train the {what} on the same dataset and settings")


def vgae_train_sets(data: PreparedDataset) -> tuple[GraphSet, GraphSet]:
    """The VGAE learns normal traffic: attack windows are removed from its train/val sets."""
    tr, va = data.splits["train"], data.splits["val"]
    return tr.subset(np.flatnonzero(tr.y.numpy() == 0)), va.subset(np.flatnonzero(va.y.numpy() == 0))


def class_weights(gs: GraphSet) -> torch.Tensor:
    counts = np.bincount(gs.y.numpy(), minlength=2).astype(np.float64)
    counts = np.maximum(counts, 1.0)
    w = counts.sum() / (2.0 * counts)
    return torch.tensor(w, dtype=torch.float32)


def choose_vgae_threshold(model, val: GraphSet, rule: str = "quantile", quantile: float = 0.99) -> tuple[float, str]:
    """The VGAE's anomaly threshold, from validation data only.

    ``quantile`` (default): that quantile of the attack-free validation windows' scores: a
    false-positive budget that does not tune the detector to the known attacks, so subtle
    unknown attacks (malfunction) stay detectable. ``youden``: maximise Youden's J on the
    labelled validation windows (falls back to the quantile when they hold one class).
    """

    scores = predict_scores(model, val)
    y = val.y.numpy()
    if rule == "youden" and len(np.unique(y)) == 2:
        return choose_threshold(scores, y), "youden_j_on_labelled_validation"
    return choose_threshold(scores[y == 0], None, quantile), f"q{quantile:g}_of_attack_free_validation"


def build_student_or_teacher(cfg: TrainConfig, data: PreparedDataset):

    torch.manual_seed(cfg.seed)
    return build_model(cfg.model, cfg.type, len(NODE_FEATURES), len(EDGE_FEATURES), len(data.vocab), **model_overrides(cfg))


# ----------------------------------------------------------------------------- windows per split
def _longest_recording(gs: GraphSet, on_bad_rows: str = "error") -> tuple[int, str] | None:
    """(messages, file name) of the longest recording behind a split; None when unreadable."""
    best = None
    for f in gs.files:
        try:
            n = len(read_messages(f, on_bad_rows=on_bad_rows))  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - only a detail of an error message
            continue
        if best is None or n > best[0]:
            best = (n, Path(f).name)
    return best


def _no_windows_message(data: PreparedDataset, split: str) -> str:
    """Why the train or val split of ``data`` holds no windows, and what to change."""
    c = data.config
    longest = _longest_recording(data.splits[split], c.on_bad_rows)
    where = f"the longest training recording ({longest[0]:,} messages, {longest[1]})" if longest else \
        "every training recording"
    if longest and longest[0] < c.window:
        return (f"window {c.window:,} > {where}: no {'training' if split == 'train' else 'validation'} windows in "
                f"dataset {data.name!r}; lower --window (below {longest[0]:,})")
    example = f" (e.g. to {max(longest[0] // 10, 2):,} or less)" if longest else ""
    if split == "train":
        return (f"no training windows in dataset {data.name!r}: with window {c.window:,} and stride {c.stride:,}, "
                f"every window of {where} overlaps the validation block held out of it "
                f"(val_fraction {c.val_fraction:g}); lower --window{example}")
    if c.val_fraction == 0:
        return (f"no validation windows in dataset {data.name!r}: val_fraction 0 holds none out of the training "
                "recordings, and the best checkpoint and early stopping are chosen on them; set --val-fraction "
                "(e.g. 0.2)")
    return (f"no validation windows in dataset {data.name!r}: val_fraction {c.val_fraction:g} of the windows of "
            f"{where} (window {c.window:,}, stride {c.stride:,}) rounds to none; raise --val-fraction or lower "
            f"--window{example}")


def empty_scenarios(data: PreparedDataset, window_hint: str = "lower --window to evaluate it") -> dict[str, str]:
    """The test scenarios of ``data`` without a single window, each with the reason (logged as a warning).

    Raises:
        ValueError: when every scenario is empty (nothing to evaluate).
    """
    skipped = {}
    for name in data.scenarios:
        if len(data.splits[name]):
            continue
        gs = data.splits[name]
        longest = _longest_recording(gs, data.config.on_bad_rows)
        held = f"at most {longest[0]:,} messages" if longest else "too few messages"
        skipped[name] = (f"no windows: its {len(gs.files)} recording(s) hold {held}, fewer than the window of "
                         f"{data.config.window:,}; {window_hint}")
    if data.scenarios and len(skipped) == len(data.scenarios):
        raise ValueError(f"dataset {data.name!r} has no test windows in any scenario (window {data.config.window:,}): "
                         + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    for name, why in skipped.items():
        log.warning("test scenario %s skipped: %s", name, why)
    return skipped


def check_windows(data: PreparedDataset, objective: str = "classify") -> dict[str, str]:
    """Every split a run needs holds windows; called before a model is built.

    Args:
        data: the prepared dataset.
        objective: the model family's (``"reconstruct"``: train/val need attack-free windows).

    Returns:
        The empty test scenarios with their reason (they are skipped, listed in the summary).

    Raises:
        ValueError: no training or validation windows (or no attack-free ones for a
            reconstruction model), or no test windows at all; naming the split and what to change.
    """
    for split in ("train", "val"):
        if len(data.splits[split]) == 0:
            raise ValueError(_no_windows_message(data, split))
    if objective == "reconstruct":
        for split, name in (("train", "training"), ("val", "validation")):
            gs = data.splits[split]
            if not bool((gs.y == 0).any()):
                raise ValueError(f"no attack-free {name} windows in dataset {data.name!r}: the model learns normal "
                                 f"traffic and each of the {len(gs):,} {name} windows holds attack messages above "
                                 f"label_threshold {data.config.label_threshold:g}; lower --window or raise "
                                 "--label-threshold")
    return empty_scenarios(data)


# ----------------------------------------------------------------------------- run folder
def launch_rank(cfg: TrainConfig) -> int:
    """This process's global rank as its launcher set it, known before Fabric starts.

    0 for a single-process run. Under DDP the workers that Fabric's launcher, torchrun or
    ``srun`` start carry ``LOCAL_RANK`` / ``RANK`` / ``NODE_RANK`` / ``SLURM_PROCID``; a
    process where any of them is non-zero is not rank zero and shares rank zero's run folder.
    """
    if cfg.devices * cfg.num_nodes <= 1:
        return 0
    for var in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"):
        try:
            rank = int(os.environ.get(var, "0") or 0)
        except ValueError:
            continue
        if rank:
            return rank
    return 0


class RunLock:
    """An exclusive, non-blocking ``fcntl.flock`` on ``<run_dir>/.lock`` (the holder's pid is written in it).

    The kernel releases it when the process ends, even on ``kill -9``: a stale ``.lock`` file
    never blocks a later run. Usable as a context manager.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / ".lock"
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock or raise :class:`RunDirError` naming the holder's pid."""
        for attempt in range(3):  # the folder may vanish between mkdir and open (a failed run removing it)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            for _ in range(20):  # the holder writes its pid right after taking the lock
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                if holder:
                    break
                time.sleep(0.05)
            os.close(fd)
            raise RunDirError(f"run dir {self.run_dir} is in use by another kdkit process (pid {holder or 'unknown'}); "
                              "wait for it to finish, or choose another --run-name") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def existing_run(run_dir: Path) -> list[str]:
    """What in ``run_dir`` shows a run was (or is being) trained there: config.json, summary.json, checkpoints."""
    found = [name for name in ("config.json", "summary.json") if (run_dir / name).is_file()]
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")) if (run_dir / "checkpoints").is_dir() else []
    return found + [f"checkpoints/{name}" for name in ckpts]


def _inside(path: str | Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


def check_run_dir(run_dir: Path, cfg: TrainConfig, resume: str | Path | None) -> None:
    """Refuse to train into a folder that holds a run, unless ``overwrite`` or resuming from that folder.

    Raises:
        RunDirError: naming the folder, what it holds and the three ways on.
    """
    held = existing_run(run_dir)
    if not held or cfg.overwrite or (resume and _inside(resume, run_dir)):
        return
    last = run_dir / "checkpoints" / "last.pt"
    resume_hint = f", --resume {last} to continue it" if last.is_file() else ""
    raise RunDirError(f"run dir {run_dir} already holds a run ({', '.join(held)}); training again would replace it. "
                      f"Pass --overwrite to replace it{resume_hint}, or choose another --run-name")


def clear_run_outputs(run_dir: Path) -> list[str]:
    """Remove what a previous ``train`` wrote into ``run_dir`` (:data:`RUN_OUTPUTS`); returns the names removed."""
    removed = []
    for pattern in RUN_OUTPUTS:
        for path in sorted(run_dir.glob(pattern)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path.name)
    return removed


def _write_json(path: Path, obj) -> None:
    """Write JSON atomically (a temp file renamed over the target)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(obj, indent=2, default=float))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- checks of given checkpoints
def check_teacher(tck: dict, cfg: TrainConfig, data: PreparedDataset, path: str | Path) -> None:
    """``--teacher`` must be a teacher checkpoint of the student's family, vocabulary, feature layout and window.

    Raises:
        ValueError: naming the checkpoint, what it is and what the student needs.
    """
    prov = provenance(tck, path)
    if prov.get("role") != "teacher":
        tc = tck.get("train_config") or {}
        raise ValueError(f"--teacher {path} is a {prov.get('role')} checkpoint (run {tc.get('run_name') or '?'}), "
                         f"not a teacher: pass a teacher's best.pt (kdkit train --type teacher), e.g. "
                         f"{Path(cfg.runs_dir) / f'{cfg.dataset}_{cfg.model}_teacher' / 'checkpoints' / 'best.pt'}")
    kind = (tck.get("model_config") or {}).get("kind")
    if kind != cfg.model:
        raise ValueError(f"--teacher {path} is a {kind} model, the student is {cfg.model}: distil from a {cfg.model} "
                         "teacher")
    check_compatible(tck, data, "teacher")
    window = prov.get("graph", {}).get("window")
    if window is not None and window != cfg.window:
        raise ValueError(f"--teacher {path} was trained on windows of {window} messages, this student on {cfg.window}: "
                         f"distil with --window {window}, or train a teacher with --window {cfg.window}")


def check_resume(ck: dict, cfg: TrainConfig, data: PreparedDataset, path: str | Path) -> None:
    """``--resume`` must continue a run of the same role, family, dataset, vocabulary and graph settings.

    Raises:
        ValueError: listing every setting that differs (checkpoint vs run).
    """
    prov = provenance(ck, path)
    kd = cfg.type == "student" and bool(cfg.teacher)
    diffs = []
    for what, theirs, ours in (("role", prov.get("role"), cfg.type), ("distilled", bool(prov.get("kd")), kd),
                               ("model family", prov.get("family"), cfg.model),
                               ("dataset", prov.get("dataset"), cfg.dataset)):
        if theirs != ours:
            diffs.append(f"{what} {theirs} vs {ours}")
    if cfg.dataset == "synthetic" and prov.get("synthetic_seed") not in (None, cfg.synthetic_seed):
        diffs.append(f"synthetic_seed {prov.get('synthetic_seed')} vs {cfg.synthetic_seed}")
    if prov.get("vocab_hash") != vocab_hash(data.vocab.to_list()):
        diffs.append(f"ID vocabulary {prov.get('vocab_size')} IDs (hash {prov.get('vocab_hash')}) vs "
                     f"{len(data.vocab)} IDs (hash {vocab_hash(data.vocab.to_list())})")
    graph = prov.get("graph") or {}
    for key in GRAPH_SETTINGS:
        if graph.get(key) is not None and graph.get(key) != getattr(cfg, key):
            diffs.append(f"{key} {graph.get(key)} vs {getattr(cfg, key)}")
    if graph.get("graph_format") not in (None, GRAPH_FORMAT_VERSION):
        diffs.append(f"graph format {graph.get('graph_format')} vs {GRAPH_FORMAT_VERSION}")
    if diffs:
        raise ValueError(f"--resume {path} comes from another run than this one ({'; '.join(diffs)}; checkpoint vs "
                         "run): resume with the interrupted run's settings (its config.json), or start a new run")


# ----------------------------------------------------------------------------- train
def train(cfg: TrainConfig, resume: str | Path | None = None, progress: bool = True,
          on_epoch_end: Callable[[dict], None] | None = None, data: PreparedDataset | None = None,
          should_stop: Callable[[], bool] | None = None) -> dict:
    """Train one model end to end and evaluate it; returns the run summary (also in summary.json).

    The run holds the lock of ``runs_dir/<run name>`` from start to end (rank zero under DDP).

    Raises:
        RunDirError: the folder is in use by another process, or holds a run and neither
            ``cfg.overwrite`` nor a ``resume`` checkpoint from that folder was given.
        ValueError: a split without windows, an unsuitable teacher or resume checkpoint (all
            before a model is built or trained).
    """
    if resume and cfg.trainer == "legacy":
        raise ValueError("--resume needs the fabric trainer (the legacy baseline cannot continue a run); drop "
                         "--trainer legacy")
    run_dir = Path(cfg.runs_dir) / cfg.resolved_run_name
    owner = launch_rank(cfg) == 0  # DDP workers share rank zero's folder and lock
    created = not run_dir.exists()
    lock = RunLock(run_dir).acquire() if owner else None
    finished = False
    try:
        if owner:
            check_run_dir(run_dir, cfg, resume)
        summary = _train(cfg, run_dir, owner, resume, progress, on_epoch_end, data, should_stop)
        finished = True
        return summary
    finally:
        if lock is not None:
            lock.release()
            if not finished and created and {p.name for p in run_dir.iterdir()} <= {".lock"}:
                lock.path.unlink(missing_ok=True)  # a run refused before it wrote anything leaves no folder
                run_dir.rmdir()


def _train(cfg: TrainConfig, run_dir: Path, owner: bool, resume, progress, on_epoch_end, data, should_stop) -> dict:
    data = data or load_data(cfg, progress=progress)
    skipped = check_windows(data, MODEL_CLASSES[cfg.model].objective)
    kd = cfg.type == "student" and bool(cfg.teacher)
    tck = None
    if kd:
        tck = load_checkpoint(cfg.teacher)
        check_teacher(tck, cfg, data, cfg.teacher)
    rck = None
    if resume:
        rck = load_checkpoint(resume)
        check_resume(rck, cfg, data, resume)
    model = build_student_or_teacher(cfg, data)
    teacher, teacher_info = None, None
    if tck is not None:
        teacher = model_from_checkpoint(tck, cfg.teacher).eval()
        teacher_info = {"path": str(cfg.teacher), "parameters": count_parameters(teacher),
                        "size_bytes": model_size_bytes(teacher)}
        for p in teacher.parameters():
            p.requires_grad_(False)
    classify = model.objective == "classify"  # a reconstruction model learns attack-free windows only
    train_set, val_set = (data.splits["train"], data.splits["val"]) if classify else vgae_train_sets(data)
    task = Task(model, cfg, teacher, class_weights(train_set) if cfg.class_weighting and classify else None)
    metric, mode = task.monitor
    if rck is not None:
        check_resumable(rck, task, resume)
        del rck
    vocab = data.vocab.to_list()
    extra = {"vocab": vocab, "node_features": list(NODE_FEATURES), "edge_features": list(EDGE_FEATURES),
             "threshold": 0.5, "kdkit_version": "0.1.0",
             "provenance": make_provenance(cfg.type, cfg.model, cfg.dataset, vocab, cfg.to_dict(), kd,
                                           str(cfg.teacher) if kd else None)}
    if owner:  # every check passed: now the folder is this run's
        if cfg.overwrite and not (resume and _inside(resume, run_dir)):
            removed = clear_run_outputs(run_dir)
            if removed:
                log.warning("--overwrite: removed the previous run's %s from %s", ", ".join(removed), run_dir)
        _write_json(run_dir / "config.json", cfg.to_dict())

    t0 = time.perf_counter()
    memory: dict = {}  # peak memory per phase; each phase ends by releasing memory (kdkit.training.memory.phase_peak)
    with phase_peak("train", memory):
        if cfg.trainer == "legacy":

            fit = legacy_fit(task, cfg, train_set, val_set, run_dir, extra)
            rank = 0
            precision = "32-true"
        else:
            trainer = FabricTrainer(cfg, run_dir, progress=progress, on_epoch_end=on_epoch_end, should_stop=should_stop)
            fit = trainer.fit(task, train_set, val_set, resume=resume, checkpoint_extra=extra)
            rank = trainer.fabric.global_rank
            precision = trainer.precision
    train_seconds = time.perf_counter() - t0
    if rank != 0:  # evaluation and reports happen once, on rank zero
        return {"rank": rank}
    if teacher is not None:  # memory safety: the teacher is not needed any more
        teacher.to("cpu")
        del task
        release_memory()

    best = load_checkpoint(fit.best_path)
    model = model_from_checkpoint(best, fit.best_path).eval()
    threshold, how = 0.5, "attack_probability_at_least_0.5"
    if model.objective == "reconstruct":
        threshold, how = choose_vgae_threshold(model, data.splits["val"], cfg.threshold_rule, cfg.threshold_quantile)
        best["threshold"] = threshold
        atomic_torch_save(best, fit.best_path)
    scenarios = [s for s in data.scenarios if s not in skipped]
    with phase_peak("evaluate", memory):
        results = evaluate_model(model, data.splits, threshold, scenarios=scenarios, progress=None if progress else False)
    summary = {
        "run_name": cfg.resolved_run_name, "run_dir": str(run_dir), "model": cfg.model, "type": cfg.type,
        "dataset": cfg.dataset, "kd": teacher is not None, "teacher": teacher_info, "trainer": cfg.trainer,
        "precision": precision, "parameters": count_parameters(model), "size_bytes": model_size_bytes(model),
        "epochs_run": fit.epochs_run, "train_seconds": round(train_seconds, 2), "best_val_metric": fit.best_metric,
        "val_metric": metric, "threshold": threshold, "threshold_rule": how, "best_checkpoint": str(fit.best_path),
        "last_checkpoint": str(fit.last_path), "resumed_from": fit.resumed_from,
        "resumed_at_epoch": fit.resumed_at_epoch, "history": fit.history,
        "oom_events": fit.oom_events, "test": {k: v for k, v in results.items() if k != "scores"},
        "skipped_scenarios": skipped, "memory": memory,
    }
    write_run_outputs(run_dir, cfg, summary, results)
    if cfg.save_compat:  # a finished run only: its outputs are written
        record = {"metric": metric, "mode": mode, "value": fit.best_metric, "run_dir": str(run_dir),
                  "run_name": cfg.resolved_run_name, "checkpoint": str(fit.best_path)}
        copied, note = save_compat_copy(fit.best_path, compat_path(cfg), record)
        summary["compat_copy"] = str(compat_path(cfg)) if copied else None
        summary["compat_note"] = note
        (log.info if copied else log.warning)(note)
        _write_json(run_dir / "summary.json", summary)
    return summary


def write_run_outputs(run_dir: Path, cfg: TrainConfig, summary: dict, results: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_dir / "config.json", cfg.to_dict())
    _write_json(run_dir / "summary.json", summary)
    np.savez(run_dir / "test_scores.npz", **{k: v for k, v in results["scores"].items()})
    metrics = {"f1": {k: v["f1"] for k, v in results["scenarios"].items()}, "overall": results["overall"],
               "parameters": summary["parameters"], "train_seconds": summary["train_seconds"],
               "skipped_scenarios": summary.get("skipped_scenarios", {})}
    _write_json(run_dir / "metrics.json", metrics)


# ----------------------------------------------------------------------------- saved_models/
def compat_path(cfg: TrainConfig) -> Path:
    """``saved_models/<guide's name>`` beside the runs folder (``runs`` -> ``./saved_models``).

    A distilled student, a student trained alone and a teacher have different names; families
    without a guide name get ``best_<family>_<role>_model_<dataset>.pth``.
    """
    role = cfg.type if cfg.type != "student" else ("student" if cfg.teacher else "student_nokd")
    name = COMPAT_NAMES.get((cfg.model, role), f"best_{cfg.model}_{role}_model_{{d}}.pth").format(d=cfg.dataset)
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
    classify = getattr(MODEL_CLASSES.get(kind), "objective", "classify") == "classify"
    metric, mode = ("val_f1", "max") if classify else ("val_loss", "min")
    values = [r[metric] for r in ck.get("history") or [] if isinstance(r, dict) and r.get(metric) is not None]
    tc = ck.get("train_config") or {}
    run_dir = str(Path(tc["runs_dir"]) / tc["run_name"]) if tc.get("runs_dir") and tc.get("run_name") else "?"
    return {"metric": metric, "mode": mode, "value": (max if mode == "max" else min)(values) if values else None,
            "run_dir": run_dir, "inferred": True}


def save_compat_copy(best_path: Path, target: Path, record: dict) -> tuple[bool, str]:
    """Copy a finished run's best checkpoint to ``target`` unless the copy there is better.

    The copy there is replaced when this run's best validation metric is at least as good
    (``record``: metric, mode max|min, value, run_dir); else it is kept and the note says so.
    A sidecar ``<name>.json`` records the metric, run and the copy's sha256. Copies are
    atomic, and concurrent runs take turns (a lock on ``saved_models/.lock``).

    Returns:
        (copied, a one-line note for the user).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    shown = target.parent.name + "/" + target.name
    value, metric = record["value"], record["metric"]
    with open(target.parent / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # short: the comparison and two renames
        old = compat_record(target)
        if old is not None:
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
        _write_json(target.with_suffix(".json"),
                    {**record, "sha256": digest, "saved_at": time.strftime("%Y-%m-%d %H:%M:%S")})
    if old is None:
        return True, f"{shown} written ({metric} {value:.4g})"
    return True, f"{shown} replaced ({metric} {value:.4g} >= {old['value']:.4g} from run {old.get('run_dir')})"


# ----------------------------------------------------------------------------- evaluate
def check_graph_settings(ckpt: dict, path: str | Path) -> dict:
    """A checkpoint records the graph settings it was trained with (its train_config); returns them.

    Raises:
        ValueError: when it does not (the graphs it expects cannot be rebuilt).
    """
    tc = ckpt.get("train_config")
    if not isinstance(tc, dict) or not all(isinstance(tc.get(k), int) for k in ("window", "stride")):
        raise ValueError(f"{path} records no graph settings (train_config window/stride): the graphs it was trained "
                         "on cannot be rebuilt; use a checkpoint written by kdkit train")
    return {k: tc.get(k) for k in GRAPH_SETTINGS}


def evaluation_dir(path: str | Path) -> Path:
    """Where ``evaluation_<dataset>.json`` goes: the run folder for ``<run>/checkpoints/x.pt``, else beside the file."""
    folder = Path(path).resolve().parent
    return folder.parent if folder.name == "checkpoints" else folder


def evaluate_checkpoint(path: str | Path, dataset: str, data_root: str | None = None, out_dir: str | Path | None = None,
                        synthetic_seed: int = 0, on_bad_rows: str | None = None, progress: bool | None = None) -> dict:
    """Evaluate a checkpoint on every test scenario of ``dataset`` with the graph settings and threshold stored in it.

    A scenario without windows (its recordings shorter than the checkpoint's window) is skipped
    with a warning and listed under ``skipped_scenarios``; none with windows at all is an error.
    The JSON goes to ``out_dir``, else the run folder (checkpoint in ``<run>/checkpoints/``), else
    beside the checkpoint. ``on_bad_rows`` (``error``/``skip``) overrides the checkpoint's
    bad-row handling; ``progress``: a progress bar (None: when stderr is a terminal).
    """
    ckpt = load_checkpoint(path)
    graph = check_graph_settings(ckpt, path)
    prov = provenance(ckpt, path)
    data = checkpoint_data(ckpt, dataset, data_root, synthetic_seed, on_bad_rows)
    check_compatible(ckpt, data, "evaluated")
    skipped = empty_scenarios(data, "its window is the checkpoint's: nothing to evaluate there")
    model = model_from_checkpoint(ckpt, path).eval()
    scenarios = [s for s in data.scenarios if s not in skipped]
    results = evaluate_model(model, data.splits, float(ckpt.get("threshold", 0.5)), scenarios=scenarios,
                             progress=progress)
    out = {"checkpoint": str(path), "dataset": dataset, "threshold": float(ckpt.get("threshold", 0.5)),
           "role": prov.get("role"), "graph": {**graph, "graph_format": prov.get("graph", {}).get("graph_format")},
           **{k: v for k, v in results.items() if k != "scores"}, "skipped_scenarios": skipped}
    target = Path(out_dir) if out_dir else evaluation_dir(path)
    target.mkdir(parents=True, exist_ok=True)
    _write_json(target / f"evaluation_{dataset}.json", out)
    return out
