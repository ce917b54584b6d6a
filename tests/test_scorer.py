"""kdkit.models.scorer: the inference scorer gives the stock GAT's logits (teacher and student presets,
single graphs, data self-loops, nodes without in-edges, graphs of one node), in eager mode and
compiled, and stays exact where the self-loop shift would overflow (the scatter-max branch).

Run: .venv/bin/python -m pytest tests/test_scorer.py -q
"""
from __future__ import annotations

import pytest
import torch

from kdkit.data.loader import collate_indices
from kdkit.models import scorer as fastgat
from kdkit.models.layers import set_attention_kernel
from kdkit.models.registry import build_model
from kdkit.models.scorer import GATScorer, score_batch, scorer_inputs


def _model(gs, size: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model("gat", size, gs.x.size(1), gs.edge_attr.size(1), int(gs.node_id.max()) + 1, **overrides).eval()


def _with_data_self_loops(batch):
    """Add a data self-loop (an ID following itself) on every third node, and drop every in-edge of
    node 1, so both cases the stock layers special-case are present."""
    nodes = torch.arange(0, batch.num_nodes, 3)
    keep = batch.edge_index[1] != 1
    batch.edge_index = torch.cat([batch.edge_index[:, keep], nodes.repeat(2, 1)], dim=1)
    batch.edge_attr = torch.cat([batch.edge_attr[keep], torch.rand(nodes.numel(), batch.edge_attr.size(1))])
    return batch


@pytest.mark.parametrize("size,jk", [("teacher", "cat"), ("student", "cat"), ("student", "max")])
def test_scorer_equals_stock_model(synthetic, size, jk):
    gs = synthetic.splits["val"]
    model = _model(gs, size, jk=jk)
    scorer = GATScorer(model)
    with torch.no_grad():
        for idx in ([0], [4, 1, 9], list(range(len(gs)))[:50]):
            for batch in (collate_indices(gs, idx), _with_data_self_loops(collate_indices(gs, idx))):
                got, ref = score_batch(scorer, batch), model(batch)
                assert got.shape == (len(idx), 2)
                torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_scorer_handles_one_node_graphs_without_edges():
    from torch_geometric.data import Batch, Data

    torch.manual_seed(1)
    graphs = [Data(x=torch.rand(n, 5), node_id=torch.randint(0, 9, (n,)), edge_index=e, edge_attr=torch.rand(e.size(1), 3))
              for n, e in ((1, torch.zeros(2, 0, dtype=torch.long)), (3, torch.tensor([[0, 1], [1, 2]])),
                           (1, torch.tensor([[0], [0]])))]
    batch = Batch.from_data_list(graphs)
    model = build_model("gat", "student", 5, 3, 9).eval()
    with torch.no_grad():
        torch.testing.assert_close(score_batch(GATScorer(model), batch), model(batch), rtol=1e-5, atol=1e-5)


def test_scorer_takes_the_exact_branch_when_the_shift_would_overflow(synthetic, monkeypatch):
    """Attention scores ~1e3 apart: exp of the self-loop shift overflows, so the scorer must take
    the scatter-max branch; forcing the fast branch shows it would have given non-finite logits."""
    gs = synthetic.splits["val"]
    model = _model(gs, "student", seed=3)
    # the reference is PyG's own path: at scores ~1e4 a float32 sum in another order (the fused
    # kernel's) moves a logit by ~3e-5, more than this test's 1e-5
    set_attention_kernel(model, "stock")
    with torch.no_grad():
        for conv in model.gnn.convs:
            conv.att.mul_(1e4)
    batch = collate_indices(gs, list(range(30)))
    with torch.no_grad():
        ref = model(batch)
        got = score_batch(GATScorer(model), batch)
        assert torch.isfinite(ref).all()
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        monkeypatch.setattr(fastgat, "SAFE_SHIFT", float("inf"))
        assert not torch.isfinite(score_batch(GATScorer(model), batch)).all()


def test_compiled_scorer_equals_stock_model_on_other_sizes(synthetic):
    gs = synthetic.splits["val"]
    model = _model(gs, "student", seed=2)
    scorer = torch.compile(GATScorer(model), dynamic=True)
    with torch.no_grad():
        for idx in (list(range(8)), list(range(len(gs)))[:60], [7, 3]):
            batch = _with_data_self_loops(collate_indices(gs, idx))
            torch.testing.assert_close(scorer(*scorer_inputs(batch)), model(batch), rtol=1e-4, atol=1e-5)


def test_scorer_refuses_models_it_cannot_reproduce(synthetic):
    gs = synthetic.splits["val"]
    vgae = build_model("vgae", "student", gs.x.size(1), gs.edge_attr.size(1), 50)
    with pytest.raises(ValueError, match="GAT classifier"):
        GATScorer(vgae)
    no_loops = build_model("gat", "student", gs.x.size(1), gs.edge_attr.size(1), 50, add_self_loops=False)
    with pytest.raises(ValueError, match="self-loops"):
        GATScorer(no_loops)


def test_check_batch_names_bad_indices(synthetic):
    from kdkit.models.scorer import check_batch

    gs = synthetic.splits["val"]
    batch = collate_indices(gs, [0, 1])
    check_batch(batch, num_ids=int(batch.node_id.max()) + 1)  # a good batch passes
    with pytest.raises(ValueError, match=r"gw\.pt2: batch\.node_id spans .*\(the model has num_ids="):
        check_batch(batch, num_ids=int(batch.node_id.max()), where="gw.pt2")
    wrong_graph = collate_indices(gs, [0, 1])
    wrong_graph.batch[-1] = 2
    with pytest.raises(ValueError, match=r"batch\.batch spans 0\.\.2, outside 0\.\.1 \(the batch has 2 graphs\)"):
        check_batch(wrong_graph)
    batch.edge_index[1, 0] = batch.num_nodes
    with pytest.raises(ValueError, match=rf"edge_index spans 0\.\.{batch.num_nodes}, outside"):
        check_batch(batch)


def test_gather_windows_equals_collate(synthetic):
    """Sliced runs of consecutive windows (and the gathered fallback) hold collate_indices' tensors,
    and the stock model and the scorer read them like a batch."""
    from kdkit.data.loader import gather_windows

    gs = synthetic.splits["val"]
    n = len(gs)
    model = _model(gs, "student")
    for idx in ([0], [n - 1], list(range(5, 37)), list(range(n - 10, n)), [4, 2, 9], list(range(n))):
        got, ref = gather_windows(gs, idx), collate_indices(gs, idx)
        assert got.num_graphs == ref.num_graphs == len(idx) and got.num_nodes == ref.num_nodes
        for key in ("x", "node_id", "edge_index", "edge_attr", "batch", "ptr"):
            assert torch.equal(getattr(got, key), getattr(ref, key)), (idx[:3], key)
        with torch.no_grad():
            torch.testing.assert_close(model(got), model(ref))
            torch.testing.assert_close(score_batch(GATScorer(model), got), model(ref), rtol=1e-5, atol=1e-5)
    before = gs.edge_index.clone()
    gather_windows(gs, list(range(3, 9)))
    assert torch.equal(gs.edge_index, before)  # the store is never written through a slice


def test_scorer_mirrors_the_installed_pyg_release():
    """The scorer re-implements GATv2Conv's forward: a new PyG release needs the equality tests
    above re-checked and MIRRORS_PYG updated before it ships."""
    import torch_geometric

    assert torch_geometric.__version__.startswith(fastgat.MIRRORS_PYG + "."), (
        f"GATScorer mirrors PyG {fastgat.MIRRORS_PYG}, installed {torch_geometric.__version__}")
