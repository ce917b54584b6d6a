"""Fast batches straight from the packed graph store.

A batch is gathered from a :class:`~kdkit.graphs.GraphSet` without per-graph ``Data`` objects
or PyG's collate: a shuffled batch of a store in memory in two compiled (numba) passes, which can
also write a GAT classifier's self-loops (``collate_indices(..., self_loops=True)``), anything else
with a few vectorized index operations. From a
memory-mapped store (``datasets.prepare``) only the batch's pages are read, and a large store's
pages are released every 256 graphs, so a store larger than RAM trains in bounded memory. It is still a
``torch.utils.data.DataLoader`` (Fabric's ``setup_dataloaders`` accepts it); the batch
sampler shuffles per epoch with the seed and shards by rank itself under DDP, so Fabric
must be told ``use_distributed_sampler=False``.

    loader = graph_loader(gs, batch_size=64, shuffle=True, seed=0)
    for batch in loader: ...   # a torch_geometric Batch (x, node_id, edge_index, edge_attr, batch, y, node_y)
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler
from torch_geometric.data import Batch

from kdkit.data.graphs import GraphSet, _gather_ranges
from kdkit.data.jit import leaf_kernel


class Gathered(NamedTuple):
    """Where graphs ``idx`` of a GraphSet live and how they are re-based (:func:`gather_structure`)."""

    nodes: slice | torch.Tensor  # the graphs' node rows in the store
    edges: slice | torch.Tensor  # their edge rows
    ptr: torch.Tensor            # node offsets in the batch [G + 1]
    batch: torch.Tensor          # graph of each batch node [N]
    edge_index: torch.Tensor     # int64 [2, E], batch node numbers
    idx: torch.Tensor            # the graph indices


def gather_structure(gs: GraphSet, idx) -> Gathered:
    """The node and edge rows of graphs ``idx`` with the batch's ``ptr``, ``batch`` vector and
    re-based ``edge_index``. A run of consecutive graphs (evaluation order, a stream, one window)
    is sliced; any other order is gathered."""
    idx_np = np.asarray(idx, dtype=np.int64).reshape(-1)
    idx = torch.from_numpy(idx_np)
    n_graphs = idx_np.size
    if n_graphs and 0 <= idx_np[0] and idx_np[-1] < len(gs) and (n_graphs == 1 or (np.diff(idx_np) == 1).all()):
        a, z = int(idx_np[0]), int(idx_np[-1]) + 1
        nodes = slice(int(gs.node_ptr[a]), int(gs.node_ptr[z]))
        edges = slice(int(gs.edge_ptr[a]), int(gs.edge_ptr[z]))
        node_ptr, edge_ptr = gs.node_ptr[a:z + 1] - nodes.start, gs.edge_ptr[a:z + 1] - edges.start
    else:
        nodes, node_ptr = _gather_ranges(gs.node_ptr, idx)
        edges, edge_ptr = _gather_ranges(gs.edge_ptr, idx)
    n_nodes, n_edges = int(node_ptr[-1]), int(edge_ptr[-1])
    if n_graphs == 1:  # one window (the latency path): nothing to offset
        batch_vec = torch.zeros(n_nodes, dtype=torch.long)
        edge_index = gs.edge_index[:, edges].to(torch.long, copy=True)
    else:
        order = torch.arange(n_graphs)
        batch_vec = torch.repeat_interleave(order, node_ptr[1:] - node_ptr[:-1], output_size=n_nodes)
        edge_graph = torch.repeat_interleave(order, edge_ptr[1:] - edge_ptr[:-1], output_size=n_edges)
        edge_index = gs.rows(gs.edge_index, edges, dim=1).long() + node_ptr[:-1][edge_graph]  # a new tensor
    return Gathered(nodes, edges, node_ptr, batch_vec, edge_index, idx)


def _batch_sizes(node_ptr, edge_ptr, edge_index, idx, loops, out_node_ptr, out_edge_ptr):
    """The batch's node and edge pointers for graphs ``idx`` (first pass of the compiled gather);
    with ``loops`` the edges counted are those that are not self-loops."""
    out_node_ptr[0] = 0
    out_edge_ptr[0] = 0
    for g in range(idx.shape[0]):
        i = idx[g]
        out_node_ptr[g + 1] = out_node_ptr[g] + node_ptr[i + 1] - node_ptr[i]
        kept = edge_ptr[i + 1] - edge_ptr[i]
        if loops:
            for r in range(edge_ptr[i], edge_ptr[i + 1]):
                if edge_index[0, r] == edge_index[1, r]:
                    kept -= 1
        out_edge_ptr[g + 1] = out_edge_ptr[g] + kept


def _gather_loops(node_ptr, edge_ptr, idx, x, node_id, node_y, edge_index, edge_attr, loops, out_node_ptr,
                  out_edge_ptr, out_x, out_id, out_y, out_ei, out_ea, out_batch):
    """Copy graphs ``idx``'s node and edge rows into the batch tensors, re-basing ``edge_index``
    by each graph's first batch node and writing the ``batch`` vector (second pass).

    With ``loops``, the GATv2 layers' self-loops as ``GATv2Conv(add_self_loops=True,
    fill_value="mean")`` makes them from the batch (``remove_self_loops`` then
    ``add_self_loops``): the graphs' own self-loops are left out, and after all other edges
    comes one loop per batch node, whose features are the mean of the node's incoming edges'
    (0 without any), summed in edge order and divided as PyG's scatter mean does."""
    G, N = idx.shape[0], out_node_ptr[idx.shape[0]]
    E = out_edge_ptr[G]
    F = edge_attr.shape[1]
    if loops:
        count = np.zeros(N, dtype=out_ea.dtype)
        for n in range(N):
            out_ei[0, E + n] = n
            out_ei[1, E + n] = n
            for f in range(F):
                out_ea[E + n, f] = 0
    for g in range(G):
        i = idx[g]
        a, n = node_ptr[i], out_node_ptr[g]
        for r in range(node_ptr[i + 1] - a):
            for f in range(x.shape[1]):
                out_x[n + r, f] = x[a + r, f]
            out_id[n + r] = node_id[a + r]
            out_y[n + r] = node_y[a + r]
            out_batch[n + r] = g
        e = out_edge_ptr[g]
        for r in range(edge_ptr[i], edge_ptr[i + 1]):
            src, dst = edge_index[0, r], edge_index[1, r]
            if loops and src == dst:
                continue
            for f in range(F):
                out_ea[e, f] = edge_attr[r, f]
            out_ei[0, e] = src + n
            out_ei[1, e] = dst + n
            if loops:
                count[dst + n] += 1
                for f in range(F):
                    out_ea[E + dst + n, f] += edge_attr[r, f]
            e += 1
    if loops:
        for n in range(N):
            c = max(count[n], 1)
            for f in range(F):
                out_ea[E + n, f] = out_ea[E + n, f] / c


_kernels: dict[str, object] = {}


def _kernel(name: str):
    if name not in _kernels:
        import numba  # imported here: only the gathered CPU batch needs it

        fn = {"sizes": _batch_sizes, "gather": _gather_loops}[name]
        _kernels[name] = leaf_kernel(numba.njit(cache=True, nogil=True)(fn))
    return _kernels[name]


def _collate_compiled(gs: GraphSet, idx_np: np.ndarray, self_loops: bool = False) -> Batch:
    """:func:`collate_indices` for a gathered batch of an in-memory store, in two compiled passes
    instead of ~20 indexing operators (~0.3 ms instead of ~0.7 ms for 64 hcrl_sa windows)."""
    G = idx_np.size
    node_ptr, edge_ptr = torch.empty(G + 1, dtype=torch.long), torch.empty(G + 1, dtype=torch.long)
    src = [t.numpy() for t in (gs.node_ptr, gs.edge_ptr)]
    _kernel("sizes")(*src, gs.edge_index.numpy(), idx_np, self_loops, node_ptr.numpy(), edge_ptr.numpy())
    N, E = int(node_ptr[-1]), int(edge_ptr[-1]) + (int(node_ptr[-1]) if self_loops else 0)
    x = torch.empty((N, gs.x.shape[1]), dtype=gs.x.dtype)
    node_id, node_y, batch_vec = (torch.empty(N, dtype=torch.long) for _ in range(3))
    edge_index = torch.empty((2, E), dtype=torch.long)
    edge_attr = torch.empty((E, gs.edge_attr.shape[1]), dtype=gs.edge_attr.dtype)
    _kernel("gather")(*src, idx_np, gs.x.numpy(), gs.node_id.numpy(), gs.node_y.numpy(), gs.edge_index.numpy(),
                      gs.edge_attr.numpy(), self_loops, node_ptr.numpy(), edge_ptr.numpy(), x.numpy(),
                      node_id.numpy(), node_y.numpy(), edge_index.numpy(), edge_attr.numpy(), batch_vec.numpy())
    idx = torch.from_numpy(idx_np)
    out = Batch(x=x, node_id=node_id, edge_index=edge_index, edge_attr=edge_attr, y=gs.y[idx], node_y=node_y,
                batch=batch_vec, ptr=node_ptr)
    out._num_graphs = G
    if self_loops:
        out.loops_added = True
    return out


def _compiled_applies(gs: GraphSet, idx_np: np.ndarray) -> bool:
    """A shuffled batch of more than one graph from a store held in memory, indices in range
    (the loops do not check bounds). A run of consecutive graphs is sliced, a store whose pages
    are released as it is read goes through :meth:`GraphSet.rows`."""
    return (COMPILED_GATHER and idx_np.size > 1 and not gs.releasing and gs.x.is_contiguous()
            and gs.edge_attr.is_contiguous() and gs.edge_index.is_contiguous()
            and 0 <= idx_np.min() and idx_np.max() < len(gs) and not (np.diff(idx_np) == 1).all())


COMPILED_GATHER = True  # False: always the torch indexing path (tests compare the two)


def collate_indices(gs: GraphSet, idx: torch.Tensor | np.ndarray | list[int], self_loops: bool = False):
    """Graphs ``idx`` of ``gs`` as one PyG ``Batch``, equal to ``Batch.from_data_list`` of them.

    ``self_loops``: where the compiled gather applies (a shuffled batch from a store in memory),
    the batch also carries the GATv2 layers' self-loops and ``loops_added=True`` (what
    :func:`kdkit.models.layers.with_self_loops` makes of it); elsewhere it comes without, and the
    caller's transform adds them."""
    idx_np = np.asarray(idx, dtype=np.int64).reshape(-1)
    if _compiled_applies(gs, idx_np):
        return _collate_compiled(gs, idx_np, self_loops)
    g = gather_structure(gs, idx_np)

    def take(t: torch.Tensor, rows) -> torch.Tensor:  # a batch owns its tensors (loader workers share
        return t[rows].clone() if isinstance(rows, slice) else gs.rows(t, rows)  # a view's whole store otherwise)

    out = Batch(x=take(gs.x, g.nodes), node_id=take(gs.node_id, g.nodes), edge_index=g.edge_index,
                edge_attr=take(gs.edge_attr, g.edges), y=gs.y[g.idx], node_y=take(gs.node_y, g.nodes).long(), batch=g.batch,
                ptr=g.ptr)
    out._num_graphs = g.idx.numel()
    gs.note_gathered(out._num_graphs)  # a memory-mapped store: the pages read are released as it goes
    return out


class GraphBatchSampler(Sampler[list[int]]):
    """Batches of graph indices: shuffled per epoch with ``seed + epoch``, sharded by rank.

    Args:
        num_graphs: graphs in the set.
        batch_size: graphs per batch (ignored when ``node_budget`` > 0).
        shuffle: reshuffle every epoch (default True).
        seed: base seed (default 0).
        drop_last: drop a final short batch (default False; a batch of one graph is fine).
        node_budget: > 0 packs graphs greedily up to this many nodes per batch.
        num_nodes: nodes per graph, needed with ``node_budget``.
        rank, world_size: DDP shard (default 0 of 1).
        pad: with ``world_size > 1``, pad the shards by wrapping around (as DistributedSampler
            does) so every rank gets the same number of graphs (default True, for training);
            False shards without repeating a graph (evaluation: metrics summed over ranks count
            every window once).
    """

    def __init__(self, num_graphs: int, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 node_budget: int = 0, num_nodes: np.ndarray | None = None, rank: int = 0, world_size: int = 1,
                 pad: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_graphs, self.batch_size, self.shuffle, self.seed = num_graphs, batch_size, shuffle, seed
        self.drop_last, self.node_budget, self.num_nodes = drop_last, node_budget, num_nodes
        self.rank, self.world_size, self.epoch, self.pad = rank, world_size, 0, pad
        self.skip_batches = 0  # resume inside an epoch (OOM back-off)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _permutation(self) -> np.ndarray:
        if self.shuffle:
            return np.random.default_rng(self.seed + self.epoch).permutation(self.num_graphs)
        return np.arange(self.num_graphs)

    def _order(self) -> np.ndarray:
        order = self._permutation()
        if self.world_size > 1 and self.pad:  # equal shards: pad by wrapping around, as DistributedSampler does
            per_rank = math.ceil(self.num_graphs / self.world_size)
            order = np.resize(order, per_rank * self.world_size)[self.rank::self.world_size]
        elif self.world_size > 1:
            order = order[self.rank::self.world_size]
        return order

    def _batches(self) -> list[np.ndarray]:
        if self.node_budget > 0:
            if self.num_nodes is None:
                raise ValueError("node_budget needs num_nodes")
            # pack the whole epoch, then deal the batches to the ranks: packing each rank's shard
            # separately gives ranks different batch counts, and DDP then hangs at the last step
            order = self._permutation()
            sizes = self.num_nodes[order]
            batches, cur, total = [], [], 0
            for i, s in zip(order, sizes):  # greedy packing over graph sizes (per graph, not per node)
                if cur and total + s > self.node_budget:
                    batches.append(np.asarray(cur))
                    cur, total = [], 0
                cur.append(i)
                total += s
            if cur and not self.drop_last:
                batches.append(np.asarray(cur))
            if self.world_size > 1 and batches and self.pad:  # equal counts: pad by wrapping around the batches
                per_rank = math.ceil(len(batches) / self.world_size)
                batches = [batches[i % len(batches)] for i in range(per_rank * self.world_size)][self.rank::self.world_size]
            elif self.world_size > 1:  # (evaluation) every graph once: ranks may hold one batch more than others
                batches = batches[self.rank::self.world_size]
            return batches
        order = self._order()
        n_full = len(order) // self.batch_size
        batches = [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(n_full)]
        if len(order) % self.batch_size and not self.drop_last:
            batches.append(order[n_full * self.batch_size:])
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for b in self._batches()[self.skip_batches:]:
            yield b.tolist()

    def __len__(self) -> int:
        return len(self._batches()) - self.skip_batches


class _IndexDataset(torch.utils.data.Dataset):
    """A dataset whose items are graph indices; the collate function gathers the batch."""

    def __init__(self, gs: GraphSet):
        self.gs = gs

    def __len__(self) -> int:
        return len(self.gs)

    def __getitem__(self, i: int) -> int:
        return i


class _Collate:
    def __init__(self, gs: GraphSet, transform=None, self_loops: bool = False):
        self.gs, self.transform, self.self_loops = gs, transform, self_loops

    def __call__(self, indices: list[int]):
        batch = collate_indices(self.gs, indices, self.self_loops)
        return self.transform(batch) if self.transform is not None else batch


def auto_num_workers(in_memory: bool = True) -> int:
    """Workers for the loader: none for an in-memory store on few cores (workers cost more
    than a vectorized gather brings), else up to 4."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if in_memory and cores <= 4:
        return 0
    return min(4, max(cores // 4, 1))


# Windows per scoring pass on a CPU: the per-edge tensors of a 64-window batch stay in cache.
# Measured on hcrl_sa test_01 (3,994 windows, 2-core EPYC): GAT teacher 11-13 s at 64 against
# 17-25 s at 256; the exported student is fastest at 32-64 too (docs/PERFORMANCE.md).
CPU_EVAL_BATCH = 64
GPU_EVAL_BATCH = 256


def eval_batch_size(device: str | torch.device = "cpu") -> int:
    """Windows per forward pass when scoring: 64 on a CPU, 256 on a GPU."""
    return GPU_EVAL_BATCH if torch.device(device).type == "cuda" else CPU_EVAL_BATCH


def shard_bounds(n: int, rank: int = 0, world_size: int = 1) -> tuple[int, int]:
    """The contiguous block ``[start, stop)`` of ``n`` windows that ``rank`` of ``world_size``
    scores (blocks differ in size by at most one; consecutive windows gather fastest)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def graph_loader(gs: GraphSet, batch_size: int = 64, shuffle: bool = False, seed: int = 0, node_budget: int = 0,
                 num_workers: int = -1, prefetch_factor: int = 2, pin_memory: bool = False, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False, transform=None, pad: bool = True) -> DataLoader:
    """A DataLoader of fast batches over a GraphSet (see the module docstring); ``transform``
    (``batch -> batch``) is applied to every batch in the collate function; ``pad``: see
    :class:`GraphBatchSampler`."""
    sampler = GraphBatchSampler(len(gs), batch_size, shuffle, seed, drop_last, node_budget,
                                gs.num_nodes if node_budget else None, rank, world_size, pad)
    workers = auto_num_workers() if num_workers < 0 else num_workers
    kwargs = {"prefetch_factor": prefetch_factor, "persistent_workers": True} if workers > 0 else {}
    return DataLoader(_IndexDataset(gs), batch_sampler=sampler, collate_fn=_Collate(gs, transform), num_workers=workers,
                      pin_memory=pin_memory, **kwargs)


@dataclass
class WindowBatch:
    """Windows gathered for scoring (:func:`gather_windows`): the tensors of a kdkit batch without
    a PyG ``Batch`` object around them (building one costs ~0.2 ms, twice the student's forward
    pass on a single window). The stock model and :func:`check_batch` read it like a batch."""

    x: Tensor
    node_id: Tensor
    edge_index: Tensor
    edge_attr: Tensor
    batch: Tensor
    ptr: Tensor
    num_graphs: int

    @property
    def num_nodes(self) -> int:
        return self.x.size(0)


def gather_windows(gs, idx) -> WindowBatch:
    """Windows ``idx`` of a :class:`~kdkit.graphs.GraphSet` for scoring: the tensors of
    :func:`kdkit.data.loader.collate_indices` (consecutive windows sliced, not gathered) without the
    PyG ``Batch`` around them, labels left out."""

    g = gather_structure(gs, idx)
    out = WindowBatch(gs.rows(gs.x, g.nodes), gs.rows(gs.node_id, g.nodes), g.edge_index,
                      gs.rows(gs.edge_attr, g.edges), g.batch, g.ptr, g.idx.numel())
    gs.note_gathered(out.num_graphs)  # views stay valid after a release: the pages are read again from the file
    return out
