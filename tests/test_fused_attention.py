"""The fused GATv2 attention kernel equals PyG's GATv2Conv: forward and every gradient, alone and
inside kdkit's models, eager and under torch.compile; torch.export keeps the stock path.

Run: .venv/bin/python -m pytest tests/test_fused_attention.py -q
"""
from types import SimpleNamespace

import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.nn import GATv2Conv

from kdkit.models.fused_attention import gatv2_attention
from kdkit.models.layers import GATv2Layer, set_attention_kernel, with_self_loops
from kdkit.models.registry import build_model


def _random_graph(num_nodes, num_edges, seed, edge_dim=7, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    # the last 3 nodes get no incoming edge; duplicates, self-loops and any order are kept
    ei = torch.randint(0, num_nodes - 3, (2, num_edges), generator=g)
    ea = torch.rand(num_edges, edge_dim, generator=g, dtype=dtype) if edge_dim else None
    return ei, ea


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
# every way of taking the edge projection W_e e: none, one product before the loops (3 features,
# few heads x channels), the loops' generic sum (3 features, INLINE_EDGES_FROM lowered) and their
# one-pass sum of kdkit's 7 features
@pytest.mark.parametrize("edge_dim,inline_from", [(None, 128), (3, 128), (3, 1), (7, 128)])
@pytest.mark.parametrize("concat", [True, False])
def test_kernel_equals_gatv2conv_forward_and_gradients(dtype, tol, edge_dim, inline_from, concat, monkeypatch):
    from kdkit.models import fused_attention as fa

    monkeypatch.setattr(fa, "INLINE_EDGES_FROM", inline_from)
    assert not edge_dim or fa._edges_inline(4, 8, edge_dim) == (edge_dim == 7 or inline_from == 1)
    torch.manual_seed(0)
    H, C = 4, 8
    conv = GATv2Conv(12, C, heads=H, concat=concat, edge_dim=edge_dim, add_self_loops=False).to(dtype)
    with torch.no_grad():  # non-zero bias and attention far from 0: every term of the gradient matters
        conv.bias.normal_()
        conv.att.mul_(5)
    x = torch.randn(30, 12, dtype=dtype, requires_grad=True)
    ei, ea = _random_graph(30, 90, seed=1, edge_dim=edge_dim or 0, dtype=dtype)
    ea = ea if edge_dim else None
    params = [x] + list(conv.parameters())

    ref = conv(x, ei, ea)
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, params, g, allow_unused=True)

    x_l, x_r = conv.lin_l(x).view(-1, H, C), conv.lin_r(x).view(-1, H, C)
    out = gatv2_attention(x_l, x_r, ei, conv.att, ea, conv.lin_edge.weight if edge_dim else None,
                          negative_slope=conv.negative_slope)
    out = (out.reshape(-1, H * C) if concat else out.mean(dim=1)) + conv.bias
    grads = torch.autograd.grad(out, params, g, allow_unused=True)

    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    assert out[-3:].abs().sum() > 0  # nodes without incoming edges get the bias, as in PyG
    for name, a, b in zip(["x"] + [n for n, _ in conv.named_parameters()], grads, ref_grads):
        if b is None:
            assert a is None or not a.abs().sum(), name
        else:
            torch.testing.assert_close(a, b, atol=tol * 10, rtol=tol * 10, msg=name)


def test_kernel_passes_gradcheck_in_float64():
    torch.manual_seed(0)
    H, C, N = 2, 3, 7
    ei, ea = _random_graph(N, 16, seed=2, edge_dim=3, dtype=torch.float64)
    inputs = (torch.randn(N, H, C, dtype=torch.float64, requires_grad=True),
              torch.randn(N, H, C, dtype=torch.float64, requires_grad=True),
              torch.randn(H, C, dtype=torch.float64, requires_grad=True),
              torch.randn(H * C, 3, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(lambda xl, xr, att, w: gatv2_attention(xl, xr, ei, att, ea, w), inputs)


def test_kernel_propagates_nan_and_checks_its_arguments():
    ei, ea = _random_graph(10, 20, seed=3)
    x_l = torch.randn(10, 2, 4)
    x_l[ei[0, 0]] = float("nan")
    out = gatv2_attention(x_l, torch.randn(10, 2, 4), ei, torch.randn(2, 4), ea, torch.randn(8, 7))
    assert torch.isnan(out[ei[1, 0]]).any()  # a NaN input is not hidden by the kernel
    with pytest.raises(ValueError, match="both edge_attr and edge_weight"):
        gatv2_attention(x_l, x_l, ei, torch.randn(2, 4), ea)
    bad = ei.clone()
    bad[1, 3] = 10  # a node that does not exist: a clear error, not a read past the array
    with pytest.raises(ValueError, match=r"edge_index spans 0\.\.10 but there are 10 nodes"):
        gatv2_attention(x_l, x_l, bad, torch.randn(2, 4), ea, torch.randn(8, 7))


def _batch(num_graphs=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    graphs = []
    for k in range(num_graphs):
        n = 5 + k
        ei = torch.randint(0, n, (2, 3 * n), generator=g)
        graphs.append(Data(x=torch.rand(n, 11, generator=g), node_id=torch.randint(0, 20, (n,), generator=g),
                           edge_index=ei, edge_attr=torch.rand(ei.size(1), 7, generator=g), y=torch.tensor([k % 2])))
    return Batch.from_data_list(graphs)


@pytest.mark.parametrize("kind,size", [("gat", "teacher"), ("gat", "student"), ("vgae", "student")])
def test_models_give_the_same_outputs_and_gradients_with_either_kernel(kind, size):
    torch.manual_seed(0)
    model = build_model(kind, size, 11, 7, 20).eval()  # eval: no dropout, so both paths see the same math
    batch = _batch()

    def run(kernel):
        assert set_attention_kernel(model, kernel) > 0
        model.zero_grad()
        out = model(batch)
        loss = out.square().mean() if kind == "gat" else model.loss(batch)["loss"]
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    conv = next(m for m in model.modules() if isinstance(m, GATv2Layer))
    assert conv.uses_fused_kernel(batch.x) and not conv.uses_fused_kernel(batch.x.to(torch.bfloat16))
    loss_stock, grads_stock = run("stock")
    loss_fused, grads_fused = run("fused")
    torch.testing.assert_close(loss_fused, loss_stock, atol=1e-5, rtol=1e-5)
    assert grads_fused.keys() == grads_stock.keys()
    for name in grads_stock:
        torch.testing.assert_close(grads_fused[name], grads_stock[name], atol=2e-5, rtol=1e-3, msg=name)


def test_training_mode_and_attention_dropout_choose_the_path():
    layer = GATv2Layer(8, 4, heads=2, dropout=0.3, edge_dim=7)
    x = torch.randn(5, 8)
    assert layer.train().uses_fused_kernel(x) is False  # attention dropout in training: PyG's path
    assert layer.eval().uses_fused_kernel(x) is True
    layer.attention = "stock"
    assert layer.uses_fused_kernel(x) is False
    with pytest.raises(ValueError, match="attention='dense'"):
        set_attention_kernel(layer, "dense")


def test_compiled_model_keeps_the_kernel_in_one_graph_and_matches_eager():
    torch.manual_seed(0)
    model = build_model("gat", "student", 11, 7, 20).eval()
    batch = with_self_loops(_batch(seed=1))  # as the trainer compiles: the loops added by the loader
    eager = model(batch)
    compiled = torch.compile(model, fullgraph=True, dynamic=True)  # fullgraph: a graph break would raise
    torch.testing.assert_close(compiled(batch), eager, atol=1e-5, rtol=1e-5)
    model.zero_grad()
    compiled(batch).sum().backward()
    assert all(p.grad is not None for p in model.gnn.parameters())


def test_torch_export_traces_the_stock_path():
    """kdkit export goes through kdkit.models.scorer, which never calls GATv2Layer.forward; a user
    exporting a model directly still gets a graph without the Python-only operator."""
    torch.manual_seed(0)
    model = build_model("gat", "student", 11, 7, 20).eval()
    batch = with_self_loops(_batch(seed=2))  # torch.export cannot trace the data-dependent remove_self_loops

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x, node_id, edge_index, edge_attr, vec):
            return self.model(SimpleNamespace(x=x, node_id=node_id, edge_index=edge_index, edge_attr=edge_attr,
                                              batch=vec, num_graphs=6, loops_added=True))

    args = (batch.x, batch.node_id, batch.edge_index, batch.edge_attr, batch.batch)
    program = torch.export.export(Wrapped(), args)
    assert "gatv2_attention" not in str(program.graph)  # kdkit export's AOTInductor package needs no Python op
    assert "mean_max_pool" not in str(program.graph)
    torch.testing.assert_close(program.module()(*args), model(batch), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("inline", [False, True])
def test_kernel_writes_every_output_row_without_a_zero_fill(inline, monkeypatch):
    """The kernel assigns a node's row on its first write instead of zero-filling the outputs:
    rows that no edge touches (isolated nodes) must still come out as 0, whatever the memory held.
    Both ways of taking the edge projection: one product before the loops, or summed in them."""
    import numpy as np

    from kdkit.models import fused_attention as fa

    monkeypatch.setattr(fa, "INLINE_EDGES_FROM", 1 if inline else 10**9)
    torch.manual_seed(0)
    N, H, C = 12, 2, 4
    ei, ea = _random_graph(N, 30, seed=6, edge_dim=3, dtype=torch.float64)  # nodes 9-11: no edges
    xl, xr = torch.randn(N, H, C, dtype=torch.float64), torch.randn(N, H, C, dtype=torch.float64)
    att, w = torch.randn(H, C, dtype=torch.float64), torch.randn(3, H * C, dtype=torch.float64)
    src, dst, consts = ei[0].numpy(), ei[1].numpy(), fa._consts(xl, 0.2)
    w_t = w  # the operator's w_edge: [D, H * C]
    pe = fa._projected(ea, w_t, H, C)
    assert pe.shape[0] == (0 if inline else 30)
    we = w_t.numpy().reshape(3, H, C)
    out, alpha = np.full((N, H, C), np.nan), np.full((30, H), np.nan)  # garbage, as torch.empty may hold
    fa._kernel("forward")(xl.numpy(), xr.numpy(), pe, ea.numpy(), we, att.numpy(), src, dst, consts, N, alpha, out)
    ref_out, ref_alpha = fa._attention_op(xl, xr, ea, w_t, att, ei, 0.2)
    np.testing.assert_allclose(out, ref_out.numpy(), rtol=1e-12, atol=1e-12)
    assert (out[9:] == 0).all() and not np.isnan(out).any()
    grad = np.random.default_rng(0).standard_normal((N, H, C))
    g_xl, g_xr = np.full((N, H, C), np.nan), np.full((N, H, C), np.nan)
    g_we, g_att = np.zeros((3, H, C)), np.zeros((H, C))
    fa._kernel("backward")(grad, xl.numpy(), xr.numpy(), pe, ea.numpy(), we, att.numpy(), src, dst, consts,
                           alpha, g_xl, g_xr, g_we, g_att)
    refs = fa._attention_backward_op(torch.from_numpy(grad), xl, xr, ea, w_t, att, ei, ref_alpha, 0.2)
    for got, ref in zip((g_xl, g_xr, g_we.reshape(3, H * C), g_att), refs):
        np.testing.assert_allclose(got, ref.numpy(), rtol=1e-12, atol=1e-12)
    assert (g_xl[9:] == 0).all() and (g_xr[9:] == 0).all()
