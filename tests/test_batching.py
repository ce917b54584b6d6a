"""Tests of kdkit.data.loader: fast batches equal PyG's collate, sampler budgets, seeding, DDP shards.

Run: .venv/bin/python -m pytest tests/test_batching.py -q
"""
import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data

from kdkit.data.graphs import GraphSet
from kdkit.data.loader import GraphBatchSampler, auto_num_workers, collate_indices, graph_loader

F_NODE, F_EDGE = 5, 3
BATCH_KEYS = ("x", "node_id", "edge_index", "edge_attr", "y", "node_y", "batch", "ptr")


def random_graphs(n_graphs: int, seed: int) -> list[Data]:
    """Graphs of 1..12 nodes and 0..30 random edges (self-loops and duplicates allowed)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_graphs):
        n = int(rng.integers(1, 13))
        e = int(rng.integers(0, 31)) if n > 1 else 0
        out.append(Data(x=torch.from_numpy(rng.random((n, F_NODE), dtype=np.float32)),
                        node_id=torch.from_numpy(rng.integers(0, 9, n)),
                        edge_index=torch.from_numpy(rng.integers(0, n, (2, e))),
                        edge_attr=torch.from_numpy(rng.random((e, F_EDGE), dtype=np.float32)),
                        y=torch.tensor([int(rng.integers(0, 2))]), node_y=torch.from_numpy(rng.integers(0, 2, n)),
                        num_nodes=n))
    return out


def pack(graphs: list[Data]) -> GraphSet:
    """The packed store of ``graphs`` (what kdkit.graphs.build_graphs writes)."""
    nn = torch.tensor([g.num_nodes for g in graphs])
    ne = torch.tensor([g.edge_index.size(1) for g in graphs])
    ptr = lambda c: torch.cat([torch.zeros(1, dtype=torch.long), c.cumsum(0)])  # noqa: E731
    cat = lambda k: torch.cat([getattr(g, k) for g in graphs])  # noqa: E731
    g = len(graphs)
    return GraphSet(x=cat("x"), node_id=cat("node_id"), can_id=cat("node_id"), node_y=cat("node_y").to(torch.uint8),
                    edge_index=torch.cat([g.edge_index for g in graphs], 1).int(), edge_attr=cat("edge_attr"),
                    node_ptr=ptr(nn), edge_ptr=ptr(ne), y=cat("y"), attack_share=torch.zeros(g),
                    attack_type=torch.zeros(g, dtype=torch.long), file_index=torch.zeros(g, dtype=torch.long),
                    start=torch.arange(g), attack_types=["normal"], files=["f"])


def assert_same_batch(fast, ref) -> None:
    assert fast.num_graphs == ref.num_graphs
    for key in BATCH_KEYS:
        a, b = getattr(fast, key), getattr(ref, key)
        assert a.dtype == b.dtype, key
        assert torch.equal(a, b), key


@pytest.mark.parametrize("seed", range(5))
def test_fast_batch_equals_pyg_collate(seed):
    graphs = random_graphs(40, seed)
    gs = pack(graphs)
    rng = np.random.default_rng(100 + seed)
    for size in (1, 2, 7, 40):
        idx = rng.choice(len(graphs), size=size, replace=False)
        assert_same_batch(collate_indices(gs, idx), Batch.from_data_list([graphs[i] for i in idx]))
        assert_same_batch(collate_indices(gs, idx), Batch.from_data_list(gs.to_data_list(idx)))
        start = int(rng.integers(0, len(graphs) - size + 1))
        run = np.arange(start, start + size)  # consecutive graphs: sliced, not gathered
        batch = collate_indices(gs, run)
        assert_same_batch(batch, Batch.from_data_list([graphs[i] for i in run]))
        assert batch.x.untyped_storage().data_ptr() != gs.x.untyped_storage().data_ptr()  # its own tensors


def test_fast_batch_of_graphs_without_edges_and_repeats():
    graphs = random_graphs(6, 7)
    graphs[2] = Data(x=torch.ones(1, F_NODE), node_id=torch.tensor([3]), edge_index=torch.zeros(2, 0, dtype=torch.long),
                     edge_attr=torch.zeros(0, F_EDGE), y=torch.tensor([1]), node_y=torch.tensor([1]), num_nodes=1)
    gs = pack(graphs)
    idx = [2, 2, 0, 5]  # the same graph twice is allowed (DDP padding repeats graphs)
    assert_same_batch(collate_indices(gs, idx), Batch.from_data_list([graphs[i] for i in idx]))


def test_node_budget_respected_and_every_graph_once():
    graphs = random_graphs(200, 1)
    sizes = np.array([g.num_nodes for g in graphs])
    for budget in (12, 30, 100):
        sampler = GraphBatchSampler(len(graphs), 1, shuffle=True, seed=3, node_budget=budget, num_nodes=sizes)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert all(sizes[b].sum() <= budget for b in batches)  # every graph has <= 12 nodes <= budget
        assert sorted(i for b in batches for i in b) == list(range(len(graphs)))


def test_node_budget_smaller_than_a_graph_gives_it_alone():
    sizes = np.array([3, 50, 4])
    batches = list(GraphBatchSampler(3, 1, shuffle=False, node_budget=10, num_nodes=sizes))
    assert batches == [[0], [1], [2]]


def test_shuffle_is_seeded_per_epoch():
    def order(seed, epoch):
        s = GraphBatchSampler(100, 8, shuffle=True, seed=seed)
        s.set_epoch(epoch)
        return [i for b in s for i in b]

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)
    assert sorted(order(5, 3)) == list(range(100))
    assert [i for b in GraphBatchSampler(10, 3, shuffle=False) for i in b] == list(range(10))


@pytest.mark.parametrize("n,world_size,budget", [(100, 2, 0), (101, 3, 0), (7, 4, 0), (103, 3, 25), (50, 2, 40)])
def test_ddp_shards_partition_with_equal_batch_counts(n, world_size, budget):
    sizes = np.random.default_rng(0).integers(1, 13, n)
    shards = []
    for rank in range(world_size):
        s = GraphBatchSampler(n, 8, shuffle=True, seed=2, node_budget=budget, num_nodes=sizes if budget else None,
                              rank=rank, world_size=world_size)
        s.set_epoch(1)
        shards.append(list(s))
        assert len(shards[-1]) == len(s)
    assert len({len(b) for b in shards}) == 1, "every rank must step the same number of times (DDP would hang)"
    seen = [i for shard in shards for b in shard for i in b]
    assert set(seen) == set(range(n))  # a partition, padded by wrap-around like DistributedSampler
    if budget:  # whole batches are dealt out: at most world_size - 1 of them repeat
        assert all(sizes[b].sum() <= budget for shard in shards for b in shard)
        assert len(seen) - n <= (world_size - 1) * max(len(b) for shard in shards for b in shard)
    else:
        assert len(seen) == n + (-n) % world_size


def test_final_batch_of_one_graph_trains():
    from kdkit.models.registry import build_model

    graphs = random_graphs(17, 4)
    gs = pack(graphs)
    loader = graph_loader(gs, batch_size=8, shuffle=False)
    batches = list(loader)
    assert [b.num_graphs for b in batches] == [8, 8, 1]
    model = build_model("gat", "student", F_NODE, F_EDGE, 9, hidden=8, num_layers=1, heads=2, embedding_dim=4)
    loss = torch.nn.functional.cross_entropy(model(batches[-1]), batches[-1].y)
    loss.backward()
    assert torch.isfinite(loss)
    assert_same_batch(batches[-1], Batch.from_data_list(graphs[16:]))


def test_auto_num_workers_keeps_in_memory_store_in_process(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert auto_num_workers(in_memory=True) == 0
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(32)))
    assert 1 <= auto_num_workers(in_memory=True) <= 4
    loader = graph_loader(pack(random_graphs(4, 0)), batch_size=2, num_workers=0, pin_memory=True)
    assert loader.num_workers == 0 and loader.pin_memory


def test_trainer_moves_train_batches_non_blocking():
    """Fabric passes non_blocking to bare tensors only; the trainer copies PyG batches itself."""
    from types import SimpleNamespace

    from kdkit.training.trainer import FabricTrainer

    calls = []

    class FakeBatch:
        def to(self, device, non_blocking=False):
            calls.append((str(device), non_blocking))
            return self

    trainer = FabricTrainer.__new__(FabricTrainer)
    trainer.fabric = SimpleNamespace(device=torch.device("cuda"))
    trainer._to_device(FakeBatch())
    assert calls == [("cuda", True)]
    trainer.fabric = SimpleNamespace(device=torch.device("cpu"))
    b = FakeBatch()
    assert trainer._to_device(b) is b and len(calls) == 1


def test_unpadded_shards_cover_every_graph_once():
    """Evaluation shards (pad=False) split the graphs without repeats; training shards pad."""
    for n, world in ((10, 3), (7, 2), (2, 4)):
        shards = [np.concatenate([b for b in GraphBatchSampler(n, 4, shuffle=False, rank=r, world_size=world, pad=False)]
                                 or [np.zeros(0, dtype=int)]) for r in range(world)]
        assert sorted(np.concatenate(shards).tolist()) == list(range(n))
        padded = [sum(len(b) for b in GraphBatchSampler(n, 4, shuffle=False, rank=r, world_size=world)) for r in range(world)]
        assert len(set(padded)) == 1 and sum(padded) >= n


@pytest.mark.parametrize("seed", range(4))
def test_compiled_gather_equals_the_indexing_path_with_and_without_self_loops(seed, monkeypatch):
    """A shuffled batch of an in-memory store goes through the compiled two-pass gather; it is
    the torch indexing path's batch bit for bit, and with ``self_loops`` the batch
    ``with_self_loops`` makes of it (the graphs' own self-loops dropped, one per node with the
    mean of its incoming edges, 0 for a node without any), in the same edge order."""
    import kdkit.data.loader as loader
    from kdkit.models.layers import with_self_loops

    graphs = random_graphs(40, seed)  # random edges: self-loops, duplicates, graphs without edges
    gs = pack(graphs)
    rng = np.random.default_rng(seed)
    for size in (2, 7, 40):
        idx = rng.choice(len(graphs), size=size, replace=True)
        if (np.diff(idx) == 1).all():
            idx = idx[::-1].copy()
        assert loader._compiled_applies(gs, idx)
        fast, fast_loops = collate_indices(gs, idx), collate_indices(gs, idx, self_loops=True)
        monkeypatch.setattr(loader, "COMPILED_GATHER", False)
        ref = collate_indices(gs, idx)
        assert not loader._compiled_applies(gs, idx)
        ref_loops = with_self_loops(collate_indices(gs, idx))
        monkeypatch.setattr(loader, "COMPILED_GATHER", True)
        assert_same_batch(fast, ref)
        assert_same_batch(fast, Batch.from_data_list([graphs[i] for i in idx]))
        assert not getattr(fast, "loops_added", False) and fast_loops.loops_added
        assert_same_batch(fast_loops, ref_loops)
        assert with_self_loops(fast_loops) is fast_loops  # already looped: returned as is
    assert (gs.edge_index[0] == gs.edge_index[1]).any()  # the case of a graph's own self-loops was met


def test_compiled_gather_is_not_used_out_of_range_or_for_a_run():
    import kdkit.data.loader as loader

    gs = pack(random_graphs(5, 0))
    assert not loader._compiled_applies(gs, np.array([1, 2, 3]))  # a run: sliced
    assert not loader._compiled_applies(gs, np.array([3]))
    assert not loader._compiled_applies(gs, np.array([4, 5]))  # out of range: the indexing path raises
    with pytest.raises(IndexError):
        collate_indices(gs, [4, 5])
