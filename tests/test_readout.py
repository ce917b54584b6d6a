"""The fused mean/max graph readout (kdkit.models.readout): PyG's values and gradients (ties, empty
graphs, any node order), the fallbacks, the models' switch, and torch.compile keeping it whole.

Run: .venv/bin/python -m pytest tests/test_readout.py -q
"""
import pytest
import torch
from test_fused_attention import _batch
from torch_geometric.nn import global_max_pool, global_mean_pool

from kdkit.models.layers import set_attention_kernel, with_self_loops
from kdkit.models.readout import mean_max_pool, uses_fused_pool
from kdkit.models.registry import build_model


def _pyg(x, batch, num_graphs):
    return torch.cat([global_mean_pool(x, batch, num_graphs), global_max_pool(x, batch, num_graphs)], dim=-1)


def _case(seed: int, n: int = 60, f: int = 7, graphs: int = 9, dtype=torch.float64, shuffle: bool = False):
    g = torch.Generator().manual_seed(seed)
    batch = torch.sort(torch.randint(0, graphs, (n,), generator=g)).values
    batch[batch == 4] = 5  # graph 4 has no nodes
    x = torch.randn(n, f, generator=g, dtype=dtype)
    # exact ties for a maximum: copy a graph's row into another node of that graph
    first = int((batch == 5).nonzero()[0])
    x[first + 1] = x[first]
    x[first + 2, :3] = x[first, :3]
    if shuffle:  # nodes of a graph need not be contiguous
        perm = torch.randperm(n, generator=g)
        x, batch = x[perm], batch[perm]
    return x.requires_grad_(), batch, graphs


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_and_gradients_equal_pyg(dtype, shuffle):
    for seed in range(5):
        x, batch, graphs = _case(seed, dtype=dtype, shuffle=shuffle)
        ref, got = _pyg(x, batch, graphs), mean_max_pool(x, batch, graphs)
        tol = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-12, "rtol": 1e-12}
        torch.testing.assert_close(got, ref, **tol)
        assert (got[4] == 0).all()  # the graph without nodes: mean 0 and max 0, as PyG
        grad = torch.randn_like(ref)
        (g_ref,) = torch.autograd.grad(ref, x, grad)
        (g_got,) = torch.autograd.grad(got, x, grad)
        torch.testing.assert_close(g_got, g_ref, **tol)


def test_tied_maximum_splits_its_gradient_evenly():
    x = torch.tensor([[1.0, 5.0], [3.0, 5.0], [3.0, 2.0], [0.0, 5.0]], dtype=torch.float64, requires_grad=True)
    batch = torch.zeros(4, dtype=torch.long)
    out = mean_max_pool(x, batch, 1)
    assert out.tolist() == [[1.75, 4.25, 3.0, 5.0]]
    (g,) = torch.autograd.grad(out, x, torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=torch.float64))
    assert g.tolist() == [[0.0, 1 / 3], [0.5, 1 / 3], [0.5, 0.0], [0.0, 1 / 3]]
    six = torch.tensor([0, 1, 1, 0, 1, 1])
    assert torch.autograd.gradcheck(lambda t: mean_max_pool(t, six, 2),
                                    (torch.randn(6, 3, dtype=torch.float64, requires_grad=True),))


def test_nan_reaches_the_output_and_bad_indices_are_refused():
    x = torch.randn(5, 3)
    x[2, 1] = float("nan")
    out = mean_max_pool(x, torch.tensor([0, 0, 1, 1, 1]), 2)
    assert torch.isnan(out[1, 1]) and not torch.isnan(out[0]).any()  # the mean carries it: the loss turns NaN
    with pytest.raises(ValueError, match="batch spans 0..3 but there are 2 graphs"):
        mean_max_pool(x, torch.tensor([0, 0, 1, 3, 1]), 2)
    with pytest.raises(ValueError, match=r"batch has shape \(4,\) for 5 nodes"):
        mean_max_pool(x, torch.tensor([0, 0, 1, 1]), 2)


def test_fallbacks_take_pyg():
    x, batch = torch.randn(8, 4), torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    assert uses_fused_pool(x) and not uses_fused_pool(x.to(torch.bfloat16))
    torch.testing.assert_close(mean_max_pool(x.to(torch.bfloat16), batch, 3), _pyg(x.to(torch.bfloat16), batch, 3))
    torch.testing.assert_close(mean_max_pool(x, batch, 3, fused=False), _pyg(x, batch, 3))


@pytest.mark.parametrize("kind", ["gat", "fusion"])
def test_models_use_it_and_stock_switches_it_off(kind):
    torch.manual_seed(0)
    model = build_model(kind, "student", 11, 7, 20).train()
    batch = _batch(seed=3)
    assert model.fast_readout
    torch.manual_seed(5)
    out = model(batch)
    logits = out if kind == "gat" else out.logits
    set_attention_kernel(model, "stock")
    assert not model.fast_readout
    set_attention_kernel(model, "auto")
    assert model.fast_readout
    # the same model through PyG's pooling: the same logits (the same dropout masks under the same seed)
    model.fast_readout = False
    torch.manual_seed(5)
    ref = model(batch)
    torch.testing.assert_close(logits, ref if kind == "gat" else ref.logits, atol=1e-5, rtol=1e-5)


def test_compiled_training_step_keeps_readout_and_dropout_ops_in_one_graph():
    """fullgraph=True raises on a graph break: the readout, the attention kernel and the dropout
    mask all compile as opaque calls; train mode draws kdkit's masks inside the graph."""
    torch.manual_seed(0)
    model = build_model("gat", "student", 11, 7, 20).train()
    batch = with_self_loops(_batch(seed=4))
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    torch.manual_seed(9)
    a = compiled(batch)
    a.sum().backward()
    assert all(p.grad is not None for p in model.gnn.parameters())
    torch.manual_seed(9)
    assert torch.equal(compiled(batch), a)  # the masks' seed comes from torch's generator
    model.eval()
    torch.testing.assert_close(compiled(batch), model(batch), atol=1e-5, rtol=1e-5)
