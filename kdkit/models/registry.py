"""Model presets (teacher/student sizes per family), construction by name or from a stored
config, and parameter/size counts.

    from kdkit.models import build_model
    model = build_model("gat", "student", num_node_features, num_edge_features, num_ids)
"""
from __future__ import annotations

import inspect
from typing import Any

from kdkit.models.fusion import FusionModel
from kdkit.models.gat import GATClassifier
from kdkit.models.layers import GraphModel, count_parameters, model_size_bytes  # noqa: F401 (public here)
from kdkit.models.vgae import VGAE

# Presets from the migration guide. concat_heads differs on purpose: the teachers
# concatenate their heads and project back, the students average them, which keeps a
# student under 10 % of its teacher even with a 2,100-ID embedding.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "gat": {
        "teacher": {"hidden": 64, "num_layers": 5, "heads": 8, "embedding_dim": 16,
                    "concat_heads": True, "jk": "cat", "dropout": 0.2},
        # one head (14 k parameters, 2.6 % of the teacher): on hcrl_sa, DAGA and the simulator
        # (3 seeds each) its F1 is within the seed spread of the 4-head student (36 k) it
        # replaced on 2026-12-05, at a quarter of the attention arithmetic per message
        # (docs/QUALITY.md, "A lighter GAT student"; replay 0.9-1.6 M messages/s instead of 0.6-1.05 M)
        "student": {"hidden": 32, "num_layers": 3, "heads": 1, "embedding_dim": 8,
                    "concat_heads": False, "jk": "cat", "dropout": 0.1},
    },
    "vgae": {
        "teacher": {"hidden": 64, "latent_dim": 32, "encoder_layers": 4, "decoder_layers": 4,
                    "encoder_heads": 8, "decoder_heads": 4, "embedding_dim": 16,
                    "concat_heads": True},
        # hidden 40 / latent 20 (47 k parameters, 7.5 % of the teacher): at hidden 32 / latent 16
        # (31 k) the student could not learn the neighbourhood reconstruction that finds unknown
        # attacks (docs/QUALITY.md, "VGAE students": hcrl_sa test_03 F1 of the KD student 0.43-0.79 over
        # 3 seeds at 32 / 16, 0.76-0.93 at 40 / 20; wider ones alarm more on the known car)
        "student": {"hidden": 40, "latent_dim": 20, "encoder_layers": 2, "decoder_layers": 2,
                    "encoder_heads": 4, "decoder_heads": 2, "embedding_dim": 8,
                    "concat_heads": False},
    },
    # the teacher is the pair (a GAT and a VGAE of the sizes above, trained together); the student
    # is one shared encoder with a classification and a reconstruction head
    "fusion": {
        "teacher": {"shared_encoder": False, "hidden": 64, "num_layers": 5, "heads": 8, "embedding_dim": 16,
                    "concat_heads": True, "latent_dim": 32, "vgae_layers": 4, "decoder_layers": 4,
                    "decoder_heads": 4},
        "student": {"shared_encoder": True, "hidden": 32, "num_layers": 3, "heads": 4, "embedding_dim": 8,
                    "concat_heads": False, "latent_dim": 16, "decoder_layers": 1, "decoder_heads": 2},
    },
}


MODEL_CLASSES: dict[str, type[GraphModel]] = {"gat": GATClassifier, "vgae": VGAE, "fusion": FusionModel}

# Sane upper bounds of a model's shape options, checked before anything is allocated: a
# checkpoint's model_config (or a typo such as --hidden 100000) must not make kdkit build a
# model of many gigabytes. They are far above anything a CAN-bus IDS needs (the teacher
# presets use hidden 64, 5 layers, 8 heads, embedding 16). Any family's option of these
# names is bounded; other options are only type-checked.
SHAPE_LIMITS: dict[str, int] = {
    "hidden": 4096, "mlp_hidden": 4096, "embedding_dim": 4096, "latent_dim": 4096,
    "num_layers": 64, "encoder_layers": 64, "decoder_layers": 64,
    "heads": 64, "encoder_heads": 64, "decoder_heads": 64,
    "num_node_features": 4096, "num_edge_features": 4096, "num_ids": 2**21, "num_classes": 1024,
}


def _check_overrides(cls: type, overrides: dict[str, Any]) -> None:
    defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    for key, value in overrides.items():
        if key not in defaults:
            raise ValueError(f"unknown {cls.__name__} option {key!r}; valid: {sorted(defaults)}")
        want = type(defaults[key])
        ok = (defaults[key] is None and (value is None or isinstance(value, int))
              or isinstance(value, want) and not (want is not bool and isinstance(value, bool))
              or want is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise TypeError(f"{cls.__name__} option {key}={value!r}: expected {want.__name__}")
    check_shape_limits(overrides, cls.__name__)


def check_shape_limits(options: dict[str, Any], what: str) -> None:
    """Refuse shape options outside :data:`SHAPE_LIMITS` (or below their minimum) before a model is built.

    Args:
        options: constructor options (a ``model.config`` or overrides).
        what: names the model in the message (a class name, or a checkpoint path).

    Raises:
        ValueError: naming the option, its value and the allowed range.
    """
    for key, high in SHAPE_LIMITS.items():
        value = options.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, int):
            continue
        low = 0 if key == "num_edge_features" else 1
        if not low <= value <= high:
            raise ValueError(f"{what}: model option {key}={value:,} is outside {low}..{high:,}; "
                             "kdkit refuses to build a model of that size (a corrupted or foreign model config?)")


def check_sizes(kind: str, size: str, hidden: int | None = None, embedding_dim: int | None = None) -> None:
    """The CAN-ID embedding takes part of each node's ``hidden`` channels, so it must be narrower,
    whether each size is given or the preset's (``None``). Cheap: a run checks it before its data.

    Raises:
        ValueError: naming both sizes, whose each is, and what to change.
    """
    preset = PRESETS.get(kind, {}).get(size, {})
    h, e = hidden or preset.get("hidden"), embedding_dim or preset.get("embedding_dim")
    if h is None or e is None or 0 < e < h:
        return

    def whose(given):
        return "" if given else f" (the {kind} {size} preset's)"

    raise ValueError(f"embedding_dim={e}{whose(embedding_dim)} must be below hidden={h}{whose(hidden)}: the CAN-ID "
                     f"embedding takes part of each node's hidden channels; set embedding_dim below {h} (e.g. "
                     f"{max(1, h // 4)}) or a larger hidden")


def build_model(kind: str, size: str, num_node_features: int, num_edge_features: int,
                num_ids: int, **overrides: Any) -> GraphModel:
    """Build a preset model.

    Args:
        kind: "gat" (supervised classifier), "vgae" (unsupervised autoencoder) or "fusion" (both:
            a teacher pair, or a two-headed student).
        size: "teacher" or "student".
        num_node_features: width of ``batch.x``.
        num_edge_features: width of ``batch.edge_attr``.
        num_ids: ID vocabulary size including the OOV bucket 0.
        **overrides: any constructor option of the model class, type-checked.

    Returns:
        The model; ``model.config`` rebuilds it with ``model_from_config``.
    """
    if kind not in PRESETS or size not in PRESETS[kind]:
        raise ValueError(f"unknown model {kind!r}/{size!r}; choose kind from {sorted(PRESETS)} "
                         f"and size from ['student', 'teacher']")
    cls = MODEL_CLASSES[kind]
    _check_overrides(cls, overrides)
    check_shape_limits({"num_node_features": num_node_features, "num_edge_features": num_edge_features,
                        "num_ids": num_ids}, cls.__name__)
    return cls(num_node_features, num_edge_features, num_ids, **{**PRESETS[kind][size], **overrides})


def model_from_config(config: dict[str, Any]) -> GraphModel:
    """Rebuild a model (fresh weights) from its ``model.config`` dict.

    The options are type-checked and their shapes bounded (:data:`SHAPE_LIMITS`) first; build it
    under ``torch.device("meta")`` to compare shapes without allocating anything.
    """
    cfg = dict(config)
    kind = cfg.pop("kind", None)
    if kind not in MODEL_CLASSES:
        raise ValueError(f"model config kind={kind!r}: expected one of {sorted(MODEL_CLASSES)}")
    _check_overrides(MODEL_CLASSES[kind], {k: v for k, v in cfg.items()
                                           if k not in ("num_node_features", "num_edge_features", "num_ids")})
    for key in ("num_node_features", "num_edge_features", "num_ids"):
        if not isinstance(cfg.get(key), int) or isinstance(cfg.get(key), bool):
            raise TypeError(f"model config {key}={cfg.get(key)!r}: expected int")
    check_shape_limits(cfg, MODEL_CLASSES[kind].__name__)
    return MODEL_CLASSES[kind](**cfg)


