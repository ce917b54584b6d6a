"""Graph models for CAN intrusion detection: GAT classifier, VGAE, presets.

Both families consume the batch contract of ``docs/DESIGN.md`` (``x``, ``node_id``,
``edge_index``, ``edge_attr``, ``batch``, ``num_graphs``) through ``forward(batch)``.

Usage::

    from kdkit.models import build_model, model_from_config, count_parameters
    teacher = build_model("gat", "teacher", num_node_features=18,
                          num_edge_features=7, num_ids=2049)
    logits = teacher(batch)                       # [G, 2]
    out = teacher(batch, return_features=True)   # GATOutput(logits, node_embeddings, graph_embedding)
    vgae = build_model("vgae", "student", 18, 7, 2049, beta=0.05)
    losses = vgae.loss(batch)                     # {"loss", "feat", "id", "edge", "kl"}
    vgae.eval(); scores = vgae.anomaly_score(batch)   # [G], deterministic
    clone = model_from_config(json.loads(json.dumps(vgae.config)))
    print(teacher.summary())
"""
from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import MLP, GATv2Conv, JumpingKnowledge, global_max_pool, global_mean_pool
from torch_geometric.profile import count_parameters as _pyg_count_parameters
from torch_geometric.utils import scatter, to_dense_adj, to_dense_batch

MAX_LOGVAR = 10.0  # clamp of the VGAE log-variance, keeps exp(logvar) finite


class GATOutput(NamedTuple):
    """What ``GATClassifier(batch, return_features=True)`` returns."""

    logits: Tensor  # [G, num_classes]
    node_embeddings: list[Tensor]  # one [N, hidden] per GATv2 layer, for multi-level KD
    graph_embedding: Tensor  # [G, 2 * jk_dim] (mean and max pooling concatenated)


class VGAEOutput(NamedTuple):
    """What ``VGAE(batch)`` returns; every field is per node."""

    mu: Tensor  # [N, latent_dim], the encoder latent (use it for KD)
    logvar: Tensor  # [N, latent_dim]
    z: Tensor  # [N, latent_dim], sampled in training, equal to mu in eval
    x_recon: Tensor  # [N, num_node_features]
    id_logits: Tensor  # [N, num_ids]
    node_embeddings: list[Tensor]  # one [N, hidden] per encoder layer


def graph_index(batch) -> tuple[Tensor, int]:
    """Return ``(batch_vector [N], num_graphs)``; a lone ``Data`` counts as one graph."""
    vec = getattr(batch, "batch", None)
    if vec is None:
        return torch.zeros(batch.x.size(0), dtype=torch.long, device=batch.x.device), 1
    num_graphs = getattr(batch, "num_graphs", None)
    if num_graphs is None:
        num_graphs = int(vec.max()) + 1 if vec.numel() else 0
    if isinstance(num_graphs, torch.SymInt):  # a symbolic size under torch.export: keep it symbolic
        return vec, num_graphs
    return vec, int(num_graphs)


class NodeInput(nn.Module):
    """Node input: ``concat(Embedding(node_id), Linear(x))`` of width ``hidden``.

    Args:
        num_node_features: width of ``batch.x``.
        num_ids: ID vocabulary size including the out-of-vocabulary bucket 0.
        embedding_dim: width of the ID embedding (< hidden).
        hidden: output width.
        id_dropout: probability, in training only, to replace a node's ID by 0 (OOV)
            so the model also learns ID-agnostic features. Default 0.2.
    """

    def __init__(self, num_node_features: int, num_ids: int, embedding_dim: int,
                 hidden: int, id_dropout: float = 0.2):
        super().__init__()
        if not 0 < embedding_dim < hidden:
            raise ValueError(f"embedding_dim={embedding_dim} must be in 1..hidden-1 (hidden={hidden})")
        if num_ids < 1:
            raise ValueError(f"num_ids={num_ids}: the vocabulary needs at least the OOV bucket 0")
        self.num_node_features, self.num_ids, self.id_dropout = num_node_features, num_ids, id_dropout
        self.id_embedding = nn.Embedding(num_ids, embedding_dim)
        self.x_proj = nn.Linear(num_node_features, hidden - embedding_dim)
        self.validate_inputs = True  # set False to skip the id range check (one device sync)

    def forward(self, x: Tensor, node_id: Tensor) -> Tensor:
        if x.dim() != 2 or x.size(1) != self.num_node_features:
            raise ValueError(f"batch.x has shape {tuple(x.shape)}, the model was built for "
                             f"num_node_features={self.num_node_features}")
        if self.validate_inputs and not torch.compiler.is_compiling() and node_id.numel():
            lo, hi = int(node_id.min()), int(node_id.max())
            if lo < 0 or hi >= self.num_ids:
                raise ValueError(f"batch.node_id spans {lo}..{hi} but the model has num_ids={self.num_ids}:"
                                 " the graphs were built with another ID vocabulary (use the one stored"
                                 " with the model; unseen IDs must map to 0)")
        if self.training and self.id_dropout > 0:
            drop = torch.rand(node_id.shape, device=node_id.device) < self.id_dropout
            node_id = node_id.masked_fill(drop, 0)
        return torch.cat([self.id_embedding(node_id), self.x_proj(x)], dim=-1)


class GATStack(nn.Module):
    """GATv2 layers, each ``dropout(elu(norm(h + proj(conv(h)))))``.

    Args:
        hidden: node width in and out of every layer.
        num_layers: number of GATv2 layers (0 gives an empty stack).
        heads: attention heads per layer.
        edge_dim: edge feature width fed to attention, or None for no edge features.
        concat_heads: True concatenates the heads (each of width ``hidden``) and projects
            ``heads * hidden -> hidden`` with a Linear; False averages the heads. Default True.
        dropout: dropout after each layer. Default 0.2.
        attn_dropout: dropout on attention coefficients. Default 0.0.
        add_self_loops: GATv2Conv's ``add_self_loops`` (False for torch.compile with
            self-loops added in a transform). Default True.
        norm: "layer" (LayerNorm, independent of batch size) or "batch". Default "layer".
    """

    def __init__(self, hidden: int, num_layers: int, heads: int, edge_dim: int | None,
                 concat_heads: bool = True, dropout: float = 0.2, attn_dropout: float = 0.0,
                 add_self_loops: bool = True, norm: str = "layer"):
        super().__init__()
        norms = {"layer": nn.LayerNorm, "batch": nn.BatchNorm1d}
        if norm not in norms:
            raise ValueError(f"norm={norm!r}: choose one of {sorted(norms)}")
        self.dropout = dropout
        self.convs, self.projs, self.norms = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for _ in range(num_layers):
            self.convs.append(GATv2Conv(hidden, hidden, heads=heads, concat=concat_heads,
                                        dropout=attn_dropout, add_self_loops=add_self_loops,
                                        edge_dim=edge_dim))
            project = concat_heads and heads > 1
            self.projs.append(nn.Linear(heads * hidden, hidden) if project else nn.Identity())
            self.norms.append(norms[norm](hidden))

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None) -> list[Tensor]:
        """Return the node embeddings after every layer (empty list for 0 layers)."""
        out = []
        for conv, proj, norm in zip(self.convs, self.projs, self.norms):
            h = F.dropout(F.elu(norm(h + proj(conv(h, edge_index, edge_attr)))),
                          p=self.dropout, training=self.training)
            out.append(h)
        return out


class _GraphModel(nn.Module):
    """Shared helpers: ``config`` bookkeeping and ``summary()``."""

    config: dict[str, Any]

    def _edge_attr(self, batch) -> Tensor | None:
        return batch.edge_attr if self.config["num_edge_features"] > 0 else None

    def summary(self) -> str:
        """Return a short human-readable description: parameters per block and size."""
        lines = [f"{type(self).__name__}: {count_parameters(self):,} parameters, "
                 f"{model_size_bytes(self) / 2**20:.2f} MiB"]
        for name, child in self.named_children():
            lines.append(f"  {name:<14}{count_parameters(child):>12,}")
        own = sum(p.numel() for p in self.parameters(recurse=False) if p.requires_grad)
        if own:
            lines.append(f"  {'(own)':<14}{own:>12,}")
        lines.append(f"  config: {self.config}")
        return "\n".join(lines)


def _capture_config(kind: str, local_vars: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, **{k: v for k, v in local_vars.items() if k not in ("self", "__class__")}}


class GATClassifier(_GraphModel):
    """Graph classifier: ID embedding + GATv2 stack + JumpingKnowledge + mean/max pool + MLP.

    Args:
        num_node_features: width of ``batch.x``.
        num_edge_features: width of ``batch.edge_attr`` (0: edge features unused).
        num_ids: ID vocabulary size including the OOV bucket 0.
        hidden: node width. Default 64.
        num_layers: GATv2 layers. Default 5.
        heads: attention heads. Default 8.
        embedding_dim: ID embedding width. Default 16.
        concat_heads: concatenate heads then project (True) or average them. Default True.
        jk: JumpingKnowledge mode, "cat" or "max". Default "cat".
        mlp_hidden: hidden width of the head MLP; None means ``hidden``. Default None.
        dropout: dropout after each layer and in the head. Default 0.2.
        attn_dropout: attention dropout. Default 0.0.
        id_dropout: training-only probability to replace an ID by OOV 0. Default 0.2.
        norm: "layer" or "batch". Default "layer".
        add_self_loops: GATv2Conv ``add_self_loops``. Default True.
        num_classes: logits per graph (2: normal, attack). Default 2.
    """

    def __init__(self, num_node_features: int, num_edge_features: int, num_ids: int,
                 hidden: int = 64, num_layers: int = 5, heads: int = 8, embedding_dim: int = 16,
                 concat_heads: bool = True, jk: str = "cat", mlp_hidden: int | None = None,
                 dropout: float = 0.2, attn_dropout: float = 0.0, id_dropout: float = 0.2,
                 norm: str = "layer", add_self_loops: bool = True, num_classes: int = 2):
        config = _capture_config("gat", locals())
        super().__init__()
        self.config = config
        if jk not in ("cat", "max"):
            raise ValueError(f"jk={jk!r}: choose 'cat' or 'max'")
        if num_layers < 1 or num_classes < 2:
            raise ValueError(f"need num_layers >= 1 and num_classes >= 2 (two logits, not one: "
                             f"a single logit makes the KD term zero), got {num_layers}, {num_classes}")
        self.node_input = NodeInput(num_node_features, num_ids, embedding_dim, hidden, id_dropout)
        self.gnn = GATStack(hidden, num_layers, heads, num_edge_features or None, concat_heads,
                            dropout, attn_dropout, add_self_loops, norm)
        self.jk = JumpingKnowledge(jk)
        jk_dim = hidden * num_layers if jk == "cat" else hidden
        self.head = MLP([2 * jk_dim, mlp_hidden or hidden, num_classes], act="elu",
                        dropout=dropout, norm=None)

    def forward(self, batch, return_features: bool = False) -> Tensor | GATOutput:
        """Classify every graph of ``batch``.

        Args:
            batch: PyG Batch/Data following the batch contract.
            return_features: also return per-layer node embeddings and the graph
                embedding (for multi-level KD). Default False.

        Returns:
            logits ``[G, num_classes]``, or a ``GATOutput`` when ``return_features``.
        """
        batch_vec, num_graphs = graph_index(batch)
        h = self.node_input(batch.x, batch.node_id)
        layers = self.gnn(h, batch.edge_index, self._edge_attr(batch))
        nodes = self.jk(layers)
        graph = torch.cat([global_mean_pool(nodes, batch_vec, num_graphs),
                           global_max_pool(nodes, batch_vec, num_graphs)], dim=-1)
        logits = self.head(graph)
        return GATOutput(logits, layers, graph) if return_features else logits

    def forward_with_features(self, batch) -> GATOutput:
        """Same as ``forward(batch, return_features=True)``."""
        return self(batch, return_features=True)

    @property
    def embedding_dims(self) -> list[int]:
        """Width of each entry of ``GATOutput.node_embeddings`` (for ``FeatureKD``)."""
        return [self.config["hidden"]] * self.config["num_layers"]


class VGAE(_GraphModel):
    """Variational graph autoencoder for unsupervised anomaly detection.

    Encoder: ID embedding + GATv2 stack (with edge features) -> ``mu``, ``logvar``.
    Decoders from ``z``: a GATv2 stack over the same graph (no edge features) followed by
    a node-feature head (MSE) and a CAN-ID head whose output matrix is tied to the input
    ID embedding (cross-entropy over ``num_ids``; tying keeps a 2,000-ID vocabulary from
    dominating the parameter count), and an inner-product edge decoder ``sigmoid(z_i . z_j)``.

    The edge error of a graph is ``(mean BCE over its linked pairs + mean BCE over its
    unlinked pairs) / 2``, computed exactly over all node pairs ``i != j`` of the graph
    (directed edges symmetrised): the expectation of the usual positive + uniform
    negative-sampling loss, without sampling noise, so scores are deterministic.

    Args:
        num_node_features: width of ``batch.x``.
        num_edge_features: width of ``batch.edge_attr`` (0: unused).
        num_ids: ID vocabulary size including the OOV bucket 0.
        hidden: node width. Default 64.
        latent_dim: width of ``mu`` / ``z``. Default 32.
        encoder_layers: GATv2 encoder layers. Default 4.
        decoder_layers: GATv2 decoder layers (0: Linear decoder only). Default 4.
        encoder_heads: heads per encoder layer. Default 8.
        decoder_heads: heads per decoder layer. Default 4.
        embedding_dim: ID embedding width. Default 16.
        concat_heads: concatenate heads then project (True) or average them. Default True.
        dropout: dropout after each layer. Default 0.1.
        attn_dropout: attention dropout. Default 0.0.
        id_dropout: training-only probability to replace an input ID by OOV 0 (the
            reconstruction target keeps the true ID). Default 0.2.
        norm: "layer" or "batch". Default "layer".
        add_self_loops: GATv2Conv ``add_self_loops``. Default True.
        beta: weight of the KL term in ``loss``. Default 0.01.
        id_weight: weight of the ID cross-entropy in ``loss`` and ``anomaly_score``. Default 1.0.
        edge_weight: weight of the edge BCE in ``loss`` and ``anomaly_score``. Default 1.0.
    """

    def __init__(self, num_node_features: int, num_edge_features: int, num_ids: int,
                 hidden: int = 64, latent_dim: int = 32, encoder_layers: int = 4,
                 decoder_layers: int = 4, encoder_heads: int = 8, decoder_heads: int = 4,
                 embedding_dim: int = 16, concat_heads: bool = True, dropout: float = 0.1,
                 attn_dropout: float = 0.0, id_dropout: float = 0.2, norm: str = "layer",
                 add_self_loops: bool = True, beta: float = 0.01, id_weight: float = 1.0,
                 edge_weight: float = 1.0):
        config = _capture_config("vgae", locals())
        super().__init__()
        self.config = config
        if encoder_layers < 1:
            raise ValueError(f"encoder_layers={encoder_layers}: need at least one")
        self.node_input = NodeInput(num_node_features, num_ids, embedding_dim, hidden, id_dropout)
        self.encoder = GATStack(hidden, encoder_layers, encoder_heads, num_edge_features or None,
                                concat_heads, dropout, attn_dropout, add_self_loops, norm)
        self.mu = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)
        self.decoder_in = nn.Linear(latent_dim, hidden)
        self.decoder = GATStack(hidden, decoder_layers, decoder_heads, None, concat_heads,
                                dropout, attn_dropout, add_self_loops, norm)
        self.feat_out = nn.Linear(hidden, num_node_features)
        self.id_out = nn.Linear(hidden, embedding_dim)  # logits = id_out(h) @ embedding.T + id_bias
        self.id_bias = nn.Parameter(torch.zeros(num_ids))

    def forward(self, batch) -> VGAEOutput:
        """Encode and reconstruct every node of ``batch`` (``z = mu`` in eval mode)."""
        edge_index = batch.edge_index
        h = self.node_input(batch.x, batch.node_id)
        layers = self.encoder(h, edge_index, self._edge_attr(batch))
        mu = self.mu(layers[-1])
        logvar = self.logvar(layers[-1]).clamp(max=MAX_LOGVAR)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        d = F.elu(self.decoder_in(z))
        dec = self.decoder(d, edge_index)
        d = dec[-1] if dec else d
        id_logits = self.id_out(d) @ self.node_input.id_embedding.weight.t() + self.id_bias
        return VGAEOutput(mu, logvar, z, self.feat_out(d), id_logits, layers)

    def loss(self, batch, out: VGAEOutput | None = None) -> dict[str, Tensor]:
        """Training loss; see ``vgae_loss``. Pass ``out`` to reuse a forward pass."""
        out = self(batch) if out is None else out
        c = self.config
        return vgae_loss(out, batch, c["beta"], c["id_weight"], c["edge_weight"])

    def anomaly_score(self, batch, out: VGAEOutput | None = None) -> Tensor:
        """Per-window score ``feat_mse + id_weight * id_ce + edge_weight * edge_bce``, ``[G]``.

        Deterministic in eval mode (call ``model.eval()`` and wrap in ``torch.no_grad()``);
        higher means more anomalous. Pick the threshold with ``choose_threshold``.
        """
        out = self(batch) if out is None else out
        err = reconstruction_errors(out, batch)
        return err["feat"] + self.config["id_weight"] * err["id"] + self.config["edge_weight"] * err["edge"]

    @property
    def embedding_dims(self) -> list[int]:
        """Width of each entry of ``VGAEOutput.node_embeddings`` (for ``FeatureKD``)."""
        return [self.config["hidden"]] * self.config["encoder_layers"]


def edge_recon_error(z: Tensor, edge_index: Tensor, batch_vec: Tensor, num_graphs: int) -> Tensor:
    """Balanced inner-product edge reconstruction error per graph, ``[G]``.

    Args:
        z: node latents ``[N, D]``.
        edge_index: directed edges ``[2, E]`` (symmetrised here; self-loops ignored).
        batch_vec: graph of each node ``[N]``, sorted as in a PyG Batch.
        num_graphs: number of graphs G.

    Returns:
        ``(mean BCE over linked pairs + mean BCE over unlinked pairs) / 2`` over the
        ordered pairs ``i != j`` of each graph; a graph without such pairs scores 0.
    """
    zd, mask = to_dense_batch(z.float(), batch_vec, batch_size=num_graphs)  # [G, M, D]
    m = zd.size(1)
    logits = zd @ zd.transpose(1, 2)
    adj = to_dense_adj(edge_index, batch_vec, max_num_nodes=m, batch_size=num_graphs)
    adj = ((adj + adj.transpose(1, 2)) > 0).float()
    eye = torch.eye(m, dtype=torch.bool, device=z.device)
    pairs = (mask[:, :, None] & mask[:, None, :] & ~eye).float()
    bce = F.binary_cross_entropy_with_logits(logits, adj, reduction="none")
    pos, neg = adj * pairs, (1 - adj) * pairs
    pos_err = (bce * pos).sum((1, 2)) / pos.sum((1, 2)).clamp(min=1)
    neg_err = (bce * neg).sum((1, 2)) / neg.sum((1, 2)).clamp(min=1)
    return 0.5 * (pos_err + neg_err)


def reconstruction_errors(out: VGAEOutput, batch) -> dict[str, Tensor]:
    """Per-graph reconstruction errors ``{"feat", "id", "edge"}``, each ``[G]``.

    ``feat``: mean squared error of the node features; ``id``: mean cross-entropy of the
    CAN-ID head against ``batch.node_id``; ``edge``: ``edge_recon_error`` of ``out.z``.
    """
    batch_vec, num_graphs = graph_index(batch)
    feat = (out.x_recon.float() - batch.x.float()).pow(2).mean(dim=-1)
    ce = F.cross_entropy(out.id_logits.float(), batch.node_id, reduction="none")
    return {"feat": scatter(feat, batch_vec, 0, dim_size=num_graphs, reduce="mean"),
            "id": scatter(ce, batch_vec, 0, dim_size=num_graphs, reduce="mean"),
            "edge": edge_recon_error(out.z, batch.edge_index, batch_vec, num_graphs)}


def vgae_loss(out: VGAEOutput, batch, beta: float = 0.01, id_weight: float = 1.0,
              edge_weight: float = 1.0) -> dict[str, Tensor]:
    """VGAE training loss ``feat + id_weight * id + edge_weight * edge + beta * kl``.

    Reconstruction terms are averaged over graphs; ``kl`` is the KL divergence to N(0, I)
    summed over latent dimensions and averaged over nodes.

    Args:
        out: the model output for ``batch``.
        batch: PyG Batch following the batch contract.
        beta: KL weight. Default 0.01.
        id_weight: ID cross-entropy weight. Default 1.0.
        edge_weight: edge BCE weight. Default 1.0.

    Returns:
        ``{"loss": total, "feat", "id", "edge", "kl"}`` (0-dim tensors; ``loss`` has grad).
    """
    err = {k: v.mean() for k, v in reconstruction_errors(out, batch).items()}
    mu, logvar = out.mu.float(), out.logvar.float()
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=-1)).mean()
    total = err["feat"] + id_weight * err["id"] + edge_weight * err["edge"] + beta * kl
    return {"loss": total, **err, "kl": kl}


def choose_threshold(scores, labels=None, quantile: float = 0.99) -> float:
    """Choose an anomaly-score threshold; a window is an attack when ``score >= threshold``.

    Args:
        scores: per-window scores (array-like or tensor).
        labels: 0/1 labels of the same windows, or None for attack-free validation data.
        quantile: without labels, the quantile of the (normal) scores. Default 0.99.

    Returns:
        With labels, the ROC threshold maximising Youden's J = TPR - FPR; without, the
        ``quantile`` of ``scores``.
    """
    s = torch.as_tensor(scores).detach().cpu().double().numpy().ravel()
    if s.size == 0:
        raise ValueError("choose_threshold: no scores given")
    if labels is None:
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"quantile={quantile} must be in (0, 1]")
        return float(np.quantile(s, quantile))
    from sklearn.metrics import roc_curve

    y = torch.as_tensor(labels).detach().cpu().numpy().ravel()
    if y.shape != s.shape:
        raise ValueError(f"choose_threshold: {s.size} scores but {y.size} labels")
    if len(np.unique(y)) < 2:
        raise ValueError("choose_threshold: labels hold one class only; pass labels=None to "
                         "use a quantile of attack-free scores")
    fpr, tpr, thresholds = roc_curve(y, s)
    return float(thresholds[int(np.argmax(tpr - fpr))])


# Presets from the migration guide. concat_heads differs on purpose: the teachers
# concatenate their heads and project back, the students average them, which keeps a
# student under 10 % of its teacher even with a 2,100-ID embedding.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "gat": {
        "teacher": {"hidden": 64, "num_layers": 5, "heads": 8, "embedding_dim": 16,
                    "concat_heads": True, "jk": "cat", "dropout": 0.2},
        "student": {"hidden": 32, "num_layers": 3, "heads": 4, "embedding_dim": 8,
                    "concat_heads": False, "jk": "cat", "dropout": 0.1},
    },
    "vgae": {
        "teacher": {"hidden": 64, "latent_dim": 32, "encoder_layers": 4, "decoder_layers": 4,
                    "encoder_heads": 8, "decoder_heads": 4, "embedding_dim": 16,
                    "concat_heads": True},
        "student": {"hidden": 32, "latent_dim": 16, "encoder_layers": 2, "decoder_layers": 2,
                    "encoder_heads": 4, "decoder_heads": 2, "embedding_dim": 8,
                    "concat_heads": False},
    },
}
MODEL_CLASSES: dict[str, type[_GraphModel]] = {"gat": GATClassifier, "vgae": VGAE}


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


def build_model(kind: str, size: str, num_node_features: int, num_edge_features: int,
                num_ids: int, **overrides: Any) -> _GraphModel:
    """Build a preset model.

    Args:
        kind: "gat" (supervised classifier) or "vgae" (unsupervised autoencoder).
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
    return cls(num_node_features, num_edge_features, num_ids, **{**PRESETS[kind][size], **overrides})


def model_from_config(config: dict[str, Any]) -> _GraphModel:
    """Rebuild a model (fresh weights) from its ``model.config`` dict."""
    cfg = dict(config)
    kind = cfg.pop("kind", None)
    if kind not in MODEL_CLASSES:
        raise ValueError(f"model config kind={kind!r}: expected one of {sorted(MODEL_CLASSES)}")
    _check_overrides(MODEL_CLASSES[kind], {k: v for k, v in cfg.items()
                                           if k not in ("num_node_features", "num_edge_features", "num_ids")})
    return MODEL_CLASSES[kind](**cfg)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (``torch_geometric.profile.count_parameters``)."""
    return _pyg_count_parameters(model)


def model_size_bytes(model: nn.Module) -> int:
    """In-memory size of the parameters and buffers in bytes (no file is written)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
