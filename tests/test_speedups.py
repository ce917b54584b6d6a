"""The speed-ups (kdkit.models.layers.GATv2Layer / EdgeProjection / with_self_loops,
kdkit.training.cpu_speedups) change how the work is done, never the result: same outputs, same
gradients, same checkpoints; and the allocator statistics they are measured by.

Run: .venv/bin/python -m pytest tests/test_speedups.py -q
"""
from __future__ import annotations

import sys
import time

import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.nn import GATv2Conv

from kdkit.data.loader import collate_indices, graph_loader
from kdkit.models.layers import EdgeProjection, GATv2Layer, with_self_loops
from kdkit.models.registry import build_model
from kdkit.training import cpu_speedups


def _gat(gs, kind="student", seed=0):
    torch.manual_seed(seed)
    return build_model("gat", kind, num_node_features=gs.x.size(1), num_edge_features=gs.edge_attr.size(1),
                       num_ids=int(gs.node_id.max()) + 1)


def _grads(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(batch)
    (out * torch.arange(1, out.numel() + 1, dtype=out.dtype).view_as(out)).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_edge_projection_matches_linear_fp32_and_bf16():
    torch.manual_seed(0)
    x = torch.randn(3000, 7)
    w = torch.randn(128, 7, requires_grad=True)
    g = torch.randn(3000, 128)
    ref = torch.nn.functional.linear(x, w)
    ref.backward(g)
    ref_grad = w.grad.clone()
    w.grad = None
    proj = EdgeProjection(7, 128, weight=torch.nn.Parameter(w.detach().clone()))
    out = proj(x)
    out.backward(g)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(proj.weight.grad, ref_grad, rtol=1e-5, atol=1e-3)
    assert proj.weight.grad.dtype == torch.float32 and list(proj.state_dict()) == ["weight"]
    proj.weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_b = torch.nn.functional.linear(x, w)
        out_b = proj(x)
    assert out_b.dtype == ref_b.dtype == torch.bfloat16
    torch.testing.assert_close(out_b, ref_b)
    out_b.float().backward(g)
    assert proj.weight.grad.dtype == torch.float32  # the fp32 master weight gets an fp32 gradient
    torch.testing.assert_close(proj.weight.grad, ref_grad, rtol=0.05, atol=2.0)  # bf16 products over 3000 rows


def test_gatv2_layer_equals_the_stock_pyg_layer():
    """GATv2Layer = GATv2Conv(add_self_loops=True, fill_value="mean"): same parameters (names and
    initial values from the same seed), outputs and gradients, with or without loops added first."""
    torch.manual_seed(0)
    stock = GATv2Conv(16, 8, heads=3, edge_dim=7, add_self_loops=True, fill_value="mean")
    torch.manual_seed(0)
    ours = GATv2Layer(16, 8, heads=3, edge_dim=7)
    assert stock.state_dict().keys() == ours.state_dict().keys()
    for k, v in stock.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, msg=k)
    assert isinstance(ours.lin_edge, EdgeProjection)
    x = torch.randn(9, 16)
    edge_index = torch.tensor([[0, 1, 2, 3, 3, 4, 5, 6, 7, 8, 2], [1, 2, 0, 3, 4, 5, 6, 7, 8, 0, 2]])  # 2 data loops
    edge_attr = torch.randn(edge_index.size(1), 7)
    g = torch.randn(9, 24)
    outs = []
    for layer, loops_added in ((stock, None), (ours, False), (ours, True)):
        layer.zero_grad(set_to_none=True)
        ei, ea = edge_index, edge_attr
        if loops_added:
            looped = with_self_loops(Data(x=x, edge_index=edge_index, edge_attr=edge_attr))
            ei, ea = looped.edge_index, looped.edge_attr
        out = layer(x, ei, ea) if loops_added is None else layer(x, ei, ea, loops_added)
        (out * g).sum().backward()
        outs.append((out.detach(), {n: p.grad.clone() for n, p in layer.named_parameters()}))
    for out, grads in outs[1:]:
        torch.testing.assert_close(out, outs[0][0], rtol=1e-5, atol=1e-6)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, outs[0][1][name], rtol=1e-4, atol=1e-5, msg=name)


def test_model_output_unchanged_when_batches_carry_their_self_loops(synthetic):
    gs = synthetic.splits["train"]
    model = _gat(gs, "teacher").eval()
    with torch.no_grad():
        ref = model(collate_indices(gs, list(range(12))))
        looped = model(with_self_loops(collate_indices(gs, list(range(12)))))
    torch.testing.assert_close(looped, ref, rtol=1e-5, atol=1e-5)


def test_graph_loader_transform_applies_to_every_batch(synthetic):
    gs = synthetic.splits["val"]
    plain = list(graph_loader(gs, 32))
    looped = list(graph_loader(gs, 32, transform=with_self_loops))
    assert len(plain) == len(looped)
    for a, b in zip(plain, looped):
        assert b.edge_index.size(1) > a.edge_index.size(1)
        assert (b.edge_index[0] == b.edge_index[1]).sum() == b.x.size(0)  # one self-loop per node


def test_compiled_gat_fit_keeps_the_module_and_matches_checkpoint(synthetic, tmp_path):
    """cfg.compile trains a GAT whose batches carry their self-loops, compiled with
    nn.Module.compile: the module keeps its parameters and state_dict keys, nothing is patched
    onto its instances, and it scores like the saved checkpoint loaded into a fresh model."""
    from kdkit.config import make_config
    from kdkit.training.checkpoint import load_checkpoint, model_from_checkpoint
    from kdkit.training.task import Task
    from kdkit.training.trainer import FabricTrainer
    from kdkit.workflows.run import build_student_or_teacher, class_weights

    cfg = make_config(model="gat", type="student", dataset="synthetic", epochs=1, batch_size=32, compile=True,
                      accelerator="cpu", precision="32-true", devices=1)
    train_set, val_set = synthetic.splits["train"], synthetic.splits["val"]
    model = build_student_or_teacher(cfg, synthetic)
    task = Task(model, cfg, None, class_weights(train_set))
    keys = list(model.state_dict())
    fit = FabricTrainer(cfg, tmp_path / "run", progress=False).fit(task, train_set, val_set)
    assert list(model.state_dict()) == keys and model.node_input.validate_inputs
    assert all("forward" not in vars(m) for m in model.modules())
    assert all(c.self_loops for c in model.gnn.convs)
    ck = load_checkpoint(fit.last_path)
    fresh = model_from_checkpoint(ck).eval()
    batch = collate_indices(val_set, list(range(min(20, len(val_set)))))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(batch), fresh(batch))


def test_compiled_kd_fit_compiles_the_gat_teacher_too(synthetic, tmp_path):
    """With compile, a distilled GAT student's teacher is compiled as well (its forward pass is most
    of a KD step on CPU): it stays the same module (same state_dict keys) and gives the eager
    teacher's logits and per-layer embeddings on a training batch (self-loops added by the loader)."""
    from kdkit.config import make_config
    from kdkit.training.task import Task
    from kdkit.training.trainer import FabricTrainer
    from kdkit.workflows.run import class_weights

    train_set, val_set = synthetic.splits["train"], synthetic.splits["val"]
    teacher = _gat(train_set, "teacher").eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    keys = list(teacher.state_dict())
    cfg = make_config(model="gat", type="student", dataset="synthetic", epochs=1, batch_size=32, compile=True,
                      accelerator="cpu", precision="32-true", devices=1, vehicle_dropout=0.0)
    student = _gat(train_set, "student", seed=1)
    task = Task(student, cfg, teacher, class_weights(train_set))
    trainer = FabricTrainer(cfg, tmp_path / "kd", progress=False)
    trainer.fabric.launch()
    loader, _, task_m, _ = trainer.prepare(task, train_set, val_set)
    assert teacher._compiled_call_impl is not None and student._compiled_call_impl is not None
    assert list(teacher.state_dict()) == keys
    batch = next(iter(loader))
    with torch.no_grad():
        compiled = teacher(batch, return_features=True)
        teacher._compiled_call_impl = None  # the same module, eager
        eager = teacher(batch, return_features=True)
    torch.testing.assert_close(compiled.logits, eager.logits, rtol=1e-4, atol=1e-5)
    for a, b in zip(compiled.node_embeddings, eager.node_embeddings):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt/mallinfo2")
def test_allocator_tuning_and_allocated_bytes():
    from kdkit.training.memory import PeakMemory, allocated_bytes

    assert cpu_speedups.tune_cpu_allocator() and cpu_speedups.tune_cpu_allocator()  # glibc; idempotent
    before = allocated_bytes()
    assert before is not None and before > 0
    with PeakMemory("cpu") as mem:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        # held for 100 sampling intervals: allocated bytes are sampled every 1 ms by a thread, which a
        # loaded CI machine may not schedule while a short-lived allocation exists (seen once in CI)
        time.sleep(0.1)
        del x
    assert mem.alloc_peak_bytes is not None and mem.alloc_peak_bytes >= 60 * 2**20
    assert allocated_bytes() < before + 32 * 2**20  # freed: in use again near where it started


def test_make_optimizer_is_fused_adamw():
    from kdkit.config import make_config

    cfg = make_config(model="gat", type="student", dataset="synthetic")
    opt = cpu_speedups.make_optimizer(torch.nn.Linear(4, 2).parameters(), cfg, torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"] is True
    assert opt.defaults["lr"] == cfg.learning_rate and opt.defaults["weight_decay"] == cfg.weight_decay


def test_make_optimizer_decays_matrices_only(synthetic):
    """nanoGPT's rule: weight decay for tensors of >= 2 dims; biases and norm parameters keep theirs."""
    from kdkit.config import make_config

    cfg = make_config(model="gat", type="student", dataset="synthetic", weight_decay=0.1, learning_rate=0.01)
    model = _gat(synthetic.splits["train"])
    frozen = next(p for p in model.parameters() if p.dim() >= 2)
    frozen.requires_grad_(False)
    opt = cpu_speedups.make_optimizer(model.parameters(), cfg, torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decay["fused"] is True and no_decay["fused"] is True  # still one fused kernel per group
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert decayed == {n for n, p in trainable.items() if p.dim() >= 2}
    assert kept == {n for n, p in trainable.items() if p.dim() < 2}
    assert any(n.endswith("bias") for n in kept) and any("norm" in n for n in kept)
    assert any(n.endswith("weight") and trainable[n].dim() == 2 for n in decayed)
    # one step with zero gradients: only the decayed tensors shrink, by lr * weight_decay
    before = {n: p.detach().clone() for n, p in trainable.items()}
    for p in trainable.values():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in trainable.items():
        expected = before[n] * (1 - 0.01 * 0.1) if n in decayed else before[n]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-7)


def test_compile_auto_policy_and_config_values(synthetic, tmp_path):
    """compile "auto" (the default) turns on for a GAT on CPU with a long run and PyG's attention
    only (the fused attention kernel, the default, runs eager faster); the config takes true,
    false or "auto" and nothing else."""
    from kdkit.config import make_config, parse_config_json
    from kdkit.training.task import Task
    from kdkit.training.trainer import COMPILE_AUTO_MIN_STEPS, FabricTrainer
    from kdkit.workflows.run import build_student_or_teacher

    assert make_config().compile == "auto"
    for text, value in (('{"compile": true}', True), ('{"compile": false}', False), ('{"compile": "auto"}', "auto")):
        assert parse_config_json(text)["compile"] == value
    for bad in ('{"compile": "yes"}', '{"compile": 1}', '{"compile": null}'):
        with pytest.raises(ValueError, match="'compile'"):
            parse_config_json(bad)

    train_set = synthetic.splits["train"]
    steps_per_epoch = -(-len(train_set) // 64)
    long_epochs = -(-COMPILE_AUTO_MIN_STEPS // steps_per_epoch)

    def decide(model: str, epochs: int, compile="auto", attention="stock") -> bool:
        cfg = make_config(model=model, type="student", dataset="synthetic", epochs=epochs, batch_size=64,
                          accelerator="cpu", devices=1, compile=compile, attention=attention)
        task = Task(build_student_or_teacher(cfg, synthetic), cfg)
        return FabricTrainer(cfg, tmp_path / model, progress=False).use_compile(task, train_set)

    assert decide("gat", long_epochs) is True
    assert decide("gat", max(long_epochs - 1, 1)) is (max(long_epochs - 1, 1) * steps_per_epoch >= COMPILE_AUTO_MIN_STEPS)
    assert decide("gat", 1) is False and decide("vgae", long_epochs) is False
    assert decide("gat", 1, compile=True) is True and decide("gat", long_epochs, compile=False) is False
    assert decide("gat", long_epochs, attention="auto") is False and decide("gat", long_epochs, attention="fused") is False
    assert decide("gat", 1, compile=True, attention="auto") is True


def test_old_one_group_optimizer_state_resumes_into_two_groups():
    """A last.pt written before weight decay was split (one AdamW group) still resumes: each
    parameter gets its own moments back, and the schedule's per-group lists cover both groups."""
    from kdkit.config import make_config

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 2))
    old = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    old_sched = torch.optim.lr_scheduler.LambdaLR(old, lambda step: 0.5)
    model(torch.randn(5, 4)).sum().backward()
    old.step()
    old_sched.step()
    state, sched_state = old.state_dict(), old_sched.state_dict()
    new = cpu_speedups.make_optimizer(model.parameters(), make_config(learning_rate=0.01, weight_decay=0.1),
                                      torch.device("cpu"))
    assert len(new.param_groups) == 2
    new.load_state_dict(cpu_speedups.upgrade_optimizer_state(state, new, model.parameters()))
    for p in model.parameters():
        torch.testing.assert_close(new.state[p]["exp_avg"], old.state[p]["exp_avg"])
    assert [g["weight_decay"] for g in new.param_groups] == [0.1, 0.0]
    assert all(g["lr"] == old.param_groups[0]["lr"] for g in new.param_groups)
    sched = torch.optim.lr_scheduler.LambdaLR(new, lambda step: 0.5)
    sched.load_state_dict(cpu_speedups.upgrade_scheduler_state(sched_state, new))
    sched.step()
    assert [g["lr"] for g in new.param_groups] == [0.005, 0.005]
    same = cpu_speedups.upgrade_optimizer_state(new.state_dict(), new, model.parameters())
    assert same["param_groups"] == new.state_dict()["param_groups"]  # a current state passes through


@pytest.mark.parametrize("max_norm", [1e-3, 1e9])
def test_clip_grad_norm_cpu_equals_torch(max_norm):
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(s)) for s in ((7, 5), (5,), (3, 2, 4))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    for p, q in zip(a, b):
        p.grad = torch.randn(p.shape)
        q.grad = p.grad.clone()
    a.append(torch.nn.Parameter(torch.randn(2)))  # no gradient: left out, as torch does
    want = torch.nn.utils.clip_grad_norm_(b, max_norm)
    got = cpu_speedups.clip_grad_norm_cpu(a, max_norm)
    torch.testing.assert_close(got, want)
    for p, q in zip(a, b):
        torch.testing.assert_close(p.grad, q.grad)
    assert a[-1].grad is None


def test_clip_grad_norm_cpu_spreads_a_nan_like_torch():
    p, q = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    p.grad, q.grad = torch.tensor([1.0, float("nan"), 2.0]), torch.tensor([3.0, 4.0])
    assert torch.isnan(cpu_speedups.clip_grad_norm_cpu([p, q], 1.0))
    assert torch.isnan(p.grad).all() and torch.isnan(q.grad).all()  # the broken step shows in every tensor


def test_training_steps_run_on_one_core(synthetic, tmp_path):
    """A 1-thread training run keeps to one core: no library thread (numpy's OpenBLAS spun one
    at 100 % after every product in the fused attention) burns another while it trains."""
    import os
    from pathlib import Path

    from kdkit.bench.train import _fabric_steps
    from kdkit.config import make_config
    from kdkit.training.task import Task

    if not Path("/proc/self/task").is_dir():
        pytest.skip("needs Linux /proc")
    gs = synthetic.splits["train"]
    cfg = make_config(model="gat", type="student", dataset="synthetic", epochs=1, batch_size=32,
                      accelerator="cpu", precision="32-true", devices=1)
    task = Task(_gat(gs), cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        step, _ = _fabric_steps(cfg, gs, task, False, str(tmp_path))
        for _ in range(3):
            step()

        def ticks():
            out = {}
            for tid in os.listdir("/proc/self/task"):
                try:
                    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                out[tid] = int(fields[11]) + int(fields[12])  # utime + stime
            return out

        before = ticks()
        t = time.perf_counter()
        while time.perf_counter() - t < 1.5:
            step()
        after = ticks()
    finally:
        torch.set_num_threads(threads)
    main = str(os.getpid())
    used = {tid: after[tid] - before.get(tid, 0) for tid in after}
    others = sum(v for tid, v in used.items() if tid != main)
    assert used[main] > 0
    assert others <= 0.2 * used[main], f"other threads used {others} ticks while the main thread used {used[main]}"
