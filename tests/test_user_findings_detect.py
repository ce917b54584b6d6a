"""What users found in ``kdkit detect``, ``evaluate`` and ``export``: an export copied without its
``.npz`` is warned about (or, for ``--engine native``, refused naming where it is missing); a file
of the wrong kind (a recording or an export given as a checkpoint, an export given as a recording)
is named as what it is instead of torch's unpickling advice or a zip reader's member list;
``--channel`` on a file without channels is refused by ``detect`` as by ``evaluate``; ``evaluate
--dataset`` prints the recall per attack type and where its JSON went, and ``--input`` evaluations
of other recordings do not overwrite each other; ``--engine`` says which engines go with which
model kind.

Run: .venv/bin/python -m pytest tests/test_user_findings_detect.py -q -p no:cacheprovider
"""
from __future__ import annotations

import argparse
import gzip
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from kdkit.cli.main import main
from kdkit.stream import Detector
from kdkit.training.checkpoint import file_kind, load_checkpoint
from kdkit.workflows.scoring import inputs_json_name

TORCH_ADVICE = ("weights_only", "Weights only load failed", "add_safe_globals", "Re-running")


def _candump(path: Path, frames: int = 600, channels: tuple[str, ...] = ("can0",)) -> Path:
    """A candump -L log of ``frames`` frames on each channel (IDs cycling over 24 values)."""
    rows, t = [], 1000.0
    for k in range(frames):
        for name in channels:
            rows.append(f"({t:.6f}) {name} {0x100 + k % 24:03X}#{k % 256:02X}11223344556677")
            t += 5e-4
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture()
def gateway(exported_student, tmp_path) -> Path:
    """A copy of the exported student's package and .json without its .npz (a gateway folder
    filled by hand): the package's path."""
    _, package, _ = exported_student
    folder = tmp_path / "gw2"
    folder.mkdir()
    for f in (package, package.with_suffix(".json")):
        shutil.copy(f, folder / f.name)
    return folder / package.name


# ----------------------------------------------------------------------------- 1. a missing .npz
def test_a_missing_npz_is_warned_once_naming_what_is_lost(gateway, tmp_path, capsys, caplog):
    log = _candump(tmp_path / "capture.log")
    npz = gateway.with_suffix(".npz")
    with caplog.at_level(logging.WARNING, logger="kdkit.stream"):
        assert main(["detect", "--model", str(gateway), "--input", str(log), "--channel", "can0", "--realtime",
                     "--summary", str(tmp_path / "s.json")]) == 0
        again = Detector.from_exported(gateway)  # a second detector of the same package: not warned again
    warned = [r.getMessage() for r in caplog.records if "is missing at" in r.getMessage()]
    assert len(warned) == 1, warned
    assert f"student.npz is missing at {npz} (student.json records native weights, exported as student.npz)" in warned[0]
    assert "native single-window engine" in warned[0] and "slower package engine" in warned[0]
    assert json.loads((tmp_path / "s.json").read_text())["engine"] == "package" and again.engine == "package"
    capsys.readouterr()

    assert main(["detect", "--model", str(gateway), "--input", str(log), "--channel", "can0",
                 "--engine", "native"]) == 2
    err = capsys.readouterr().err
    assert f"the native engine cannot run it: student.npz is missing at {npz}" in err
    assert "exported before kdkit wrote one" not in err  # the .json names it: it was exported with one

    # a .json that names no .npz (an export from before kdkit wrote one): the old wording, and no warning
    meta = json.loads(gateway.with_suffix(".json").read_text())
    meta.pop("native_weights"), meta.pop("native_weights_sha256"), meta.pop("scoring_sha256")  # (none then either)
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(gateway, old / gateway.name)
    (old / "student.json").write_text(json.dumps(meta))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kdkit.stream"):
        assert Detector.from_exported(old / gateway.name).engine == "package"
        with pytest.raises(ValueError, match="no student.npz beside the package named by student.json \\(exported "
                                             "before kdkit wrote one\\)"):
            Detector.from_exported(old / gateway.name, engine="native")
    assert not [r for r in caplog.records if "is missing at" in r.getMessage()]


# ----------------------------------------------------------------------------- 2. wrong kinds of file
def test_a_file_of_another_kind_given_as_a_checkpoint_is_named(exported_student, tmp_path, capsys):
    checkpoint, package, _ = exported_student
    log = _candump(tmp_path / "capture.log")
    gz = tmp_path / "capture.log.gz"
    gz.write_bytes(gzip.compress(log.read_bytes()))
    assert main(["evaluate", "--checkpoint", str(gz), "--dataset", "synthetic"]) == 2
    err = capsys.readouterr().err
    assert f"{gz} is named as a CAN recording (.log.gz), not a training checkpoint" in err and "goes to --input" in err
    assert not any(a in err for a in TORCH_ADVICE), err

    for name, what in (("student.json", "is the metadata of an exported model"),
                       ("student.npz", "is the native-engine weights (.npz) of an exported model")):
        assert main(["export", "--checkpoint", str(package.with_name(name)), "--out", str(tmp_path / "x.pt2")]) == 2
        err = capsys.readouterr().err
        assert what in err and f"kdkit detect --model {package}" in err and str(checkpoint) in err, err
        assert not any(a in err for a in TORCH_ADVICE), err
    assert not list(tmp_path.glob("x.*"))

    # anything else: not a kdkit checkpoint, without torch's advice to load it unsafely
    junk = tmp_path / "weights.bin"
    junk.write_bytes(b"\x00\x01 not a pickle" * 20)
    foreign = tmp_path / "foreign.pt"
    torch.save({"x": argparse.Namespace(a=1)}, foreign)
    for path, detail in ((junk, "not a file torch.save wrote (unsupported operand"),
                         (foreign, "Unsupported global: GLOBAL argparse.Namespace")):
        with pytest.raises(ValueError, match="not a loadable kdkit checkpoint") as info:
            load_checkpoint(path)
        text = str(info.value)
        assert detail in text and "checkpoint (--checkpoint, --teacher) is the best.pt" in text, text
        assert not any(a in text for a in TORCH_ADVICE), text
    assert [file_kind(p) for p in (package, package.with_suffix(".json"), package.with_suffix(".npz"), checkpoint,
                                   gz, junk)] == ["package", "export_metadata", "native_weights", "checkpoint",
                                                  "recording", None]


def test_a_model_file_given_as_a_recording_is_named(exported_student, tmp_path, capsys):
    checkpoint, package, _ = exported_student
    for command in (["evaluate", "--checkpoint", str(checkpoint)], ["detect", "--checkpoint", str(checkpoint)]):
        assert main([*command, "--input", str(package)]) == 2
        err = capsys.readouterr().err
        assert f"--input {package} is an exported model package (.pt2), not a CAN recording" in err, err
        assert f"kdkit detect --model {package} --input RECORDING" in err and "a zip must hold" not in err
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--input", str(checkpoint)]) == 2
    assert f"--input {checkpoint} is a training checkpoint, not a CAN recording" in capsys.readouterr().err
    assert main(["calibrate", "--checkpoint", str(checkpoint), "--clean", str(package.with_suffix(".json")),
                 "--out", str(tmp_path / "c.pt")]) == 2
    assert "--clean " in (err := capsys.readouterr().err) and "is the metadata of an exported model" in err

    # --model given a recording or the export's .json
    log = _candump(tmp_path / "capture.log")
    assert main(["detect", "--model", str(log), "--input", str(log)]) == 2
    assert f"{log} is a CAN recording, not an exported model: replay it with --input" in capsys.readouterr().err
    assert main(["detect", "--model", str(package.with_suffix(".json")), "--input", str(log)]) == 2
    assert f"not its package: pass the .pt2 to --model ({package}" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 3. --channel on a file without channels
def test_detect_refuses_a_channel_for_a_file_without_channels_as_evaluate_does(exported_student, synthetic, capsys):
    checkpoint, package, _ = exported_student
    csv = synthetic.splits["test_01_known_vehicle_known_attack"].files[0]
    messages = []
    for command in (["evaluate", "--checkpoint", str(checkpoint)], ["detect", "--checkpoint", str(checkpoint)],
                    ["detect", "--model", str(package)]):
        assert main([*command, "--input", csv, "--channel", "can0"]) == 2
        messages.append(capsys.readouterr().err.strip())
    assert len(set(messages)) == 1, messages
    assert messages[0].startswith("kdkit: error: --channel can0: only logger files (.log, .asc, .blf, .trc) have bus "
                                  "channels") and messages[0].endswith("drop --channel")


# ----------------------------------------------------------------------------- 4. evaluate's text output and files
def test_evaluate_dataset_prints_recall_per_attack_type_and_the_json(exported_student, tmp_path, capsys):
    checkpoint, _, _ = exported_student
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--dataset", "synthetic", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    written = tmp_path / f"evaluation_synthetic_{checkpoint.stem}.json"  # --out: a folder of any models
    assert f"written {written}" in out.splitlines()
    res = json.loads(written.read_text())
    lines = out.splitlines()
    start = lines.index("recall per attack type (share of the type's attack windows that alarm):")
    table = {}
    for line in lines[start + 2:]:
        if not line or line.startswith("written "):
            break
        parts = line.replace("all scenarios", "all_scenarios").split()
        table[tuple(parts[:2])] = parts[2:]
    shown = 0
    for scenario, m in res["scenarios"].items():
        for kind, v in m["per_attack_type"].items():
            assert table[(scenario, kind)] == [f"{v['windows']:,}", f"{v['recall']:.4f}"], (scenario, kind)
            shown += 1
    assert shown >= 4 and len(table) > shown and {"DoS", "fuzzing", "malfunction"} <= {k for _, k in table}
    # a type of several scenarios also gets its recall over all of them (weighted by its attack windows)
    dos = [m["per_attack_type"]["DoS"] for m in res["scenarios"].values() if "DoS" in m["per_attack_type"]]
    assert len(dos) > 1 and table[("all_scenarios", "DoS")] == [
        f"{sum(d['windows'] for d in dos):,}",
        f"{sum(d['recall'] * d['windows'] for d in dos) / sum(d['windows'] for d in dos):.4f}"]


def test_evaluations_of_other_inputs_do_not_overwrite_each_other(exported_student, tmp_path, capsys):
    checkpoint, _, _ = exported_student
    log = _candump(tmp_path / "two.log", frames=300, channels=("can0", "can1"))
    one = _candump(tmp_path / "one.log", frames=400)
    written = []
    for inputs, channel in (([log], "can0"), ([log], "can1"), ([one], "can0"), ([log], "can0")):
        assert main(["evaluate", "--checkpoint", str(checkpoint), "--input", *map(str, inputs), "--channel", channel,
                     "--out", str(tmp_path / "ev")]) == 0
        line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("written ")][-1]
        written.append(Path(line.removeprefix("written ")))
        res = json.loads(written[-1].read_text())
        assert res["inputs"] == [str(i) for i in inputs] and res["channel"] == channel
    assert len(set(written[:3])) == 3 and written[3] == written[0]  # the same inputs again: their own file
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == sorted({p.name for p in written})
    assert written[0].name.startswith("evaluation_inputs_two_") and written[2].name.startswith("evaluation_inputs_one_")
    assert inputs_json_name([log, tmp_path / "ev" / ".." / "one.log"]) == inputs_json_name([str(log), one])
    # another --threshold is another evaluation: its own file (none given: the name as before)
    assert inputs_json_name([log], "can0", 0.3) not in (inputs_json_name([log], "can0"), inputs_json_name([log], "can0", 0.4))
    assert inputs_json_name([log], "can0", None, checkpoint) == written[0].name
    # another checkpoint evaluated into the same --out: its own file
    assert inputs_json_name([log], "can0", None, tmp_path / "other.pt") != written[0].name


# ----------------------------------------------------------------------------- 5. which engines go with which model
def test_engine_help_and_errors_say_which_engines_go_with_which_model(exported_student, tmp_path, capsys):
    checkpoint, package, _ = exported_student
    with pytest.raises(SystemExit):
        main(["detect", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "with --checkpoint auto, native or torch; with --model (.pt2) auto, native or package" in help_text
    log = _candump(tmp_path / "capture.log")
    assert main(["detect", "--model", str(package), "--input", str(log), "--engine", "torch"]) == 2
    assert ("--engine torch does not go with --model: with --checkpoint auto, native or torch; with --model (.pt2) "
            "auto, native or package") in capsys.readouterr().err
    assert main(["detect", "--checkpoint", str(checkpoint), "--input", str(log), "--engine", "package"]) == 2
    assert "--engine package does not go with --checkpoint" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"an exported model \(.pt2\) runs on auto, native, package; 'torch' is for a "
                                         r"checkpoint \(--checkpoint\)"):
        Detector.from_exported(package, engine="torch")
    with pytest.raises(ValueError, match="a checkpoint runs on auto, native, torch; 'package' is for an exported model"):
        Detector.from_checkpoint(checkpoint, engine="package")


def test_a_run_folder_given_as_a_checkpoint_names_the_file(tmp_path):
    """`--teacher runs/hcrl_sa_gat_teacher` (the folder) said only that the checkpoint did not exist."""
    import re

    from kdkit.training.checkpoint import load_checkpoint

    run = tmp_path / "runs" / "t"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.pt").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=rf"checkpoint {re.escape(str(run))} is a folder, not a checkpoint "
                                                rf"file: give {re.escape(str(run / 'checkpoints' / 'best.pt'))}"):
        load_checkpoint(run)
    with pytest.raises(FileNotFoundError, match=r"is a folder, not a checkpoint file: give the best.pt"):
        load_checkpoint(tmp_path / "runs")
