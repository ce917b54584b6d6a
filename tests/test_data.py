"""Tests of the readers (kdkit/data.py): every format on tiny hand-written files with exact
expected values, and every kind of bad input (file:line and the problem in the message)."""
from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import HCRL_BAD, HCRL_ROWS, require

from kdkit.data.loggers import read_logger_file
from kdkit.data.readers import (
    CTT_HEADER,
    EXTENDED_ID_FLAG,
    DataFormatError,
    Messages,
    _hex_values,
    attack_type_from_name,
    iter_ctt_csv,
    parse_hex_ids,
    parse_hex_payload,
    read_ctt_csv,
    read_hcrl_car_hacking,
    read_messages,
)

HEADER = ",".join(CTT_HEADER)
GOOD_ROWS = [
    "1513921815.350702,081,7F84690000000069,0",
    "1513921815.350959,110,08E8,1",       # all-digit ID: still hex (0x110)
    "1513921815.351200,4b1,,0",           # DLC 0, lower-case hex
    "1513921815.351200,0C1,FF00AA,0",     # the same timestamp as the row before: time may stand still
    "1513921815.351500,1FFFFFFF,0102030405060708,1",  # 29-bit extended ID
]
CANDUMP = """(1436509052.249713) vcan0 044#2A366C2BBA
(1436509052.250001) vcan0 110#
(1436509052.250500) vcan1 7FF#0011223344556677
(1436509052.251000) vcan0 123#R
(1436509052.252000) vcan0 18FEF100#AABB
"""
REAL_CANDUMP = Path(__file__).resolve().parents[2] / "shared" / "data" / "candump" / "toyota-rav4-2018-highway.candump.log.gz"


def write(path: Path, rows: list[str], header: str | None = HEADER) -> Path:
    text = "\n".join(([header] if header is not None else []) + rows) + "\n"
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def assert_good_messages(m: Messages) -> None:
    assert len(m) == 5
    assert m.timestamp.dtype == np.float64 and m.can_id.dtype == np.uint32
    assert m.dlc.dtype == np.uint8 and m.payload.dtype == np.uint8 and m.label.dtype == np.uint8
    assert m.timestamp.tolist() == [1513921815.350702, 1513921815.350959, 1513921815.3512, 1513921815.3512,
                                    1513921815.3515]
    assert m.can_id.tolist() == [0x081, 0x110, 0x4B1, 0x0C1, 0x1FFFFFFF | EXTENDED_ID_FLAG]  # 8 digits: extended
    assert m.dlc.tolist() == [8, 2, 0, 3, 8]
    assert m.payload.tolist() == [
        [0x7F, 0x84, 0x69, 0, 0, 0, 0, 0x69],
        [0x08, 0xE8, 0, 0, 0, 0, 0, 0],
        [0] * 8,
        [0xFF, 0x00, 0xAA, 0, 0, 0, 0, 0],
        [1, 2, 3, 4, 5, 6, 7, 8],
    ]
    assert m.label.tolist() == [0, 1, 0, 0, 1]
    assert m.skipped_rows == 0 and m.skipped_examples == []


@pytest.mark.parametrize("name", ["DoS-kia.csv", "DoS-kia.csv.gz"])
def test_ctt_csv_plain_and_gzip(tmp_path: Path, name: str):
    m = read_messages(write(tmp_path / name, GOOD_ROWS))
    assert_good_messages(m)
    assert m.source == str(tmp_path / name) and m.attack_type == "DoS"
    assert m.message_attack_type.tolist() == ["normal", "DoS", "normal", "normal", "DoS"]


def test_ctt_csv_crlf_bom_and_trailing_blank_lines(tmp_path: Path):
    text = "\ufeff" + HEADER + "\r\n" + "\r\n".join(GOOD_ROWS) + "\r\n\r\n\n"
    path = tmp_path / "attack-free-x.csv"
    path.write_bytes(text.encode())
    assert_good_messages(read_ctt_csv(path))


def test_all_digit_ids_are_hex(tmp_path: Path):
    rows = ["1.0,110,00,0", "2.0,100,00,0", "3.0,799,00,0", "4.0,7,00,0", "5.0,00000123,00,0", "6.0,00000999,00,0"]
    m = read_messages(write(tmp_path / "x.csv", rows))
    assert m.can_id.tolist() == [0x110, 0x100, 0x799, 0x7, 0x123 | EXTENDED_ID_FLAG, 0x999 | EXTENDED_ID_FLAG]  # 8 digits: extended


def test_hex_digit_table_covers_every_byte():
    chars = np.arange(256, dtype=np.uint8)
    nib, bad = _hex_values(chars)
    for c in range(256):
        ch = chr(c)
        if ch in "0123456789abcdefABCDEF":
            assert not bad[c] and nib[c] == int(ch, 16), ch
        else:
            assert bad[c], repr(ch)


def test_hex_parsers_on_mixed_lengths():
    ids, ok = parse_hex_ids(pa.array(["0", "7ff", "1FFFFFFF", "20000000", "", "123456789", "g1"]))
    assert ids[:3].tolist() == [0, 0x7FF, 0x1FFFFFFF | EXTENDED_ID_FLAG]
    assert ok.tolist() == [True, True, True, False, False, False, False]  # > 29 bits, empty, > 8 digits, not hex
    ids, ok = parse_hex_ids(pa.array(["1FFFFFFF", "20000000", "FFFFFFFF", "00000000"]))  # uniform width
    assert ids[[0, 3]].tolist() == [0x1FFFFFFF | EXTENDED_ID_FLAG, EXTENDED_ID_FLAG] and ok.tolist() == [True, False, False, True]
    # fewer than 8 digits: an 11-bit standard ID, so at most 0x7FF (uniform and mixed widths)
    assert parse_hex_ids(pa.array(["7FF", "800", "FFF"]))[1].tolist() == [True, False, False]
    assert parse_hex_ids(pa.array(["07FF", "0800", "1A2B3", "00000800", "7ff"]))[1].tolist() == [True, False, False,
                                                                                                   True, True]
    payload, dlc, ok = parse_hex_payload(pa.array(["", "0a", "0102030405060708", "ABC", "010203040506070809", "zz", "aBcD"]))
    assert dlc.tolist()[:3] == [0, 1, 8] and dlc[6] == 2
    assert payload[1].tolist() == [10, 0, 0, 0, 0, 0, 0, 0]
    assert payload[2].tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert payload[6].tolist() == [0xAB, 0xCD, 0, 0, 0, 0, 0, 0]  # bytes of the next row never leak in
    assert ok.tolist() == [True, True, True, False, False, False, True]


# --------------------------------------------------------------------------------------
# bad input: one test per kind, in error mode and in skip mode

BAD_ROWS = {
    # kind: (row, the words the message must contain)
    "bad hex ID": ("1.5,0G1,00,0", "arbitration_id '0G1': not a hex CAN ID"),
    "ID too long": ("1.5,123456789,00,0", "arbitration_id '123456789'"),
    "na ID": ("1.5,na,00,0", "arbitration_id 'na'"),
    "empty ID": ("1.5,,00,0", "arbitration_id ''"),
    "bad hex payload": ("1.5,0C1,00ZZ,0", "data_field '00ZZ': payload must be 0-16 hex digits of even length"),
    "na payload": ("1.5,0C1,na,0", "data_field 'na'"),
    "payload too long": ("1.5,0C1,010203040506070809,0", "data_field '010203040506070809'"),
    "odd-length payload": ("1.5,0C1,012,0", "data_field '012'"),
    "missing field": ("1.5,0C1,00", "expected 4 fields (timestamp,arbitration_id,data_field,attack), got 3"),
    "extra field": ("1.5,0C1,00,0,1", "expected 4 fields (timestamp,arbitration_id,data_field,attack), got 5"),
    "text timestamp": ("abc,0C1,00,0", "timestamp 'abc': not a number"),
    "nan timestamp": ("nan,0C1,00,0", "timestamp 'nan': not a number"),
    "inf timestamp": ("inf,0C1,00,0", "timestamp 'inf': not a number"),
    "empty timestamp": (",0C1,00,0", "timestamp '': not a number"),
    "space in timestamp": ("1. 5,0C1,00,0", "timestamp '1. 5': not a number"),  # spaces around a field are stripped
    "hex timestamp": ("0x10,0C1,00,0", "timestamp '0x10': not a number"),
    "label 2": ("1.5,0C1,00,2", "attack '2': label must be 0 or 1"),
    "label text": ("1.5,0C1,00,yes", "attack 'yes': label must be 0 or 1"),
    "empty label": ("1.5,0C1,00,", "attack '': label must be 0 or 1"),
    "empty row": ("", "empty row"),
    "ID above 0x7FF without 8 digits": ("1513921815.351,800,00,0",
                                        "arbitration_id '800': 0x800 is above 0x7FF, the largest 11-bit ID, but has "
                                        "only 3 hex digits; a 29-bit extended ID is written with 8 (00000800)"),
    "4-digit ID above 0x7FF": ("1513921815.351,1A2B,00,0", "arbitration_id '1A2B': 0x1A2B is above 0x7FF"),
    "decimal ID (pandas to_csv)": ("1513921815.351,809,00,0",  "(00000809). If the column holds decimal IDs (pandas' "
                                                               "to_csv writes them so), read the file with a column "
                                                               "mapping with id_base = 10"),
    "ID with 0x": ("1513921815.351,0x100,00,0", "arbitration_id '0x100': not a CAN ID as this layout writes them: hex "
                                                "digits without '0x'"),
    "negative timestamp": ("-1.5,0C1,00,0", "timestamp '-1.5' is negative"),
    "timestamp going backwards": ("1513921815.350000,0C1,00,0",
                                  "timestamp '1513921815.350000' goes backwards: earlier than '1513921815.350959' "
                                  "on line 3 (timestamps must not decrease"),
}


@pytest.mark.parametrize("kind", list(BAD_ROWS))
def test_bad_row_raises_with_file_line_and_problem(tmp_path: Path, kind: str):
    row, words = BAD_ROWS[kind]
    path = write(tmp_path / "DoS-x.csv", GOOD_ROWS[:2] + [row] + GOOD_ROWS[2:])
    with pytest.raises(DataFormatError) as err:
        read_messages(path)
    assert str(err.value).startswith(f"{path}:4: ")  # header is line 1, the bad row line 4
    assert words in str(err.value)
    assert err.value.path == str(path) and err.value.line == 4


@pytest.mark.parametrize("kind", list(BAD_ROWS))
def test_bad_row_skipped_and_counted(tmp_path: Path, kind: str):
    row, words = BAD_ROWS[kind]
    path = write(tmp_path / "DoS-x.csv.gz", GOOD_ROWS[:2] + [row] + GOOD_ROWS[2:])
    m = read_messages(path, on_bad_rows="skip")
    assert_good_messages_except_skipped(m, 1)
    assert m.skipped_examples == [f"{path}:4: {m.skipped_examples[0].split(': ', 1)[1]}"]
    assert words.removesuffix(" (timestamps must not decrease") in m.skipped_examples[0]  # no advice to skip: it was


def assert_good_messages_except_skipped(m: Messages, skipped: int) -> None:
    """The good rows come through exactly; nothing of a bad row became 0 or NaN."""
    assert m.skipped_rows == skipped
    assert m.can_id.tolist() == [0x081, 0x110, 0x4B1, 0x0C1, 0x1FFFFFFF | EXTENDED_ID_FLAG]  # 8 digits: extended
    assert np.isfinite(m.timestamp).all() and m.timestamp.min() > 1.5e9
    assert m.label.tolist() == [0, 1, 0, 0, 1]
    assert m.payload[0].tolist() == [0x7F, 0x84, 0x69, 0, 0, 0, 0, 0x69]


def test_many_bad_rows_skipped_with_right_line_numbers(tmp_path: Path):
    rows = [GOOD_ROWS[0], "1.5,0C1,00,0,9", GOOD_ROWS[1], "1.5,0G1,00,0", GOOD_ROWS[2], "1.5,0C1",
            "x,0C1,00,0", GOOD_ROWS[3], "1.5,0C1,012,0", GOOD_ROWS[4], "1.5,0C1,00,7"]
    path = write(tmp_path / "DoS-x.csv", rows)
    m = read_messages(path, on_bad_rows="skip")
    assert_good_messages_except_skipped(m, 6)
    # lines: header 1; the rows dropped by the CSV parser (lines 3 and 7) shift nothing
    assert [e.split(": ", 1)[0] for e in m.skipped_examples] == [f"{path}:{n}" for n in (3, 5, 7, 8, 10)]
    assert "got 5" in m.skipped_examples[0] and "'0G1'" in m.skipped_examples[1]
    assert "got 2" in m.skipped_examples[2] and "timestamp 'x'" in m.skipped_examples[3]


def test_error_mode_reports_the_first_bad_line(tmp_path: Path):
    # a bad value before a row with the wrong field count: the earlier line is the one reported
    path = write(tmp_path / "x.csv", [GOOD_ROWS[0], "1.5,0G1,00,0", GOOD_ROWS[1], "1.5,0C1,00,0,9"])
    with pytest.raises(DataFormatError, match=r"x\.csv:3: arbitration_id '0G1'"):
        read_messages(path)
    # and the other way round, with a row dropped by the parser before the bad value
    path = write(tmp_path / "y.csv", [GOOD_ROWS[0], "1.5,0C1,00", GOOD_ROWS[1], "1.5,0C1,00,x"])
    with pytest.raises(DataFormatError, match=r"y\.csv:3: expected 4 fields"):
        read_messages(path)
    m = read_messages(path, on_bad_rows="skip")
    assert [e.split(": ", 1)[0] for e in m.skipped_examples] == [f"{path}:3", f"{path}:5"]


def test_skip_examples_are_capped_but_every_row_counted(tmp_path: Path):
    rows = [GOOD_ROWS[0]] + ["1.5,0C1,0,0"] * 20 + ["1.5,0C1"] * 7 + [GOOD_ROWS[1]]
    m = read_messages(write(tmp_path / "x.csv", rows), on_bad_rows="skip")
    assert len(m) == 2 and m.skipped_rows == 27 and len(m.skipped_examples) == 5


@pytest.mark.parametrize("content, words", [
    ("", "empty file"),
    ("\n\n", "empty file"),
    (HEADER + "\n", "no data rows after the header"),
    (HEADER, "no data rows after the header"),
    ("timestamp,id,data,attack\n1.0,0C1,00,0\n", "wrong or missing header 'timestamp,id,data,attack'"),
    ("1.0,0C1,00,0\n2.0,0C1,00,0\n", "wrong or missing header '1.0,0C1,00,0'"),
    ("timestamp,arbitration_id,data_field\n1.0,0C1,00\n", "wrong or missing header"),
])
def test_bad_files(tmp_path: Path, content: str, words: str):
    path = tmp_path / "x.csv"
    path.write_text(content)
    for mode in ("error", "skip"):
        with pytest.raises(DataFormatError, match=re.escape(words)) as err:
            read_messages(path, on_bad_rows=mode)
        assert str(err.value).startswith(str(path))
        if "header" in words and "no data" not in words:
            assert err.value.line == 1


def test_corrupt_gzip_and_missing_file(tmp_path: Path):
    path = tmp_path / "x.csv.gz"
    path.write_bytes(gzip.compress((HEADER + "\n" + "\n".join(GOOD_ROWS)).encode())[:-12])  # truncated
    with pytest.raises(DataFormatError, match=r"x\.csv\.gz: truncated gzip file: the compressed data ends before any "
                                              r"text could be read"):
        read_ctt_csv(path, "skip")
    # skip: the part before the cut, the loss counted as one row (it was an error in both modes)
    rows = [f"{i * 0.001:.6f},{0x100 + i % 20:03X},0011223344556677,{int(i % 50 == 0)}" for i in range(60_000)]
    whole = gzip.compress((HEADER + "\n" + "\n".join(rows) + "\n").encode())
    cut = tmp_path / "DoS-cut.csv.gz"
    cut.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(DataFormatError, match=r"DoS-cut\.csv\.gz: truncated gzip file: the compressed data ends "
                                              r"inside the stream; whatever followed line \d+ is lost; read the part "
                                              r"before the cut with --on-bad-rows skip"):
        read_ctt_csv(cut)
    m = read_ctt_csv(cut, "skip")
    assert 0 < len(m) < 60_000 and m.skipped_rows == 1 and m.skipped_unlabelled_rows == 1
    assert m.timestamp.tolist() == [round(i * 0.001, 6) for i in range(len(m))]  # every row before the cut, whole
    assert m.skipped_examples == [f"{cut}: truncated gzip file: the compressed data ends inside the stream; whatever "
                                  f"followed line {len(m) + 1} is lost (counted as 1 skipped row)"]
    # a cut zip (a DAGA trace) was read as a CSV whose header was the zip's binary start
    import zipfile

    with zipfile.ZipFile(tmp_path / "V40_03.can.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("V40_03.can.txt", "\n".join(rows))
    (tmp_path / "cut.can.zip").write_bytes((tmp_path / "V40_03.can.zip").read_bytes()[:5000])
    with pytest.raises(DataFormatError, match=r"cut\.can\.zip: a cut or damaged zip file \(5,000 bytes; the table of "
                                              r"contents at the end of a zip is missing\)"):
        read_messages(tmp_path / "cut.can.zip")
    for chunk_rows in (1000, 7):
        chunks = list(iter_ctt_csv(cut, "skip", chunk_rows=chunk_rows, block_bytes=4096))
        assert np.array_equal(np.concatenate([c.timestamp for c in chunks]), m.timestamp[:sum(map(len, chunks))])
        assert chunks[-1].skipped_rows == 1
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_messages(tmp_path / "absent.csv")
    with pytest.raises(ValueError, match="on_bad_rows must be 'error' or 'skip'"):
        read_ctt_csv(write(tmp_path / "y.csv", GOOD_ROWS), on_bad_rows="ignore")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["big.csv", "big.csv.gz"])
def test_many_blocks_keep_line_numbers(tmp_path: Path, name: str):
    """A file of several parser blocks (1 MiB each): values, skipped rows and line numbers hold
    across block boundaries, and trailing blank lines are no rows."""
    n = 60_000
    rows = [f"{1.0 + i / 1000:.6f},{i % 2048:03X},{i * 7919 % 2**64:016X},{i % 2}" for i in range(n)]
    rows[30_000] += ",9"  # line 30_002: an extra field
    rows[55_000] = rows[55_000][:-1] + "X"  # line 55_002: a bad label
    path = write(tmp_path / name, rows + ["", ""])
    m = read_messages(path, on_bad_rows="skip")
    assert len(m) == n - 2 and m.skipped_rows == 2
    assert [e.split(": ", 1)[0] for e in m.skipped_examples] == [f"{path}:30002", f"{path}:55002"]
    assert "attack 'X'" in m.skipped_examples[1]
    keep = np.ones(n, bool)
    keep[[30_000, 55_000]] = False
    i = np.arange(n)[keep]
    assert m.can_id.tolist() == (i % 2048).tolist()
    assert m.label.tolist() == (i % 2).tolist()
    assert np.array_equal(m.payload, np.array([list((int(j) * 7919 % 2**64).to_bytes(8, "big")) for j in i], np.uint8))
    assert np.array_equal(m.timestamp, np.array([float(f"{1.0 + j / 1000:.6f}") for j in i]))
    with pytest.raises(DataFormatError, match=f"{re.escape(str(path))}:30002: expected 4 fields"):
        read_messages(path)


def test_multi_member_gzip(tmp_path: Path):
    text = (HEADER + "\n" + "\n".join(GOOD_ROWS) + "\n").encode()
    path = tmp_path / "x.csv.gz"
    path.write_bytes(gzip.compress(text[:60]) + gzip.compress(text[60:]))
    assert_good_messages(read_messages(path))


# --------------------------------------------------------------------------------------
# HCRL Car-Hacking original release

def test_hcrl_car_hacking_csv(tmp_path: Path):
    path = write(tmp_path / "gear_dataset.csv", HCRL_ROWS, header=None)
    m = read_messages(path)
    assert m.can_id.tolist() == [0x316, 0x18F, 0x260, 0x2A0, 0x0]
    assert m.dlc.tolist() == [8, 8, 2, 0, 8]
    assert m.payload[0].tolist() == [0x05, 0x21, 0x68, 0x09, 0x21, 0x21, 0x00, 0x6F]
    assert m.payload[2].tolist() == [0x19, 0x21, 0, 0, 0, 0, 0, 0]
    assert m.payload[3].tolist() == [0] * 8
    assert m.label.tolist() == [0, 1, 0, 1, 1]
    assert m.timestamp[2] == 1478198376.389864
    assert m.attack_type == "gear"
    assert attack_type_from_name("Fuzzy_dataset.csv") == "fuzzing"
    assert attack_type_from_name("RPM_dataset.csv") == "rpm"


def test_hcrl_normal_run_text_form(tmp_path: Path):
    lines = [
        "Timestamp: 1479121434.850202        ID: 0350    000    DLC: 8    05 28 84 66 6d 00 00 a2",
        "Timestamp: 1479121434.850423        ID: 02c0    000    DLC: 8    14 00 00 00 00 00 00 00",
        "Timestamp: 1479121434.850664        ID: 0430    000    DLC: 2    00 01",
        "Timestamp: 1479121434.850800        ID: 04b1    000    DLC: 0",
    ]
    m = read_messages(write(tmp_path / "normal_run_data.txt", lines, header=None))
    assert m.can_id.tolist() == [0x350, 0x2C0, 0x430, 0x4B1]
    assert m.dlc.tolist() == [8, 8, 2, 0]
    assert m.payload[0].tolist() == [0x05, 0x28, 0x84, 0x66, 0x6D, 0x00, 0x00, 0xA2]
    assert m.payload[2].tolist() == [0, 1, 0, 0, 0, 0, 0, 0]
    assert m.label.tolist() == [0, 0, 0, 0]
    assert m.timestamp.tolist() == [1479121434.850202, 1479121434.850423, 1479121434.850664, 1479121434.8508]
    assert m.attack_type == "attack-free"


@pytest.mark.parametrize("kind", list(HCRL_BAD))
def test_hcrl_bad_rows(tmp_path: Path, kind: str):
    row, words = HCRL_BAD[kind]
    path = write(tmp_path / "DoS_dataset.csv", HCRL_ROWS[:3] + [row] + HCRL_ROWS[3:], header=None)
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:4: {words}")):
        read_hcrl_car_hacking(path)
    m = read_hcrl_car_hacking(path, on_bad_rows="skip")
    assert m.skipped_rows == 1 and m.skipped_examples[0].startswith(f"{path}:4: {words}")
    assert m.can_id.tolist() == [0x316, 0x18F, 0x260, 0x2A0, 0x0] and m.label.tolist() == [0, 1, 0, 1, 1]


def test_hcrl_text_bad_rows_and_empty(tmp_path: Path):
    lines = ["Timestamp: 1479121434.850202        ID: 0350    000    DLC: 8    05 28 84 66 6d 00 00 a2",
             "Timestamp: 1479121434.850423        ID: 02c0    000    DLC: 3    14 00",
             "garbage",
             "Timestamp: 1479121434.850664        ID: 0430    000    DLC: 2    00 01"]
    path = write(tmp_path / "normal_run_data.txt", lines, header=None)
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:2: DLC does not match")):
        read_messages(path)
    m = read_messages(path, on_bad_rows="skip")
    assert m.skipped_rows == 2 and m.can_id.tolist() == [0x350, 0x430]
    assert m.skipped_examples[1].startswith(f"{path}:3: unrecognised row 'garbage'")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataFormatError, match="empty file"):
        read_hcrl_car_hacking(tmp_path / "empty.txt")


# --------------------------------------------------------------------------------------
# python-can logger files


@pytest.mark.parametrize("gz", [False, True])
def test_candump_log_sample(tmp_path: Path, gz: bool):
    path = tmp_path / ("drive.log.gz" if gz else "drive.log")
    path.write_bytes(gzip.compress(CANDUMP.encode()) if gz else CANDUMP.encode())
    m = read_messages(path, channel="*")
    # the remote frame (123#R) is dropped; logger files carry no labels
    assert m.can_id.tolist() == [0x044, 0x110, 0x7FF, 0x18FEF100 | EXTENDED_ID_FLAG]
    assert m.dlc.tolist() == [5, 0, 8, 2]
    assert m.payload[0].tolist() == [0x2A, 0x36, 0x6C, 0x2B, 0xBA, 0, 0, 0]
    assert m.payload[2].tolist() == [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77]
    assert m.timestamp.tolist() == [1436509052.249713, 1436509052.250001, 1436509052.2505, 1436509052.252]
    assert m.label.tolist() == [0, 0, 0, 0] and m.attack_type == "attack-free"
    only = read_logger_file(path, channel="vcan1")
    assert only.can_id.tolist() == [0x7FF]
    with pytest.raises(DataFormatError, match="no data frames on channel 'can9'"):
        read_logger_file(path, channel="can9")


def test_logger_unknown_format(tmp_path: Path):
    (tmp_path / "x.mf4").write_text("")
    with pytest.raises(DataFormatError, match="unknown logger format '.mf4'"):
        read_logger_file(tmp_path / "x.mf4")


def test_real_candump_file():
    require(REAL_CANDUMP.is_file(), f"{REAL_CANDUMP} not found")
    m = read_messages(REAL_CANDUMP, channel="*")
    assert len(m) == 135_468  # every frame of the minute, all four channels
    assert np.isfinite(m.timestamp).all() and m.timestamp[0] == 46408.584930 and m.timestamp[-1] == 46468.577630
    assert m.can_id[0] == 0x260 and m.payload[0].tolist() == [0x08, 0xFF, 0xFB, 0x00, 0x00, 0x00, 0x18, 0x84]
    assert m.dlc.max() <= 8 and int((m.dlc == 0).sum()) == 520
    past_dlc = np.arange(8)[None, :] >= m.dlc[:, None]
    assert (m.payload[past_dlc] == 0).all()
    assert len(read_logger_file(REAL_CANDUMP, channel="can0")) == 53_800
