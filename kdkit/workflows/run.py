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
checkpoint of that folder. ``resume="auto"`` (or ``$KDKIT_RESUME=auto``, set in a requeued SLURM
job) continues from the folder's own ``last.pt`` when there is one and starts fresh otherwise; a
fit stopped by the cluster (``$KDKIT_STOP_FILE``, docs/PREEMPTION.md) raises
:class:`~kdkit.training.preemption.Preempted` after writing that ``last.pt``.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from kdkit.config import TrainConfig, family_keys_set_unread
from kdkit.data.datasets import (PrepareConfig, PreparedDataset, dataset_name, file_sha256, prepare, resolve_source,
                                 skipped_rows_report)
from kdkit.data.graphs import (EDGE_FEATURES, GRAPH_FORMAT_VERSION, NODE_FEATURES, GraphSet, layout_matches,
                               model_reads_format)
from kdkit.data.loader import shard_bounds
from kdkit.data.readers import read_messages
from kdkit.models.fusion import fit_after_training, fused_validation_f1
from kdkit.models.registry import MODEL_CLASSES, build_model, check_sizes, count_parameters, model_size_bytes
from kdkit.models.thresholds import choose_threshold, youden_threshold
from kdkit.models.vgae import fit_score_standardisation
from kdkit.reporting.metrics import evaluate_all_scores, evaluate_model, predict_scores, repeated_tests
from kdkit.training.checkpoint import (
    GRAPH_SETTINGS,
    atomic_torch_save,
    check_threshold_fitted,
    load_checkpoint,
    make_provenance,
    model_from_checkpoint,
    provenance,
    vocab_hash,
)
from kdkit.training.fork_ranks import ForkedRanks, can_fork_ranks, cpu_threads, fork_ranks
from kdkit.training.legacy import legacy_fit
from kdkit.training.memory import collections_skip_older_objects, phase_peak, release_memory
from kdkit.training.precision import resolve_accelerator
from kdkit.training.preemption import RESUME_ENV, StopRequest
from kdkit.training.spawn_ranks import SpawnedRanks, SpawnedWorker, can_spawn_ranks, spawn_ranks, spawned_worker
from kdkit.training.task import Task
from kdkit.training.trainer import FabricTrainer, check_resumable, convergence_note
from kdkit.workflows.run_dir import (
    RunLock,
    check_run_dir,
    clear_run_outputs,
    existing_run,
    inside,
    launch_rank,
    resolve_resume,
    savez_atomic,
    write_json,
)
from kdkit.workflows.saved_models import compat_path, save_compat_copy

log = logging.getLogger(__name__)

END_NOTE = "kdkit_end_note"
"""Attribute of log records whose text the run's summary carries too (``summary["still_learning"]``)."""


def prepare_config(cfg: TrainConfig) -> PrepareConfig:
    return PrepareConfig(window=cfg.window, stride=cfg.stride, label_threshold=cfg.label_threshold,
                         val_fraction=cfg.val_fraction, seed=0, include_excluded=cfg.include_excluded,
                         on_bad_rows=cfg.on_bad_rows)


def checkpoint_data(ckpt: dict, dataset: str | None = None, data_root: str | None = None,
                    synthetic_seed: int | None = None, on_bad_rows: str | None = None) -> PreparedDataset:
    """The prepared dataset with the graph settings a checkpoint was trained with (window,
    stride, labels, split, suppress/masquerade recordings in training or not, bad-row handling
    unless ``on_bad_rows`` is given, and on its own dataset the bus channel and the synthetic
    dataset's seed unless ``synthetic_seed`` is given); ``dataset`` defaults to the checkpoint's
    training dataset."""
    tc = ckpt.get("train_config", {})
    window = int(tc.get("window", 100))
    pcfg = PrepareConfig(window=window, stride=int(tc.get("stride", window)), label_threshold=tc.get("label_threshold", 0.0),
                         val_fraction=tc.get("val_fraction", 0.2),
                         include_excluded=bool(tc.get("include_excluded", False)),
                         on_bad_rows=on_bad_rows or tc.get("on_bad_rows", "error"))
    own = dataset is None or dataset == tc.get("dataset")  # another dataset's logger files have their own channels
    if synthetic_seed is None:  # (a model of --synthetic-seed 1 was evaluated on seed 0's traffic)
        synthetic_seed = int(tc.get("synthetic_seed") or 0) if own else 0
    return prepare(dataset or tc.get("dataset", "synthetic"), pcfg, data_root or tc.get("data_root"),
                   synthetic_seed=synthetic_seed, channel=tc.get("channel") if own else None)


def check_data_matches(cfg: TrainConfig, data: PreparedDataset) -> None:
    """``train(cfg, data=...)``: the data must be what ``cfg`` prepares, for the checkpoint records
    ``cfg``'s dataset and graph settings (evaluation, export and the detector rebuild windows from
    them). A ValueError names every difference."""
    missing = [s for s in ("train", "val") if s not in data.splits]
    if missing:
        raise ValueError(f"train(data=...): the data have no split {' or '.join(map(repr, missing))} (splits: "
                         f"{sorted(data.splits)}); prepare them with kdkit.workflows.load_data(cfg)")
    want, have = prepare_config(cfg), data.config
    diffs = [f"{k}={getattr(have, k)!r} (the config: {getattr(want, k)!r})"
             for k in ("window", "stride", "label_threshold", "val_fraction", "include_excluded", "on_bad_rows")
             if getattr(have, k) != getattr(want, k)]
    if data.synthetic_seed is not None and data.synthetic_seed != cfg.synthetic_seed:
        diffs.append(f"synthetic_seed={data.synthetic_seed} (the config: {cfg.synthetic_seed})")
    if data.channel is not None or cfg.channel is not None:  # the config's None reads the dataset spec's channel
        wanted = cfg.channel if cfg.channel is not None else resolve_source(cfg.dataset, cfg.data_root).channel
        if data.channel != wanted:
            diffs.append(f"channel={data.channel!r} (the config: {cfg.channel!r}"
                         + (f", the dataset spec's {wanted!r})" if cfg.channel is None else ")"))
    name = dataset_name(cfg.dataset, cfg.data_root)
    if data.name != name:
        diffs.insert(0, f"dataset {data.name!r} (the config: {cfg.dataset!r})")
    if diffs:
        raise ValueError(f"train(data=...): the data were prepared with {', '.join(diffs)}, and the checkpoint would "
                         f"record the config's settings: prepare them from this config (kdkit.workflows.load_data(cfg)), "
                         f"or make the config match (make_config(dataset=..., window=..., ...))")


def load_data(cfg: TrainConfig, progress: bool = False) -> PreparedDataset:
    return prepare(cfg.dataset, prepare_config(cfg), cfg.data_root, progress=progress, synthetic_seed=cfg.synthetic_seed,
                   channel=cfg.channel)


def model_overrides(cfg: TrainConfig) -> dict:
    """TrainConfig model keys -> constructor options of the model class (the class decides)."""
    return MODEL_CLASSES[cfg.model].options_from_run(cfg)


def check_compatible(ckpt: dict, data: PreparedDataset, what: str = "teacher") -> None:
    """A checkpoint must have been trained on the same ID vocabulary, feature layout and graph format.

    ``what``: ``"teacher"`` (a student's ``--teacher``) or ``"evaluated"`` (``kdkit evaluate``),
    which the message's advice follows.
    """
    recorded = (ckpt.get("provenance") or {}).get("graph", {}).get("graph_format")
    if not layout_matches(ckpt.get("node_features"), ckpt.get("edge_features"), recorded, ckpt.get("vocab")):
        raise ValueError(f"{what} checkpoint was built with another feature layout "
                         f"(graph format {recorded or 'unknown'} vs {GRAPH_FORMAT_VERSION}); retrain it")
    vocab = ckpt.get("vocab")
    if vocab != data.vocab.to_list():
        theirs = set(vocab or [])
        ours = set(data.vocab.to_list())
        trained_on = (ckpt.get("provenance") or {}).get("dataset")
        origin = f"trained on dataset {trained_on!r}, " if trained_on and dataset_name(trained_on) != data.name else ""
        advice = ("train the student on the dataset (and window settings) its teacher was trained on"
                  if what == "teacher" else
                  "to score recordings of another car or dataset with this model, pass them as "
                  f"kdkit evaluate --checkpoint ... --input FILE... (IDs it never saw count as unknown), or "
                  f"train a model on {data.name!r}")
        calibration = (ckpt.get("provenance") or {}).get("calibration") or {}
        if calibration.get("kind") == "adapt" and theirs >= ours:
            # an adapted copy holds its training vocabulary plus the new car's IDs, and that car's thresholds
            advice = (f"this checkpoint was adapted to another car (kdkit calibrate --adapt, {len(theirs - ours)} IDs "
                      f"added): it is that car's model; evaluate the checkpoint it was adapted from on {data.name!r}, "
                      "and this one on the car's recordings with --input")
        label = "the --teacher checkpoint" if what == "teacher" else "the checkpoint"
        raise ValueError(f"{label} ({origin}{len(theirs)} IDs) and dataset {data.name!r} ({len(ours)} IDs) have "
                         f"different ID vocabularies ({len(theirs ^ ours)} IDs in one only): {advice}")


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
        t = youden_threshold(scores, y)
        if t is not None:
            return t, "youden_j_on_labelled_validation"
        log.warning("threshold_rule youden: no threshold separates validation's attack windows from its normal "
                    "ones (Youden's J <= 0); the q%g quantile of the attack-free validation windows is used", quantile)
        return (choose_threshold(scores[y == 0], None, quantile),
                f"q{quantile:g}_of_attack_free_validation (youden: J <= 0)")
    return choose_threshold(scores[y == 0], None, quantile), f"q{quantile:g}_of_attack_free_validation"


def build_student_or_teacher(cfg: TrainConfig, data: PreparedDataset):

    torch.manual_seed(cfg.seed)
    return build_model(cfg.model, cfg.type, len(NODE_FEATURES), len(EDGE_FEATURES), len(data.vocab), **model_overrides(cfg))


# ----------------------------------------------------------------------------- windows per split
def _longest_recording(gs: GraphSet, on_bad_rows: str = "error", channel: str | None = None) -> tuple[int, str] | None:
    """(messages, what) of the longest stretch of messages a window can take behind a split: a
    recording's messages (logger files: of ``channel``), or the longest timeline of a recording
    whose clock restarted (no window crosses a restart). None when unreadable."""
    best = None
    for f in gs.files:
        try:
            msgs = read_messages(f, on_bad_rows=on_bad_rows, channel=channel)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - only a detail of an error message
            continue
        n, what = len(msgs), Path(f).name
        if msgs.restart is not None and msgs.restart[1:].any():
            bounds = np.flatnonzero(np.r_[True, msgs.restart[1:], True])
            n = int(np.diff(bounds).max())
            what = (f"{what}'s longest timeline: its clock restarted {msgs.restart[1:].sum()} time(s) and no "
                    f"window crosses a restart")
        if best is None or n > best[0]:
            best = (n, what)
    return best


def _no_windows_message(data: PreparedDataset, split: str) -> str:
    """Why the train or val split of ``data`` holds no windows, and what to change."""
    c = data.config
    longest = _longest_recording(data.splits[split], c.on_bad_rows, (data.info.get("source") or {}).get("channel"))
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
        longest = _longest_recording(gs, data.config.on_bad_rows, (data.info.get("source") or {}).get("channel"))
        held = f"at most {longest[0]:,} messages" if longest else "too few messages"
        skipped[name] = (f"no windows: its {len(gs.files)} recording(s) hold {held}, fewer than the window of "
                         f"{data.config.window:,}; {window_hint}")
    if data.scenarios and len(skipped) == len(data.scenarios):
        raise ValueError(f"dataset {data.name!r} has no test windows in any scenario (window {data.config.window:,}): "
                         + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    for name, why in skipped.items():
        log.warning("test scenario %s skipped: %s", name, why)
    return skipped


def check_windows(data: PreparedDataset, objective: str = "classify", combiner: str = "max") -> dict[str, str]:
    """Every split a run needs holds windows; called before a model is built.

    Args:
        data: the prepared dataset.
        objective: the model family's (``"reconstruct"``, ``"fuse"``: train/val need attack-free windows).
        combiner: a fusion model's combiner (all but ``max`` learn from attack windows in validation).

    Returns:
        The empty test scenarios with their reason (they are skipped, listed in the summary).

    Raises:
        ValueError: no training or validation windows (or no attack-free ones for a
            reconstruction model, or training windows of one class only for a classifier), or no
            test windows at all; naming the split and what to change.
    """
    for split in ("train", "val"):
        if len(data.splits[split]) == 0:
            raise ValueError(_no_windows_message(data, split))
    if objective == "fuse" and combiner != "max" and not bool((data.splits["val"].y == 1).any()):
        raise ValueError(f"no attack windows in the validation split of dataset {data.name!r}: combiner "
                         f"{combiner!r} learns from labelled validation windows; use --combiner max (it needs "
                         "attack-free validation windows only)")
    if objective in ("classify", "fuse"):
        y = data.splits["train"].y
        for label, what in ((1, "attack"), (0, "attack-free")):
            if not bool((y == label).any()):
                hint = ("use --model vgae (an autoencoder: it learns attack-free traffic and flags what it cannot "
                        "reconstruct), or add recordings with labelled attacks (train_02_with_attacks/)" if label
                        else "add attack-free recordings (train_01_attack_free/) or lower --label-threshold")
                raise ValueError(f"no {what} windows in the training split of dataset {data.name!r} (all {len(y):,} "
                                 f"windows are {'attack-free' if label else 'attacks'}): a classifier learns to tell "
                                 f"attacks from normal traffic and cannot learn it from one kind alone; {hint}")
    if objective in ("reconstruct", "fuse"):
        for split, name in (("train", "training"), ("val", "validation")):
            gs = data.splits[split]
            if not bool((gs.y == 0).any()):
                raise ValueError(f"no attack-free {name} windows in dataset {data.name!r}: the model learns normal "
                                 f"traffic and each of the {len(gs):,} {name} windows holds attack messages above "
                                 f"label_threshold {data.config.label_threshold:g}; lower --window or raise "
                                 "--label-threshold")
    return empty_scenarios(data)


# ----------------------------------------------------------------------------- checks of given checkpoints
def check_teacher(tck: dict, cfg: TrainConfig, data: PreparedDataset, path: str | Path) -> None:
    """``--teacher`` must be a teacher checkpoint of the student's family, vocabulary, feature layout and window.

    Raises:
        ValueError: naming the checkpoint, what it is and what the student needs.
    """
    prov = provenance(tck, path)
    if prov.get("role") != "teacher":
        tc = tck.get("train_config") or {}
        facts = [f"{prov['family']} model" if prov.get("family") else "",
                 f"trained on {prov['dataset']}" if prov.get("dataset") else "",
                 f"run {tc['run_name']}" if tc.get("run_name") else ""]
        about = f" ({', '.join(f for f in facts if f)})" if any(facts) else ""
        raise ValueError(f"--teacher {path} is a {prov.get('role')} checkpoint{about}, "
                         f"not a teacher: pass a teacher's best.pt (kdkit train --type teacher), e.g. "
                         f"{Path(cfg.runs_dir) / f'{dataset_name(cfg.dataset)}_{cfg.model}_teacher' / 'checkpoints' / 'best.pt'}")
    kind = (tck.get("model_config") or {}).get("kind")
    if kind != cfg.model:
        raise ValueError(f"--teacher {path} is a {kind} model, the student is {cfg.model}: distil from a {cfg.model} "
                         "teacher")
    check_compatible(tck, data, "teacher")
    window = prov.get("graph", {}).get("window")
    if window is not None and window != cfg.window:
        raise ValueError(f"--teacher {path} was trained on windows of {window} messages, this student on {cfg.window}: "
                         f"distil with --window {window}, or train a teacher with --window {cfg.window}")


def teacher_notes(tck: dict, cfg: TrainConfig, data: PreparedDataset, path: str | Path) -> list[str]:
    """The test recordings of ``data`` that trained the teacher (by content; a teacher of another
    dataset may have seen them): the student's test metrics there are not a test."""
    prov = provenance(tck, path)
    notes = []
    for name in data.scenarios:
        for f in data.splits[name].files:
            trained = in_sample(prov, Path(f))
            if trained:
                notes.append(f"test recording {f} ({name}) is {trained}, a training recording of the teacher "
                             f"{path}: what the student learns from the teacher there is not a test")
    return notes


RESUME_SETTINGS = ("learning_rate", "weight_decay", "batch_size", "node_budget", "scheduler", "warmup_steps",
                   "lr_scaling", "seed")
"""Training settings a resumed run must share with its checkpoint's (their state is the checkpoint's)."""


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
    if not model_reads_format(graph.get("graph_format"), ck.get("vocab")):
        diffs.append(f"graph format {graph.get('graph_format')} vs {GRAPH_FORMAT_VERSION}")
    tc = ck.get("train_config") or {}  # the optimizer, schedule, batches and random state go on from the checkpoint:
    for key in RESUME_SETTINGS:  # a new value would be recorded in config.json and not used (epochs may grow)
        if key in tc and tc[key] != getattr(cfg, key):
            diffs.append(f"{key} {tc[key]} vs {getattr(cfg, key)}")
    if diffs:
        raise ValueError(f"--resume {path} comes from another run than this one ({'; '.join(diffs)}; checkpoint vs "
                         "run): resume with the interrupted run's settings (its config.json), or start a new run")


def _skipped_rows(info: dict) -> dict[str, int]:
    """Malformed rows dropped per recording (``--on-bad-rows skip``), for the run summary."""
    return {path: int(s["rows"]) for path, s in (info.get("skipped") or {}).items() if s.get("rows")}


# ----------------------------------------------------------------------------- train
def train(cfg: TrainConfig, resume: str | Path | None = None, progress: bool = True,
          on_epoch_end: Callable[[dict], None] | None = None, data: PreparedDataset | None = None,
          should_stop: Callable[[], bool] | None = None, stop: StopRequest | None = None,
          fork_workers: bool = False) -> dict:
    """Train one model end to end and evaluate it; returns the run summary (also in summary.json).

    The run holds the lock of ``runs_dir/<run name>`` from start to end (rank zero under DDP).
    ``resume``: a checkpoint, or ``"auto"`` (the run folder's ``last.pt`` if any, else a fresh
    start; ``$KDKIT_RESUME=auto`` means the same when ``resume`` is None). ``stop``: asked after
    every batch whether the cluster wants the job to stop (default ``$KDKIT_STOP_FILE``).
    ``data``: the prepared dataset (default: prepared from ``cfg``, :func:`load_data`); given, it must
    be what ``cfg`` prepares (:func:`check_data_matches`). ``fork_workers``: for a multi-process run on one machine, fork the DDP workers from this
    process (:mod:`kdkit.training.fork_ranks`); only safe in a process that has not run tensor work
    yet (``kdkit train`` passes it). Without it (a notebook, a script) the workers are started as
    ``kdkit train`` processes with this config (:mod:`kdkit.training.spawn_ranks`) and this process
    is rank zero: its callbacks and the returned summary work as with one process. Under SLURM,
    torchrun and the like, their launcher starts the ranks.

    Raises:
        RunDirError: the folder is in use by another process, or holds a run and neither
            ``cfg.overwrite`` nor a ``resume`` checkpoint from that folder was given.
        ValueError: a split without windows, an unsuitable teacher or resume checkpoint (all
            before a model is built or trained).
        Preempted: the cluster asked the job to stop; ``last.pt`` holds the exact state.
    """
    check_sizes(cfg.model, cfg.type, cfg.hidden, cfg.embedding_dim)  # before data, workers or a teacher
    if data is not None:
        check_data_matches(cfg, data)
    # the caller's objects (a notebook's imports, its data) outlive the run: its phase-end
    # collections need not walk them (kdkit.training.memory.collections_skip_older_objects)
    with collections_skip_older_objects(), cpu_threads(cfg.threads):
        return _train_locked(cfg, resume, progress, on_epoch_end, data, should_stop, stop, fork_workers)


def _train_locked(cfg: TrainConfig, resume, progress, on_epoch_end, data, should_stop, stop,
                  fork_workers: bool) -> dict:
    """:func:`train` inside its run folder's lock (and, for ``fork_workers``, its forked ranks)."""
    run_dir = Path(cfg.runs_dir) / cfg.resolved_run_name
    auto = os.fspath(resume) == "auto" if resume is not None else os.environ.get(RESUME_ENV) == "auto"
    resume = resolve_resume(resume, run_dir, os.environ.get(RESUME_ENV))
    if resume and cfg.trainer == "legacy":
        raise ValueError("--resume needs the fabric trainer (the legacy baseline cannot continue a run); drop "
                         "--trainer legacy")
    owner = launch_rank(cfg) == 0  # DDP workers share rank zero's folder and lock
    created = not run_dir.exists()
    lock = RunLock(run_dir).acquire() if owner else None
    finished = False
    ranks = None
    try:
        if owner and auto and resume is None and existing_run(run_dir) and not (run_dir / "summary.json").is_file():
            # killed before its first last.pt (a SIGKILL in epoch 1, then the requeue): nothing to continue, and
            # nothing finished to keep, so "auto" starts it afresh instead of refusing the folder every time
            removed = clear_run_outputs(run_dir)
            log.warning("--resume auto: %s holds a run that stopped before its first last.pt, nothing to continue "
                        "(it held %s): starting it afresh", run_dir, ", ".join(removed))
        if owner:
            check_run_dir(run_dir, cfg, resume)
            unread = family_keys_set_unread(cfg)
            if unread:
                log.warning("%s: this %s run does not read %s; recorded in config.json as set",
                            cfg.resolved_run_name, cfg.model, ", ".join(unread))
        if owner and cfg.devices * cfg.num_nodes > 1 and cfg.trainer != "legacy":
            if fork_workers:
                ok, why = can_fork_ranks(cfg.devices, cfg.num_nodes, resolve_accelerator(cfg.accelerator))
                if ok:
                    ranks = fork_ranks(cfg.devices)
                    if ranks.rank:  # a worker: it runs its share of the run and exits
                        ranks.run_worker(lambda: _train(cfg, run_dir, False, resume, False, None, data, None, stop,
                                                        ranks))
                else:
                    log.info("DDP workers started by Lightning: %s", why)
            else:  # a notebook or a script: the workers run `kdkit train` with this config (kdkit.training.spawn_ranks)
                ok, why = can_spawn_ranks(cfg.devices, cfg.num_nodes)
                if ok:
                    ranks = spawn_ranks(cfg, resume)
                else:
                    log.info("DDP workers started by Lightning: %s", why)
        elif not owner:
            ranks = spawned_worker()  # None unless rank zero started this process with spawn_ranks
        try:
            summary = _train(cfg, run_dir, owner, resume, progress, on_epoch_end, data, should_stop, stop, ranks)
        except RuntimeError as err:  # torch.distributed's errors (a dead peer) are RuntimeErrors
            why = ranks.worker_failure() if isinstance(ranks, SpawnedRanks) else ""
            if why:  # name the worker that died, not only the transport error it left on this rank
                raise RuntimeError(why) from err
            raise
        if ranks is not None:
            ranks.join()
        finished = True
        return summary
    finally:
        if ranks is not None and not finished:
            ranks.abort()
        if lock is not None:
            lock.release()
            if not finished and created and {p.name for p in run_dir.iterdir()} <= {".lock"}:
                lock.path.unlink(missing_ok=True)  # a run refused before it wrote anything leaves no folder
                run_dir.rmdir()


def _train(cfg: TrainConfig, run_dir: Path, owner: bool, resume, progress, on_epoch_end, data, should_stop,
           stop, ranks: ForkedRanks | SpawnedRanks | SpawnedWorker | None = None) -> dict:
    timings: dict[str, float] = {}
    t_run = time.perf_counter()
    if ranks is not None:
        ranks.before_data()  # a worker waits for rank zero's data (the store is cached then)
    data = data or load_data(cfg, progress=progress)
    if ranks is not None:
        ranks.after_data()
    timings["data_s"] = time.perf_counter() - t_run
    if owner:  # --on-bad-rows skip: say what was dropped, as kdkit data info does
        for line in skipped_rows_report(data.info):
            log.warning(line.strip())
    skipped = check_windows(data, MODEL_CLASSES[cfg.model].objective, cfg.combiner)
    kd = cfg.type == "student" and bool(cfg.teacher)
    tck = None
    if kd:
        tck = load_checkpoint(cfg.teacher)
        check_teacher(tck, cfg, data, cfg.teacher)
        if owner:
            for note in teacher_notes(tck, cfg, data, cfg.teacher):
                log.warning("%s", note)
    rck = None
    if resume:
        rck = load_checkpoint(resume)
        check_resume(rck, cfg, data, resume)
    model = build_student_or_teacher(cfg, data)
    teacher, teacher_info = None, None
    if tck is not None:
        teacher = model_from_checkpoint(tck, cfg.teacher).eval()
        teacher_info = {"path": str(cfg.teacher), "parameters": count_parameters(teacher),
                        "size_bytes": model_size_bytes(teacher),
                        "sha256": file_sha256(Path(cfg.teacher))}  # the report finds this very teacher
        for p in teacher.parameters():
            p.requires_grad_(False)
        student_size = count_parameters(model)
        if owner and student_size >= teacher_info["parameters"]:
            log.warning("the student (%s parameters) is not smaller than its teacher (%s, %s): distillation "
                        "then buys no size; give the student smaller sizes (--hidden, --layers, --heads)",
                        f"{student_size:,}", f"{teacher_info['parameters']:,}", cfg.teacher)
    classify = model.objective in ("classify", "fuse")  # a reconstruction model learns attack-free windows only
    train_set, val_set = (data.splits["train"], data.splits["val"]) if classify else vgae_train_sets(data)
    task = Task(model, cfg, teacher, class_weights(train_set) if cfg.class_weighting and classify else None)
    metric, mode = task.monitor
    if rck is not None:
        check_resumable(rck, task, resume)
        del rck
        if not inside(resume, run_dir):  # (it trained, then found no best.pt in the new folder: exit 2, half a run)
            raise ValueError(f"--resume {resume} is a checkpoint of another run folder "
                             f"({Path(resume).resolve().parent.parent}), not of this run's {run_dir}: a run goes on in "
                             f"its own folder: resume with that run's --run-name (and --runs-dir), or copy its folder "
                             f"to {run_dir} first")
    vocab = data.vocab.to_list()
    extra = {"vocab": vocab, "node_features": list(NODE_FEATURES), "edge_features": list(EDGE_FEATURES),
             "threshold": 0.5, "threshold_fitted": MODEL_CLASSES[cfg.model].objective != "reconstruct",
             "kdkit_version": "0.1.0",
             "provenance": {**make_provenance(cfg.type, cfg.model, cfg.dataset, vocab, cfg.to_dict(), kd,
                                              str(cfg.teacher) if kd else None),
                            "training_files": data.info.get("train_files_sha256"),
                            # how its data were read (a column mapping: new recordings of that layout are read so)
                            "reading": data.info.get("source")}}
    if owner:  # every check passed: now the folder is this run's
        if cfg.overwrite and not (resume and inside(resume, run_dir)):
            removed = clear_run_outputs(run_dir)
            if removed:
                log.warning("--overwrite: removed the previous run's %s from %s", ", ".join(removed), run_dir)
        write_json(run_dir / "config.json", cfg.to_dict())

    t0 = time.perf_counter()
    launcher = None
    memory: dict = {}  # peak memory per phase; each phase ends by releasing memory (kdkit.training.memory.phase_peak)
    trainer = None
    with phase_peak("train", memory):
        if cfg.trainer == "legacy":

            fit = legacy_fit(task, cfg, train_set, val_set, run_dir, extra)
            rank, world = 0, 1
            precision = "32-true"
        else:
            trainer = FabricTrainer(cfg, run_dir, progress=progress, on_epoch_end=on_epoch_end, should_stop=should_stop,
                                    stop=stop)
            # who starts the ranks (asked before fit: Lightning's launcher sets LOCAL_RANK when it starts them)
            env = getattr(trainer.fabric.strategy, "cluster_environment", None)
            launcher = (ranks.launcher if ranks is not None else "external" if env.creates_processes_externally
                        else "lightning") if env is not None and trainer.fabric.world_size > 1 else None
            # under DDP the ranks stay together after training and score the test sets in shards
            fit = trainer.fit(task, train_set, val_set, resume=resume, checkpoint_extra=extra, keep_group=True)
            rank, world = trainer.fabric.global_rank, trainer.fabric.world_size
            precision = trainer.precision
    train_seconds = time.perf_counter() - t0  # this attempt's; a resumed fit adds its earlier attempts' below
    timings["train_s"] = train_seconds
    still_learning = convergence_note(fit.history, cfg.epochs) if rank == 0 else None
    if still_learning:
        # END_NOTE: a front end that repeats the summary's note at its end (kdkit train) drops this record
        log.warning("%s: %s", cfg.resolved_run_name, still_learning, extra={END_NOTE: True})
        with open(run_dir / "fabric_training.log", "a") as run_log:  # the run's own log has it, whoever shows it
            run_log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} WARNING {still_learning}\n")
    del task, model  # the best checkpoint is loaded for the test pass; the trained model's memory goes now
    try:
        out = _evaluate_run(cfg, data, fit, rank, world, trainer, teacher, skipped, memory, timings, progress)
    finally:
        if trainer is not None:
            trainer.close()
    if out is None:  # a worker rank: evaluation results and reports are rank zero's
        return {"rank": rank}
    model, threshold, how, combiner, results = out
    timings["total_s"] = time.perf_counter() - t_run
    timings = {k: round(v, 2) for k, v in timings.items()}
    summary = {
        "run_name": cfg.resolved_run_name, "run_dir": str(run_dir), "model": cfg.model, "type": cfg.type,
        "dataset": cfg.dataset, "kd": teacher is not None, "teacher": teacher_info, "trainer": cfg.trainer,
        "precision": precision, "parameters": count_parameters(model), "size_bytes": model_size_bytes(model),
        "epochs_run": fit.epochs_run, "train_seconds": round(fit.seconds_before + train_seconds, 2),
        "train_seconds_this_attempt": round(train_seconds, 2), "best_val_metric": fit.best_metric,
        "val_metric": metric, "threshold": threshold, "threshold_rule": how, "combiner": combiner,
        "best_checkpoint": str(fit.best_path),
        "last_checkpoint": str(fit.last_path), "resumed_from": fit.resumed_from,
        "resumed_at_epoch": fit.resumed_at_epoch, "resumed_at_batch": fit.resumed_at_batch, "history": fit.history,
        "oom_events": fit.oom_events, "still_learning": still_learning,
        "test": {k: v for k, v in results.items() if k != "scores"},
        "skipped_scenarios": skipped, "missing_scenarios": dict(data.info.get("missing_scenarios") or {}),
        "skipped_rows": _skipped_rows(data.info), "memory": memory,
        "timings": timings, "world_size": world, "launcher": launcher, "threads": torch.get_num_threads(),
    }
    # fusion: the fused detector's F1 on validation at its fitted threshold, beside the classification head's
    # val_f1 that chose the epoch (two validation F1s of one run, each named)
    fused = fused_validation_f1(combiner) if cfg.model == "fusion" and isinstance(combiner, dict) else None
    if fused is not None:
        summary["val_fused_f1"] = fused
    labels = {name: data.splits[name].y.numpy().astype(np.uint8) for name in results["scores"]}
    write_run_outputs(run_dir, cfg, summary, results, labels)
    if cfg.save_compat:  # a finished run only: its outputs are written
        record = {"metric": metric, "mode": mode, "value": fit.best_metric, "run_dir": str(run_dir),
                  "run_name": cfg.resolved_run_name, "checkpoint": str(fit.best_path)}
        if fused is not None:  # the detector the checkpoint is, not its classification head alone (val_f1)
            record.update(metric="val_fused_f1", mode="max", value=fused, supersedes=["val_f1"])
        copied, note = save_compat_copy(fit.best_path, compat_path(cfg), record)
        if fused is not None:
            note += (f" (val_fused_f1: the fused detector's F1 on validation at its fitted threshold; training chose "
                     f"the epoch by the classification head's {metric} {fit.best_metric:.4g})")
        summary["compat_copy"] = str(compat_path(cfg)) if copied else None
        summary["compat_note"] = note
        (log.info if copied else log.warning)(note)
        write_json(run_dir / "summary.json", summary)
    return summary


def _evaluate_run(cfg: TrainConfig, data: PreparedDataset, fit, rank: int, world: int, trainer, teacher, skipped,
                  memory: dict, timings: dict, progress: bool):
    """After training: the threshold (VGAE) or combiner (fusion) from validation, then the test pass.

    Rank zero fits the threshold/combiner and re-saves ``best.pt``. In one process it then scores
    every test scenario. Under DDP every rank loads that ``best.pt`` and scores its contiguous
    block of each scenario's windows; rank zero gathers the scores (in window order) and computes
    the metrics. Returns ``(model, threshold, how, combiner, results)`` on rank zero, None on the
    other ranks. A failure on rank zero before the test pass is passed to the other ranks, which
    then stop without scoring (they would otherwise wait for it in a collective).
    """
    sharded = world > 1 and trainer is not None and torch.distributed.is_initialized()
    if rank != 0 and not sharded:
        return None
    if teacher is not None:  # memory safety: the teacher is not needed any more
        teacher.to("cpu")
        release_memory()
    t = time.perf_counter()
    model = threshold = how = combiner = None
    failure = None
    if rank == 0:
        try:
            best = load_checkpoint(fit.best_path)
            model = model_from_checkpoint(best, fit.best_path).eval()
            threshold, how = 0.5, "attack_probability_at_least_0.5"
            if model.objective == "reconstruct":
                if model.config.get("score", "sum") == "standardised":  # each error's scale, from validation
                    combiner = {"vgae_score": "standardised",
                                **fit_score_standardisation(model, data.splits["val"])}
                    best["model"] = model.state_dict()
                threshold, how = choose_vgae_threshold(model, data.splits["val"], cfg.threshold_rule,
                                                       cfg.threshold_quantile)
                best["threshold"], best["threshold_fitted"] = threshold, True
                atomic_torch_save(best, fit.best_path)
            elif model.objective == "fuse":  # ID profiles from attack-free training windows; combiner, thresholds from validation
                combiner = fit_after_training(model, data.splits["train"], data.splits["val"], cfg.fusion_quantile,
                                              cfg.seed)
                threshold = 0.0
                how = f"fused_score_at_least_0_(q{cfg.fusion_quantile:g}_of_attack_free_validation_per_mode)"
                best["model"], best["threshold"] = model.state_dict(), threshold
                atomic_torch_save(best, fit.best_path)
        except BaseException as err:  # noqa: BLE001 - re-raised below, after the other ranks are told
            failure = err
    if sharded:
        ok = trainer.fabric.all_reduce(torch.tensor(float(failure is None), device=trainer.fabric.device),
                                       reduce_op="min")
        if float(ok) < 1:
            if failure is not None:
                raise failure
            return None  # rank zero failed and reports it
        if rank != 0:
            best = load_checkpoint(fit.best_path)
            model = model_from_checkpoint(best, fit.best_path).eval()
            threshold = float(best.get("threshold", 0.5))
    elif failure is not None:
        raise failure
    timings["calibrate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    scenarios = [s for s in data.scenarios if s not in skipped]
    with phase_peak("evaluate", memory):
        if sharded:
            device = trainer.fabric.device
            scores = {name: _gathered_scores(trainer.fabric,
                                             predict_scores(model.to(device), data.splits[name], device=device,
                                                            part=(rank, world)), len(data.splits[name]))
                      for name in scenarios}
            model.cpu()
            results = evaluate_all_scores(data.splits, scores, threshold, repeated_tests(data.info)) if rank == 0 else None
        else:
            results = evaluate_model(model, data.splits, threshold, scenarios=scenarios,
                                     progress=None if progress else False, repeats=repeated_tests(data.info))
    timings["evaluate_s"] = time.perf_counter() - t
    if rank != 0:
        return None
    return model, threshold, how, combiner, results


def _gathered_scores(fabric, part: np.ndarray, n: int) -> np.ndarray:
    """Every rank's block of scores (:func:`~kdkit.data.loader.shard_bounds`) joined in window order."""
    world = fabric.world_size
    bounds = [shard_bounds(n, r, world) for r in range(world)]
    width = max(hi - lo for lo, hi in bounds)
    buf = torch.zeros(max(width, 1), dtype=torch.float32, device=fabric.device)
    buf[:len(part)] = torch.from_numpy(np.asarray(part, dtype=np.float32)).to(fabric.device)
    every = [torch.empty_like(buf) for _ in range(world)]
    torch.distributed.all_gather(every, buf)  # plain collective (Fabric's goes through a deprecated autograd op)
    return torch.cat([every[r][:hi - lo].cpu() for r, (lo, hi) in enumerate(bounds)]).numpy()


def write_run_outputs(run_dir: Path, cfg: TrainConfig, summary: dict, results: dict,
                      labels: dict[str, np.ndarray] | None = None) -> None:
    """A finished run's files: config, summary, metrics, the test scores and (``labels``) the test
    windows' labels, scenario by scenario, for the report's score figures."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", cfg.to_dict())
    write_test_outputs(run_dir, summary, results, labels)


def write_test_outputs(run_dir: Path, summary: dict, results: dict, labels: dict[str, np.ndarray] | None = None) -> None:
    """The files of a run's test pass: ``summary.json`` (as given: its ``test`` is ``results`` without the
    scores), ``test_scores.npz``, ``test_labels.npz`` (``labels``) and ``metrics.json``; also what a
    re-fit of a finished run's scoring rewrites (``benchmarks/quality.py --refit``)."""
    write_json(run_dir / "summary.json", summary)
    savez_atomic(run_dir / "test_scores.npz", dict(results["scores"]))
    if labels is not None:
        savez_atomic(run_dir / "test_labels.npz", labels)
    metrics = {"f1": {k: v["f1"] for k, v in results["scenarios"].items()}, "overall": results["overall"],
               "parameters": summary["parameters"], "train_seconds": summary["train_seconds"],
               "skipped_scenarios": summary.get("skipped_scenarios", {})}
    write_json(run_dir / "metrics.json", metrics)


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


def in_sample(prov: dict, path: Path) -> str | None:
    """The training recording (its path below the dataset root) ``path`` is, by content hash, when
    the checkpoint's provenance lists its training files (runs since 2026-12-07); else None."""
    trained = prov.get("training_files") or {}
    if not trained:
        return None
    digest = file_sha256(Path(path))
    return next((name for name, sha in trained.items() if sha == digest), None)


def calibration_sample(prov: dict, path: Path) -> str | None:
    """How ``path`` entered a ``kdkit calibrate`` of the checkpoint (``"calibrated on (its threshold)"``,
    ``"adapted to (its IDs, profiles and thresholds)"``), by content hash, when the provenance's
    calibrations list it; else None."""
    calibrations = prov.get("calibrations") or ([prov["calibration"]] if prov.get("calibration") else [])
    listed = [(c, f.get("sha256")) for c in calibrations for f in c.get("files") or [] if isinstance(f, dict)]
    if not any(sha for _, sha in listed):
        return None
    digest = file_sha256(Path(path))
    for record, sha in listed:
        if sha == digest:
            part = f"its first {record['first_seconds']:g} s" if record.get("first_seconds") else "its windows"
            return (f"adapted to (its IDs, profiles and thresholds were fitted on {part})"
                    if record.get("kind") == "adapt" else f"calibrated on (its threshold was fitted on {part})")
    return None


def evaluate_checkpoint(path: str | Path, dataset: str, data_root: str | None = None, out_dir: str | Path | None = None,
                        synthetic_seed: int | None = None, on_bad_rows: str | None = None,
                        progress: bool | None = None) -> dict:
    """Evaluate a checkpoint on every test scenario of ``dataset`` with the graph settings and threshold stored in it.

    A scenario without windows (its recordings shorter than the checkpoint's window) is skipped
    with a warning and listed under ``skipped_scenarios``; none with windows at all is an error.
    A test recording the model was trained on (by content, its provenance's training files) is
    named in ``in_sample`` and ``warnings``: its metrics are not a test. ``synthetic_seed``: of
    the built-in synthetic dataset (default: the checkpoint's own on its own dataset).
    The JSON goes to ``out_dir``, else the run folder (checkpoint in ``<run>/checkpoints/``:
    ``evaluation_<dataset>.json``), else beside the checkpoint (outside a run folder, and in
    ``out_dir``, named ``evaluation_<dataset>_<checkpoint name>.json``: a folder of several models). ``on_bad_rows`` (``error``/``skip``) overrides the checkpoint's
    bad-row handling; ``progress``: a progress bar (None: when stderr is a terminal).
    """
    ckpt = load_checkpoint(path)
    graph = check_graph_settings(ckpt, path)
    check_threshold_fitted(ckpt, path, "evaluated")
    prov = provenance(ckpt, path)
    data = checkpoint_data(ckpt, dataset, data_root, synthetic_seed, on_bad_rows)
    check_compatible(ckpt, data, "evaluated")
    skipped = empty_scenarios(data, "its window is the checkpoint's: nothing to evaluate there")
    model = model_from_checkpoint(ckpt, path).eval()
    scenarios = [s for s in data.scenarios if s not in skipped]
    trained = {name: [(f, t) for f in data.splits[name].files if (t := in_sample(prov, Path(f)))]
               for name in scenarios}
    left_out = repeated_tests(data.info) | {f for pairs in trained.values() for f, _ in pairs}
    results = evaluate_model(model, data.splits, float(ckpt.get("threshold", 0.5)), scenarios=scenarios,
                             progress=progress, repeats=left_out)
    pooled = bool(results["overall"].get("in_sample"))  # nothing else to pool
    warnings = [f"{name}: {f} is {t}, a training recording of this model (the same content): its windows trained "
                f"it, so this scenario's metrics are in-sample, not a test"
                + (" (and so are the overall ones: every test recording is a training one)" if pooled
                   else " (overall leaves it out)") for name, pairs in trained.items() for f, t in pairs]
    out = {"checkpoint": str(path), "dataset": dataset, "threshold": float(ckpt.get("threshold", 0.5)),
           "role": prov.get("role"), "graph": {**graph, "graph_format": prov.get("graph", {}).get("graph_format")},
           **{k: v for k, v in results.items() if k != "scores"}, "skipped_scenarios": skipped,
           "in_sample": {name: [f for f, _ in pairs] for name, pairs in trained.items() if pairs}, "warnings": warnings}
    target = Path(out_dir) if out_dir else evaluation_dir(path)
    target.mkdir(parents=True, exist_ok=True)
    # in its run folder the best checkpoint's evaluation is the run's; any other model (last.pt, a `kdkit
    # calibrate --out <run>/checkpoints/x.pt` copy, saved_models/, --out) is named, so that evaluations never
    # replace one another (a calibrated copy's replaced the run's own and the report showed it as the run's)
    own_run = out_dir is None and Path(path).resolve().parent.name == "checkpoints" and Path(path).name == "best.pt"
    path = target / f"evaluation_{dataset_name(dataset)}{'' if own_run else '_' + Path(path).stem}.json"
    write_json(path, out)
    out["json"] = str(path)  # where it went (not in the file), as evaluate_inputs says
    return out
