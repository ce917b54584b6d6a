"""The run schema: one typed, frozen description of a training run, and everything derived from it.

    kdkit train --list-configs
    kdkit train --model gat --dataset hcrl_sa --type teacher --epochs 50 --learning-rate 0.002
    kdkit train --model gat --dataset hcrl_sa --type teacher --config '{"epochs": 50, "learning_rate": 0.002}'

:class:`TrainConfig` is the single place a run parameter is declared: its type, default,
help text, allowed values or range, and whether the widget panel shows a control for it.
From it come the ``kdkit train`` flags (:func:`add_config_arguments`), ``--list-configs``
(:func:`list_configs`), ``--config`` validation (:func:`validate_overrides`), the widget
panel's controls (:mod:`kdkit.ui.widgets`), the arguments of a SLURM training job
(:func:`to_argv`) and the check of notebook parameters
(:func:`kdkit.workflows.notebooks.check_parameters`). Adding a parameter is one field here
plus the code that uses it.

Why dataclasses and not pydantic: the config is a flat record of literals that papermill,
JSON and argparse all carry as is; a frozen dataclass with per-field metadata gives types,
defaults and help in the standard library, and the checks kdkit needs (choices, ranges,
``None`` for "the preset") are a few lines (:func:`validate_overrides`) with error messages
that name the key. pydantic would add a dependency and its own error format for no gain here.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Optional, Union, get_args, get_origin, get_type_hints

import torch

from kdkit.data.datasets import check_dataset, dataset_defaults, dataset_name, known_datasets
from kdkit.models.registry import MODEL_CLASSES, PRESETS

# Hardware presets (the migration guide's tuning section, measured where we could).
HARDWARE_PRESETS: dict[str, dict[str, Any]] = {
    "a100": {"precision": "bf16-mixed", "batch_size": 128, "num_workers": 8, "prefetch_factor": 4, "target_memory_usage": 0.85},
    "h100": {"precision": "bf16-mixed", "batch_size": 256, "num_workers": 8, "prefetch_factor": 4, "target_memory_usage": 0.85},
    "v100": {"precision": "16-mixed", "batch_size": 64, "num_workers": 4, "prefetch_factor": 2, "target_memory_usage": 0.85},
    "small-gpu": {"precision": "32-true", "batch_size": 32, "num_workers": 2, "prefetch_factor": 2, "target_memory_usage": 0.7},
    "cpu": {"precision": "32-true", "batch_size": 64, "num_workers": 0, "prefetch_factor": 2, "target_memory_usage": 0.5},
}
PRECISIONS = ("auto", "32-true", "16-mixed", "bf16-mixed", "32", "16", "bf16")


def param(default: Any, help: str, *, group: str, choices: tuple | Callable[[], tuple] | None = None, low: float | None = None,
          high: float | None = None, panel: bool = False, check: Callable[[Any], None] | None = None,
          suggestions: Callable[[], tuple] | None = None) -> Any:
    """A :class:`TrainConfig` field with what every front end needs to know about it.

    Args:
        default: the value when nobody sets it (``None``: "the preset" or "not set").
        help: one line for ``--help``, ``--list-configs``, the panel's tooltip.
        group: the section it belongs to (``--help`` groups, ``--list-configs``).
        choices: the allowed values, if a closed set (a callable is asked each time: registries
            such as the datasets and model families may grow at run time).
        low: smallest allowed value (numbers), inclusive.
        high: largest allowed value (numbers), inclusive.
        panel: the widget panel shows a control for it (the others go in its JSON box).
        check: for an open set (the datasets: keys, folders, spec files), a function that
            raises ValueError naming what is wrong with a value.
        suggestions: the values a control offers for an open set (typing another is allowed).
    """
    return field(default=default, metadata={"help": help, "group": group, "choices": choices, "low": low,
                                            "high": high, "panel": panel, "check": check,
                                            "suggestions": suggestions})


WHAT, GRAPHS, MODEL, OPTIM, KD, HARDWARE, OUTPUT = (
    "what to train", "graphs", "model (None = the preset of model/type)", "optimisation",
    "knowledge distillation (student with a teacher)", "hardware and speed", "output")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs. Defaults are the GAT teacher on CPU.

    Every field may be given as a ``kdkit train --flag``, a ``--config`` JSON key, a
    ``make_config`` keyword, a notebook parameter of the same name and a panel setting.
    """

    # --- what to train
    model: str = param("gat", "model family", group=WHAT, choices=lambda: tuple(MODEL_CLASSES), panel=True)
    type: str = param("teacher", "teacher or student preset", group=WHAT, choices=("teacher", "student"), panel=True)
    dataset: str = param("synthetic", "dataset: a registry key, a folder, a spec file (.toml/.json[:name]) or a name "
                         "declared in ./datasets.toml or $KDKIT_DATASETS", group=WHAT, panel=True, check=check_dataset,
                         suggestions=known_datasets)
    data_root: Optional[str] = param(None, "folder holding hcrl-sa/ etc. (default $KDKIT_DATA_ROOT, else the first "
                                     "of data/can-train-and-test, ../shared/data/can-train-and-test, ... that "
                                     "holds the dataset)", group=WHAT)
    channel: Optional[str] = param(None, "logger files of the dataset (.log/.asc/.blf/.trc, e.g. a multi-bus capture "
                                   "in a dataset folder): keep only this bus channel, e.g. can0 ('*': every channel "
                                   "as one stream, on purpose); None: the dataset spec's channel, if any. Given, it "
                                   "replaces the spec's", group=WHAT)
    teacher: Optional[str] = param(None, "teacher checkpoint for a KD student; None trains the student alone",
                                   group=WHAT, panel=True)
    # --- graphs
    window: int = param(100, "messages per window; a dataset spec's window, when it sets one, comes before this "
                        "default", group=GRAPHS, low=1)
    stride: Optional[int] = param(None, "offset between windows (None: the window, so that windows neither overlap "
                                        "nor leave messages out); a dataset spec's stride, when it sets one, comes "
                                        "before this default unless the window is set", group=GRAPHS, low=1)
    label_threshold: float = param(0.0, "a window is an attack when its attack share > this (below 1)", group=GRAPHS,
                                   low=0, high=1, check=lambda v: _below_one(v))
    val_fraction: float = param(0.2, "contiguous validation block per training file", group=GRAPHS, low=0, high=1)
    include_excluded: bool = param(False, "also train on the suppress/masquerade recordings of the training folders "
                                   "(by default they are kept out of training and evaluated as a test scenario, "
                                   "train_excluded_*)", group=GRAPHS)
    on_bad_rows: str = param("error", "malformed input rows (bad fields, time going backwards): stop with file:line, "
                             "or skip and count them", choices=("error", "skip"), group=GRAPHS)
    synthetic_seed: int = param(0, "seed of the built-in synthetic dataset", group=GRAPHS, low=0)
    # --- model (None = the preset of model/type)
    hidden: Optional[int] = param(None, "hidden channels per head", group=MODEL, low=1)
    layers: Optional[int] = param(None, "GAT layers (VGAE: encoder/decoder layers)", group=MODEL, low=1)
    heads: Optional[int] = param(None, "attention heads", group=MODEL, low=1)
    embedding_dim: Optional[int] = param(None, "CAN-ID embedding size", group=MODEL, low=1)
    latent_dim: Optional[int] = param(None, "VGAE latent size", group=MODEL, low=1)
    dropout: float = param(0.1, "dropout in the GNN layers", group=MODEL, low=0, high=1)
    threshold_rule: str = param("quantile", "VGAE threshold: quantile of attack-free validation scores | youden "
                                "(labelled validation)", group=MODEL, choices=("quantile", "youden"))
    threshold_quantile: float = param(0.99, "the quantile for threshold_rule quantile", group=MODEL, low=0, high=1)
    vgae_score: str = param("sum", "VGAE anomaly score: sum (feature + ID + edge reconstruction error) | standardised "
                            "(each error on a log scale, standardised on attack-free validation windows; the largest)",
                            group=MODEL, choices=("sum", "standardised"))
    combiner: str = param("max", "fusion: how the classifier's and the autoencoder's evidence become one score, fitted "
                          "on validation data (max | logistic | mlp | policy; docs/FUSION.md)", group=MODEL,
                          choices=("max", "logistic", "mlp", "policy"))
    unknown_vehicle: str = param("classifier", "fusion: how a window of a vehicle the model does not know (most IDs "
                                 "unseen) is judged: classifier (the classification head at the decision it learned "
                                 "on ID-hidden training windows) | fused (the ID-agnostic parts at the validation "
                                 "threshold, the rule before 2026-12-06; docs/FUSION.md)", group=MODEL,
                                 choices=("classifier", "fused"))
    fusion_quantile: float = param(0.999, "fusion: per vehicle mode, the share of attack-free validation windows "
                                   "scored below the threshold (1 - the false-positive budget)", group=MODEL,
                                   low=0.5, high=1)
    id_dropout: float = param(0.2, "training-time share of node IDs replaced by the OOV bucket", group=MODEL, low=0, high=1)
    vehicle_dropout: float = param(0.25, "training-time share of windows whose IDs are ALL hidden (unknown-vehicle "
                                   "augmentation)", group=MODEL, low=0, high=1)
    # --- optimisation
    epochs: int = param(20, "maximum epochs", group=OPTIM, low=1, panel=True)
    batch_size: int = param(64, "graphs per batch", group=OPTIM, low=1, panel=True)
    learning_rate: float = param(2e-3, "AdamW peak learning rate", group=OPTIM, low=0)
    weight_decay: float = param(1e-4, "AdamW weight decay", group=OPTIM, low=0)
    scheduler: str = param("cosine", "learning-rate schedule, stepped per optimizer step", group=OPTIM,
                           choices=("cosine", "onecycle", "none"))
    warmup_steps: int = param(20, "linear warm-up steps before cosine decay", group=OPTIM, low=0)
    grad_clip: float = param(1.0, "max gradient norm (0 = off)", group=OPTIM, low=0)
    lr_scaling: str = param("sqrt", "with N data-parallel processes the global batch is N x batch_size: the peak "
                            "learning rate is multiplied by sqrt(N) (AdamW's square-root rule) | N (linear) | none",
                            group=OPTIM, choices=("sqrt", "linear", "none"))
    class_weighting: bool = param(True, "weight cross-entropy by inverse class frequency", group=OPTIM)
    patience: int = param(5, "early stopping: epochs without improvement of the monitored metric", group=OPTIM, low=1)
    seed: int = param(0, "seeds weights, shuffling and id_dropout", group=OPTIM, low=0)
    # --- knowledge distillation (student with a teacher)
    kd_temperature: float = param(4.0, "T in alpha*T^2*KL(softmax(t/T)||softmax(s/T)) + (1-alpha)*CE", group=KD,
                                  low=1e-3, high=100, panel=True)
    kd_alpha: float = param(0.7, "weight of the KD term", group=KD, low=0, high=1, panel=True)
    kd_feature_weight: float = param(0.1, "multi-level KD: weight of projected node-embedding MSE", group=KD, low=0)
    kd_latent_weight: float = param(0.0, "VGAE KD: weight of projected-latent MSE (with the reconstructed features' "
                                    "MSE and the ID logits' KL; 0 = off: they slowed the student's own "
                                    "reconstruction)", group=KD, low=0)
    kd_edge_weight: float = param(1.0, "VGAE KD: weight of matching the teacher's link probabilities (relational "
                                  "KD of the edge decoder)", group=KD, low=0)
    kd_score_weight: float = param(1.0, "fusion KD: weight of matching the teacher's reconstruction errors per part "
                                   "(anomaly-score KD, on a log scale, over every window)", group=KD, low=0)
    kd_augment: str = param("off", "VGAE KD on corrupted copies of the training windows (another node's "
                            "features on a fifth of the nodes): match the teacher's link probabilities and reconstructed "
                            "features there (match) or how much the corruption raises each part of its error (rise); "
                            "measured on hcrl_sa and not better than off (docs/QUALITY.md)", group=KD,
                            choices=("off", "match", "rise"))
    kd_augment_weight: float = param(1.0, "VGAE KD: weight of the kd_augment term", group=KD, low=0)
    # --- hardware and speed
    trainer: str = param("fabric", "fabric | legacy (plain PyTorch baseline)", group=HARDWARE, choices=("fabric", "legacy"))
    preset: str = param("auto", "hardware preset", group=HARDWARE, choices=("auto", *HARDWARE_PRESETS))
    accelerator: str = param("auto", "device kind", group=HARDWARE, choices=("auto", "cpu", "cuda", "gpu"))
    devices: int = param(1, "processes per node (DDP when > 1)", group=HARDWARE, low=1)
    num_nodes: int = param(1, "nodes (under SLURM)", group=HARDWARE, low=1)
    threads: Optional[int] = param(None, "torch CPU threads per process (None: $OMP_NUM_THREADS when set, else every "
                                         "core this process may use, divided among the processes)", group=HARDWARE, low=1)
    strategy: str = param("auto", "distribution strategy", group=HARDWARE, choices=("auto", "ddp", "ddp_spawn"))
    precision: str = param("auto", "numeric precision (auto: the precision policy picks from the hardware)",
                           group=HARDWARE, choices=PRECISIONS, panel=True)
    num_workers: int = param(-1, "DataLoader workers (-1 = from hardware)", group=HARDWARE, low=-1)
    prefetch_factor: int = param(2, "batches prefetched per worker", group=HARDWARE, low=1)
    compile: Union[bool, str] = param("auto", "torch.compile the forward: true | false | auto (on for a GAT on CPU "
                                      "with >= 1500 optimizer steps and attention: stock; the fused attention "
                                      "kernel runs faster eager)",
                                      group=HARDWARE, choices=(True, False, "auto"))
    attention: str = param("auto", "GATv2 attention kernel: auto | fused (one CPU kernel per layer, no per-edge "
                           "tensors; docs/PERFORMANCE.md) | stock (PyG's); auto = fused where it applies", group=HARDWARE,
                           choices=("auto", "fused", "stock"))
    node_budget: int = param(0, ">0: batches by node budget instead of graph count", group=HARDWARE, low=0)
    optimize_batch_size: bool = param(False, "run the DynamicBatchSizer and use its result", group=HARDWARE)
    target_memory_usage: float = param(0.85, "batch sizer: share of device memory to fill (on a CPU: of the RAM "
                                             "available; default: the hardware preset's, 0.85 a100/h100/v100, 0.7 "
                                             "small-gpu, 0.5 cpu)", group=HARDWARE, low=0, high=1)
    min_batch_size: int = param(1, "batch sizer lower bound", group=HARDWARE, low=1)
    max_batch_size: int = param(1024, "batch sizer upper bound", group=HARDWARE, low=1)
    # --- output
    run_name: Optional[str] = param(None, "runs/<run_name>/ (default: <dataset>_<model>_<type>, a distilled "
                                    "student <dataset>_<model>_student_kd)", group=OUTPUT,
                                    check=lambda v: _one_folder(v))
    runs_dir: str = param("runs", "parent of run folders (the graph cache and the synthetic data stay in "
                                        "./runs/cache and ./runs/data: --cache-dir moves both)", group=OUTPUT)
    overwrite: bool = param(False, "replace an existing run folder of the same name (else a reused run name is "
                            "refused; --resume continues one)", group=OUTPUT)
    save_compat: bool = param(True, "also copy the best checkpoint to saved_models/ (beside runs_dir) under the "
                              "guide's names, unless a better one is there", group=OUTPUT)

    def __post_init__(self) -> None:
        check_combination({"type": self.type, "teacher": self.teacher})
        if self.min_batch_size > self.max_batch_size:  # the sizer answered min_batch_size, above its own bound
            raise ValueError(f"config keys min_batch_size {self.min_batch_size} > max_batch_size "
                             f"{self.max_batch_size}: the batch sizer's bounds are the wrong way round")
        if self.stride is None:  # non-overlapping windows of the chosen size
            object.__setattr__(self, "stride", self.window)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def resolved_run_name(self) -> str:
        """``run_name``, or ``<dataset>_<model>_<type>`` (``..._student_kd`` for a student with a teacher):
        a distilled student and the same student trained alone never share a default run folder."""
        if self.run_name:
            return self.run_name
        role = "student_kd" if self.type == "student" and self.teacher else self.type
        return f"{dataset_name(self.dataset)}_{self.model}_{role}"


@dataclass(frozen=True)
class FieldSpec:
    """One schema field as the front ends see it (from :func:`schema`)."""

    name: str
    base: type            # int, float, str or bool (``compile``: bool with choices)
    optional: bool        # None allowed
    default: Any
    help: str
    group: str
    choices: tuple | None
    low: float | None
    high: float | None
    panel: bool
    check: Callable[[Any], None] | None = None
    suggestions: tuple | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def schema(cls: type = TrainConfig) -> list[FieldSpec]:
    """The fields of a run schema (``TrainConfig`` or an extension of it), in declaration order."""
    hints = get_type_hints(cls)
    out = []
    for f in fields(cls):
        hint = hints[f.name]
        args = get_args(hint) if get_origin(hint) is Union else (hint,)
        optional = type(None) in args
        base = next(a for a in args if a is not type(None))
        meta = f.metadata
        choices = meta.get("choices")
        choices = tuple(choices()) if callable(choices) else choices
        suggestions = meta.get("suggestions")
        out.append(FieldSpec(f.name, base, optional, f.default, meta.get("help", ""), meta.get("group", "other"),
                             choices, meta.get("low"), meta.get("high"), bool(meta.get("panel")), meta.get("check"),
                             tuple(suggestions()) if callable(suggestions) else suggestions))
    return out


def _check_value(spec: FieldSpec, value: Any) -> Any:
    key = spec.name
    if value is None:
        if spec.optional:
            return None
        raise ValueError(f"config key {key!r}: null is not allowed (expected {spec.base.__name__})")
    if spec.choices is not None and any(value is c or (type(value) is type(c) and value == c) for c in spec.choices):
        return value
    if spec.choices is not None and spec.base is bool:  # compile: true | false | "auto"
        raise ValueError(f"config key {key!r}: expected one of {', '.join(map(format_value, spec.choices))}, got {value!r}")
    if spec.base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (spec.base is int and isinstance(value, bool)) or not isinstance(value, spec.base):
        raise ValueError(f"config key {key!r}: expected {spec.base.__name__}, got {type(value).__name__} {value!r}")
    if spec.choices is not None:
        raise ValueError(f"config key {key!r}: {value!r} is not one of {', '.join(map(str, spec.choices))}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"config key {key!r}: must be a finite number, got {value!r}")
    if spec.low is not None and spec.high is not None and not spec.low <= value <= spec.high:
        raise ValueError(f"config key {key!r}: must be in [{spec.low:g}, {spec.high:g}], got {value!r}")
    if spec.low is not None and value < spec.low:
        raise ValueError(f"config key {key!r}: must be >= {spec.low:g}, got {value!r}")
    if spec.high is not None and value > spec.high:
        raise ValueError(f"config key {key!r}: must be <= {spec.high:g}, got {value!r}")
    if spec.check is not None:
        try:
            spec.check(value)
        except (ValueError, OSError) as err:
            raise ValueError(f"config key {key!r}: {err}") from None
    return value


def _one_folder(name: str | None) -> None:
    """A run name is one folder below ``runs_dir``: ``../x``, ``..`` or an absolute path wrote a run (and
    ``--overwrite`` would remove files) outside it."""
    if name is None:
        return
    if not name.strip() or name in (".", "..") or "/" in name or "\\" in name or name != name.strip():
        raise ValueError(f"{name!r}: a run name is one folder name below runs_dir (no '/', not '.' or '..', "
                         "not empty); choose where runs go with --runs-dir")


def _below_one(share: float) -> None:
    if share >= 1:
        raise ValueError(f"{share!r}: a window is an attack when its share of attack messages is above this, which "
                         "no window's is at 1; use a value below 1 (0: any attack message makes it an attack window)")


def check_combination(values: dict[str, Any]) -> None:
    """Keys valid alone but not together (the ones ``values`` holds; a missing ``type`` is not
    assumed): a ``teacher`` checkpoint is for a distilled student, a teacher run would ignore it.

    Raises:
        ValueError: naming the keys and what to change.
    """
    if values.get("teacher") and values.get("type") == "teacher":
        raise ValueError(f"config key 'teacher': {values['teacher']!r} is given for a run of type 'teacher'; a "
                         "teacher checkpoint is what a student distils from (type 'student'), a teacher trains "
                         "alone and would ignore it: drop --teacher, or set --type student to distil from it")


# fields whose default the --help text names itself (a hardware preset or the environment fills them)
PRESET_FILLED = ("data_root", "target_memory_usage")

# keys only some model families read: key -> those families (the others accept the key and ignore it)
FAMILY_KEYS: dict[str, tuple[str, ...]] = {
    "latent_dim": ("vgae", "fusion"), "threshold_rule": ("vgae",), "threshold_quantile": ("vgae",),
    "vgae_score": ("vgae",), "combiner": ("fusion",), "unknown_vehicle": ("fusion",), "fusion_quantile": ("fusion",),
    "class_weighting": ("gat", "fusion"), "kd_latent_weight": ("vgae",), "kd_edge_weight": ("vgae",),
    "kd_augment": ("vgae",), "kd_augment_weight": ("vgae",), "kd_score_weight": ("fusion",),
    "kd_temperature": ("gat", "fusion")}  # (a VGAE student matches latents and scores: no softened logits)


def keys_without_effect(cfg: TrainConfig, given) -> list[str]:
    """The keys among ``given`` (the ones a user set) that ``cfg``'s run does not read, each with
    why: a KD key without a teacher, a VGAE key on a GAT run, ``threshold_quantile`` under the
    Youden rule. They were accepted and recorded in config.json as if they had shaped the run."""
    notes = []
    for key in given:
        if key.startswith("kd_") and not (cfg.type == "student" and cfg.teacher):
            notes.append(f"{key} (distillation: --type student --teacher PATH)")
        elif key in FAMILY_KEYS and cfg.model not in FAMILY_KEYS[key]:
            notes.append(f"{key} (read by {' and '.join(FAMILY_KEYS[key])} runs; this run is {cfg.model})")
        elif key == "threshold_quantile" and cfg.threshold_rule == "youden":
            notes.append(f"{key} (read by threshold_rule quantile; this run uses youden)")
        elif key == "warmup_steps" and cfg.scheduler != "cosine":
            notes.append(f"{key} (read by scheduler cosine; this run uses {cfg.scheduler})")
    return notes


def family_keys_set_unread(cfg: TrainConfig) -> list[str]:
    """The :data:`FAMILY_KEYS` ``cfg`` sets away from their defaults that its model family does not
    read, as :func:`keys_without_effect` words them: said by every front end's run (the notebooks pass
    every parameter, so a key set to its default says nothing; a fusion student's kd_edge_weight 50
    trained to the same loss as 1)."""
    defaults = {f.name: f.default for f in fields(cfg)}
    return keys_without_effect(cfg, [k for k, families in FAMILY_KEYS.items()
                                     if cfg.model not in families and getattr(cfg, k) != defaults[k]])


def validate_overrides(overrides: dict[str, Any], cls: type = TrainConfig) -> dict[str, Any]:
    """Check keys, types, choices and ranges of user overrides, and the keys given together
    (:func:`check_combination`); return them with ints widened to floats.

    Raises:
        ValueError: naming the key, the value and what is allowed (unknown keys list the valid ones).
    """
    specs = {s.name: s for s in schema(cls)}
    out = {}
    for key, value in overrides.items():
        if key not in specs:
            hint = _key_hint(key, specs)
            raise ValueError(f"unknown config key {key!r}{hint}; valid keys: {', '.join(specs)}")
        out[key] = _check_value(specs[key], value)
    check_combination(out)
    return out


def parse_config_json(text: str | None, cls: type = TrainConfig, source: str = "--config") -> dict[str, Any]:
    """``--config`` JSON (a string, or ``@file.json``) -> validated overrides. Errors name ``source``
    (where the JSON came from: ``--config``, the panel's ``Extra config``) and the file."""
    data = read_config_json(text, source)
    try:
        return validate_overrides(data, cls)
    except ValueError as err:
        if text and text.startswith("@"):
            raise ValueError(f"{source} {text}: {err}") from err
        raise


def read_config_json(text: str | None, source: str = "--config") -> dict[str, Any]:
    """``--config`` JSON (a string, or ``@file.json``) -> a dict, not yet validated; errors name ``source``."""
    if not text:
        return {}
    where = source
    if text.startswith("@"):
        where = f"{source} {text}"
        try:
            with open(text[1:], encoding="utf-8") as handle:
                text = handle.read()
        except OSError as err:
            raise ValueError(f"{where}: cannot read the file ({err.strerror or err}); @FILE names a JSON file "
                             "of config keys, relative to the current directory") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(data).__name__}")
    return data


def detect_preset() -> str:
    """The hardware preset for this machine (from the GPU name, else ``cpu``)."""

    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name(0).lower()
    for key in ("h100", "h200", "a100", "v100"):
        if key in name:
            return "h100" if key == "h200" else key
    total = torch.cuda.get_device_properties(0).total_memory
    return "small-gpu" if total < 16 * 2**30 else "a100"


def make_config(cls: type = TrainConfig, /, **overrides: Any) -> TrainConfig:
    """Build a validated run config: defaults <- hardware preset <- dataset spec <- user overrides.

    The preset and a dataset spec's ``window``/``stride`` only fill keys the user did not set. ``cls`` is the schema (``TrainConfig``
    unless a caller extends it).
    """
    user = validate_overrides(dict(overrides), cls)
    preset = user.get("preset", "auto")
    preset_name = detect_preset() if preset == "auto" else preset
    base = {k: v for k, v in HARDWARE_PRESETS[preset_name].items() if k not in user}
    if base.get("precision") and "precision" not in user:
        base["precision"] = "auto"  # the precision policy decides from the hardware unless the user says
    dataset = user.get("dataset", getattr(cls, "dataset", None))
    if isinstance(dataset, str):
        spec = dataset_defaults(dataset)
        if "window" in user:  # the spec's stride was meant for the spec's window: it follows the user's
            spec.pop("stride", None)
        base.update({k: v for k, v in spec.items() if k not in user})
    if os.environ.get("KDKIT_EPOCHS") and "epochs" not in user:  # smoke runs in CI
        base["epochs"] = int(os.environ["KDKIT_EPOCHS"])
    merged = {**base, **user}
    merged.setdefault("preset", preset)
    return cls(**merged)


def format_value(value: Any) -> str:
    """A default or choice as users type it: ``none``, ``true``, ``0.002``, ``gat``."""
    return "none" if value is None else value if isinstance(value, str) else json.dumps(value)


# a model's own option names (as the presets and checkpoints write them) -> the run-schema key that sets them
MODEL_OPTION_KEYS = {"num_layers": "layers", "encoder_layers": "layers", "decoder_layers": "layers",
                     "vgae_layers": "layers", "encoder_heads": "heads", "decoder_heads": "heads"}
_FUSION_PRESET = "; a fusion model keeps its preset's (its layers and heads set the GAT encoder)"
MODEL_OPTION_HINTS = {  # what each says when given as a config key
    "num_layers": "is set by the config key 'layers' (gat, fusion)",
    "encoder_layers": "is set by the config key 'layers' (vgae)",
    "encoder_heads": "is set by the config key 'heads' (vgae)",
    "decoder_layers": "is set by the config key 'layers' for a vgae model" + _FUSION_PRESET,
    "decoder_heads": "is set by the config key 'heads' for a vgae model (half of them)" + _FUSION_PRESET,
    "vgae_layers": "is the depth of a fusion teacher's VGAE encoder, which keeps its preset's (the config key "
                   "'layers' sets the GAT encoder)"}
RUN_SCHEMA_MODEL_KEYS = ("dropout", "id_dropout")  # set by the run schema for every model, whatever the preset


def _key_hint(key: str, names) -> str:
    """``"; did you mean 'layers'?"`` for a misspelt key or a model option's own name, else ``""``."""
    if key in MODEL_OPTION_KEYS:
        return f"; the model option {key} {MODEL_OPTION_HINTS[key]}"
    close = difflib.get_close_matches(key, list(names), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def list_configs(cls: type = TrainConfig) -> str:
    """Every preset and every config key with its default and meaning (``--list-configs``)."""
    lines = ["Model presets (--model/--type; the model's own option names: hidden, embedding_dim and "
             "layers (num_layers, encoder_layers, decoder_layers) and heads set them; dropout and id_dropout "
             "are the config keys below, for every model):"]
    for name, preset in PRESETS.items():
        shown = {size: {k: v for k, v in opts.items() if k not in RUN_SCHEMA_MODEL_KEYS} for size, opts in preset.items()}
        lines.append(f"  {name:<14} {json.dumps(shown)}")
    lines.append("\nHardware presets (--preset NAME; auto-detected: " + detect_preset() + "):")
    for name, preset in HARDWARE_PRESETS.items():
        lines.append(f"  {name:<14} {json.dumps(preset)}")
    lines.append("\nConfig keys (kdkit train --key-name VALUE, or --config JSON):")
    group = None
    for s in schema(cls):
        if s.group != group:
            group = s.group
            lines.append(f"  -- {group}")
        allowed = f" [{' | '.join(map(format_value, s.choices))}]" if s.choices and s.name != "dataset" else ""
        required = " (kdkit train: required)" if s.name == "dataset" else ""
        lines.append(f"  {s.name:<22} default {json.dumps(s.default):<12} {s.help}{allowed}{required}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line
def _cli_type(spec: FieldSpec):
    """argparse ``type=`` for a field: the base type, ``none`` for optional ones, ``compile``'s words."""
    def convert(text: str):
        low = text.strip().lower()
        if spec.optional and low in ("none", "null"):
            return None
        if spec.base is bool:
            words = {"true": True, "on": True, "1": True, "false": False, "off": False, "0": False, "auto": "auto"}
            if low in words and (words[low] != "auto" or spec.choices):
                return words[low]
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(map(format_value, spec.choices or (True, False)))}")
        try:
            return spec.base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {spec.base.__name__}, got {text!r}") from None
    convert.__name__ = spec.base.__name__
    return convert


def add_config_arguments(parser: argparse.ArgumentParser, cls: type = TrainConfig, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per schema field, grouped by section, with its help and default.

    Unset flags are absent from the parsed namespace (``argparse.SUPPRESS``), so
    :func:`overrides_from_args` returns exactly what the user typed. Booleans get
    ``--flag/--no-flag``; optional fields accept ``none``.
    """
    groups: dict[str, Any] = {}
    for s in schema(cls):
        if s.name in skip:
            continue
        group = groups.setdefault(s.group, parser.add_argument_group(f"config: {s.group}"))
        shown = (s.help if s.name in PRESET_FILLED else  # their help says where the default comes from
                 f"{s.help} (default {format_value(s.default)})" if s.name != "dataset" else
                 f"{s.help} (required: a run names its data; make_config's default in Python is "
                 f"{format_value(s.default)})")
        if s.base is bool and not s.choices:
            group.add_argument(s.flag, dest=s.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=shown)
        elif s.choices and s.base is str:
            group.add_argument(s.flag, dest=s.name, choices=s.choices, default=argparse.SUPPRESS, help=shown,
                               metavar="{" + ",".join(s.choices) + "}" if s.name != "dataset" else "NAME")
        else:
            metavar = {int: "INT", float: "FLOAT", bool: "{true,false,auto}"}.get(s.base)  # str: the key's name
            group.add_argument(s.flag, dest=s.name, type=_cli_type(s), default=argparse.SUPPRESS, help=shown,
                               metavar=metavar)


def overrides_from_args(args: argparse.Namespace, cls: type = TrainConfig) -> dict[str, Any]:
    """The schema fields the user set on the command line, as ``make_config`` keywords."""
    given = vars(args)
    return {s.name: given[s.name] for s in schema(cls) if s.name in given}


def to_argv(overrides: dict[str, Any], cls: type = TrainConfig) -> list[str]:
    """The ``kdkit train`` arguments that reproduce ``overrides`` (the inverse of the parser).

    Used to write SLURM job scripts: every value is validated first, so a bad key or value
    is refused before anything is submitted.
    """
    specs = {s.name: s for s in schema(cls)}
    argv: list[str] = []
    for key, value in validate_overrides(overrides, cls).items():
        spec = specs[key]
        if value is None:
            argv += [spec.flag, "none"]
        elif spec.base is bool and not spec.choices:
            argv.append(spec.flag if value else "--no-" + spec.flag[2:])
        elif isinstance(value, bool):
            argv += [spec.flag, "true" if value else "false"]
        else:
            argv += [spec.flag, repr(value) if isinstance(value, float) else str(value)]
    return argv
