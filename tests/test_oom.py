"""OOM back-off of the Fabric trainer, tested by injecting out-of-memory errors.

A wrapper around ``Task.training_loss`` raises when a batch holds more than ``k`` graphs. The
trainer must halve its batch size, redo the failed part in chunks and finish the epoch with
every graph trained on exactly once, each chunk's loss being that chunk's own loss; below
``min_batch_size`` it stops with a clear message.

Run: .venv/bin/python -m pytest tests/test_oom.py -q
"""
from __future__ import annotations

import pytest
import torch

from kdkit.config import make_config
from kdkit.data.loader import collate_indices
from kdkit.training.memory import is_oom
from kdkit.training.task import Task
from kdkit.training.trainer import FabricTrainer

TINY = dict(hidden=8, layers=1, heads=1, embedding_dim=4, epochs=1, patience=100, precision="32-true",
            accelerator="cpu", save_compat=False, warmup_steps=2, dropout=0.0, id_dropout=0.0, vehicle_dropout=0.0)


def tiny_cfg(tmp_path, **kw):
    return make_config(**{**TINY, "runs_dir": str(tmp_path / "runs"), **kw})


class InjectOOM:
    """Replaces Task.training_loss: raises ``error`` above ``k`` graphs, else checks the loss.

    Before each real call it computes the loss directly on a fresh batch of the same graph
    indices (same parameters, deterministic model) and records both, with the indices."""

    def __init__(self, gs, k: int, error=torch.cuda.OutOfMemoryError):
        self.gs, self.k, self.error = gs, k, error
        self.original = Task.training_loss
        self.trained: list[int] = []
        self.sizes: list[int] = []
        self.losses: list[tuple[float, float]] = []
        self.method = lambda task, batch: self(task, batch)  # a function, so it binds as a method

    def __call__(self, task, batch):
        if batch.num_graphs > self.k:
            raise self.error(f"injected: {batch.num_graphs} graphs > {self.k}")
        with torch.no_grad():
            direct, _ = self.original(task, collate_indices(self.gs, batch.graph_idx))
        loss, parts = self.original(task, batch)
        self.trained += batch.graph_idx.tolist()
        self.sizes.append(batch.num_graphs)
        self.losses.append((float(loss.detach()), float(direct)))
        return loss, parts


def _trainer_pieces(cfg, synthetic, tmp_path):
    """What FabricTrainer.fit sets up, for calling _run_batch directly."""
    from kdkit.data.loader import graph_loader
    from kdkit.training.optim import make_scheduler
    from kdkit.training.trainer import _CollateWithIndex
    from kdkit.workflows.run import build_student_or_teacher, class_weights

    gs = synthetic.splits["train"]
    trainer = FabricTrainer(cfg, tmp_path / "run", progress=False)
    trainer.fabric.launch()
    task = Task(build_student_or_teacher(cfg, synthetic), cfg, None, class_weights(gs))
    opt = torch.optim.AdamW(task.parameters(), lr=1e-3)
    task_m, opt = trainer.fabric.setup(task, opt)
    sched = make_scheduler(opt, cfg, 100)
    loader = graph_loader(gs, cfg.batch_size, shuffle=True, seed=0)
    loader.collate_fn = _CollateWithIndex(gs)
    trainer._epoch = 0
    return trainer, task, task_m, opt, sched, gs, next(iter(loader))


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError, MemoryError,
                                   lambda m: RuntimeError(f"DefaultCPUAllocator: can't allocate memory: {m}")])
def test_run_batch_halves_and_trains_each_graph_once(synthetic, tmp_path, monkeypatch, error):
    cfg = tiny_cfg(tmp_path, batch_size=64)
    trainer, task, task_m, opt, sched, gs, batch = _trainer_pieces(cfg, synthetic, tmp_path)
    inject = InjectOOM(gs, k=20, error=error)
    monkeypatch.setattr(Task, "training_loss", inject.method)
    out = trainer._run_batch(task, task_m, opt, sched, gs, batch)
    assert [(e["from"], e["to"]) for e in trainer.oom_events] == [(64, 32), (32, 16)]
    assert trainer.batch_size == 16
    assert inject.sizes == [16, 16, 16, 16]
    assert sorted(inject.trained) == sorted(batch.graph_idx.tolist())  # nothing skipped, nothing twice
    assert [loss for loss, _ in out] == pytest.approx([a for a, _ in inject.losses])
    for real, direct in inject.losses:  # each chunk's loss is the loss of exactly that chunk
        assert real == pytest.approx(direct, rel=1e-5, abs=1e-6)


def test_fit_continues_epoch_after_oom_and_keeps_smaller_batches(synthetic, tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path, batch_size=64, epochs=2, scheduler="onecycle")  # onecycle must survive extra steps
    gs = synthetic.splits["train"]
    inject = InjectOOM(gs, k=40)
    monkeypatch.setattr(Task, "training_loss", inject.method)
    from kdkit.workflows.run import build_student_or_teacher, class_weights

    task = Task(build_student_or_teacher(cfg, synthetic), cfg, None, class_weights(gs))
    result = FabricTrainer(cfg, tmp_path / "run", progress=False).fit(task, gs, synthetic.splits["val"])
    assert result.epochs_run == 2 and result.final_batch_size == 32
    assert result.oom_events == [{"epoch": 0, "from": 64, "to": 32}]
    n = len(gs)
    assert sorted(inject.trained) == sorted(list(range(n)) * 2)  # each epoch: every graph exactly once
    assert max(inject.sizes) == 32
    assert [h["batch_size"] for h in result.history] == [32, 32]
    assert all(h["train_peak_mib"] > 0 and h["val_peak_mib"] > 0 for h in result.history)
    log = (tmp_path / "run" / "fabric_training.log").read_text()
    assert "out of memory at batch size 64: continuing with 32" in log and "memory: train peak" in log


def test_oom_at_min_batch_size_fails_clearly(synthetic, tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path, batch_size=32, min_batch_size=4)
    trainer, task, task_m, opt, sched, gs, batch = _trainer_pieces(cfg, synthetic, tmp_path)
    monkeypatch.setattr(Task, "training_loss", InjectOOM(gs, k=0).method)
    with pytest.raises(RuntimeError, match=r"out of memory even at batch size 4 \(min_batch_size=4\)") as info:
        trainer._run_batch(task, task_m, opt, sched, gs, batch)
    assert isinstance(info.value.__cause__, torch.cuda.OutOfMemoryError)
    assert [e["to"] for e in trainer.oom_events] == [16, 8, 4]


def test_other_errors_are_not_swallowed(synthetic, tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path, batch_size=32)
    trainer, task, task_m, opt, sched, gs, batch = _trainer_pieces(cfg, synthetic, tmp_path)

    def broken(task, batch):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(Task, "training_loss", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        trainer._run_batch(task, task_m, opt, sched, gs, batch)
    assert trainer.oom_events == []


def test_is_oom():
    assert is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(MemoryError())
    assert is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"))
    assert not is_oom(RuntimeError("index out of range"))


def test_bf16_policy_reaches_the_loss(synthetic, tmp_path, monkeypatch):
    """training_loss runs outside the Fabric module's forward: the trainer must enter autocast."""
    cfg = tiny_cfg(tmp_path, batch_size=16, precision="bf16-mixed")
    trainer, task, task_m, opt, sched, gs, batch = _trainer_pieces(cfg, synthetic, tmp_path)
    seen = []
    original = Task.training_loss

    def spy(task, batch):
        seen.append(torch.is_autocast_enabled("cpu"))
        return original(task, batch)

    monkeypatch.setattr(Task, "training_loss", spy)
    trainer._run_batch(task, task_m, opt, sched, gs, batch)
    assert seen == [True]
