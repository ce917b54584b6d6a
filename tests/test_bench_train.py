"""Smoke tests of ``kdkit bench train`` and ``kdkit bench infer``: JSON shape and positive
figures on synthetic data, never a timing assertion (the figures come from the benchmark run by hand).

Run: .venv/bin/python -m pytest tests/test_bench_train.py -q
"""
from __future__ import annotations

import json

import pytest
import torch

from kdkit.cli.main import main


def _positive(d: dict) -> None:
    assert d["median"] > 0 and d["min"] <= d["median"] <= d["max"]


def test_bench_train_smoke(synthetic, capsys):
    rc = main(["bench", "train", "--model", "gat", "--type", "student", "--dataset", "synthetic", "--steps", "3",
               "--repeats", "1", "--burn-in", "1", "--batch-size", "16", "--threads", "1", "--in-process", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert {"plain", "fabric", "speedup", "speedup_cpu_time", "memory_ratio", "machine", "memory_measured_by",
            "baseline"} <= set(out)
    assert out["steps"] == 3 and out["batch_size"] == 16
    for name in ("plain", "fabric"):
        r = out[name]
        for key in ("graphs_per_s", "graphs_per_cpu_s", "step_ms", "peak_mib", "cpu_seconds", "wall_seconds"):
            _positive(r[key])
        assert r["threads"] == 1
    assert out["plain"]["precision"] == "32-true"
    assert out["fabric"]["precision_reason"].startswith(("policy:", "asked for"))
    assert out["speedup"] > 0 and out["memory_ratio"] > 0 and out["machine"]["cores"] >= 1
    # both sides do the same work: no vehicle dropout, no DataLoader workers (recorded)
    assert out["config"]["vehicle_dropout"] == 0.0 and out["config"]["num_workers"] == 0
    # the training-only ratio leaves the plain loop's list of Data out (built before its baseline)
    assert out["memory_ratio_training_only"] > 0 and "memory_ratio_training_only" in out["memory_measured_by"]
    assert out["plain"]["data_list_mib"]["median"] > 0 and out["fabric"]["data_list_mib"]["max"] == 0
    assert out["plain"]["training_peak_mib"]["median"] < out["plain"]["peak_mib"]["median"]
    # numba's one-time set-up is left out of the peak like the imports, and reported beside it
    assert out["memory_ratio_with_numba_setup"] >= out["memory_ratio"]
    assert out["fabric"]["numba_setup_mib"]["min"] >= 0
    # the baseline runs PyG's attention, the trainer the fused kernel (its default on CPU)
    assert out["plain"]["attention"] == "stock" and out["fabric"]["attention"] == "auto"
    # and torch's dropout masks against kdkit's (kdkit.models.dropout)
    assert out["plain"]["dropout_masks"] == "torch" and out["fabric"]["dropout_masks"] == "kdkit"


def test_bench_train_text_report(synthetic, capsys):
    """Without --json: both loops' figures, the ratios, and numba's set-up named beside them."""
    rc = main(["bench", "train", "--model", "gat", "--type", "student", "--dataset", "synthetic", "--steps", "2",
               "--repeats", "1", "--burn-in", "1", "--batch-size", "8", "--threads", "1", "--in-process"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "plain" in text and "fabric" in text and "graphs/s" in text and "peak memory" in text
    assert "numba's one-time set-up" in text and "counted as the Fabric path's" in text


@pytest.mark.parametrize("model", ["gat", "vgae"])
def test_plain_loop_computes_the_trainers_loss(synthetic, model):
    """benchmarks/plain_pyg_loop.py (the baseline) and the trainer's Task give the same loss on the
    same batch with the same weights: the baseline trains the same thing, only the loop differs.
    The config, training set and Task are the benchmark's own (``kdkit.bench.train._setup``), the
    Task in training mode as in the timed steps (so an augmentation only the Fabric side runs, such
    as the default vehicle dropout, would show), the model's dropout off to compare losses."""
    from kdkit.bench.train import _setup, plain_loop_module
    from kdkit.data.loader import collate_indices

    plain = plain_loop_module()
    cfg, train, task = _setup({"model": model, "type": "student", "dataset": "synthetic", "batch_size": 16,
                               "precision": "32-true", "accelerator": "cpu"})
    net = task.model
    weight = task.class_weights if task.objective == "classify" and cfg.class_weighting else None
    task.train()
    net.eval()  # dropout and the VGAE's sampling off; the Task itself stays in training mode
    idx = list(range(16))
    pyg_batch = next(iter(plain.plain_loader([train.to_data_list()[i] for i in idx], 16)))  # PyG's collate, shuffled
    kdkit_batch = collate_indices(train, idx)  # the trainer's batch of the same windows (a mean: order-free)
    torch.manual_seed(0)
    with torch.no_grad():
        ours, _ = task.training_loss(kdkit_batch)
        theirs = plain.plain_loss(net, pyg_batch, weight)
    assert torch.isfinite(ours) and ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    # and a step of the plain loop changes the weights (it trains)
    before = [p.detach().clone() for p in net.parameters()]
    net.train()
    plain.plain_step(net, plain.plain_optimizer(net), pyg_batch, weight)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_bench_train_worker_runs_isolated(synthetic):
    """The default path: each variant in a fresh process (here one short fabric run)."""
    from kdkit.bench.train import _run_isolated

    r = _run_isolated({"variant": "fabric", "model": "gat", "type": "student", "dataset": "synthetic", "steps": 2,
                       "burn_in": 1, "batch_size": 8, "precision": "32-true", "threads": 1, "data_root": None,
                       "accelerator": "cpu"})
    assert r["graphs"] == 16 and r["graphs_per_s"] > 0 and r["peak_mib"] > 0 and r["precision"] == "32-true"
    # a fresh process sets numba up before the memory baseline (its typing registries, LLVM: MiBs)
    assert r["numba_setup_mib"] > 1.0


def test_bench_train_worker_imports_without_the_collector_and_freezes_them():
    """An isolated worker starts as the kdkit command does: its imports' objects frozen out of the
    garbage collector's reach, the collector on again before the variant runs."""
    import subprocess
    import sys

    from kdkit.bench import train as bench_train_module

    start = bench_train_module._WORKER_START
    assert start.index("gc.disable()") < start.index("import worker_main") < start.index("gc.freeze()")
    probe = start.replace("worker_main(sys.argv[1])", "print(gc.get_freeze_count(), gc.isenabled())")
    out = subprocess.run([sys.executable, "-c", probe, "{}"], capture_output=True, text=True, check=True)
    frozen, enabled = out.stdout.split()
    assert int(frozen) > 100_000 and enabled == "True"  # torch, PyG and kdkit's objects


def test_bench_infer_smoke(exported_student, capsys, monkeypatch):
    import shutil
    from pathlib import Path

    import kdkit.bench.infer

    student_checkpoint, package, _ = exported_student

    def export_checkpoint(checkpoint, out):  # the session's `kdkit export` of this checkpoint (a 1 min AOT compile)
        assert Path(checkpoint) == student_checkpoint
        for suffix in (".pt2", ".json"):
            shutil.copyfile(package.with_suffix(suffix), Path(out).with_suffix(suffix))

    monkeypatch.setattr(kdkit.bench.infer, "export_checkpoint", export_checkpoint)
    rc = main(["bench", "infer", "--checkpoint", str(student_checkpoint), "--variants",
               "fp32-eager,fp32-scorer,bf16-eager,fp32-aot", "--seconds", "0.3", "--single", "30", "--batch-size", "64",
               "--rounds", "2", "--end-to-end-repeats", "1", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["window"] == 100 and out["threads"] == 1 and out["rounds"] == 2
    assert list(out["variants"]) == ["fp32-eager", "fp32-scorer", "bf16-eager", "fp32-aot"]
    # the algorithm's and the compilation's effects are separate ratios
    assert set(out["effects"]) == {"algorithm: scorer / stock, both eager fp32", "precision: bf16 / fp32, stock eager",
                                   "ahead of time: exported scorer / eager scorer, fp32"}
    for r in out["variants"].values():
        assert r["messages_per_s"] == pytest.approx(r["windows_per_s"] * 100, rel=0.01)
        s = r["messages_per_s_spread"]
        assert s["min"] <= s["median"] <= s["max"]
        assert r["messages_per_s"] > 0 and r["messages_per_cpu_s"] > 0
        assert 0 < r["latency_ms_p50"] <= r["latency_ms_p99"] and 0 < r["latency_cpu_ms_p50"] <= r["latency_cpu_ms_p99"]
    e2e = out["end_to_end"]  # the split's longest recording replayed, stock checkpoint and exported package
    forms = {k: v for k, v in e2e.items() if isinstance(v, dict)}
    assert set(forms) == {"checkpoint (torch engine: the checkpoint's model, eager)", "exported (.pt2, AOT scorer)"}
    for r in forms.values():
        assert r["messages"] > 0 and r["messages_per_s"]["median"] > 0
    assert forms["checkpoint (torch engine: the checkpoint's model, eager)"]["engine"] == "torch"
    assert out["stride"] == 100 and out["messages_counted"].startswith("100 new messages per window")


def test_self_loops_once_gives_identical_scores(student_checkpoint, synthetic):
    """The compiled inference path adds self-loops once per batch instead of in every layer."""
    from kdkit.data.loader import collate_indices
    from kdkit.models.layers import with_self_loops
    from kdkit.training.checkpoint import load_checkpoint, model_from_checkpoint

    ck = load_checkpoint(student_checkpoint)
    ref = fast = model_from_checkpoint(ck).eval()
    gs = synthetic.splits["val"]
    with torch.no_grad():
        for idx in ([0], [3, 1, 4, 1, 5], list(range(40))):
            batch = collate_indices(gs, idx)
            n_loops = int((batch.edge_index[0] == batch.edge_index[1]).sum())
            looped = with_self_loops(collate_indices(gs, idx))
            assert looped.edge_index.size(1) == batch.edge_index.size(1) - n_loops + batch.num_nodes
            assert torch.allclose(ref(batch), fast(looped), atol=1e-6)


@pytest.mark.parametrize("flag,kwargs", [("--steps 0", {"steps": 0}), ("--repeats 0", {"repeats": 0}),
                                         ("--batch-size 0", {"batch_size": 0}), ("--burn-in -1", {"burn_in": -1})])
def test_bench_train_refuses_nonsense_counts_by_flag(flag, kwargs):
    from kdkit.bench.train import bench_train

    with pytest.raises(ValueError, match=f"{flag}: must be at least"):  # before any data is read (was ZeroDivisionError)
        bench_train(dataset="no-such-dataset", **kwargs)
