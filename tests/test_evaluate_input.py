"""``kdkit evaluate --input``: any recordings scored with a checkpoint's own vocabulary, windows and
threshold, without its dataset (issue 11). Labelled recordings get the same metrics as
``kdkit evaluate --dataset``; unlabelled ones an alarm rate, a score distribution and the share of
unknown IDs; every bad input is a clear error.

Run: .venv/bin/python -m pytest tests/test_evaluate_input.py -q
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kdkit.cli.main import main
from kdkit.config import make_config
from kdkit.data import readers
from kdkit.data.graphs import EDGE_FEATURES, NODE_FEATURES
from kdkit.data.readers import Messages, read_messages
from kdkit.models.registry import build_model
from kdkit.training.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from kdkit.workflows.calibrate import calibrate_checkpoint
from kdkit.workflows.run import evaluate_checkpoint, train
from kdkit.workflows.scoring import evaluate_inputs, inputs_json_name

TINY = {"hidden": 8, "layers": 1, "heads": 1, "embedding_dim": 4, "batch_size": 64, "epochs": 1, "patience": 100,
        "precision": "32-true", "warmup_steps": 2, "accelerator": "cpu", "num_workers": 0, "save_compat": False}
METRICS = ("windows", "attack_windows", "accuracy", "precision", "recall", "f1", "mcc", "roc_auc", "pr_auc",
           "detection_at_1pct_fpr", "false_positive_rate", "confusion_matrix", "per_attack_type")


@pytest.fixture(scope="module")
def gat_checkpoint(synthetic, tmp_path_factory) -> Path:
    """A tiny GAT student trained for one epoch on the synthetic dataset."""
    base = tmp_path_factory.mktemp("gat")
    cfg = make_config(**TINY, model="gat", type="student", dataset="synthetic", runs_dir=str(base / "runs"), run_name="g")
    return Path(train(cfg, progress=False, data=synthetic)["best_checkpoint"])


def same(a, b, rel: float = 1e-6) -> bool:
    """Equal, floats to within ``rel`` (batches of other sizes may round the last bits differently)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=rel, abs=1e-9)
    return a == b


def candump_log(path: Path, msgs: Messages, channel: str = "can0", other: Messages | None = None) -> Path:
    """``msgs`` as a candump -L log on ``channel``; ``other`` interleaved on can1."""
    lines = [(float(t), f"({t:.6f}) {channel} {i:03X}#{bytes(p[:d]).hex().upper()}")
             for t, i, d, p in zip(msgs.timestamp, msgs.can_id, msgs.dlc, msgs.payload)]
    if other is not None:
        lines += [(float(t) + 1e-7, f"({t + 1e-7:.6f}) can1 {i:03X}#{bytes(p[:d]).hex().upper()}")
                  for t, i, d, p in zip(other.timestamp, other.can_id, other.dlc, other.payload)]
    path.write_text("\n".join(text for _, text in sorted(lines)) + "\n")
    return path


def test_labelled_input_gives_the_dataset_evaluations_metrics(gat_checkpoint, synthetic, tmp_path, capsys):
    by_dataset = evaluate_checkpoint(gat_checkpoint, "synthetic", out_dir=tmp_path / "dataset")
    for name in ("test_01_known_vehicle_known_attack", "test_03_known_vehicle_unknown_attack"):
        files = synthetic.splits[name].files
        folder = str(Path(files[0]).parent)
        assert main(["evaluate", "--checkpoint", str(gat_checkpoint), "--input", folder, "--json",
                     "--out", str(tmp_path / name)]) == 0
        res = json.loads(capsys.readouterr().out)
        assert [f["file"] for f in res["files"]] == sorted(files) and all(f["labelled"] for f in res["files"])
        expected, got = by_dataset["scenarios"][name], res["overall"]["metrics"]
        for key in METRICS:
            assert same(got[key], expected[key]), (key, got[key], expected[key])
        assert set(got["per_attack_type"]) >= {"malfunction"} if name.startswith("test_03") else {"DoS", "fuzzing"}
        written = json.loads((tmp_path / name / inputs_json_name([folder], checkpoint=gat_checkpoint)).read_text())
        assert written["overall"]["metrics"]["f1"] == got["f1"] and written["threshold"] == 0.5
        assert res["overall"]["alarms"] == got["confusion_matrix"][0][1] + got["confusion_matrix"][1][1]


def test_unlabelled_log_reports_alarm_rate_scores_and_unknown_ids(gat_checkpoint, synthetic, tmp_path, capsys):
    clean = read_messages(synthetic.splits["train"].files[0])
    stranger = clean.slice(0, 3000)
    vocab = set(load_checkpoint(gat_checkpoint)["vocab"])
    others = np.array(sorted(set(range(0x800)) - vocab), np.uint32)  # standard IDs the model never saw
    stranger = Messages(stranger.timestamp, others[stranger.can_id % len(others)], stranger.dlc, stranger.payload,
                        stranger.label)
    folder = tmp_path / "captures"
    (folder / "day2").mkdir(parents=True)
    log = candump_log(folder / "day2" / "car.log", clean.slice(0, 5000), other=stranger)
    (folder / "README.txt").write_text("not a recording")
    assert main(["evaluate", "--checkpoint", str(gat_checkpoint), "--input", str(folder), "--channel", "can0",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{log}: 50 windows, alarm rate " in out and "p50" in out and "p99" in out and "max" in out
    assert "unknown-ID nodes 0.00%" in out and "labelled:" not in out and "warning" not in out
    name = inputs_json_name([folder], "can0", checkpoint=gat_checkpoint)
    assert f"written {tmp_path / name}" in out
    res = json.loads((tmp_path / name).read_text())
    entry = res["files"][0]
    assert not entry["labelled"] and "metrics" not in entry and entry["messages"] == 5000 and entry["windows"] == 50
    assert entry["alarm_rate"] == entry["alarms"] / 50 and set(entry["scores"]) == {"min", "p50", "p90", "p99", "max"}
    assert entry["scores"]["min"] <= entry["scores"]["p50"] <= entry["scores"]["p99"] <= entry["scores"]["max"]
    assert "metrics" not in res["overall"] and res["overall"]["unlabelled_files"] == 1

    # the other channel: IDs the model never saw, and a warning that says so
    assert main(["evaluate", "--checkpoint", str(gat_checkpoint), "--input", str(log), "--channel", "can1",
                 "--out", str(tmp_path), "--threshold", "0"]) == 0
    out = capsys.readouterr().out
    assert "30 windows, alarm rate 100.00% (30)" in out and "threshold 0 (--threshold)" in out
    assert "warning:" in out and "CAN IDs the model never saw" in out and "the model does not know this car" in out


def test_bad_inputs_are_clear_errors(gat_checkpoint, synthetic, tmp_path, capsys):
    ck = str(gat_checkpoint)
    csv = synthetic.splits["train"].files[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("nothing here")
    short = tmp_path / "short.csv"
    short.write_text("timestamp,arbitration_id,data_field,attack\n" + "".join(
        f"{i * 0.001:.3f},1A{i % 10},00112233,0\n" for i in range(50)))
    log = candump_log(tmp_path / "car.log", read_messages(csv).slice(0, 300))
    cases = [
        (["--input", str(tmp_path / "missing.csv")], f"--input {tmp_path / 'missing.csv'}: no such file or folder"),
        (["--input", str(empty)], f"--input {empty}: the folder holds no recordings (looked for .csv"),
        (["--input", csv, "--channel", "can0"], "--channel can0: only logger files"),
        (["--input", str(log), "--channel", "can9"], f"{log}: no data frames on channel 'can9'"),
        (["--input", csv, "--dataset", "synthetic"], "--dataset synthetic and --input: evaluate either"),
        (["--dataset", "synthetic", "--threshold", "0.3"], "--threshold 0.3 applies to --input recordings"),
        (["--input", str(short)], ("no windows to score: each of the 1 recording(s) is shorter than the "
                                   "checkpoint's window of 100 messages")),
        (["--input", csv, "--threshold", "nan"], "--threshold nan: must be a finite number"),
    ]
    for extra, message in cases:
        assert main(["evaluate", "--checkpoint", ck, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err, (extra, err)
    assert not list(gat_checkpoint.parent.parent.glob("evaluation_inputs*.json"))
    # neither --dataset nor --input: the dataset the checkpoint records (it was refused)
    assert main(["evaluate", "--checkpoint", ck, "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dataset synthetic (the checkpoint's training data; --dataset or --input evaluates others)")
    assert (tmp_path / "ev" / f"evaluation_synthetic_{gat_checkpoint.stem}.json").is_file()

    # a malformed row: file:line by default, a counted skip that is printed with --on-bad-rows skip
    lines = Path(csv).read_text().splitlines()
    lines[5] = "0.1,XYZ,00,0"
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines[:1001]) + "\n")
    assert main(["evaluate", "--checkpoint", ck, "--input", str(bad), "--out", str(tmp_path)]) == 2
    assert f"{bad}:6: arbitration_id" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", ck, "--input", str(bad), "--out", str(tmp_path), "--on-bad-rows",
                 "skip"]) == 0
    out = capsys.readouterr().out
    assert f"{bad}: 9 windows" in out and "skipped 1 malformed rows (0 of them attack rows)" in out


def test_vgae_checkpoint_scores_with_its_stored_threshold(synthetic, tmp_path):
    model = build_model("vgae", "student", len(NODE_FEATURES), len(EDGE_FEATURES), len(synthetic.vocab))
    cfg = make_config(model="vgae", type="student", dataset="synthetic")
    path = tmp_path / "vgae.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "model_config": model.config,
                "train_config": cfg.to_dict(), "vocab": synthetic.vocab.to_list(), "node_features": list(NODE_FEATURES),
                "edge_features": list(EDGE_FEATURES), "threshold": 1.5}, path)
    files = synthetic.splits["test_02_unknown_vehicle_known_attack"].files
    res = evaluate_inputs(path, files, out_dir=tmp_path)
    ref = evaluate_checkpoint(path, "synthetic", out_dir=tmp_path)["scenarios"]["test_02_unknown_vehicle_known_attack"]
    assert res["family"] == "vgae" and res["threshold"] == 1.5
    for key in METRICS:  # the VGAE pads each batch to its largest graph: scores differ in the last bits, and the
        assert same(res["overall"]["metrics"][key], ref[key], rel=1e-3), key  # random model's are nearly tied

    clean = sorted({f for f in synthetic.splits["train"].files if "attack-free" in f})
    cal = calibrate_checkpoint(path, clean, tmp_path / "vgae_new_car.pt", fpr=0.02)
    after = evaluate_inputs(tmp_path / "vgae_new_car.pt", clean, out_dir=tmp_path)["overall"]
    assert after["alarm_rate"] == cal["alarm_rate_after"] <= 0.02 and cal["windows"] == after["windows"] >= 50


def test_per_message_attack_types_reach_the_recall_per_type(gat_checkpoint, monkeypatch, tmp_path):
    """A recording whose rows name their attack (``Messages.row_type``, e.g. ROAD's labels) is
    scored per named type: each attack window takes the type most of its attack rows carry."""
    n = 1000
    rng = np.random.default_rng(0)
    vocab = np.array(load_checkpoint(gat_checkpoint)["vocab"], np.uint32)
    label = np.zeros(n, np.uint8)
    row_type = np.zeros(n, np.uint8)
    label[120:160], row_type[120:160] = 1, 1  # window 1: fabrication
    label[530:540], row_type[530:540] = 1, 2  # window 5: mostly masquerade ...
    label[540:545], row_type[540:545] = 1, 1  # ... and a few fabrication rows

    def read_typed(path, on_bad_rows="error"):
        return Messages(np.arange(n) * 1e-3, rng.choice(vocab, n), np.full(n, 8, np.uint8),
                        rng.integers(0, 256, (n, 8), dtype=np.uint8), label, str(path), "mixed",
                        row_type=row_type, type_names=("normal", "fabrication", "masquerade"))

    monkeypatch.setitem(readers._EXTRA_READERS, ".typed", read_typed)  # register_reader, undone after the test
    path = tmp_path / "drive.typed"
    path.write_text("rows come from read_typed")
    res = evaluate_inputs(gat_checkpoint, [path], threshold=0.0, out_dir=tmp_path)  # every window alarms
    per_type = res["files"][0]["metrics"]["per_attack_type"]
    assert per_type == {"fabrication": {"windows": 1, "recall": 1.0}, "masquerade": {"windows": 1, "recall": 1.0}}
    assert res["overall"]["metrics"]["per_attack_type"] == per_type


def test_a_training_recording_given_as_input_is_said_to_be_in_sample(gat_checkpoint, synthetic, tmp_path):
    """A new user evaluated a DAGA training trace with --input and read F1 0.80 as a test result: the
    checkpoint lists its training recordings' hashes, and such an input is flagged in-sample."""
    from kdkit.training.checkpoint import load_checkpoint, provenance

    trained = provenance(load_checkpoint(gat_checkpoint))["training_files"]
    root = Path(synthetic.info["root"])
    assert trained and all((root / name).is_file() for name in trained)
    train_file = root / sorted(trained)[0]
    test_file = Path(synthetic.splits["test_01_known_vehicle_known_attack"].files[0])
    res = evaluate_inputs(gat_checkpoint, [train_file, test_file], out_dir=tmp_path)
    flags = {Path(f["file"]).name: f.get("in_sample", False) for f in res["files"]}
    assert flags == {train_file.name: True, test_file.name: False}
    assert any(f"{train_file} is {sorted(trained)[0]}, a training recording of this model" in w and "in-sample" in w
               for w in res["warnings"])
