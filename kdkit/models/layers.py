"""Building blocks shared by the GAT and the VGAE: node input (ID embedding + features), a stack
of GATv2 layers with jumping knowledge, output tuples, and parameter counts."""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATv2Conv
from torch_geometric.nn.inits import glorot
from torch_geometric.profile import count_parameters as _pyg_count_parameters
from torch_geometric.utils import add_self_loops, remove_self_loops

from kdkit.models.dropout import dropout
from kdkit.models.fused_attention import gatv2_attention
from kdkit.models.norm_act import norm_elu_dropout, uses_fused_norm_act

ATTENTION_KERNELS = ("auto", "fused", "stock")


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
        self.validate_inputs = True  # False skips the ID range check (one device sync); compiled code skips it

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


class _EdgeProjectionFn(torch.autograd.Function):
    """``x @ w.T`` whose weight gradient is computed as ``(x.T @ g).T``: the same numbers, in the
    layout MKL handles fast when ``x`` has few columns. Autocast-aware."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
            x, w = x.to(dtype), weight.to(dtype)
        else:
            w = weight
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(x, w)
        with torch.autocast(x.device.type, enabled=False):
            return x @ w.t()

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, w = ctx.saved_tensors
        grad = grad.to(x.dtype)
        gx = (grad @ w) if ctx.needs_input_grad[0] else None
        gw = (x.t() @ grad).t().to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return gx, gw


class EdgeProjection(nn.Module):
    """A bias-free ``Linear(in_features, out_features)`` for the few edge features GATv2 projects.

    Same forward and gradients as ``Linear``; on CPU the weight gradient ``grad.T @ x`` over
    thousands of edges is computed as ``(x.T @ grad).T``: MKL takes a slow path for the first
    form when ``x`` has few columns (1.35 ms against 0.2 ms for a (128 x E) x (E x 7) product on
    the CI machine; ``kdkit bench train`` measured the student step 27.6-29.8 -> 23.6-25.1 ms).
    The parameter is ``weight`` as in ``Linear``, so checkpoints are those of the stock layer.
    """

    def __init__(self, in_features: int, out_features: int, weight: nn.Parameter | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = weight if weight is not None else nn.Parameter(torch.empty(out_features, in_features))
        if weight is None:
            self.reset_parameters()

    def reset_parameters(self) -> None:
        glorot(self.weight)  # GATv2Conv's own initialiser for lin_edge

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu":
            return F.linear(x, self.weight)
        return _EdgeProjectionFn.apply(x, self.weight)


class GATv2Layer(GATv2Conv):
    """PyG's ``GATv2Conv`` with three speed-ups that keep its math and its ``state_dict``.

    - Self-loops: like ``GATv2Conv(add_self_loops=True, fill_value="mean")`` it drops a graph's
      self-loops and adds one per node with the mean of its incoming edge features, unless the
      batch already holds them (``loops_added=True``, set by :func:`with_self_loops`, the
      loaders' transform under ``torch.compile``: the data-dependent ``remove_self_loops``
      would otherwise split a compiled GAT into 6 graphs; without it, it compiles to one).
    - On CPU the attention (scores, softmax, aggregation and the edge projection) runs as one
      fused kernel (:func:`kdkit.models.fused_attention.gatv2_attention`) instead of PyG's
      gathers and scatters over ``[edges, heads, channels]`` tensors; ``attention`` picks it:
      ``"auto"`` (the default: fused where it applies), ``"fused"`` (the same; the name says it
      was asked for) or ``"stock"`` (PyG's path). It does not apply, and the stock path runs, on
      a GPU, with attention dropout in training, under ``torch.export`` (``kdkit export``) and for
      inputs other than float32/float64; under bf16/fp16 autocast it computes in float32 (as
      autocast does for softmax). Set it for a whole model with :func:`set_attention_kernel`.
    - The stock path's edge projection is an :class:`EdgeProjection` (fast weight gradient on CPU).

    Args:
        in_channels, out_channels, heads, concat, dropout, edge_dim: as ``GATv2Conv``.
        self_loops: add self-loops (GATv2Conv's ``add_self_loops``). Default True.
    """

    attention: str = "auto"

    def __init__(self, in_channels: int, out_channels: int, heads: int = 1, concat: bool = True,
                 dropout: float = 0.0, edge_dim: int | None = None, self_loops: bool = True):
        super().__init__(in_channels, out_channels, heads=heads, concat=concat, dropout=dropout,
                         add_self_loops=False, edge_dim=edge_dim, fill_value="mean")
        self.self_loops = self_loops
        if self.lin_edge is not None:  # the same Parameter (and initial values), a faster module
            self.lin_edge = EdgeProjection(edge_dim, heads * out_channels, weight=self.lin_edge.weight)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None,
                loops_added: bool = False) -> Tensor:
        if self.self_loops and not loops_added:
            edge_index, edge_attr = gat_self_loops(edge_index, edge_attr, x.size(0))
        if self.uses_fused_kernel(x, edge_attr):
            return self._fused_forward(x, edge_index, edge_attr)
        return super().forward(x, edge_index, edge_attr)

    def uses_fused_kernel(self, x: Tensor, edge_attr: Tensor | None = None) -> bool:
        """Whether ``forward`` on these inputs runs the fused CPU kernel (see the class docstring)."""
        if self.attention == "stock":
            return False
        return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
                and not (self.training and self.dropout > 0) and not self.share_weights
                and not torch.compiler.is_exporting() and not torch.jit.is_scripting()
                and (edge_attr is None or (self.lin_edge is not None and not edge_attr.requires_grad)))

    def _fused_forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None) -> Tensor:
        H, C = self.heads, self.out_channels
        x_l, x_r = self.lin_l(x).view(-1, H, C), self.lin_r(x).view(-1, H, C)
        if x_l.dtype not in (torch.float32, torch.float64):  # bf16/fp16 autocast: attention in fp32, as softmax
            x_l, x_r = x_l.float(), x_r.float()
        if edge_attr is not None and edge_attr.dim() == 1:
            edge_attr = edge_attr.view(-1, 1)
        weight = self.lin_edge.weight if edge_attr is not None else None
        out = gatv2_attention(x_l, x_r, edge_index, self.att, edge_attr, weight, negative_slope=self.negative_slope)
        out = out.reshape(-1, H * C) if self.concat or H == 1 else out.mean(dim=1)  # one head: no copy
        if self.res is not None:
            out = out + self.res(x)
        if self.bias is not None:
            out = out + self.bias
        return out


def set_attention_kernel(model: nn.Module, kernel: str) -> int:
    """Set ``attention`` (``"auto"``, ``"fused"`` or ``"stock"``) on every :class:`GATv2Layer` of
    ``model``; returns how many layers it set. ``"stock"`` also gives every :class:`GATStack`
    torch's own dropout masks (``F.dropout``) instead of kdkit's cheap CPU ones
    (:mod:`kdkit.models.dropout`) and every GAT or fusion model PyG's pooling functions instead
    of the fused readout (:mod:`kdkit.models.readout`): the plain PyTorch/PyG path throughout.
    The run config's ``attention`` key does this for training. Outputs are the same within float rounding; in
    training the dropout masks are other random numbers from the same distribution."""
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"attention={kernel!r}: choose one of {', '.join(ATTENTION_KERNELS)}")
    layers = [m for m in model.modules() if isinstance(m, GATv2Layer)]
    for layer in layers:
        layer.attention = kernel
    for module in model.modules():
        if isinstance(module, GATStack):
            module.fast_dropout = kernel != "stock"
        if hasattr(module, "fast_readout"):  # GAT and fusion models: the fused mean/max readout
            module.fast_readout = kernel != "stock"
    return len(layers)


def gat_self_loops(edge_index: Tensor, edge_attr: Tensor | None, num_nodes: int) -> tuple[Tensor, Tensor | None]:
    """The edges a :class:`GATv2Layer` attends over: the graph's own self-loops dropped and one
    added per node, with the mean of its incoming edge features (``GATv2Conv``'s
    ``add_self_loops=True, fill_value="mean"``)."""
    edge_index, edge_attr = remove_self_loops(edge_index, edge_attr)
    return add_self_loops(edge_index, edge_attr, fill_value="mean", num_nodes=num_nodes)


def with_self_loops(batch):
    """The training loaders' transform for a GAT classifier: every :class:`GATv2Layer`'s
    self-loops added to the batch once (what each layer would add), marked with ``loops_added``
    so the layers add none. The GAT's output is unchanged (tested). A batch that already has
    them (the compiled gather, :func:`kdkit.data.loader.collate_indices`) is returned as is."""
    if getattr(batch, "loops_added", False):
        return batch
    batch.edge_index, batch.edge_attr = gat_self_loops(batch.edge_index, batch.edge_attr,
                                                       num_nodes=batch.x.size(0))
    batch.loops_added = True
    return batch


def takes_batch_self_loops(*models: nn.Module | None) -> bool:
    """Whether batches with :func:`with_self_loops`'s self-loops suit these models: each has
    GATv2 layers and every one of them adds self-loops (``add_self_loops=True``)."""
    for model in models:
        if model is None:
            continue
        layers = [m for m in model.modules() if isinstance(m, GATv2Layer)]
        if not layers or not all(layer.self_loops for layer in layers):
            return False
    return True


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
        add_self_loops: each layer adds self-loops (GATv2Conv's ``add_self_loops``). Default True.
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
        self.fast_dropout = True  # kdkit's cheap CPU masks (kdkit.models.dropout); set_attention_kernel "stock": torch's
        self.convs, self.projs, self.norms = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for _ in range(num_layers):
            self.convs.append(GATv2Layer(hidden, hidden, heads=heads, concat=concat_heads, dropout=attn_dropout,
                                         edge_dim=edge_dim, self_loops=add_self_loops))
            project = concat_heads and heads > 1
            self.projs.append(nn.Linear(heads * hidden, hidden) if project else nn.Identity())
            self.norms.append(norms[norm](hidden))

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None,
                loops_added: bool = False) -> list[Tensor]:
        """Return the node embeddings after every layer (empty list for 0 layers).
        ``loops_added``: the edges already hold every layer's self-loops (:func:`with_self_loops`)."""
        out = []
        if not loops_added and len(self.convs) > 1 and self.convs[0].self_loops:
            # every layer would drop and add the same self-loops: do it once for the stack
            edge_index, edge_attr = gat_self_loops(edge_index, edge_attr, h.size(0))
            loops_added = True
        for conv, proj, norm in zip(self.convs, self.projs, self.norms):
            c = proj(conv(h, edge_index, edge_attr, loops_added))
            if self.fast_dropout and uses_fused_norm_act(h, norm):  # one CPU operator for the four below
                h = norm_elu_dropout(h, c, norm, self.dropout, self.training)
            else:
                h = dropout(F.elu(norm(h + c)), self.dropout, self.training, fast=self.fast_dropout)
            out.append(h)
        return out


class GraphModel(nn.Module):
    """Base class of kdkit's models: ``config`` bookkeeping, ``summary()`` and the objective.

    A model takes ``forward(batch)`` and declares what it learns, which decides its loss,
    validation metric and scores everywhere (:class:`kdkit.training.task.Task`, evaluation):

    - ``objective = "classify"``: ``forward(batch)`` returns logits ``[G, 2]`` (normal, attack),
      and with ``return_features=True`` a :class:`GATOutput` (logits, node embeddings per layer,
      graph embedding) for feature KD; trained with class-weighted cross-entropy on all windows.
    - ``objective = "reconstruct"``: trained on attack-free windows with ``loss(batch)`` (a dict
      with ``"loss"``); ``anomaly_score(batch)`` scores windows.

    ``config`` must rebuild the model with :func:`kdkit.models.registry.model_from_config`
    (``_capture_config(kind, locals())`` in ``__init__`` does it).
    """

    config: dict[str, Any]
    objective: str = "classify"

    @classmethod
    def options_from_run(cls, run: Any) -> dict[str, Any]:
        """Constructor options from a run config's model keys (``hidden``, ``layers``, ``heads``,
        ``embedding_dim``, ``dropout``, ``id_dropout``; ``None`` = keep the preset). Families
        whose constructor names them differently override this."""
        out: dict[str, Any] = {"id_dropout": run.id_dropout, "dropout": run.dropout}
        for key, option in (("hidden", "hidden"), ("embedding_dim", "embedding_dim"), ("layers", "num_layers"),
                            ("heads", "heads")):
            if getattr(run, key) is not None:
                out[option] = getattr(run, key)
        return out

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

def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (``torch_geometric.profile.count_parameters``)."""
    return _pyg_count_parameters(model)


def model_size_bytes(model: nn.Module) -> int:
    """In-memory size of the parameters and buffers in bytes (no file is written)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
