"""Window graphs of many windows in one compiled pass (numba): the same arrays, bit for bit, as
the vectorized numpy builder of :mod:`kdkit.data.graphs`, in about half its time.

``graphs._chunk_graphs`` sorts every window's IDs and transitions and reduces the groups with
~60 numpy calls per chunk. Here :func:`_window_loops` visits each window's messages once:

- a window's distinct IDs are found with a small open-addressing hash table (a slot belongs to
  the window whose number it carries, so nothing is cleared between windows), and the few
  distinct IDs (~30 in a window of 100) are sorted, which numbers the nodes as numpy does;
- its transitions are counted in a ``W x W`` table indexed by (source, target) and ordered
  with a bucket sort by source;
- every node's sums are taken in time order and every edge's in transition order, the order in
  which ``np.bincount`` adds them there, so each float sum is the same double (byte sums are
  integers: exact in any order).

:func:`_rows` then turns the sums into features with the float operations numpy does (the same
divisions, ``m * m`` for ``m ** 2``, the eight byte spreads added pairwise as numpy's
``mean(axis=1)`` adds them). It reads columns in loops without branches, so the divisions, most
of its time, run as SIMD vectors. The logarithms are not taken in compiled code: each message's
gap comes in computed by numpy, and the intervals between messages of one ID go out
(``pair_dt``) to numpy's ``log1p`` (``math.log1p`` in compiled code and numpy's vectorized
one may differ in the last bit on some CPUs).

Measured on DoS-kia (182 k messages, one core): 17.7-18.5 ms against 34-37 ms for numpy. The
first call in a process costs ~0.6 CPU s (numba's compiler set-up and the cached machine code
loaded), so ``graphs.BUILDER = "auto"`` takes this path only after 4 M messages.
``tests/test_graph_kernel.py`` compares both builders byte for byte on random and real traffic
and through a streamed preparation.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from kdkit.data.jit import leaf_kernel

_MIX = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: key * this, the top bits index the table


def _table_bits(n: int) -> int:
    """log2 of a hash table size with at least 2 slots per key for ``n`` keys (at least 64)."""
    bits = 6
    while (1 << bits) < 2 * n:
        bits += 1
    return bits


def _window_loops(ids, payload, dlc, lab, gap, ts, W, bits, acc, p_sum, p_sq, node_can, node_y, node_normal, nodes,
                  e_src, e_dst, e_acc, edges, pair_node, pair_dt):
    """Group the ``len(ids) // W`` windows of the flat, window-major input (see
    :func:`chunk_graphs`) into nodes and edges and take their sums; :func:`_rows` turns the sums
    into features. Returns (nodes, edges, pairs) in all.

    Per node ``n`` (windows one after the other, a window's nodes by ID): ``acc[:, n]`` = count,
    first and last position, DLC sum, gap sum, payload-change sum (float64; the integer ones
    exact); ``p_sum``/``p_sq[8 n + i]`` the sum of byte ``i`` and of its square. Per edge ``o``
    (a window's edges by (source, target)): ``e_acc[:, o]`` = count, first and last position, sum
    of gaps and of their squares, reciprocal (0/1). Columns, not rows: :func:`_rows` reads them
    as vectors."""
    G = ids.shape[0] // W
    T = W - 1
    size = 1 << bits
    shift = np.uint64(64 - bits)
    mask = size - 1
    id_tag = np.full(size, np.uint64(0xFFFFFFFFFFFFFFFF), np.uint64)  # hash table: (window << 32) | ID
    id_val = np.zeros(size, np.int64)                                  # ... -> first-appearance index
    ed_tab = np.full(W * W, -1, np.int64)  # transition code -> (window << 32) | edge
    appear = np.empty(W, np.int64)       # message -> first-appearance index of its ID
    uniq = np.empty(W, np.uint64)        # first-appearance index -> ID
    packed = np.empty(W, np.uint64)      # (ID << 16) | first-appearance index, sorted
    rank = np.empty(W, np.int64)         # first-appearance index -> position by ID
    local = np.empty(W, np.int64)        # message -> its node in the window
    last_msg = np.empty(W, np.int64)     # node -> its latest message so far
    ecode = np.empty(T, np.int64)        # edge (first appearance) -> code a * K + b
    eperm = np.empty(T, np.int64)        # position by code -> edge
    bucket = np.empty(W + 1, np.int64)   # edges per source node, then the next free place
    bstart = np.empty(W, np.int64)
    e_cnt = np.empty(T, np.float64)
    e_first = np.empty(T, np.float64)
    e_last = np.empty(T, np.float64)
    e_sum = np.empty(T, np.float64)
    e_sq = np.empty(T, np.float64)
    n_nodes = 0
    n_edges = 0
    n_pairs = 0
    for w in range(G):
        b = w * W
        # ---- the window's distinct IDs, numbered by first appearance
        K = 0
        for j in range(W):
            key = np.uint64(ids[b + j])
            tag = (np.uint64(w) << np.uint64(32)) | key
            h = np.int64((key * _MIX) >> shift)
            while id_tag[h] != tag and (id_tag[h] >> np.uint64(32)) == np.uint64(w):
                h = (h + 1) & mask
            if id_tag[h] != tag:
                id_tag[h] = tag
                id_val[h] = K
                uniq[K] = key
                K += 1
            appear[j] = id_val[h]
        # ---- nodes ordered by ID: an insertion sort of the K distinct IDs, each packed with its
        # first-appearance index (IDs are below 2**32, K below 2**16)
        for k in range(K):
            v = (uniq[k] << np.uint64(16)) | np.uint64(k)
            q = k
            while q > 0 and packed[q - 1] > v:
                packed[q] = packed[q - 1]
                q -= 1
            packed[q] = v
        for q in range(K):
            rank[np.int64(packed[q] & np.uint64(0xFFFF))] = q
            node_can[n_nodes + q] = np.int64(packed[q] >> np.uint64(16))
        # ---- every message, in time order, into its node's sums
        for j in range(W):
            m = b + j
            k = rank[appear[j]]
            local[j] = k
            n = n_nodes + k
            pm = np.uint64(payload[m])
            if acc[0, n] == 0.0:
                acc[1, n] = j
            else:  # a pair with the ID's previous message
                prev = last_msg[k]
                pp = np.uint64(payload[prev])
                change = 0
                for i in range(8):
                    sh = np.uint64(8 * i)
                    u = np.int64((pm >> sh) & np.uint64(0xFF))
                    v = np.int64((pp >> sh) & np.uint64(0xFF))
                    change += u - v if u >= v else v - u
                acc[5, n] += np.float64(change) / 8.0
                pair_node[n_pairs] = n
                pair_dt[n_pairs] = ts[m] - ts[prev]
                n_pairs += 1
            acc[2, n] = j
            last_msg[k] = m
            acc[0, n] += 1.0
            for i in range(8):
                u = np.int64((pm >> np.uint64(8 * i)) & np.uint64(0xFF))
                p_sum[8 * n + i] += u
                p_sq[8 * n + i] += u * u
            acc[3, n] += np.float64(dlc[m])
            acc[4, n] += gap[m]
            if lab[m] != 0:
                node_y[n] = 1
            else:
                node_normal[n] = True
        nodes[w] = K
        # ---- edges: distinct transitions (a, b) of the window's nodes, numbered by first
        # appearance in a table indexed by the code a * K + b
        E = 0
        for j in range(T):
            code = local[j] * K + local[j + 1]
            t = ed_tab[code]
            if (t >> 32) != w:
                t = (w << 32) | E
                ed_tab[code] = t
                ecode[E] = code
                e_cnt[E] = 0.0
                e_first[E] = j
                e_sum[E] = 0.0
                e_sq[E] = 0.0
                E += 1
            e = t & 0xFFFFFFFF
            e_cnt[e] += 1.0
            e_last[e] = j
            g = gap[b + j + 1]  # the gap of message j + 1 is the time from message j
            e_sum[e] += g
            e_sq[e] += g * g
        # ordered by code, i.e. by (a, b): counted into buckets by a, each kept sorted by b
        for a in range(K + 1):
            bucket[a] = 0
        for e in range(E):
            bucket[ecode[e] // K + 1] += 1
        for a in range(K):
            bucket[a + 1] += bucket[a]
            bstart[a] = bucket[a]
        for e in range(E):
            a = ecode[e] // K
            q = bucket[a]
            bucket[a] = q + 1
            while q > bstart[a] and ecode[eperm[q - 1]] > ecode[e]:
                eperm[q] = eperm[q - 1]
                q -= 1
            eperm[q] = e
        for q in range(E):
            e = eperm[q]
            o = n_edges + q
            a = ecode[e] // K
            d = ecode[e] - a * K
            e_src[o] = a
            e_dst[o] = d
            e_acc[0, o] = e_cnt[e]
            e_acc[1, o] = e_first[e]
            e_acc[2, o] = e_last[e]
            e_acc[3, o] = e_sum[e]
            e_acc[4, o] = e_sq[e]
            e_acc[5, o] = 1.0 if (ed_tab[d * K + a] >> 32) == w else 0.0  # b -> a in this window?
        edges[w] = E
        n_nodes += K
        n_edges += E
    return n_nodes, n_edges, n_pairs


def _rows(W, n, n_edges, acc, p_sum, p_sq, pair_node, iat, x, e_src, e_dst, e_acc, ea, s1, s2, c8, m8, sp8):
    """The feature rows from :func:`_window_loops`' sums, with the float operations of the numpy
    builder. Most of the time here is divisions: the loops read columns without branches, so
    they run as SIMD vectors (4 divisions at a time with AVX2). ``iat``: numpy's log1p of the
    pairs' intervals, summed per node in pair order (time order within a node), as
    ``np.bincount`` sums them."""
    for p in range(iat.shape[0]):
        v = iat[p]
        s1[pair_node[p]] += v
        s2[pair_node[p]] += v * v
    cnt = acc[0]
    for f in range(8 * n):
        c8[f] = cnt[f >> 3]
    for f in range(8 * n):  # payload byte means and spreads
        mean = np.float64(p_sum[f]) / c8[f]
        m8[f] = mean / 255.0
        v = np.float64(p_sq[f]) / c8[f] - mean * mean
        sp8[f] = np.sqrt(v if v > 0.0 else 0.0)
    first, last, dlcs, gaps, changes = acc[1], acc[2], acc[3], acc[4], acc[5]
    for k in range(n):
        c = cnt[k]
        pairs = max(c - 1.0, 1.0)
        mean = s1[k] / pairs
        v = s2[k] / pairs - mean * mean
        x[k, 8] = c / W
        x[k, 9] = first[k] / W
        x[k, 10] = last[k] / W
        x[k, 11] = dlcs[k] / c / 8.0
        x[k, 12] = mean
        x[k, 13] = np.sqrt(v if v > 0.0 else 0.0)
        x[k, 14] = gaps[k] / max(c, 1.0)
        x[k, 15] = changes[k] / pairs / 255.0
    for k in range(n):
        f = 8 * k  # the eight spreads added pairwise, as numpy's mean(axis=1) adds them
        for i in range(8):
            x[k, i] = m8[f + i]
        x[k, 16] = (((sp8[f] + sp8[f + 1]) + (sp8[f + 2] + sp8[f + 3]))
                    + ((sp8[f + 4] + sp8[f + 5]) + (sp8[f + 6] + sp8[f + 7]))) / 8 / 255.0
    e_cnt, e_first, e_last, e_sum, e_sq, e_rec = e_acc[0], e_acc[1], e_acc[2], e_acc[3], e_acc[4], e_acc[5]
    for o in range(n_edges):
        c = e_cnt[o]
        mean = e_sum[o] / c
        v = e_sq[o] / c - mean * mean
        ea[o, 0] = c / (W - 1)
        ea[o, 1] = mean
        ea[o, 2] = np.sqrt(v if v > 0.0 else 0.0)
        ea[o, 3] = e_first[o] / W
        ea[o, 4] = e_last[o] / W
        ea[o, 5] = 1.0 if e_src[o] == e_dst[o] else 0.0
        ea[o, 6] = e_rec[o]


_compiled = None


def _kernels():
    """(:func:`_window_loops`, :func:`_rows`) compiled (numba, on first use; cached
    on disk beside this file)."""
    global _compiled
    if _compiled is None:
        import numba  # imported here: only large recordings take this path

        started = time.perf_counter()
        jit = numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
        _compiled = (leaf_kernel(jit(_window_loops)), leaf_kernel(jit(_rows)))
        took = time.perf_counter() - started
        if took > 2.0:
            logging.getLogger("kdkit.data").info("compiled the window graph builder in %.1f s (numba, first use)", took)
    return _compiled


MAX_WINDOW = 1024  # a window's transitions are looked up in a W x W table (8 MiB at 1024)


def available(window: int) -> bool:
    """Whether this path can build windows of ``window`` messages here: numba importable, a
    little-endian CPU (payload bytes are taken from one uint64 per message), ``window`` at most
    :data:`MAX_WINDOW`."""
    if not np.little_endian or window > MAX_WINDOW:
        return False
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


class Scratch:
    """Work arrays kept from one chunk to the next: fresh ones of a few MB per chunk would be
    faulted in page by page every time (that cost ~25 % of the builder's time)."""

    def __init__(self) -> None:
        self.capacity, self.window, self.arrays = -1, -1, {}

    def get(self, N: int, W: int) -> dict[str, np.ndarray]:
        """The work arrays for ``N`` messages in windows of ``W``; the sums zeroed."""
        if N > self.capacity or W != self.window:
            e_cap = (N // W) * (W - 1)
            self.capacity, self.window = N, W
            self.arrays = {
                "acc": np.empty((6, N)), "p_sum": np.empty(8 * N, np.int64), "p_sq": np.empty(8 * N, np.int64),
                "node_can": np.empty(N, np.int64), "node_y": np.empty(N, np.uint8), "node_normal": np.empty(N, np.bool_),
                "e_src": np.empty(e_cap, np.int32), "e_dst": np.empty(e_cap, np.int32), "e_acc": np.empty((6, e_cap)),
                "pair_node": np.empty(N, np.int64), "pair_dt": np.empty(N), "s1": np.empty(N), "s2": np.empty(N),
                "c8": np.empty(8 * N), "m8": np.empty(8 * N), "sp8": np.empty(8 * N)}
        a = self.arrays
        a["acc"][:, :N] = 0.0
        for name in ("p_sum", "p_sq"):
            a[name][:8 * N] = 0
        for name in ("node_y", "node_normal", "s1", "s2"):
            a[name][:N] = 0
        return a


def chunk_graphs(ids: np.ndarray, payload64: np.ndarray, dlc: np.ndarray, lab: np.ndarray, gap: np.ndarray,
                 ts: np.ndarray, W: int, normal_flags: bool = False, scratch: Scratch | None = None
                 ) -> dict[str, np.ndarray]:
    """The graph arrays of ``len(ids) // W`` back-to-back windows (inputs flat, window-major:
    a window's ``W`` messages, then the next window's) as ``graphs._chunk_graphs`` returns
    them, except ``share`` (the caller's). ``gap``: each message's ``log1p`` milliseconds since
    the recording's previous message (0 for its first). ``scratch``: work arrays to reuse."""
    N = ids.shape[0]
    G = N // W
    window_loops, rows = _kernels()
    a = (scratch or Scratch()).get(N, W)
    nodes = np.empty(G, np.int64)
    edges = np.empty(G, np.int64)
    n_nodes, n_edges, n_pairs = window_loops(
        np.ascontiguousarray(ids), np.ascontiguousarray(payload64), np.ascontiguousarray(dlc),
        np.ascontiguousarray(lab), np.ascontiguousarray(gap), np.ascontiguousarray(ts), W, _table_bits(W),
        a["acc"], a["p_sum"], a["p_sq"], a["node_can"], a["node_y"], a["node_normal"], nodes, a["e_src"], a["e_dst"],
        a["e_acc"], edges, a["pair_node"], a["pair_dt"])
    iat = np.log1p(a["pair_dt"][:n_pairs] * 1000.0)  # graphs._log_ms: numpy's log1p, as the numpy builder takes it
    x = np.empty((n_nodes, 17), np.float32)
    ea = np.empty((n_edges, 7), np.float32)
    rows(W, n_nodes, n_edges, a["acc"], a["p_sum"], a["p_sq"], a["pair_node"][:n_pairs], iat, x, a["e_src"], a["e_dst"],
         a["e_acc"], ea, a["s1"], a["s2"], a["c8"], a["m8"], a["sp8"])
    edge_index = np.empty((2, n_edges), np.int32)
    edge_index[0] = a["e_src"][:n_edges]
    edge_index[1] = a["e_dst"][:n_edges]
    out = {"x": x, "can_id": a["node_can"][:n_nodes].copy(), "node_y": a["node_y"][:n_nodes].copy(), "nodes": nodes,
           "edge_index": edge_index, "edge_attr": ea, "edges": edges}
    if normal_flags:
        out["node_normal"] = a["node_normal"][:n_nodes].copy()
    return out
