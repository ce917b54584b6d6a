"""A new user's own logger files with the quirks real captures have (the walkthrough of
2026-12-07): Vector ASC files with several trigger blocks, relative timestamps and cut data lines."""
from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from kdkit.data.loggers import iter_logger_file, read_logger_file
from kdkit.data.readers import DataFormatError, concat_messages

HEAD = "date Mon Jan 6 10:00:00.000 am 2025\nbase hex  timestamps absolute\ninternal events logged\n"


def _block(date: str, times, first_id: int = 0x100) -> str:
    rows = "".join(f"   {t:.6f} 1  {first_id + k % 4:X}             Rx   d 8 11 22 33 44 55 66 77 {k % 256:02X}\n"
                   for k, t in enumerate(times))
    return f"Begin Triggerblock Mon Jan 6 {date} am 2025\n{rows}End TriggerBlock\n"


@pytest.mark.parametrize("chunked", [False, True])
def test_asc_trigger_blocks_whose_clock_starts_again_are_placed_by_their_dates(tmp_path: Path, chunked):
    """Two measurements logged into one .asc (a second 'Begin Triggerblock', 5 minutes later, its
    times from 0 again): the second block's first frame "went backwards", an error advising to sort
    the file (which would interleave the two), and with skip its 1,000 frames were lost. Its times
    are now placed by the block dates; blocks whose times go on are kept as they are."""
    times = np.arange(1, 1001) * 1e-3
    path = tmp_path / "two_drives.asc"
    path.write_text(HEAD + _block("10:00:00.000", times) + _block("10:05:00.000", times))
    read = (lambda p: concat_messages(list(iter_logger_file(p, chunk_rows=300)))) if chunked else read_logger_file
    m = read(path)
    assert len(m) == 2000 and m.skipped_rows == 0
    np.testing.assert_allclose(m.timestamp[:1000], times)
    np.testing.assert_allclose(m.timestamp[1000:], 300.0 + times)  # 10:05 is 300 s after 10:00
    on = tmp_path / "one_clock.asc"  # times that go on across blocks (relative to the measurement): as they are
    on.write_text(HEAD + _block("10:00:00.000", times) + _block("10:00:01.000", 1.0 + times))
    np.testing.assert_allclose(read(on).timestamp, np.concatenate([times, 1.0 + times]))


def test_asc_relative_timestamps_are_refused_naming_the_header_line(tmp_path: Path):
    """'base hex timestamps relative': python-can hands out each frame's gap to the event before it
    as its time. Four frames 1 ms apart were read at t=0.001 each, silently; a file of varying
    gaps lost 646 of 1,000 rows as "out of line" under skip, the kept ones with wrong times."""
    path = tmp_path / "rel.asc.gz"
    text = HEAD.replace("timestamps absolute", "timestamps relative") + _block("10:00:00.000", [0.001] * 4)
    path.write_bytes(gzip.compress(text.encode()))
    for mode in ("error", "skip"):
        with pytest.raises(DataFormatError, match=re.escape(f"{path}:2: the header says 'timestamps relative'") +
                           r".*export the log with absolute timestamps"):
            read_logger_file(path, on_bad_rows=mode)


def test_asc_data_line_with_fewer_bytes_than_its_dlc_is_a_bad_row(tmp_path: Path):
    """A file cut in a data line ('d 8 11 22 3') was kept as a 3-byte frame, and 'd 4 01 02' as a
    2-byte one, without a word: python-can keeps the bytes a line has."""
    path = tmp_path / "cut.asc"
    rows = ["   0.001000 1  100             Rx   d 8 11 22 33 44 55 66 77 88",
            "   0.002000 1  129             Rx   d 4 01 02",
            "   0.003000 1  12A             Rx   d 2 01 02",
            "   0.004000 1  128             Rx   d 8 11 22 3"]
    path.write_text(HEAD + "Begin Triggerblock Mon Jan 6 10:00:00.000 am 2025\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:6: the frame's DLC is 4 but it holds 2 data bytes "
                                                        f"(a cut or damaged line)")):
        read_logger_file(path)
    m = read_logger_file(path, on_bad_rows="skip")
    assert m.can_id.tolist() == [0x100, 0x12A] and m.dlc.tolist() == [8, 2] and m.skipped_rows == 2
    assert "cut.asc:8: the frame's DLC is 8 but it holds 3 data bytes" in m.skipped_examples[1]


# --------------------------------------------------------------------------------------------
# a clock that restarts inside a recording


def _restarted_log(path: Path, before: int = 450, after: int = 1000) -> Path:
    """A candump log whose logger restarted its clock after ``before`` frames."""
    lines = [f"({1000 + k / 1000:.6f}) can0 {0x100 + k % 5:03X}#{k % 256:02X}{(k * 7) % 256:02X}\n" for k in range(before)]
    lines += [f"({0.5 + k / 1000:.6f}) can0 {0x100 + k % 5:03X}#{k % 256:02X}{(k * 3) % 256:02X}\n" for k in range(after)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
    return path


def test_a_restarted_clock_starts_a_new_timeline_instead_of_losing_the_rest(tmp_path: Path):
    """A logger restarted mid-file (its clock back to 0.5 s after 1,000 s): every row after it was
    "going backwards": an error advising to sort the file (which would interleave two drives) and,
    with --on-bad-rows skip, 1,000 of 1,450 rows lost as "malformed", a dataset of 0 windows. The
    rows from the restart on are a new timeline, named in the report; windows never cross it."""
    from kdkit.data.graphs import IdVocab, build_graphs, timeline_window_starts

    path = _restarted_log(tmp_path / "drive.log")
    for mode in ("error", "skip"):
        m = read_logger_file(path, on_bad_rows=mode)
        assert len(m) == 1450 and m.skipped_rows == 0 and m.timeline_restarts == 1
        assert np.flatnonzero(m.restart).tolist() == [450]
        assert m.timeline_examples == [f"{path} line 451: the clock goes back from 1000.449 (line 450) to 0.5 and "
                                       f"stays there: a new timeline starts"]
    chunked = concat_messages(list(iter_logger_file(path, chunk_rows=97)))
    np.testing.assert_array_equal(chunked.timestamp, m.timestamp)
    np.testing.assert_array_equal(chunked.restart, m.restart)
    starts = timeline_window_starts(m, 100, 100)
    assert starts.tolist() == [0, 100, 200, 300, *range(450, 1450 - 99, 100)]  # 50 messages before the restart unused
    gs = build_graphs(m, IdVocab.fit([m.can_id]), 100, 100)
    assert len(gs) == 14 and bool(torch.isfinite(gs.x).all())
    # a window starting on the restart is the first window of a recording of that timeline alone
    alone = build_graphs(m.slice(450, 1450), IdVocab.fit([m.can_id]), 100, 100)
    np.testing.assert_array_equal(gs.x[gs.node_ptr[4]:].numpy(), alone.x.numpy())


def test_a_dataset_with_a_restarted_clock_prepares_every_timeline_and_says_so(tmp_path: Path, monkeypatch):
    from kdkit.data import datasets
    from kdkit.data.datasets import PrepareConfig, format_info, prepare

    folder = tmp_path / "mycar"
    _restarted_log(folder / "train_01_attack_free" / "drive.log", 450, 3000)
    _restarted_log(folder / "test_01_drive" / "other.log", 300, 700)
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    whole = prepare(str(folder), PrepareConfig(window=100, stride=100, val_fraction=0.2))
    info = whole.info
    assert set(info["timelines"]) == {str(folder / "train_01_attack_free" / "drive.log"),
                                      str(folder / "test_01_drive" / "other.log")}
    assert info["splits"]["train"]["windows"] + info["splits"]["val"]["windows"] == 4 + 30
    assert info["splits"]["test_01_drive"]["windows"] == 3 + 7
    text = format_info("mycar", whole)
    assert "the clock restarted 1 time(s) in " in text and "no window crosses a restart" in text
    monkeypatch.setattr(datasets, "PREPARE_CHUNK_ROWS", 77)  # streamed in chunks: the same graphs
    chunked = prepare(str(folder), PrepareConfig(window=100, stride=100, val_fraction=0.2), rebuild=True)
    for split in whole.splits:
        np.testing.assert_array_equal(chunked.splits[split].x.numpy(), whole.splits[split].x.numpy())
        np.testing.assert_array_equal(chunked.splits[split].start.numpy(), whole.splits[split].start.numpy())


def test_the_detector_restarts_its_windows_where_the_reader_found_a_new_timeline(tmp_path: Path):
    """A Messages table whose reader marked a restarted clock, fed to a Detector: the windows restart
    on the timeline's first message, as build_graphs windows it offline, and nothing is dropped."""
    from kdkit.data.graphs import IdVocab
    from kdkit.stream import Detector

    m = read_logger_file(_restarted_log(tmp_path / "drive.log"))
    det = Detector(lambda gs: np.zeros(len(gs)), IdVocab.fit([m.can_id]), 100)
    got = det.feed_many(m)
    assert det.timeline_restarts == 1 and not det.dropped and det.messages == 1450
    assert [d.first_message for d in got] == [0, 100, 200, 300, *range(450, 1450 - 99, 100)]


def test_asc_and_blf_channels_are_named_as_the_file_names_them(tmp_path: Path):
    """python-can numbers .asc/.blf channels from 0: `--channel 1`, the channel CANoe and the file
    call 1, silently read the file's channel 2. They are named as in the file now."""
    import can

    rows = "".join(f"   {0.001 * (k + 1):.6f} {1 + k % 2}  {(0x100 if k % 2 == 0 else 0x600) + k % 4:X}             "
                   f"Rx   d 1 {0x11 if k % 2 == 0 else 0x22:02X}\n" for k in range(40))
    asc = tmp_path / "twobus.asc"
    asc.write_text(HEAD + "Begin Triggerblock Mon Jan 6 10:00:00.000 am 2025\n" + rows + "End TriggerBlock\n")
    one = read_logger_file(asc, channel="1")
    assert set(one.can_id.tolist()) == {0x100, 0x102} and set(one.payload[:, 0].tolist()) == {0x11}
    with pytest.raises(DataFormatError, match=r"data frames in its first 10,000 frames: 1 \(20\), 2 \(20\)"):
        read_logger_file(asc)
    blf = tmp_path / "twobus.blf"
    with can.BLFWriter(str(blf)) as writer:  # python-can's channel 1 is written as the file's channel 2
        for k in range(40):
            writer.on_message_received(can.Message(timestamp=1.0 + k / 100, arbitration_id=0x100 + k % 2 * 0x500,
                                                   channel=k % 2, data=b"\x01", is_extended_id=False))
    assert set(read_logger_file(blf, channel="2").can_id.tolist()) == {0x600}


def test_candump_len8_dlc_frames_are_read_as_their_8_bytes(tmp_path: Path):
    """candump -8 writes a classic frame sent with a raw DLC of 9..15 as '123#1122334455667788_C':
    a valid frame, refused as "not pairs of hex digits" (and skipped). Its 8 bytes are read; a
    suffix with fewer bytes, or a DLC below 9, is still a bad line."""
    path = tmp_path / "len8.log"
    path.write_text("(1.000000) can0 123#1122334455667788_C\n(1.001000) can0 124#11\n"
                    "(1.002000) can0 125#1122334455667788_5\n(1.003000) can0 126#1122_C\n")
    m = read_logger_file(path, on_bad_rows="skip")
    assert m.can_id.tolist() == [0x123, 0x124] and m.dlc.tolist() == [8, 1]
    assert bytes(m.payload[0]) == bytes.fromhex("1122334455667788") and m.skipped_rows == 2
    big = tmp_path / "big.log"  # 1 MiB and more: the compiled pass hands such lines to the per-line parser
    big.write_text("".join(f"({1 + k / 1000:.6f}) can0 {0x100 + k % 7:03X}#1122334455667788{'_C' if k % 3 == 0 else ''}\n"
                           for k in range(40000)))
    assert big.stat().st_size > 1 << 20
    b = read_logger_file(big)
    assert len(b) == 40000 and set(b.dlc.tolist()) == {8} and b.skipped_rows == 0


def test_timestamps_far_slower_or_faster_than_a_can_bus_are_named(tmp_path: Path, monkeypatch):
    """A SavvyCAN export in microseconds read without its mapping's time_unit: messages 1,000 s apart,
    reported as normal data without a word. data info names such a recording."""
    from kdkit.data.datasets import PrepareConfig, format_info, prepare

    folder = tmp_path / "us"
    rows = "".join(f"{k * 1000.0:.1f},{0x100 + k % 5:03X},{k % 256:02X},0\n" for k in range(400))
    (folder / "train_01_attack_free").mkdir(parents=True)
    (folder / "train_01_attack_free" / "drive.csv").write_text("timestamp,arbitration_id,data_field,attack\n" + rows)
    (folder / "train_01_attack_free" / "fine.csv").write_text(
        "timestamp,arbitration_id,data_field,attack\n" + "".join(
            f"{k / 1000:.4f},{0x100 + k % 5:03X},{k % 256:02X},0\n" for k in range(400)))
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    ds = prepare(str(folder), PrepareConfig(window=50, stride=50))
    assert list(ds.info["timing"]) == [str(folder / "train_01_attack_free" / "drive.csv")]
    text = format_info("us", ds)
    assert "drive.csv: its 400 messages come 1e+03 s apart on average, slower than any CAN bus" in text
    assert 'time_unit = "ms" or "us"' in text


def test_a_file_mostly_skipped_is_said_so(tmp_path: Path, monkeypatch):
    """A SavvyCAN export with a trailing comma lost every row under --on-bad-rows skip, and data info
    listed the count among the others: a file that lost more rows than it kept is said so."""
    from kdkit.data.datasets import PrepareConfig, format_info, prepare

    folder = tmp_path / "mostly"
    (folder / "train_01_attack_free").mkdir(parents=True)
    good = "".join(f"{k / 1000:.4f},{0x100 + k % 5:03X},{k % 256:02X},0\n" for k in range(100))
    bad = "".join(f"{1 + k / 1000:.4f},{0x100 + k % 5:03X},{k % 256:02X},0,\n" for k in range(300))
    (folder / "train_01_attack_free" / "drive.csv").write_text("timestamp,arbitration_id,data_field,attack\n" + good
                                                               + bad)
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    text = format_info("mostly", prepare(str(folder), PrepareConfig(window=50, stride=50, on_bad_rows="skip")))
    assert "  skipped 300 malformed rows in " in text and "no training windows" not in text
    none = format_info("mostly", prepare(str(folder), PrepareConfig(window=500, stride=500, on_bad_rows="skip")))
    assert "  no training windows: kdkit train refuses this dataset" in none
    assert "    more rows skipped than kept (100): the file is not what its reader expects; see the first one" in text


def test_trc_error_frames_of_the_channel_read_are_counted(tmp_path: Path):
    """A .trc error record ('ER') was counted only with --channel '*': read as the file's one bus
    (no channel given, or its own), 'dropped_frames' said 0 error frames."""
    import can

    path = tmp_path / "v21.trc"
    with can.TRCWriter(str(path)) as writer:
        for k in range(5):
            writer.on_message_received(can.Message(timestamp=1.0 + k, arbitration_id=0x100 + k, data=b"\x01",
                                                   channel=1, is_extended_id=False))
    lines = path.read_text().splitlines()
    bus = lines[-1].split()[3]  # the bus the writer gave the frames
    lines.insert(len(lines) - 1, f"      5      3500.000 ER  {bus}     - Rx -  5    02 00 00 08 00")
    path.write_text("\n".join(lines) + "\n")
    for channel in (None, bus, "*"):
        m = read_logger_file(path, channel=channel)
        assert len(m) == 5 and m.dropped_frames == {"remote": 0, "error": 1}, channel


def test_a_csv_whose_rows_end_with_the_delimiter_is_read(tmp_path: Path):
    """SavvyCAN's GVRET export ends every row with a comma: each row has one more (empty) field than
    the header, and every row was refused ("expected 14 fields, got 15"), so with skip the file gave
    0 windows. The empty field after the last delimiter is allowed (a value there is a bad row)."""
    from kdkit.data.columns import ColumnMapping, iter_mapped, read_mapped

    rows = ["Time Stamp,ID,Extended,Dir,Bus,LEN,D1,D2,D3,D4,D5,D6,D7,D8"]
    rows += [f"{166064000 + k * 1000},0000021A,false,Rx,0,8,C5,{k % 256:02X},00,00,00,00,00,{k % 100:02X},"
             for k in range(300)]
    rows[150] = rows[150] + "x"
    path = tmp_path / "gvret.csv"
    path.write_text("\n".join(rows) + "\n")
    mapping = ColumnMapping(timestamp="Time Stamp", can_id="ID", payload=tuple(f"D{i}" for i in range(1, 9)),
                            payload_format="bytes", time_unit="us", extended="Extended", dlc="LEN")
    with pytest.raises(DataFormatError, match=r"gvret\.csv:151: a value after the last column \('x'\)"):
        read_mapped(path, mapping)
    m = read_mapped(path, mapping, "skip")
    assert len(m) == 299 and m.skipped_rows == 1 and m.can_id[0] == 0x21A and m.timestamp[1] == 166.065
    assert m.payload[1].tolist() == [0xC5, 1, 0, 0, 0, 0, 0, 1]
    for block_bytes in (1, 50, None):  # the first row may come pieces after the header
        chunks = concat_messages(list(iter_mapped(path, mapping, "skip", chunk_rows=7, block_bytes=block_bytes)))
        np.testing.assert_array_equal(chunks.timestamp, m.timestamp)
        np.testing.assert_array_equal(chunks.payload, m.payload)


def test_european_exports_with_decimal_commas_and_date_times(tmp_path: Path):
    """A German Excel export ('0,001500' with ';' between fields) failed with "not a number" and no
    hint: a mapping reads it with decimal = ","; a date-time timestamp says date-times are not read."""
    from kdkit.data.columns import ColumnMapping, read_mapped

    rows = ["Zeitstempel;Kennung;Daten"] + [f"{k / 1000:.6f}".replace(".", ",") + f";{0x100 + k % 4:03X};1122"
                                           for k in range(50)]
    path = tmp_path / "export.csv"
    path.write_text("\n".join(rows) + "\n")
    plain = ColumnMapping(timestamp="Zeitstempel", can_id="Kennung", payload="Daten", delimiter=";")
    with pytest.raises(DataFormatError, match=r"export\.csv:2: Zeitstempel '0,000000': not a number \(a decimal comma: "
                                              r"the mapping reads it with decimal = \",\"\)"):
        read_mapped(path, plain)
    m = read_mapped(path, ColumnMapping(timestamp="Zeitstempel", can_id="Kennung", payload="Daten", delimiter=";",
                                        decimal=","))
    assert len(m) == 50 and m.timestamp[3] == 0.003
    with pytest.raises(ValueError, match=r"decimal and delimiter are both ','"):
        ColumnMapping(timestamp="t", can_id="i", payload="p", decimal=",")
    dated = tmp_path / "dated.csv"
    dated.write_text("t,id,data\n2025-01-06 10:00:00.001,100,11\n")
    with pytest.raises(DataFormatError, match=r"date-times are not read"):
        read_mapped(dated, ColumnMapping(timestamp="t", can_id="id", payload="data"))


def test_a_busmaster_log_is_named_as_such(tmp_path: Path):
    """A BusMaster .log was read as candump and failed on its header: "timestamp '***BUSMASTER' is
    not '(seconds)'", with no word on what the file is or what to do."""
    path = tmp_path / "bus.log"
    path.write_text("***BUSMASTER Ver 3.2.2***\n***PROTOCOL CAN***\n10:00:00:0001 1 0x100 s 8 11 22 33 44 55 66 77 88\n")
    with pytest.raises(DataFormatError, match=r"bus\.log:1: not a candump -L frame line: .*a BusMaster log, not a "
                                              r"candump one.*export the capture as \.asc or \.blf"):
        read_logger_file(path)


def test_a_bus_that_starts_later_in_a_candump_log_is_named_by_data_info(tmp_path: Path, monkeypatch):
    """A capture whose second bus starts after the first MiB is read as the first bus (the readers
    look at the file's start): kdkit detect named the 20,000 frames left out, data info nothing."""
    from kdkit.data.datasets import PrepareConfig, format_info, prepare

    folder = tmp_path / "late"
    log = folder / "train_01_attack_free" / "drive.log"
    log.parent.mkdir(parents=True)
    lines = [f"({1000 + k / 1000:.6f}) can0 {0x100 + k % 7:03X}#1122334455667788\n" for k in range(32000)]
    lines += [f"({1032 + k / 1000:.6f}) {'can0' if k % 2 else 'can1'} {0x200 + k % 5:03X}#11\n" for k in range(2000)]
    log.write_text("".join(lines))
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    ds = prepare(str(folder), PrepareConfig(window=100, stride=100))
    assert ds.info["left_out_channels"] == {str(log): {"can1": 1000}}
    assert (f"left out of {log}: the frames of channels that start later in it, can1 (1,000) (it is read as the bus "
            f"its start holds") in format_info("late", ds)
    chosen = prepare(str(folder), PrepareConfig(window=100, stride=100), channel="can0")
    assert chosen.info["left_out_channels"] == {}


def test_a_cut_trc_line_is_reported_once_by_kdkit(tmp_path: Path, capfd):
    """python-can logged "TRCReader: Failed to parse message ..." for the cut last line, once per
    attempt, beside kdkit's own report of it with its file and line."""
    import can

    path = tmp_path / "cut.trc"
    with can.TRCWriter(str(path)) as writer:
        for k in range(5):
            writer.on_message_received(can.Message(timestamp=1.0 + k, arbitration_id=0x100 + k, data=b"\x01",
                                                   is_extended_id=False))
    path.write_text(path.read_text()[:-12])
    capfd.readouterr()
    m = read_logger_file(path, on_bad_rows="skip")
    assert len(m) == 4 and m.skipped_rows == 1 and "python-can's TRC reader skipped this line" in m.skipped_examples[0]
    out, err = capfd.readouterr()
    assert "Failed to parse" not in out + err


def test_a_sidecar_interval_must_match_one_timeline_of_a_restarted_recording(tmp_path: Path):
    """After a restart two timelines can share times: an interval 0.15..0.2 labelled 51 rows of each,
    silently; one between the timelines (500..501) labelled none and the file read as unlabelled."""
    lines = [f"({k / 1000:.6f}) can0 {0x100 + k % 5:03X}#11\n" for k in range(450)]
    lines += [f"({0.1 + k / 1000:.6f}) can0 {0x100 + k % 5:03X}#11\n" for k in range(350)]
    path = tmp_path / "ov.log"
    path.write_text("".join(lines))
    sidecar = tmp_path / "ov.log.labels.csv"
    sidecar.write_text("start,end,attack_type\n0.15,0.2,DoS\n")
    with pytest.raises(DataFormatError, match=r"ov\.log\.labels\.csv:2: interval 0\.15\.\.0\.2 matches rows of 2 of "
                                              r"the recording's timelines: the clock of .*ov\.log restarted \(message "
                                              r"450 \(0\.449 -> 0\.1\)\).*split the recording at the restart"):
        read_logger_file(path)
    rs = _restarted_log(tmp_path / "rs.log", 450, 350)  # 1000.000..1000.449, then 0.5..0.849
    (tmp_path / "rs.log.labels.csv").write_text("start,end,attack_type\n500,501,DoS\n")
    with pytest.raises(DataFormatError, match=r"interval 500\.0\.\.501\.0 matches no row of any of the recording's "
                                              r"timelines"):
        read_logger_file(rs)
    (tmp_path / "rs.log.labels.csv").write_text("start,end,attack_type\n0.6,0.7,DoS\n")  # the second timeline's
    m = read_logger_file(rs)
    assert int(m.label.sum()) == 101 and m.label[:450].sum() == 0 and m.attack_type == "DoS"


def test_an_asc_block_dated_before_the_block_before_is_a_new_timeline(tmp_path: Path):
    """A second trigger block dated an hour before the first was placed by its date at -3599.999 s:
    every frame "negative", skipped. Its times stay as written, and it is a new timeline."""
    times = np.arange(1, 21) * 1e-3
    path = tmp_path / "earlier.asc"
    path.write_text(HEAD + _block("11:00:00.000", times) + _block("10:00:00.000", times))
    m = read_logger_file(path)
    assert len(m) == 40 and m.skipped_rows == 0 and m.timeline_restarts == 1
    np.testing.assert_allclose(m.timestamp, np.concatenate([times, times]))


def test_a_hex_payload_with_its_bytes_written_apart_is_read(tmp_path: Path):
    from kdkit.data.columns import ColumnMapping, read_mapped

    path = tmp_path / "spaced.csv"
    path.write_text("t;id;data\n" + "".join(f"{k / 1000:.3f};{0x100 + k:03X};02 03 {k:02X}\n" for k in range(5)))
    m = read_mapped(path, ColumnMapping(timestamp="t", can_id="id", payload="data", delimiter=";"))
    assert m.dlc.tolist() == [3] * 5 and m.payload[4, :3].tolist() == [2, 3, 4]


def test_a_zipped_can_train_and_test_csv_is_read(tmp_path: Path):
    """kdkit's own layout in a .zip: "header 'timestamp,arbitration_id,data_field,attack' is not a
    layout kdkit knows by its header". Read as the same CSV plain is."""
    import zipfile

    from kdkit.data import read_messages

    text = "timestamp,arbitration_id,data_field,attack\n" + "".join(
        f"{1.5 + k / 1000:.6f},{0x100 + k % 3:03X},{k % 256:02X}11,{k % 2}\n" for k in range(50))
    plain = tmp_path / "DoS-x.csv"
    plain.write_text(text)
    with zipfile.ZipFile(tmp_path / "DoS-x.csv.zip", "w") as z:
        z.writestr("DoS-x.csv", text)
    a, b = read_messages(plain), read_messages(tmp_path / "DoS-x.csv.zip")
    for col in ("timestamp", "can_id", "dlc", "payload", "label"):
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col))
    assert b.attack_type == a.attack_type == "DoS"


def test_kdkit_evaluate_input_names_a_restarted_clock(tmp_path: Path, capsys, kdkit_env):
    """kdkit detect said the windows restarted; kdkit evaluate --input on the same file said nothing."""
    import json

    from kdkit.cli.main import main

    path = _restarted_log(tmp_path / "drive.log", 450, 1000)
    ckpt = _tiny_checkpoint(tmp_path)
    assert main(["evaluate", "--checkpoint", str(ckpt), "--input", str(path), "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)["files"][0]
    assert entry["timeline_restarts"] == 1 and entry["windows"] == 4 + 10
    assert main(["evaluate", "--checkpoint", str(ckpt), "--input", str(path)]) == 0
    assert "the clock restarted 1 time(s): each part is read as a timeline of its own" in capsys.readouterr().out


def _tiny_checkpoint(tmp_path: Path) -> Path:
    """A 1-epoch GAT student on the synthetic data (a few seconds)."""
    import torch as _torch

    from kdkit.config import make_config
    from kdkit.workflows.run import train

    _torch.set_num_threads(1)
    s = train(make_config(model="gat", type="student", dataset="synthetic", epochs=1, precision="32-true",
                          runs_dir=str(tmp_path / "runs"), threads=1), progress=False)
    return Path(s["best_checkpoint"])


def test_a_model_trained_on_its_own_layout_scores_new_recordings_of_it(tmp_path: Path, capsys, kdkit_env):
    """Trained on a column-mapped spec (';', decimal commas, a label column), the model could not
    score a new file of that layout: `kdkit evaluate --input` and `kdkit detect --input` read it as
    can-train-and-test ("wrong or missing header 'Zeit;ID;Daten;Label'"). The checkpoint (and an
    export's .json) records its training data's mapping, and an --input file in no layout kdkit knows
    by itself is read with it."""
    import json

    from kdkit.cli.main import main

    def drive(path: Path, attack: bool, seed: int) -> Path:
        rng = np.random.default_rng(seed)
        rows = ["Zeit;ID;Daten;Label"]
        for k in range(3000):
            dos = attack and 1000 <= k < 2000 and k % 2 == 0
            i = 0 if dos else int(rng.choice([0x100, 0x1A0, 0x316, 0x2C0, 0x4F1]))
            rows.append(f"{k / 1000:.6f}".replace(".", ",") + f";{i:03X};{rng.integers(0, 1 << 16):04X};"
                        + ("Angriff" if dos else "Normal"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(rows) + "\n")
        return path

    root = tmp_path / "meinauto"
    drive(root / "sauber" / "fahrt.csv", False, 0)
    drive(root / "angriff" / "DoS-fahrt.csv", True, 1)
    drive(root / "test" / "DoS-neu.csv", True, 2)
    spec = root / "meinauto.toml"
    spec.write_text('[dataset]\nname = "meinauto"\nroot = "."\ntrain_attack_free = ["sauber/*.csv"]\n'
                    'train_with_attacks = ["angriff/*.csv"]\n[dataset.tests]\nneu = ["test/*.csv"]\n'
                    '[dataset.columns]\ntimestamp = "Zeit"\ncan_id = "ID"\npayload = "Daten"\nlabel = "Label"\n'
                    'delimiter = ";"\ndecimal = ","\nlabel_map = { Normal = "normal", Angriff = "attack" }\n')
    new = drive(tmp_path / "neu" / "DoS-spaeter.csv", True, 3)
    runs = tmp_path / "runs"
    assert main(["train", "--model", "gat", "--type", "student", "--dataset", str(spec), "--epochs", "1",
                 "--threads", "1", "--no-teacher", "--runs-dir", str(runs)]) == 0
    ckpt = next(runs.glob("*/checkpoints/best.pt"))
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(ckpt), "--input", str(new), "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)["files"][0]
    assert entry["messages"] == 3000 and entry["windows"] == 30 and entry["labelled"]
    assert entry["metrics"]["attack_windows"] == 10
    assert main(["detect", "--checkpoint", str(ckpt), "--input", str(new), "--summary", str(tmp_path / "s.json")]) == 0
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["messages"] == 3000 and s["windows"] == 30 and s["labels"]["attack_windows"] == 10
    pt2 = tmp_path / "student.pt2"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(pt2)]) == 0
    assert json.loads(pt2.with_suffix(".json").read_text())["reading"]["mapping"]["decimal"] == ","
    assert main(["detect", "--model", str(pt2), "--input", str(new), "--summary", str(tmp_path / "e.json")]) == 0
    e = json.loads((tmp_path / "e.json").read_text())
    assert e["messages"] == 3000 and e["windows"] == 30


def _ctt(rows: list[tuple[float, int]]) -> str:
    return "timestamp,arbitration_id,data_field,attack\n" + "".join(f"{t!r},{i:03X},{i % 256:02X},0\n" for t, i in rows)


def test_a_recording_that_fills_no_window_is_named(tmp_path: Path, monkeypatch):
    """A 40-message recording beside longer ones gave no window and no word: data info's split
    counts are the windows' messages, so the recording was simply missing. It is named, and the
    table says how many messages were read against how many are in windows."""
    from kdkit.data.datasets import PrepareConfig, format_info, prepare

    folder = tmp_path / "short"
    (folder / "train_01_attack_free").mkdir(parents=True)
    (folder / "train_01_attack_free" / "short.csv").write_text(_ctt([(k / 500, 0x100 + k % 5) for k in range(40)]))
    (folder / "train_01_attack_free" / "long.csv").write_text(_ctt([(k / 500, 0x100 + k % 5) for k in range(430)]))
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    ds = prepare(str(folder), PrepareConfig(window=50, stride=50))
    assert ds.info["no_windows"] == {str(folder / "train_01_attack_free" / "short.csv"): 40}
    text = format_info("short", ds)
    assert "no window from " in text and "short.csv: its 40 messages are fewer than a window (50)" in text
    assert "long.csv" not in text.split("\nsplit")[0]  # 8 windows: not named
    # 430 messages give 8 windows of 50 (30 left over), the short file none: 400 of 470 in windows
    assert "470 were read, 400 of them in windows" in text


def test_a_restarted_recording_too_short_for_a_window_names_its_timelines(tmp_path: Path, monkeypatch):
    """Two timelines of 80 messages (160 in the file) and a window of 100: training said every
    window overlapped the validation block and to lower the window to 16. It names the timeline."""
    from kdkit.config import make_config
    from kdkit.workflows.run import train

    folder = tmp_path / "rs"
    (folder / "train_01_attack_free").mkdir(parents=True)
    rows = [(100 + k / 500, 0x100 + k % 5) for k in range(80)] + [(k / 500, 0x100 + k % 5) for k in range(80)]
    (folder / "train_01_attack_free" / "drive.csv").write_text(_ctt(rows))
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    cfg = make_config(model="gat", type="teacher", dataset=str(folder), epochs=1, window=100,
                      runs_dir=str(tmp_path / "runs"))
    with pytest.raises(ValueError) as err:
        train(cfg)
    msg = str(err.value)
    assert "window 100 > the longest training recording (80 messages, drive.csv's longest timeline" in msg
    assert "restarted 1 time(s)" in msg and "lower --window (below 80)" in msg


def test_attack_rows_in_the_attack_free_folder_are_named(tmp_path: Path, monkeypatch):
    """A labelled attack recording dropped into train_01_attack_free trained without a word. Its
    attack messages are counted and named; a clean file there and attacks in train_02 are not."""
    from kdkit.data.datasets import PrepareConfig, format_info, prepare

    def rows(attack: bool, t0: float = 0.0) -> str:
        return "timestamp,arbitration_id,data_field,attack\n" + "".join(
            f"{t0 + k / 500!r},{0x100 + k % 5:03X},{k % 256:02X},{int(attack and 200 <= k < 230)}\n" for k in range(400))

    folder = tmp_path / "mixed"
    for sub, name, text in (("train_01_attack_free", "clean.csv", rows(False)),
                            ("train_01_attack_free", "DoS-x.csv", rows(True)),
                            ("train_02_with_attacks", "DoS-y.csv", rows(True, 5.0))):  # (not a copy: read once)
        (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / sub / name).write_text(text)
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    ds = prepare(str(folder), PrepareConfig(window=50, stride=50))
    assert ds.info["attacks_in_attack_free"] == {str(folder / "train_01_attack_free" / "DoS-x.csv"): 30}
    text = format_info("mixed", ds)
    assert "DoS-x.csv is an attack-free training recording (train_attack_free) but 30 of its messages are labelled attack" \
        in text and "clean.csv is" not in text and "DoS-y.csv is" not in text


@pytest.mark.parametrize("workers", [1, 2])
def test_a_bus_that_starts_later_in_an_asc_file_is_named_by_data_info(tmp_path: Path, monkeypatch, workers):
    """An .asc file whose channel 2 starts after the first 10,000 frames is read as channel 1: data
    info named a candump log's late buses, not an .asc file's. Its reader counts them as it reads
    (no second pass through python-can), in a preparation worker too; a chosen channel names none."""
    from kdkit.data.datasets import PrepareConfig, format_info, prepare

    folder = tmp_path / "late"
    asc = folder / "train_01_attack_free" / "drive.asc"
    asc.parent.mkdir(parents=True)
    rows = [f"   {0.001 * (k + 1):.6f} 1  {0x100 + k % 4:X}             Rx   d 1 11\n" for k in range(10_500)]
    rows += [f"   {10.6 + 0.001 * k:.6f} {1 + k % 2}  {0x600 + k % 4:X}             Rx   d 1 22\n" for k in range(600)]
    asc.write_text(HEAD + "Begin Triggerblock Mon Jan 6 10:00:00.000 am 2025\n" + "".join(rows) + "End TriggerBlock\n")
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    ds = prepare(str(folder), PrepareConfig(window=100, stride=100), workers=workers)
    assert ds.info["left_out_channels"] == {str(asc): {"2": 300}}
    assert f"left out of {asc}: the frames of channels that start later in it, 2 (300)" in format_info("late", ds)
    assert read_logger_file(asc).left_out_channels == {"2": 300}  # the whole read counts them too
    assert concat_messages(list(iter_logger_file(asc, chunk_rows=999))).left_out_channels == {"2": 300}
    chosen = prepare(str(folder), PrepareConfig(window=100, stride=100), channel="1")
    assert chosen.info["left_out_channels"] == {}
