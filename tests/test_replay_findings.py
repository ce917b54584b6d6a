"""A new user's own recordings through `kdkit evaluate --input` and `kdkit detect --input`
(2026-12-07, night, reproduced by a review with python-can's own reading as the reference):
evaluate said nothing of a log's remote and error frames that detect and `data info` count, a
cut `.blf` was not called cut in detect's summary as a cut `.log.gz` is, the CAN FD message
advised `--on-bad-rows skip` in a replay that was skipping already, and two places numbered
`.asc`/`.blf` channels from 0 where kdkit names them as the file does."""
from __future__ import annotations

import gzip
from pathlib import Path

import can
import pytest

from kdkit.data.loggers import _FD_HINT, read_logger_file
from kdkit.stream import Detector
from kdkit.stream.run import replay_file
from kdkit.workflows.scoring import evaluate_inputs, format_inputs_report


def _log(path: Path, n: int = 450, remote: int = 0, error: int = 0, fd_long: int = 0) -> Path:
    """A candump log of ``n`` data frames on can0, with remote, error and long FD frames among them."""
    lines, t = [], 100.0
    for i in range(n):
        t += 0.001
        lines.append(f"({t:.6f}) can0 {0x100 + i % 7:03X}#{i % 256:02X}11223344556677")
        if i < remote:
            lines.append(f"({t + 0.0002:.6f}) can0 123#R")
        if i < error:
            lines.append(f"({t + 0.0004:.6f}) can0 20000080#0000000000000000")
        if i < fd_long:
            lines.append(f"({t + 0.0006:.6f}) can0 456##1" + "AB" * 12)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_evaluate_input_reports_the_remote_and_error_frames_it_left_out(student_checkpoint, tmp_path):
    path = _log(tmp_path / "drive.log", remote=12, error=6)
    res = evaluate_inputs(student_checkpoint, [path], out_dir=tmp_path / "ev")
    entry = res["files"][0]
    assert entry["messages"] == 450 and entry["dropped_frames"] == {"remote": 12, "error": 6}
    assert "left out: 12 remote frames, 6 error frames" in format_inputs_report(res)
    detected = replay_file(Detector.from_checkpoint(student_checkpoint), path).to_dict()
    assert detected["dropped"] == {"remote_frame": 12, "error_frame": 6}  # the same frames, as detect counts them
    clean = evaluate_inputs(student_checkpoint, [_log(tmp_path / "clean.log")], out_dir=tmp_path / "ev2")
    assert "dropped_frames" not in clean["files"][0] and "left out" not in format_inputs_report(clean)


def test_a_cut_blf_is_called_cut_in_the_summaries(student_checkpoint, tmp_path):
    blf = tmp_path / "drive.blf"
    with can.BLFWriter(str(blf)) as writer:
        for i in range(3000):
            writer.on_message_received(can.Message(timestamp=100 + i * 0.001, arbitration_id=0x100 + i % 7,
                                                   data=bytes([i % 256] * 8), channel=0))
    cut = tmp_path / "cut.blf"
    data = blf.read_bytes()
    cut.write_bytes(data[:int(len(data) * 0.6)])
    read = read_logger_file(cut, on_bad_rows="skip")
    kept = len(read)
    assert 0 < kept < 3000 and read.skipped_rows == 3000 - kept  # the header counts the objects lost
    s = replay_file(Detector.from_checkpoint(student_checkpoint), cut).to_dict()
    assert s["skipped_rows"] == 3000 - kept and s["truncated"] and s["truncated"].startswith("truncated BLF file: cut")
    res = evaluate_inputs(student_checkpoint, [cut], on_bad_rows="skip", out_dir=tmp_path / "ev")
    assert res["files"][0]["truncated"].startswith("truncated BLF file")
    assert "(the file is cut: truncated BLF file" in format_inputs_report(res)
    gz = tmp_path / "drive.log.gz"  # a cut .log.gz, as before
    gz.write_bytes(gzip.compress(_log(tmp_path / "whole.log", n=3000).read_bytes())[:9000])
    assert replay_file(Detector.from_checkpoint(student_checkpoint), gz).to_dict()["truncated"].startswith(
        "truncated gzip file")


def test_the_fd_message_gives_no_advice_the_replay_already_followed(student_checkpoint, tmp_path, caplog):
    """detect skips bad rows by default: its warning names the FD frames skipped without telling
    the user to skip them; evaluate (error by default) names the line and both ways out."""
    path = _log(tmp_path / "fd.log", fd_long=3)
    assert "--on-bad-rows skip" in _FD_HINT and "drop such frames with" not in _FD_HINT
    s = replay_file(Detector.from_checkpoint(student_checkpoint), path).to_dict()
    assert s["skipped_rows"] == 3 and s["messages"] == 450
    with pytest.raises(Exception, match=r"fd\.log:2: CAN FD frame with 12 data bytes: kdkit models classic CAN"):
        evaluate_inputs(student_checkpoint, [path], out_dir=tmp_path / "ev")


def test_the_docs_number_asc_and_blf_channels_as_the_file_does():
    repo = Path(__file__).resolve().parent.parent
    readme = (repo / "README.md").read_text()
    assert "channels are python-can's, counted from 0" not in readme
    assert "from 1 (CANoe's CAN 1 is `--channel 1`)" in readme
    assert "channels from 0)" not in read_logger_file.__doc__


# ----------------------------------------------------------------------------- an export's files (a review)
def _copy_export(package: Path, folder: Path, stem: str = "student") -> Path:
    import shutil

    folder.mkdir()
    for suffix in (".pt2", ".json", ".npz"):
        shutil.copy(package.with_suffix(suffix), folder / f"{stem}{suffix}")
    return folder / f"{stem}.pt2"


@pytest.mark.parametrize("edit", ["vocab", "window", "stride", "threshold"])
def test_an_export_json_edited_by_hand_is_refused_not_scored_with(exported_student, tmp_path, edit, capsys):
    """A review (2026-12-07, night): ten IDs of the vocabulary replaced in the .json (same length)
    changed 28 of 160 decisions with no warning; an edited window, stride or threshold was used as
    it stood. The export records a digest of the fields that decide the scores."""
    import json

    from kdkit.cli.main import main

    _, package, _ = exported_student
    copy = _copy_export(package, tmp_path / "edited")
    meta = json.loads(copy.with_suffix(".json").read_text())
    assert len(meta["scoring_sha256"]) == 64
    assert Detector.from_exported(copy).engine == "native"  # as exported: fine
    changed = {"vocab": lambda m: [0x700 + i for i in range(10)] + m["vocab"][10:],  # the same length
               "window": lambda m: 50, "stride": lambda m: 50, "threshold": lambda m: 0.9}[edit](meta)
    meta[edit] = changed
    meta["example"] = "edited by hand"  # a field that decides nothing: not what is refused
    copy.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    with pytest.raises(ValueError, match=r"edited/student\.json was changed after kdkit export wrote it: the fields "
                                         r"that decide the scores \(model_config, vocab"):
        Detector.from_exported(copy)
    log = _log(tmp_path / "drive.log")
    assert main(["detect", "--model", str(copy), "--input", str(log)]) == 2
    assert "was changed after kdkit export wrote it" in capsys.readouterr().err
    meta[edit] = json.loads(package.with_suffix(".json").read_text())[edit]  # restored: accepted again
    copy.with_suffix(".json").write_text(json.dumps(meta))
    assert Detector.from_exported(copy).engine == "native"


def test_one_exports_three_files_renamed_together_keep_the_native_engine(exported_student, tmp_path, caplog):
    """The .npz was matched by the name recorded at export: the three files renamed together (m.pt2,
    m.json, m.npz) fell back to the slower package engine, warning that m.npz was another export's.
    Its SHA-256 says whose it is."""
    import numpy as np

    _, package, _ = exported_student
    renamed = _copy_export(package, tmp_path / "renamed", stem="m")
    with caplog.at_level("WARNING", logger="kdkit.stream"):
        assert Detector.from_exported(renamed).engine == "native"
        assert Detector.from_exported(renamed, engine="native").engine == "native"
    assert not [r for r in caplog.records if "m.npz" in r.getMessage()]
    arrays = dict(np.load(renamed.with_suffix(".npz")))
    arrays[next(iter(arrays))] = arrays[next(iter(arrays))] + 1  # another model's weights under the name
    np.savez(renamed.with_suffix(".npz"), **arrays)
    with caplog.at_level("WARNING", logger="kdkit.stream"):
        assert Detector.from_exported(renamed).engine == "package"
    assert "m.npz is not the one exported with it" in caplog.text
