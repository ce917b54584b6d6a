"""The VGAE autoencoder: learns attack-free traffic; its score is the reconstruction error of
node features, IDs and edges (higher = more anomalous)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.utils import scatter, to_dense_adj, to_dense_batch

from kdkit.data.loader import collate_indices
from kdkit.models.layers import GATStack, GraphModel, NodeInput, VGAEOutput, _capture_config, graph_index

MAX_LOGVAR = 10.0  # clamp of the VGAE log-variance, keeps exp(logvar) finite
SCORES = ("sum", "standardised")
ERROR_PARTS = ("feat", "id", "edge")
LOG_FLOOR = 1e-6  # an error below it counts as it on the log scale (a window without node pairs: edge error 0)
MIN_LOG_SCALE = 0.05  # the smallest spread a part's log error may have (a constant part never dominates)


class VGAE(GraphModel):
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
        score: how ``anomaly_score`` combines the three reconstruction errors: ``"sum"``
            (``feat + id_weight * id + edge_weight * edge``) or ``"standardised"`` (each error on a
            log scale, standardised by its median and spread on attack-free validation windows,
            :func:`fit_score_standardisation`; the largest). Default "sum".
    """

    objective = "reconstruct"

    @classmethod
    def options_from_run(cls, run: Any) -> dict[str, Any]:
        """``layers`` sets encoder and decoder depth, ``heads`` the encoder's (the decoder gets half)."""
        out: dict[str, Any] = {"id_dropout": run.id_dropout, "dropout": run.dropout, "score": run.vgae_score}
        for key in ("hidden", "embedding_dim", "latent_dim"):
            if getattr(run, key) is not None:
                out[key] = getattr(run, key)
        if run.layers is not None:
            out["encoder_layers"] = out["decoder_layers"] = run.layers
        if run.heads is not None:
            out["encoder_heads"], out["decoder_heads"] = run.heads, max(run.heads // 2, 1)
        return out

    def __init__(self, num_node_features: int, num_edge_features: int, num_ids: int,
                 hidden: int = 64, latent_dim: int = 32, encoder_layers: int = 4,
                 decoder_layers: int = 4, encoder_heads: int = 8, decoder_heads: int = 4,
                 embedding_dim: int = 16, concat_heads: bool = True, dropout: float = 0.1,
                 attn_dropout: float = 0.0, id_dropout: float = 0.2, norm: str = "layer",
                 add_self_loops: bool = True, beta: float = 0.01, id_weight: float = 1.0,
                 edge_weight: float = 1.0, score: str = "sum"):
        config = _capture_config("vgae", locals())
        super().__init__()
        self.config = config
        if encoder_layers < 1:
            raise ValueError(f"encoder_layers={encoder_layers}: need at least one")
        if score not in SCORES:
            raise ValueError(f"score={score!r}: choose from {SCORES}")
        if score == "standardised":  # fitted on attack-free validation windows after training
            self.register_buffer("score_center", torch.zeros(len(ERROR_PARTS)))
            self.register_buffer("score_scale", torch.ones(len(ERROR_PARTS)))
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
        """Per-window score, ``[G]``: ``feat_mse + id_weight * id_ce + edge_weight * edge_bce``, or
        with ``score="standardised"`` the largest standardised log error.

        Deterministic in eval mode (call ``model.eval()`` and wrap in ``torch.no_grad()``);
        higher means more anomalous. Pick the threshold with ``choose_threshold``.
        """
        out = self(batch) if out is None else out
        err = reconstruction_errors(out, batch)
        if self.config.get("score", "sum") == "standardised":
            return ((log_errors(err) - self.score_center) / self.score_scale).amax(dim=-1)
        return err["feat"] + self.config["id_weight"] * err["id"] + self.config["edge_weight"] * err["edge"]

    @property
    def embedding_dims(self) -> list[int]:
        """Width of each entry of ``VGAEOutput.node_embeddings`` (for ``FeatureKD``)."""
        return [self.config["hidden"]] * self.config["encoder_layers"]


def window_pairs(z: Tensor, batch_vec: Tensor, num_graphs: int) -> tuple[Tensor, Tensor]:
    """Node latents per window, ``[G, M, D]`` (float32, zero-padded), and the mask of each window's
    ordered node pairs ``i != j``, ``[G, M, M]`` (1.0 / 0.0): the pairs an inner-product edge
    decoder scores."""
    zd, mask = to_dense_batch(z.float(), batch_vec, batch_size=num_graphs)
    eye = torch.eye(zd.size(1), dtype=torch.bool, device=z.device)
    return zd, (mask[:, :, None] & mask[:, None, :] & ~eye).float()


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
    zd, pairs = window_pairs(z, batch_vec, num_graphs)
    logits = zd @ zd.transpose(1, 2)
    adj = to_dense_adj(edge_index, batch_vec, max_num_nodes=zd.size(1), batch_size=num_graphs)
    adj = ((adj + adj.transpose(1, 2)) > 0).float()
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


def log_errors(err: dict[str, Tensor]) -> Tensor:
    """The reconstruction errors of :func:`reconstruction_errors` on a log scale, ``[G, 3]``
    (feat, id, edge): the parts differ by orders of magnitude and their spread grows with their size."""
    return torch.stack([err[k].float().clamp(min=LOG_FLOOR).log() for k in ERROR_PARTS], dim=-1)


@torch.no_grad()
def fit_score_standardisation(model: VGAE, gs, batch_size: int = 64) -> dict[str, list[float]]:
    """Fit a ``score="standardised"`` VGAE's per-part centre and spread on the attack-free
    windows of ``gs`` (validation): the median of each log error and ``max(std, IQR / 1.349,
    MIN_LOG_SCALE)``. Returns them by part name.

    Raises:
        ValueError: the model scores by ``sum``, or ``gs`` has no attack-free window.
    """
    if model.config.get("score", "sum") != "standardised":
        raise ValueError("fit_score_standardisation: the model scores by 'sum' (build it with score='standardised')")
    normal = torch.nonzero(gs.y == 0).flatten()
    if normal.numel() == 0:
        raise ValueError("fit_score_standardisation: no attack-free window to fit on")
    model.eval()
    device = next(model.parameters()).device
    parts = []
    for lo in range(0, normal.numel(), batch_size):
        batch = collate_indices(gs, normal[lo:lo + batch_size]).to(device)
        parts.append(log_errors(reconstruction_errors(model(batch), batch)).cpu())
    t = torch.cat(parts).double()
    center = t.median(dim=0).values
    q = torch.quantile(t, torch.tensor([0.25, 0.75], dtype=t.dtype), dim=0)
    spread = torch.maximum(t.std(dim=0, correction=1) if t.size(0) > 1 else torch.zeros(t.size(1), dtype=t.dtype),
                           (q[1] - q[0]) / 1.349).clamp(min=MIN_LOG_SCALE)
    model.score_center.copy_(center.float())
    model.score_scale.copy_(spread.float())
    return {"center": dict(zip(ERROR_PARTS, center.tolist())), "scale": dict(zip(ERROR_PARTS, spread.tolist())),
            "windows": int(normal.numel())}
