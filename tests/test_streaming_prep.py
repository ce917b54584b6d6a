"""Preparation at any size (kdkit/data/prep.py, readers.iter_ctt_csv, graphs.WindowStream,
data/store.py): chunked reading and building give exactly the in-memory result, cut anywhere.

The reference is the in-memory algorithm (every recording read whole, ``build_graphs`` per
split, ``GraphSet.concat``) written out below; the streamed stores must equal it tensor for
tensor, whatever the chunk size (down to one row), the pyarrow block size and the workers.

Run: .venv/bin/python -m pytest tests/test_streaming_prep.py -q
"""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kdkit.data.datasets as ds
from kdkit.data.datasets import PrepareConfig, discover, prepare, validation_block
from kdkit.data.graphs import GraphSet, GraphStoreError, IdVocab, WindowStream, build_graphs, window_starts
from kdkit.data.readers import DataFormatError, Messages, concat_messages, iter_ctt_csv, read_messages

HEADER = "timestamp,arbitration_id,data_field,attack"
ROOT = Path(__file__).resolve().parent.parent


def _rows(n: int, seed: int, attacks: list[tuple[int, int]] = (), t0: float = 100.0) -> list[str]:
    """CSV rows: random standard IDs from a small pool, random payload lengths, attack rows
    (ID 0x000) inside the given row intervals."""
    rng = np.random.default_rng(seed)
    pool = rng.choice(0x7FF, 12, replace=False)
    out = []
    for i in range(n):
        attack = any(a <= i < b for a, b in attacks)
        cid = 0 if attack else int(pool[rng.integers(0, pool.size)])
        payload = rng.bytes(int(rng.integers(0, 9))).hex().upper()
        out.append(f"{t0 + i * 0.0005:.6f},{cid:03X},{payload},{int(attack)}")
    return out


def _write(path: Path, rows: list[str], crlf: bool = False, gz: bool = False) -> Path:
    text = ("\r\n" if crlf else "\n").join([HEADER, *rows]) + ("\r\n" if crlf else "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, newline="")
    return path


def _messy(tmp: Path) -> Path:
    """A file with every kind of bad row, blank rows in the middle and at the end, CRLF,
    whitespace-padded fields."""
    rows = _rows(300, 0, [(30, 45), (200, 230)])
    rows[20] = " 100.009750 ,  1A0 ,0011\t, 0 "
    rows[40] = "100.001,100,00,0"  # backwards
    rows[41] = ""  # blank row in the middle
    rows[60] = "1,2"  # wrong field count: the parser drops it
    rows[61] = "x,100,00,1"
    rows[90] = "100.045,XYZ,00,1"
    rows[91] = "-1,100,00,0"
    rows[120] = "100.06,100,001,0"
    rows[150] = "100.075,9FF,00,0"  # 11-bit ID above 0x7FF with 3 digits
    rows[151] = "100.0755,0000009F,00,1"  # extended ID
    return _write(tmp / "DoS-messy.csv", rows + ["", ""], crlf=True)


def _same_messages(a: Messages, b: Messages) -> None:
    for name in ("timestamp", "can_id", "dlc", "payload", "label"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert (a.skipped_rows, a.skipped_examples, a.skipped_attack_rows, a.skipped_unlabelled_rows) == \
        (b.skipped_rows, b.skipped_examples, b.skipped_attack_rows, b.skipped_unlabelled_rows)


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 7, 40, 41, 60, 61, 299, 10 ** 6])
@pytest.mark.parametrize("block_bytes", [64, 1 << 20])
def test_chunked_reading_equals_whole_file(tmp_path: Path, chunk_rows: int, block_bytes: int):
    path = _messy(tmp_path)
    whole = concat_messages(list(iter_ctt_csv(path, "skip", chunk_rows=10 ** 9)))
    assert whole.skipped_rows == 8 and len(whole) == 292  # 7 bad rows, 1 blank row in the middle
    assert whole.skipped_unlabelled_rows == 2 and whole.skipped_attack_rows == 2  # blank + dropped; rows 61, 90
    chunks = list(iter_ctt_csv(path, "skip", chunk_rows=chunk_rows, block_bytes=block_bytes))
    assert all(len(c) <= chunk_rows for c in chunks)
    _same_messages(concat_messages(chunks), whole)
    with pytest.raises(DataFormatError) as err:
        list(iter_ctt_csv(path, "error", chunk_rows=chunk_rows, block_bytes=block_bytes))
    assert str(err.value) == (f"{path}:42: timestamp '100.001' goes backwards: earlier than '100.019500' on line 41 "
                              f"(timestamps must not decrease: if rows are out of order, sort the file by time, or "
                              f"skip such rows with --on-bad-rows skip (on_bad_rows='skip' in Python); a clock that "
                              f"restarts is read as a new timeline from 8 rows on, and fewer rows are skipped so)")


def test_chunked_errors_name_the_line_across_chunks(tmp_path: Path):
    rows = _rows(50, 1)
    cases = {30: ("", "empty row"), 31: ("1,2,3", "expected 4 fields"), 44: ("100.0001,100,00,0", "earlier than '100.021500' on line 45"),
             49: ("100.1,100,0G,0", "data_field '0G'")}
    for row, (text, words) in cases.items():
        bad = list(rows)
        bad[row] = text
        path = _write(tmp_path / f"r{row}.csv", bad + ["100.5,100,00,0"])
        for chunk_rows in (1, 5, 29, 30, 31, 1000):
            with pytest.raises(DataFormatError, match=rf"r{row}\.csv:{row + 2}: .*{words}"):
                list(iter_ctt_csv(path, chunk_rows=chunk_rows, block_bytes=64))
    # blank rows at the end are no rows, however the chunks fall
    path = _write(tmp_path / "trailing.csv", rows + ["", "", ""])
    for chunk_rows in (1, 49, 50, 51, 52):
        assert len(concat_messages(list(iter_ctt_csv(path, chunk_rows=chunk_rows)))) == 50
    only_header = _write(tmp_path / "blank.csv", ["", ""])
    with pytest.raises(DataFormatError, match="no data rows after the header"):
        list(iter_ctt_csv(only_header, chunk_rows=1))


def test_invalid_utf8_in_a_dropped_row_restarts_without_repeating_rows(tmp_path: Path):
    rows = _rows(200, 2)
    text = "\n".join([HEADER, *rows[:150], "1,\xff\xfe,2", *rows[150:]]) + "\n"
    path = tmp_path / "DoS-utf8.csv"
    path.write_bytes(text.encode("latin-1"))
    whole = read_messages(path, on_bad_rows="skip")
    assert len(whole) == 200 and whole.skipped_rows == 1 and "not ASCII" in whole.skipped_examples[0]
    for chunk_rows in (1, 20, 150, 151):
        _same_messages(concat_messages(list(iter_ctt_csv(path, "skip", chunk_rows=chunk_rows, block_bytes=256))), whole)


def _dataset(root: Path) -> Path:
    """A can-train-and-test layout whose attack intervals and sizes put chunk boundaries
    inside windows, on window starts and inside attack intervals; one file gzip, one CRLF."""
    base = root / "cut"
    _write(base / "train_01_attack_free" / "attack-free-1.csv", _rows(523, 1))
    _write(base / "train_02_with_attacks" / "DoS-1.csv.gz", _rows(611, 2, [(95, 133), (400, 401)]), gz=True)
    _write(base / "train_02_with_attacks" / "fuzzing-2.csv", _rows(389, 3, [(10, 60), (300, 389)], t0=5.0), crlf=True)
    _write(base / "test_01_known" / "DoS-3.csv", _rows(257, 4, [(0, 20), (128, 140)]))
    _write(base / "test_02_unknown" / "fuzzing-4.csv", _rows(9, 5))  # fewer rows than a window
    return base


def reference_prepare(files, config: PrepareConfig):
    """The in-memory algorithm: recordings read whole, graphs built per split, concatenated."""
    rng = np.random.default_rng(config.seed)
    train = []
    for p in files.train:
        msgs = read_messages(p)
        starts = window_starts(len(msgs), config.window, config.stride)
        v0, v1 = validation_block(len(starts), config.val_fraction, rng)
        if v1 > v0:
            lo, hi = starts[v0], starts[v1 - 1] + config.window
            tr = starts[(starts + config.window <= lo) | (starts >= hi)]
        else:
            tr = starts
        train.append((msgs, tr, starts[v0:v1]))
    ids = []
    for msgs, tr, _ in train:
        idx = np.unique((tr[:, None] + np.arange(config.window)).ravel()) if tr.size else np.zeros(0, np.int64)
        keep = msgs.label[idx] == 0 if config.vocab_source == "normal" else slice(None)
        ids.append(msgs.can_id[idx][keep])
    vocab = IdVocab.fit(ids)
    args = (vocab, config.window, config.stride, config.label_threshold)
    splits = {"train": GraphSet.concat([build_graphs(m, *args, starts=tr) for m, tr, _ in train]),
              "val": GraphSet.concat([build_graphs(m, *args, starts=va) for m, _, va in train])}
    for scen, paths in files.tests.items():
        splits[scen] = GraphSet.concat([build_graphs(read_messages(p), *args) for p in paths])
    return vocab, splits


def _assert_equal_sets(a: GraphSet, b: GraphSet, where: str) -> None:
    for t in GraphSet.TENSORS:
        assert getattr(a, t).dtype == getattr(b, t).dtype and torch.equal(getattr(a, t), getattr(b, t)), (where, t)
    assert (a.attack_types, a.files) == (b.attack_types, b.files), where


@pytest.mark.parametrize("window,stride", [(10, 10), (10, 3), (10, 13), (32, 32)])
def test_streamed_store_equals_in_memory_build(tmp_path: Path, monkeypatch, window: int, stride: int):
    base = _dataset(tmp_path)
    for i, (chunk_rows, config) in enumerate([
            (1, PrepareConfig(window=window, stride=stride)),
            (window - 1, PrepareConfig(window=window, stride=stride, val_fraction=0.3, seed=4)),
            (window, PrepareConfig(window=window, stride=stride, vocab_source="all", label_threshold=0.1)),
            (stride + 1, PrepareConfig(window=window, stride=stride, val_fraction=0.0)),
            (97, PrepareConfig(window=window, stride=stride, seed=2)),
            (10 ** 6, PrepareConfig(window=window, stride=stride))]):
        monkeypatch.setattr(ds, "PREPARE_CHUNK_ROWS", chunk_rows)
        got = prepare(str(base), config, cache_dir=tmp_path / f"cache{i}")
        vocab, want = reference_prepare(discover(str(base)), config)
        assert got.vocab.to_list() == vocab.to_list()
        assert list(got.splits) == list(want)
        for name in want:
            _assert_equal_sets(got.splits[name], want[name], f"{name} chunk_rows={chunk_rows} {config}")
            assert got.info["splits"][name]["windows"] == len(want[name])
        assert not [p for p in got.cache_dir.iterdir() if p.name.startswith("parts")]  # no part file left
        again = prepare(str(base), config, cache_dir=tmp_path / f"cache{i}")
        assert again.loaded_from_cache and again.info == json.loads(json.dumps(got.info))


def test_workers_write_the_same_store(tmp_path: Path, monkeypatch):
    base = _dataset(tmp_path)
    monkeypatch.setattr(ds, "PREPARE_CHUNK_ROWS", 50)
    one = prepare(str(base), PrepareConfig(window=10, stride=7), cache_dir=tmp_path / "one")
    two = prepare(str(base), PrepareConfig(window=10, stride=7), cache_dir=tmp_path / "two", workers=2)
    assert one.cache_dir.name == two.cache_dir.name  # the workers are no part of the cache key
    for split in one.splits:
        a, b = (d.cache_dir / f"{split}.store" for d in (one, two))
        assert a.read_bytes() == b.read_bytes(), split
    with pytest.raises(ValueError, match="workers must be >= 1"):
        prepare(str(base), PrepareConfig(window=10), cache_dir=tmp_path / "x", workers=0)


def test_a_bad_row_in_a_worker_names_file_and_line(tmp_path: Path):
    base = _dataset(tmp_path)
    path = base / "test_01_known" / "DoS-3.csv"
    lines = path.read_text().splitlines()
    lines[100] = "100.05,XYZ,00,0"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"DoS-3\.csv:101: arbitration_id 'XYZ'"):
        prepare(str(base), PrepareConfig(window=10), cache_dir=tmp_path / "c", workers=2)
    skipped = prepare(str(base), PrepareConfig(window=10, on_bad_rows="skip"), cache_dir=tmp_path / "c")
    assert skipped.info["skipped"][str(path)]["rows"] == 1


def test_window_stream_hands_out_every_window_once():
    rng = np.random.default_rng(0)
    n = 200
    msgs = Messages(np.cumsum(rng.random(n)), rng.integers(0, 5, n).astype(np.uint32), np.full(n, 8, np.uint8),
                    rng.integers(0, 256, (n, 8)).astype(np.uint8), (rng.random(n) < 0.1).astype(np.uint8))
    for window, stride in ((5, 5), (5, 2), (5, 9), (2, 1)):
        for step in (1, 3, 4, 5, 6, 50):
            stream, seen = WindowStream(window, stride), []
            for a in range(0, n, step):
                buf, local, starts = stream.feed(msgs.slice(a, min(a + step, n)))
                seen += starts.tolist()
                for lo, s in zip(local, starts):  # the joined table holds the window and the message before it
                    assert np.array_equal(buf.can_id[lo:lo + window], msgs.can_id[s:s + window])
                    assert s == 0 or buf.timestamp[lo - 1] == msgs.timestamp[s - 1]
                assert len(stream.tail) <= window + stride
            assert seen == window_starts(n, window, stride).tolist(), (window, stride, step)


def test_store_is_mapped_released_and_checked(tmp_path: Path):
    base = _dataset(tmp_path)
    d = prepare(str(base), PrepareConfig(window=10), cache_dir=tmp_path / "c")
    gs = GraphSet.load(d.cache_dir / "train.store")
    assert gs.backing is not None and gs.backing.maps
    x = gs.x.clone()
    gs.release_pages()  # the views read the file again
    assert torch.equal(gs.x, x)
    path = d.cache_dir / "val.store"
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(GraphStoreError, match="is truncated"):
        GraphSet.load(path)
    altered = bytearray(data)
    altered[100] ^= 1  # a data byte (the JSON header is at the end)
    path.write_bytes(bytes(altered))
    with pytest.raises(GraphStoreError, match="checksum mismatch"):
        GraphSet.load(path)
    torch.save({"x": torch.zeros(1)}, path)  # a store of kdkit <= format 7 (a torch file)
    with pytest.raises(GraphStoreError, match="format 7 or older .* delete it to rebuild"):
        GraphSet.load(path)
    assert not prepare(str(base), PrepareConfig(window=10), cache_dir=tmp_path / "c").loaded_from_cache  # rebuilt


def _make_big_csv(path: Path, rows: int) -> None:
    """A can-train-and-test CSV of ``rows`` rows written in slices (as benchmarks/prep_memory.py)."""
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "prep_memory.py"), "make", str(path), str(rows)],
                   check=True, cwd=ROOT)


def test_peak_memory_stays_bounded_on_a_large_file(tmp_path: Path):
    """3 M messages: the in-memory path needed ~190 bytes a message (~570 MB); streamed, the
    growth of the peak RSS above the imports stays under 300 MiB."""
    base = tmp_path / "big"
    _make_big_csv(base / "train_02_with_attacks" / "DoS-big.csv.gz", 3_000_000)
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "prep_memory.py"), "measure", str(base),
                          str(tmp_path / "cache")], check=True, cwd=ROOT, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["messages"] == 3_000_000
    assert result["peak_above_imports_mib"] < 300, result
    assert os.path.getsize(base / "train_02_with_attacks" / "DoS-big.csv.gz") > 0


def test_peak_memory_stays_bounded_on_a_large_candump_log(tmp_path: Path):
    """5 M candump lines (230 MB of text): read whole, ~100 bytes a message stayed in memory
    (3 M lines peaked 318 MiB above the imports); streamed, the peak stays under 300 MiB."""
    base = tmp_path / "bigc"
    _make_big_csv(base / "train_01_attack_free" / "drive-big.log.gz", 5_000_000)  # (.log: candump lines)
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "prep_memory.py"), "measure", str(base),
                          str(tmp_path / "cache")], check=True, cwd=ROOT, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["messages"] == 5_000_000
    assert result["peak_above_imports_mib"] < 300, result


def test_streamed_candump_store_equals_the_whole_file_read(tmp_path: Path, monkeypatch):
    """A dataset of candump logs prepared from the streamed reader (tiny blocks, tiny chunks)
    equals the same dataset prepared from the logs read whole, tensor for tensor."""
    import kdkit.data.loggers as loggers
    import kdkit.data.readers as readers

    base = tmp_path / "logs"
    for folder, name, seed in (("train_01_attack_free", "drive-a.log", 0),
                               ("train_01_attack_free", "drive-b.log.gz", 1),
                               ("test_01_known_vehicle_known_attack", "drive-c.log", 2)):
        rng = np.random.default_rng(seed)
        lines = [f"({100 + k / 1000:.6f}) can0 {int(rng.integers(0, 40)) * 0x11:03X}#"
                 f"{rng.bytes(int(rng.integers(0, 9))).hex().upper()}\n" for k in range(3000)]
        path = base / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(lines).encode()
        path.write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
    config = PrepareConfig(window=20, stride=15, val_fraction=0.2)
    monkeypatch.setattr(loggers, "_GZ_PIECE", 333)
    monkeypatch.setattr(ds, "PREPARE_CHUNK_ROWS", 97)
    streamed = prepare(str(base), config, cache_dir=tmp_path / "streamed")
    monkeypatch.setattr(readers, "_LOGGER_CHUNKS", [])  # no chunked reader: every log read whole
    monkeypatch.setattr(ds, "PREPARE_CHUNK_ROWS", 10 ** 6)
    read_whole = prepare(str(base), config, cache_dir=tmp_path / "whole")
    assert streamed.vocab.to_list() == read_whole.vocab.to_list() and list(streamed.splits) == list(read_whole.splits)
    for name in streamed.splits:
        _assert_equal_sets(streamed.splits[name], read_whole.splits[name], name)
    assert streamed.info["messages_read"] == read_whole.info["messages_read"] == 9000


def test_predecessor_algorithm_builds_the_same_graphs(tmp_path: Path):
    """bench preprocess's baseline (row-wise hex parsing, Python loops per window, node and edge)
    gives kdkit's graphs bit for bit (the sums run in the same order)."""
    from kdkit.bench.preprocess import predecessor_graphs

    path = _write(tmp_path / "DoS-small.csv", _rows(1050, 7, [(120, 180), (700, 705)]))
    msgs = read_messages(path)
    vocab = IdVocab.fit([msgs.can_id[msgs.label == 0]])
    gs = build_graphs(msgs, vocab, 100, 100)
    old = predecessor_graphs(path, window=100, stride=100)
    assert len(old) == len(gs) == 10 and int(gs.y.sum()) == 2
    for i, d in enumerate(old):
        new = gs.to_data(i)
        for key in ("x", "node_id", "edge_index", "edge_attr", "y", "node_y"):
            assert torch.equal(getattr(d, key), getattr(new, key)), (i, key)


def test_loader_releases_a_large_mapped_store_and_gives_the_same_batches(tmp_path: Path, monkeypatch):
    from kdkit.data.loader import collate_indices, graph_loader

    base = _dataset(tmp_path)
    d = prepare(str(base), PrepareConfig(window=10), cache_dir=tmp_path / "c")
    mapped, in_memory = GraphSet.load(d.cache_dir / "train.store"), GraphSet.load(d.cache_dir / "train.store", mmap=False)
    assert in_memory.backing is None
    monkeypatch.setattr(GraphSet, "RELEASE_ABOVE_BYTES", 0)  # this tiny store counts as large
    monkeypatch.setattr(GraphSet, "RELEASE_GRAPHS", 7)
    monkeypatch.setattr(GraphSet, "RELEASE_ROWS", 16)  # a batch's rows are taken in pieces, released between
    released = []
    monkeypatch.setattr(mapped, "release_pages", lambda: released.append(mapped.gathered) or setattr(mapped, "gathered", 0))
    loader = graph_loader(mapped, batch_size=5, shuffle=True, seed=1, num_workers=0)
    for batch, idx in zip(loader, loader.batch_sampler):
        want = collate_indices(in_memory, idx)
        for key in ("x", "node_id", "edge_index", "edge_attr", "y", "node_y", "batch"):
            assert torch.equal(getattr(batch, key), getattr(want, key)), key
    assert len(released) > len(mapped) // 5  # between the pieces of every batch (each has > 16 nodes)
