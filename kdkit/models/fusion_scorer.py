"""The fusion student's inference pass with static shapes (for ``kdkit export``): the fused score per window.

:class:`FusionScorer` is an inference-only view of a two-headed
:class:`~kdkit.models.fusion.FusionModel` (``shared_encoder=True``, eval mode; it shares the model's
parameters and buffers). ``forward(x, node_id, edge_index, edge_attr, batch, ptr, node_slots)``
takes the same tensors as the GAT's :class:`~kdkit.models.scorer.GATScorer`
(:func:`~kdkit.models.scorer.scorer_inputs` builds them) and returns the fused score ``[G]``,
equal to ``model.window_score(batch)`` up to float rounding (tested); a window is an attack when
its score reaches the checkpoint's threshold (0.0).

What differs from the model's own code, and why it is the same arithmetic:

- GATv2 layers (the shared encoder, with edge features, and the decoder, without): PyG's
  ``remove_self_loops`` has a data-dependent number of edges; the scorer masks the data's
  self-loops instead and shifts the attention softmax by the self-loop's score, exactly as
  :class:`~kdkit.models.scorer.GATScorer` does (its module docstring says why the softmax is the
  same; its ``torch.cond`` fallback to the per-node maximum is kept). The layer here also covers
  layers without an edge projection (the decoder's).
- Edge reconstruction (:func:`kdkit.models.vgae.edge_recon_error`): ``to_dense_batch`` and
  ``to_dense_adj`` have data-dependent shapes. The scorer places each graph's nodes in a
  ``[graphs, width]`` slot layout with ``index_copy`` (``width`` = ``node_slots.size(0)``, the
  largest graph's node count, the same ``M`` as ``to_dense_batch``'s), takes the pairwise logits
  per graph from it, and keeps one row of them per real node (``[nodes, width]``); the adjacency
  is written into that layout with ``index_put`` (both directions: ``A + A.T``), and the BCE, the
  masks and the sums are the model's (:func:`dense_edge_error`).
- Per-graph means (``scatter(..., reduce="mean")``) are ``index_add`` sums divided by the node
  counts ``ptr[1:] - ptr[:-1]`` (clamped at 1, as ``scatter``'s mean), the max pool a dense
  ``amax`` over the slot layout (an empty graph pools to 0).
- The ``profile`` part: the model's own :class:`~kdkit.models.fusion.IdProfile` per node, its
  per-graph maximum an ``amax`` over the slot layout padded with 0 (the distances are >= 0, and
  ``scatter``'s max gives an empty graph 0 too).
- The combiner is the model's own module (:class:`~kdkit.models.fusion.Combiner`), called as is.

    scorer = FusionScorer(model.eval())
    score = scorer(*scorer_inputs(batch))          # [G], attack when >= threshold (0.0)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdkit.models.layers import GATv2Layer
from kdkit.models.scorer import gatv2_layer

OUTPUT_KIND = "score"  # what the exported fusion package returns: the fused score [G], compared with the threshold


def _check_stack(stack: nn.Module, edge_features: bool, where: str) -> None:
    for conv in stack.convs:
        if not isinstance(conv, GATv2Layer) or not conv.self_loops or conv.share_weights or conv.res is not None \
                or (conv.lin_edge is not None) != edge_features:
            raise ValueError(f"FusionScorer supports GATv2 layers with their own self-loops (filled with the mean), "
                             f"no weight sharing and no residual (kdkit's layers); the {where} has another layer")


def gat_stack(stack: nn.Module, h: Tensor, src: Tensor, dst: Tensor, keep: Tensor, edge_attr: Tensor | None,
              loop_attr: Tensor | None) -> list[Tensor]:
    """:class:`~kdkit.models.layers.GATStack` in eval mode: the node embeddings after every layer."""
    out = []
    for conv, proj, norm in zip(stack.convs, stack.projs, stack.norms):
        h = F.elu(norm(h + proj(gatv2_layer(conv, h, src, dst, keep, edge_attr, loop_attr))))
        out.append(h)
    return out


def dense_edge_error(z: Tensor, src: Tensor, dst: Tensor, batch: Tensor, ptr: Tensor, width: int) -> Tensor:
    """:func:`kdkit.models.vgae.edge_recon_error` without data-dependent shapes, ``[G]``.

    The model's dense ``[graphs, M, M]`` pair layout (``M`` the largest graph's node count) is
    padded wherever a graph is smaller than the largest; here each node has one row of ``width``
    (>= ``M``) slots of its own graph: the pair logits are the rows of ``zd @ zd.T`` (``zd`` the
    ``[graphs, width, D]`` slot layout) of the real nodes, the symmetrised adjacency is written
    straight into that ``[nodes, width]`` layout (both directions of every edge), and the BCE,
    the masks (``j`` a node of the graph, ``j != i``) and the four sums per graph are the model's,
    summed per node and then per graph. Fewer cells than the model's layout (``nodes * width``
    instead of ``graphs * M * M``) and contiguous rows, which Inductor vectorises.
    An edge between two graphs (not in a kdkit batch) cannot index outside the layout."""
    graphs, n = ptr.size(0) - 1, z.size(0)
    counts = ptr[1:] - ptr[:-1]
    slot = torch.arange(n, device=z.device) - ptr[batch]                                # position inside its graph
    row = batch * width + slot                                                           # row of the slot layout
    zf = z.float()
    zd = zf.new_zeros(graphs * width, zf.size(1)).index_copy(0, row, zf).view(graphs, width, -1)
    logits = (zd @ zd.transpose(1, 2))[batch, slot]                                      # [N, W]: z_i . z_j
    ones = torch.ones_like(src, dtype=zf.dtype)
    cells = torch.cat([src * width + slot[dst], dst * width + slot[src]])              # A + A.T
    adj = (zf.new_zeros(n * width).index_put((cells,), torch.cat([ones, ones]), accumulate=True) > 0)
    adj = adj.float().view(n, width)
    j = torch.arange(width, device=z.device).unsqueeze(0)
    pairs = ((j < counts[batch].unsqueeze(1)) & (j != slot.unsqueeze(1))).float()      # j in the graph, j != i
    bce = F.binary_cross_entropy_with_logits(logits, adj, reduction="none")
    pos, neg = adj * pairs, (1 - adj) * pairs
    per_node = torch.stack([(bce * pos).sum(1), pos.sum(1), (bce * neg).sum(1), neg.sum(1)], dim=1)
    sums = zf.new_zeros(graphs, 4).index_add(0, batch, per_node)
    pos_err = sums[:, 0] / sums[:, 1].clamp(min=1)
    neg_err = sums[:, 2] / sums[:, 3].clamp(min=1)
    return 0.5 * (pos_err + neg_err)


class FusionScorer(nn.Module):
    """Inference-only view of a fitted two-headed :class:`~kdkit.models.fusion.FusionModel`.

    ``forward(x, node_id, edge_index, edge_attr, batch, ptr, node_slots)`` returns the fused
    score ``[G]`` (``model.window_score``); :meth:`parts` the evidence and the vehicle-mode count ``[G, 7]``
    (``model.score_parts``). ``ptr``: graph offsets ``[G + 1]`` (nodes stored graph by graph, as in
    a PyG batch); ``node_slots``: any tensor with one row per node of the largest graph.

    Raises:
        ValueError: not a fusion model, the teacher pair (``shared_encoder=False``), or layers
            other than kdkit's GATv2 layers.
        RuntimeError: the combiner is not fitted.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        config = getattr(model, "config", {})
        if config.get("kind") != "fusion":
            raise ValueError(f"FusionScorer needs a fusion model, got {config.get('kind')!r}")
        if not config.get("shared_encoder"):
            raise ValueError("FusionScorer exports the fusion student (shared_encoder=True, one encoder with two "
                             "heads); the teacher pair (a GAT and a VGAE) is not exported: distil a student from it "
                             "(kdkit train --model fusion --type student --teacher ...)")
        if not bool(model.combiner.fitted):
            raise RuntimeError("the fusion model's combiner is not fitted: kdkit train fits it on validation data; "
                               "a checkpoint from before that step cannot score")
        ae = model.autoencoder
        _check_stack(ae.encoder, ae.config["num_edge_features"] > 0, "encoder")
        _check_stack(ae.decoder, False, "decoder")
        self.model = model

    def parts(self, x: Tensor, node_id: Tensor, edge_index: Tensor, edge_attr: Tensor, batch: Tensor,
              ptr: Tensor, node_slots: Tensor) -> Tensor:
        """What the model says per window ``[G, 7]`` in the order of :data:`kdkit.models.fusion.PARTS`."""
        m = self.model
        if m.training:
            raise RuntimeError("FusionScorer is for inference: put the model in eval mode (model.eval())")
        ae = m.autoencoder
        n, graphs, width = x.size(0), ptr.size(0) - 1, node_slots.size(0)
        src, dst = edge_index[0], edge_index[1]
        keep = src != dst
        edge_attr_used = edge_attr if ae.config["num_edge_features"] > 0 else None
        loop_attr = None
        if edge_attr_used is not None:
            w = keep.to(edge_attr.dtype).unsqueeze(-1)
            loop_sum = torch.zeros(n, edge_attr.size(1), dtype=edge_attr.dtype, device=x.device).index_add(
                0, dst, edge_attr * w)
            loop_cnt = torch.zeros(n, 1, dtype=edge_attr.dtype, device=x.device).index_add(0, dst, w)
            loop_attr = loop_sum / loop_cnt.clamp(min=1)                               # mean of the in-edges, 0 if none

        # the reconstruction head (VGAE.forward in eval mode: z = mu)
        layers = gat_stack(ae.encoder, ae.node_input(x, node_id), src, dst, keep, edge_attr_used, loop_attr)
        z = ae.mu(layers[-1])
        d = F.elu(ae.decoder_in(z))
        dec = gat_stack(ae.decoder, d, src, dst, keep, None, None)
        d = dec[-1] if dec else d
        id_logits = ae.id_out(d) @ ae.node_input.id_embedding.weight.t() + ae.id_bias
        x_recon = ae.feat_out(d)

        # the classification head: jumping knowledge (cat), mean + max pool, MLP
        counts = (ptr[1:] - ptr[:-1]).unsqueeze(-1)
        nodes = m.jk(layers)
        total = torch.zeros(graphs, nodes.size(1), dtype=nodes.dtype, device=x.device).index_add(0, batch, nodes)
        mean = total / counts.clamp(min=1).to(nodes.dtype)
        slot = torch.arange(n, device=x.device) - ptr[batch]
        dense = nodes.new_full((graphs * width, nodes.size(1)), float("-inf"))
        dense = dense.index_copy(0, batch * width + slot, nodes).view(graphs, width, -1)
        top = dense.amax(dim=1)
        top = torch.where(counts > 0, top, torch.zeros_like(top))                         # an empty graph pools to 0
        logits = m.head(torch.cat([mean, top], dim=-1)).float()

        # the parts (FusionModel.score_parts, reconstruction_errors)
        per_graph = counts.squeeze(-1).clamp(min=1).float()

        def graph_mean(v: Tensor) -> Tensor:
            return torch.zeros(graphs, dtype=v.dtype, device=x.device).index_add(0, batch, v) / per_graph

        feat = graph_mean((x_recon.float() - x.float()).pow(2).mean(dim=-1))
        ce = graph_mean(F.cross_entropy(id_logits.float(), node_id, reduction="none"))
        edge = dense_edge_error(z, src, dst, batch, ptr, width)
        oov = graph_mean((node_id == 0).float())
        far = x.new_zeros(graphs * width, dtype=torch.float32).index_copy(0, batch * width + slot, m.profile(x, node_id))
        far = far.view(graphs, width).amax(dim=1)                                         # distances >= 0: pad 0
        known = torch.zeros(graphs, device=x.device).index_add(0, batch, (node_id != 0).float())
        return torch.stack([logits[:, 1] - logits[:, 0], feat, ce, edge, oov, far, known], dim=1)

    def forward(self, x: Tensor, node_id: Tensor, edge_index: Tensor, edge_attr: Tensor, batch: Tensor,
                ptr: Tensor, node_slots: Tensor) -> Tensor:
        """The fused score per window ``[G]`` (an attack when ``>= 0``, the stored threshold)."""
        return self.model.combiner(self.parts(x, node_id, edge_index, edge_attr, batch, ptr, node_slots))
