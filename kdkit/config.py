"""One frozen training config, its presets and the validation of ``--config`` JSON.

    kdkit train --list-configs
    kdkit train --model gat --dataset hcrl_sa --type teacher --config '{"epochs": 50, "learning_rate": 0.002}'

The CLI, the notebooks, the widget panel and SLURM jobs all build a :class:`TrainConfig`
through :func:`make_config` and pass it to the same functions. Unknown keys and wrong types
are errors that list the valid keys.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, fields
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

# Hardware presets (the migration guide's tuning section, measured where we could).
HARDWARE_PRESETS: dict[str, dict[str, Any]] = {
    "a100": {"precision": "bf16-mixed", "batch_size": 128, "num_workers": 8, "prefetch_factor": 4, "target_memory_usage": 0.85},
    "h100": {"precision": "bf16-mixed", "batch_size": 256, "num_workers": 8, "prefetch_factor": 4, "target_memory_usage": 0.85},
    "v100": {"precision": "16-mixed", "batch_size": 64, "num_workers": 4, "prefetch_factor": 2, "target_memory_usage": 0.85},
    "small-gpu": {"precision": "32-true", "batch_size": 32, "num_workers": 2, "prefetch_factor": 2, "target_memory_usage": 0.7},
    "cpu": {"precision": "32-true", "batch_size": 64, "num_workers": 0, "prefetch_factor": 2, "target_memory_usage": 0.5},
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs. Defaults are the GAT teacher on CPU.

    Keys (all may be given in ``--config`` JSON):
    """

    # --- what to train
    model: str = "gat"                # gat | vgae
    type: str = "teacher"             # teacher | student
    dataset: str = "synthetic"        # registry key: hcrl_ch, hcrl_sa, set_01..set_04, synthetic
    data_root: Optional[str] = None   # folder holding hcrl-sa/ etc. (default $KDKIT_DATA_ROOT)
    teacher: Optional[str] = None     # teacher checkpoint for a KD student; None trains the student alone
    # --- graphs
    window: int = 100                 # messages per window
    stride: int = 100                 # offset between windows
    label_threshold: float = 0.0      # window is an attack when its attack share > this
    val_fraction: float = 0.2         # contiguous validation block per training file
    synthetic_seed: int = 0           # seed of the built-in synthetic dataset
    # --- model (None = the preset of model/type)
    hidden: Optional[int] = None      # hidden channels per head
    layers: Optional[int] = None      # GAT layers (VGAE: encoder/decoder layers)
    heads: Optional[int] = None       # attention heads
    embedding_dim: Optional[int] = None  # CAN-ID embedding size
    latent_dim: Optional[int] = None  # VGAE latent size
    dropout: float = 0.1              # dropout in the GNN layers
    threshold_rule: str = "quantile"  # VGAE threshold: quantile of attack-free validation scores | youden (labelled validation)
    threshold_quantile: float = 0.99  # the quantile for threshold_rule "quantile"
    id_dropout: float = 0.2           # training-time share of node IDs replaced by the OOV bucket
    vehicle_dropout: float = 0.25     # training-time share of windows whose IDs are ALL hidden (unknown-vehicle augmentation)
    # --- optimisation
    epochs: int = 20                  # maximum epochs
    batch_size: int = 64              # graphs per batch
    learning_rate: float = 2e-3       # AdamW peak learning rate
    weight_decay: float = 1e-4        # AdamW weight decay
    scheduler: str = "cosine"         # cosine | onecycle | none (stepped per optimizer step)
    warmup_steps: int = 20            # linear warm-up steps before cosine decay
    grad_clip: float = 1.0            # max gradient norm (0 = off)
    class_weighting: bool = True      # weight cross-entropy by inverse class frequency
    patience: int = 5                 # early stopping: epochs without improvement of the monitored metric
    seed: int = 0                     # seeds weights, shuffling and id_dropout
    # --- knowledge distillation (student with a teacher)
    kd_temperature: float = 4.0       # T in alpha*T^2*KL(softmax(t/T)||softmax(s/T)) + (1-alpha)*CE
    kd_alpha: float = 0.7             # weight of the KD term
    kd_feature_weight: float = 0.1    # multi-level KD: weight of projected node-embedding MSE
    kd_latent_weight: float = 1.0     # VGAE KD: weight of projected-latent MSE
    # --- hardware and speed
    trainer: str = "fabric"           # fabric | legacy (plain PyTorch baseline)
    preset: str = "auto"              # auto | a100 | h100 | v100 | small-gpu | cpu
    accelerator: str = "auto"         # auto | cpu | cuda | gpu
    devices: int = 1                  # processes per node
    num_nodes: int = 1                # nodes (SLURM)
    strategy: str = "auto"            # auto | ddp
    precision: str = "auto"           # auto | 32-true | 16-mixed | bf16-mixed
    num_workers: int = -1             # DataLoader workers (-1 = from hardware)
    prefetch_factor: int = 2          # batches prefetched per worker
    compile: Union[bool, str] = "auto"  # true | false | "auto" (on for a GAT on CPU with >= 1500 optimizer steps): torch.compile the forward; ~1.5x faster CPU steps after 10-15 s
    node_budget: int = 0              # >0: batches by node budget instead of graph count
    optimize_batch_size: bool = False  # run the DynamicBatchSizer and use its result
    target_memory_usage: float = 0.85  # batch sizer: share of device memory to fill
    min_batch_size: int = 1           # batch sizer lower bound
    max_batch_size: int = 1024        # batch sizer upper bound
    # --- output
    run_name: Optional[str] = None    # runs/<run_name>/ (default: <dataset>_<model>_<type>)
    runs_dir: str = "runs"            # parent of run folders
    save_compat: bool = True          # also copy the best checkpoint to saved_models/ under the guide's names

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def resolved_run_name(self) -> str:
        return self.run_name or f"{self.dataset}_{self.model}_{self.type}"


CHOICES: dict[str, tuple[str, ...]] = {
    "model": ("gat", "vgae"), "threshold_rule": ("quantile", "youden"), "type": ("teacher", "student"), "scheduler": ("cosine", "onecycle", "none"),
    "trainer": ("fabric", "legacy"), "preset": ("auto", *HARDWARE_PRESETS), "accelerator": ("auto", "cpu", "cuda", "gpu"),
    "strategy": ("auto", "ddp", "ddp_spawn"), "precision": ("auto", "32-true", "16-mixed", "bf16-mixed", "32", "16", "bf16"),
}
POSITIVE = ("window", "stride", "epochs", "batch_size", "devices", "num_nodes", "min_batch_size", "max_batch_size")
UNIT_INTERVAL = ("val_fraction", "threshold_quantile", "dropout", "id_dropout", "vehicle_dropout", "kd_alpha", "target_memory_usage", "label_threshold")


def _field_help() -> dict[str, str]:
    """Inline comments of the dataclass fields, read from this file's source."""
    import inspect

    out = {}
    for line in inspect.getsource(TrainConfig).splitlines():
        line = line.strip()
        if ":" in line and "#" in line and not line.startswith("#"):
            name = line.split(":", 1)[0].strip()
            out[name] = line.split("#", 1)[1].strip()
    return out


def _check_type(key: str, value: Any, hint: Any) -> Any:
    if key == "compile":
        if value is True or value is False or value == "auto":
            return value
        raise ValueError(f"config key 'compile': expected true, false or \"auto\", got {value!r}")
    allowed = get_args(hint) if get_origin(hint) is not None else (hint,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ValueError(f"config key {key!r}: null is not allowed (expected {hint.__name__})")
    base = next(a for a in allowed if a is not type(None))
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, bool) or not isinstance(value, base):
        raise ValueError(f"config key {key!r}: expected {base.__name__}, got {type(value).__name__} {value!r}")
    return value


def validate_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """Check keys, types and ranges of user overrides; return them with ints widened to floats."""
    hints = get_type_hints(TrainConfig)
    valid = [f.name for f in fields(TrainConfig)]
    out = {}
    for key, value in overrides.items():
        if key not in hints:
            raise ValueError(f"unknown config key {key!r}; valid keys: {', '.join(valid)}")
        value = _check_type(key, value, hints[key])
        if key in CHOICES and value not in CHOICES[key]:
            raise ValueError(f"config key {key!r}: {value!r} is not one of {', '.join(CHOICES[key])}")
        if key in POSITIVE and value < 1:
            raise ValueError(f"config key {key!r}: must be >= 1, got {value!r}")
        if key in UNIT_INTERVAL and not 0.0 <= value <= 1.0:
            raise ValueError(f"config key {key!r}: must be in [0, 1], got {value!r}")
        out[key] = value
    return out


def parse_config_json(text: str | None) -> dict[str, Any]:
    """``--config`` JSON (a string, or ``@file.json``) -> validated overrides."""
    return validate_overrides(read_config_json(text))


def read_config_json(text: str | None) -> dict[str, Any]:
    """``--config`` JSON (a string, or ``@file.json``) -> a dict, not yet validated."""
    if not text:
        return {}
    if text.startswith("@"):
        with open(text[1:], encoding="utf-8") as handle:
            text = handle.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--config is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from err
    if not isinstance(data, dict):
        raise ValueError(f"--config must be a JSON object, got {type(data).__name__}")
    return data


def detect_preset() -> str:
    """The hardware preset for this machine (from the GPU name, else ``cpu``)."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name(0).lower()
    for key in ("h100", "h200", "a100", "v100"):
        if key in name:
            return "h100" if key == "h200" else key
    total = torch.cuda.get_device_properties(0).total_memory
    return "small-gpu" if total < 16 * 2**30 else "a100"


def make_config(**overrides: Any) -> TrainConfig:
    """Build a validated TrainConfig: defaults <- hardware preset <- user overrides.

    The preset only fills keys the user did not set.
    """
    user = validate_overrides({k: v for k, v in overrides.items()})
    preset = user.get("preset", "auto")
    preset_name = detect_preset() if preset == "auto" else preset
    base = {k: v for k, v in HARDWARE_PRESETS[preset_name].items() if k not in user}
    if base.get("precision") and "precision" not in user:
        base["precision"] = "auto"  # the precision policy decides from the hardware unless the user says
    if os.environ.get("KDKIT_EPOCHS") and "epochs" not in user:  # smoke runs in CI
        base["epochs"] = int(os.environ["KDKIT_EPOCHS"])
    merged = {**base, **user}
    merged.setdefault("preset", preset)
    return TrainConfig(**merged)


def list_configs() -> str:
    """Every preset and every config key with its default and meaning (``--list-configs``)."""
    from kdkit.models import PRESETS

    lines = ["Model presets (--model/--type):"]
    for name, preset in PRESETS.items():
        lines.append(f"  {name:<14} {json.dumps(preset)}")
    lines.append("\nHardware presets (--config '{\"preset\": \"v100\"}'; auto-detected: " + detect_preset() + "):")
    for name, preset in HARDWARE_PRESETS.items():
        lines.append(f"  {name:<14} {json.dumps(preset)}")
    lines.append("\nConfig keys (--config JSON):")
    helps = _field_help()
    for f in fields(TrainConfig):
        default = f.default
        lines.append(f"  {f.name:<22} default {json.dumps(default):<12} {helps.get(f.name, '')}")
    return "\n".join(lines)
