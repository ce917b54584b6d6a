"""Files -> messages -> windows -> graphs: everything kdkit knows about CAN recordings.

Owns the one internal messages table and its readers (:mod:`.readers`), the built-in
traffic simulator (:mod:`.simulate`), windows -> graphs (:mod:`.graphs`), the graph store
file, written as a stream and read memory-mapped (:mod:`.store`), the dataset registry, splits
and cached preparation (:mod:`.datasets`) in bounded memory, files in parallel (:mod:`.prep`),
and batches gathered from the store for models (:mod:`.loader`).

Layer 0: imports no other kdkit package.
"""
from kdkit.data import columns, loggers  # noqa: F401  (register logger formats and known headers with read_messages)
from kdkit.data.datasets import REGISTRY, PrepareConfig, PreparedDataset, prepare
from kdkit.data.graphs import EDGE_FEATURES, NODE_FEATURES, GraphSet, IdVocab, build_graphs
from kdkit.data.loader import collate_indices, gather_windows, graph_loader
from kdkit.data.readers import DataFormatError, Messages, read_messages, write_ctt_csv

__all__ = [
           "EDGE_FEATURES",
           "NODE_FEATURES",
           "REGISTRY",
           "DataFormatError",
           "GraphSet",
           "IdVocab",
           "Messages",
           "PrepareConfig",
           "PreparedDataset",
           "build_graphs",
           "collate_indices",
           "gather_windows",
           "graph_loader",
           "prepare",
           "read_messages",
           "write_ctt_csv",
]
