"""Fusion: a supervised classifier and an autoencoder judged together, so known attacks are caught
like the GAT catches them and unknown ones like the VGAE does.

Two shapes of one model family (``kind="fusion"``):

- the teacher *pair* (``shared_encoder=False``): a :class:`~kdkit.models.gat.GATClassifier` and a
  :class:`~kdkit.models.vgae.VGAE`, trained together in one run (cross-entropy on every window,
  reconstruction on the attack-free ones only);
- the *student* (``shared_encoder=True``): one GATv2 encoder with two heads, a classification head
  (JumpingKnowledge, mean+max pooling, MLP) and the VGAE's reconstruction head (latent, decoder, node
  features, tied ID head, inner-product edges), so a gateway runs one model and one ``.pt2``.

Both give, per window, the *parts* of the evidence (:data:`PARTS`): the classifier's attack log-odds,
the three reconstruction errors, the share of the window's nodes whose CAN ID is out of the
vocabulary, and how far the window's IDs are from their own timing profile (:class:`IdProfile`: per
ID, the mean and spread of its rate and intervals over the attack-free training windows; a known
ID sent faster or irregularly, as an injection does, is far from it). A :class:`Combiner` turns them into one score. It is fitted after training on validation
data only (:func:`fit_combiner`): no test folder is read.

Known vehicle or unknown vehicle is an explicit decision of the combiner, per window, from the
number of distinct in-vocabulary IDs in it: a known vehicle's windows hold many of its IDs (and
keep them during an attack that injects new IDs: fuzzing adds IDs, it does not remove the
vehicle's), an unknown vehicle's hold few. Below ``known_id_fraction`` of the low (1 %) quantile
of that count over attack-free validation windows, the window comes from a vehicle the model does
not know, and only the ID-agnostic parts judge it (attack log-odds, feature and edge
reconstruction), calibrated on validation windows whose IDs were all hidden. Otherwise the vehicle
is known, and a never-seen ID is evidence of an attack (the ``oov`` part), not something to
ignore. Each mode has its own standardisation and its own threshold offset, both from validation
windows, so the stored threshold is 0: a window is an attack when ``score >= 0``.
"""
from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import MLP, JumpingKnowledge
from torch_geometric.utils import scatter

from kdkit.data.graphs import NODE_FEATURES
from kdkit.data.loader import graph_loader
from kdkit.models.gat import GATClassifier
from kdkit.models.layers import GraphModel, VGAEOutput, _capture_config, graph_index
from kdkit.models.readout import mean_max_pool
from kdkit.models.thresholds import midway_threshold, quantile_threshold
from kdkit.models.vgae import VGAE, reconstruction_errors

PARTS = ("attack_logit", "feat", "id", "edge", "oov", "profile", "known_ids")
"""What the model says of each window, in the order of :meth:`FusionModel.score_parts`'s columns: the
evidence (the first six) and the number of distinct in-vocabulary IDs, which decides the vehicle mode."""
ID_AGNOSTIC = ("attack_logit", "feat", "edge")
"""The parts that judge a window of an unknown vehicle (its IDs say nothing)."""
LOG_PARTS = ("feat", "id", "edge", "profile")  # reconstruction errors and the profile distance: on a log scale
PROFILE_FEATURES = ("count_frac", "iat_mean", "iat_std")
"""The node features of an ID's timing profile (:class:`IdProfile`): how often it is sent in a window
and the mean and spread of its intervals. Most CAN IDs are periodic, so these are properties of the
vehicle's software, stable across drives; payload bytes follow the driving and are left out."""
PROFILE_MIN_SCALE = 0.02  # floor of a profiled feature's spread (2 % of a window's messages; log1p(ms) units)
PROFILE_MIN_WINDOWS = 20  # attack-free training windows an ID needs before its profile is used
NOT_EVIDENCE = ("known_ids",)  # decides the mode, never adds to the score
COMBINERS = ("max", "logistic", "mlp", "policy")
KNOWN, UNKNOWN = 0, 1  # combiner modes: the vehicle is known / unknown
UNKNOWN_VEHICLE_RULES = ("classifier", "fused")
LOG_EPS = 1e-6
MIN_SCALE = {"oov": 0.01}  # a known vehicle's validation traffic holds no OOV IDs: one new ID among ~30 is ~3 sigma
POLICY_ACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)  # weight of the classifier in the policy combiner


class FusionOutput(NamedTuple):
    """Output of :class:`FusionModel`."""

    logits: Tensor  # [G, 2], the classification head
    recon: VGAEOutput  # the reconstruction head's output
    node_embeddings: list[Tensor]  # the classifier's (pair) or the shared encoder's (student) layers


def masked_vgae_loss(out: VGAEOutput, batch, normal: Tensor, beta: float, id_weight: float,
                     edge_weight: float) -> dict[str, Tensor]:
    """:func:`~kdkit.models.vgae.vgae_loss` over the windows where ``normal`` is True only (attack
    windows are not learned as normal traffic); zeros with a gradient path when there are none."""
    batch_vec, _ = graph_index(batch)
    err = reconstruction_errors(out, batch)
    w = normal.float()
    n = w.sum().clamp(min=1)
    parts = {k: (v * w).sum() / n for k, v in err.items()}
    node_w = w[batch_vec]
    mu, logvar = out.mu.float(), out.logvar.float()
    kl_node = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=-1)
    kl = (kl_node * node_w).sum() / node_w.sum().clamp(min=1)
    total = parts["feat"] + id_weight * parts["id"] + edge_weight * parts["edge"] + beta * kl
    return {"loss": total, **parts, "kl": kl}


class IdProfile(nn.Module):
    """Each known CAN ID's timing profile, and how far a window's IDs are from theirs.

    Fitted (:func:`fit_profile`) on the attack-free training windows: per vocabulary index and
    profiled node feature (:data:`PROFILE_FEATURES`), the mean and the standard deviation (floored at
    :data:`PROFILE_MIN_SCALE`). :meth:`forward` gives per node the largest ``|x - mean| / scale``
    over the profiled features; the window's ``profile`` part is the largest over its nodes. An
    injection of a known ID (more frames of it, shorter intervals) moves its node far from the
    profile even when the graph's shape and the payloads look normal, which a supervised head that
    never saw that attack and an autoencoder that reconstructs what it is given both miss.

    The interval features (``interval`` columns) are undefined for an ID sent once in the window
    (the graph stores 0 there): they are compared only for nodes with two or more messages, against
    statistics of such nodes; a slow ID that training saw once per window is profiled on its count
    alone (its first interval is no evidence of anything).

    OOV nodes, IDs with fewer than :data:`PROFILE_MIN_WINDOWS` attack-free training windows, and every
    node of an unfitted profile count 0: the part says nothing about a vehicle the model does not
    know (the combiner's unknown-vehicle mode leaves it out). Every value is a buffer, saved and
    exported with the model; nothing here is trained by gradient.
    """

    def __init__(self, num_ids: int, num_node_features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_ids, num_node_features))
        self.register_buffer("inv_scale", torch.zeros(num_ids, num_node_features))  # 0: not profiled
        self.register_buffer("interval", torch.zeros(num_node_features))  # 1: defined only with >= 2 messages

    def forward(self, x: Tensor, node_id: Tensor) -> Tensor:
        """Per node, the largest standardised distance from its ID's profile ``[N]`` (0 when unprofiled)."""
        x = x.float()
        once = (x.abs() * self.interval).amax(dim=-1, keepdim=True) <= 0  # [N, 1]: no interval in this window
        weight = self.inv_scale[node_id] * torch.where(once & (self.interval > 0), 0.0, 1.0)
        return ((x - self.mean[node_id]).abs() * weight).amax(dim=-1)

    @property
    def fitted(self) -> bool:
        return bool((self.inv_scale > 0).any())


def profile_feature_index(names: tuple[str, ...] = PROFILE_FEATURES) -> list[int]:
    """Column indices of ``names`` in :data:`kdkit.data.graphs.NODE_FEATURES`."""
    return [list(NODE_FEATURES).index(n) for n in names]


@torch.no_grad()
def fit_profile(profile: IdProfile, gs, features: list[int] | None = None, interval: list[int] | None = None,
                chunk_nodes: int = 1 << 20) -> dict:
    """Fit ``profile`` on the attack-free windows of a GraphSet (the training split); returns a record.

    Args:
        profile: the model's :class:`IdProfile` (filled in place).
        gs: a :class:`kdkit.data.graphs.GraphSet`; only its windows labelled 0 are read, in chunks of
            about ``chunk_nodes`` nodes (a memory-mapped store is never loaded whole).
        features: node-feature columns to profile (default :data:`PROFILE_FEATURES` in kdkit's layout).
        interval: those of them that are undefined (0) for a node with one message (default
            ``iat_mean`` and ``iat_std`` in kdkit's layout; none for another layout).

    Raises:
        ValueError: the graphs' node layout does not hold the profiled features, or no attack-free window.
    """
    num_ids, width = profile.mean.shape
    kdkit_layout = width == len(NODE_FEATURES)
    if features is None:
        if not kdkit_layout:
            raise ValueError(f"fit_profile: the model reads {width} node features, kdkit's layout has "
                             f"{len(NODE_FEATURES)}; pass the columns to profile (features=...)")
        features = profile_feature_index()
    if interval is None:
        interval = [f for f in profile_feature_index(("iat_mean", "iat_std")) if f in features] if kdkit_layout else []
    if gs.x.size(1) != width:
        raise ValueError(f"fit_profile: the graphs have {gs.x.size(1)} node features, the model {width}")
    is_interval = np.zeros(width, bool)
    is_interval[interval] = True
    total = np.zeros((num_ids, width))
    square = np.zeros((num_ids, width))
    count = np.zeros((num_ids, 2))  # nodes per ID: all of them / those with an interval (>= 2 messages)
    node_ptr = gs.node_ptr.numpy()
    normal = gs.y.numpy() == 0
    if not normal.any():
        raise ValueError("fit_profile: no attack-free window to learn the IDs' timing profiles from")
    g = 0
    while g < len(normal):  # graph ranges of about chunk_nodes nodes
        end = int(np.searchsorted(node_ptr, node_ptr[g] + chunk_nodes, side="right")) - 1
        end = min(max(end, g + 1), len(normal))
        n0, n1 = int(node_ptr[g]), int(node_ptr[end])
        keep = np.repeat(normal[g:end], np.diff(node_ptr[g:end + 1]))
        ids = gs.node_id[n0:n1].numpy()[keep]
        x = gs.x[n0:n1].numpy()[keep].astype(np.float64)
        twice = (np.abs(x[:, is_interval]) > 0).any(axis=1) if is_interval.any() else np.ones(len(ids), bool)
        count[:, 0] += np.bincount(ids, minlength=num_ids)
        count[:, 1] += np.bincount(ids[twice], minlength=num_ids)
        for f in features:
            w = np.where(twice, x[:, f], 0.0) if is_interval[f] else x[:, f]
            total[:, f] += np.bincount(ids, weights=w, minlength=num_ids)
            square[:, f] += np.bincount(ids, weights=w ** 2, minlength=num_ids)
        g = end
    n = np.where(is_interval[None, :], count[:, 1:2], count[:, 0:1])  # [ids, features]
    mean = total / np.maximum(n, 1.0)
    std = np.sqrt(np.maximum(square / np.maximum(n, 1.0) - mean ** 2, 0.0))
    use = np.zeros(width, bool)
    use[features] = True
    profiled = use[None, :] & (n >= PROFILE_MIN_WINDOWS)
    profiled[0] = False  # the OOV bucket is no ID
    inv = np.where(profiled, 1.0 / np.maximum(std, PROFILE_MIN_SCALE), 0.0)
    profile.mean.copy_(torch.as_tensor(np.where(profiled, mean, 0.0)))
    profile.inv_scale.copy_(torch.as_tensor(inv))
    profile.interval.copy_(torch.as_tensor(is_interval.astype(np.float32)))
    name = (lambda f: NODE_FEATURES[f]) if kdkit_layout else int
    return {"features": [name(f) for f in features], "interval_features": [name(f) for f in interval],
            "ids_profiled": int(profiled.any(axis=1).sum()),
            "ids_with_intervals_profiled": int(profiled[:, is_interval].any(axis=1).sum()) if is_interval.any() else 0,
            "ids_in_vocabulary": int(num_ids - 1), "attack_free_windows": int(normal.sum()),
            "min_scale": PROFILE_MIN_SCALE, "min_windows": PROFILE_MIN_WINDOWS}


class Combiner(nn.Module):
    """Parts ``[G, 7]`` -> one score ``[G]`` per window; an attack when ``score >= 0``.

    Every parameter is a buffer filled by :func:`fit_combiner` (saved with the model's
    ``state_dict``, exported with it). Per mode (known / unknown vehicle): the parts are
    standardised (``(t - center) / scale``, ``t`` the log of a reconstruction error or of the
    profile distance, the attack log-odds and the OOV share as they are), unused parts masked, combined by ``kind``, and the
    mode's offset (its validation threshold) subtracted:

    - ``max``: the largest standardised part; no learned weight, the calibrated "either head".
    - ``logistic``: a logistic regression on the standardised parts (the log-odds, before the sigmoid).
    - ``mlp``: a one-hidden-layer MLP (ReLU) on the standardised parts.
    - ``policy``: the predecessor's learned policy reduced to its decision: per state (binned
      classifier and anomaly evidence) the weight ``a`` of the classifier in
      ``a * sigmoid(attack log-odds) + (1 - a) * sigmoid(anomaly - its validation 99th percentile)``,
      chosen from :data:`POLICY_ACTIONS` to maximise the class-balanced accuracy of the ``>= 0.5``
      decision on validation windows (a one-step DQN's optimum, found exactly).

    Args:
        kind: one of :data:`COMBINERS`. Default "max".
        hidden: hidden units of the ``mlp`` kind. Default 8.
        bins: state bins per axis of the ``policy`` kind. Default 4.
        known_id_fraction: a window whose number of in-vocabulary IDs is below this fraction of the
            validation windows' low quantile counts as an unknown vehicle. Default 0.5.
        unknown_vehicle: how an unknown vehicle's windows are judged: ``"fused"`` (the ID-agnostic
            parts combined by ``kind``, at the unknown mode's validation threshold) or
            ``"classifier"`` (the attack log-odds alone, an attack when ``>= 0``: the decision the
            classification head learned on ID-hidden training windows; the validation windows are
            the known cars' and set no threshold that carries to another car, docs/FUSION.md).
            Default "fused" (what checkpoints from before the option scored with); new runs take
            the run schema's ``unknown_vehicle``.
    """

    def __init__(self, kind: str = "max", hidden: int = 8, bins: int = 4, known_id_fraction: float = 0.5,
                 unknown_vehicle: str = "fused"):
        super().__init__()
        if kind not in COMBINERS:
            raise ValueError(f"combiner {kind!r}: choose one of {list(COMBINERS)}")
        if unknown_vehicle not in UNKNOWN_VEHICLE_RULES:
            raise ValueError(f"unknown_vehicle {unknown_vehicle!r}: choose one of {list(UNKNOWN_VEHICLE_RULES)}")
        self.unknown_vehicle = unknown_vehicle
        if not 0.0 < known_id_fraction <= 1.0:
            raise ValueError(f"known_id_fraction={known_id_fraction}: must be in (0, 1]")
        self.kind, self.known_id_fraction = kind, known_id_fraction
        p = len(PARTS)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("known_min", torch.ones(()))  # fewer in-vocabulary IDs: an unknown vehicle
        self.register_buffer("center", torch.zeros(2, p))
        self.register_buffer("scale", torch.ones(2, p))
        mask = torch.ones(2, p)
        mask[UNKNOWN] = torch.tensor([float(name in ID_AGNOSTIC) for name in PARTS])
        mask[:, [PARTS.index(name) for name in NOT_EVIDENCE]] = 0.0
        self.register_buffer("mask", mask)
        self.register_buffer("offset", torch.zeros(2))
        self.register_buffer("weight", torch.zeros(2, p))
        self.register_buffer("bias", torch.zeros(2))
        self.register_buffer("w1", torch.zeros(2, hidden, p))
        self.register_buffer("b1", torch.zeros(2, hidden))
        self.register_buffer("w2", torch.zeros(2, hidden))
        self.register_buffer("b2", torch.zeros(2))
        self.register_buffer("edges", torch.zeros(2, 2, bins - 1))  # [mode, axis (classifier, anomaly), edge]
        self.register_buffer("table", torch.full((2, bins, bins), 0.5))  # classifier weight per state
        self.register_buffer("anomaly_center", torch.zeros(2))  # the policy's anomaly "probability 0.5" point

    # -- the parts -> standardised evidence
    @staticmethod
    def transform(parts: Tensor) -> Tensor:
        """Reconstruction errors and the profile distance on a log scale; the other parts as they are."""
        t = parts.float().clone()
        for name in LOG_PARTS:
            i = PARTS.index(name)
            t[:, i] = torch.log(parts[:, i].float().clamp(min=0) + LOG_EPS)
        return t

    def mode(self, parts: Tensor) -> Tensor:
        """``UNKNOWN`` (1) for windows with fewer than ``known_min`` distinct in-vocabulary IDs, else ``KNOWN`` (0)."""
        return (parts[:, PARTS.index("known_ids")] < self.known_min).long()

    def standardise(self, parts: Tensor, mode: Tensor) -> Tensor:
        return (self.transform(parts) - self.center[mode]) / self.scale[mode] * self.mask[mode]

    def anomaly(self, z: Tensor, mode: Tensor) -> Tensor:
        """The largest standardised reconstruction/OOV part the mode uses, ``[G]``."""
        used = self.mask[mode][:, 1:] > 0
        return torch.where(used, z[:, 1:], torch.full_like(z[:, 1:], -1e9)).amax(dim=1)

    def raw(self, z: Tensor, mode: Tensor) -> Tensor:
        """The kind's combined evidence before the mode's offset."""
        if self.kind == "max":
            used = self.mask[mode] > 0
            return torch.where(used, z, torch.full_like(z, -1e9)).amax(dim=1)
        if self.kind == "logistic":
            return (z * self.weight[mode]).sum(dim=1) + self.bias[mode]
        if self.kind == "mlp":
            h = torch.relu(torch.einsum("ghp,gp->gh", self.w1[mode], z) + self.b1[mode])
            return (h * self.w2[mode]).sum(dim=1) + self.b2[mode]
        cls, anom = z[:, 0], self.anomaly(z, mode)
        a = self.table[mode, self._bin(cls, mode, 0), self._bin(anom, mode, 1)]
        cls_p = torch.sigmoid(cls * self.scale[mode, 0] + self.center[mode, 0])  # back to the attack probability
        return a * cls_p + (1 - a) * torch.sigmoid(anom - self.anomaly_center[mode])

    def _bin(self, v: Tensor, mode: Tensor, axis: int) -> Tensor:
        return (v.unsqueeze(1) > self.edges[mode, axis]).sum(dim=1)

    def forward(self, parts: Tensor) -> Tensor:
        """The fused score ``[G]``: the mode's combined evidence minus its validation threshold (with
        ``unknown_vehicle="classifier"``, an unknown vehicle's windows score their attack log-odds)."""
        mode = self.mode(parts)
        score = self.raw(self.standardise(parts, mode), mode) - self.offset[mode]
        if self.unknown_vehicle == "classifier":
            score = torch.where(mode == UNKNOWN, parts[:, PARTS.index("attack_logit")].float(), score)
        return score


class FusionModel(GraphModel):
    """The fusion family: a GAT + VGAE teacher pair, or a two-headed student on one encoder.

    Args:
        num_node_features, num_edge_features, num_ids: the graph layout (as every kdkit model).
        shared_encoder: False builds the teacher pair (two models), True the two-headed student.
        hidden: node width of every GATv2 stack. Default 32.
        num_layers: layers of the classifier (pair) or of the shared encoder (student). Default 3.
        heads: attention heads of those layers. Default 4.
        embedding_dim: CAN-ID embedding width. Default 8.
        concat_heads: concatenate heads and project (True) or average them. Default False.
        latent_dim: VGAE latent width. Default 16.
        vgae_layers: the pair's VGAE encoder layers (the student's encoder is shared). Default 2.
        decoder_layers: VGAE decoder layers. Default 2.
        decoder_heads: heads per decoder layer. Default 2.
        dropout: dropout after each layer. Default 0.1.
        id_dropout: training-time share of node IDs replaced by OOV 0. Default 0.2.
        beta: KL weight of the reconstruction loss. Default 0.01.
        id_weight, edge_weight: weights of the ID and edge reconstruction terms. Default 1.0.
        recon_weight: weight of the reconstruction loss beside the cross-entropy. Default 1.0.
        combiner: how the parts become one score (:data:`COMBINERS`). Default "max".
        combiner_hidden: hidden units of the ``mlp`` combiner. Default 8.
        known_id_fraction: see :class:`Combiner`. Default 0.5.
        unknown_vehicle: see :class:`Combiner`. Default "fused" (a model config without the key
            predates it); ``kdkit train`` sets the run schema's value.
    """

    objective = "fuse"
    fast_readout = True  # the fused CPU readout (kdkit.models.readout); set_attention_kernel "stock": PyG's

    @classmethod
    def options_from_run(cls, run: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"id_dropout": run.id_dropout, "dropout": run.dropout}
        for key, option in (("hidden", "hidden"), ("embedding_dim", "embedding_dim"), ("layers", "num_layers"),
                            ("heads", "heads"), ("latent_dim", "latent_dim")):
            if getattr(run, key) is not None:
                out[option] = getattr(run, key)
        if getattr(run, "combiner", None):
            out["combiner"] = run.combiner
        if getattr(run, "unknown_vehicle", None):
            out["unknown_vehicle"] = run.unknown_vehicle
        return out

    def __init__(self, num_node_features: int, num_edge_features: int, num_ids: int, shared_encoder: bool = True,
                 hidden: int = 32, num_layers: int = 3, heads: int = 4, embedding_dim: int = 8,
                 concat_heads: bool = False, latent_dim: int = 16, vgae_layers: int = 2, decoder_layers: int = 2,
                 decoder_heads: int = 2, dropout: float = 0.1, id_dropout: float = 0.2, beta: float = 0.01,
                 id_weight: float = 1.0, edge_weight: float = 1.0, recon_weight: float = 1.0,
                 combiner: str = "max", combiner_hidden: int = 8, known_id_fraction: float = 0.5,
                 unknown_vehicle: str = "fused"):
        config = _capture_config("fusion", locals())
        super().__init__()
        self.config = config
        vgae_options = {"hidden": hidden, "latent_dim": latent_dim, "decoder_layers": decoder_layers,
                        "encoder_heads": heads, "decoder_heads": decoder_heads, "embedding_dim": embedding_dim,
                        "concat_heads": concat_heads, "dropout": dropout, "id_dropout": id_dropout, "beta": beta,
                        "id_weight": id_weight, "edge_weight": edge_weight}
        if shared_encoder:
            # one encoder: the VGAE's; the classification head reads its layers
            self.autoencoder = VGAE(num_node_features, num_edge_features, num_ids,
                                    encoder_layers=num_layers, **vgae_options)
            self.jk = JumpingKnowledge("cat")
            self.head = MLP([2 * hidden * num_layers, hidden, 2], act="elu", dropout=dropout, norm=None)
        else:
            self.classifier = GATClassifier(num_node_features, num_edge_features, num_ids, hidden=hidden,
                                            num_layers=num_layers, heads=heads, embedding_dim=embedding_dim,
                                            concat_heads=concat_heads, dropout=dropout, id_dropout=id_dropout)
            self.autoencoder = VGAE(num_node_features, num_edge_features, num_ids,
                                    encoder_layers=vgae_layers, **vgae_options)
        self.profile = IdProfile(num_ids, num_node_features)
        self.combiner = Combiner(combiner, combiner_hidden, known_id_fraction=known_id_fraction,
                                 unknown_vehicle=unknown_vehicle)

    @staticmethod
    def upgrade_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
        """A state dict from before the ``profile`` part (six parts, no :class:`IdProfile`) in the
        current layout: the profile unfitted and the part masked out of the combiner, so the model
        scores exactly as it did. Current state dicts are returned as they are."""
        if "profile.mean" in state and "profile.interval" not in state:  # a profile without undefined intervals
            return {**state, "profile.interval": torch.zeros(state["profile.mean"].size(1))}
        if "profile.mean" in state or "combiner.center" not in state or state["combiner.center"].size(-1) != 6:
            return state
        at = PARTS.index("profile")
        out = dict(state)
        pads = {"center": 0.0, "scale": 1.0, "mask": 0.0, "weight": 0.0, "w1": 0.0}
        for name, value in pads.items():
            t = state[f"combiner.{name}"]
            pad = torch.full((*t.shape[:-1], 1), value, dtype=t.dtype)
            out[f"combiner.{name}"] = torch.cat([t[..., :at], pad, t[..., at:]], dim=-1)
        num_ids = state["autoencoder.id_bias"].size(0)
        width = state["autoencoder.feat_out.weight"].size(0)
        out["profile.mean"] = torch.zeros(num_ids, width)
        out["profile.inv_scale"] = torch.zeros(num_ids, width)
        out["profile.interval"] = torch.zeros(width)
        return out

    def forward(self, batch, return_features: bool = False) -> FusionOutput:
        """Both heads on ``batch``. ``return_features`` is accepted for the KD interface (the
        output always carries the node embeddings)."""
        recon = self.autoencoder(batch)
        if self.config["shared_encoder"]:
            batch_vec, num_graphs = graph_index(batch)
            nodes = self.jk(recon.node_embeddings)
            graph = mean_max_pool(nodes, batch_vec, num_graphs, fused=self.fast_readout)
            return FusionOutput(self.head(graph), recon, recon.node_embeddings)
        out = self.classifier(batch, return_features=True)
        return FusionOutput(out.logits, recon, out.node_embeddings)

    def loss(self, batch, out: FusionOutput | None = None, class_weight: Tensor | None = None) -> dict[str, Tensor]:
        """``CE(logits, y) + recon_weight * VGAE loss on the attack-free windows``; parts detached."""
        out = self(batch) if out is None else out
        c = self.config
        ce = F.cross_entropy(out.logits.float(), batch.y, weight=class_weight)
        rec = masked_vgae_loss(out.recon, batch, batch.y == 0, c["beta"], c["id_weight"], c["edge_weight"])
        total = ce + c["recon_weight"] * rec["loss"]
        return {"loss": total, "ce": ce.detach(), "recon": rec["loss"].detach(),
                **{k: v.detach() for k, v in rec.items() if k != "loss"}}

    def score_parts(self, batch, out: FusionOutput | None = None) -> Tensor:
        """What the model says of each window, ``[G, 7]`` in the order of :data:`PARTS`."""
        out = self(batch) if out is None else out
        batch_vec, num_graphs = graph_index(batch)
        err = reconstruction_errors(out.recon, batch)
        logits = out.logits.float()
        oov = (batch.node_id == 0).float()
        unseen = torch.zeros(num_graphs, device=logits.device).index_add(0, batch_vec, oov)
        known = torch.zeros(num_graphs, device=logits.device).index_add(0, batch_vec, 1.0 - oov)
        far = scatter(self.profile(batch.x, batch.node_id), batch_vec, 0, dim_size=num_graphs, reduce="max")
        return torch.stack([logits[:, 1] - logits[:, 0], err["feat"], err["id"], err["edge"],
                            unseen / (unseen + known).clamp(min=1), far, known], dim=1)

    def window_score(self, batch) -> Tensor:
        """The fused score per window (an attack when ``>= 0``); needs a fitted combiner."""
        if not bool(self.combiner.fitted):
            raise RuntimeError("the fusion model's combiner is not fitted: kdkit train fits it on validation data "
                               "(kdkit.models.fusion.fit_combiner); a checkpoint from before that step cannot score")
        return self.combiner(self.score_parts(batch))

    @property
    def embedding_dims(self) -> list[int]:
        return [self.config["hidden"]] * self.config["num_layers"]


# ----------------------------------------------------------------------------- fitting on validation
def hide_ids(batch):
    """A copy of ``batch`` whose every node ID is the OOV bucket: how an unknown vehicle looks."""
    hidden = batch.clone()
    hidden.node_id = torch.zeros_like(batch.node_id)
    return hidden


TAIL_Z = 2.326  # a normal distribution's 99th percentile, in standard deviations


def _standardisation(t: np.ndarray, normal: np.ndarray, used: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per part: the median of the attack-free windows, and a scale that is at least their standard
    deviation, their IQR / 1.349, and (99th percentile - median) / 2.326: a part with a heavy upper
    tail has its 99th percentile where a normal one's is, so its tail does not set the ``max``
    combiner's threshold for every other part (an injection that only the ID profiles see would
    otherwise need the reconstruction errors' extreme windows' score to count)."""
    ref = t[normal] if normal.any() else t
    center = np.median(ref, axis=0)
    q75, q25, q99 = np.percentile(ref, [75, 25, 99], axis=0)
    scale = np.maximum.reduce([ref.std(axis=0), (q75 - q25) / 1.349, (q99 - center) / TAIL_Z, np.full_like(center, 1e-3)])
    for name, low in MIN_SCALE.items():
        i = PARTS.index(name)
        scale[i] = max(scale[i], low)
    return np.where(used, center, 0.0), np.where(used, scale, 1.0)


def _class_balanced(y: np.ndarray) -> np.ndarray:
    counts = np.maximum(np.bincount(y, minlength=2), 1)
    return (len(y) / (2.0 * counts))[y]


def fit_combiner(combiner: Combiner, known: tuple[np.ndarray, np.ndarray], unknown: tuple[np.ndarray, np.ndarray],
                 quantile: float = 0.999, seed: int = 0, reference: np.ndarray | None = None,
                 keep_weights: bool = False) -> dict:
    """Fit every buffer of ``combiner`` on validation parts; returns a record of the fit.

    Args:
        combiner: the model's :class:`Combiner` (filled in place).
        known: ``(parts [n, 7], labels [n])`` of the validation windows as they are.
        unknown: the same windows with every ID hidden (:func:`hide_ids`): the unknown-vehicle view.
        quantile: per mode, the share of attack-free validation windows that must score below the
            threshold (a false-positive budget of ``1 - quantile``). Default 0.999.
        seed: seeds the ``mlp`` fit.
        reference: ``[n]`` bool, the attack-free windows that calibrate (standardisation, thresholds,
            the vehicle-mode count); default every attack-free window (see :func:`calibration_windows`).
        keep_weights: re-fit only what attack-free windows set (the vehicle-mode count, the
            standardisation, the thresholds) and keep the learned weights of a ``logistic``/``mlp``/
            ``policy`` combiner: the re-calibration for another car (:func:`adapt_to_vehicle`).

    Only validation data enter: the weights (``logistic``/``mlp``/``policy``) see the labelled
    validation windows; the standardisation and the thresholds only their attack-free (reference) windows.

    Raises:
        ValueError: no attack-free windows in a view, or a learned kind without attack windows.
    """
    record: dict[str, Any] = {"kind": combiner.kind, "quantile": quantile, "modes": {}, "weights_kept": keep_weights}
    state = {k: v.clone() for k, v in combiner.state_dict().items()}
    ref = np.ones(len(known[1]), bool) if reference is None else np.asarray(reference, bool)
    if ref.shape != (len(known[1]),):
        raise ValueError(f"fit_combiner: reference has {ref.shape} entries, the validation windows are {len(known[1])}")
    counts = np.asarray(known[0])[(np.asarray(known[1]) == 0) & ref, PARTS.index("known_ids")]
    if counts.size == 0:
        raise ValueError("fit_combiner: no attack-free validation windows; the thresholds need them")
    state["known_min"] = torch.tensor(max(1.0, combiner.known_id_fraction * float(np.quantile(counts, 0.01))))
    combiner.load_state_dict(state)
    record["known_vehicle_min_ids"] = float(state["known_min"])
    for mode, (parts, y) in ((KNOWN, known), (UNKNOWN, unknown)):
        name = "known" if mode == KNOWN else "unknown"
        pt = torch.as_tensor(np.asarray(parts), dtype=torch.float32)
        y = np.asarray(y).astype(int)
        in_mode = combiner.mode(pt).numpy() == mode
        if not in_mode.any():  # e.g. a vocabulary so small that every window looks foreign: use them all
            in_mode[:] = True
        pt, y = pt[in_mode], y[in_mode]
        normal = y == 0
        calib = normal & ref[in_mode]
        if not calib.any():  # no reference window in this mode: every attack-free one
            calib = normal
        if not normal.any():
            raise ValueError(f"fit_combiner: no attack-free validation windows of a {name} vehicle; the "
                             "standardisation and the threshold need them")
        if combiner.kind != "max" and normal.all() and not keep_weights:
            raise ValueError(f"fit_combiner: combiner {combiner.kind!r} learns from labelled validation windows, "
                             "and the validation windows hold no attack; use combiner 'max' (attack-free "
                             "validation data suffice for it)")
        used = combiner.mask[mode].numpy() > 0
        t = Combiner.transform(pt).numpy().astype(np.float64)
        center, scale = _standardisation(t, calib, used)
        state["center"][mode] = torch.as_tensor(center)
        state["scale"][mode] = torch.as_tensor(scale)
        z = (t - center) / scale * used
        if keep_weights:
            pass
        elif combiner.kind == "logistic":
            from sklearn.linear_model import LogisticRegression  # here: ~0.3 s of every process's start-up otherwise

            lr = LogisticRegression(C=1.0, max_iter=2000).fit(z[:, used], y, sample_weight=_class_balanced(y))
            w = np.zeros(len(PARTS))
            w[used] = lr.coef_[0]
            state["weight"][mode] = torch.as_tensor(w)
            state["bias"][mode] = float(lr.intercept_[0])
        elif combiner.kind == "mlp":
            h = combiner.w1.size(1)
            from sklearn.exceptions import ConvergenceWarning
            from sklearn.neural_network import MLPClassifier

            idx = _balanced_index(y, seed)  # MLPClassifier takes no sample weights: repeat the rarer class
            mlp = MLPClassifier(hidden_layer_sizes=(h,), alpha=1e-3, max_iter=500, random_state=seed)
            with warnings.catch_warnings():  # 500 iterations on a few thousand windows; its fit is checked by
                warnings.simplefilter("ignore", ConvergenceWarning)  # the validation thresholds, not by lbfgs's
                mlp.fit(z[idx][:, used], y[idx])
            w1 = np.zeros((h, len(PARTS)))
            w1[:, used] = mlp.coefs_[0].T
            state["w1"][mode] = torch.as_tensor(w1)
            state["b1"][mode] = torch.as_tensor(mlp.intercepts_[0])
            state["w2"][mode] = torch.as_tensor(mlp.coefs_[1][:, 0])
            state["b2"][mode] = float(mlp.intercepts_[1][0])
        elif combiner.kind == "policy":
            _fit_policy(state, mode, z, y, used)
        combiner.load_state_dict(state)
        modes = torch.full((len(y),), mode, dtype=torch.long)
        # as forward() computes it (float32 standardisation): a threshold just above the highest
        # allowed window must stay above it in the model's own arithmetic
        raw = combiner.raw(combiner.standardise(pt, modes), modes).double().numpy()
        # an adapted model's reference windows are the car's own capture, which its user replays through the
        # checkpoint and the export alike: no window on the threshold. (A trained model keeps the quantile
        # rule that the README's numbers were measured with; its boundary window is a validation window.)
        offset = (midway_threshold if keep_weights else quantile_threshold)(raw[calib], quantile)
        state["offset"][mode] = offset
        record["modes"][name] = {
            "windows": int(len(y)), "attack_windows": int((~normal).sum()), "reference_windows": int(calib.sum()),
            "offset": offset, "validation_fpr": float((raw[calib] >= offset).mean()),
            "validation_fpr_every_attack_free_window": float((raw[normal] >= offset).mean()),
            "validation_recall": float((raw[~normal] >= offset).mean()) if (~normal).any() else None}
    state["fitted"] = torch.ones((), dtype=torch.bool)
    combiner.load_state_dict(state)
    record["unknown_vehicle"] = combiner.unknown_vehicle
    if combiner.unknown_vehicle == "classifier":  # what the rule does on the ID-hidden validation windows
        hidden = torch.as_tensor(np.asarray(unknown[0]), dtype=torch.float32)
        y = np.asarray(unknown[1]).astype(int)
        alarm = (combiner(hidden).numpy() >= 0) & (combiner.mode(hidden).numpy() == UNKNOWN)
        record["modes"]["unknown"]["classifier_rule"] = {
            "validation_fpr": float(alarm[y == 0].mean()) if (y == 0).any() else None,
            "validation_recall": float(alarm[y == 1].mean()) if (y == 1).any() else None}
    return record


def _balanced_index(y: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx0, idx1 = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    small, big = (idx0, idx1) if len(idx0) < len(idx1) else (idx1, idx0)
    return np.concatenate([big, rng.choice(small, size=len(big), replace=True)])


def _fit_policy(state: dict, mode: int, z: np.ndarray, y: np.ndarray, used: np.ndarray) -> None:
    """The policy combiner: per (classifier, anomaly) state the classifier weight with the best
    class-balanced accuracy of ``fused >= 0.5`` on the validation windows of that state."""
    bins = state["table"].size(1)
    cls = z[:, 0]
    anom = np.where(used[1:], z[:, 1:], -1e9).max(axis=1)
    anomaly_center = float(np.quantile(anom[y == 0], 0.99))
    qs = np.linspace(0, 1, bins + 1)[1:-1]
    edges = np.stack([np.quantile(cls, qs), np.quantile(anom, qs)])
    state["edges"][mode] = torch.as_tensor(edges)
    state["anomaly_center"][mode] = anomaly_center
    b_cls = (cls[:, None] > edges[0][None, :]).sum(axis=1)
    b_anom = (anom[:, None] > edges[1][None, :]).sum(axis=1)
    cls_p = 1 / (1 + np.exp(-(cls * state["scale"][mode, 0].item() + state["center"][mode, 0].item())))
    anom_p = 1 / (1 + np.exp(-(anom - anomaly_center)))
    w = _class_balanced(y)
    for i in range(bins):
        for j in range(bins):
            sel = (b_cls == i) & (b_anom == j)
            if not sel.any():
                continue
            fused = [a * cls_p[sel] + (1 - a) * anom_p[sel] >= 0.5 for a in POLICY_ACTIONS]
            rewards = [(w[sel] * np.where(d == (y[sel] == 1), 1.0, -1.0)).sum() for d in fused]
            state["table"][mode, i, j] = POLICY_ACTIONS[int(np.argmax(rewards))]


@torch.no_grad()
def predict_parts(model: FusionModel, gs, batch_size: int = 256, ids_hidden: bool = False) -> np.ndarray:
    """The parts ``[n, 7]`` of every window of a GraphSet (``ids_hidden``: as an unknown vehicle)."""
    model.eval()
    out = []
    for batch in graph_loader(gs, batch_size=batch_size, shuffle=False, num_workers=0):
        out.append(model.score_parts(hide_ids(batch) if ids_hidden else batch).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, len(PARTS)), np.float32)


MIN_REFERENCE_WINDOWS = 200  # fewer windows of attack-free recordings: calibrate on every attack-free window


def calibration_windows(val) -> tuple[np.ndarray, str]:
    """Which attack-free validation windows calibrate the combiner: those of the recordings with no
    attack window in the split (a clean drive), when there are at least
    :data:`MIN_REFERENCE_WINDOWS`; else every attack-free window. Returns ``(mask [n], rule)``.

    The normal windows of an attack recording carry the attack's after-effects (frames queued during
    a flood and sent after it, an injector's bus load) and are labelled by where a window boundary
    falls; a few of them score like attacks. A false-positive budget of 0.1 % over ~1,000 windows
    is set by its one or two highest windows, so on DAGA those set every threshold (the classifier's
    log-odds reached 16 units on two of them) and the unknown attacks stayed under it."""
    y = val.y.numpy()
    files = val.file_index.numpy()
    attacked = np.zeros(int(files.max()) + 1 if len(files) else 0, bool)
    attacked[files[y == 1]] = True
    clean = ~attacked[files] if len(files) else np.zeros(0, bool)
    if clean.sum() >= MIN_REFERENCE_WINDOWS:
        return clean, "attack_free_recordings"
    return y == 0, "every_attack_free_window"


def fit_on_validation(model: FusionModel, val, quantile: float = 0.999, seed: int = 0) -> dict:
    """Fit ``model.combiner`` on a validation GraphSet (both vehicle views, calibrated on
    :func:`calibration_windows`); returns the fit record."""
    y = val.y.numpy()
    reference, rule = calibration_windows(val)
    record = fit_combiner(model.combiner, (predict_parts(model, val), y),
                          (predict_parts(model, val, ids_hidden=True), y), quantile=quantile, seed=seed,
                          reference=reference)
    return {**record, "calibrated_on": rule, "calibration_windows": int(reference.sum())}


def fused_validation_f1(record: dict) -> float | None:
    """The fused detector's F1 on the validation windows it judges as a known vehicle, at its fitted
    threshold, from a fit record (:func:`fit_combiner`): what ranks fusion checkpoints, where the
    training's ``val_f1`` is the classification head's alone. None without attack windows there."""
    known = (record.get("modes") or {}).get("known") or {}
    windows, attacks = known.get("windows"), known.get("attack_windows")
    recall, fpr = known.get("validation_recall"), known.get("validation_fpr_every_attack_free_window")
    if not attacks or recall is None or fpr is None:
        return None
    tp, fn, fp = recall * attacks, (1 - recall) * attacks, fpr * (windows - attacks)
    return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn > 0 else None


def fit_after_training(model: FusionModel, train, val, quantile: float = 0.999, seed: int = 0) -> dict:
    """After training: the ID profiles from the attack-free training windows (:func:`fit_profile`),
    then the combiner from the validation windows (:func:`fit_on_validation`); no test window is
    read. Returns the combiner's fit record with the profile's under ``"profile"``."""
    record = {"profile": fit_profile(model.profile, train)}
    return {**fit_on_validation(model, val, quantile, seed), **record}


# ----------------------------------------------------------------------------- another car
def id_table_keys(config: dict) -> list[str]:
    """The state-dict entries of a fusion model with one row per vocabulary index (ID embeddings,
    the ID decoder's bias, the ID profiles): those whose first dimension follows ``num_ids``."""
    with torch.device("meta"):
        a = FusionModel(**{**_model_kwargs(config), "num_ids": 2}).state_dict()
        b = FusionModel(**{**_model_kwargs(config), "num_ids": 3}).state_dict()
    keys = [k for k in a if a[k].shape != b[k].shape]
    for k in keys:
        if a[k].shape[1:] != b[k].shape[1:]:
            raise RuntimeError(f"{k}: a vocabulary-sized tensor whose other dimensions change too")
    return keys


def _model_kwargs(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "kind"}


def extend_vocabulary(state: dict[str, Tensor], config: dict, vocab: list[int], new_ids) -> tuple[dict, dict, list[int]]:
    """A fusion model's state with ``new_ids`` added to its ID vocabulary.

    The vocabulary stays sorted (index ``i + 1`` <-> ``vocab[i]``, 0 the out-of-vocabulary bucket),
    so every vocabulary-sized table (:func:`id_table_keys`) is re-indexed: a known ID keeps its
    row, a new ID starts as a copy of the out-of-vocabulary row, so the network sees it exactly as
    it saw any unseen ID before; what changes is that the new ID now has its own slot for a
    timing profile and no longer counts as out-of-vocabulary evidence.

    Returns ``(state, config, vocab)``: new objects; the arguments are not modified.
    """
    old = [int(i) for i in vocab]
    merged = sorted(set(old) | {int(i) for i in new_ids})
    where = {can_id: k + 1 for k, can_id in enumerate(old)}
    rows = torch.tensor([0] + [where.get(i, 0) for i in merged])
    out = dict(state)
    for key in id_table_keys(config):
        if state[key].size(0) != len(old) + 1:
            raise ValueError(f"{key} has {state[key].size(0)} rows, the vocabulary {len(old)} IDs + the OOV bucket")
        out[key] = state[key].index_select(0, rows).clone()
    return out, {**config, "num_ids": len(merged) + 1}, merged


def adapt_to_vehicle(model: FusionModel, clean, quantile: float = 0.99) -> dict:
    """Re-fit a fusion model's per-car parts on attack-free windows of another car.

    The ID profiles (:func:`fit_profile`) and, keeping any learned weights, the combiner's
    vehicle-mode count, standardisation and thresholds (:func:`fit_combiner` with
    ``keep_weights``) are fitted on ``clean`` (a GraphSet of the car's attack-free windows, built
    with the model's vocabulary, the car's IDs added by :func:`extend_vocabulary`). The trained
    weights do not change. Returns the fit record (``profile`` and ``combiner``).
    """
    if not bool(model.combiner.fitted):
        raise ValueError("adapt_to_vehicle: the model's combiner was never fitted (kdkit train fits it)")
    y = clean.y.numpy()
    if (y != 0).any():
        raise ValueError(f"adapt_to_vehicle: {int((y != 0).sum())} of the {len(y)} windows are labelled attacks; "
                         "pass the attack-free windows only")
    profile = fit_profile(model.profile, clean)
    known, hidden = predict_parts(model, clean), predict_parts(model, clean, ids_hidden=True)
    combiner = fit_combiner(model.combiner, (known, y), (hidden, y), quantile=quantile, keep_weights=True)
    return {"profile": profile, "combiner": combiner}
