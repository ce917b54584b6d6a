"""Logger files read in chunks (kdkit.data.loggers.iter_logger_file): the same frames, skips and
file:line errors as reading the file whole. candump logs across block boundaries at every awkward
place (tiny blocks), gzip files with several members, truncated or corrupt ones, time going
backwards across a block boundary; .asc/.trc/.blf through python-can in chunks of a few frames;
the chunks have the asked size and the last carries the counts."""
from __future__ import annotations

import gzip
from pathlib import Path

import can
import numpy as np
import pytest
from conftest import read_outcome, require
from conftest import write_text_file as write

from kdkit.data import loggers
from kdkit.data.loggers import iter_logger_file, read_logger_file
from kdkit.data.readers import concat_messages, iter_messages

REAL_CANDUMP = Path(__file__).resolve().parents[2] / "shared" / "data" / "candump" / "toyota-rav4-2018-highway.candump.log.gz"


def whole(path: Path, **kwargs):
    return read_outcome(lambda: read_logger_file(path, **kwargs))


def streamed(path: Path, chunk_rows: int = 7, **kwargs):
    def read():
        chunks = list(iter_logger_file(path, chunk_rows=chunk_rows, **kwargs))
        assert all(len(c) == chunk_rows for c in chunks[:-1]) and len(chunks[-1]) <= chunk_rows
        return concat_messages(chunks)

    return read_outcome(read)


def mangled(seed: int, n: int = 300) -> str:
    """Random candump lines, some with faults (as tests/test_candump_scan.py)."""
    rng = np.random.default_rng(seed)
    lines = []
    for k in range(n):
        hexdata = "".join(f"{b:02X}" for b in rng.integers(0, 256, rng.integers(0, 10)))
        ts = f"({1e9 + k / 1000:.6f})" if rng.random() < .9 else str(rng.choice(["(x)", "(1e3)", f"({k}.5"]))
        can_id = f"{int(rng.integers(0, 0x800)):03X}" if rng.random() < .85 else str(rng.choice(["1X0", "FFF", "1234",
                                                                                               "18FEF100"]))
        data = str(rng.choice([hexdata, hexdata, hexdata, "R", "#1AB", hexdata + "0"]))
        line = f"{ts} {('can0', 'can1', 'vcan0')[k % 3]} {can_id}#{data}"
        if rng.random() < .04:
            line = line.replace(" ", "\t", 1)
        lines.append(line + ("\r\n" if rng.random() < .05 else "\n"))
    return "".join(lines)


@pytest.mark.parametrize("piece", [1, 13, 97, 1 << 22])
@pytest.mark.parametrize("name", ["drive.log", "drive.log.gz"])
def test_streamed_equals_whole_on_mangled_lines(tmp_path: Path, monkeypatch, piece: int, name: str):
    """Blocks of 1 byte up: every line and every CRLF cut somewhere; both modes, every channel."""
    monkeypatch.setattr(loggers, "_GZ_PIECE", piece)
    for seed in range(3):
        path = write(tmp_path / name, mangled(seed))
        for channel in (None, "*", "can0", "vcan0", "can7"):
            for mode in ("error", "skip"):
                assert streamed(path, channel=channel, on_bad_rows=mode) == whole(path, channel=channel,
                                                                                   on_bad_rows=mode), (seed, channel, mode)


def test_gzip_members_truncated_and_corrupt(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(loggers, "_GZ_PIECE", 4096)
    text = "".join(f"({1.0 + k / 1000:.6f}) can0 {0x100 + k % 7:03X}#{k % 256:02X}{k * 7 % 256:02X}\n" for k in range(20000))
    half = len(text) // 2
    half = text.index("\n", half) + 1
    members = tmp_path / "members.log.gz"
    members.write_bytes(gzip.compress(text[:half].encode()) + gzip.compress(text[half:].encode()) + b"\0" * 100)
    assert streamed(members, chunk_rows=5000) == whole(members)
    assert len(read_logger_file(members)) == 20000

    packed = gzip.compress(text.encode())
    cut = tmp_path / "cut.log.gz"
    cut.write_bytes(packed[:len(packed) // 2])
    for mode in ("error", "skip"):
        got = streamed(cut, chunk_rows=1000, on_bad_rows=mode)
        assert got == whole(cut, on_bad_rows=mode)
    assert "truncated gzip file" in streamed(cut) and streamed(cut, on_bad_rows="skip")[4] == 1

    bad = bytearray(packed)
    bad[len(bad) // 2:len(bad) // 2 + 40] = b"\x00" * 40
    (tmp_path / "bad.log.gz").write_bytes(bytes(bad))
    message = streamed(tmp_path / "bad.log.gz", on_bad_rows="skip")
    assert "corrupt gzip data in compressed bytes" in message and message == whole(tmp_path / "bad.log.gz")

    garbage = tmp_path / "garbage.log.gz"
    garbage.write_bytes(packed + b"this is not gzip")
    assert "bytes of garbage after the gzip stream" in streamed(garbage) and streamed(garbage) == whole(garbage)


def test_time_backwards_across_a_block_boundary(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(loggers, "_GZ_PIECE", 64)
    lines = [f"({k}.000000) can0 123#{k:02X}\n" for k in range(40)]
    lines[30] = "(3.500000) can0 123#FF\n"  # line 31: earlier than line 30's 29.0, many blocks later
    path = write(tmp_path / "drive.log", "".join(lines))
    message = streamed(path)
    assert message == whole(path)
    assert "drive.log:31: timestamp 3.5 goes backwards: earlier than 29.0 on line 30" in message
    skipped = streamed(path, on_bad_rows="skip")
    assert skipped == whole(path, on_bad_rows="skip") and skipped[4] == 1


def test_chunks_carry_the_counts_and_formats_without_a_stream(tmp_path: Path):
    path = write(tmp_path / "drive.log", "".join(f"({k}.0) can0 123#R\n({k}.5) can0 124#0{k % 10}\n"
                                                 for k in range(25)) + "junk\n")
    chunks = list(iter_logger_file(path, on_bad_rows="skip", chunk_rows=10))
    assert [len(c) for c in chunks] == [10, 10, 5]
    assert chunks[-1].skipped_rows == 1 and chunks[-1].dropped_frames == {"remote": 25, "error": 0}
    assert [len(c) for c in iter_messages(path, on_bad_rows="skip", chunk_rows=10)] == [10, 10, 5]
    with pytest.raises(ValueError, match="on_bad_rows"):
        iter_logger_file(path, on_bad_rows="ignore")


def test_real_candump_streamed(monkeypatch):
    require(REAL_CANDUMP.is_file(), f"{REAL_CANDUMP} not found")
    monkeypatch.setattr(loggers, "_GZ_PIECE", 1 << 16)  # ~50 blocks
    for channel in (None, "*", "can0", "tx1"):
        assert streamed(REAL_CANDUMP, chunk_rows=10_000, channel=channel) == whole(REAL_CANDUMP, channel=channel)


ASC_HEAD = ("date Wed Dec 2 04:00:00.000 pm 2026\nbase hex  timestamps absolute\ninternal events logged\n"
            "// version 9.0.0\nBegin Triggerblock Wed Dec 2 04:00:00.000 pm 2026\n   0.000000 Start of measurement\n")


def asc_text(n: int = 120) -> str:
    """An .asc of two channels with junk, a line python-can cannot parse, remote and error
    frames, a standard ID above 0x7FF and time going backwards."""
    lines = [ASC_HEAD]
    for k in range(n):
        t = 1.0 + k / 100
        if k == 40:
            t = 0.5  # backwards
        body = f"{1 + k % 2}  {0x100 + k % 9:X}             Rx   d 2 {k % 256:02X} 0{k % 10}"
        if k % 17 == 5:
            body = f"{1 + k % 2}  {0x120:X}             Rx   r"
        if k % 23 == 7:
            body = f"{1 + k % 2}  ErrorFrame"
        if k == 60:
            body = "1  12G             Rx   d 1 00"  # python-can cannot parse it
        if k == 75:
            body = "1  9FF             Rx   d 1 00"  # 3 digits above 0x7FF, not flagged extended
        lines.append(f"   {t:.6f} {body}\n")
        if k == 90:
            lines.append("garbage here\n")
    lines.append("End TriggerBlock\n")
    return "".join(lines)


@pytest.mark.parametrize("name", ["drive.asc", "drive.asc.gz"])
def test_asc_in_chunks_equals_whole(tmp_path: Path, name: str):
    path = write(tmp_path / name, asc_text())
    for channel in (None, "0", "1", "5"):
        for mode in ("error", "skip"):
            assert streamed(path, chunk_rows=4, channel=channel, on_bad_rows=mode) == \
                whole(path, channel=channel, on_bad_rows=mode), (channel, mode)
    assert whole(path, channel="*", on_bad_rows="skip")[4] == 4  # backwards, unparsable, above 0x7FF, garbage


def test_trc_and_blf_in_chunks_equal_whole(tmp_path: Path):
    trc = tmp_path / "drive.trc"
    with can.TRCWriter(str(trc)) as writer:
        for k in range(50):
            writer.on_message_received(can.Message(timestamp=1.0 + k / 10 - (2.0 if k == 30 else 0),
                                                   arbitration_id=0x100 + k % 5, data=bytes([k % 256, 1])))
    lines = trc.read_text().splitlines()
    lines[-10:-10] = ["this is not a frame"]
    trc.write_text("\n".join(lines) + "\n")
    blf = tmp_path / "drive.blf"
    writer = can.BLFWriter(str(blf))
    for k in range(300):
        writer.on_message_received(can.Message(timestamp=1.0 + k / 100, arbitration_id=0x100 + k % 16, channel=k % 2,
                                               data=bytes([k % 256] * (k % 9)), is_remote_frame=k % 37 == 3))
    writer.stop()
    cut = tmp_path / "cut.blf"
    cut.write_bytes(blf.read_bytes()[:int(blf.stat().st_size * 0.6)])
    for path in (trc, blf, cut):
        for channel in (None, "*", "1", "2"):  # (BLFWriter's channel 0 is the file's 1: kdkit names it so)
            for mode in ("error", "skip"):
                assert streamed(path, chunk_rows=7, channel=channel, on_bad_rows=mode) == \
                    whole(path, channel=channel, on_bad_rows=mode), (path.name, channel, mode)
    assert "truncated BLF file" in streamed(cut, channel="*") and streamed(cut, channel="*", on_bad_rows="skip")[4] > 0
    assert "frames of 2 bus channels (data frames in its first 10,000 frames: 1 (" in streamed(cut)
    assert streamed(trc, on_bad_rows="skip")[4] == 2
