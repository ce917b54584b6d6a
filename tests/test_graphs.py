"""Tests of windows -> graphs (kdkit/graphs.py): exact values on a hand-made recording and a
property test of the vectorized builder against a slow pure-Python reference."""
from __future__ import annotations

import bisect
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdkit.data import graphs, store
from kdkit.data.graphs import (
    EDGE_FEATURES,
    NODE_FEATURES,
    GraphSet,
    IdVocab,
    build_graphs,
    empty_graphset,
    window_starts,
)
from kdkit.data.readers import EXTENDED_ID_FLAG, Messages, read_messages

NF = {name: i for i, name in enumerate(NODE_FEATURES)}
EF = {name: i for i, name in enumerate(EDGE_FEATURES)}
ln = math.log

# Two windows of W=5 and one leftover message. IDs: 0x0C1, 0x110 (all digits: still hex),
# 0x4B1 and 0x7FF (not in the vocabulary below). Message 3 is an attack; messages 7 and 8
# share a timestamp (an interval of 0).
HAND_CSV = """timestamp,arbitration_id,data_field,attack
1.000,110,0A14,0
1.001,0C1,FF,0
1.003,110,0C16,0
1.005,0C1,FE,1
1.008,4B1,0102030405060708,0
1.010,0C1,,0
1.011,0C1,00,0
1.012,7FF,00,0
1.012,0C1,,0
1.020,0C1,,0
1.030,110,00,0
"""
VOCAB = IdVocab.fit([np.array([0x0C1, 0x110, 0x4B1, 0x110])])


def node_row(**kw) -> list[float]:
    row = [0.0] * len(NODE_FEATURES)
    for k, v in kw.items():
        if k == "payload":
            row[:8] = [b / 255 for b in v] + [0.0] * (8 - len(v))
        else:
            row[NF[k]] = v
    return row


def edge_row(**kw) -> list[float]:
    row = [0.0] * len(EDGE_FEATURES)
    for k, v in kw.items():
        row[EF[k]] = v
    return row


@pytest.fixture
def hand_graphs(tmp_path: Path) -> GraphSet:
    path = tmp_path / "DoS-test.csv"
    path.write_text(HAND_CSV)
    return build_graphs(read_messages(path), VOCAB, window=5, stride=5)


def test_hand_made_structure(hand_graphs: GraphSet):
    gs = hand_graphs
    assert len(gs) == 2  # the 11th message is a partial window: unused
    assert gs.node_ptr.tolist() == [0, 3, 5]
    assert gs.edge_ptr.tolist() == [0, 3, 6]
    # nodes sorted by CAN ID inside each window
    assert gs.can_id.tolist() == [0x0C1, 0x110, 0x4B1, 0x0C1, 0x7FF]
    assert gs.node_id.tolist() == [1, 2, 3, 1, 0]  # 0x7FF is out of vocabulary
    assert gs.node_y.tolist() == [1, 0, 0, 0, 0]  # only the 0x0C1 node of window 0 holds the attack
    assert gs.edge_index.tolist() == [[0, 0, 1, 0, 0, 1], [1, 2, 0, 0, 1, 0]]
    assert gs.y.tolist() == [1, 0]
    assert gs.attack_share.tolist() == pytest.approx([0.2, 0.0])
    assert gs.attack_types == ["normal", "DoS"]
    assert gs.attack_type.tolist() == [1, 0]
    assert gs.start.tolist() == [0, 5]
    assert gs.file_index.tolist() == [0, 0]
    assert gs.x.dtype == torch.float32 and gs.edge_attr.dtype == torch.float32
    assert gs.x.shape == (5, len(NODE_FEATURES)) and gs.edge_attr.shape == (6, len(EDGE_FEATURES))


def test_hand_made_node_features(hand_graphs: GraphSet):
    iat_c1_w1 = [ln(2), ln(2), ln(9)]  # 1 ms, 1 ms, 8 ms between the 0x0C1 messages of window 1
    expected = [
        # window 0, 0x0C1 at positions 1 and 3, payloads FF and FE
        node_row(payload=[254.5], count_frac=0.4, first_pos=0.2, last_pos=0.6, dlc_mean=1 / 8,
                 iat_mean=ln(5), iat_std=0.0, gap_mean=(ln(2) + ln(3)) / 2,
                 payload_change=(1 / 8) / 255, payload_std=(0.5 / 8) / 255),
        # window 0, 0x110 at positions 0 and 2; position 0 is the recording's first message: gap 0
        node_row(payload=[11, 21], count_frac=0.4, first_pos=0.0, last_pos=0.4, dlc_mean=2 / 8,
                 iat_mean=ln(4), iat_std=0.0, gap_mean=ln(3) / 2,
                 payload_change=(4 / 8) / 255, payload_std=(2 / 8) / 255),
        # window 0, 0x4B1 once at position 4
        node_row(payload=[1, 2, 3, 4, 5, 6, 7, 8], count_frac=0.2, first_pos=0.8, last_pos=0.8, dlc_mean=1.0,
                 gap_mean=ln(4)),
        # window 1, 0x0C1 at positions 0, 1, 3, 4 (DLC 0, 1, 0, 0); the gap at position 3 is 0 (same time),
        # the gap at position 0 reaches back to the previous window's last message (2 ms)
        node_row(count_frac=0.8, first_pos=0.0, last_pos=0.8, dlc_mean=(1 / 4) / 8,
                 iat_mean=statistics.fmean(iat_c1_w1), iat_std=statistics.pstdev(iat_c1_w1),
                 gap_mean=(ln(3) + ln(2) + 0.0 + ln(9)) / 4),
        # window 1, 0x7FF once at position 2, 1 ms after position 1
        node_row(count_frac=0.2, first_pos=0.4, last_pos=0.4, dlc_mean=1 / 8, gap_mean=ln(2)),
    ]
    np.testing.assert_allclose(hand_graphs.x.numpy(), np.array(expected), rtol=1e-5, atol=1e-6)


def test_hand_made_edge_features(hand_graphs: GraphSet):
    expected = [
        # window 0: 0x0C1->0x110 once at position 1 (2 ms), reciprocal
        edge_row(count_frac=1 / 4, iat_mean=ln(3), first_pos=0.2, last_pos=0.2, reciprocal=1),
        # 0x0C1->0x4B1 once at position 3 (3 ms); 0x4B1->0x0C1 never happens
        edge_row(count_frac=1 / 4, iat_mean=ln(4), first_pos=0.6, last_pos=0.6, reciprocal=0),
        # 0x110->0x0C1 twice, positions 0 and 2 (1 ms, 2 ms)
        edge_row(count_frac=2 / 4, iat_mean=(ln(2) + ln(3)) / 2, iat_std=(ln(3) - ln(2)) / 2,
                 first_pos=0.0, last_pos=0.4, reciprocal=1),
        # window 1: 0x0C1 self-loop at positions 0 and 3 (1 ms, 8 ms)
        edge_row(count_frac=2 / 4, iat_mean=(ln(2) + ln(9)) / 2, iat_std=(ln(9) - ln(2)) / 2,
                 first_pos=0.0, last_pos=0.6, self_loop=1, reciprocal=1),
        # 0x0C1->0x7FF once at position 1 (1 ms)
        edge_row(count_frac=1 / 4, iat_mean=ln(2), first_pos=0.2, last_pos=0.2, reciprocal=1),
        # 0x7FF->0x0C1 at the same time: interval 0
        edge_row(count_frac=1 / 4, iat_mean=0.0, first_pos=0.4, last_pos=0.4, reciprocal=1),
    ]
    np.testing.assert_allclose(hand_graphs.edge_attr.numpy(), np.array(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("threshold, y", [(0.0, [1, 0]), (0.1, [1, 0]), (0.2, [0, 0])])
def test_label_threshold(tmp_path: Path, threshold: float, y: list[int]):
    path = tmp_path / "DoS-test.csv"
    path.write_text(HAND_CSV)
    gs = build_graphs(read_messages(path), VOCAB, window=5, stride=5, label_threshold=threshold)
    assert gs.y.tolist() == y  # share 0.2 is an attack only when the threshold is below 0.2
    assert gs.attack_type.tolist() == y
    assert gs.node_y.tolist() == [1, 0, 0, 0, 0]  # node labels do not depend on the threshold


def test_overlapping_windows_and_explicit_starts(tmp_path: Path):
    path = tmp_path / "DoS-test.csv"
    path.write_text(HAND_CSV)
    msgs = read_messages(path)
    gs = build_graphs(msgs, VOCAB, window=5, stride=2)
    assert gs.start.tolist() == [0, 2, 4, 6]
    # the window starting at message 2 holds 0x110, 0x0C1(attack), 0x4B1, 0x0C1, 0x0C1
    g1 = gs.subset([1])
    assert g1.can_id.tolist() == [0x0C1, 0x110, 0x4B1]
    assert g1.x[:, NF["count_frac"]].tolist() == pytest.approx([0.6, 0.2, 0.2])
    # the first message of that window has a gap to message 1 of the recording (2 ms)
    assert float(g1.x[1, NF["gap_mean"]]) == pytest.approx(ln(3), rel=1e-6)
    explicit = build_graphs(msgs, VOCAB, window=5, starts=np.array([2, 6]))
    assert torch.equal(explicit.x, gs.subset([1, 3]).x)
    assert torch.equal(explicit.edge_attr, gs.subset([1, 3]).edge_attr)
    assert explicit.start.tolist() == [2, 6]


def test_window_starts_and_short_recordings():
    assert window_starts(10, 5, 5).tolist() == [0, 5]
    assert window_starts(10, 4, 3).tolist() == [0, 3, 6]
    assert window_starts(4, 5, 5).tolist() == []
    with pytest.raises(ValueError, match="window must be >= 2"):
        window_starts(10, 1, 1)
    with pytest.raises(ValueError, match="stride >= 1"):
        window_starts(10, 5, 0)
    msgs = _messages(np.arange(3, dtype=np.uint32), seed=0)
    gs = build_graphs(msgs, VOCAB, window=5)
    assert len(gs) == 0 and gs.files == [msgs.source]
    assert gs.x.shape == (0, len(NODE_FEATURES)) and gs.edge_index.shape == (2, 0)


def test_id_vocab_oov_and_roundtrip():
    vocab = IdVocab.fit([np.array([0x300, 0x10, 0x10]), np.array([0x7FF])])
    assert len(vocab) == 4  # three IDs + the OOV bucket
    assert vocab.lookup(np.array([0x10, 0x300, 0x7FF, 0x11, 0x800, 0])).tolist() == [1, 2, 3, 0, 0, 0]
    assert len(vocab) == 4  # looking up unseen IDs never grows it
    assert IdVocab.from_list(vocab.to_list()).to_list() == [0x10, 0x300, 0x7FF]
    assert IdVocab.fit([]).lookup(np.array([1, 2])).tolist() == [0, 0]
    extended = IdVocab.fit([np.array([0x1FFFFFFF, 5, 5, 0x18FEF100], np.uint32)])  # 29-bit IDs
    assert extended.to_list() == [5, 0x18FEF100, 0x1FFFFFFF]
    assert extended.lookup(np.array([0x18FEF100, 6])).tolist() == [2, 0]


# --------------------------------------------------------------------------------------
# property test: vectorized builder == slow per-window reference


def _logms(seconds: float) -> float:
    assert seconds >= 0.0, "the builder refuses time going backwards"
    return math.log1p(seconds * 1000.0)


def _mean(v: list[float]) -> float:
    return statistics.fmean(v) if v else 0.0


def _pstd(v: list[float]) -> float:
    return statistics.pstdev(v) if v else 0.0


def reference_graphs(m: Messages, vocab_ids: list[int], window: int, starts: list[int], threshold: float) -> list[dict]:
    """One dict per window, built with plain Python dicts and lists (obviously correct, slow)."""
    ts, ids, dlc, lab = m.timestamp.tolist(), m.can_id.tolist(), m.dlc.tolist(), m.label.tolist()
    pl = m.payload.tolist()
    out = []
    for s in starts:
        rows = list(range(s, s + window))
        occ: dict[int, list[tuple[int, int]]] = {}  # CAN ID -> [(position, row)] in time order
        for p, r in enumerate(rows):
            occ.setdefault(ids[r], []).append((p, r))
        nodes = sorted(occ)
        local = {c: k for k, c in enumerate(nodes)}
        x, node_y, node_id = [], [], []
        for c in nodes:
            o = occ[c]
            k = len(o)
            pairs = list(zip(o[:-1], o[1:]))
            iats = [_logms(ts[r2] - ts[r1]) for (_, r1), (_, r2) in pairs]
            gaps = [_logms(ts[r] - ts[r - 1]) if r > 0 else 0.0 for _, r in o]
            changes = [sum(abs(pl[r2][b] - pl[r1][b]) for b in range(8)) / 8 for (_, r1), (_, r2) in pairs]
            x.append([sum(pl[r][b] for _, r in o) / k / 255 for b in range(8)] + [
                k / window, o[0][0] / window, o[-1][0] / window, sum(dlc[r] for _, r in o) / k / 8,
                _mean(iats), _pstd(iats), _mean(gaps), _mean(changes) / 255,
                statistics.fmean(_pstd([pl[r][b] for _, r in o]) for b in range(8)) / 255])
            node_y.append(int(any(lab[r] for _, r in o)))
            j = bisect.bisect_left(vocab_ids, c)
            node_id.append(j + 1 if j < len(vocab_ids) and vocab_ids[j] == c else 0)
        trans: dict[tuple[int, int], list[tuple[int, float]]] = {}
        for p in range(window - 1):
            a, b = rows[p], rows[p + 1]
            trans.setdefault((local[ids[a]], local[ids[b]]), []).append((p, _logms(ts[b] - ts[a])))
        edges = sorted(trans)
        ea = []
        for (a, b) in edges:
            t = trans[(a, b)]
            dts = [d for _, d in t]
            ea.append([len(t) / (window - 1), _mean(dts), _pstd(dts), t[0][0] / window, t[-1][0] / window,
                       float(a == b), float((b, a) in trans)])
        share = sum(lab[r] for r in rows) / window
        out.append({"can_id": nodes, "x": x, "node_y": node_y, "node_id": node_id, "edges": edges, "edge_attr": ea,
                    "share": share, "y": int(share > threshold)})
    return out


def _messages(ids: np.ndarray, seed: int, attack_type: str = "DoS") -> Messages:
    rng = np.random.default_rng(seed)
    n = ids.shape[0]
    # increasing timestamps, some of them equal (time never goes backwards: the readers refuse it)
    steps = rng.choice([0.0, 0.0001, 0.0005, 0.002, 0.0003], size=n)
    ts = 1_500_000_000.0 + np.cumsum(steps)
    dlc = rng.integers(0, 9, n).astype(np.uint8)
    payload = rng.integers(0, 256, (n, 8)).astype(np.uint8)
    payload[np.arange(8)[None, :] >= dlc[:, None]] = 0
    label = (rng.random(n) < 0.15).astype(np.uint8)
    return Messages(ts, ids.astype(np.uint32), dlc, payload, label, "mem://test", attack_type)


ID_POOL = [0x000, 0x001, 0x0C1, 0x110, 0x4B1, 0x7FF, 0x1FFFFFFF | EXTENDED_ID_FLAG]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ids=st.lists(st.sampled_from(ID_POOL), min_size=0, max_size=70), seed=st.integers(0, 2**16),
       window=st.integers(2, 12), stride=st.integers(1, 15), threshold=st.sampled_from([0.0, 0.1, 0.5]),
       vocab_ids=st.sets(st.sampled_from(ID_POOL)), explicit=st.booleans(), chunk=st.sampled_from([1 << 15, 1, 25]))
def test_build_graphs_matches_reference(ids, seed, window, stride, threshold, vocab_ids, explicit, chunk):
    msgs = _messages(np.array(ids, dtype=np.uint32), seed)
    vocab = IdVocab.fit([np.array(sorted(vocab_ids), dtype=np.uint32)])
    starts = window_starts(len(msgs), window, stride)
    if explicit and starts.size:  # a sorted subset, as the train/validation split passes
        starts = np.random.default_rng(seed).permutation(starts)[: max(1, starts.size // 2)]
        starts.sort()
    saved, graphs._CHUNK_MESSAGES = graphs._CHUNK_MESSAGES, chunk  # small chunks: windows split across several
    try:
        gs = build_graphs(msgs, vocab, window, stride, threshold, starts=starts if explicit else None)
    finally:
        graphs._CHUNK_MESSAGES = saved
    ref = reference_graphs(msgs, sorted(vocab_ids), window, starts.tolist(), threshold)
    _assert_equal_to_reference(gs, ref, starts)


def _assert_equal_to_reference(gs: GraphSet, ref: list[dict], starts: np.ndarray) -> None:
    assert len(gs) == len(ref)
    assert gs.start.tolist() == starts.tolist()
    assert gs.y.tolist() == [r["y"] for r in ref]
    assert gs.attack_type.tolist() == [r["y"] for r in ref]  # types ["normal", "DoS"]
    np.testing.assert_allclose(gs.attack_share.numpy(), [r["share"] for r in ref], rtol=1e-6)
    assert gs.num_nodes.tolist() == [len(r["can_id"]) for r in ref]
    assert gs.num_edges.tolist() == [len(r["edges"]) for r in ref]
    assert gs.can_id.tolist() == [c for r in ref for c in r["can_id"]]
    assert gs.node_id.tolist() == [c for r in ref for c in r["node_id"]]
    assert gs.node_y.tolist() == [c for r in ref for c in r["node_y"]]
    assert gs.edge_index.t().tolist() == [list(e) for r in ref for e in r["edges"]]
    if ref:
        np.testing.assert_allclose(gs.x.numpy(), np.array([v for r in ref for v in r["x"]]), rtol=1e-5, atol=2e-6)
        np.testing.assert_allclose(gs.edge_attr.numpy(), np.array([v for r in ref for v in r["edge_attr"]]),
                                   rtol=1e-5, atol=2e-6)
    else:
        assert gs.x.shape == (0, len(NODE_FEATURES)) and gs.edge_attr.shape == (0, len(EDGE_FEATURES))


@pytest.mark.parametrize("window, n, n_ids", [(300, 700, 3), (2, 9, 3), (600, 1300, 400)])
def test_large_and_minimal_windows_match_reference(window: int, n: int, n_ids: int):
    """Windows longer than any per-node count a packed integer sum might assume (300 messages of
    one ID), windows with more than 256 nodes (edge codes beyond 16 bits), and W = 2."""
    rng = np.random.default_rng(window)
    pool = np.arange(0x10, 0x10 + n_ids, dtype=np.uint32)
    p = np.full(n_ids, 0.1 / (n_ids - 1))
    p[0] = 0.9
    ids = rng.choice(pool, size=n, p=p) if n_ids == 3 else rng.permutation(np.resize(pool, n))
    msgs = _messages(ids, seed=window)
    msgs.payload[:] = np.where(np.arange(8) < msgs.dlc[:, None], 255 - rng.integers(0, 3, (n, 8)), 0).astype(np.uint8)
    gs = build_graphs(msgs, IdVocab.fit([ids[:5]]), window, window)
    starts = window_starts(n, window, window)
    _assert_equal_to_reference(gs, reference_graphs(msgs, sorted(set(ids[:5].tolist())), window, starts.tolist(), 0.0), starts)


def test_attack_free_file_has_one_type():
    ids = np.array([1, 2, 1, 2, 3, 1], np.uint32)
    msgs = _messages(ids, seed=1, attack_type="attack-free")
    msgs.label[:] = 0
    gs = build_graphs(msgs, VOCAB, window=3, stride=3)
    assert gs.attack_types == ["normal"] and gs.attack_type.tolist() == [0, 0] and gs.y.tolist() == [0, 0]


# --------------------------------------------------------------------------------------
# GraphSet: subset / concat / to_data / store


def _two_files() -> tuple[GraphSet, GraphSet]:
    rng = np.random.default_rng(7)
    a = build_graphs(_messages(rng.choice(np.array(ID_POOL, np.uint32), 60), 1, "DoS"), VOCAB, 6, 6)
    b = build_graphs(_messages(rng.choice(np.array(ID_POOL, np.uint32), 45), 2, "fuzzing"), VOCAB, 5, 5)
    b.files = ["mem://other"]
    return a, b


def _assert_same(a: GraphSet, b: GraphSet) -> None:
    for name in GraphSet.TENSORS:
        ta, tb = getattr(a, name), getattr(b, name)
        assert ta.dtype == tb.dtype and torch.equal(ta, tb), name
    assert a.attack_types == b.attack_types and a.files == b.files


def test_subset_and_concat_equalities():
    a, b = _two_files()
    both = GraphSet.concat([a, b])
    assert len(both) == len(a) + len(b) == 19
    assert both.attack_types == ["normal", "DoS", "fuzzing"]
    assert both.files == ["mem://test", "mem://other"]
    assert both.file_index.tolist() == [0] * len(a) + [1] * len(b)
    # types were remapped: b's attack windows point at "fuzzing" (index 2) now
    assert set(both.attack_type[len(a):].tolist()) <= {0, 2} and 2 in both.attack_type[len(a):].tolist()
    assert torch.equal(both.node_ptr[-1:], torch.tensor([a.node_ptr[-1] + b.node_ptr[-1]]))
    # subset of everything, in order, is the identity
    _assert_same(both.subset(np.arange(len(both))), both)
    # splitting and concatenating again gives the original back
    idx = np.arange(len(both))
    _assert_same(GraphSet.concat([both.subset(idx[:7]), both.subset(idx[7:])]), both)
    # a subset of b's part equals b, apart from the merged type/file lists
    sub = both.subset(idx[len(a):])
    assert torch.equal(sub.x, b.x) and torch.equal(sub.edge_index, b.edge_index) and torch.equal(sub.edge_attr, b.edge_attr)
    assert torch.equal(sub.node_ptr, b.node_ptr) and torch.equal(sub.edge_ptr, b.edge_ptr)
    # reordering graphs moves whole graphs
    rev = both.subset(idx[::-1])
    for i in (0, 5, 18):
        d, e = both.to_data(i), rev.to_data(len(both) - 1 - i)
        assert torch.equal(d.x, e.x) and torch.equal(d.edge_index, e.edge_index) and torch.equal(d.y, e.y)
    assert len(GraphSet.concat([])) == 0
    _assert_same(GraphSet.concat([a]), a)


def test_to_data_contract():
    a, _ = _two_files()
    d = a.to_data(3)
    n0, n1 = int(a.node_ptr[3]), int(a.node_ptr[4])
    assert d.num_nodes == n1 - n0 and d.x.shape == (n1 - n0, len(NODE_FEATURES))
    assert d.edge_index.dtype == torch.long and int(d.edge_index.max()) < d.num_nodes
    assert d.node_y.dtype == torch.long and d.y.shape == (1,)
    assert len(a.to_data_list()) == len(a)


def test_store_roundtrip_mmap_weights_only(tmp_path: Path):
    a, b = _two_files()
    both = GraphSet.concat([a, b])
    path = tmp_path / "sub" / "train.pt"
    both.save(path, meta={"split": "train"})
    assert [p.name for p in path.parent.iterdir()] == ["train.pt"]  # no temp file left behind
    for mmap in (True, False):
        _assert_same(GraphSet.load(path, mmap=mmap), both)
    # the store is raw arrays behind a JSON header: no pickled code
    header, start, size = store.read_header(path)
    assert path.read_bytes()[:8] == store.MAGIC and set(header["tensors"]) == set(GraphSet.TENSORS)
    assert header["split"] == "train" and header["format"] == graphs.GRAPH_FORMAT_VERSION
    assert start == 64 and all(t["offset"] % 64 == 0 for t in header["tensors"].values())  # aligned for mapping
    assert size > start + sum(t["nbytes"] for t in header["tensors"].values())  # the JSON header follows the data
    empty = empty_graphset()
    empty.save(tmp_path / "empty.pt")
    assert len(GraphSet.load(tmp_path / "empty.pt")) == 0


def test_store_write_is_atomic(tmp_path: Path, monkeypatch):
    a, b = _two_files()
    path = tmp_path / "train.pt"
    a.save(path)

    def crash(self, data):
        raise OSError("disk full")

    monkeypatch.setattr(store._BlockHasher, "update", crash)  # fails half-way through writing the file
    with pytest.raises(OSError, match="disk full"):
        b.save(path)
    monkeypatch.undo()
    _assert_same(GraphSet.load(path), a)  # the old store is intact
    assert [p.name for p in tmp_path.iterdir()] == ["train.pt"]  # and the partial file is gone


def test_store_format_version_is_checked(tmp_path: Path, monkeypatch):
    a, _ = _two_files()
    a.save(tmp_path / "s.pt")

    monkeypatch.setattr(graphs, "GRAPH_FORMAT_VERSION", graphs.GRAPH_FORMAT_VERSION + 1)
    with pytest.raises(ValueError, match="delete it to rebuild"):
        GraphSet.load(tmp_path / "s.pt")


def test_store_only_format_bumps_keep_models_valid():
    """A graph-format bump for the store file or labels alone must not invalidate trained models;
    format 5 (before extended IDs got their own keys) only with 11-bit IDs."""
    from kdkit.data.graphs import EDGE_FEATURES, GRAPH_FORMAT_VERSION, NODE_FEATURES, layout_matches, model_reads_format

    for fmt in (None, 6, 7, GRAPH_FORMAT_VERSION):
        assert model_reads_format(fmt) and layout_matches(NODE_FEATURES, EDGE_FEATURES, fmt)
    assert model_reads_format(5, [0x0, 0x2A0, 0x7FF]) and not model_reads_format(5, [0x18FF0001])
    assert not model_reads_format(5) and not model_reads_format(4, [0x10])
    assert not layout_matches(list(NODE_FEATURES)[:-1], EDGE_FEATURES, GRAPH_FORMAT_VERSION)
