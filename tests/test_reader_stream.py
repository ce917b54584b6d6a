"""HCRL Car-Hacking files and column-mapped CSVs read in chunks (readers.iter_hcrl_car_hacking,
columns.iter_mapped): joined, the chunks equal the whole read (read_hcrl_car_hacking, read_mapped)
array by array, with the same per-message types, skip counts and file:line errors, however the
text is cut (pieces from one line up, chunks from one message up; gzip, zip, CRLF, blank lines at
a piece's end, a blank line before a rejected row); time going backwards across a piece boundary
is caught naming the earlier line. ``kdkit data prepare`` streams both (iter_messages,
DatasetSource.chunks), and a few million mapped rows prepare in bounded memory into the store the
whole read gives.

Run: .venv/bin/python -m pytest tests/test_reader_stream.py -q
"""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DAGA_HEADER, HCRL_BAD, HCRL_ROWS, ROAD_HEADER, daga_rows, require, write_zip

import kdkit.data.columns as columns
import kdkit.data.datasets as ds
import kdkit.data.readers as readers
from kdkit.data.columns import PRESETS, ColumnMapping, iter_mapped, read_mapped
from kdkit.data.datasets import PrepareConfig, prepare
from kdkit.data.graphs import GraphSet
from kdkit.data.readers import (
    CHUNK_ROWS,
    DataFormatError,
    concat_messages,
    iter_hcrl_car_hacking,
    iter_messages,
    read_hcrl_car_hacking,
    slices,
)
from kdkit.data.sources import DatasetSource

ROOT = Path(__file__).resolve().parent.parent
OTIDS_LIKE = ColumnMapping(timestamp=0, can_id=1, payload=2, time_unit="ms", id_base=10, header=False,
                           delimiter="whitespace", label=3, label_map={"R": "normal", "T": "attack"})
"""An OTIDS-like capture: whitespace-separated, no header, decimal IDs, milliseconds, R/T labels."""


# ------------------------------------------------------------------ the files, each with every kind of bad row

def _write(path: Path, lines: list[str], crlf: bool = False, gz: bool = False, tail: str = "\n") -> Path:
    end = "\r\n" if crlf else "\n"
    data = (end.join(lines) + tail.replace("\n", end)).encode("latin-1")  # latin-1: lines may hold a byte >= 0x80
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _spread(rows: list[str], bad: list[str], seed: int) -> list[str]:
    """``bad`` rows inserted at random places of ``rows`` (not first: the first line decides a form)."""
    rng = np.random.default_rng(seed)
    out = list(rows)
    for b in bad:
        out.insert(int(rng.integers(1, len(out))), b)
    return out


def hcrl_rows(n: int, seed: int = 0) -> list[str]:
    """HCRL Car-Hacking CSV rows in the layout of conftest.HCRL_ROWS: random IDs and DLCs, R/T flags."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        dlc = int(rng.choice([0, 2, 5, 8, 8, 8]))
        data = "".join(f"{int(b):02x}," for b in rng.integers(0, 256, dlc))
        cid = ["0316", "018f", "0260", "02a0", "0000"][int(rng.integers(0, 5))]
        rows.append(f"{1478198376.389427 + i * 0.0005:.6f},{cid},{dlc},{data}{'T' if rng.random() < 0.2 else 'R'}")
    return rows


def hcrl_csv(tmp: Path, crlf: bool = False, gz: bool = False) -> Path:
    bad = [row for row, _ in HCRL_BAD.values()]
    bad += ["", "  ", "1478198376.4,03\xff6,2,05,21,T", "1478198376.45,0316,2,05,21"]
    rows = _spread(HCRL_ROWS + hcrl_rows(400), bad, 1)
    return _write(tmp / "hcrl" / ("DoS_dataset.csv" + (".gz" if gz else "")), rows, crlf, gz, tail="\n\n \n")


def hcrl_text(tmp: Path) -> Path:
    rng = np.random.default_rng(2)
    lines = []
    for i in range(400):
        dlc = int(rng.choice([0, 2, 8]))
        data = " ".join(f"{int(b):02x}" for b in rng.integers(0, 256, dlc))
        lines.append(f"Timestamp: {1479121434.850202 + i * 0.0002:.6f}        ID: {['0350', '02c0', '04b1'][i % 3]}"
                     f"    000    DLC: {dlc}    {data}")
    bad = ["garbage", "Timestamp: 1479121434.850423        ID: 02c0    000    DLC: 3    14 00", "", "   ",
           "Timestamp: 1479121434.0        ID: 02c0    000    DLC: 0", "Timestamp: x        ID: 02c0    000    DLC: 0",
           "Timestamp: 1479121434.9        ID: 0800    000    DLC: 0"]
    return _write(tmp / "hcrl" / "normal_run_data.txt", _spread(lines, bad, 3), tail="\n\n")


def daga_zip(tmp: Path, crlf: bool = False) -> Path:
    bad = ["0.05,1D0,64,00,0,False", "x,1D0,64,00,0,False", "0.2,ZZ,64,00,0,True", "0.3,10,63,00,0,False",
           "0.3,10,64,00,0,Maybe", "1,2", "", "", "   ", "0.4,10,64,0G,0,True", "-1,10,64,00,0,False"]
    rows = _spread(daga_rows(500, attack_every=7), bad, 4)
    if crlf:
        rows = [r + "\r" for r in rows]
    path = write_zip(tmp / "daga" / "infected" / "DenialOfService" / f"drive{'-crlf' if crlf else ''}.can.zip",
                     DAGA_HEADER, rows)
    return path


def road_csv(tmp: Path, gz: bool = False) -> Path:
    rows = [f"{i * 0.001:.3f},{['0C1', '1A0', '2B0'][i % 3]},{i % 256:02x},20,30,40,50,60,70,80,"
            f"{'Fuzzing' if 100 <= i < 140 else 'Masquerade' if 250 <= i < 300 else 'Benign'}" for i in range(450)]
    bad = ["0.001, 1A0 ,1,2,,,,,,,Benign", "0.0,0C1,10,,30,,,,,,Benign", "0.5,0C1,10,20,30,40,50,60,70,80,Spoofed",
           "0.5,00000123,00,00,00,00,00,00,00,00,Masquerade", "0.2,0C1,1FF,00,00,00,00,00,00,00,Fuzzing", ",,,,,,,,,,",
           "", "0.3,0C1", "0.2,0C1,10,20,30,40,50,60,70,80,Fuzzing,extra"]
    name = "fuzzing_attack_1.csv" + (".gz" if gz else "")
    return _write(tmp / "road" / name, [ROAD_HEADER, *_spread(rows, bad, 5)], gz=gz)


def otids_txt(tmp: Path) -> Path:
    rows = [f"{1000 + i * 0.5:g}  {[193, 416, 512][i % 3]}\t{'00' * (i % 8 + 1)}  {'T' if i % 11 == 0 else 'R'}"
            for i in range(450)]
    bad = ["1100 2048 00 R", "1101 193 0 R", "1102\t193 00 X", "  ", "999 193 00 R", "1103 193", ""]
    return _write(tmp / "otids" / "gear" / "Gear_capture.txt.gz", _spread(rows, bad, 6), gz=True)


FAMILIES = {
    "hcrl-csv": (hcrl_csv, "hcrl"),
    "hcrl-csv-crlf-gz": (lambda tmp: hcrl_csv(tmp, crlf=True, gz=True), "hcrl"),
    "hcrl-text": (hcrl_text, "hcrl"),
    "daga-zip": (daga_zip, PRESETS["daga"]),
    "daga-zip-crlf": (lambda tmp: daga_zip(tmp, crlf=True), PRESETS["daga"]),
    "road-csv": (road_csv, PRESETS["road"]),
    "road-csv-gz": (lambda tmp: road_csv(tmp, gz=True), PRESETS["road"]),
    "otids-like-gz": (otids_txt, OTIDS_LIKE),
}


def whole_read(path: Path, how, mode: str):
    return read_hcrl_car_hacking(path, mode) if how == "hcrl" else read_mapped(path, how, mode)


def streamed(path: Path, how, mode: str, chunk_rows: int, block_bytes: int | None = None):
    if how == "hcrl":
        return iter_hcrl_car_hacking(path, mode, chunk_rows=chunk_rows, block_bytes=block_bytes)
    return iter_mapped(path, how, mode, chunk_rows=chunk_rows, block_bytes=block_bytes)


def outcome(read) -> tuple | str:
    """The arrays and counts of the Messages ``read()`` gives (chunks joined), or its error's text."""
    try:
        m = read()
    except DataFormatError as err:
        return str(err)
    if isinstance(m, list):
        m = concat_messages(m)
    return (m.timestamp.tolist(), m.can_id.tolist(), m.dlc.tolist(), m.payload.tolist(), m.label.tolist(),
            None if m.row_type is None else m.row_type.tolist(), m.type_names, m.attack_type, m.source,
            m.skipped_rows, m.skipped_examples, m.skipped_attack_rows, m.skipped_unlabelled_rows,
            None if m.restart is None else np.flatnonzero(m.restart).tolist(), m.timeline_restarts,
            m.timeline_examples)


# (chunk_rows, block_bytes): every chunk size asked for, pieces of one line (1), cut anywhere (97) and the default
CUTS = [(1, 97), (7, 1), (333, 251), (CHUNK_ROWS, None), (7, None), (333, 1)]


@pytest.mark.parametrize("mode", ["error", "skip"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_chunks_equal_the_whole_read(tmp_path: Path, family: str, mode: str):
    make, how = FAMILIES[family]
    path = make(tmp_path)
    want = outcome(lambda: whole_read(path, how, mode))
    if mode == "error":
        assert isinstance(want, str) and want.startswith(f"{path}:"), want  # every file has bad rows
    else:
        assert isinstance(want, tuple) and want[9] >= 5 and len(want[0]) > 300, want[9:]
    for chunk_rows, block_bytes in CUTS:
        chunks: list = []

        def read():
            chunks.extend(streamed(path, how, mode, chunk_rows, block_bytes))
            return chunks

        got = outcome(read)
        assert got == want, (chunk_rows, block_bytes, got if isinstance(got, str) else got[9:])
        if mode == "skip":
            assert all(len(c) == chunk_rows for c in chunks[:-1]) and len(chunks[-1]) <= chunk_rows
            whole = whole_read(path, how, mode)
            for c in chunks:  # every chunk is of the recording; the types are exact in every chunk
                assert (c.source, c.type_names, c.row_type is None) == (whole.source, whole.type_names,
                                                                          whole.row_type is None)


def test_per_message_types_and_the_recording_type(tmp_path: Path):
    """ROAD names the attack per message: the chunks carry exact row types; the recording's type
    (the types of the rows kept) is known at the end, on the last chunk, as for the skip counts."""
    path = road_csv(tmp_path)
    whole = read_mapped(path, PRESETS["road"], "skip")
    assert whole.attack_type == "mixed" and whole.type_names == ("normal", "fabrication", "fuzzing", "masquerade")
    assert set(whole.message_attack_type.tolist()) == {"normal", "fuzzing", "masquerade"}
    chunks = list(iter_mapped(path, PRESETS["road"], "skip", chunk_rows=50, block_bytes=97))
    assert chunks[-1].attack_type == "mixed"
    assert np.array_equal(np.concatenate([c.message_attack_type for c in chunks]), whole.message_attack_type)
    later = _write(tmp_path / "road" / "attacks_later.csv", [ROAD_HEADER] + [
        f"{i * 0.001:.3f},0C1,00,00,00,00,00,00,00,00,{'Fuzzing' if 100 <= i < 110 else 'Benign'}" for i in range(120)])
    chunks = list(iter_mapped(later, PRESETS["road"], chunk_rows=30, block_bytes=64))
    # the last row waits for the next (a glitch?) until the end: the last chunk holds it
    assert [c.attack_type for c in chunks] == ["attack-free", "attack-free", "attack-free", "fuzzing"]
    assert read_mapped(later, PRESETS["road"]).attack_type == "fuzzing" and len(chunks[-1]) == 30
    one_type = _write(tmp_path / "road" / "DoS_attack.csv", [ROAD_HEADER] + [
        f"{i * 0.001:.3f},0C1,00,00,00,00,00,00,00,00,{1 if i % 4 == 0 else 0}" for i in range(100)])
    chunks = list(iter_mapped(one_type, PRESETS["road"], chunk_rows=30))
    assert chunks[-1].attack_type == read_mapped(one_type, PRESETS["road"]).attack_type == "DoS"  # "1": the file's name


BAD_MAPPED = {  # a DAGA row -> the words of its error
    "rejected (2 fields)": ("1,2", "expected 6 fields, got 2: '1,2'"),
    "blank but not empty": ("   ", "expected 6 fields, got 1"),
    "label": ("0.3,10,64,00,0,Maybe", "ANOMALY 'Maybe': not a value of the mapping's label_map"),
    "ID": ("0.3,ZZ,64,00,0,False", "CAN_ID 'ZZ': not a hex CAN ID"),
    "backwards": ("0.0001,10,64,00,0,False", "timestamp '0.0001' goes backwards: earlier than "),
}


@pytest.mark.parametrize("kind", list(BAD_MAPPED))
def test_an_error_names_the_same_line_across_pieces(tmp_path: Path, kind: str):
    """One bad row after empty lines (no rows for pyarrow) and many piece boundaries: the streamed
    read raises the whole read's error, naming the file's physical line."""
    row, words = BAD_MAPPED[kind]
    rows = daga_rows(120)
    rows[30:30] = ["", ""]  # empty lines: pyarrow numbers rows without them
    rows.insert(90, row)  # item 91, after the header: line 92
    path = write_zip(tmp_path / "DoS" / "x.can.zip", DAGA_HEADER, rows)
    with pytest.raises(DataFormatError) as whole:
        read_mapped(path, PRESETS["daga"])
    assert str(whole.value).startswith(f"{path}:92: {words}"), str(whole.value)
    for chunk_rows, block_bytes in ((1, 1), (7, 64), (200, None)):
        with pytest.raises(DataFormatError) as err:
            list(iter_mapped(path, PRESETS["daga"], chunk_rows=chunk_rows, block_bytes=block_bytes))
        assert str(err.value) == str(whole.value)


@pytest.mark.parametrize("kind", list(HCRL_BAD))
def test_an_hcrl_error_names_the_same_line_across_pieces(tmp_path: Path, kind: str):
    row, _ = HCRL_BAD[kind]
    rows = hcrl_rows(60)
    rows.insert(40, row)  # line 41
    rows[45:45] = ["", " "]  # blank lines in the middle are rows (bad ones), unlike those at the end
    path = _write(tmp_path / "DoS_dataset.csv", rows, tail="\n \n\n")
    with pytest.raises(DataFormatError) as whole:
        read_hcrl_car_hacking(path, "error")
    skipped = read_hcrl_car_hacking(path, "skip")
    for chunk_rows, block_bytes in ((1, 1), (5, 40), (100, None)):
        with pytest.raises(DataFormatError) as err:
            list(iter_hcrl_car_hacking(path, "error", chunk_rows=chunk_rows, block_bytes=block_bytes))
        assert str(err.value) == str(whole.value) and str(err.value).startswith(f"{path}:41: ")
        got = outcome(lambda: list(iter_hcrl_car_hacking(path, "skip", chunk_rows=chunk_rows, block_bytes=block_bytes)))
        assert got == outcome(lambda: skipped)
    assert skipped.skipped_rows == 3 and [e.split(": ")[0] for e in skipped.skipped_examples] == \
        [f"{path}:41", f"{path}:46", f"{path}:47"]


def test_time_going_backwards_across_a_piece_boundary(tmp_path: Path):
    """The row going back lies pieces after the row it is earlier than: the message names that line."""
    rows = hcrl_rows(80)
    rows[60] = "1478198376.400000,0316,2,05,21,R"  # earlier than row 59's ...418927, and many after it
    path = _write(tmp_path / "Fuzzy_dataset.csv", rows)
    with pytest.raises(DataFormatError) as whole:
        read_hcrl_car_hacking(path)
    assert str(whole.value).startswith(f"{path}:61: timestamp '1478198376.400000' goes backwards: earlier than "
                                       f"'1478198376.418927' on line 60")
    for block_bytes in (1, 50, 200):
        with pytest.raises(DataFormatError) as err:
            list(iter_hcrl_car_hacking(path, chunk_rows=3, block_bytes=block_bytes))
        assert str(err.value) == str(whole.value)
    # a spike: one row stamped in the future, every row after it earlier. It is the row named (the
    # error) or skipped, alone: it cost the 59 rows after it, each "going backwards" against it
    rows = daga_rows(100)
    rows[40] = "5.0,10,64,00,0,False"
    path = write_zip(tmp_path / "DoS" / "spike.can.zip", DAGA_HEADER, rows)
    for block_bytes in (1, 7, None):  # 1: every line a piece of its own, so the spike waits for the next piece
        with pytest.raises(DataFormatError, match=r"spike\.can\.zip:42: timestamp '5\.0' is out of line: later than "
                                                  r"the row after it \('0\.041' on line 43\), which follows on from "
                                                  r"the row before it \('0\.039' on line 41\)"):
            list(iter_mapped(path, PRESETS["daga"], chunk_rows=4, block_bytes=block_bytes))
    want = outcome(lambda: read_mapped(path, PRESETS["daga"], "skip"))
    assert want[9] == 1 and 5.0 not in want[0] and len(want[0]) == 99
    for block_bytes in (1, 7, None):
        assert outcome(lambda: list(iter_mapped(path, PRESETS["daga"], "skip", chunk_rows=4,
                                                block_bytes=block_bytes))) == want
    # two rows in the future are no lone glitch: the 58 rows after them, behind them and in order, are a
    # new timeline (they were skipped, "going backwards", before the readers knew a restarted clock)
    rows[41] = "5.1,10,64,00,0,False"
    path = write_zip(tmp_path / "DoS" / "spike2.can.zip", DAGA_HEADER, rows)
    want = outcome(lambda: read_mapped(path, PRESETS["daga"], "error"))
    assert want[9] == 0 and len(want[0]) == 100 and want[0][41:43] == [5.1, 0.042]
    assert want[13] == [42] and want[14] == 1
    assert want[15] == [f"{path} line 44: the clock goes back from '5.1' (line 43) to '0.042' and stays there: a new "
                        f"timeline starts"]
    for block_bytes in (1, 7, None):
        assert outcome(lambda: list(iter_mapped(path, PRESETS["daga"], "skip", chunk_rows=4,
                                                block_bytes=block_bytes))) == want


def test_empty_truncated_and_header_only_files(tmp_path: Path):
    cases = [(_write(tmp_path / "empty_dataset.csv", [" ", ""]), "hcrl", "empty file"),
             (_write(tmp_path / "head.csv", [ROAD_HEADER, "", ""]), PRESETS["road"], "no data rows after the header"),
             (_write(tmp_path / "blank.csv", ["", "  "]), PRESETS["road"], "empty file"),
             (_write(tmp_path / "x.csv", ["Time,Id,Label", "0.1,0C1,Benign"]), PRESETS["road"],
              "x.csv:1: column 'Byte1' not in the header")]
    for path, how, words in cases:
        for chunk_rows, block_bytes in ((1, 1), (CHUNK_ROWS, None)):
            with pytest.raises(DataFormatError, match=words) as err:
                list(streamed(path, how, "skip", chunk_rows, block_bytes))
            assert str(err.value) == outcome(lambda: whole_read(path, how, "skip"))
    packed = gzip.compress("\n".join(hcrl_rows(3000)).encode())
    cut = tmp_path / "Fuzzy_cut.csv.gz"
    cut.write_bytes(packed[:len(packed) // 2])
    with pytest.raises(DataFormatError, match=r"corrupt gzip data"):
        read_hcrl_car_hacking(cut)
    with pytest.raises(DataFormatError, match=r"truncated gzip file: the compressed data ends inside the stream"):
        list(iter_hcrl_car_hacking(cut, "skip", chunk_rows=100, block_bytes=4096))
    with pytest.raises(ValueError, match="on_bad_rows"):
        iter_mapped(cut, PRESETS["road"], "ignore")  # checked at the call, before a chunk is asked for
    with pytest.raises(ValueError, match="chunk_rows must be >= 1"):
        iter_hcrl_car_hacking(cut, chunk_rows=0)


def test_one_message_per_line_whatever_the_quotes(tmp_path: Path):
    """Quotes around a field are dropped, but hide no delimiter and no line break (pyarrow joined a
    quoted line break into one row when the text was parsed whole; a piece boundary could not), and
    text that is not UTF-8 is an error naming its line, however the file is cut."""
    rows = [f"{i * 0.001:.3f},0C1,{i % 256:02x},20,30,40,50,60,70,80,Benign" for i in range(40)]
    rows[5] = '"0.005", " 0C1 " ,"05",20,30,40,50,60,70,80,"Benign"'
    rows[10:11] = ['0.010,"0C1', '",10,20,30,40,50,60,70,80,Benign']  # a quoted line break: lines 12 and 13
    rows[20] = '0.0205,"0C1,1",20,,,,,,,Benign'  # a quoted delimiter: the ID is '"0C1'
    path = _write(tmp_path / "quotes.csv", [ROAD_HEADER, *rows])
    whole = read_mapped(path, PRESETS["road"], "skip")
    assert len(whole) == 38 and whole.payload[5, 0] == 5 and whole.can_id[5] == 0x0C1
    want = [f"{path}:12: expected 11 fields, got 2: '0.010,\"0C1'", f"{path}:13: expected 11 fields, got 10: '\",10,",
            f"{path}:22: Id '\"0C1': not a hex CAN ID"]
    assert len(whole.skipped_examples) == 3
    assert all(e.startswith(w) for e, w in zip(whole.skipped_examples, want)), whole.skipped_examples
    for chunk_rows, block_bytes in ((1, 1), (7, 50)):
        for mode in ("error", "skip"):
            assert outcome(lambda: list(iter_mapped(path, PRESETS["road"], mode, chunk_rows, block_bytes))) == \
                outcome(lambda: read_mapped(path, PRESETS["road"], mode))
    text = ("\n".join([ROAD_HEADER, *rows[:30]]) + "\n").encode() + b"0.031,0C1,\xff0,,,,,,,,Benign\n"
    path.write_bytes(text)  # not UTF-8: an error in both modes, after the bad rows before it (line 12 first)
    for mode, where in (("error", ":12: expected 11 fields"), ("skip", ":32: bytes that are not UTF-8 text")):
        with pytest.raises(DataFormatError, match=where):
            read_mapped(path, PRESETS["road"], mode)
        for chunk_rows, block_bytes in ((3, 64), (100, None)):
            assert outcome(lambda: list(iter_mapped(path, PRESETS["road"], mode, chunk_rows, block_bytes))) == \
                outcome(lambda: read_mapped(path, PRESETS["road"], mode))


DAGA_ROOT = ROOT.parent / "shared" / "data" / "daga-volvo-v40"


def test_real_daga_traces_streamed(tmp_path: Path):
    """The published DAGA Volvo V40 traces (zips of ~250 k rows): streamed, the same messages,
    types and counts as read whole."""
    require(DAGA_ROOT.is_dir(), f"{DAGA_ROOT} not found (the DAGA Volvo V40 traces, see docs/datasets/)")
    zips = sorted(DAGA_ROOT.rglob("*.zip"))
    assert len(zips) >= 2
    for z in zips[:3]:
        want = outcome(lambda: read_mapped(z, PRESETS["daga"], "skip"))
        assert isinstance(want, tuple) and len(want[0]) > 200_000
        assert outcome(lambda: list(iter_messages(z, "skip", chunk_rows=100_000))) == want, z
    z = zips[-1]
    assert outcome(lambda: list(iter_mapped(z, PRESETS["daga"], chunk_rows=4999, block_bytes=65_537))) == \
        outcome(lambda: read_mapped(z, PRESETS["daga"]))


def test_prepare_and_iter_messages_stream_every_family(tmp_path: Path, monkeypatch):
    """Nothing is read whole any more: with the whole-file readers' byte sources made to fail,
    iter_messages (by file name and header) and DatasetSource.chunks (by format or mapping)
    still hand out the whole read's messages."""
    files = {name: (make(tmp_path), how) for name, (make, how) in FAMILIES.items()}
    want = {name: outcome(lambda: whole_read(path, how, "skip")) for name, (path, how) in files.items()}

    def read_whole(path, *args):
        raise AssertionError(f"{path} read whole")

    monkeypatch.setattr(readers, "_open_bytes", read_whole)
    monkeypatch.setattr(columns, "_open_text", read_whole)
    formats = {"hcrl": ["auto", "hcrl-car-hacking", "otids"], "daga": ["auto", "daga"], "road": ["auto", "road"],
               "otids": []}
    for name, (path, how) in files.items():
        for fmt in formats[name.split("-")[0]]:
            source = DatasetSource(name="x", root=tmp_path, train_attack_free=[], train_with_attacks=[], tests={},
                                   format=fmt)
            assert outcome(lambda: list(source.chunks(path, "skip", chunk_rows=64))) == want[name], (name, fmt)
        if how != "hcrl":
            source = DatasetSource(name="x", root=tmp_path, train_attack_free=[], train_with_attacks=[], tests={},
                                   mapping=how)
            assert outcome(lambda: list(source.chunks(path, "skip", chunk_rows=64))) == want[name], name
        if how != OTIDS_LIKE:  # known by name and first line (or header)
            assert outcome(lambda: list(iter_messages(path, "skip", chunk_rows=64))) == want[name], name


def _mapped_dataset(root: Path) -> Path:
    """A dataset folder of ROAD and DAGA files (known by their header) and an HCRL CSV."""
    base = root / "mapped"
    road = [f"{i * 0.0004:.4f},{['0C1', '1A0', '2B0', '3C0'][i % 4]},{i % 256:02x},20,30,,,,,,"
            f"{'Fuzzing' if 500 <= i < 560 else 'Masquerade' if 1200 <= i < 1213 else 'Benign'}" for i in range(2400)]
    _write(base / "train_02_with_attacks" / "road-1.csv.gz", [ROAD_HEADER, *road], gz=True)
    write_zip(base / "train_01_attack_free" / "drive.can.zip", DAGA_HEADER, daga_rows(1900))
    write_zip(base / "test_01_known" / "DoS-2.can.zip", DAGA_HEADER, daga_rows(1300, attack_every=9))
    _write(base / "test_02_unknown" / "Fuzzy_dataset.csv", hcrl_rows(1700, 8))
    return base


def _assert_equal_sets(a: GraphSet, b: GraphSet, where: str) -> None:
    for t in GraphSet.TENSORS:
        assert getattr(a, t).dtype == getattr(b, t).dtype and torch.equal(getattr(a, t), getattr(b, t)), (where, t)
    assert (a.attack_types, a.files) == (b.attack_types, b.files), where


def _read_whole_and_slice(self, path: Path, on_bad_rows="error", chunk_rows: int = CHUNK_ROWS):
    """DatasetSource.chunks as it was for these families: the file read whole, handed out in slices."""
    return slices(self.read(path, on_bad_rows), chunk_rows)


def test_streamed_store_equals_the_whole_read(tmp_path: Path, monkeypatch):
    """Pieces of 97 bytes, chunks of 61 messages: windows cross every kind of boundary; the stores
    equal those of the files read whole, tensor for tensor (per-message attack types included)."""
    base = _mapped_dataset(tmp_path)
    config = PrepareConfig(window=20, stride=15, val_fraction=0.2)
    monkeypatch.setattr(readers, "_TEXT_PIECE", 97)
    monkeypatch.setattr(ds, "PREPARE_CHUNK_ROWS", 61)
    streamed_ds = prepare(str(base), config, cache_dir=tmp_path / "streamed")
    monkeypatch.setattr(DatasetSource, "chunks", _read_whole_and_slice)
    monkeypatch.setattr(ds, "PREPARE_CHUNK_ROWS", 10 ** 6)
    whole_ds = prepare(str(base), config, cache_dir=tmp_path / "whole")
    assert streamed_ds.vocab.to_list() == whole_ds.vocab.to_list() and list(streamed_ds.splits) == list(whole_ds.splits)
    for name in whole_ds.splits:
        _assert_equal_sets(streamed_ds.splits[name], whole_ds.splits[name], name)
    assert streamed_ds.info["messages_read"] == whole_ds.info["messages_read"] == 2400 + 1900 + 1300 + 1700
    assert "fuzzing" in streamed_ds.splits["train"].attack_types + streamed_ds.splits["val"].attack_types


BENCH = ROOT / "benchmarks" / "prep_memory_mapped.py"


def _measure(dataset: Path, cache: Path, *extra: str) -> dict:
    out = subprocess.run([sys.executable, str(BENCH), "measure", str(dataset), str(cache), *extra], check=True,
                         cwd=ROOT, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_peak_memory_stays_bounded_on_a_large_mapped_csv(tmp_path: Path, monkeypatch):
    """2 M ROAD rows (byte columns, .csv.gz, 38 MB): streamed, the peak RSS above the imports stays
    under 250 MiB (144 MiB measured; read whole: 857 MiB, growing with the file); the stores are
    byte for byte those of the file read whole (prepared here, in this process)."""
    base = tmp_path / "big"
    subprocess.run([sys.executable, str(BENCH), "make", str(base / "train_02_with_attacks" / "DoS-big.csv.gz"),
                    "2000000", "--format", "road"], check=True, cwd=ROOT)
    result = _measure(base, tmp_path / "cache")
    assert result["messages"] == 2_000_000 and not result["read_whole"]
    assert result["peak_above_imports_mib"] < 250, result
    monkeypatch.setattr(DatasetSource, "chunks", _read_whole_and_slice)
    whole = prepare(str(base), cache_dir=tmp_path / "cache-whole")
    assert whole.info["messages_read"] == 2_000_000
    stores = sorted(whole.cache_dir.glob("*.store"))
    assert [p.name for p in stores] == ["train.store", "val.store"]
    for store in stores:
        assert next((tmp_path / "cache").rglob(store.name)).read_bytes() == store.read_bytes(), store.name
