"""One window's graph, built straight into the arrays a model reads: the live detector's path.

    graph = window_graph(ts, ids, dlc, payload, prev_ts, vocab)   # the window's W messages
    logits = program(graph.batch())                                # a kdkit.data.loader.WindowBatch

:func:`kdkit.data.graphs.build_graphs` builds many windows at once with vectorized numpy; on a
single window most of its time is fixed cost (chunking, per-window offsets, a
:class:`~kdkit.data.graphs.GraphSet`, then :func:`~kdkit.data.loader.gather_windows` around one
graph), and even a lean numpy version for one window makes ~150 small numpy calls. A live
decision waits for that, after the ~100 ms between two windows in which caches go cold, so here
one window's graph is a single loop over its ``W`` messages compiled to machine code with numba
(:func:`_graph_arrays`, compiled on first use and cached on disk): measured on the RAV4 can0
windows, ~60 us warm and ~210 us after a 10 ms pause, against ~370 / ~940 us for the numpy one.

The features are :data:`kdkit.data.graphs.NODE_FEATURES` and :data:`~kdkit.data.graphs.EDGE_FEATURES`,
summed in the order ``build_graphs`` sums them (messages of an ID in time order, transitions in
window order). ``math.log1p`` here and numpy's vectorized ``log1p`` there may differ in the last
bit, and the 8 payload-byte spreads are added in another order, so the float32 features equal
``build_graphs``' exactly on most windows and within 1e-6 on every window
(``tests/test_stream_window.py`` checks that on simulated and real traffic; a change of the
feature layout there must be made here too, and that test fails until it is).
"""
from __future__ import annotations

import logging
import math
import time
from typing import NamedTuple

import numpy as np
import torch

from kdkit.data.graphs import IdVocab
from kdkit.data.jit import leaf_kernel
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


def _graph_arrays(ts, ids, dlc, payload, prev_ts, vocab):
    """The arrays of :class:`WindowGraph` for one window (plain Python, compiled by numba).

    ``prev_ts``: the timestamp of the message before the window (``ts[0]`` for the stream's first
    window: a gap of 0). ``vocab``: the vocabulary's IDs, ascending (``IdVocab.ids``)."""
    W = ts.shape[0]
    gap = np.empty(W)  # log1p(ms) since the stream's previous message
    gap[0] = math.log1p((ts[0] - prev_ts) * 1000.0)
    for i in range(1, W):
        gap[i] = math.log1p((ts[i] - ts[i - 1]) * 1000.0)

    # nodes: one per distinct ID, ascending; a stable sort keeps each ID's messages in time order
    order = np.argsort(ids, kind="mergesort")
    node_of = np.empty(W, np.int64)
    n = 0
    for p in range(W):
        if p > 0 and ids[order[p]] != ids[order[p - 1]]:
            n += 1
        node_of[order[p]] = n
    n += 1
    can_id = np.empty(n, np.int64)
    cnt = np.zeros(n)
    first = np.zeros(n, np.int64)
    last = np.zeros(n, np.int64)
    pay_sum = np.zeros((n, 8), np.int64)
    pay_sq = np.zeros((n, 8), np.int64)
    dlc_sum = np.zeros(n, np.int64)
    gap_sum = np.zeros(n)
    iat_sum = np.zeros(n)
    iat_sq = np.zeros(n)
    change_sum = np.zeros(n)
    prev = 0
    for p in range(W):
        m = order[p]
        k = node_of[m]
        if cnt[k] == 0:
            can_id[k] = ids[m]
            first[k] = m
        else:  # the ID's previous message is order[p - 1]
            iat = math.log1p((ts[m] - ts[prev]) * 1000.0)
            iat_sum[k] += iat
            iat_sq[k] += iat * iat
            change = 0
            for j in range(8):
                change += abs(np.int64(payload[m, j]) - np.int64(payload[prev, j]))
            change_sum[k] += change / 8.0
        last[k] = m
        cnt[k] += 1
        for j in range(8):
            b = np.int64(payload[m, j])
            pay_sum[k, j] += b
            pay_sq[k, j] += b * b
        dlc_sum[k] += dlc[m]
        gap_sum[k] += gap[m]
        prev = m

    x = np.empty((n, 17), np.float32)
    node_id = np.zeros(n, np.int64)
    for k in range(n):
        c = cnt[k]
        spread = 0.0
        for j in range(8):
            mean = pay_sum[k, j] / c
            x[k, j] = mean / 255.0
            spread += math.sqrt(max(pay_sq[k, j] / c - mean * mean, 0.0))
        pairs = max(c - 1.0, 1.0)
        iat_mean = iat_sum[k] / pairs
        x[k, 8] = c / W
        x[k, 9] = first[k] / W
        x[k, 10] = last[k] / W
        x[k, 11] = dlc_sum[k] / c / 8.0
        x[k, 12] = iat_mean
        x[k, 13] = math.sqrt(max(iat_sq[k] / pairs - iat_mean * iat_mean, 0.0))
        x[k, 14] = gap_sum[k] / c
        x[k, 15] = change_sum[k] / pairs / 255.0
        x[k, 16] = spread / 8 / 255.0
        pos = np.searchsorted(vocab, can_id[k])
        if pos < vocab.shape[0] and vocab[pos] == can_id[k]:
            node_id[k] = pos + 1  # 0 = out of vocabulary

    # edges: consecutive messages (a -> b), one edge per distinct pair, ordered by (a, b)
    code = np.empty(W - 1, np.int64)
    for j in range(W - 1):
        code[j] = node_of[j] * n + node_of[j + 1]
    e_order = np.argsort(code, kind="mergesort")
    E = 1
    for p in range(1, W - 1):
        if code[e_order[p]] != code[e_order[p - 1]]:
            E += 1
    e_code = np.empty(E, np.int64)
    e_cnt = np.zeros(E)
    e_first = np.zeros(E, np.int64)
    e_last = np.zeros(E, np.int64)
    e_sum = np.zeros(E)
    e_sq = np.zeros(E)
    e = -1
    for p in range(W - 1):
        j = e_order[p]
        if p == 0 or code[j] != code[e_order[p - 1]]:
            e += 1
            e_code[e] = code[j]
            e_first[e] = j
        e_last[e] = j
        e_cnt[e] += 1
        g = gap[j + 1]  # the gap of message j + 1 is the time from message j
        e_sum[e] += g
        e_sq[e] += g * g
    edge_index = np.empty((2, E), np.int64)
    edge_attr = np.empty((E, 7), np.float32)
    for e in range(E):
        a = e_code[e] // n
        b = e_code[e] - a * n
        edge_index[0, e] = a
        edge_index[1, e] = b
        c = e_cnt[e]
        mean = e_sum[e] / c
        edge_attr[e, 0] = c / (W - 1)
        edge_attr[e, 1] = mean
        edge_attr[e, 2] = math.sqrt(max(e_sq[e] / c - mean * mean, 0.0))
        edge_attr[e, 3] = e_first[e] / W
        edge_attr[e, 4] = e_last[e] / W
        edge_attr[e, 5] = 1.0 if a == b else 0.0
        rev = b * n + a
        q = np.searchsorted(e_code, rev)
        edge_attr[e, 6] = 1.0 if q < E and e_code[q] == rev else 0.0
    return x, can_id, node_id, edge_index, edge_attr


_compiled = None


def _kernel():
    """:func:`_graph_arrays` compiled (numba, on first use; cached beside this file)."""
    global _compiled
    if _compiled is None:
        import numba  # imported here: only the detector's one-window path needs it

        def a1(dtype):  # a 1-D array of any layout
            return numba.types.Array(dtype, 1, "A")

        signature = numba.types.Tuple((numba.float32[:, :], numba.int64[:], numba.int64[:], numba.int64[:, :],
                                       numba.float32[:, :]))(
            a1(numba.float64), a1(numba.uint32), a1(numba.uint8), numba.types.Array(numba.uint8, 2, "A"),
            numba.float64, a1(numba.uint32))
        started = time.perf_counter()
        _compiled = leaf_kernel(numba.njit(signature, cache=True, nogil=True)(_graph_arrays))  # one signature: one compilation
        took = time.perf_counter() - started
        if took > 2.0:
            logging.getLogger("kdkit.stream").info(
                "compiled the one-window graph builder in %.1f s (numba, first use; cached on disk for the next start)",
                took)
    return _compiled


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
    if ts.shape[0] < 2:
        raise ValueError(f"a window needs at least 2 messages, got {ts.shape[0]}")
    ts, ids, dlc = _as_kernel_arg(ts, np.float64), _as_kernel_arg(ids, np.uint32), _as_kernel_arg(dlc, np.uint8)
    payload, vocab_ids = _as_kernel_arg(payload, np.uint8), _as_kernel_arg(vocab.ids, np.uint32)
    prev = float(ts[0]) if prev_ts is None else float(prev_ts)  # the stream's first window: a gap of 0
    return WindowGraph(*_kernel()(ts, ids, dlc, payload, prev, vocab_ids))


def _as_kernel_arg(a: np.ndarray, dtype) -> np.ndarray:
    """``a`` as the compiled kernel's one signature takes it: that dtype, writeable (numba types
    read-only arrays, e.g. views of pyarrow buffers, apart); a copy only when needed."""
    return a if a.dtype == dtype and a.flags.writeable else np.array(a, dtype)
