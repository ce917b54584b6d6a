"""The graph neural networks and what is computed from their outputs.

Owns the shared building blocks (:mod:`.layers`), the GAT classifier (:mod:`.gat`), the
VGAE autoencoder and its reconstruction errors (:mod:`.vgae`), presets and construction
from a stored config (:mod:`.registry`), thresholds on scores (:mod:`.thresholds`), the
knowledge-distillation losses (:mod:`.distill`), the GAT's inference pass for export
and gateways (:mod:`.scorer`) and its one-window compiled engine for the live detector
(:mod:`.native`).

Layer 1: may import :mod:`kdkit.data` only.
"""
from kdkit.models.gat import GATClassifier
from kdkit.models.native import NativeGAT
from kdkit.models.registry import PRESETS, build_model, count_parameters, model_from_config, model_size_bytes
from kdkit.models.scorer import GATScorer
from kdkit.models.vgae import VGAE

__all__ = ["GATClassifier", "VGAE", "GATScorer", "NativeGAT", "PRESETS", "build_model", "count_parameters", "model_from_config",
           "model_size_bytes"]
