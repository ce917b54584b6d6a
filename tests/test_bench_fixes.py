"""The benchmarks measure what their labels say: the same work on both sides of ``kdkit bench train``,
the stock model where a variant says stock, messages counted once, the workers' CPU counted, fresh
folders for every timed run, no option accepted and ignored. Fast: synthetic data, a few steps.

Run: .venv/bin/python -m pytest tests/test_bench_fixes.py -q
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import kdkit.bench.infer as bench_infer_module
import kdkit.bench.preprocess as bench_preprocess_module
import kdkit.bench.train as bench_train_module
import kdkit.config
from kdkit.bench import compare
from kdkit.cli.main import main
from kdkit.data.graphs import GraphSet
from kdkit.models.layers import GATv2Layer
from conftest import REPO, load_benchmark

BENCH_OPTS = {"model": "gat", "type": "student", "dataset": "synthetic", "batch_size": 16, "precision": "32-true",
              "accelerator": "cpu"}


def _longest_file(synthetic) -> Path:
    return max((Path(f) for f in synthetic.splits["val"].files), key=lambda f: f.stat().st_size)


# ---- kdkit bench train ----------------------------------------------------------------------------
@pytest.mark.parametrize("call", ["bench_train", "setup"])
def test_bench_train_refuses_the_fusion_model(call):
    """The plain loop has no fusion loss, and the Fabric side would train on the VGAE's normal-only
    windows without class weights: refused by name, before any data is read."""
    with pytest.raises(ValueError, match=r"--model 'fusion': kdkit bench train compares gat and vgae only"):
        if call == "bench_train":
            bench_train_module.bench_train(model="fusion", dataset="no-such-dataset")
        else:
            bench_train_module._setup({**BENCH_OPTS, "model": "fusion", "dataset": "no-such-dataset"})


def test_bench_train_config_has_no_workers_and_no_vehicle_dropout_on_a_gpu_preset(synthetic, monkeypatch):
    """On a host whose hardware preset is a GPU one (8 DataLoader workers), both sides still
    collate in-process, and the Fabric side runs no vehicle dropout (the plain loop has none)."""
    monkeypatch.setattr(kdkit.config, "detect_preset", lambda: "h100")
    assert kdkit.config.make_config(dataset="synthetic").num_workers == 8  # what the preset alone gives
    cfg, _, task = bench_train_module._setup(BENCH_OPTS)
    assert cfg.num_workers == 0 and cfg.vehicle_dropout == 0.0 and task.cfg.vehicle_dropout == 0.0


# ---- kdkit bench infer ----------------------------------------------------------------------------
def test_bench_infer_counts_the_stride_of_overlapping_windows(student_checkpoint, synthetic, tmp_path):
    """A checkpoint trained on windows of 100 with stride 50: each window brings 50 new messages."""
    ckpt = torch.load(student_checkpoint, weights_only=False)
    ckpt["train_config"]["stride"] = 50
    path = tmp_path / "stride50.pt"
    torch.save(ckpt, path)
    out = bench_infer_module.bench_infer(path, variants="fp32-eager", seconds=0.2, single=10, rounds=1)
    r = out["variants"]["fp32-eager"]
    assert out["window"] == 100 and out["stride"] == 50
    assert r["messages_per_s"] == pytest.approx(r["windows_per_s"] * 50, rel=0.01)
    assert out["messages_counted"].startswith("50 new messages per window") and "2 windows" in out["messages_counted"]


@pytest.mark.parametrize("variant", ["fp32-eager", "bf16-eager"])
def test_bench_infer_stock_variants_run_pygs_attention(student_checkpoint, synthetic, tmp_path, monkeypatch, variant):
    """The variants labelled "the stock PyG model" run PyG's GATv2Conv attention, not kdkit's fused kernel."""
    from torch_geometric.nn import GATv2Conv

    from kdkit.data.loader import collate_indices
    from kdkit.training.checkpoint import load_checkpoint

    calls = {"fused": 0, "pyg": 0}
    fused, pyg = GATv2Layer._fused_forward, GATv2Conv.forward

    def count_fused(self, *a, **k):
        calls["fused"] += 1
        return fused(self, *a, **k)

    def count_pyg(self, *a, **k):
        calls["pyg"] += 1
        return pyg(self, *a, **k)

    monkeypatch.setattr(GATv2Layer, "_fused_forward", count_fused)
    monkeypatch.setattr(GATv2Conv, "forward", count_pyg)
    ckpt = load_checkpoint(student_checkpoint)
    fn, _ = bench_infer_module._build(variant, ckpt, "gat", student_checkpoint, tmp_path / "unused.pt2")
    with torch.inference_mode():
        fn(collate_indices(synthetic.splits["val"], list(range(8))))
    assert calls["fused"] == 0 and calls["pyg"] > 0


def test_bench_infer_end_to_end_rows_say_which_engine_ran(student_checkpoint, synthetic):
    """The checkpoint row runs the torch engine (the checkpoint's model), and says so."""
    out = bench_infer_module._end_to_end(student_checkpoint, synthetic.splits["val"], "auto", 1, None)
    row = out[bench_infer_module.CHECKPOINT_ROW]
    assert "torch engine" in bench_infer_module.CHECKPOINT_ROW and "stock" not in bench_infer_module.CHECKPOINT_ROW
    assert row["engine"] == "torch" and row["single_window_engine"] == "torch" and row["messages"] > 0


# ---- benchmarks/plain_pyg_loop.py -----------------------------------------------------------------
def test_plain_loop_script_runs_the_stock_model_and_respects_class_weighting(synthetic, monkeypatch):
    """Run as a script, the baseline trains PyG's stock path (as kdkit bench train's plain side),
    weights the classes only when the config says so, and reports the median step."""
    plain = load_benchmark("plain_pyg_loop")
    calls = {"fused": 0}
    fused = GATv2Layer._fused_forward

    def count_fused(self, *a, **k):
        calls["fused"] += 1
        return fused(self, *a, **k)

    monkeypatch.setattr(GATv2Layer, "_fused_forward", count_fused)
    make_config = kdkit.config.make_config
    monkeypatch.setattr(kdkit.config, "make_config", lambda **kw: make_config(**kw, class_weighting=False))
    weights, step = [], plain.plain_step

    def slow_second_step(model, optimizer, batch, w=None):  # steps of ~0 and ~0.2 s: median != the larger one
        weights.append(w)
        if len(weights) == 2:
            time.sleep(0.2)
        return step(model, optimizer, batch, w)

    monkeypatch.setattr(plain, "plain_step", slow_second_step)
    r = plain.main(["--model", "gat", "--type", "student", "--dataset", "synthetic", "--steps", "2", "--burn-in", "0",
                    "--threads", "1", "--batch-size", "8"])
    assert calls["fused"] == 0 and r["attention"] == "stock"
    assert weights == [None, None] and r["class_weighted"] is False
    total_s = 16 / r["graphs_per_s"]  # two steps of 8 graphs
    assert r["step_ms_median"] == pytest.approx(1000 * total_s / 2, rel=0.05)  # the median of two: their mean


# ---- kdkit.bench.compare / kdkit bench preprocess -------------------------------------------------
def test_compare_bench_preprocess_compares_the_same_messages(synthetic):
    """kdkit and the pandas loop on the same first messages, interleaved; CPU seconds too."""
    r = compare.bench_preprocess(_longest_file(synthetic), repeats=1, baseline_limit=1000)
    assert r["messages"] == r["baseline_messages"] == 1000
    kd, pd_ = r["rows"]
    assert kd["variant"].startswith("kdkit") and len(kd["messages_per_s"]) == len(kd["messages_per_cpu_s"]) == 1
    assert r["speedup"] == pytest.approx(pd_and_kd_ratio(r, "wall_s"), rel=0.02)
    assert r["speedup_cpu"] == pytest.approx(pd_and_kd_ratio(r, "cpu_s"), rel=0.05) and r["speedup_cpu"] > 0
    # the first round (numba's kernels loaded from their cache) is timed apart, not in the medians
    assert set(r["first_run_wall_s"]) == {"kdkit", "pandas loop"} and min(r["first_run_wall_s"].values()) > 0
    assert "after an untimed first round" in r["compared_on"]


def pd_and_kd_ratio(r: dict, key: str) -> float:
    return r["seconds"]["pandas loop"][key]["median"] / r["seconds"]["kdkit"][key]["median"]


def test_bench_preprocess_gives_every_run_a_fresh_folder_and_removes_them(synthetic, tmp_path, monkeypatch):
    """Warm runs wrote each store over the previous run's, cold runs into folders never removed."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))  # the cold runs' processes
    monkeypatch.setattr("tempfile.tempdir", str(temp))
    seen, save = [], GraphSet.save

    def spy(self, path, meta=None):
        seen.append((Path(path).exists(), list(Path(path).parent.iterdir())))
        return save(self, path, meta)

    monkeypatch.setattr(GraphSet, "save", spy)
    r = bench_preprocess_module.preprocess_file(_longest_file(synthetic), repeats=2, cold=True)
    assert len(seen) == 3 and all(not exists and not others for exists, others in seen)  # burn-in + 2 warm
    assert r["cold"]["wall_s"]["median"] > 0
    assert list(temp.iterdir()) == []  # cold runs' folders removed too


def test_bench_preprocess_dataset_removes_its_cache(synthetic, tmp_path, monkeypatch):
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))  # the preparing process's
    monkeypatch.setattr("tempfile.tempdir", str(temp))
    r = bench_preprocess_module.preprocess_dataset("synthetic")
    assert r["messages"] > 0 and list(temp.iterdir()) == []


# ---- kdkit bench detect ---------------------------------------------------------------------------
@pytest.mark.parametrize("extra,words", [(["--live", "--repeats", "3"], "--repeats 3 does nothing with --live"),
                                         (["--seconds", "5"], "--seconds 5.0 is read with --live only")])
def test_bench_detect_refuses_the_option_its_mode_does_not_read(tmp_path, capsys, extra, words):
    log = tmp_path / "capture.log"
    log.write_text("(1.000000) can0 123#00\n")
    assert main(["bench", "detect", "--model", str(tmp_path / "student.pt2"), "--input", str(log), *extra]) == 2
    assert words in capsys.readouterr().err


# ---- benchmarks/prep_memory.py measure --workers ---------------------------------------------------
def test_prep_memory_measure_counts_the_workers(tmp_path):
    """Workers are children of a fork server that is never reaped: their CPU went uncounted. An
    independent count: every descendant's CPU seconds polled with psutil (a lower bound)."""
    psutil = pytest.importorskip("psutil")
    prep_memory = load_benchmark("prep_memory")
    root = tmp_path / "ds"
    for seed in (0, 1):
        prep_memory.make(root / "train_02_with_attacks" / f"DoS-{seed}.csv.gz", 20000, seed)
    proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "prep_memory.py"), "measure", str(root),
                             str(tmp_path / "cache"), "--workers", "2"], stdout=subprocess.PIPE, text=True)
    seen: dict[int, float] = {}
    stop = threading.Event()

    def poll():
        me = psutil.Process(proc.pid)
        while not stop.wait(0.01):
            try:
                children = me.children(recursive=True)
            except psutil.Error:
                return
            for c in children:
                try:
                    t = c.cpu_times()
                    seen[c.pid] = t.user + t.system
                except psutil.Error:
                    pass

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    out, _ = proc.communicate(timeout=300)
    stop.set()
    poller.join()
    assert proc.returncode == 0
    r = json.loads(out.strip().splitlines()[-1])
    polled = sum(seen.values())
    assert len(seen) >= 2 and polled > 0.1  # the fork server and its workers ran
    assert r["workers_cpu_s"] >= 0.9 * polled and "fork server" in r["workers_counted"]
    assert r["cpu_s"] == pytest.approx(r["process_cpu_s"] + r["workers_cpu_s"], abs=0.002)
    assert r["worker_peak_rss_mib"] > 0  # the largest of them
