"""``kdkit export`` needs only the checkpoint (issue 11): no data root, no dataset, no cache. The
example graphs it traces with are synthesized from the checkpoint's vocabulary; the package
scores real windows like the checkpoint's model, and a calibrated checkpoint's threshold reaches
the gateway metadata. One export (about a minute of AOT compile on a small CPU).

Run: .venv/bin/python -m pytest tests/test_export_standalone.py -q
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import kdkit.workflows.run
from kdkit.cli.main import main
from kdkit.data.loader import collate_indices
from kdkit.deploy.export import EXAMPLE_WINDOWS, example_batch, load_exported
from kdkit.training.checkpoint import load_checkpoint, model_from_checkpoint
from kdkit.workflows.calibrate import calibrate_checkpoint


def test_export_with_only_a_calibrated_checkpoint(student_checkpoint, synthetic, tmp_path, monkeypatch, capsys):
    clean = sorted({f for f in synthetic.splits["train"].files if "attack-free" in f})
    gs = synthetic.splits["test_01_known_vehicle_known_attack"]
    real = [collate_indices(gs, idx) for idx in ([0], list(range(3, 40)), list(range(len(gs)))[:200])]
    calibrated = tmp_path / "ck" / "calibrated.pt"
    cal = calibrate_checkpoint(student_checkpoint, clean, calibrated, fpr=0.05)

    # nothing to read: an empty data root, no synthetic data, no cache, another working folder
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    for var in ("KDKIT_DATA_ROOT", "KDKIT_CACHE_DIR"):
        monkeypatch.setenv(var, str(nothing))
    monkeypatch.setenv("KDKIT_SYNTHETIC_ROOT", str(nothing / "synthetic-{seed}"))
    monkeypatch.chdir(nothing)

    def no_data(*args, **kwargs):
        raise AssertionError("export read a dataset")

    monkeypatch.setattr(kdkit.workflows.run, "prepare", no_data)
    out = tmp_path / "gateway" / "student.pt2"
    assert main(["export", "--checkpoint", str(calibrated), "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["package"] == str(out) and result["threshold"] == cal["new_threshold"]
    assert sorted(p.name for p in nothing.iterdir()) == []  # nothing simulated, cached or written there

    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["threshold"] == cal["new_threshold"] != 0.5
    assert meta["calibration"]["fpr"] == 0.05
    assert [f["path"] for f in meta["calibration"]["files"]] == [str(Path(f).resolve()) for f in clean]
    assert [f["sha256"] for f in meta["calibration"]["files"]] == [f["sha256"] for f in cal["files"]]
    assert f"{EXAMPLE_WINDOWS} graphs synthesized" in meta["example"]
    assert meta["threads"] == 1  # compiled for one gateway core (a 2-thread package is ~2.8x slower on one)

    model = model_from_checkpoint(load_checkpoint(calibrated)).eval()
    score = load_exported(out)
    for batch in real:  # real windows, sizes the synthesized example never had
        with torch.no_grad():
            ref = model(batch)
        torch.testing.assert_close(score(batch), ref, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # the gateway's decision with the calibrated threshold is the checkpoint's
        ref_alarm = torch.softmax(model(real[-1]), -1)[:, 1] >= meta["threshold"]
    assert torch.equal(torch.softmax(score(real[-1]), -1)[:, 1] >= meta["threshold"], ref_alarm)


@pytest.mark.parametrize("vocab, window", [([], 3), ([0x81], 3), (list(range(0x100, 0x150)), 100),
                                           ([0x81, 0x80000081], 50), (list(range(2048)), 1000)])
def test_example_batch_from_any_vocabulary(vocab, window):
    """Distinct sizes above 1 (each stays a dynamic dimension), IDs of the vocabulary and outside it."""
    batch = example_batch(vocab, window)
    nodes, edges = batch.x.size(0), batch.edge_index.size(1)
    width = int(torch.bincount(batch.batch).max())
    assert batch.num_graphs == EXAMPLE_WINDOWS and len({nodes, edges, EXAMPLE_WINDOWS, width}) == 4 and width > 1
    assert bool((batch.node_id == 0).any()) and (not vocab or bool((batch.node_id > 0).any()))
    assert int(batch.node_id.max()) <= len(vocab)


def test_export_of_a_two_message_window_is_refused():
    with pytest.raises(ValueError, match="export needs a window of at least 3 messages"):
        example_batch([0x100, 0x200], 2)
