"""The live detector's one-window graph builder (kdkit.stream.window, compiled with numba):
build_graphs' graph of the same window (same nodes, IDs and edges; features equal within
float rounding, exactly on the hand-made streams), on hand-made streams (first window, sliding
and gapped windows, one-ID windows, extended IDs, equal timestamps) and on the shared real data;
and a detector fed frame by frame through it decides as through build_graphs.

Run: .venv/bin/python -m pytest tests/test_stream_window.py -q
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require

from kdkit.data.graphs import IdVocab, build_graphs
from kdkit.data.loader import gather_windows
from kdkit.data.readers import EXTENDED_ID_FLAG, Messages, read_messages
from kdkit.stream import Detector
from kdkit.stream.window import window_graph

REAL_CANDUMP = Path(__file__).resolve().parents[2] / "shared" / "data" / "candump" / "toyota-rav4-2018-highway.candump.log.gz"


def _stream(n: int, seed: int = 0) -> Messages:
    """Random traffic: a few IDs (some extended, some repeated in runs), random DLCs and payloads,
    timestamps with equal neighbours."""
    rng = np.random.default_rng(seed)
    pool = np.array([0x100, 0x101, 0x2A0, 0x7FF, 0x18FEF100 | EXTENDED_ID_FLAG, 0x81 | EXTENDED_ID_FLAG], np.uint32)
    ids = pool[rng.integers(0, pool.size, n)]
    ids[40:60] = 0x2A0  # a run of one ID: windows of a single node
    ts = np.cumsum(rng.choice([0.0, 1e-4, 3e-4, 2e-3], n))
    dlc = rng.integers(0, 9, n).astype(np.uint8)
    payload = rng.integers(0, 256, (n, 8)).astype(np.uint8)
    payload[np.arange(8) >= dlc[:, None]] = 0
    return Messages(ts, ids, dlc, payload, np.zeros(n, np.uint8), source="random")


def _assert_windows_equal(msgs: Messages, vocab: IdVocab, window: int, stride: int, exact: bool = True) -> int:
    """Every window's graph against build_graphs'; ``exact``: features bit-equal (else within
    1e-6: math.log1p and numpy's vectorized log1p may differ in the last bit)."""
    gs = build_graphs(msgs, vocab, window, stride)
    same = np.array_equal if exact else (lambda a, b: np.allclose(a, b, rtol=1e-6, atol=1e-7))
    for g in range(len(gs)):
        s = int(gs.start[g])
        got = window_graph(msgs.timestamp[s:s + window], msgs.can_id[s:s + window], msgs.dlc[s:s + window],
                           msgs.payload[s:s + window], float(msgs.timestamp[s - 1]) if s else None, vocab)
        ref = gather_windows(gs, np.array([g]))
        assert got.x.dtype == np.float32 and got.edge_attr.dtype == np.float32
        assert same(got.x, ref.x.numpy()), (window, stride, g, np.abs(got.x - ref.x.numpy()).max())
        assert np.array_equal(got.node_id, ref.node_id.numpy())
        assert np.array_equal(got.can_id, gs.can_id[gs.node_ptr[g]:gs.node_ptr[g + 1]].numpy())
        assert np.array_equal(got.edge_index, ref.edge_index.numpy())
        assert same(got.edge_attr, ref.edge_attr.numpy()), (window, stride, g)
        batch = got.batch()
        assert batch.num_graphs == 1 and batch.ptr.tolist() == [0, got.x.shape[0]] and not batch.batch.any()
    return len(gs)


@pytest.mark.parametrize("window", [2, 3, 7, 100])
def test_window_graph_equals_build_graphs(window):
    msgs = _stream(700)
    vocab = IdVocab.from_list([0x100, 0x2A0, 0x18FEF100 | EXTENDED_ID_FLAG])  # the others are out of vocabulary
    for stride in sorted({1, max(window - 1, 1), window, window + 3}):
        assert _assert_windows_equal(msgs, vocab, window, stride) > 0


def test_window_graph_equals_build_graphs_on_real_traffic(shared_data_root):
    require(REAL_CANDUMP.is_file(), f"{REAL_CANDUMP} not found")
    rav4 = read_messages(REAL_CANDUMP, channel="can0").slice(0, 12_000)
    fuzzing = read_messages(shared_data_root / "hcrl-sa" / "test_01_known_vehicle_known_attack" / "fuzzing-kia.csv.gz")
    for msgs in (rav4, fuzzing.slice(0, 12_000)):
        vocab = IdVocab.fit([msgs.can_id[:3000]])
        assert _assert_windows_equal(msgs, vocab, 100, 100, exact=False) == 120
        assert _assert_windows_equal(msgs.slice(0, 3000), vocab, 100, 37, exact=False) > 70


def test_window_graph_checks_its_input():
    one = np.zeros(1)
    with pytest.raises(ValueError, match="at least 2 messages, got 1"):
        window_graph(one, np.zeros(1, np.uint32), np.zeros(1, np.uint8), np.zeros((1, 8), np.uint8), None,
                     IdVocab.from_list([1]))
    msgs = _stream(50)  # an empty vocabulary: every node out of vocabulary
    got = window_graph(msgs.timestamp, msgs.can_id, msgs.dlc, msgs.payload, None, IdVocab.from_list([]))
    assert got.node_id.tolist() == [0] * got.x.shape[0] and got.x.shape[0] > 1


def _fake_scores(batch) -> np.ndarray:
    """A deterministic stand-in for a model: a per-window sum over every input tensor (float64,
    summed in node and edge order, so equal tensors give equal scores)."""
    g = batch.batch
    node = batch.x.double().sum(1) * (batch.node_id.double() + 1)
    edge = batch.edge_attr.double().sum(1) * (batch.edge_index[0] - batch.edge_index[1]).double()
    out = torch.zeros(batch.num_graphs, dtype=torch.float64).index_add_(0, g, node)
    return out.index_add_(0, g[batch.edge_index[0]], edge).numpy()


@pytest.mark.parametrize("stride", [100, 60, 130])
def test_feed_decides_as_the_graphset_path(stride):
    """feed() through window_graph + score_batch gives the decisions of the build_graphs path,
    field by field (scores equal to float rounding), and of feed_many over the same messages."""
    msgs = _stream(3000, seed=1)
    vocab = IdVocab.from_list([0x100, 0x101, 0x7FF])

    def score_windows(gs):
        return _fake_scores(gather_windows(gs, np.arange(len(gs))))

    threshold = float(np.median(score_windows(build_graphs(msgs, vocab, 100, stride))))  # half the windows alarm
    fast = Detector(score_windows, vocab, 100, stride, threshold=threshold, score_batch=_fake_scores)
    plain = Detector(score_windows, vocab, 100, stride, threshold=threshold)
    keys = msgs.can_id.tolist()
    frames = [(float(msgs.timestamp[i]), keys[i] & ~EXTENDED_ID_FLAG, msgs.payload[i, :msgs.dlc[i]].tobytes(),
               bool(keys[i] & EXTENDED_ID_FLAG)) for i in range(len(msgs))]
    got = [d for d in map(fast.feed, frames) if d is not None]
    ref = [d for d in map(plain.feed, frames) if d is not None]
    batch = fast.clone().feed_many(msgs, labelled=False)
    assert len(got) == len(ref) == len(batch) == (3000 - 100) // stride + 1
    strip = lambda d: {k: v for k, v in d.to_dict().items() if k not in ("latency_ms", "cpu_ms", "score")}  # noqa: E731
    assert [strip(d) for d in got] == [strip(d) for d in ref]
    np.testing.assert_allclose([d.score for d in got], [d.score for d in ref], rtol=1e-9)
    assert {d.is_attack for d in got} == {True, False} and any(d.oov_ids for d in got)
    np.testing.assert_allclose([d.score for d in got], [d.score for d in batch], rtol=1e-12)
    assert (fast.windows, fast.alarms) == (plain.windows, plain.alarms)
    assert fast.clone().score_batch is _fake_scores



@pytest.mark.parametrize("kind", ["logits", "score"])
def test_exported_output_kind(tmp_path, monkeypatch, kind):
    """A GAT package's logits become softmax(...)[:, 1]; a fusion student's fused score is the score;
    a vocabulary larger than the model's num_ids is refused."""
    import json

    from kdkit.data.graphs import EDGE_FEATURES, GRAPH_FORMAT_VERSION, NODE_FEATURES
    from kdkit.stream import detector as detector_module

    def program(batch):  # per-window sum of the node features, as logits or as a score
        total = torch.zeros(batch.num_graphs).index_add_(0, batch.batch, batch.x.sum(1))
        return torch.stack([total, -total], 1) if kind == "logits" else total

    program.output_kind = kind
    monkeypatch.setattr(detector_module, "load_exported", lambda path, validate=True: program)
    meta = {"vocab": [0x100], "window": 100, "stride": 100, "node_features": list(NODE_FEATURES),
            "edge_features": list(EDGE_FEATURES), "graph_format": GRAPH_FORMAT_VERSION, "threshold": 0.0,
            "model_config": {"num_ids": 2}}
    (tmp_path / "m.json").write_text(json.dumps(meta))
    (tmp_path / "m.pt2").write_bytes(b"")  # the package itself is stubbed above; the file must exist
    det = Detector.from_exported(tmp_path / "m.pt2")
    msgs = _stream(300)
    totals = program(gather_windows(build_graphs(msgs, det.vocab, 100, 100), np.arange(3)))
    ref = (torch.softmax(totals, -1)[:, 1] if kind == "logits" else totals).numpy()
    keys = msgs.can_id.tolist()
    frames = [(float(msgs.timestamp[i]), keys[i] & ~EXTENDED_ID_FLAG, msgs.payload[i, :msgs.dlc[i]].tobytes(),
               bool(keys[i] & EXTENDED_ID_FLAG)) for i in range(len(msgs))]
    np.testing.assert_allclose([d.score for d in det.feed_many(msgs)], ref, rtol=1e-6)
    np.testing.assert_allclose([d.score for d in map(det.clone().feed, frames) if d], ref, rtol=1e-6)
    assert det.threshold == 0.0
    (tmp_path / "m.json").write_text(json.dumps({**meta, "vocab": [0x100, 0x200], "model_config": {"num_ids": 2}}))
    with pytest.raises(ValueError, match="a vocabulary of 3 IDs for a model of num_ids=2"):
        Detector.from_exported(tmp_path / "m.pt2")


def test_graph_scorer_is_the_softmax_of_the_package_logits():
    """The one-window scorer of an exported package: softmax(logits)[:, 1] in float64 without
    overflow at extreme logits, a fusion package's score as it comes, the per-size inputs
    (batch, ptr, node_slots) as scorer_inputs makes them, and no scorer without a direct call."""
    from kdkit.models.scorer import scorer_inputs
    from kdkit.stream.detector import _graph_scorer

    msgs = _stream(100)
    graph = window_graph(msgs.timestamp, msgs.can_id, msgs.dlc, msgs.payload, None, IdVocab.from_list([0x100]))
    seen = []

    def program(*tensors):
        seen.append(tensors)
        return torch.tensor([[logits[0], logits[1]]])

    program.run = program
    score = _graph_scorer(program, logits=True)
    for logits in ([0.3, -1.2], [-2.0, 5.5], [1000.0, -1000.0], [-1000.0, 1000.0], [88.0, 88.0]):
        ref = torch.softmax(torch.tensor(logits).double(), -1)[1].item()  # the float32 logits, in float64
        assert score(graph) == pytest.approx(ref, rel=1e-12, abs=1e-300)
    for got, want in zip(seen[-1], scorer_inputs(graph.batch())):
        assert torch.equal(got, want) and got.dtype == want.dtype and got.shape == want.shape

    def fused(*tensors):
        return torch.tensor([0.25])

    fused.run = fused
    assert _graph_scorer(fused, logits=False)(graph) == 0.25
    assert _graph_scorer(lambda batch: None, logits=True) is None
