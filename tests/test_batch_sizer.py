"""Tests of the batch sizer, peak memory and phases (kdkit.training) and the hardware presets.

Run: .venv/bin/python -m pytest tests/test_batch_sizer.py -q
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from kdkit.models.registry import build_model
from kdkit.training import batch_sizer as batching_auto
from kdkit.training.batch_sizer import DynamicBatchSizer, probe_graph
from kdkit.training.memory import PeakMemory, phase_peak

F_NODE, F_EDGE, NUM_IDS = 6, 3, 10
MEMORY = 512 * 2**20  # the "device memory" the targets apply to (memory_bytes): deterministic budgets


def graphs(n: int = 40, seed: int = 0) -> list[Data]:
    """Windows of 30..90 nodes with 3 edges per node: about a MB of activations per graph."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        nodes = int(rng.integers(30, 91))
        e = 3 * nodes
        out.append(Data(x=torch.rand(nodes, F_NODE), node_id=torch.randint(0, NUM_IDS, (nodes,)),
                        edge_index=torch.randint(0, nodes, (2, e)), edge_attr=torch.rand(e, F_EDGE),
                        y=torch.tensor([int(rng.integers(0, 2))]), num_nodes=nodes))
    return out


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(batching_auto, "_MEMORY_CACHE", {})
    torch.set_num_threads(1)


def model():
    torch.manual_seed(0)
    return build_model("gat", "student", F_NODE, F_EDGE, NUM_IDS, hidden=16, num_layers=1, heads=4,
                       embedding_dim=4, concat_heads=True)


def sizer(target, **kw):
    return DynamicBatchSizer(model(), graphs(), target_memory_usage=target, max_batch_size=kw.pop("max_batch_size", 96),
                             precision="32-true", device="cpu", memory_bytes=MEMORY, **kw)


def test_probe_graph_is_the_95th_percentile_with_its_own_edges():
    gs = graphs(40)
    g = probe_graph(gs)
    sizes = sorted(x.num_nodes for x in gs)
    assert g.num_nodes == sizes[int(0.95 * 39)]
    assert g.edge_index.size(1) == 3 * g.num_nodes and int(g.edge_index.max()) < g.num_nodes
    assert probe_graph(gs[0]) is gs[0]


def test_replicated_probe_batch_equals_pyg_collate():
    from torch_geometric.data import Batch

    from kdkit.training.batch_sizer import replicate

    g = graphs(1, 9)[0]
    a, b = replicate(g, 5), Batch.from_data_list([g] * 5)
    assert a.num_graphs == 5
    for key in ("x", "node_id", "edge_index", "edge_attr", "y", "batch", "ptr"):
        assert torch.equal(a[key], b[key]), key


def test_probe_graph_from_a_graphset_matches_the_list():
    from kdkit.data.graphs import GraphSet

    gl = graphs(30, 3)
    nn = torch.tensor([g.num_nodes for g in gl])
    ne = torch.tensor([g.edge_index.size(1) for g in gl])
    z = torch.zeros(1, dtype=torch.long)
    cat = lambda k: torch.cat([getattr(g, k) for g in gl])  # noqa: E731
    gs = GraphSet(x=cat("x"), node_id=cat("node_id"), can_id=cat("node_id"), node_y=torch.zeros(int(nn.sum()), dtype=torch.uint8),
                  edge_index=torch.cat([g.edge_index for g in gl], 1).int(), edge_attr=cat("edge_attr"),
                  node_ptr=torch.cat([z, nn.cumsum(0)]), edge_ptr=torch.cat([z, ne.cumsum(0)]), y=cat("y"),
                  attack_share=torch.zeros(30), attack_type=torch.zeros(30, dtype=torch.long),
                  file_index=torch.zeros(30, dtype=torch.long), start=torch.arange(30))
    a, b = probe_graph(gl), probe_graph(gs)
    assert a.num_nodes == b.num_nodes and torch.equal(a.edge_index, b.edge_index)


def test_cpu_sizes_within_bounds_and_monotone_in_target():
    sizes = []
    for target in (0.02, 0.08, 0.32):
        s = sizer(target, use_cache=False)
        b = s.estimate_optimal_batch_size()
        r = s.result
        assert 1 <= b <= 96
        assert r.budget_bytes == int(target * MEMORY) and r.device == "cpu" and r.precision == "32-true"
        assert r.node_budget == b * r.nodes_per_graph and r.max_num == r.node_budget
        fitted = [p for bb, p in r.probes if bb == r.largest_fit]
        assert fitted and fitted[-1] <= r.budget_bytes  # the chosen size was measured to fit
        assert all(p is None or p > r.budget_bytes for bb, p in r.probes if bb > r.largest_fit)
        sizes.append(b)
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1], sizes


def test_second_call_is_a_cache_hit_without_probing(tmp_path):
    first = sizer(0.05)
    b = first.estimate_optimal_batch_size()
    assert not first.result.cached and first.result.probes
    probes = DynamicBatchSizer.probes_run
    t = time.perf_counter()
    second = sizer(0.05)
    assert second.estimate_optimal_batch_size() == b
    assert time.perf_counter() - t < 1.0 and DynamicBatchSizer.probes_run == probes and second.result.cached
    batching_auto._MEMORY_CACHE.clear()  # a new process: the JSON file answers
    third = sizer(0.05)
    assert third.estimate_optimal_batch_size() == b and DynamicBatchSizer.probes_run == probes
    disk = json.loads((tmp_path / "cache" / "batch_sizes.json").read_text())
    assert disk[third.cache_key()]["batch_size"] == b
    assert sizer(0.06).cache_key() != third.cache_key()  # the target is part of the key
    assert DynamicBatchSizer(model(), graphs(), 0.05, max_batch_size=96, precision="bf16-mixed", device="cpu",
                             memory_bytes=MEMORY).cache_key() != third.cache_key()


def test_max_batch_size_bounds_without_margin():
    s = sizer(0.9, max_batch_size=4, use_cache=False)
    assert s.estimate_optimal_batch_size() == 4 and s.result.largest_fit == 4


def test_too_small_a_target_returns_min_batch_size(caplog):
    s = sizer(0.0001, min_batch_size=2, use_cache=False)
    assert s.estimate_optimal_batch_size() == 2
    assert "does not fit" in caplog.text


def test_probe_runs_forward_and_backward_under_the_precision():
    seen = []

    def loss_fn(m, batch):
        seen.append((torch.is_autocast_enabled("cpu"), batch.num_graphs))
        return torch.nn.functional.cross_entropy(m(batch).float(), batch.y)

    m = model()
    before = [p.detach().clone() for p in m.parameters()]
    s = DynamicBatchSizer(m, graphs(), 0.05, max_batch_size=4, precision="bf16-mixed", device="cpu",
                          loss_fn=loss_fn, use_cache=False, memory_bytes=MEMORY)
    s.estimate_optimal_batch_size()
    assert all(flag for flag, _ in seen) and max(n for _, n in seen) == 4
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))  # a copy is probed, not the model


def test_result_feeds_pyg_dynamic_batch_sampler():
    s = sizer(0.05)
    s.estimate_optimal_batch_size()
    data = graphs(60, 5)
    batches = [b for b in s.result.pyg_batch_sampler(data, shuffle=False)]  # it has no len()
    assert sum(len(b) for b in batches) == 60
    assert all(sum(data[i].num_nodes for i in b) <= s.result.node_budget for b in batches)


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="target_memory_usage"):
        DynamicBatchSizer(model(), graphs(), target_memory_usage=1.5)
    with pytest.raises(ValueError, match="min_batch_size"):
        DynamicBatchSizer(model(), graphs(), min_batch_size=8, max_batch_size=4)
    with pytest.raises(TypeError, match="sample_input"):
        DynamicBatchSizer(model(), 42)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            DynamicBatchSizer(model(), graphs(), device="cuda")
        assert DynamicBatchSizer(model(), graphs()).device.type == "cpu"  # no CUDA is not an error


def _touch_and_unmap(mib: int) -> None:
    """``mib`` MiB of fresh pages, touched, then handed back: RSS rises whatever glibc keeps. (A
    tensor may be served from freed heap that training tests left resident under
    :func:`~kdkit.training.cpu_speedups.tune_cpu_allocator`, and RSS need not grow at all.)"""
    import mmap

    block = mmap.mmap(-1, mib * 2**20)
    np.frombuffer(block, dtype=np.uint8)[:] = 1
    block.close()


def test_peak_memory_sees_a_short_allocation():
    with PeakMemory("cpu") as m:
        _touch_and_unmap(64)
    assert m.peak_bytes >= 63 * 2**20


def test_phase_peak_records_and_logs(caplog):
    import logging

    record = {}
    with caplog.at_level(logging.INFO, logger="kdkit.training.memory"):
        with phase_peak("train", record) as out:
            _touch_and_unmap(96)
    assert record["train"] is out and out["rss_growth_peak_mib"] >= 95 and out["peak_mib"] >= out["rss_start_mib"]
    assert "phase train" in caplog.text


def test_run_summary_records_peak_memory_per_phase(synthetic, tmp_path, caplog):
    import logging

    from kdkit.config import make_config
    from kdkit.workflows.run import train

    cfg = make_config(dataset="synthetic", hidden=8, layers=1, heads=1, embedding_dim=4, epochs=1, precision="32-true",
                      accelerator="cpu", save_compat=False, runs_dir=str(tmp_path / "runs"))
    with caplog.at_level(logging.INFO, logger="kdkit.training.memory"):
        summary = train(cfg, progress=False, data=synthetic)
    assert set(summary["memory"]) == {"train", "evaluate"}
    for phase in summary["memory"].values():
        assert phase["peak_mib"] > 0 and phase["rss_growth_peak_mib"] >= 0 and phase["seconds"] > 0
    assert "phase train" in caplog.text and "phase evaluate" in caplog.text
    assert summary["history"][0]["train_peak_mib"] > 0
    saved = json.loads((tmp_path / "runs" / cfg.resolved_run_name / "summary.json").read_text())
    assert saved["memory"]["train"]["peak_mib"] == summary["memory"]["train"]["peak_mib"]


# ----------------------------------------------------------------------------- CLI and config
def test_cli_batch_size_reports_with_config(synthetic, capsys):
    from kdkit.cli.main import main

    rc = main(["batch-size", "--model", "gat", "--dataset", "synthetic", "--type", "student",
               "--config", '{"target_memory_usage": 0.001, "max_batch_size": 8, "precision": "32-true"}', "--json"])
    assert rc == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["type"] == "student" and row["target_memory_usage"] == 0.001 and row["max_batch_size"] == 8
    assert 1 <= row["batch_size"] <= 8 and row["precision"] == "32-true"


def test_train_optimize_without_type_only_reports(synthetic, capsys, monkeypatch):
    from kdkit.cli import train as cli_train

    monkeypatch.setattr(cli_train, "train", lambda *a, **k: pytest.fail("--optimize-batch-size without --type trains"))
    from kdkit.cli.main import main

    assert main(["train", "--optimize-batch-size", "--dataset", "synthetic", "--model", "gat",
                 "--config", '{"target_memory_usage": 0.0005, "max_batch_size": 4, "precision": "32-true"}']) == 0
    out = capsys.readouterr().out
    assert "gat teacher on synthetic: batch size" in out and "gat student on synthetic: batch size" in out


def test_train_optimize_applies_the_size_to_the_run(synthetic, capsys, monkeypatch):
    from kdkit.cli import train as cli_train

    seen = {}

    def fake_train(cfg, resume=None, fork_workers=True, stop=None):
        seen["cfg"], seen["fork_workers"] = cfg, fork_workers
        return {"rank": 1}

    monkeypatch.setattr(cli_train, "train", fake_train)
    from kdkit.cli.main import main

    assert main(["train", "--optimize-batch-size", "--dataset", "synthetic", "--model", "gat", "--type", "student",
                 "--config", '{"target_memory_usage": 0.0005, "max_batch_size": 4, "precision": "32-true"}']) == 0
    cfg = seen["cfg"]
    assert "--optimize-batch-size: gat student on synthetic: batch size" in capsys.readouterr().out
    assert 1 <= cfg.batch_size <= 4 and cfg.max_batch_size == 4 and cfg.target_memory_usage == 0.0005
    # the sizer ran tensor work in this process: DDP workers are not forked from it (OpenMP after fork)
    assert seen["fork_workers"] is False


PRESETS = {"a100": ("bf16-mixed", 128, 8, 4), "h100": ("bf16-mixed", 256, 8, 4), "v100": ("16-mixed", 64, 4, 2),
           "small-gpu": ("32-true", 32, 2, 2), "cpu": ("32-true", 64, 0, 2)}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_hardware_presets(name, monkeypatch):
    from kdkit.cli.train import config_from_args
    from kdkit.config import HARDWARE_PRESETS, list_configs, make_config

    precision, batch, workers, prefetch = PRESETS[name]
    assert HARDWARE_PRESETS[name]["precision"] == precision
    cfg = make_config(preset=name)
    assert (cfg.batch_size, cfg.num_workers, cfg.prefetch_factor, cfg.preset) == (batch, workers, prefetch, name)
    assert cfg.precision == "auto"  # the precision policy decides unless the user says
    assert make_config(preset=name, batch_size=7).batch_size == 7  # user keys win over the preset
    import argparse

    args = argparse.Namespace(config=json.dumps({"preset": name}), model="gat", dataset="synthetic", type="teacher")
    assert config_from_args(args).batch_size == batch
    assert f"  {name} " in list_configs()


@pytest.mark.parametrize("gpu,memory_gib,capability,preset,precision", [
    ("NVIDIA H200", 141, (9, 0), "h100", "bf16-mixed"), ("NVIDIA H100 80GB HBM3", 80, (9, 0), "h100", "bf16-mixed"),
    ("NVIDIA A100-SXM4-80GB", 80, (8, 0), "a100", "bf16-mixed"), ("Tesla V100-SXM2-32GB", 32, (7, 0), "v100", "16-mixed"),
    ("NVIDIA GeForce GTX 1080", 8, (6, 1), "small-gpu", "32-true")])
def test_detect_preset_and_precision_policy_on_gpus(monkeypatch, gpu, memory_gib, capability, preset, precision):
    from types import SimpleNamespace

    from kdkit.config import detect_preset
    from kdkit.training.precision import choose_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: gpu)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0: SimpleNamespace(total_memory=memory_gib * 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: capability)
    assert detect_preset() == preset
    assert choose_precision("auto", "cuda") == precision


def test_detect_preset_without_cuda(monkeypatch):
    from kdkit.config import detect_preset

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert detect_preset() == "cpu"


def test_cpu_bf16_verdict_is_measured_once_per_machine(monkeypatch, tmp_path):
    """A ratio near the threshold must not flip the precision between runs: it is stored."""
    from kdkit.training import precision as trainer

    monkeypatch.setattr(trainer, "_BF16_CPU_SPEEDUP", None)
    path, key = trainer._precision_store()
    assert path.parent == tmp_path / "cache"  # the autouse fixture's KDKIT_CACHE_DIR
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({key: 1.37}))
    assert trainer.measure_cpu_bf16_speedup() == 1.37  # read, not measured
    monkeypatch.setattr(trainer, "_BF16_CPU_SPEEDUP", None)
    path.write_text("{}")
    monkeypatch.setattr(trainer, "_stored_bf16_speedup", lambda: None)
    measured = trainer.measure_cpu_bf16_speedup()
    assert measured > 0 and json.loads(path.read_text())[key] == round(measured, 3)


def test_peak_memory_is_exact_for_a_peak_no_sample_sees_and_for_nested_blocks():
    from kdkit.training import memory

    if memory._hwm_bytes() is None or not memory._reset_hwm():
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs on Linux: /proc/self/clear_refs must reset VmHWM")
        pytest.skip("no /proc/self/clear_refs: RSS peaks are sampled here")

    # an hour between samples: only the kernel's high-water mark can see these peaks
    with PeakMemory("cpu", interval=3600) as outer:
        _touch_and_unmap(96)
        with PeakMemory("cpu", interval=3600) as inner:  # resets the mark: the outer peak must survive
            _touch_and_unmap(40)
    assert "VmHWM" in outer.how
    assert 95 * 2**20 <= outer.peak_bytes < 110 * 2**20
    assert 39 * 2**20 <= inner.peak_bytes < 54 * 2**20


def test_collections_skip_older_objects_keeps_collecting_what_the_block_makes():
    """Inside the block the objects from before are frozen (full collections skip them) while
    cyclic garbage made inside is still collected; afterwards they are collectable again, unless
    the process had frozen objects before (the kdkit command's imports), which stay frozen."""
    import subprocess
    import sys

    code = """
import gc, weakref
from kdkit.training.memory import collections_skip_older_objects

class Node:
    pass

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)

old = [Node() for _ in range(10)]
assert gc.get_freeze_count() == 0
with collections_skip_older_objects():
    frozen = gc.get_freeze_count()
    assert frozen >= len(old)
    made = cycle()
    gc.collect()
    assert made() is None                      # the block's own cyclic garbage is collected
    with collections_skip_older_objects():     # nested: the inner block leaves the outer's freeze alone
        pass
    assert gc.get_freeze_count() >= frozen
assert gc.get_freeze_count() == 0              # unfrozen: collectable again
gc.freeze()                                    # as the kdkit command does with its imports
before = gc.get_freeze_count()
with collections_skip_older_objects():
    pass
assert gc.get_freeze_count() >= before         # the command's freeze is not undone
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_train_runs_with_the_callers_older_objects_frozen(monkeypatch, tmp_path):
    """workflows.run.train freezes the objects older than the run for its duration (here the
    test process had frozen its imports before, as the kdkit command does: they stay frozen)."""
    import gc

    from kdkit.config import make_config
    from kdkit.workflows import run as run_module

    seen = []
    monkeypatch.setattr(run_module, "_train_locked", lambda *a, **k: seen.append(gc.get_freeze_count()) or {"ok": 1})
    count = gc.get_freeze_count()
    older = [[i] for i in range(1000)]  # tracked objects made before the run
    assert run_module.train(make_config(dataset="synthetic", runs_dir=str(tmp_path))) == {"ok": 1}
    assert seen[0] >= count + len(older)


def test_sizer_never_picks_a_batch_larger_than_the_training_split(synthetic, tmp_path, monkeypatch):
    """Memory would allow thousands of tiny windows a batch; the training split has 644: the batch is at
    most the split (one process's share) and a batch that leaves few steps an epoch is said so."""
    from kdkit.config import make_config
    from kdkit.workflows.batch_size import few_steps_note, optimize_config_batch_size

    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path))  # no cached size from another test
    said = []
    cfg = make_config(dataset="synthetic", model="gat", type="student", max_batch_size=4096, precision="32-true")
    out = optimize_config_batch_size(cfg, data=synthetic, echo=said.append)
    windows = len(synthetic.splits["train"])
    assert out.batch_size <= windows
    assert any(f"over {windows:,} training windows" in s and "max_batch_size (--max-batch-size; now 4096)" in s for s in said), said
    # the note's arithmetic: 644 windows at 64 a batch is 11 steps (no note); at 100, 7 steps
    assert few_steps_note(64, 644, 1024) is None
    assert few_steps_note(100, 644, 1024).startswith("batch size 100 gives 7 optimizer steps an epoch over 644 ")
    assert "(the training split's size" in few_steps_note(644, 644, 1024)
