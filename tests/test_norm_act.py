"""The fused ``dropout(elu(layer_norm(h + c)))`` of a GAT layer's tail (kdkit.models.norm_act):
torch's values and gradients, the same dropout masks as the unfused path, NaN, the ELU's
polynomial over float32's range, the fallbacks and the models' switch.

Run: .venv/bin/python -m pytest tests/test_norm_act.py -q
"""
import pytest
import torch
import torch.nn.functional as F
from test_fused_attention import _batch

import kdkit.models.layers as layers
from kdkit.models.dropout import dropout
from kdkit.models.layers import GATStack, set_attention_kernel
from kdkit.models.norm_act import norm_elu_dropout, uses_fused_norm_act
from kdkit.models.registry import build_model


def _inputs(n=37, c=24, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = (2 * torch.randn(n, c, generator=g, dtype=dtype)).requires_grad_()
    r = torch.randn(n, c, generator=g, dtype=dtype).requires_grad_()
    norm = torch.nn.LayerNorm(c).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(c, generator=g, dtype=dtype))
        norm.bias.copy_(torch.randn(c, generator=g, dtype=dtype))
    return h, r, norm


def _reference(h, r, norm, p, training):
    return dropout(F.elu(norm(h + r)), p, training)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("p,training", [(0.0, True), (0.3, True), (0.3, False)])
def test_values_gradients_and_masks_equal_the_unfused_path(dtype, p, training):
    h, r, norm = _inputs(dtype=dtype)
    grad = torch.randn(h.shape, dtype=dtype, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(3)
    ref = _reference(h, r, norm, p, training)
    want = torch.autograd.grad(ref, (h, r, norm.weight, norm.bias), grad)
    torch.manual_seed(3)  # the same seed: the same mask (drawn by kdkit.models.dropout.dropout_mask)
    out = norm_elu_dropout(h, r, norm, p, training)
    got = torch.autograd.grad(out, (h, r, norm.weight, norm.bias), grad)
    tol = dict(atol=2e-6, rtol=2e-6) if dtype == torch.float32 else dict(atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(out, ref, **tol)
    assert torch.equal(out == 0, ref == 0)  # the same dropped elements
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=tol["atol"] * 20, rtol=tol["rtol"] * 20)


def test_gradcheck_float64():
    h, r, norm = _inputs(n=6, c=8, dtype=torch.float64, seed=1)
    w, b = norm.weight.detach().clone().requires_grad_(), norm.bias.detach().clone().requires_grad_()

    def f(h, r, w, b):
        with torch.no_grad():
            norm.weight.copy_(w)
            norm.bias.copy_(b)
        torch.manual_seed(0)
        from kdkit.models.norm_act import _NormActFn
        return _NormActFn.apply(h, r, w, b, 1e-5, None)

    assert torch.autograd.gradcheck(f, (h, r, w, b))


def test_float32_elu_matches_expm1_over_the_whole_range():
    """The vectorized float32 ``expm1`` (a polynomial and 2^n from bit selects) against torch's,
    from -100 (clamped) through the smallest magnitudes to large positive values."""
    y = torch.cat([torch.linspace(-100, 100, 200_001), -torch.logspace(-30, 1.5, 5000),
                   torch.tensor([0.0, -0.0, -17.5, -17.4, -87.0, 1e-30, -1e-30])]).float()
    c = y.numel()
    norm = torch.nn.LayerNorm(c, elementwise_affine=True)
    with torch.no_grad():  # a row whose normalised values are 0, so that elu is applied to the bias
        norm.weight.zero_()
        norm.bias.copy_(y)
    x = torch.zeros(1, c)
    with torch.no_grad():
        out = norm_elu_dropout(x, x, norm, 0.0, False)[0]
    ref = F.elu(y.double()).float()
    err = (out - ref).abs()
    assert float(err.max()) <= 1.2e-7, f"worst at y={float(y[err.argmax()])}: {float(out[err.argmax()])} vs {float(ref[err.argmax()])}"
    small = y.abs() < 1e-3  # near 0 the result keeps its relative precision (expm1, not exp - 1)
    assert float(((out - ref).abs() / ref.abs().clamp_min(1e-38))[small & (y != 0)].max()) < 1e-6


def test_nan_and_inf_propagate():
    h, r, norm = _inputs(n=4, c=8)
    with torch.no_grad():
        h[1, 3] = float("nan")
        h[2, 0] = float("inf")
    out = norm_elu_dropout(h, r, norm, 0.0, False)
    ref = F.elu(norm(h + r))
    assert torch.isnan(out[1]).all() and torch.isnan(ref[1]).all()
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    torch.testing.assert_close(out[[0, 3]], ref[[0, 3]], atol=2e-6, rtol=2e-6)


def test_bad_shapes_are_refused():
    h, r, norm = _inputs(n=4, c=8)
    with pytest.raises(ValueError, match=r"h \(4, 8\), c \(4, 7\)"):
        norm_elu_dropout(h, r[:, :7], norm, 0.0, False)


def test_fallbacks_keep_torch():
    h, _, norm = _inputs(n=4, c=8)
    assert uses_fused_norm_act(h, norm)
    assert not uses_fused_norm_act(h.detach().to(torch.bfloat16), norm)
    assert not uses_fused_norm_act(h, torch.nn.BatchNorm1d(8))
    assert not uses_fused_norm_act(h, torch.nn.LayerNorm(8, elementwise_affine=False))


@pytest.mark.parametrize("kind,size", [("gat", "student"), ("gat", "teacher"), ("vgae", "student")])
def test_models_give_the_unfused_outputs_and_gradients(kind, size, monkeypatch):
    """Training mode (dropout on): the same seed gives the same masks, so the whole model's
    loss and gradients must match the unfused path; ``attention: stock`` turns it off."""
    torch.manual_seed(0)
    model = build_model(kind, size, 11, 7, 20).train()
    batch = _batch(seed=2)

    def run():
        model.zero_grad()
        torch.manual_seed(11)
        out = model(batch)
        loss = out.square().mean() if kind == "gat" else model.loss(batch)["loss"]
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    calls = []
    real = layers.norm_elu_dropout
    monkeypatch.setattr(layers, "norm_elu_dropout", lambda *a: calls.append(1) or real(*a))
    fused_loss, fused_grads = run()
    n_layers = sum(len(m.convs) for m in model.modules() if isinstance(m, GATStack))
    assert calls and len(calls) % n_layers == 0  # every layer of every encoder pass
    monkeypatch.setattr(layers, "uses_fused_norm_act", lambda h, norm: False)
    ref_loss, ref_grads = run()
    torch.testing.assert_close(fused_loss, ref_loss, atol=1e-5, rtol=1e-5)
    assert fused_grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(fused_grads[name], ref_grads[name], atol=1e-4, rtol=1e-3, msg=name)
    monkeypatch.setattr(layers, "uses_fused_norm_act", lambda h, norm: True)
    calls.clear()
    set_attention_kernel(model, "stock")
    model(batch)
    assert not calls  # the plain PyTorch path
