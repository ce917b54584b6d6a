"""``kdkit calibrate``: a checkpoint's threshold re-set from a new car's attack-free recordings (issue
11). The alarm rate on the calibration windows is at most --fpr, only the threshold and the
provenance change, the original is never replaced silently, and every bad input is refused
clearly. Also on the real Toyota RAV4 candump log (channel can0).

Run: .venv/bin/python -m pytest tests/test_calibrate.py -q
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, require

from kdkit.cli.main import main
from kdkit.config import make_config
from kdkit.training.checkpoint import load_checkpoint
from kdkit.workflows.calibrate import calibrate_checkpoint, fpr_threshold
from kdkit.workflows.run import train
from kdkit.workflows.scoring import evaluate_inputs

TINY = {"hidden": 8, "layers": 1, "heads": 1, "embedding_dim": 4, "batch_size": 64, "epochs": 1, "patience": 100,
        "precision": "32-true", "warmup_steps": 2, "accelerator": "cpu", "num_workers": 0, "save_compat": False}
RAV4 = REPO.parent / "shared" / "data" / "candump" / "toyota-rav4-2018-highway.candump.log.gz"


@pytest.fixture(scope="module")
def gat_checkpoint(synthetic, tmp_path_factory) -> Path:
    """A tiny GAT student trained for one epoch on the synthetic dataset."""
    base = tmp_path_factory.mktemp("gat")
    cfg = make_config(**TINY, model="gat", type="student", dataset="synthetic", runs_dir=str(base / "runs"), run_name="g")
    return Path(train(cfg, progress=False, data=synthetic)["best_checkpoint"])


@pytest.fixture(scope="module")
def clean_folder(synthetic) -> Path:
    """The synthetic dataset's attack-free training folder (two recordings)."""
    return Path(synthetic.splits["train"].files[0]).parent


def same(a, b) -> bool:
    """Equal, tensors (weights, optimizer state) included."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_calibrated_checkpoint_keeps_the_alarm_rate_and_only_changes_the_threshold(gat_checkpoint, clean_folder,
                                                                                      tmp_path, capsys):
    before = gat_checkpoint.read_bytes()
    out = tmp_path / "new_car.pt"
    argv = ["calibrate", "--checkpoint", str(gat_checkpoint), "--clean", str(clean_folder), "--fpr", "0.05",
            "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "calibrated on " in text and "clean windows (fpr 0.05): threshold 0.5 -> " in text and "alarm rate" in text
    m = re.search(r"threshold 0\.5 -> ([0-9.e-]+); alarm rate on them [0-9.]+% \(([0-9,]+)\) -> [0-9.]+% \(([0-9,]+)\)",
                  text)
    lowered = float(m.group(1)) < 0.5 and int(m.group(3).replace(",", "")) > int(m.group(2).replace(",", ""))
    # a threshold lowered to spend the budget (more alarms than before on this car) is said, with what to do
    assert ("note: the threshold went down" in text) == lowered
    assert gat_checkpoint.read_bytes() == before  # the original is untouched
    assert not list(tmp_path.glob(".*tmp*"))

    old, new = load_checkpoint(gat_checkpoint), load_checkpoint(out)
    assert set(old) | {"provenance"} == set(new)
    for key in old:
        if key not in ("threshold", "provenance"):
            assert same(new[key], old[key]), key
    record = new["provenance"]["calibration"]
    files = sorted(clean_folder.iterdir())
    assert [f["path"] for f in record["files"]] == [str(f.resolve()) for f in files]
    assert [f["sha256"] for f in record["files"]] == [sha256(f) for f in files]
    assert record["fpr"] == 0.05 and record["old_threshold"] == 0.5 and record["new_threshold"] == new["threshold"]
    assert record["windows"] == sum(f["windows"] for f in record["files"]) >= 20 and record["date"].endswith("+00:00")
    assert record["from_checkpoint_sha256"] == sha256(gat_checkpoint)
    assert new["provenance"]["calibrations"] == [record] and new["provenance"]["role"] == "student"

    # the alarm rate on the calibration data, measured by kdkit evaluate with the new checkpoint
    res = evaluate_inputs(out, [clean_folder], out_dir=tmp_path)
    assert res["threshold"] == new["threshold"] and res["calibration"]["new_threshold"] == new["threshold"]
    assert res["overall"]["windows"] == record["windows"]
    assert res["overall"]["alarm_rate"] == record["alarm_rate_after"] <= 0.05
    assert res["overall"]["metrics"]["false_positive_rate"] == record["alarm_rate_after"]

    # a second calibration keeps the history; --out equal to the checkpoint needs --force
    again = tmp_path / "again.pt"
    shutil.copy(out, again)
    assert main(["calibrate", "--checkpoint", str(again), "--clean", str(clean_folder), "--fpr", "0.1",
                 "--out", str(again), "--force", "--json"]) == 0
    res2 = json.loads(capsys.readouterr().out)
    assert res2["old_threshold"] == new["threshold"] and res2["alarm_rate_after"] <= 0.1
    history = load_checkpoint(again)["provenance"]["calibrations"]
    assert [h["fpr"] for h in history] == [0.05, 0.1]


@pytest.mark.parametrize("seed", range(5))
def test_fpr_threshold_keeps_the_budget_with_ties_and_float32(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(100, 3000))
    scores = np.round(rng.random(n), int(rng.integers(1, 4))).astype(np.float32)  # many ties
    scores[: n // 10] = 1.0  # saturated probabilities
    for fpr in (0.001, 0.01, 0.05, 0.2, 0.49):
        if n < math.ceil(1 / fpr):
            continue
        t = fpr_threshold(scores, fpr)
        assert np.float32(t) == t  # a float32 value: the same decision in float32 and float64
        allowed = math.floor(fpr * n + 1e-9)
        assert int((scores >= t).sum()) <= allowed and int((scores.astype(np.float64) >= t).sum()) <= allowed
        below = scores[scores < t].max()  # the next lower score breaks the budget
        assert int((scores >= below).sum()) > allowed
        above = scores[scores >= t]
        if above.size and np.float32(below) != np.nextafter(np.float32(above.min()), np.float32(0)):
            # midway between them: an engine whose rounding differs by a few ulps decides both alike
            assert below < t < above.min()


def test_a_calibrated_threshold_lies_between_scores_not_on_one():
    """kdkit calibrate put the threshold exactly on the lowest alarm window's score: the native
    engine's float32 rounding made it 4 alarms in kdkit detect where kdkit evaluate had 5."""
    scores = np.linspace(0.0, 0.99, 100).astype(np.float32)
    t = fpr_threshold(scores, 0.05)  # 5 alarms: the scores from 0.95 on
    assert scores[94] < t < scores[95] and int((scores >= t).sum()) == 5
    assert abs(t - (float(scores[94]) + float(scores[95])) / 2) < 1e-6
    assert int((np.nextafter(scores, np.float32(0)) >= t).sum()) == 5  # a few ulps lower: the same alarms


def test_bad_inputs_are_refused_clearly(gat_checkpoint, clean_folder, synthetic, tmp_path, capsys):
    ck = str(gat_checkpoint)
    attack_file = next(f for f in synthetic.splits["train"].files if "DoS" in f)
    n_attack = int(np.loadtxt(attack_file, delimiter=",", skiprows=1, usecols=3, dtype=int).sum())
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("no recordings")
    out = str(tmp_path / "x.pt")
    cases = [
        (["--clean", attack_file, "--out", out],
         f"--clean takes attack-free recordings, and these hold labelled attacks: {attack_file}: {n_attack:,} of "),
        (["--clean", str(clean_folder), "--fpr", "0.001", "--out", out],
         "--fpr 0.001 needs at least 1,000 clean windows (so the budget allows one alarm), and the 2 recording(s) give"),
        (["--clean", str(clean_folder), "--out", ck], f"--out {ck} is the checkpoint being calibrated"),
        (["--clean", str(tmp_path / "nope.log"), "--out", out], f"--clean {tmp_path / 'nope.log'}: no such file"),
        (["--clean", str(empty), "--out", out], f"--clean {empty}: the folder holds no recordings"),
        (["--clean", str(clean_folder), "--channel", "can0", "--out", out], "--channel can0: only logger files"),
        (["--clean", str(clean_folder), "--out", str(tmp_path)], f"--out {tmp_path} is a folder"),
    ]
    cases += [(["--clean", str(clean_folder), "--fpr", fpr, "--out", out], (f"--fpr {fpr}: the false-alarm rate to keep "
               "on the clean recordings must be in (0, 0.5)")) for fpr in ("0", "0.5", "0.7", "-0.01", "nan")]
    for extra, message in cases:
        assert main(["calibrate", "--checkpoint", ck, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err, (extra, err)
    assert not (tmp_path / "x.pt").exists() and load_checkpoint(ck)["threshold"] == 0.5

    # --allow-attacks: the attack windows are left out, the rest calibrates
    res = calibrate_checkpoint(ck, [attack_file], out, fpr=0.05, allow_attacks=True)
    left_out = res["files"][0]["left_out_attack_windows"]
    assert left_out > 0 and res["windows"] + left_out == res["files"][0]["windows"] + left_out
    assert res["files"][0]["attack_messages"] == n_attack and res["alarm_rate_after"] <= 0.05


def test_allow_attacks_leaves_out_every_window_holding_an_attack_message(gat_checkpoint, synthetic, tmp_path):
    """With a label_threshold above 0 a window of a few attack rows is labelled normal: --allow-attacks
    calibrated (and --adapt fitted) on such DoS windows. Only windows without an attack message count."""
    from kdkit.data.graphs import build_graphs
    from kdkit.data.readers import read_messages
    from kdkit.workflows.calibrate import attack_free

    ck = load_checkpoint(gat_checkpoint)
    ck["train_config"]["label_threshold"] = 0.3
    shared = tmp_path / "share-0.3.pt"
    torch.save(ck, shared)
    attack_file = Path(next(f for f in synthetic.splits["test_01_known_vehicle_known_attack"].files if "DoS" in f))
    m = read_messages(attack_file)
    gs = build_graphs(m, synthetic.vocab, 100, 100, 0.3)
    share = gs.attack_share.numpy()
    assert ((share > 0) & (share <= 0.3)).any(), "the recording needs windows the 0.3 rule calls normal"
    res = calibrate_checkpoint(shared, [attack_file], tmp_path / "c.pt", fpr=0.05, allow_attacks=True)
    assert res["windows"] == int((share == 0).sum()) == int(attack_free(gs).sum())
    assert res["files"][0]["left_out_attack_windows"] == int((share > 0).sum())


def test_calibrate_on_the_real_rav4_log(gat_checkpoint, tmp_path, capsys):
    """A model of another car (synthetic IDs) on an attack-free Toyota RAV4 capture, channel can0."""
    require(RAV4.is_file(), f"real candump log {RAV4} not found")
    out = tmp_path / "rav4.pt"
    res = calibrate_checkpoint(gat_checkpoint, [RAV4], out, fpr=0.01, channel="can0")
    assert res["windows"] == 538 and res["alarm_rate_after"] <= 0.01
    assert res["oov_node_share"] > 0.9 and any("does not know this car" in w for w in res["warnings"])
    assert load_checkpoint(out)["provenance"]["calibration"]["files"][0]["sha256"] == sha256(RAV4)
    # scored again: the unknown-car warning says on what it was calibrated, not "calibrate it"
    before = evaluate_inputs(gat_checkpoint, [RAV4], channel="can0", out_dir=tmp_path / "e0")["warnings"]
    after = evaluate_inputs(out, [RAV4], channel="can0", out_dir=tmp_path / "e1")["warnings"]
    assert any("(kdkit calibrate), better retrain" in w for w in before)
    assert after and not any("(kdkit calibrate), better retrain" in w for w in after)
    assert any("its threshold was calibrated (kdkit calibrate) on toyota-rav4-2018-highway.candump.log.gz (channel "
               "can0, 538 clean windows, fpr 0.01" in w for w in after)
    assert main(["calibrate", "--checkpoint", str(gat_checkpoint), "--clean", str(RAV4), "--channel", "can9",
                 "--out", str(tmp_path / "x.pt")]) == 2
    assert f"{RAV4}: no data frames on channel 'can9'" in capsys.readouterr().err


def test_adapt_refuses_a_gat_checkpoint_and_names_the_alternative(gat_checkpoint, clean_folder, tmp_path, capsys):
    out = tmp_path / "adapted.pt"
    assert main(["calibrate", "--adapt", "--checkpoint", str(gat_checkpoint), "--clean", str(clean_folder),
                 "--out", str(out)]) != 0
    err = capsys.readouterr().err
    assert "--adapt needs a fusion checkpoint" in err and "is a gat model" in err and "without --adapt" in err
    assert not out.exists()


def test_first_seconds_calibrates_on_the_start_of_each_recording(gat_checkpoint, clean_folder, tmp_path, capsys):
    """``--first-seconds S``: only each recording's first S seconds are scored (a drive's clean start;
    the rest can be replayed with kdkit detect); the record says so; a bad S is refused by name."""
    from kdkit.data.graphs import build_graphs
    from kdkit.data.readers import read_messages
    from kdkit.workflows.scoring import first_seconds_of, load_scoring_model, recording_files

    sm = load_scoring_model(gat_checkpoint)
    window, stride = int(sm.graph["window"]), int(sm.graph["stride"])
    expected = full = 0
    for f in recording_files([clean_folder], "--clean"):
        m = read_messages(f)
        start = m.slice(0, int((m.timestamp < m.timestamp[0] + 5.0).sum()))
        assert len(first_seconds_of(m, 5.0)) == len(start) and 0 < len(start) < len(m)
        expected += len(build_graphs(start, sm.vocab, window, stride))
        full += len(build_graphs(m, sm.vocab, window, stride))
    out = tmp_path / "start.pt"
    assert main(["calibrate", "--checkpoint", str(gat_checkpoint), "--clean", str(clean_folder), "--fpr", "0.05",
                 "--first-seconds", "5", "--out", str(out)]) == 0
    assert "clean windows of each recording's first 5 s" in capsys.readouterr().out
    record = load_checkpoint(out)["provenance"]["calibration"]
    assert record["first_seconds"] == 5.0 and record["windows"] == expected and 20 <= expected < full
    for bad in ("0", "-3", "nan"):
        assert main(["calibrate", "--checkpoint", str(gat_checkpoint), "--clean", str(clean_folder),
                     "--first-seconds", bad, "--out", str(tmp_path / "bad.pt")]) == 2
        assert f"--first-seconds {float(bad)}: must be a positive number of seconds" in capsys.readouterr().err
    assert not (tmp_path / "bad.pt").exists()
    # too short a start for the budget: the error says --first-seconds is one way out
    assert main(["calibrate", "--checkpoint", str(gat_checkpoint), "--clean", str(clean_folder), "--fpr", "0.001",
                 "--first-seconds", "1", "--out", str(tmp_path / "short.pt")]) == 2
    assert "or use more than the first 1 s: --first-seconds" in capsys.readouterr().err


def test_a_bus_that_starts_later_in_a_log_is_said_by_evaluate_and_calibrate(gat_checkpoint, synthetic, tmp_path):
    """A candump log whose first MiB holds can0 is read as can0; the 500 frames of can1 after it were left out
    without a word by evaluate --input and calibrate (data info and detect said it)."""
    ids = sorted(synthetic.vocab.to_list())[1:6]
    lines = [f"({100 + k / 500:.6f}) can0 {ids[k % 5]:03X}#{k % 256:02X}" for k in range(60_000)]  # past 1 MiB
    lines += [f"({220 + k / 500:.6f}) can1 {0x7A0 + k % 3:03X}#00" for k in range(500)]
    log = tmp_path / "late.log"
    log.write_text("\n".join(lines) + "\n")
    res = evaluate_inputs(gat_checkpoint, [log], out_dir=tmp_path)
    assert res["files"][0]["left_out_channels"] == {"can1": 500}
    assert any("can1 (500)" in w and "--channel NAME reads one of them" in w for w in res["warnings"]), res["warnings"]
    cal = calibrate_checkpoint(gat_checkpoint, [log], tmp_path / "c.pt", fpr=0.05)
    assert cal["files"][0]["left_out_channels"] == {"can1": 500}
    assert any("can1 (500)" in w for w in cal["warnings"])
