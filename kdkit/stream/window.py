"""One window's graph, built straight into the tensors a model reads: the live detector's path.

    graph = window_graph(ts, ids, dlc, payload, prev_ts, vocab)   # the window's W messages
    logits = program(graph.batch())                                # a kdkit.data.loader.WindowBatch

:func:`kdkit.data.graphs.build_graphs` builds many windows at once; on a single window most
of its time is fixed cost (chunking, per-window offsets, a :class:`~kdkit.data.graphs.GraphSet`
and then :func:`~kdkit.data.loader.gather_windows` around one graph). This module computes the
same node and edge features for one window with ~150 small numpy calls over its ``W`` messages
and no per-window bookkeeping: ~40 % of the CPU time of ``build_graphs`` + ``gather_windows``
for one window (0.49 vs 1.26 ms p50 measured on a loaded 2-core VM).

The features are :data:`kdkit.data.graphs.NODE_FEATURES` and :data:`~kdkit.data.graphs.EDGE_FEATURES`
computed with the same float64 operations in the same order as ``build_graphs``, so the
tensors are bit-identical to its graph of the same window (``tests/test_stream_window.py``
checks that on simulated and real traffic; a change of the feature layout there must be made
here too, and that test fails until it is).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from kdkit.data.graphs import EDGE_FEATURES, NODE_FEATURES, IdVocab
from kdkit.data.loader import WindowBatch


class WindowGraph(NamedTuple):
    """One window's graph: ``x`` float32 [nodes, F_node], ``can_id`` (``Messages.can_id`` keys,
    one node per distinct ID, ascending), ``node_id`` (vocabulary index, 0 = out of vocabulary),
    ``edge_index`` int64 [2, edges], ``edge_attr`` float32 [edges, F_edge]."""

    x: np.ndarray
    can_id: np.ndarray
    node_id: np.ndarray
    edge_index: np.ndarray
    edge_attr: np.ndarray

    def batch(self) -> WindowBatch:
        """The graph as a one-window batch for a model or an exported scorer."""
        n = self.x.shape[0]
        return WindowBatch(torch.from_numpy(self.x), torch.from_numpy(self.node_id), torch.from_numpy(self.edge_index),
                           torch.from_numpy(self.edge_attr), torch.zeros(n, dtype=torch.long),
                           torch.tensor([0, n]), 1)


def _log_ms(seconds: np.ndarray) -> np.ndarray:
    return np.log1p(seconds * 1000.0)  # as kdkit.data.graphs


def _mean_std(values: np.ndarray, group: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-group mean and std of ``values`` (0 for an empty group), as ``build_graphs`` computes them."""
    safe = np.maximum(count, 1.0)
    mean = np.bincount(group, weights=values, minlength=count.shape[0]) / safe
    s2 = np.bincount(group, weights=values * values, minlength=count.shape[0])
    return mean, np.sqrt(np.maximum(s2 / safe - mean * mean, 0.0))


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Runs of equal values in sorted ``keys``: (new run here, run of each element, first, last)."""
    n = keys.shape[0]
    is_start = np.empty(n, bool)
    is_start[0] = True
    np.not_equal(keys[1:], keys[:-1], out=is_start[1:])
    run = is_start.cumsum()
    run -= 1
    first = is_start.nonzero()[0]
    last = np.empty_like(first)
    last[:-1] = first[1:]
    last[-1] = n
    last -= 1
    return is_start, run, first, last


def window_graph(ts: np.ndarray, ids: np.ndarray, dlc: np.ndarray, payload: np.ndarray, prev_ts: float | None,
                 vocab: IdVocab) -> WindowGraph:
    """The graph of one window of ``W = len(ts)`` messages.

    Args:
        ts, ids, dlc, payload: the window's ``Messages`` columns (float64, uint32 keys, uint8,
            uint8 [W, 8] zero-padded past the DLC), in stream order; ``W >= 2``.
        prev_ts: the timestamp of the message before the window (the bus-load feature looks one
            message back); None for the stream's first window.
        vocab: the model's ID vocabulary.
    """
    W = ts.shape[0]
    gap = np.empty(W)
    gap[0] = 0.0 if prev_ts is None else ts[0] - prev_ts
    np.subtract(ts[1:], ts[:-1], out=gap[1:])
    gap = _log_ms(gap)

    # nodes: one per distinct ID, ascending; a stable sort keeps each ID's messages in time order
    order = np.argsort(ids, kind="stable")
    new_node, node_sorted, first, last = _runs(ids[order])
    n = first.shape[0]
    node_of_msg = np.empty(W, np.int64)
    node_of_msg[order] = node_sorted
    can_id = ids[order[first]].astype(np.int64)
    cnt = (last - first + 1).astype(np.float64)
    rows = np.empty((W, 17), np.int64)  # per message in node order: payload bytes, their squares, DLC
    rows[:, :8] = payload[order]
    np.multiply(rows[:, :8], rows[:, :8], out=rows[:, 8:16])
    rows[:, 16] = dlc[order]
    sums = np.add.reduceat(rows, first, axis=0)  # exact integer sums per node
    pl_mean = sums[:, :8] / cnt[:, None]
    pl_var = np.maximum(sums[:, 8:16] / cnt[:, None] - pl_mean ** 2, 0.0)
    pl_std = np.add.reduce(np.sqrt(pl_var), axis=1) / 8  # = .mean(axis=1), without its Python overhead
    dlc_mean = sums[:, 16] / cnt
    gap_mean = np.bincount(node_of_msg, weights=gap, minlength=n) / np.maximum(cnt, 1.0)
    same = ~new_node[1:]  # consecutive messages of one ID
    pair_node = node_sorted[1:][same]
    ts_s = ts[order]
    iat_mean, iat_std = _mean_std(_log_ms(ts_s[1:][same] - ts_s[:-1][same]), pair_node, cnt - 1.0)
    change = np.add.reduce(np.abs(rows[1:, :8] - rows[:-1, :8]), axis=1)[same] / 8.0
    change_mean = np.bincount(pair_node, weights=change, minlength=n) / np.maximum(cnt - 1.0, 1.0)

    x = np.empty((n, len(NODE_FEATURES)), np.float32)
    np.divide(pl_mean, 255.0, out=x[:, 0:8])
    x[:, 8] = cnt / W
    x[:, 9] = order[first] / W
    x[:, 10] = order[last] / W
    x[:, 11] = dlc_mean / 8.0
    x[:, 12] = iat_mean
    x[:, 13] = iat_std
    x[:, 14] = gap_mean
    x[:, 15] = change_mean / 255.0
    x[:, 16] = pl_std / 255.0

    # edges: consecutive messages (a -> b), one edge per distinct pair, ordered by (a, b)
    code = node_of_msg[:-1] * n + node_of_msg[1:]
    e_order = np.argsort(code, kind="stable")
    e_code_sorted = code[e_order]
    _, edge_sorted, e_first, e_last = _runs(e_code_sorted)
    edge_of_pair = np.empty(W - 1, np.int64)
    edge_of_pair[e_order] = edge_sorted
    e_code = e_code_sorted[e_first]
    edge_index = np.empty((2, e_code.shape[0]), np.int64)
    src, dst = edge_index
    np.floor_divide(e_code, n, out=src)
    np.subtract(e_code, src * n, out=dst)
    e_cnt = (e_last - e_first + 1).astype(np.float64)
    e_mean, e_std = _mean_std(gap[1:], edge_of_pair, e_cnt)  # the gap of message j+1 is the time from message j
    rev = dst * n + src
    reciprocal = e_code[np.minimum(np.searchsorted(e_code, rev), e_code.shape[0] - 1)] == rev

    ea = np.empty((e_code.shape[0], len(EDGE_FEATURES)), np.float32)
    ea[:, 0] = e_cnt / (W - 1)
    ea[:, 1] = e_mean
    ea[:, 2] = e_std
    ea[:, 3] = e_order[e_first] / W
    ea[:, 4] = e_order[e_last] / W
    ea[:, 5] = src == dst
    ea[:, 6] = reciprocal
    return WindowGraph(x, can_id, vocab.lookup(can_id), edge_index, ea)
