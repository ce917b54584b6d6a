"""The training fast path (kdkit.fastpath) changes how the work is done, never the result:
same outputs, same gradients, same checkpoints; and the allocator statistics it is measured by.

Run: .venv/bin/python -m pytest tests/test_fastpath.py -q
"""
from __future__ import annotations

import sys

import pytest
import torch

from kdkit import fastpath
from kdkit.batching import collate_indices, graph_loader
from kdkit.models import build_model


def _gat(gs, kind="student", seed=0):
    torch.manual_seed(seed)
    return build_model("gat", kind, num_node_features=gs.x.size(1), num_edge_features=gs.edge_attr.size(1),
                       num_ids=int(gs.node_id.max()) + 1)


def _grads(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(batch)
    (out * torch.arange(1, out.numel() + 1, dtype=out.dtype).view_as(out)).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_skinny_linear_matches_linear_fp32_and_bf16():
    torch.manual_seed(0)
    x = torch.randn(3000, 7)
    w = torch.randn(128, 7, requires_grad=True)
    g = torch.randn(3000, 128)
    ref = torch.nn.functional.linear(x, w)
    ref.backward(g)
    ref_grad = w.grad.clone()
    w.grad = None
    out = fastpath._SkinnyLinear.apply(x, w)
    out.backward(g)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(w.grad, ref_grad, rtol=1e-5, atol=1e-3)
    assert w.grad.dtype == torch.float32
    w.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_b = torch.nn.functional.linear(x, w)
        out_b = fastpath._SkinnyLinear.apply(x, w)
    assert out_b.dtype == ref_b.dtype == torch.bfloat16
    torch.testing.assert_close(out_b, ref_b)
    out_b.float().backward(g)
    assert w.grad.dtype == torch.float32  # the fp32 master weight gets an fp32 gradient
    torch.testing.assert_close(w.grad, ref_grad, rtol=0.05, atol=2.0)  # bf16 products over 3000 rows


def test_fast_edge_projections_same_outputs_grads_and_state(synthetic):
    gs = synthetic.splits["train"]
    batch = collate_indices(gs, list(range(16)))
    ref_model, fast_model = _gat(gs).train(), _gat(gs).train()
    keys = list(fast_model.state_dict())
    assert fastpath.fast_edge_projections(fast_model) == 3  # the student's 3 GATv2 layers
    assert fastpath.fast_edge_projections(fast_model) == 0  # idempotent
    torch.manual_seed(1)
    ref_out, ref_g = _grads(ref_model, batch)
    torch.manual_seed(1)
    out, grads = _grads(fast_model, batch)
    torch.testing.assert_close(out, ref_out)
    assert grads.keys() == ref_g.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_g[name], rtol=1e-4, atol=1e-5, msg=name)
    assert list(fast_model.state_dict()) == keys
    fastpath.restore_edge_projections(fast_model)
    assert all("forward" not in vars(m) for m in fast_model.modules())


def test_self_loops_outside_and_restore(synthetic):
    gs = synthetic.splits["train"]
    batch = collate_indices(gs, list(range(12)))
    model = _gat(gs, "teacher").eval()
    with torch.no_grad():
        ref = model(batch)
        fastpath.prepare_gat_for_compile(model)
        assert not any(c.add_self_loops for c in fastpath._gatv2_layers(model))
        looped = model(fastpath.with_self_loops(collate_indices(gs, list(range(12)))))
        fastpath.restore_gat(model)
        assert model.node_input.validate_inputs
        assert all(c.add_self_loops for c in fastpath._gatv2_layers(model))
        again = model(collate_indices(gs, list(range(12))))
    torch.testing.assert_close(looped, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, ref)


def test_graph_loader_transform_applies_to_every_batch(synthetic):
    gs = synthetic.splits["val"]
    plain = list(graph_loader(gs, 32))
    looped = list(graph_loader(gs, 32, transform=fastpath.with_self_loops))
    assert len(plain) == len(looped)
    for a, b in zip(plain, looped):
        assert b.edge_index.size(1) > a.edge_index.size(1)
        assert (b.edge_index[0] == b.edge_index[1]).sum() == b.x.size(0)  # one self-loop per node


def test_compiled_gat_fit_restores_model_and_matches_checkpoint(synthetic, tmp_path):
    """cfg.compile trains a GAT with self-loops outside; after fit the model is stock again
    and scores like the saved checkpoint loaded into a fresh model."""
    from kdkit.config import make_config
    from kdkit.pipeline import build_student_or_teacher, class_weights
    from kdkit.trainer import FabricTrainer, Task, load_checkpoint, model_from_checkpoint

    cfg = make_config(model="gat", type="student", dataset="synthetic", epochs=1, batch_size=32, compile=True,
                      accelerator="cpu", precision="32-true", devices=1)
    train_set, val_set = synthetic.splits["train"], synthetic.splits["val"]
    model = build_student_or_teacher(cfg, synthetic)
    task = Task(model, cfg, None, class_weights(train_set))
    fit = FabricTrainer(cfg, tmp_path / "run", progress=False).fit(task, train_set, val_set)
    assert "forward" not in vars(model)
    assert all(c.add_self_loops for c in fastpath._gatv2_layers(model)) and model.node_input.validate_inputs
    assert all("forward" not in vars(m) for m in model.modules())
    ck = load_checkpoint(fit.last_path)
    fresh = model_from_checkpoint(ck).eval()
    batch = collate_indices(val_set, list(range(min(20, len(val_set)))))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(batch), fresh(batch))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt/mallinfo2")
def test_allocator_tuning_and_allocated_bytes():
    from kdkit.batching_auto import PeakMemory, allocated_bytes

    assert fastpath.tune_cpu_allocator() and fastpath.tune_cpu_allocator()  # glibc; idempotent
    before = allocated_bytes()
    assert before is not None and before > 0
    with PeakMemory("cpu") as mem:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del x
    assert mem.alloc_peak_bytes is not None and mem.alloc_peak_bytes >= 60 * 2**20
    assert allocated_bytes() < before + 32 * 2**20  # freed: in use again near where it started


def test_make_optimizer_is_fused_adamw():
    from kdkit.config import make_config

    cfg = make_config(model="gat", type="student", dataset="synthetic")
    opt = fastpath.make_optimizer(torch.nn.Linear(4, 2).parameters(), cfg, torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"] is True
    assert opt.defaults["lr"] == cfg.learning_rate and opt.defaults["weight_decay"] == cfg.weight_decay


def test_compile_auto_policy_and_config_values(synthetic, tmp_path):
    """compile "auto" (the default) turns on for a GAT on CPU with a long run only; the config
    takes true, false or "auto" and nothing else."""
    from kdkit.config import make_config, parse_config_json
    from kdkit.pipeline import build_student_or_teacher
    from kdkit.trainer import COMPILE_AUTO_MIN_STEPS, FabricTrainer, Task

    assert make_config().compile == "auto"
    for text, value in (('{"compile": true}', True), ('{"compile": false}', False), ('{"compile": "auto"}', "auto")):
        assert parse_config_json(text)["compile"] == value
    for bad in ('{"compile": "yes"}', '{"compile": 1}', '{"compile": null}'):
        with pytest.raises(ValueError, match="'compile'"):
            parse_config_json(bad)

    train_set = synthetic.splits["train"]
    steps_per_epoch = -(-len(train_set) // 64)
    long_epochs = -(-COMPILE_AUTO_MIN_STEPS // steps_per_epoch)

    def decide(model: str, epochs: int, compile="auto") -> bool:
        cfg = make_config(model=model, type="student", dataset="synthetic", epochs=epochs, batch_size=64,
                          accelerator="cpu", devices=1, compile=compile)
        task = Task(build_student_or_teacher(cfg, synthetic), cfg)
        return FabricTrainer(cfg, tmp_path / model, progress=False).use_compile(task, train_set)

    assert decide("gat", long_epochs) is True
    assert decide("gat", max(long_epochs - 1, 1)) is (max(long_epochs - 1, 1) * steps_per_epoch >= COMPILE_AUTO_MIN_STEPS)
    assert decide("gat", 1) is False and decide("vgae", long_epochs) is False
    assert decide("gat", 1, compile=True) is True and decide("gat", long_epochs, compile=False) is False
