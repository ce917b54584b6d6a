"""kdkit's cheap CPU dropout masks: the distribution and gradient of F.dropout, reproducible under
torch.manual_seed, and the fallbacks to F.dropout where they do not apply.

Run: .venv/bin/python -m pytest tests/test_dropout.py -q
"""
import math

import pytest
import torch
import torch.nn.functional as F

from kdkit.models.dropout import dropout, dropout_mask, uses_fast_mask
from kdkit.models.layers import GATStack, set_attention_kernel


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.9])
def test_mask_keeps_one_minus_p_and_scales_the_kept(p):
    torch.manual_seed(0)
    mask = dropout_mask((400, 257), p)  # 102,800 elements, not a multiple of 4
    kept = (mask > 0).double()
    n = kept.numel()
    # within 5 standard deviations of a Binomial(n, 1 - p)
    assert abs(kept.mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    assert mask.unique().tolist() == [0.0, pytest.approx(1 / (1 - p))]
    # neighbours (in a word and across words) are not correlated
    flat = kept.flatten()
    for lag in (1, 3, 4, 5):
        corr = torch.corrcoef(torch.stack([flat[:-lag], flat[lag:]]))[0, 1].item()
        assert abs(corr) < 0.02, (lag, corr)


def test_masks_follow_torch_manual_seed_and_differ_between_calls():
    torch.manual_seed(7)
    a, b = dropout_mask((33, 5), 0.3), dropout_mask((33, 5), 0.3)
    torch.manual_seed(7)
    assert torch.equal(dropout_mask((33, 5), 0.3), a)
    assert not torch.equal(a, b)
    gen = torch.Generator().manual_seed(1)
    c = dropout_mask((7,), 0.5, torch.float64, generator=gen)
    assert c.dtype == torch.float64 and torch.equal(c, dropout_mask((7,), 0.5, torch.float64,
                                                                    generator=torch.Generator().manual_seed(1)))
    for n in (1, 2, 3, 5, 6, 7):  # sizes below one word and with a tail
        torch.manual_seed(n)
        m = dropout_mask((n,), 0.5)
        assert m.shape == (n,) and set(m.tolist()) <= {0.0, 2.0}


def test_dropout_gradient_is_the_mask_and_eval_is_identity():
    x = torch.randn(50, 8, requires_grad=True)
    torch.manual_seed(3)
    y = dropout(x, 0.25, training=True)
    torch.manual_seed(3)
    mask = dropout_mask(x.shape, 0.25)
    torch.testing.assert_close(y, x * mask)
    y.sum().backward()
    torch.testing.assert_close(x.grad, mask)
    assert dropout(x, 0.25, training=False) is x and dropout(x, 0.0) is x
    with pytest.raises(ValueError, match="p=1.5"):
        dropout_mask((3,), 1.5)


def test_falls_back_to_torch_where_the_fast_mask_does_not_apply():
    x = torch.randn(64, 16)
    assert uses_fast_mask(x) and uses_fast_mask(x.double())
    assert not uses_fast_mask(x.to(torch.bfloat16))
    y = dropout(x.to(torch.bfloat16), 0.5)
    assert y.dtype == torch.bfloat16  # F.dropout: bf16 stays bf16
    torch.manual_seed(0)
    stock = dropout(x, 0.5, fast=False)
    torch.manual_seed(0)
    torch.testing.assert_close(stock, F.dropout(x, 0.5, training=True))
    assert (dropout(x, 1.0) == 0).all()


def test_gat_stack_uses_the_fast_masks_unless_stock_is_asked():
    torch.manual_seed(0)
    stack = GATStack(hidden=16, num_layers=2, heads=2, edge_dim=None, dropout=0.5).train()
    x, ei = torch.randn(20, 16), torch.randint(0, 20, (2, 60))
    assert stack.fast_dropout
    torch.manual_seed(1)
    fast = stack(x, ei)[-1]
    torch.manual_seed(1)
    assert torch.equal(stack(x, ei)[-1], fast)  # reproducible
    set_attention_kernel(stack, "stock")
    assert not stack.fast_dropout
    torch.manual_seed(1)
    stock = stack(x, ei)[-1]
    assert not torch.equal(stock, fast)  # other masks, same expected keep rate
    kept_fast, kept_stock = (fast != 0).float().mean().item(), (stock != 0).float().mean().item()
    assert abs(kept_fast - kept_stock) < 0.15
    set_attention_kernel(stack, "auto")
    assert stack.fast_dropout
