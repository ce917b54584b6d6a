"""The compiled candump scanner (kdkit.data.candump_scan) against the pyarrow path of
kdkit.data.loggers, on random lines with random faults. (tests/test_loggers.py runs its whole
candump suite both ways as well.)"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import read_outcome
from conftest import write_text_file as write_text

from kdkit.data import loggers
from kdkit.data.loggers import read_logger_file


def _read_or_error(path: Path, **kwargs):
    return read_outcome(lambda: read_logger_file(path, **kwargs))


@pytest.mark.parametrize("seed", range(40))
def test_candump_scanner_equals_the_pyarrow_path_on_mangled_lines(tmp_path: Path, seed: int, monkeypatch):
    """Random candump lines with random faults (spacing, tabs, CRs, odd IDs and payloads, long or
    odd timestamps, directions, remote/error/FD frames): the compiled scanner and the pyarrow path
    read the same frames and report the same faults, in both modes and for every channel."""
    rng = np.random.default_rng(seed)
    stamps = ["({:.6f})", "({:.0f})", "({:.3f})", "({:.9f})", "({:.1e})", "(+{:.2f})", "({:.22f})", "({:.6f}"]
    ids = ["{:03X}", "{:03x}", "{:08X}", "{:X}", "{:04X}", "2{:07X}", "{:09X}", "FFF", "1X0"]
    data = ["{}", "{}", "{}", "{}0", "#1{}", "R", "R4", "{}G0", "{}{}{}"]
    chars = list(" \t\r#R()xg.0F")
    lines = []
    for k in range(400):
        hexdata = "".join(f"{b:02X}" for b in rng.integers(0, 256, rng.integers(0, 10)))
        ts = stamps[rng.choice(len(stamps), p=[.72, .04, .04, .04, .04, .04, .04, .04])].format(1e9 + k / 1000)
        can_id = ids[rng.choice(len(ids), p=[.72, .04, .1, .02, .02, .04, .02, .02, .02])].format(
            int(rng.integers(0, 0x800 if rng.random() < .8 else 1 << 29)))
        payload = data[rng.choice(len(data), p=[.3, .3, .24, .02, .04, .02, .02, .04, .02])].format(
            hexdata, hexdata, hexdata)
        channel = ("can0", "can1", "vcan0", "can0")[k % 4]
        line = f"{ts} {channel} {can_id}#{payload}" + (" R" if rng.random() < .05 else "")
        if rng.random() < .06:  # one character replaced by a troublesome one
            at = int(rng.integers(0, len(line)))
            line = line[:at] + str(rng.choice(chars)) + line[at + 1:]
        lines.append(line + ("\r\n" if rng.random() < .03 else "\n"))
    lines.insert(int(rng.integers(0, 400)), "\n")
    path = write_text(tmp_path / "mangled.log", "".join(lines))
    for channel in (None, "can0", "can1", "vcan0", "can7"):
        for mode in ("error", "skip"):
            monkeypatch.setattr(loggers, "_SCAN_MIN_BYTES", 0)
            scanned = _read_or_error(path, channel=channel, on_bad_rows=mode)
            monkeypatch.setattr(loggers, "_SCAN_MIN_BYTES", 1 << 62)
            assert scanned == _read_or_error(path, channel=channel, on_bad_rows=mode), (channel, mode)


def test_many_lines_handed_back(tmp_path: Path, monkeypatch):
    """More lines for the per-line parser than the scanner's first hand-back arrays hold (256):
    it grows them and goes on from the line it stopped at."""
    lines = []
    for k in range(3000):
        kind = k % 5
        frame = ("123#R", "20000080#00", "3A0##1AABB", "044#0102", "044#0102")[kind]  # remote, error, FD, plain
        spacing = "  " if kind == 4 and k % 3 else " "
        lines.append(f"({k / 1000:.6f}){spacing}can{k % 2} {frame}\n")
    path = write_text(tmp_path / "many.log", "".join(lines))
    for channel in ("*", "can0", "can1"):
        monkeypatch.setattr(loggers, "_SCAN_MIN_BYTES", 0)
        scanned = read_logger_file(path, channel=channel)
        monkeypatch.setattr(loggers, "_SCAN_MIN_BYTES", 1 << 62)
        table = read_logger_file(path, channel=channel)
        assert scanned.timestamp.tolist() == table.timestamp.tolist()
        assert scanned.payload.tolist() == table.payload.tolist() and scanned.dropped_frames == table.dropped_frames
        assert len(scanned) == (1800 if channel == "*" else 900)  # FD frames of 2 bytes are kept
