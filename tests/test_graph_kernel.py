"""The compiled window graph builder (kdkit/data/graph_kernel.py) gives the numpy builder's
arrays bit for bit: on random recordings of every shape, on real traffic, through a streamed
preparation; and ``graphs.BUILDER`` picks it as documented."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from conftest import require
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdkit.data import graph_kernel, graphs
from kdkit.data.graphs import IdVocab, build_graphs, window_arrays, window_starts
from kdkit.data.readers import EXTENDED_ID_FLAG, Messages, read_ctt_csv


@pytest.fixture
def builder(monkeypatch):
    """Set ``graphs.BUILDER`` for one call: ``builder("numpy")``."""
    return lambda name: monkeypatch.setattr(graphs, "BUILDER", name)


def _messages(ids: np.ndarray, seed: int, equal_times: float = 0.2) -> Messages:
    rng = np.random.default_rng(seed)
    n = ids.shape[0]
    steps = np.where(rng.random(n) < equal_times, 0.0, rng.choice([1e-6, 1e-4, 5e-4, 2e-3, 0.7], n))
    dlc = rng.integers(0, 9, n).astype(np.uint8)
    payload = rng.integers(0, 256, (n, 8)).astype(np.uint8)
    payload[rng.random((n, 8)) < 0.3] = 255  # extremes: 255 summed over many messages of one ID
    payload[np.arange(8)[None, :] >= dlc[:, None]] = 0
    label = (rng.random(n) < 0.2).astype(np.uint8)
    return Messages(1.6e9 + np.cumsum(steps), ids.astype(np.uint32), dlc, payload, label, "mem://kernel", "DoS")


def _both(builder, msgs: Messages, starts: np.ndarray, W: int, normal_flags: bool = True) -> tuple[dict, dict]:
    builder("numpy")
    ref = window_arrays(msgs, starts, W, normal_flags)
    builder("compiled")
    return ref, window_arrays(msgs, starts, W, normal_flags)


def _assert_identical(ref: dict, got: dict) -> None:
    assert sorted(ref) == sorted(got)
    for name in ref:
        assert got[name].dtype == ref[name].dtype, name
        assert got[name].shape == ref[name].shape, name
        assert got[name].tobytes() == ref[name].tobytes(), f"{name} differs"  # bit for bit, signed zeros too


ID_POOL = [0x000, 0x001, 0x0C1, 0x110, 0x4B1, 0x7FF, 0xFFFF | EXTENDED_ID_FLAG, 0x10000 | EXTENDED_ID_FLAG,
           0x18FEF100 | EXTENDED_ID_FLAG,
           0x1FFFFFFF | EXTENDED_ID_FLAG, 0x081 | EXTENDED_ID_FLAG]


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.sampled_from(ID_POOL), min_size=2, max_size=400), seed=st.integers(0, 2**16),
       window=st.integers(2, 40), stride=st.integers(1, 50), explicit=st.booleans(), chunk=st.sampled_from([1 << 15, 1, 37]))
def test_random_recordings_give_identical_arrays(builder, ids, seed, window, stride, explicit, chunk):
    msgs = _messages(np.array(ids, dtype=np.uint32), seed)
    starts = window_starts(len(msgs), window, stride)
    if not starts.size:
        return
    if explicit:  # a sorted subset, as the train/validation split passes
        starts = np.sort(np.random.default_rng(seed).permutation(starts)[: max(1, starts.size // 2)])
    saved, graphs._CHUNK_MESSAGES = graphs._CHUNK_MESSAGES, chunk  # windows spread over several chunks
    try:
        _assert_identical(*_both(builder, msgs, starts, window))
    finally:
        graphs._CHUNK_MESSAGES = saved


@pytest.mark.parametrize("window, n, n_ids", [
    (100, 60_000, 40),      # the default window, many chunks, the scratch arrays reused
    (300, 3_000, 3),        # one ID in ~90 % of a long window: large per-node sums
    (1024, 4_096, 700),     # the largest window compiled; ~600 nodes a window (codes far beyond 16 bits)
    (2, 1_001, 5),          # the smallest window
    (50, 5_000, 5_000),     # every message a new ID: one-message nodes, no pairs
])
def test_shapes_give_identical_arrays(builder, window: int, n: int, n_ids: int):
    rng = np.random.default_rng(window)
    pool = rng.choice(np.arange(0, 1 << 20, dtype=np.uint32), size=n_ids, replace=False)
    pool = np.where(pool > 0x7FF, pool | np.uint32(EXTENDED_ID_FLAG), pool)  # a table's IDs: 29-bit ones flagged
    p = np.full(n_ids, 0.1 / max(n_ids - 1, 1))
    p[0] = 0.9 if n_ids > 1 else 1.0
    ids = rng.choice(pool, size=n, p=p) if n_ids < n else rng.permutation(pool)[:n]
    msgs = _messages(ids, seed=window)
    for stride in (window, max(1, window // 3)):
        _assert_identical(*_both(builder, msgs, window_starts(n, window, stride), window))


def test_build_graphs_identical_through_both_builders(builder):
    msgs = _messages(np.random.default_rng(3).choice(np.array(ID_POOL, np.uint32), 20_000), seed=3)
    vocab = IdVocab.fit([msgs.can_id[:5000]])
    builder("numpy")
    a = build_graphs(msgs, vocab, 100, 50, 0.1)
    builder("compiled")
    b = build_graphs(msgs, vocab, 100, 50, 0.1)
    for name in graphs.GraphSet.TENSORS:
        assert getattr(a, name).numpy().tobytes() == getattr(b, name).numpy().tobytes(), name


def test_real_traffic_gives_identical_arrays(builder, shared_data_root: Path):
    root = shared_data_root / "hcrl-sa"
    require(root.is_dir(), f"the real hcrl-sa copy is not at {root}")
    for name in ("test_01_known_vehicle_known_attack/fuzzing-kia.csv.gz", "train_02_with_attacks/DoS-kia.csv.gz"):
        msgs = read_ctt_csv(root / name)
        for window, stride in ((100, 100), (100, 37)):
            _assert_identical(*_both(builder, msgs, window_starts(len(msgs), window, stride), window))


def test_prepared_store_identical_through_both_builders(builder, monkeypatch, tmp_path: Path):
    """``data prepare`` streams the recordings in chunks; the store files are byte-identical."""
    from kdkit.data import datasets
    from kdkit.data.simulate import simulate

    root = simulate(tmp_path / "sim", seed=5, duration_s=3.0)
    monkeypatch.setattr(datasets, "PREPARE_CHUNK_ROWS", 7_001)
    digests = {}
    for name in ("numpy", "compiled"):
        builder(name)
        d = datasets.prepare(str(root), cache_dir=tmp_path / f"cache-{name}", rebuild=True)
        digests[name] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.cache_dir.glob("*.store"))}
    assert len(digests["numpy"]) >= 3 and digests["numpy"] == digests["compiled"]


def test_auto_switches_after_enough_messages(monkeypatch):
    monkeypatch.setattr(graphs, "BUILDER", "auto")
    monkeypatch.setattr(graphs, "_built_messages", 0)
    monkeypatch.setattr(graphs, "_expected_messages", 0)
    monkeypatch.setattr(graphs, "COMPILED_AFTER", 10_000)
    monkeypatch.setattr(graphs.candump_scan, "_compiled", None)
    assert graphs._compiled_builder(6_000, 100) is False  # numba's first call (~0.6 s) not worth it yet
    assert graphs._compiled_builder(4_000, 100) is False  # 10,000: not more
    assert graphs._compiled_builder(6_000, 100) is True   # 16,000 built in this process
    assert graphs._compiled_builder(10, graph_kernel.MAX_WINDOW + 1) is False  # the W x W table: too large
    monkeypatch.setattr(graphs.candump_scan, "_compiled", object())  # the candump reader ran: numba is set up
    assert graphs._compiled_builder(10, 100) is True
    monkeypatch.setattr(graphs.candump_scan, "_compiled", None)
    monkeypatch.setattr(graphs, "_built_messages", 0)
    graphs.expect_messages(20_000)  # a preparation's estimate: compiled from the first window on
    assert graphs._compiled_builder(100, 100) is True
    monkeypatch.setattr(graphs, "BUILDER", "numpy")
    assert graphs._compiled_builder(10**9, 100) is False
    monkeypatch.setattr(graphs, "BUILDER", "compiled")
    assert graphs._compiled_builder(1, 100) is True
    monkeypatch.setattr(graphs, "BUILDER", "fast")
    with pytest.raises(ValueError, match="BUILDER must be 'auto', 'numpy' or 'compiled', got 'fast'"):
        graphs._compiled_builder(1, 100)


def test_expected_messages_from_file_size(tmp_path: Path):
    from kdkit.data.prep import expected_messages

    (tmp_path / "a.csv.gz").write_bytes(b"x" * 1600)
    (tmp_path / "b.log").write_bytes(b"x" * 4000)
    assert expected_messages(tmp_path / "a.csv.gz") == 100 and expected_messages(tmp_path / "b.log") == 100
    assert expected_messages(tmp_path / "missing.csv") == 0


def test_scratch_reused_across_sizes(builder):
    """Work arrays grow for a larger chunk and are zeroed again for a smaller one."""
    scratch = graph_kernel.Scratch()
    rng = np.random.default_rng(9)
    for n in (2_000, 9_000, 500, 9_000):
        msgs = _messages(rng.choice(np.arange(30, dtype=np.uint32), n), seed=n)
        starts = window_starts(n, 50, 50)
        builder("numpy")
        ref = window_arrays(msgs, starts, 50, normal_flags=True)
        payload64 = np.ascontiguousarray(msgs.payload).view(np.uint64).reshape(-1)
        got = graphs._chunk_graphs(msgs, payload64, starts, 50, True, scratch)
        _assert_identical(ref, got)
