"""``kdkit detect`` and friends, as a new user meets them: nonsense numeric options refused naming
the option and value; a calibrated model's unknown-vehicle warning names its calibration instead
of asking for one; the wrong kind of model file named as such; one engine word in the summary's
JSON and its printed line; the frames of other channels counted apart from bad frames; a
once-only warning shown once per ``kdkit bench detect``.

Run: .venv/bin/python -m pytest tests/test_detect_messages.py -q -p no:cacheprovider
"""
from __future__ import annotations

import argparse
import json
import logging
import zipfile
from pathlib import Path

import can
import numpy as np
import pytest
import torch
from conftest import require

from kdkit.cli.main import main
from kdkit.config import make_config
from kdkit.data.readers import EXTENDED_ID_FLAG, DataFormatError, read_messages
from kdkit.deploy.export import export_checkpoint
from kdkit.stream import Detector, replay_file
from kdkit.stream.detector import VehicleCheck
from kdkit.stream.run import RunSummary
from kdkit.training.checkpoint import load_checkpoint
from kdkit.workflows.calibrate import calibrate_checkpoint
from kdkit.workflows.run import train

TINY = {"hidden": 8, "layers": 1, "heads": 1, "embedding_dim": 4, "batch_size": 64, "epochs": 1, "patience": 100,
        "precision": "32-true", "warmup_steps": 2, "accelerator": "cpu", "num_workers": 0, "save_compat": False}
RAV4 = Path(__file__).resolve().parents[2] / "shared" / "data" / "candump" / "toyota-rav4-2018-highway.candump.log.gz"
UNKNOWN = "does not look like a vehicle"


@pytest.fixture(scope="module")
def ckpt(synthetic, tmp_path_factory) -> Path:
    """A tiny GAT student trained one epoch on the synthetic data (window and stride 100)."""
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("detect_messages")
    cfg = make_config(**TINY, model="gat", type="student", dataset="synthetic", runs_dir=str(base / "runs"),
                      run_name="g")
    return Path(train(cfg, progress=False, data=synthetic)["best_checkpoint"])


@pytest.fixture(scope="module")
def calibrated(ckpt, synthetic, tmp_path_factory) -> Path:
    """``ckpt`` calibrated (kdkit calibrate) on the synthetic clean training folder."""
    clean = Path(synthetic.splits["train"].files[0]).parent
    out = tmp_path_factory.mktemp("calibrated") / "car.pt"
    calibrate_checkpoint(ckpt, [clean], out, fpr=0.05)
    return out


@pytest.fixture(scope="module")
def calibrated_export(calibrated, tmp_path_factory) -> Path:
    """The calibrated checkpoint exported (its .json carries the calibration record)."""
    out = tmp_path_factory.mktemp("calibrated_export") / "car.pt2"
    export_checkpoint(calibrated, out)
    return out


def _candump(path: Path, channels: dict[str, int], extended: bool = False, gap: float = 5e-4) -> Path:
    """A candump -L log: ``n`` frames on each named channel, interleaved in time (IDs cycling over 24
    values; ``extended``: 8-digit IDs no synthetic vocabulary holds)."""
    rows, t = [], 1000.0
    left = dict(channels)
    k = 0
    while any(left.values()):
        for name in channels:
            if left[name]:
                can_id = f"{0x1ABC000 + k % 24:08X}" if extended else f"{0x100 + k % 24:03X}"
                rows.append(f"({t:.6f}) {name} {can_id}#{k % 256:02X}11223344556677")
                left[name] -= 1
                t += gap
                k += 1
    path.write_text("\n".join(rows) + "\n")
    return path


def _foreign_frames(n: int = 12_000) -> list[tuple]:
    """Frames of a car the model never saw: extended IDs, 120 windows of 100."""
    return [(1000.0 + i * 5e-4, 0x1ABC000 + i % 24, bytes(8), True) for i in range(n)]


# ----------------------------------------------------------------------------- 1. numeric options
@pytest.mark.parametrize(("option", "value", "expected"), [
    ("--stride", "0", "--stride must be >= 1"), ("--stride", "-5", "got -5"),
    ("--threshold", "1.5", "--threshold 1.5 is outside [0, 1]"), ("--threshold", "-0.1", "--threshold -0.1"),
    ("--threshold", "nan", "--threshold must be a finite number, got nan"),
    ("--threads", "-1", "--threads must be >= 0"), ("--max-seconds", "nan", "--max-seconds must be > 0, got nan"),
    ("--stall-seconds", "inf", "--stall-seconds must be a finite number"), ("--max-messages", "0", "--max-messages"),
])
def test_detect_refuses_nonsense_numbers_naming_option_and_value(ckpt, tmp_path, capsys, option, value, expected):
    log = _candump(tmp_path / "x.log", {"can0": 300})
    assert main(["detect", "--checkpoint", str(ckpt), "--input", str(log), option, value]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_detector_checks_stride_and_threshold_and_keeps_the_models_stride(ckpt):
    assert Detector.from_checkpoint(ckpt).stride == 100  # None: the model's stride
    assert Detector.from_checkpoint(ckpt, stride=50).stride == 50
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match=rf"--stride {bad!r}: .* >= 1"):
            Detector.from_checkpoint(ckpt, stride=bad)
    for bad in (1.5, -0.01):
        with pytest.raises(ValueError, match=rf"--threshold {bad!r} is outside \[0, 1\]"):
            Detector.from_checkpoint(ckpt, threshold=bad)
    with pytest.raises(ValueError, match="--threshold nan is not a finite number"):
        Detector.from_checkpoint(ckpt, threshold=float("nan"))
    assert Detector.from_checkpoint(ckpt, threshold=1.0).threshold == 1.0  # the bounds themselves are fine
    # a score that is not a probability (a VGAE's anomaly score, a fusion student's) takes any finite threshold
    det = Detector(lambda gs: np.zeros(len(gs)), Detector.from_checkpoint(ckpt).vocab, 100, threshold=7.5)
    assert det.threshold == 7.5


def test_bench_detect_refuses_bad_threads_and_seconds(ckpt, tmp_path, capsys):
    log = _candump(tmp_path / "x.log", {"can0": 300})
    assert main(["bench", "detect", "--model", str(ckpt), "--input", str(log), "--threads", "0"]) == 2
    assert "--threads must be >= 1, got 0" in capsys.readouterr().err
    assert main(["bench", "detect", "--model", str(ckpt), "--input", str(log), "--live", "--seconds", "-1"]) == 2
    assert "--seconds must be a finite number > 0, got -1" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 2. a calibrated model
def test_calibrated_checkpoint_warning_names_the_calibration(calibrated, ckpt, caplog):
    record = load_checkpoint(calibrated)["provenance"]["calibration"]
    name = Path(record["files"][0]["path"]).name
    det = Detector.from_checkpoint(calibrated)
    assert det.calibration == record
    with caplog.at_level(logging.WARNING, logger="kdkit.stream"):
        det.feed_many(_foreign_frames())
    assert det.unknown_vehicle is True
    warned = [r.getMessage() for r in caplog.records if "training vocabulary" in r.getMessage()]
    assert len(warned) == 1
    assert "threshold was calibrated (kdkit calibrate) on" in warned[0] and name in warned[0]
    assert "fpr 0.05" in warned[0] and "Calibrate the model" not in warned[0] and UNKNOWN not in warned[0]
    text = replay_summary_text(det)
    assert "calibrate it on a clean capture" not in text and f"threshold was calibrated on {name}" in text

    plain = Detector.from_checkpoint(ckpt)  # not calibrated: the warning still asks for a calibration
    assert plain.calibration is None
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kdkit.stream"):
        plain.feed_many(_foreign_frames())
    assert any(UNKNOWN in r.getMessage() and "Calibrate the model" in r.getMessage() for r in caplog.records)


def replay_summary_text(det: Detector) -> str:
    return RunSummary(det, "frames", "live").finish().format()


def test_adapted_model_warning_says_adapted(caplog):
    check = VehicleCheck("m", windows=2, calibration={"kind": "adapt", "files": [{"path": "/d/rav4.log"}],
                                                      "channel": "can0", "fpr": 0.01, "windows": 500})
    with caplog.at_level(logging.WARNING, logger="kdkit.stream"):
        check.add(np.full(2, 30), np.full(2, 30), [(0x7A0,)] * 2)
    msg = caplog.records[-1].getMessage()
    assert "adapted (kdkit calibrate --adapt) to rav4.log (channel can0, 500 clean windows, fpr 0.01)" in msg
    assert "Calibrate the model" not in msg


def test_calibrated_export_warning_names_the_calibration(calibrated_export, tmp_path, capsys, caplog):
    meta = json.loads(calibrated_export.with_suffix(".json").read_text())
    name = Path(meta["calibration"]["files"][0]["path"]).name
    log = _candump(tmp_path / "foreign.log", {"can0": 12_000}, extended=True)
    with caplog.at_level(logging.WARNING, logger="kdkit.stream"):
        assert main(["detect", "--model", str(calibrated_export), "--input", str(log), "--channel", "can0",
                     "--summary", str(tmp_path / "s.json")]) == 0
    err = capsys.readouterr().err + caplog.text  # the warning (logged) and the summary (printed)
    assert f"threshold was calibrated (kdkit calibrate) on {name}" in err
    assert "kdkit calibrate --checkpoint" not in err and "calibrate it on a clean capture" not in err
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["unknown_vehicle"] is True and s["calibration_kind"] == "threshold" and name in s["calibrated_on"]


# ----------------------------------------------------------------------------- 3. the wrong kind of model file
def test_wrong_kind_of_model_file_is_named(ckpt, calibrated_export, tmp_path, capsys):
    log = _candump(tmp_path / "x.log", {"can0": 300})
    assert main(["detect", "--model", str(ckpt), "--input", str(log)]) == 2
    err = capsys.readouterr().err
    assert "is a training checkpoint, not an exported model" in err and f"--checkpoint {ckpt}" in err
    assert "kdkit export" in err and "best.json" not in err
    missing = tmp_path / "nothere.pt2"
    assert main(["detect", "--model", str(missing), "--input", str(log)]) == 2
    err = capsys.readouterr().err
    assert f"model file {missing} does not exist" in err and "nothere.json" not in err

    assert main(["evaluate", "--checkpoint", str(calibrated_export), "--input", str(log)]) == 2
    err = capsys.readouterr().err
    assert "is an exported model package (.pt2" in err and f"kdkit detect --model {calibrated_export}" in err
    assert "PytorchStreamReader" not in err
    meta = json.loads(calibrated_export.with_suffix(".json").read_text())
    assert meta["checkpoint"] in err  # the checkpoint it was exported from, named by its .json


def test_a_torch_export_archive_of_any_name_is_recognised(tmp_path):
    fake = tmp_path / "model.bin"
    with zipfile.ZipFile(fake, "w") as z:
        z.writestr("model/archive_format", "pt2")
    with pytest.raises(ValueError, match="is an exported model package"):
        load_checkpoint(fake)


def test_colour_codes_are_stripped_from_a_foreign_pickle_error(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"x": argparse.Namespace(a=1)}, path)  # a global weights_only refuses, in a coloured message
    with pytest.raises(ValueError, match="not a loadable kdkit checkpoint") as info:
        load_checkpoint(path)
    text = str(info.value)
    assert "\x1b" not in text and "[1m" not in text and "\n" not in text


# ----------------------------------------------------------------------------- 4. one engine word
def test_summary_json_and_line_name_the_same_engine(ckpt, calibrated_export, tmp_path):
    log = _candump(tmp_path / "x.log", {"can0": 1000})
    exported = Detector.from_exported(calibrated_export)
    assert (exported.engine, exported.batch_engine) == ("native", "package")
    for det, realtime, word in ((exported, False, "package"), (exported, True, "native"),
                                (Detector.from_checkpoint(ckpt), False, "native")):
        summary = replay_file(det.clone(), log, realtime=realtime)
        s = summary.to_dict()
        assert s["engine"] == word and f"engine {word})" in summary.format()
        assert (s["single_window_engine"], s["batch_engine"]) == (det.engine, det.batch_engine)


# ----------------------------------------------------------------------------- 5. other channels
def test_frames_of_other_channels_are_counted_apart_from_bad_frames(ckpt, tmp_path, capsys):
    log = _candump(tmp_path / "multi.log", {"can0": 600, "can1": 450, "tx0": 150})
    assert main(["detect", "--checkpoint", str(ckpt), "--input", str(log), "--channel", "can0",
                 "--summary", str(tmp_path / "s.json")]) == 0
    err = capsys.readouterr().err
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["messages"] == 600 and s["dropped"] == {} and s["channel"] == "can0"
    assert s["other_channels"] == {"can1": 450, "tx0": 150} and s["other_channel_frames"] == 600
    assert "dropped frames: none" in err and "left out as other channels than can0: 600 frames (can1 450, tx0 150)" in err

    realtime = replay_file(Detector.from_checkpoint(ckpt, channel="can0"), log, channel="can0", realtime=True)
    assert realtime.to_dict()["other_channels"] == {"can1": 450, "tx0": 150}
    short = replay_file(Detector.from_checkpoint(ckpt), log, channel="can0", max_messages=200)
    assert short.to_dict()["other_channel_frames"] is None and "not counted (the replay stopped" in short.format()
    single = replay_file(Detector.from_checkpoint(ckpt), _candump(tmp_path / "one.log", {"can0": 300}), channel="can0")
    assert single.to_dict()["other_channel_frames"] == 0 and "other channels" not in single.format()


def test_frames_of_other_channels_on_a_live_stream_are_not_drops(ckpt, caplog):
    det = Detector.from_checkpoint(ckpt, channel="can0")
    frames = [can.Message(timestamp=1000 + i * 5e-4, arbitration_id=0x100, data=bytes(8),
                          channel="can0" if i % 3 else "can1") for i in range(300)]
    with caplog.at_level(logging.WARNING, logger="kdkit.stream"):
        det.feed_many(frames)
    assert det.other_channels == {"can1": 100} and not det.dropped and det.stats()["other_channels"] == {"can1": 100}
    assert len([r for r in caplog.records if "channel 'can1'" in r.getMessage()]) == 1


def test_real_rav4_can0_counts_its_other_channels(ckpt, tmp_path, capsys):
    require(RAV4.is_file(), f"{RAV4} not found")
    summary = replay_file(Detector.from_checkpoint(ckpt, channel="can0"), RAV4, channel="can0")
    s = summary.to_dict()
    assert s["messages"] == 53_800 and s["dropped"] == {}
    assert s["other_channels"] == {"can1": 45_000, "tx1": 24_234, "tx0": 12_434} and s["other_channel_frames"] == 81_668
    for name, n in s["other_channels"].items():  # the counts are the frames the reader gives for each channel
        assert len(read_messages(RAV4, channel=name)) == n


# ----------------------------------------------------------------------------- 6. once per command
def test_bench_detect_warns_once(ckpt, tmp_path, capsys, caplog):
    log = _candump(tmp_path / "foreign.log", {"can0": 12_000}, extended=True)
    with caplog.at_level(logging.WARNING, logger="kdkit.stream"):
        assert main(["bench", "detect", "--model", str(ckpt), "--input", str(log), "--repeats", "2"]) == 0
    assert len([r for r in caplog.records if UNKNOWN in r.getMessage()]) == 1
    base = Detector.from_checkpoint(ckpt)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kdkit.stream"):
        clones = [base.clone() for _ in range(3)]
        for det in clones:
            det.feed_many(_foreign_frames())
    assert all(det.unknown_vehicle for det in clones)  # every clone judges; the warning is given once
    assert len([r for r in caplog.records if UNKNOWN in r.getMessage()]) == 1
    assert Detector.from_checkpoint(ckpt).vehicle._shown is not base._shown  # a new detector warns again


def test_extended_flag_is_what_makes_the_frames_foreign(ckpt):
    vocab = Detector.from_checkpoint(ckpt).vocab
    assert not np.isin((0x1ABC000 + np.arange(24)) | EXTENDED_ID_FLAG, vocab.ids).any()


def test_a_channel_for_a_file_without_channels_is_warned_about_once(ckpt, synthetic, caplog):
    """kdkit bench detect replays a file many times: '--channel ignored' once per file, not per replay."""
    from kdkit.data.datasets import dataset_dir
    from kdkit.stream.run import replay_file

    csv = sorted(dataset_dir("synthetic").glob("test_01*/*.csv*"))[0]
    with caplog.at_level(logging.WARNING, logger="kdkit.stream"):
        for _ in range(3):
            replay_file(Detector.from_checkpoint(ckpt), csv, channel="can0")
    assert len([r for r in caplog.records if "--channel can0 ignored: this format has no channels" in r.getMessage()]) == 1


def test_every_channel_on_purpose_keeps_every_frame(ckpt, tmp_path):
    """--channel '*': the replay reads every bus as one stream and the detector drops none of them."""
    from kdkit.stream.run import replay_file

    log = _candump(tmp_path / "two.log", {"can0": 1_500, "can1": 1_500})
    with pytest.raises(DataFormatError, match="frames of 2 bus channels"):
        replay_file(Detector.from_checkpoint(ckpt), log)
    det = Detector.from_checkpoint(ckpt, channel="*")
    summary = replay_file(det, log, channel="*").to_dict()
    assert det.channel is None and summary["messages"] == 3_000
    det = Detector.from_checkpoint(ckpt, channel="*")
    det.feed_many([(k * 1e-3, 0x100 + k % 7, b"\x01", ("can0", "vcan3")[k % 2]) for k in range(300)])
    assert sum(det.dropped.values()) == 0 and not det.other_channels


def test_alarm_table_times_are_seconds_since_the_first_window(ckpt, synthetic):
    """As the timeline plots them: a bus time of ~1.5e9 s would print as the same number on every row."""
    from kdkit.data.datasets import dataset_dir
    from kdkit.stream.report import alarm_rows
    from kdkit.stream.run import replay_file

    csv = sorted(dataset_dir("synthetic").glob("test_01*/*.csv*"))[0]
    summary = replay_file(Detector.from_checkpoint(ckpt, threshold=0.0), csv, keep=True)
    rows = alarm_rows(summary.decisions, limit=10)
    t0 = summary.decisions[0].start_time
    assert len(rows) == 10 and rows[0]["start_s"] == round(summary.decisions[0].start_time - t0, 6) == 0.0
    assert all(0 <= r["start_s"] <= r["end_s"] for r in rows) and len({r["start_s"] for r in rows}) == 10
    assert "start" not in rows[0] and rows[-1]["end_s"] < 1e4


def test_bench_detect_refuses_a_channel_for_a_file_without_channels(ckpt, synthetic, capsys):
    from kdkit.data.datasets import dataset_dir

    csv = sorted(dataset_dir("synthetic").glob("test_01*/*.csv*"))[0]
    assert main(["bench", "detect", "--model", str(ckpt), "--input", str(csv), "--channel", "can0"]) == 2
    assert "--channel can0: only logger files" in capsys.readouterr().err  # as kdkit detect and evaluate say


def test_bench_detects_calibrate_advice_names_the_channel_it_read(ckpt, tmp_path, caplog):
    """kdkit detect's "calibrate the model" advice names --channel; bench detect's left it out, and on a
    log of several buses the advised command stopped with "frames of 2 bus channels"."""
    from kdkit.bench.detect import bench_live, bench_replay

    log = _candump(tmp_path / "two.log", {"can0": 12_000, "can1": 200}, extended=True)
    with caplog.at_level(logging.WARNING, logger="kdkit.stream"):
        bench_replay(ckpt, log, channel="can0", repeats=1)
    advice = [r.getMessage() for r in caplog.records if "kdkit calibrate --checkpoint" in r.getMessage()]
    assert advice and "--clean CLEAN_CAPTURE --channel can0 --fpr" in advice[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kdkit.stream"):
        bench_live(ckpt, log, channel="can0", seconds=6.2)
    advice = [r.getMessage() for r in caplog.records if "kdkit calibrate --checkpoint" in r.getMessage()]
    assert advice and "--channel can0" in advice[0]
