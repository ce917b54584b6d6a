"""A GAT classifier's inference pass without per-node scatter-max reductions (for the gateway).

PyG's GATv2 softmax subtracts, per target node, the largest attention score of its incoming
edges before ``exp``; on a CPU that per-node maximum is a ``scatter_reduce(amax)`` that neither
eager PyTorch nor Inductor vectorises (the largest single cost of the compiled student). But the
softmax is the same for *any* per-node shift, and every target node has a self-loop (GATv2's
``add_self_loops``), so :class:`GATScorer` shifts by the self-loop's own score instead:

    alpha_ij = exp(s_ij - s_ii) / (1 + sum_j' exp(s_ij' - s_ii))      (j, j' over the real in-edges)

The self-loop terms are dense per-node arithmetic (no loop edges to gather), the denominator is
>= 1 (no underflow), and only ``exp`` of a large positive difference could overflow: when any
difference in a layer exceeds :data:`SAFE_SHIFT` (60; ``e**60`` times any realistic degree and
feature size stays far below fp32's limit) that layer takes PyG's way, the per-node maximum, via
``torch.cond`` (so an exported program keeps both branches). The logits are the stock model's up
to float rounding in every case (tested). The graph max pool is an ``amax`` over a dense
``[graphs, largest graph's nodes, features]`` view instead of a scatter (nodes are stored graph
by graph).

The scorer reads a batch as the stock model does: the data's own self-loops (a CAN ID following
itself) are masked out and the loop features are the mean of each node's incoming edge features,
as GATv2Conv's ``remove_self_loops`` + ``add_self_loops(fill_value="mean")``.

    scorer = GATScorer(model.eval())                        # shares the model's parameters
    logits = score_batch(scorer, batch)                     # [G, 2]
    fast = torch.compile(scorer, dynamic=True)              # or kdkit export (AOTInductor)
    logits = fast(*scorer_inputs(batch))
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdkit.models.layers import GATv2Layer

# The per-layer arithmetic below (lin_l/lin_r/lin_edge, leaky_relu, att, softmax over in-edges,
# attention dropout off, concat or mean of heads, bias) mirrors GATv2Conv.forward/edge_update of
# this torch_geometric release; tests/test_fastgat.py pins the logits to the stock layers' and
# fails on another PyG version until the equality has been re-checked and this updated.
MIRRORS_PYG = "2.8"
SAFE_SHIFT = 60.0  # largest exponent the self-loop shift may give; beyond it a layer takes the per-node max


INPUTS = ("x", "node_id", "edge_index", "edge_attr", "batch", "ptr", "node_slots")


def _by_loop_score(shifted: Tensor, edge_score: Tensor, loop_score: Tensor, dst: Tensor, keep: Tensor):
    """Unnormalised attention shifted by the self-loop's score (the loop's own weight is 1)."""
    return torch.exp(shifted) * keep.unsqueeze(-1), torch.ones_like(loop_score)


def _by_max_score(shifted: Tensor, edge_score: Tensor, loop_score: Tensor, dst: Tensor, keep: Tensor):
    """Unnormalised attention shifted by each node's largest score (PyG's way, a scatter max)."""
    masked = torch.where(keep.unsqueeze(-1), edge_score, torch.full_like(edge_score, float("-inf")))
    top = loop_score.index_reduce(0, dst, masked, "amax", include_self=True)
    return torch.exp(masked - top[dst]), torch.exp(loop_score - top)


def gatv2_layer(conv: GATv2Layer, h: Tensor, src: Tensor, dst: Tensor, keep: Tensor, edge_attr: Tensor | None,
                loop_attr: Tensor | None) -> Tensor:
    """One :class:`~kdkit.models.layers.GATv2Layer` in eval mode (its self-loops added, the data's
    masked by ``keep``); ``edge_attr``/``loop_attr`` None for a layer without edge features."""
    n, heads, ch = h.size(0), conv.heads, conv.out_channels
    xl = conv.lin_l(h).view(n, heads, ch)
    xr = conv.lin_r(h).view(n, heads, ch)
    att = conv.att.view(1, heads, ch)
    slope = conv.negative_slope
    pre_edge = xl[src] + xr[dst]
    pre_loop = xl + xr
    if conv.lin_edge is not None:
        pre_edge = pre_edge + conv.lin_edge(edge_attr).view(-1, heads, ch)
        pre_loop = pre_loop + conv.lin_edge(loop_attr).view(n, heads, ch)
    edge_score = (F.leaky_relu(pre_edge, slope) * att).sum(-1)                        # [E, H]
    loop_score = (F.leaky_relu(pre_loop, slope) * att).sum(-1)                        # [N, H]
    shifted = torch.where(keep.unsqueeze(-1), edge_score - loop_score[dst], torch.zeros_like(edge_score))
    safe = torch.cat([shifted.reshape(-1), shifted.new_zeros(1)]).amax() <= SAFE_SHIFT
    p_edge, p_loop = torch.cond(safe, _by_loop_score, _by_max_score, (shifted, edge_score, loop_score, dst, keep))
    denom = p_loop.index_add(0, dst, p_edge)                                          # [N, H]
    num = (xl * p_loop.unsqueeze(-1)).index_add(0, dst, xl[src] * p_edge.unsqueeze(-1))
    out = num / denom.unsqueeze(-1)
    out = out.reshape(n, heads * ch) if conv.concat else out.mean(dim=1)
    if conv.bias is not None:
        out = out + conv.bias
    return out



class GATScorer(nn.Module):
    """Inference-only view of a :class:`~kdkit.models.GATClassifier` (eval mode; shares its
    parameters). ``forward(x, node_id, edge_index, edge_attr, batch, ptr, node_slots)`` returns the
    logits ``[G, C]``; ``ptr`` holds the graph offsets ``[G + 1]`` and ``node_slots`` is any tensor
    with one row per node of the largest graph (its length sizes the dense max pool; the row
    count is the only thing read). :func:`scorer_inputs` builds both from a batch."""

    def __init__(self, model: nn.Module):
        super().__init__()
        config = getattr(model, "config", {})
        if config.get("kind") != "gat":
            raise ValueError(f"GATScorer needs a GAT classifier, got {config.get('kind')!r}")
        for conv in model.gnn.convs:
            if not isinstance(conv, GATv2Layer) or not conv.self_loops or conv.share_weights or conv.res is not None \
                    or conv.lin_edge is None:
                raise ValueError("GATScorer supports GATv2 layers with edge features, own self-loops filled "
                                 "with the mean, no weight sharing and no residual (the kdkit GAT's layers)")
        self.model = model

    def forward(self, x: Tensor, node_id: Tensor, edge_index: Tensor, edge_attr: Tensor, batch: Tensor,
                ptr: Tensor, node_slots: Tensor) -> Tensor:
        m = self.model
        if m.training:
            raise RuntimeError("GATScorer is for inference: put the model in eval mode (model.eval())")
        n, graphs, width = x.size(0), ptr.size(0) - 1, node_slots.size(0)
        src, dst = edge_index[0], edge_index[1]
        keep = src != dst
        w = keep.to(edge_attr.dtype).unsqueeze(-1)
        loop_sum = torch.zeros(n, edge_attr.size(1), dtype=edge_attr.dtype, device=x.device).index_add(0, dst, edge_attr * w)
        loop_cnt = torch.zeros(n, 1, dtype=edge_attr.dtype, device=x.device).index_add(0, dst, w)
        loop_attr = loop_sum / loop_cnt.clamp(min=1)                                  # mean of the in-edges, 0 if none
        h = m.node_input(x, node_id)
        layers = []
        for conv, proj, norm in zip(m.gnn.convs, m.gnn.projs, m.gnn.norms):
            h = F.elu(norm(h + proj(gatv2_layer(conv, h, src, dst, keep, edge_attr, loop_attr))))
            layers.append(h)
        nodes = torch.cat(layers, dim=-1) if m.config["jk"] == "cat" else torch.stack(layers).amax(dim=0)
        counts = (ptr[1:] - ptr[:-1]).unsqueeze(-1)
        total = torch.zeros(graphs, nodes.size(1), dtype=nodes.dtype, device=x.device).index_add(0, batch, nodes)
        mean = total / counts.clamp(min=1).to(nodes.dtype)
        slot = torch.arange(n, device=x.device) - ptr[batch]                       # position inside its graph
        dense = nodes.new_full((graphs * width, nodes.size(1)), float("-inf"))
        dense = dense.index_copy(0, batch * width + slot, nodes).view(graphs, width, -1)
        top = dense.amax(dim=1)
        top = torch.where(counts > 0, top, torch.zeros_like(top))                     # an empty graph pools to 0
        return m.head(torch.cat([mean, top], dim=-1))


def scorer_inputs(batch) -> tuple[Tensor, ...]:
    """The scorer's tensor inputs from a kdkit/PyG batch (``ptr`` and ``node_slots`` derived)."""
    ptr = getattr(batch, "ptr", None)
    if ptr is None:
        counts = torch.bincount(batch.batch, minlength=batch.num_graphs)
        ptr = torch.zeros(batch.num_graphs + 1, dtype=torch.long, device=batch.x.device)
        ptr[1:] = torch.cumsum(counts, 0)
    width = int((ptr[1:] - ptr[:-1]).max()) if ptr.numel() > 1 else 1
    slots = torch.empty(max(width, 1), 0, device=batch.x.device)
    return batch.x, batch.node_id, batch.edge_index, batch.edge_attr, batch.batch, ptr, slots


def check_batch(batch, num_ids: int | None = None, where: str = "model") -> None:
    """Raise ``ValueError`` naming the problem when ``batch`` has an edge endpoint outside its
    nodes, a node assigned to a graph it does not have, or (given ``num_ids``) a node ID outside
    the vocabulary."""
    n = batch.x.size(0)
    checks = (("edge_index", batch.edge_index, n), ("node_id", batch.node_id, num_ids),
              ("batch", batch.batch, batch.num_graphs))
    for name, t, hi in checks:
        if hi is None or t.numel() == 0:
            continue
        lo_v, hi_v = int(t.min()), int(t.max())
        if lo_v < 0 or hi_v >= hi:
            why = {"edge_index": f"the batch has {n} nodes", "batch": f"the batch has {hi} graphs",
                   "node_id": f"the model has num_ids={hi}: graphs built with another ID vocabulary?"}[name]
            raise ValueError(f"{where}: batch.{name} spans {lo_v}..{hi_v}, outside 0..{hi - 1} ({why})")
    if batch.node_id.size(0) != n or batch.batch.size(0) != n:
        raise ValueError(f"{where}: batch.x has {n} rows but node_id has {batch.node_id.size(0)} and batch "
                         f"{batch.batch.size(0)}")


def score_batch(scorer, batch) -> Tensor:
    """Logits of a kdkit/PyG ``batch`` from a :class:`GATScorer` (or its compiled form)."""
    return scorer(*scorer_inputs(batch))
