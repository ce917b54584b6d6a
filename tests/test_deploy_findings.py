"""A review deploying a student on the real Volvo V40 (DAGA) with `kdkit export`, `kdkit calibrate`
and `kdkit detect` (2026-12-08). Scoring agreed everywhere (export, checkpoint, evaluate); the
outputs did not: `detect --alarms` could write over the export it ran, `--alarms` and `--summary`
could be one file (the alarms lost), a full disk ended the run in a traceback without its summary,
an unwritable `--summary` folder was found only after the run, `calibrate --out`/`export --out` there
gave torch's traceback, and a model's own training recording was calibrated on and replayed
without the word `evaluate --input` gives."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from kdkit.cli.main import check_writable, main
from kdkit.data.datasets import file_sha256
from kdkit.training.checkpoint import provenance


def _log(path: Path, n: int = 1500) -> Path:
    path.write_text("".join(f"({100 + i * 0.001:.6f}) can0 {0x100 + i % 7:03X}#0011223344556677\n" for i in range(n)))
    return path


def test_detect_refuses_to_write_over_the_export_it_runs_or_its_alarms(tmp_path, capsys):
    pt2 = tmp_path / "student.pt2"
    for suffix in (".pt2", ".json", ".npz"):
        pt2.with_suffix(suffix).write_bytes(b"export")
    rec = _log(tmp_path / "drive.log", 10)
    for out, words in ((".json", "--alarms .*student.json is the --model's .json this command reads"),
                       (".npz", "--alarms .*student.npz is the --model's .npz this command reads")):
        assert main(["detect", "--model", str(pt2), "--input", str(rec), "--alarms", str(pt2.with_suffix(out))]) == 2
        assert __import__("re").search(words, capsys.readouterr().err)
    assert main(["detect", "--model", str(pt2), "--input", str(rec), "--alarms", str(tmp_path / "a.out"),
                 "--summary", str(tmp_path / "a.out")]) == 2
    assert "--alarms and --summary are one file" in capsys.readouterr().err
    assert {p.read_bytes() for p in tmp_path.glob("student.*")} == {b"export"}


def test_an_export_json_written_over_is_named_not_a_bare_json_error(tmp_path):
    from kdkit.stream import Detector

    pt2 = tmp_path / "student.pt2"
    pt2.write_bytes(b"PK")
    pt2.with_suffix(".json").write_text('{"window": 100}\n{"alarm": 1}\n')
    with pytest.raises(ValueError, match=r"student.json is not the JSON kdkit export writes beside student.pt2"):
        Detector.from_exported(pt2)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_stops_the_run_with_its_summary_not_a_traceback(student_checkpoint, tmp_path, capsys):
    rec = _log(tmp_path / "drive.log")
    summary = tmp_path / "summary.json"
    code = main(["detect", "--checkpoint", str(student_checkpoint), "--input", str(rec), "--all-decisions",
                 "--alarms", "/dev/full", "--summary", str(summary)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "writing the alarms to /dev/full failed: No space left on device" in err
    s = __import__("json").loads(summary.read_text())
    assert s["stopped_by"] == "the output failed" and s["error"].startswith("writing the alarms to /dev/full failed")
    assert main(["detect", "--checkpoint", str(student_checkpoint), "--input", str(rec), "--alarms", os.devnull,
                 "--summary", "/dev/full"]) == 1  # the summary printed, then the error, not a traceback
    err = capsys.readouterr().err
    assert "writing the summary to /dev/full failed" in err and "messages in no decided window" in err


def test_outputs_that_cannot_be_written_are_refused_before_the_work(student_checkpoint, tmp_path, capsys):
    """/proc takes no new files, even from root (who passes every permission bit)."""
    with pytest.raises(ValueError, match=r"--summary /proc/kdkit-summary.json cannot be written: .*choose a folder"):
        check_writable("--summary", "/proc/kdkit-summary.json")
    check_writable("--alarms", os.devnull)  # a device: no scratch file in /dev (a user may not write there)
    fifo = tmp_path / "alarms.fifo"
    os.mkfifo(fifo)
    check_writable("--alarms", str(fifo))  # a pipe: not opened (that would wait for its reader)
    fifo.unlink()
    (tmp_path / "out").mkdir()
    check_writable("--out", str(tmp_path / "out" / "new" / "x.pt"))  # folders kdkit makes: the nearest one tried
    assert not any((tmp_path / "out").iterdir())  # the scratch file removed, nothing made
    rec = _log(tmp_path / "drive.log")
    assert main(["detect", "--checkpoint", str(student_checkpoint), "--input", str(rec), "--alarms", os.devnull,
                 "--summary", "/proc/kdkit-summary.json"]) == 2
    assert "cannot be written" in capsys.readouterr().err
    for argv in (["calibrate", "--checkpoint", str(student_checkpoint), "--clean", str(rec), "--out", "/proc/x.pt"],
                 ["export", "--checkpoint", str(student_checkpoint), "--out", "/proc/x.pt2"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "--out /proc/x.pt" in err and "cannot be written" in err and "Traceback" not in err


def test_a_models_own_training_recording_is_named_by_calibrate_and_detect(student_checkpoint, tmp_path, capsys):
    rec = _log(tmp_path / "drive.log", 12_000)
    ckpt = torch.load(student_checkpoint, weights_only=False)
    ckpt["provenance"] = {**provenance(ckpt), "training_files": {"train_01_attack_free/drive.log": file_sha256(rec)}}
    torch.save(ckpt, student_checkpoint)
    assert main(["calibrate", "--checkpoint", str(student_checkpoint), "--clean", str(rec), "--fpr", "0.05",
                 "--out", str(tmp_path / "cal.pt")]) == 0
    out = capsys.readouterr()
    assert "is train_01_attack_free/drive.log, a training recording of this model" in out.out + out.err
    assert main(["detect", "--checkpoint", str(student_checkpoint), "--input", str(rec), "--alarms", os.devnull]) == 0
    assert "warning: " in (err := capsys.readouterr().err) and "a training recording of this model" in err
