"""The GAT classifier: GATv2 layers over a window's ID graph, mean+max pooling, two logits
(normal, attack)."""
from __future__ import annotations

from torch import Tensor
from torch_geometric.nn import MLP, JumpingKnowledge

from kdkit.models.layers import GATOutput, GATStack, GraphModel, NodeInput, _capture_config, graph_index
from kdkit.models.readout import mean_max_pool


class GATClassifier(GraphModel):
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

    objective = "classify"
    fast_readout = True  # the fused CPU readout (kdkit.models.readout); set_attention_kernel "stock": PyG's

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
        layers = self.gnn(h, batch.edge_index, self._edge_attr(batch), getattr(batch, "loops_added", False))
        nodes = self.jk(layers)
        graph = mean_max_pool(nodes, batch_vec, num_graphs, fused=self.fast_readout)
        logits = self.head(graph)
        return GATOutput(logits, layers, graph) if return_features else logits

    def forward_with_features(self, batch) -> GATOutput:
        """Same as ``forward(batch, return_features=True)``."""
        return self(batch, return_features=True)

    @property
    def embedding_dims(self) -> list[int]:
        """Width of each entry of ``GATOutput.node_embeddings`` (for ``FeatureKD``)."""
        return [self.config["hidden"]] * self.config["num_layers"]
