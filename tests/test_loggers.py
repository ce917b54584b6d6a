"""Logger files (kdkit.data.loggers): the candump fast path against python-can, nothing lost
without a word (truncated/corrupt files, CAN FD, junk lines, remote/error frames, unknown
channels), extended IDs, and sidecar attack labels."""
from __future__ import annotations

import gzip
import re
from pathlib import Path

import can
import numpy as np
import pytest
from conftest import require

from kdkit.data import loggers
from kdkit.data.loggers import apply_label_intervals, read_label_intervals, read_logger_file
from kdkit.data.readers import EXTENDED_ID_FLAG, DataFormatError, Messages, can_id_key, read_messages

REAL_CANDUMP = Path(__file__).resolve().parents[2] / "shared" / "data" / "candump" / "toyota-rav4-2018-highway.candump.log.gz"

# every kind of line candump -L (and python-can) writes
EVERY_KIND = (
    "(1436509052.249713) vcan0 044#2A366C2BBA\n"
    "(1436509052.250001) vcan0 110#\n"                       # DLC 0
    "(1436509052.250500) vcan1 7FF#0011223344556677\n"
    "(1436509052.251000) vcan0 123#R\n"                      # remote frame
    "(1436509052.251100) vcan1 123#R4\n"                     # remote frame with a DLC
    "(1436509052.252000) vcan0 18FEF100#AABB\n"              # extended (8 digits)
    "(1436509052.252100) vcan0 00000081#01\n"                # extended 0x81
    "(1436509052.252200) vcan0 081#01\n"                     # standard 0x081
    "(1436509052.253000) vcan0 20000080#0000000000000000\n"  # error frame (CAN_ERR_FLAG | bus error)
    "(1436509052.254000) vcan0 0c1#ab\n"                     # lower-case hex
    "(1436509052.255000) vcan1 3A0##1AABBCC\n"               # CAN FD frame of 3 bytes (fits classic CAN)
    "(1436509052.256000) vcan0 3A1#0102 R\n"                 # direction field
    "(1436509052.257000)  vcan0\t3A2#03\n"                   # odd spacing
    "(1436509052.258000) 0 3A3#04\r\n"                       # CRLF, all-digit channel
    "\n"
    "(1436509052.259000) vcan0 3A4#0506070809\n"
)


@pytest.fixture(autouse=True, params=["scanner", "pyarrow"])
def candump_path(request, monkeypatch):
    """Every test runs with candump text read by the compiled scanner (kdkit.data.candump_scan,
    used for large files) and by the pyarrow path (small files): both must give the same."""
    monkeypatch.setattr(loggers, "_SCAN_MIN_BYTES", 0 if request.param == "scanner" else 1 << 62)
    return request.param


def python_can_frames(path: Path, channel: str | None = None) -> list[can.Message]:
    """The reference: python-can's reader, remote and error frames dropped."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as handle:
        reader = getattr(can, {".log": "CanutilsLogReader", ".asc": "ASCReader", ".trc": "TRCReader"}[
            Path(path.name.removesuffix(".gz")).suffix])(handle)
        return [m for m in reader if not m.is_remote_frame and not m.is_error_frame
                and (channel is None or str(m.channel) == channel)]


def assert_same(m: Messages, ref: list[can.Message]) -> None:
    assert len(m) == len(ref)
    assert np.array_equal(m.timestamp, np.array([r.timestamp for r in ref], np.float64))
    ids = can_id_key(np.array([r.arbitration_id for r in ref], np.uint32), np.array([r.is_extended_id for r in ref]))
    assert np.array_equal(m.can_id, ids)
    assert m.dlc.tolist() == [len(r.data) for r in ref]
    for i, r in enumerate(ref):
        assert bytes(m.payload[i, :m.dlc[i]]) == bytes(r.data) and not m.payload[i, m.dlc[i]:].any()


def write_text(path: Path, text: str) -> Path:
    path.write_bytes(gzip.compress(text.encode()) if path.name.endswith(".gz") else text.encode())
    return path


# --------------------------------------------------------------------------------------
# the candump fast path


@pytest.mark.parametrize("name", ["drive.log", "drive.log.gz"])
def test_candump_fast_path_matches_python_can(tmp_path: Path, name: str):
    path = write_text(tmp_path / name, EVERY_KIND)
    m = read_logger_file(path, channel="*")
    assert_same(m, python_can_frames(path))
    assert m.dropped_frames == {"remote": 2, "error": 1}
    assert m.skipped_rows == 0 and m.label.sum() == 0 and m.attack_type == "attack-free"
    for channel in ("vcan0", "vcan1", "0"):
        assert_same(read_logger_file(path, channel=channel), python_can_frames(path, channel))
    assert read_logger_file(path, channel="vcan1").dropped_frames == {"remote": 1, "error": 0}


def test_real_candump_matches_python_can():
    require(REAL_CANDUMP.is_file(), f"{REAL_CANDUMP} not found")
    m = read_logger_file(REAL_CANDUMP, channel="*")
    assert_same(m, python_can_frames(REAL_CANDUMP))
    assert m.dropped_frames == {"remote": 0, "error": 0}
    for channel, count in (("can0", 53_800), ("can1", 45_000), ("tx0", 12_434), ("tx1", 24_234)):
        only = read_logger_file(REAL_CANDUMP, channel=channel)
        assert len(only) == count
        assert_same(only, python_can_frames(REAL_CANDUMP, channel))


def test_candump_bad_lines_error_and_skip(tmp_path: Path):
    """A line python-can could not parse ended the whole file, even with 'skip'."""
    path = write_text(tmp_path / "drive.log", (
        "(1.000000) can0 044#2A36\n"
        "(2.000000) can0 044#2A3\n"        # 2: odd number of hex digits (python-can made it 2A 03)
        "(3.000000) can0 0000044#01\n"     # 3: 7 digits: neither standard nor extended
        "garbage\n"                        # 4
        "(x) can0 044#00\n"                # 5: timestamp
        "(6.000000) can0 04400\n"          # 6: no '#'
        "(7.000000) can0 044#00\n"
    ))
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:2: not a candump -L frame line: data '2A3' is not "
                                                        f"pairs of hex digits")):
        read_logger_file(path)
    m = read_logger_file(path, on_bad_rows="skip")
    assert m.timestamp.tolist() == [1.0, 7.0] and m.skipped_rows == 5 and m.skipped_unlabelled_rows == 5
    assert [e.split(": ", 1)[0] for e in m.skipped_examples] == [f"{path}:{k}" for k in (2, 3, 4, 5, 6)]
    assert "has 7 hex digits; candump writes 3 (standard, 11-bit) or 8 (extended, 29-bit)" in m.skipped_examples[1]
    assert "expected '(timestamp) channel ID#data', got 1 fields" in m.skipped_examples[2]


def test_candump_channel_lines_of_other_channels_are_not_parsed(tmp_path: Path):
    """With channel=, other channels' lines are left out before parsing: a fault there is not the
    selected channel's; faults of the selected channel still name their line."""
    lines = [f"({k / 1000:.6f}) can{k % 2} {0x100 + k % 7:03X}#{k % 256:02X}\n" for k in range(200)]
    lines[51] = "(0.051000) can1 1X0#00\n"       # line 52: a bad ID on can1
    lines[77] = "(0.077000)  can0\t107#4D\n"     # line 78: odd spacing, a can0 frame all the same
    path = write_text(tmp_path / "drive.log", "".join(lines))
    can0 = read_logger_file(path, channel="can0")
    assert len(can0) == 101 and can0.skipped_rows == 0 and 0.077 in can0.timestamp.tolist()
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:52: not a candump -L frame line")):
        read_logger_file(path, channel="can1")
    lines[120] = "(0.120000) can0 120#0\n"        # line 121: odd hex digits on can0
    path = write_text(tmp_path / "drive.log", "".join(lines))
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:121: not a candump -L frame line: data '0'")):
        read_logger_file(path, channel="can0")
    assert read_logger_file(path, channel="can0", on_bad_rows="skip").skipped_rows == 1


def test_can_fd_frames_with_more_than_8_bytes_are_refused(tmp_path: Path):
    """A 64-byte CAN FD payload was cut to 8 bytes without a word."""
    path = write_text(tmp_path / "drive.log", "(1.0) can0 044#01\n(2.0) can0 123##1" + "AB" * 64 + "\n"
                      "(3.0) can0 125#" + "CD" * 9 + "\n(4.0) can0 044#02\n")
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:2: CAN FD frame with 64 data bytes: kdkit models "
                                                        f"classic CAN (at most 8 bytes)")):
        read_logger_file(path)
    m = read_logger_file(path, on_bad_rows="skip")
    assert m.timestamp.tolist() == [1.0, 4.0] and m.skipped_rows == 2
    assert m.skipped_examples[1] == f"{path}:3: 9 data bytes: a classic CAN frame carries at most 8"

    blf = tmp_path / "fd.blf"
    writer = can.BLFWriter(str(blf))
    writer.on_message_received(can.Message(timestamp=1.0, arbitration_id=0x44, data=b"\x01"))
    writer.on_message_received(can.Message(timestamp=2.0, arbitration_id=0x123, is_fd=True, data=bytes(range(64))))
    writer.stop()
    with pytest.raises(DataFormatError, match=r"fd\.blf: frame 2: CAN FD frame with 64 data bytes"):
        read_logger_file(blf)
    assert len(read_logger_file(blf, on_bad_rows="skip")) == 1


def test_remote_and_error_frames_are_counted(tmp_path: Path):
    path = write_text(tmp_path / "drive.log", "(1.0) can0 044#01\n(1.5) can0 044#R\n(2.0) can1 20000080#00\n"
                                             "(2.5) can0 20000004#0004000000000000\n")
    m = read_logger_file(path, channel="*")
    assert len(m) == 1 and m.dropped_frames == {"remote": 1, "error": 2}
    # without a channel: the one whose data frames the file's start holds (can0); can1's error frame is not its
    assert read_logger_file(path).dropped_frames == {"remote": 1, "error": 1}
    # python-can keeps 20000004 (an error frame of class 'controller problems') as a data frame with ID 4
    assert 4 not in m.can_id.tolist()


def test_unknown_channel_lists_the_channels(tmp_path: Path):
    path = write_text(tmp_path / "drive.log", EVERY_KIND)
    with pytest.raises(DataFormatError, match=re.escape("no data frames on channel 'can9'; the file's channels: '0' (1 "
                                                        "data frames), 'vcan0' (9 data frames), 'vcan1' (2 data frames)")):
        read_logger_file(path, channel="can9")
    asc = write_text(tmp_path / "drive.asc", ASC)
    with pytest.raises(DataFormatError, match=re.escape("no data frames on channel '5'; the file's channels: '1' (3 "
                                                        "data frames), '2' (1 data frames)")):
        read_logger_file(asc, channel="5")


# --------------------------------------------------------------------------------------
# extended IDs stay distinct from standard ones in every format


ASC = """date Wed Dec 2 04:00:00.000 pm 2026
base hex  timestamps absolute
internal events logged
// version 9.0.0
Begin Triggerblock Wed Dec 2 04:00:00.000 pm 2026
   0.000000 Start of measurement
   0.000000 1  Statistic: D 0 R 0 XD 0 XR 0 E 0 O 0 B 0.00%
   1.000000 1  81              Rx   d 1 01
   1.100000 1  81x             Rx   d 1 02
   1.200000 2  18FEF100x       Rx   d 2 AA BB
   1.300000 1  123             Rx   r
   1.400000 1  ErrorFrame
   1.500000 CAN 1 Status:chip status error active
   1.600000 1  7FF             Tx   d 8 00 11 22 33 44 55 66 77
End TriggerBlock
"""


def test_extended_ids_stay_distinct(tmp_path: Path):
    log = read_logger_file(write_text(tmp_path / "a.log", "(1.0) can0 081#01\n(2.0) can0 00000081#02\n"), channel="*")
    assert log.can_id.tolist() == [0x81, 0x81 | EXTENDED_ID_FLAG]
    asc = read_logger_file(write_text(tmp_path / "a.asc", ASC), channel="*")
    assert asc.can_id.tolist() == [0x81, 0x81 | EXTENDED_ID_FLAG, 0x18FEF100 | EXTENDED_ID_FLAG, 0x7FF]
    assert asc.dropped_frames == {"remote": 1, "error": 1} and asc.skipped_rows == 0
    assert_same(asc, python_can_frames(tmp_path / "a.asc"))
    messages = [can.Message(timestamp=1.0 + k, arbitration_id=0x81, is_extended_id=bool(k), data=bytes([k]))
                for k in range(2)]
    blf = tmp_path / "a.blf"
    writer = can.BLFWriter(str(blf))
    for msg in messages:
        writer.on_message_received(msg)
    writer.stop()
    assert read_logger_file(blf, channel="*").can_id.tolist() == [0x81, 0x81 | EXTENDED_ID_FLAG]
    trc = tmp_path / "a.trc"
    with can.TRCWriter(str(trc)) as writer:
        for msg in messages:
            writer.on_message_received(msg)
    assert read_logger_file(trc, channel="*").can_id.tolist() == [0x81, 0x81 | EXTENDED_ID_FLAG]


# --------------------------------------------------------------------------------------
# junk lines python-can skips without a word


def test_asc_junk_lines_are_counted(tmp_path: Path):
    text = ASC.replace("   1.500000 CAN 1", "garbage here\n   1.500000 CAN 1").replace(
        "End TriggerBlock", "2 1  7FF             Rx   d 1 00\nEnd TriggerBlock")  # a frame without a decimal time
    path = write_text(tmp_path / "drive.asc", text)
    lines = text.splitlines()
    junk = [lines.index("garbage here") + 1, lines.index("2 1  7FF             Rx   d 1 00") + 1]
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:{junk[0]}: not an ASC frame, event, header or "
                                                        f"comment line: 'garbage here'")):
        read_logger_file(path, channel="*")
    m = read_logger_file(path, on_bad_rows="skip", channel="*")
    assert len(m) == 4 and m.skipped_rows == 2
    assert m.skipped_examples[1].startswith(f"{path}:{junk[1]}: python-can's ASC reader skipped this CAN frame line")


def test_asc_line_python_can_cannot_parse_skips_only_that_line(tmp_path: Path):
    text = ASC.replace("   1.200000 2", "   1.150000 1  12G             Rx   d 1 00\n   1.200000 2")
    path = write_text(tmp_path / "drive.asc", text)
    line = text.splitlines().index("   1.150000 1  12G             Rx   d 1 00") + 1
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:{line}: python-can could not parse this line")):
        read_logger_file(path, channel="*")
    m = read_logger_file(path, on_bad_rows="skip", channel="*")
    assert m.can_id.tolist() == [0x81, 0x81 | EXTENDED_ID_FLAG, 0x18FEF100 | EXTENDED_ID_FLAG, 0x7FF]
    assert m.skipped_rows == 1 and m.dropped_frames == {"remote": 1, "error": 1}


def test_trc_junk_lines_are_counted(tmp_path: Path):
    path = tmp_path / "drive.trc"
    with can.TRCWriter(str(path)) as writer:
        for k in range(3):
            writer.on_message_received(can.Message(timestamp=1.0 + k, arbitration_id=0x100 + k, data=bytes([k, k])))
    lines = path.read_text().splitlines()
    assert lines[-1].split()[4] == "0000102"
    lines[-1:-1] = ["this is not a frame", lines[-2].rsplit(" ", 2)[0]]  # junk, and a frame cut short
    write_text(path, "\n".join(lines) + "\n")
    clean = read_logger_file(path, on_bad_rows="skip")
    assert clean.can_id.tolist() == [0x100 | EXTENDED_ID_FLAG, 0x101 | EXTENDED_ID_FLAG, 0x102 | EXTENDED_ID_FLAG]
    assert clean.skipped_rows == 2
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:{len(lines) - 2}: python-can's TRC reader skipped this "
                                                        f"line (not a frame it could read): 'this is not a frame'")):
        read_logger_file(path)


def test_asc_and_trc_headers_and_comments_are_not_junk(tmp_path: Path):
    trc = tmp_path / "clean.trc"
    with can.TRCWriter(str(trc)) as writer:
        writer.on_message_received(can.Message(timestamp=1.0, arbitration_id=0x100, data=b"\x01"))
    text = trc.read_text()
    assert text.startswith(";$FILEVERSION")
    m = read_logger_file(trc, channel="*")
    assert len(m) == 1 and m.skipped_rows == 0
    assert read_logger_file(write_text(tmp_path / "clean.asc", ASC), channel="*").skipped_rows == 0


# --------------------------------------------------------------------------------------
# truncated and corrupt files


def write_blf(path: Path, n: int, **kwargs) -> Path:
    writer = can.BLFWriter(str(path), **kwargs)
    for k in range(n):
        writer.on_message_received(can.Message(timestamp=1.0 + k / 100, arbitration_id=0x100 + k % 16,
                                               data=bytes([k % 256] * 8)))
    writer.stop()
    return path


def test_truncated_blf(tmp_path: Path):
    """A cut .blf read 130 of 300 messages without a word."""
    full = write_blf(tmp_path / "full.blf", 300)
    assert len(read_logger_file(full)) == 300
    path = tmp_path / "cut.blf"
    path.write_bytes(full.read_bytes()[:int(full.stat().st_size * 0.5)])
    with pytest.raises(DataFormatError, match=r"cut\.blf: truncated BLF file: cut at byte \d+ \(the header says \d+ "
                                              r"bytes\) after frame \d+; \d+ of the 300 objects the header counts are "
                                              r"missing"):
        read_logger_file(path)
    m = read_logger_file(path, on_bad_rows="skip")
    assert 0 < len(m) < 300 and len(m) + m.skipped_rows == 300
    assert m.skipped_examples[0].startswith(f"{path}: truncated BLF file")
    np.testing.assert_array_equal(m.payload, read_logger_file(full).payload[:len(m)])


def test_blf_cut_between_two_containers(tmp_path: Path):
    full = write_blf(tmp_path / "full.blf", 400, max_container_size=2000)
    raw = full.read_bytes()
    second = raw.index(b"LOBJ", raw.index(b"LOBJ") + 4)  # the second log container starts here
    path = tmp_path / "cut.blf"
    path.write_bytes(raw[:second])
    with pytest.raises(DataFormatError, match=rf"truncated BLF file: cut at byte {second} "):
        read_logger_file(path)


def test_corrupt_blf(tmp_path: Path):
    full = write_blf(tmp_path / "full.blf", 300)
    raw = bytearray(full.read_bytes())
    raw[200:260] = b"\xAA" * 60  # inside the compressed container
    path = tmp_path / "bad.blf"
    path.write_bytes(bytes(raw))
    with pytest.raises(DataFormatError, match=r"bad\.blf: corrupt BLF data near byte \d+ \(after frame \d+\)"):
        read_logger_file(path, on_bad_rows="skip")
    (tmp_path / "x.blf").write_bytes(b"not a blf at all" * 20)
    with pytest.raises(DataFormatError, match=r"x\.blf: not a BLF file"):
        read_logger_file(tmp_path / "x.blf")


def test_corrupt_and_truncated_log_gz(tmp_path: Path):
    text = "".join(f"({1.0 + k / 1000:.6f}) can0 {0x100 + k % 7:03X}#{k % 256:02X}{k * 7 % 256:02X}\n" for k in range(20000))
    packed = gzip.compress(text.encode())
    bad = bytearray(packed)
    bad[len(bad) // 2:len(bad) // 2 + 40] = b"\x00" * 40
    path = tmp_path / "bad.log.gz"
    path.write_bytes(bytes(bad))
    with pytest.raises(DataFormatError, match=r"bad\.log\.gz: corrupt gzip data"):
        read_logger_file(path, on_bad_rows="skip")
    cut = tmp_path / "cut.log.gz"
    cut.write_bytes(packed[:len(packed) // 2])
    with pytest.raises(DataFormatError, match=r"cut\.log\.gz: truncated gzip file: the compressed data ends inside the "
                                              r"stream at byte \d+; line \d+ is cut short"):
        read_logger_file(cut)
    m = read_logger_file(cut, on_bad_rows="skip")
    assert 0 < len(m) < 20000 and m.skipped_rows == 1 and "truncated gzip file" in m.skipped_examples[0]
    assert_same(m, python_can_frames(write_text(tmp_path / "all.log", text))[:len(m)])


# --------------------------------------------------------------------------------------
# sidecar labels


def test_sidecar_labels(tmp_path: Path):
    path = write_text(tmp_path / "drive.log", "".join(f"({k}.0) can0 {'0C1' if k % 2 else '0A0'}#00\n" for k in range(10)))
    (tmp_path / "drive.log.labels.csv").write_text("start,end,attack_type,can_id\n2.0,4.0,DoS,\n6.0,9.0,spoofing,0C1\n")
    m = read_messages(path)
    assert m.label.tolist() == [0, 0, 1, 1, 1, 0, 0, 1, 0, 1]
    assert m.attack_type == "mixed" and m.type_names == ("normal", "DoS", "spoofing")
    assert m.message_attack_type.tolist() == ["normal"] * 2 + ["DoS"] * 3 + ["normal"] * 2 + ["spoofing", "normal",
                                                                                                "spoofing"]
    (tmp_path / "drive.log.labels.csv").write_text("start,end,attack_type\n2.5,3.5,fuzzing\n")
    m = read_logger_file(path)
    assert m.label.tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 0, 0] and m.attack_type == "fuzzing"
    (tmp_path / "drive.log.labels.csv").write_text("start,end,attack_type\n")
    assert read_logger_file(path).attack_type == "attack-free"


def test_sidecar_beside_a_gz_file_and_skipped_attack_rows(tmp_path: Path):
    path = write_text(tmp_path / "drive.log.gz", "(1.0) can0 0C1#00\n(2.0) can0 0C1#0\n(3.0) can0 0C1#00\n")
    (tmp_path / "drive.log.labels.csv").write_text("start,end,attack_type\n1.5,3.0,DoS\n")
    m = read_logger_file(path, on_bad_rows="skip")
    assert m.label.tolist() == [0, 1] and m.attack_type == "DoS"
    assert m.skipped_rows == 1 and m.skipped_unlabelled_rows == 1  # the bad line's time could not be read


@pytest.mark.parametrize("body, line, problem", [
    ("begin,end,type\n", 1, "header 'begin,end,type'; expected 'start,end,attack_type'"),
    ("start,end,attack_type\n1.0,x,DoS\n", 2, "start '1.0' or end 'x' is not a number"),
    ("start,end,attack_type\n1.0,2.0,DoS\n3.0,2.0,DoS\n", 3, "end 2.0 is before start 3.0"),
    ("start,end,attack_type\n1.0,2.0,\n", 2, "attack_type '': name the attack"),
    ("start,end,attack_type,can_id\n1.0,2.0,DoS,800\n", 2, "can_id '800': 0x800 is above 0x7FF"),
    ("start,end,attack_type\n1.0,2.0,DoS\n100.0,200.0,DoS\n", 3, "interval 100.0..200.0 lies outside the recording"),
    ("start,end,attack_type\n1.0,3.0,DoS\n2.0,4.0,fuzzing\n", 3, "overlaps the interval on line 2 with another attack type"),
])
def test_malformed_sidecar(tmp_path: Path, body: str, line: int, problem: str):
    path = write_text(tmp_path / "drive.log", "".join(f"({k}.0) can0 0C1#00\n" for k in range(5)))
    sidecar = tmp_path / "drive.log.labels.csv"
    sidecar.write_text(body)
    with pytest.raises(DataFormatError, match=re.escape(f"{sidecar}:{line}: {problem}")):
        read_logger_file(path)


def test_label_intervals_for_a_csv_recording(tmp_path: Path):
    sidecar = tmp_path / "rec.csv.labels.csv"
    sidecar.write_text("start,end,attack_type,can_id\n0.002,0.003,spoofing,18FEF100\n")
    n = 5
    msgs = Messages(np.arange(n) / 1000, np.array([0x0C1, 0x0C1, 0x18FEF100 | EXTENDED_ID_FLAG, 0x100, 0x0C1],
                                                   np.uint32), np.zeros(n, np.uint8), np.zeros((n, 8), np.uint8),
                    np.zeros(n, np.uint8), "rec.csv")
    out = apply_label_intervals(msgs, read_label_intervals(sidecar))
    assert out.label.tolist() == [0, 0, 1, 0, 0] and out.attack_type == "spoofing"  # the interval's ID only


def test_bench_preprocess_reads_a_logger_file(tmp_path: Path):
    from kdkit.bench.preprocess import preprocess_file, python_can_baseline

    path = write_text(tmp_path / "drive.log.gz", "".join(f"({k / 1000:.6f}) can0 {0x100 + k % 5:03X}#{k % 256:02X}\n"
                                                         for k in range(1000)))
    result = preprocess_file(path, repeats=1)
    assert result["messages"] == 1000 and result["windows"] == 10
    assert python_can_baseline(path, repeats=1)["messages"] == 1000


@pytest.mark.parametrize("first_with_direction", [False, True])
def test_candump_direction_field_on_many_lines(tmp_path: Path, first_with_direction: bool):
    """Lines with the optional direction field (' R'/' T') are parsed by the fast path as well."""
    lines = []
    for k in range(300):
        direction = (" R", " T", "")[k % 3] if k or first_with_direction else ""
        lines.append(f"({k / 1000:.6f}) can{k % 2} {0x100 + k % 9:03X}#{k % 256:02X}{'EE' * (k % 4)}{direction}\n")
    path = write_text(tmp_path / "drive.log", "".join(lines))
    assert_same(read_logger_file(path, channel="*"), python_can_frames(path))
    assert_same(read_logger_file(path, channel="can1"), python_can_frames(path, "can1"))


def test_unreadable_files_are_errors_in_both_modes(tmp_path: Path):
    trc = write_text(tmp_path / "nocolumns.trc", ";$FILEVERSION=2.1\n;$STARTTIME=25569.0\n"
                                                 "      0         0.000 DT  1  0000100 Rx -  2    00 00\n")
    empty = write_text(tmp_path / "empty.log", "\n \n")
    for mode in ("error", "skip"):
        with pytest.raises(DataFormatError, match=r"nocolumns\.trc:3: python-can could not .*File has no column"):
            read_logger_file(trc, on_bad_rows=mode)
        with pytest.raises(DataFormatError, match=r"empty\.log: empty file: no data frames"):
            read_logger_file(empty, on_bad_rows=mode)



def test_a_log_of_several_buses_needs_a_channel(tmp_path: Path):
    """Without a channel, a file of several buses is an error naming them (windows of one stream
    would mix buses); '*' reads them as one stream on purpose; a file of one bus needs nothing."""
    from kdkit.data.loggers import iter_logger_file

    two = write_text(tmp_path / "two.log", "".join(f"({k}.0) {('can0', 'can1')[k % 3 == 0]} 1{k % 10}0#0102\n"
                                                   for k in range(30)))
    for read in (lambda **kw: read_logger_file(two, **kw), lambda **kw: list(iter_logger_file(two, **kw)),
                 lambda **kw: read_messages(two, **kw)):
        with pytest.raises(DataFormatError, match=re.escape("frames of 2 bus channels (data frames in its first MiB: "
                                                            "can0 (20), can1 (10)); windows of one stream would mix")
                           + ".*--channel NAME.*--channel '\\*'"):
            read()
    assert len(read_logger_file(two, channel="*")) == 30
    assert sum(len(c) for c in iter_logger_file(two, channel="*", chunk_rows=7)) == 30
    assert len(read_logger_file(two, channel="can1")) == 10
    one = write_text(tmp_path / "one.log", "".join(f"({k}.0) can0 1{k % 10}0#0102\n" for k in range(30)))
    assert len(read_logger_file(one)) == len(read_logger_file(one, channel="*")) == 30
    asc = write_text(tmp_path / "two.asc", ASC)  # channels 1 and 2 in the file (python-can's 0 and 1): named as the file
    with pytest.raises(DataFormatError, match=r"frames of 2 bus channels \(data frames in its first 10,000 frames: 1 \("):
        read_logger_file(asc)
    assert len(read_logger_file(asc, channel="*")) == len(read_logger_file(asc, channel="1")) + \
        len(read_logger_file(asc, channel="2"))


def test_the_real_four_bus_capture_needs_a_channel():
    require(REAL_CANDUMP.is_file(), f"{REAL_CANDUMP} not found")
    from kdkit.data.loggers import iter_logger_file

    expected = "frames of 4 bus channels (data frames in its first MiB: can0 (10,709), can1 (8,960), tx1 (4,836), tx0 (2,479))"
    for read in (lambda: read_logger_file(REAL_CANDUMP), lambda: iter_logger_file(REAL_CANDUMP)):
        with pytest.raises(DataFormatError, match=re.escape(expected)):
            read()
    assert len(read_logger_file(REAL_CANDUMP, channel="*")) == 135_468


def test_bench_preprocess_takes_a_channel(tmp_path: Path):
    from kdkit.bench.preprocess import preprocess_file, python_can_baseline

    two = write_text(tmp_path / "two.log", "".join(f"({k / 100:.2f}) {('can0', 'can1')[k % 4 == 0]} 1{k % 10}0#0102\n"
                                                   for k in range(400)))
    with pytest.raises(DataFormatError, match="frames of 2 bus channels"):
        preprocess_file(two, repeats=1, cold=False)
    assert preprocess_file(two, repeats=1, cold=False, channel="can1")["messages"] == 100
    assert preprocess_file(two, repeats=1, cold=False, channel="*")["messages"] == 400
    assert python_can_baseline(two, repeats=1, channel="can1")["messages"] == 100
    with pytest.raises(ValueError, match="--repeats 0: at least 1"):
        preprocess_file(two, repeats=0, channel="can1")
