"""Issue 14, "nothing silently wrong": input checks and verified caches, on tiny files written here.

- time never goes backwards (readers: file:line or a counted skip; build_graphs refuses it),
- IDs above 0x7FF need 8 hex digits (or a logger's extended flag),
- bytes that are not UTF-8/ASCII are bad rows, never an "Exception ignored" and a crash,
- skipped rows are reported per file with how many were attack rows,
- ``on_bad_rows`` is a run-schema key, so train/evaluate reuse a store prepared with skip,
- every graph-store file is checksummed: a damaged one is rebuilt, never loaded.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import re
from dataclasses import replace
from pathlib import Path

import can
import numpy as np
import pytest
import torch

from kdkit.cli.main import main
from kdkit.config import add_config_arguments, make_config, overrides_from_args, validate_overrides
from kdkit.data.datasets import PrepareConfig, prepare
from kdkit.data.graphs import GraphSet, GraphStoreError, IdVocab, build_graphs
from kdkit.data.readers import EXTENDED_ID_FLAG, DataFormatError, Messages, read_messages
from kdkit.data.store import read_header
from kdkit.workflows.run import checkpoint_data, prepare_config

HEADER = "timestamp,arbitration_id,data_field,attack\n"


def write_csv(path: Path, rows: list[str], raw_tail: bytes = b"") -> Path:
    """A can-train-and-test CSV (gzip when the name ends in .gz); ``raw_tail`` is appended as bytes."""
    data = (HEADER + "".join(r + "\n" for r in rows)).encode() + raw_tail
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


# --------------------------------------------------------------------------------------
# 1. time never goes backwards


def test_backwards_timestamp_names_both_lines_and_values(tmp_path: Path):
    path = write_csv(tmp_path / "DoS-x.csv", ["1.0,0C1,00,0", "2.0,0C1,00,0", "3.0,0C1,00,0", "1.5,0C1,00,1",
                                              "4.0,0C1,00,0"])
    with pytest.raises(DataFormatError) as err:
        read_messages(path)
    assert err.value.line == 5 and err.value.path == str(path)
    assert str(err.value).startswith(f"{path}:5: timestamp '1.5' goes backwards: earlier than '3.0' on line 4")
    assert "on_bad_rows='skip'" in str(err.value)  # what to do


def test_a_lone_glitch_is_named_and_skipped_alone(tmp_path: Path):
    """One row later than the row after it, which follows on from the row before: that row is out
    of line, not every row after it (a timestamp with a wrong digit cost the rest of the file)."""
    path = write_csv(tmp_path / "DoS-x.csv", ["1.0,0C1,00,0", "2.0,0C1,00,1", "9.0,0C1,00,1", "2.5,0C1,00,1",
                                              "3.0,0C1,00,0"])
    with pytest.raises(DataFormatError) as err:
        read_messages(path)
    assert str(err.value).startswith(f"{path}:4: timestamp '9.0' is out of line: later than the row after it "
                                     f"('2.5' on line 5), which follows on from the row before it ('2.0' on line 3) "
                                     "(a glitched timestamp, or rows out of order: correct, move or delete that row")
    m = read_messages(path, on_bad_rows="skip")
    assert m.timestamp.tolist() == [1.0, 2.0, 2.5, 3.0] and m.label.tolist() == [0, 1, 1, 0]
    assert m.skipped_rows == 1 and m.skipped_attack_rows == 1
    assert m.skipped_examples == [f"{path}:4: timestamp '9.0' is out of line: later than the row after it ('2.5' on "
                                  f"line 5), which follows on from the row before it ('2.0' on line 3)"]
    first = write_csv(tmp_path / "first.csv", ["7.0,0C1,00,0", "1.0,0C1,00,0", "2.0,0C1,00,0"])
    m = read_messages(first, on_bad_rows="skip")
    assert m.timestamp.tolist() == [1.0, 2.0] and "'7.0' is out of line: later than the row after it ('1.0' on " \
        "line 3) (the first row)" in m.skipped_examples[0]


def test_backwards_rows_skipped_and_counted_kept_times_never_decrease(tmp_path: Path):
    # lines 4 and 5 jump ahead (no lone glitch); lines 6 and 7 are earlier; line 8 is at the same time (allowed)
    rows = ["1.0,0C1,00,0", "2.0,0C1,00,1", "8.0,0C1,00,0", "9.0,0C1,00,0", "2.5,0C1,00,1", "3.0,0C1,00,0",
            "9.0,0C1,00,0", "10.0,0C1,00,1"]
    m = read_messages(write_csv(tmp_path / "DoS-x.csv.gz", rows), on_bad_rows="skip")
    assert m.timestamp.tolist() == [1.0, 2.0, 8.0, 9.0, 9.0, 10.0]
    assert m.label.tolist() == [0, 1, 0, 0, 0, 1]
    assert m.skipped_rows == 2 and m.skipped_attack_rows == 1 and m.skipped_unlabelled_rows == 0
    assert [e.split(": ", 1)[0] for e in m.skipped_examples] == [f"{tmp_path / 'DoS-x.csv.gz'}:{n}" for n in (6, 7)]
    assert all("earlier than '9.0' on line 5" in e for e in m.skipped_examples)
    assert not any("--on-bad-rows skip" in e for e in m.skipped_examples)  # they were skipped: no advice to skip


def test_negative_timestamp(tmp_path: Path):
    path = write_csv(tmp_path / "x.csv", ["-0.5,0C1,00,0", "1.0,0C1,00,0"])
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:2: timestamp '-0.5' is negative")):
        read_messages(path)
    m = read_messages(path, on_bad_rows="skip")
    assert m.timestamp.tolist() == [1.0] and m.skipped_rows == 1


def test_backwards_step_found_across_parser_blocks(tmp_path: Path):
    """The order check runs over the whole file, not per 1 MiB block."""
    rows = [f"{1.0 + i / 1000:.6f},{i % 2048:03X},0011223344556677,0" for i in range(60_000)]
    rows[45_000] = "1.000000,0C1,00,0"  # line 45_002
    path = write_csv(tmp_path / "big.csv", rows)
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:45002: timestamp '1.000000' goes backwards: "
                                                        f"earlier than '45.999000' on line 45001")):
        read_messages(path)
    assert len(read_messages(path, on_bad_rows="skip")) == 59_999


def test_logger_file_time_order_and_ids(tmp_path: Path):
    path = tmp_path / "drive.log"
    path.write_text("(1.000000) vcan0 044#2A36\n"
                    "(2.000000) vcan0 110#\n"
                    "(0.500000) vcan0 123#00\n"       # line 3: backwards (earlier than lines 1 and 2)
                    "(3.000000) vcan0 800#00\n"       # line 4: 3 digits, above 0x7FF, not extended
                    "(4.000000) vcan0 00000800#01\n"  # 8 digits: an extended ID, fine
                    "(4.500000) vcan0 7FF#\n")
    with pytest.raises(DataFormatError) as err:
        read_messages(path)
    assert str(err.value).startswith(f"{path}:3: timestamp 0.5 goes backwards: earlier than 2.0 on line 2")
    m = read_messages(path, on_bad_rows="skip")  # read_messages passes on_bad_rows on to logger files
    assert m.can_id.tolist() == [0x044, 0x110, 0x800 | EXTENDED_ID_FLAG, 0x7FF] and m.timestamp.tolist() == [1.0, 2.0, 4.0, 4.5]
    assert m.skipped_rows == 2 and m.skipped_attack_rows == 0
    assert m.skipped_examples[1] == (f"{path}:4: CAN ID 0x800 is above 0x7FF, the largest 11-bit ID, but the frame is "
                                     f"not flagged extended (29-bit)")


def test_blf_frames_are_numbered(tmp_path: Path):
    path = tmp_path / "drive.blf"
    writer = can.BLFWriter(str(path))
    for t, cid, ext in ((10.0, 0x44, False), (11.0, 0x18FEF100, True), (10.5, 0x44, False), (12.0, 0x800, False)):
        writer.on_message_received(can.Message(timestamp=t, arbitration_id=cid, is_extended_id=ext, data=b"\x01"))
    writer.stop()
    with pytest.raises(DataFormatError, match=r"drive\.blf: frame 2: timestamp 1\.0 is out of line: later than the "
                                              r"row after it \(0\.5 on frame 3\), which follows on from the row "
                                              r"before it \(0\.0 on frame 1\)"):
        read_messages(path)
    m = read_messages(path, on_bad_rows="skip")
    assert m.can_id.tolist() == [0x44, 0x44] and m.timestamp.tolist() == [0.0, 0.5] and m.skipped_rows == 2
    assert m.skipped_examples[1].endswith("frame 4: CAN ID 0x800 is above 0x7FF, the largest 11-bit ID, but the frame "
                                          "is not flagged extended (29-bit)")


def _messages(ts: list[float]) -> Messages:
    n = len(ts)
    return Messages(np.array(ts), np.full(n, 0x0C1, np.uint32), np.zeros(n, np.uint8), np.zeros((n, 8), np.uint8),
                    np.zeros(n, np.uint8), "mem://drive")


def test_build_graphs_refuses_time_going_backwards():
    """Backwards steps used to be clamped to an interval of 0 without a word."""
    vocab = IdVocab.fit([np.array([0x0C1])])
    with pytest.raises(ValueError, match=r"mem://drive: message 2 \(timestamp 0\.5\) is earlier than message 1 "
                                         r"\(2\.0\); 1 such steps backwards"):
        build_graphs(_messages([1.0, 2.0, 0.5, 3.0]), vocab, window=2, stride=2)
    with pytest.raises(ValueError, match=r"Messages.timestamp\[1\] is nan; expected seconds as finite numbers"):
        _messages([1.0, math.nan, 3.0, 4.0])  # the table refuses it
    m = _messages([1.0, 2.0, 3.0, 4.0])
    m.timestamp[1] = math.nan  # written into a table already made: build_graphs refuses it too
    with pytest.raises(ValueError, match="message 1 has timestamp nan; timestamps must be finite"):
        build_graphs(m, vocab, window=2, stride=2)
    gs = build_graphs(_messages([1.0, 1.0, 1.001, 1.003]), vocab, window=2, stride=2)  # equal times are fine
    assert torch.isfinite(gs.x).all() and float(gs.edge_attr[0, 1]) == 0.0  # an interval of 0 ms


# --------------------------------------------------------------------------------------
# 3. bytes that are not UTF-8


@pytest.mark.parametrize("name", ["DoS-x.csv", "DoS-x.csv.gz"])
def test_invalid_utf8_in_a_row_with_the_wrong_field_count(tmp_path: Path, name: str, capfd):
    """pyarrow cannot decode such a row for the row handler: it printed "Exception ignored ...
    UnicodeDecodeError" and the file failed as an "unreadable CSV" even with skip."""
    path = write_csv(tmp_path / name, ["1.0,0C1,00,0", "2.0,0C1,00,1"],
                     raw_tail=b"2.5,0C1,00\xff\xfe,1,extra\n3.0,0C1,00,0\n")
    with pytest.raises(DataFormatError) as err:
        read_messages(path)
    assert err.value.line == 4 and "expected 4 fields" in str(err.value) and "not ASCII text" in str(err.value)
    m = read_messages(path, on_bad_rows="skip")
    assert m.timestamp.tolist() == [1.0, 2.0, 3.0] and m.label.tolist() == [0, 1, 0]
    assert m.skipped_rows == 1 and m.skipped_unlabelled_rows == 1
    assert m.skipped_examples[0].startswith(f"{path}:4: expected 4 fields")
    assert "Exception ignored" not in capfd.readouterr().err


def test_invalid_utf8_in_a_row_with_four_fields(tmp_path: Path):
    path = write_csv(tmp_path / "x.csv", ["1.0,0C1,00,0"], raw_tail=b"2.0,0\xc31,00,1\n3.0,0C1,00,0\n")
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:3: arbitration_id")):
        read_messages(path)
    m = read_messages(path, on_bad_rows="skip")
    assert m.skipped_rows == 1 and m.skipped_attack_rows == 1 and m.timestamp.tolist() == [1.0, 3.0]


def test_invalid_utf8_in_hcrl_car_hacking_files(tmp_path: Path):
    """The Car-Hacking reader raised a bare pyarrow ArrowInvalid (no file, no line) in both modes."""
    path = tmp_path / "Fuzzy_dataset.csv"
    path.write_bytes(b"1479121434.850202,0316,2,05,28,R\n"
                     b"1479121434.850300,03\xff16,2,05,28,T\n"
                     b"1479121434.850400,0316,2,05,28,R\n")
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:2: CAN ID is not 1-8 hex digits")):
        read_messages(path)
    m = read_messages(path, on_bad_rows="skip")
    assert len(m) == 2 and m.skipped_rows == 1 and m.skipped_attack_rows == 1
    assert "not ASCII text, shown as '?'" in m.skipped_examples[0]


def test_invalid_utf8_in_a_logger_file_names_the_line(tmp_path: Path):
    path = tmp_path / "drive.log"
    path.write_bytes(b"(1.000000) vcan0 044#2A36\n(2.000000) vcan0 044#2\xff\n")
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:2: not a candump -L frame line: data '2?' is not "
                                                        f"pairs of hex digits (the line holds bytes that are not ASCII")):
        read_messages(path)


# --------------------------------------------------------------------------------------
# a tiny dataset for prepare, the CLI and the store


def make_layout(root: Path, bad_rows: bool = False) -> Path:
    """can-train-and-test layout with four small files; optionally two bad rows (one an attack)."""
    base = root / "hcrl-sa"

    def recording(rel: str, n: int, ids: list[int], seed: int, attack: bool) -> Path:
        rows = []
        for i in range(n):
            label = int(attack and i % 7 == 3)
            rows.append(f"{1_500_000_000 + seed * 1000 + i * 0.001:.6f},{ids[i % len(ids)]:03X},"
                        f"{(i * 37 + seed) % 256:02X}{i % 256:02X},{label}")
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_csv(path, rows)

    recording("train_01_attack_free/attack-free-a.csv", 400, [0x100, 0x101, 0x102], 1, False)
    dos = recording("train_02_with_attacks/DoS-a.csv", 400, [0x100, 0x101, 0x102], 2, True)
    recording("test_01_known_vehicle_known_attack/DoS-b.csv", 300, [0x100, 0x200], 3, True)
    recording("test_02_unknown_vehicle_known_attack/DoS-c.csv", 200, [0x300, 0x301], 4, True)
    if bad_rows:
        lines = dos.read_text().splitlines(keepends=True)
        # line 6: 3 hex digits above 0x7FF (an attack row); line 9: goes back in time (normal)
        lines[5] = lines[5].split(",")[0] + ",9A0,00,1\n"
        lines[8] = "1500000000.000000,100,00,0\n"
        dos.write_text("".join(lines))
    return root


# --------------------------------------------------------------------------------------
# 4. skipped rows are visible per file, with their labels


def test_prepare_records_skipped_rows_with_labels(tmp_path: Path):
    root = make_layout(tmp_path / "data", bad_rows=True)
    path = root / "hcrl-sa" / "train_02_with_attacks" / "DoS-a.csv"
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:6: arbitration_id '9A0': 0x9A0 is above 0x7FF")):
        prepare("hcrl_sa", PrepareConfig(window=10, stride=10), data_root=root, cache_dir=tmp_path / "cache")
    d = prepare("hcrl_sa", PrepareConfig(window=10, stride=10, on_bad_rows="skip"), data_root=root,
                cache_dir=tmp_path / "cache")
    assert d.info["skipped_rows"] == {str(path): 2}
    s = d.info["skipped"][str(path)]
    assert (s["rows"], s["attack_rows"], s["normal_rows"], s["unlabelled_rows"]) == (2, 1, 1, 0)
    assert s["examples"][1].startswith(f"{path}:9: timestamp '1500000000.000000' goes backwards")


def test_cli_data_info_prints_skipped_rows_and_their_labels(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.delenv("KDKIT_DEBUG", raising=False)
    root = make_layout(tmp_path / "data", bad_rows=True)
    path = root / "hcrl-sa" / "train_02_with_attacks" / "DoS-a.csv"
    args = ["--dataset", "hcrl_sa", "--data-root", str(root), "--cache-dir", str(tmp_path / "cache"),
            "--window", "10", "--stride", "10", "--on-bad-rows", "skip"]
    expected = f"  skipped 2 malformed rows in {path} (1 attack, 1 normal)"
    assert main(["data", "info", *args]) == 0  # builds the store
    out = capsys.readouterr().out
    assert expected in out.splitlines() and f"    first: {path}:6: arbitration_id '9A0'" in out
    assert main(["data", "info", *args]) == 0  # and from the store
    assert expected in capsys.readouterr().out.splitlines()
    assert main(["data", "prepare", *args]) == 0
    assert expected in capsys.readouterr().out.splitlines()


# --------------------------------------------------------------------------------------
# 5. on_bad_rows in the run schema; kdkit data flags checked like the schema's


def test_on_bad_rows_is_a_run_schema_key():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    overrides = overrides_from_args(parser.parse_args(["--on-bad-rows", "skip"]))
    assert overrides == {"on_bad_rows": "skip"}
    cfg = make_config(dataset="synthetic", **overrides)
    assert cfg.on_bad_rows == "skip" and prepare_config(cfg).on_bad_rows == "skip"
    assert make_config(dataset="synthetic").on_bad_rows == "error"
    with pytest.raises(ValueError, match="config key 'on_bad_rows': 'ignore' is not one of error, skip"):
        validate_overrides({"on_bad_rows": "ignore"})
    with pytest.raises(SystemExit):
        parser.parse_args(["--on-bad-rows", "ignore"])


def test_evaluate_reuses_a_store_prepared_with_skip(tmp_path: Path, monkeypatch):
    """checkpoint_data (kdkit evaluate, export, bench infer) prepares with the checkpoint's on_bad_rows."""
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    root = make_layout(tmp_path / "data", bad_rows=True)
    cfg = make_config(dataset="hcrl_sa", data_root=str(root), window=10, stride=10, on_bad_rows="skip")
    built = prepare("hcrl_sa", prepare_config(cfg), data_root=root)  # what `kdkit data prepare --on-bad-rows skip` does
    assert not built.loaded_from_cache
    again = checkpoint_data({"train_config": cfg.to_dict()})
    assert again.loaded_from_cache and again.cache_dir == built.cache_dir
    with pytest.raises(DataFormatError, match="DoS-a.csv:6"):  # a checkpoint without the key: the default, error
        checkpoint_data({"train_config": {k: v for k, v in cfg.to_dict().items() if k != "on_bad_rows"}})


@pytest.mark.parametrize("flag, value, words", [
    ("--label-threshold", "nan",
     "--label-threshold nan: config key 'label_threshold': must be a finite number, got nan"),
    ("--label-threshold", "-1", "--label-threshold -1.0: config key 'label_threshold': must be in [0, 1], got -1.0"),
    ("--val-fraction", "inf", "--val-fraction inf: config key 'val_fraction': must be a finite number, got inf"),
    ("--stride", "0", "--stride 0: config key 'stride': must be >= 1, got 0"),
])
def test_cli_data_flags_are_checked_like_the_schema(tmp_path: Path, capsys, monkeypatch, flag: str, value: str,
                                                   words: str):
    monkeypatch.delenv("KDKIT_DEBUG", raising=False)
    root = make_layout(tmp_path / "data")
    assert main(["data", "info", "--dataset", "hcrl_sa", "--data-root", str(root), "--cache-dir",
                 str(tmp_path / "cache"), f"{flag}={value}"]) == 2
    assert capsys.readouterr().err.strip() == f"kdkit: error: {words}"
    assert not (tmp_path / "cache").exists()  # refused before anything was built


def test_prepare_config_refuses_a_nan_threshold():
    for bad in (math.nan, -0.1, 1.5, math.inf):
        with pytest.raises(ValueError, match="label_threshold must be a number in"):
            PrepareConfig(label_threshold=bad)


# --------------------------------------------------------------------------------------
# 6. checksummed graph stores


@pytest.fixture
def store(tmp_path: Path):
    """A prepared tiny dataset: (root, cache dir, the prepared dataset)."""
    root = make_layout(tmp_path / "data")
    cache = tmp_path / "cache"
    return root, cache, prepare("hcrl_sa", PrepareConfig(window=10, stride=10), data_root=root, cache_dir=cache)


def _overwrite_x(path: Path, gs: GraphSet, size: int = 4096) -> None:
    """Overwrite up to ``size`` bytes of the node features inside the store file with 0xFF (NaN as float32)."""
    raw = bytearray(path.read_bytes())
    at = bytes(raw).find(gs.x.numpy().tobytes())
    assert at > 0
    n = min(size, gs.x.numel() * 4)
    raw[at:at + n] = b"\xff" * n
    path.write_bytes(bytes(raw))


def test_load_detects_overwritten_bytes(store):
    _, _, d = store
    path = d.cache_dir / "train.store"
    _overwrite_x(path, d.splits["train"])
    assert torch.isnan(GraphSet.load(path, verify=False).x).any()  # what loading blindly gave
    with pytest.raises(GraphStoreError, match=re.escape(f"graph store {path} is corrupt (checksum mismatch in x)")):
        GraphSet.load(path)


def test_load_detects_a_truncated_file(store):
    _, _, d = store
    path = d.cache_dir / "val.store"
    path.write_bytes(path.read_bytes()[:-300])
    with pytest.raises(GraphStoreError, match=re.escape(f"graph store {path} is ")):
        GraphSet.load(path)


def _copy(d) -> dict:
    """Every split's tensors copied out of the (memory-mapped) store: damaging the file in place
    must not change what the test compares with."""
    return {s: {name: getattr(gs, name).clone() for name in GraphSet.TENSORS} for s, gs in d.splits.items()}


def _assert_same(a, b: dict) -> None:
    assert list(a.splits) == list(b)
    for s in a.splits:
        for name in GraphSet.TENSORS:
            assert torch.equal(getattr(a.splits[s], name), b[s][name]), (s, name)


@pytest.mark.parametrize("damage, words", [
    ("overwrite", "train.store is corrupt (checksum mismatch in x): rebuilding"),
    ("truncate", "train.store is truncated ("),
    ("delete", "train.store is missing: rebuilding"),
    ("swap", "train.store belongs elsewhere (split 'val', expected 'train'): rebuilding"),
    ("meta", "meta.json is unreadable (JSONDecodeError"),
])
def test_prepare_rebuilds_a_damaged_store(store, capsys, damage: str, words: str):
    root, cache, first = store
    expected = _copy(first)
    path = first.cache_dir / "train.store"
    if damage == "overwrite":
        _overwrite_x(path, first.splits["train"])
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "delete":
        path.unlink()
    elif damage == "swap":
        path.write_bytes((first.cache_dir / "val.store").read_bytes())
    else:
        meta = first.cache_dir / "meta.json"
        meta.write_text(meta.read_text()[:100])
    capsys.readouterr()
    d = prepare("hcrl_sa", PrepareConfig(window=10, stride=10), data_root=root, cache_dir=cache)
    err = capsys.readouterr().err
    assert not d.loaded_from_cache and d.cache_dir == first.cache_dir
    assert f"kdkit: graph cache {first.cache_dir}" in err and words in err
    assert all(torch.isfinite(gs.x).all() and torch.isfinite(gs.edge_attr).all() for gs in d.splits.values())
    _assert_same(d, expected)
    again = prepare("hcrl_sa", PrepareConfig(window=10, stride=10), data_root=root, cache_dir=cache)
    assert again.loaded_from_cache and capsys.readouterr().err == ""
    _assert_same(again, expected)
    assert json.loads((first.cache_dir / "meta.json").read_text())["key"] == first.cache_dir.name


def test_store_metadata_holds_a_checksum_per_tensor(store):
    _, _, d = store
    header, _, _ = read_header(d.cache_dir / "train.store")
    checksums = header["checksums"]
    assert set(checksums) == set(GraphSet.TENSORS)
    assert all(re.fullmatch(r"[0-9a-f]{64}", v) for v in checksums.values())
    empty = replace(d.splits["val"]).subset(np.zeros(0, np.int64))  # empty tensors have checksums too
    empty.save(d.cache_dir.parent / "empty.store")
    assert len(GraphSet.load(d.cache_dir.parent / "empty.store")) == 0


def _reference_order(ts: list[float], good_fields: list[bool]) -> list[str]:
    """The time-order rule row by row, as docs and readers state it: 'kept', 'field', 'negative',
    'backwards', 'glitch' or 'restart' (kept: the first row of a new timeline) for each row."""
    from kdkit.data.readers import RESTART_ROWS

    out, top = [], -np.inf
    good = [f and t >= 0 for t, f in zip(ts, good_fields)]
    for k, t in enumerate(ts):
        if not good_fields[k]:
            out.append("field")
        elif t < 0:
            out.append("negative")
        elif t < top:
            after = [ts[j] for j in range(k, len(ts)) if good[j]]
            run = []
            for i, x in enumerate(after):  # a lone spike within the run (later than the row after it,
                if len(run) == RESTART_ROWS:  # which follows on from the one before it) is passed over
                    break
                if 0 < i < len(after) - 1 and after[i - 1] <= after[i + 1] < x:
                    continue
                run.append(x)
            if (len(run) == RESTART_ROWS and all(x < top for x in run)
                    and all(x <= y for x, y in zip(run[:-1], run[1:]))):
                out.append("restart")
                top = t
            else:
                out.append("backwards")
        else:
            nxt = next((ts[j] for j in range(k + 1, len(ts)) if good[j]), None)
            if nxt is not None and top <= nxt < t:
                out.append("glitch")
            else:
                out.append("kept")
                top = t
    return out


_NAMES = {0: "kept", 1: "backwards", 2: "glitch", 3: "restart"}


@pytest.mark.parametrize("seed", range(60))
def test_time_order_in_blocks_equals_the_rule_row_by_row(seed):
    """Random timestamps (steps, lone spikes, runs ahead, clock resets, short runs behind, equal
    times, negative and bad-field rows, a spike within a run behind), cut into random blocks: the
    rows kept, the verdicts and the new timelines are the rule's, wherever the blocks are cut."""
    from kdkit.data.readers import _BadRows, _TimeOrder

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 200))
    ts = np.cumsum(rng.choice([0.0, 1.0, 1.0, 1.0, 2.0], n))
    for _ in range(int(rng.integers(0, 12))):  # disorder of every kind
        k = int(rng.integers(0, n))
        kind = rng.integers(0, 6)
        if kind == 0:
            ts[k] += 50           # a lone spike
        elif kind == 1:
            ts[k:k + 3] += 50     # a run ahead
        elif kind == 2:
            ts[k:] -= ts[k] + 1   # a clock reset (some go negative)
        elif kind == 3:
            ts[k] -= 3            # a row behind
        elif kind == 4:
            ts[k:k + int(rng.integers(2, 12))] -= 500  # a run behind: a new timeline from 8 rows on
            if rng.random() < 0.5:  # with a glitched row inside it
                ts[min(k + int(rng.integers(1, 9)), n - 1)] += 1000
        else:
            ts[k] = -1.0
    fields = rng.random(n) > 0.1
    want = _reference_order(ts.tolist(), fields.tolist())
    cuts = sorted(set(rng.integers(0, n + 1, int(rng.integers(0, 8))).tolist()) | {0, n})
    bad = _BadRows(Path("x.csv"), "skip")
    order = _TimeOrder(bad)
    kept, verdicts, reported = [], [None] * n, 0
    rows = np.arange(n)
    none = (np.zeros(0), np.zeros(0, int))

    def judge(block, a):
        nonlocal reported
        pending = order.pending
        done = min(block.end, block.k)
        for j in range(done):  # rows held from the blocks before, decided now
            v = _NAMES[int(block.codes[j])] if block.codes is not None else "kept"
            verdicts[int(pending.columns[1][j])] = v
            reported += v in ("backwards", "glitch")
        return [int(r) for r in (order.release(block, bad) or none)[1]]

    for a, b in zip(cuts[:-1], cuts[1:]):
        block = order.check(ts[a:b], fields[a:b], lambda j, a=a: repr(float(ts[a + j])), lambda j, a=a: f"line {a + j}")
        kept += judge(block, a)
        ok = fields[a:b] & ~block.bad
        for j in range(b - a):
            verdicts[a + j] = ("field" if not fields[a + j] else "negative" if block.negative[j] else
                               "backwards" if block.backwards[j] else "glitch" if block.glitch[j] else
                               "restart" if block.restart[j] else "kept")
        kept += [int(r) for r in order.hold((ts[a:b][ok], rows[a:b][ok]), lambda j: j)[1]]
    kept += judge(order.check(np.zeros(0), np.zeros(0, bool), str, str, final=True), n)
    assert verdicts == want
    assert kept == [k for k, v in enumerate(want) if v in ("kept", "restart")]
    assert bad.count == reported  # a held row decided bad is reported by release (the rest by the reader)
    assert bad.restarts == want.count("restart")
    down = np.flatnonzero(np.diff(ts[kept]) < 0) + 1  # time goes back only where a new timeline starts
    assert all(want[kept[i]] == "restart" for i in down)


def test_a_cascade_of_glitches_is_decided_row_by_row():
    """Each glitch found lowers the maxima after it and may reveal the next: past the vectorized
    rounds the block is decided row by row, with the same verdicts."""
    from kdkit.data.readers import _FIXPOINT_ROUNDS, _order_block

    g = np.array([0.0, *range(3 * _FIXPOINT_ROUNDS, 0, -1), 100.0])  # a spike, then a descending run
    back, glitch = _order_block(g, -np.inf)
    want = [v if v != "restart" else "backwards" for v in _reference_order(g.tolist(), [True] * g.size)]
    assert ["backwards" if b else "glitch" if x else "kept" for b, x in zip(back, glitch)] == want
    assert want.count("glitch") > _FIXPOINT_ROUNDS
