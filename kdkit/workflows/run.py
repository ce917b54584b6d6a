"""One run end to end: the functions every front end calls (CLI, notebooks, widgets, SLURM jobs).

    from kdkit.config import make_config
    from kdkit.workflows import train, evaluate_checkpoint
    summary = train(make_config(model="gat", type="teacher", dataset="synthetic", epochs=3))
    evaluate_checkpoint(summary["best_checkpoint"], "synthetic")

``train`` prepares the graphs, builds the model (and loads the teacher for a KD student),
fits it with the Fabric or legacy trainer, picks the VGAE threshold on validation data,
evaluates every test scenario and writes ``runs/<run-name>/`` (config, metrics,
checkpoints, ``summary.json``, ``metrics.json``) plus compatible copies in ``saved_models/``.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from kdkit.config import TrainConfig
from kdkit.data.datasets import PrepareConfig, PreparedDataset, prepare
from kdkit.data.graphs import EDGE_FEATURES, GRAPH_FORMAT_VERSION, NODE_FEATURES, GraphSet
from kdkit.models.registry import MODEL_CLASSES, build_model, count_parameters, model_size_bytes
from kdkit.models.thresholds import choose_threshold
from kdkit.reporting.metrics import evaluate_model, predict_scores
from kdkit.training.checkpoint import atomic_torch_save, load_checkpoint, model_from_checkpoint
from kdkit.training.legacy import legacy_fit
from kdkit.training.memory import phase_peak, release_memory
from kdkit.training.task import Task
from kdkit.training.trainer import FabricTrainer

COMPAT_NAMES = {("gat", "teacher"): "best_teacher_model_{d}.pth", ("vgae", "teacher"): "autoencoder_{d}.pth",
                ("gat", "student"): "best_student_model_{d}.pth", ("vgae", "student"): "student_autoencoder_{d}.pth"}


def prepare_config(cfg: TrainConfig) -> PrepareConfig:
    return PrepareConfig(window=cfg.window, stride=cfg.stride, label_threshold=cfg.label_threshold,
                         val_fraction=cfg.val_fraction, seed=0)


def checkpoint_data(ckpt: dict, dataset: str | None = None, data_root: str | None = None,
                    synthetic_seed: int = 0) -> PreparedDataset:
    """The prepared dataset with the graph settings a checkpoint was trained with (window,
    stride, labels, split); ``dataset`` defaults to the checkpoint's training dataset."""
    tc = ckpt.get("train_config", {})
    window = int(tc.get("window", 100))
    pcfg = PrepareConfig(window=window, stride=int(tc.get("stride", window)), label_threshold=tc.get("label_threshold", 0.0),
                         val_fraction=tc.get("val_fraction", 0.2))
    return prepare(dataset or tc.get("dataset", "synthetic"), pcfg, data_root or tc.get("data_root"),
                   synthetic_seed=synthetic_seed)


def load_data(cfg: TrainConfig, progress: bool = False) -> PreparedDataset:
    return prepare(cfg.dataset, prepare_config(cfg), cfg.data_root, progress=progress, synthetic_seed=cfg.synthetic_seed)


def model_overrides(cfg: TrainConfig) -> dict:
    """TrainConfig model keys -> constructor options of the model class (the class decides)."""
    return MODEL_CLASSES[cfg.model].options_from_run(cfg)


def check_compatible(ckpt: dict, data: PreparedDataset, what: str = "teacher") -> None:
    """A checkpoint must have been trained on the same ID vocabulary and feature layout."""
    if ckpt.get("node_features") != list(NODE_FEATURES) or ckpt.get("edge_features") != list(EDGE_FEATURES):
        raise ValueError(f"{what} checkpoint was built with another feature layout "
                         f"(graph format {ckpt.get('train_config', {}).get('graph_format', '?')} vs {GRAPH_FORMAT_VERSION}); retrain it")
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


def train(cfg: TrainConfig, resume: str | Path | None = None, progress: bool = True,
          on_epoch_end: Callable[[dict], None] | None = None, data: PreparedDataset | None = None,
          should_stop: Callable[[], bool] | None = None) -> dict:
    """Train one model end to end and evaluate it; returns the run summary (also in summary.json)."""

    run_dir = Path(cfg.runs_dir) / cfg.resolved_run_name
    data = data or load_data(cfg, progress=progress)
    model = build_student_or_teacher(cfg, data)
    teacher, teacher_info = None, None
    if cfg.type == "student" and cfg.teacher:
        tck = load_checkpoint(cfg.teacher)
        if tck["model_config"]["kind"] != cfg.model:
            raise ValueError(f"--teacher {cfg.teacher} is a {tck['model_config']['kind']} model, the student is {cfg.model}")
        check_compatible(tck, data, "teacher")
        teacher = model_from_checkpoint(tck).eval()
        teacher_info = {"path": str(cfg.teacher), "parameters": count_parameters(teacher),
                        "size_bytes": model_size_bytes(teacher)}
        for p in teacher.parameters():
            p.requires_grad_(False)
    classify = model.objective == "classify"  # a reconstruction model learns attack-free windows only
    train_set, val_set = (data.splits["train"], data.splits["val"]) if classify else vgae_train_sets(data)
    task = Task(model, cfg, teacher, class_weights(train_set) if cfg.class_weighting and classify else None)
    extra = {"vocab": data.vocab.to_list(), "node_features": list(NODE_FEATURES), "edge_features": list(EDGE_FEATURES),
             "threshold": 0.5, "kdkit_version": "0.1.0"}

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
    model = model_from_checkpoint(best).eval()
    threshold, how = 0.5, "argmax_of_two_logits"
    if model.objective == "reconstruct":
        threshold, how = choose_vgae_threshold(model, data.splits["val"], cfg.threshold_rule, cfg.threshold_quantile)
        best["threshold"] = threshold
        atomic_torch_save(best, fit.best_path)
    with phase_peak("evaluate", memory):
        results = evaluate_model(model, data.splits, threshold)
    summary = {
        "run_name": cfg.resolved_run_name, "run_dir": str(run_dir), "model": cfg.model, "type": cfg.type,
        "dataset": cfg.dataset, "kd": teacher is not None, "teacher": teacher_info, "trainer": cfg.trainer,
        "precision": precision, "parameters": count_parameters(model), "size_bytes": model_size_bytes(model),
        "epochs_run": fit.epochs_run, "train_seconds": round(train_seconds, 2), "best_val_metric": fit.best_metric,
        "threshold": threshold, "threshold_rule": how, "best_checkpoint": str(fit.best_path),
        "last_checkpoint": str(fit.last_path), "history": fit.history, "oom_events": fit.oom_events,
        "test": {k: v for k, v in results.items() if k != "scores"}, "memory": memory,
    }
    write_run_outputs(run_dir, cfg, summary, results)
    if cfg.save_compat:
        compat = Path("saved_models") / COMPAT_NAMES[(cfg.model, cfg.type)].format(d=cfg.dataset)
        compat.parent.mkdir(exist_ok=True)
        shutil.copyfile(fit.best_path, compat)
        summary["compat_copy"] = str(compat)
    return summary


def write_run_outputs(run_dir: Path, cfg: TrainConfig, summary: dict, results: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    np.savez(run_dir / "test_scores.npz", **{k: v for k, v in results["scores"].items()})
    metrics = {"f1": {k: v["f1"] for k, v in results["scenarios"].items()}, "overall": results["overall"],
               "parameters": summary["parameters"], "train_seconds": summary["train_seconds"]}
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))


def evaluate_checkpoint(path: str | Path, dataset: str, data_root: str | None = None, out_dir: str | Path | None = None,
                        synthetic_seed: int = 0) -> dict:
    """Evaluate a checkpoint on every test scenario of ``dataset`` (with its stored threshold)."""

    ckpt = load_checkpoint(path)
    data = checkpoint_data(ckpt, dataset, data_root, synthetic_seed)
    check_compatible(ckpt, data, "evaluated")
    model = model_from_checkpoint(ckpt).eval()
    results = evaluate_model(model, data.splits, float(ckpt.get("threshold", 0.5)))
    out = {"checkpoint": str(path), "dataset": dataset, "threshold": float(ckpt.get("threshold", 0.5)),
           **{k: v for k, v in results.items() if k != "scores"}}
    target = Path(out_dir) if out_dir else Path(path).resolve().parent.parent
    target.mkdir(parents=True, exist_ok=True)
    (target / f"evaluation_{dataset}.json").write_text(json.dumps(out, indent=2, default=float))
    return out
