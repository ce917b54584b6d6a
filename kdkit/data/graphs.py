"""Sliding windows of CAN messages -> graphs, fully vectorized, in one packed store.

A window of ``W`` consecutive messages becomes one graph: a node per distinct CAN ID, a
directed edge ``a -> b`` whenever a message of ID ``a`` is followed by one of ID ``b`` (a
self-loop when an ID repeats), de-duplicated with a count. Everything is computed with
numpy sorts and segment reductions over many windows at once (chunks of ~32 k messages,
so the temporaries stay in cache): there is no Python loop per message, node or edge.

    from kdkit.graphs import IdVocab, build_graphs
    vocab = IdVocab.fit([msgs.can_id[msgs.label == 0]])
    gs = build_graphs(msgs, vocab, window=100, stride=100)
    gs.to_data(0)  # one torch_geometric Data

Node features (``NODE_FEATURES``, continuous; the vocabulary index goes separately in
``node_id`` to an embedding) and edge features (``EDGE_FEATURES``) are documented below.
Timing features use ``log1p(milliseconds)`` of differences of timestamps, so a recording's
timestamps must never decrease: the readers report a step backwards as a bad row (file:line),
and :func:`build_graphs` refuses one (nothing is clamped to 0).

The store (:meth:`GraphSet.save`, format in :mod:`kdkit.data.store`) keeps a SHA-256 checksum
of every tensor's bytes in its header; :meth:`GraphSet.load` verifies them, maps the file and
raises :class:`GraphStoreError` for a truncated, unreadable or altered file
(``datasets.prepare`` then rebuilds the cache).
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch_geometric.data import Data

from kdkit.data import candump_scan, graph_kernel
from kdkit.data.readers import Messages
from kdkit.data.store import GraphStoreError, StoreMapping, open_store, read_header, write_arrays

GRAPH_FORMAT_VERSION = 8  # bump whenever features or layout change: it invalidates every store
# 8: the store is kdkit's own file (data.store): written as a stream, read memory-mapped
# 6: extended IDs carry readers.EXTENDED_ID_FLAG (0x81 extended and 0x081 standard are two nodes)
# 7: a window's attack type from per-message types (Messages.row_type) where a recording has them
# 5: a SHA-256 checksum per tensor in the store's metadata; timestamps going backwards are refused


# Graph formats whose graphs a *model* reads exactly as this kdkit builds them (same node and edge
# features, same ID keys): the format number also versions the store file (a cache is rebuilt on
# any bump), but a bump that changes only the file (5: checksums, 8: kdkit's own file) or the
# labels (7: attack types) must not invalidate trained models. 6 changed the keys of extended IDs,
# so a format-5 model is still read the same when its vocabulary holds no ID above 0x7FF.
MODEL_FORMATS = frozenset({6, 7, 8})
STANDARD_ID_FORMATS = frozenset({5})  # same graphs as MODEL_FORMATS for vocabularies of 11-bit IDs only


def model_reads_format(graph_format, vocab=None) -> bool:
    """Whether a model trained on graphs of ``graph_format`` (None: not recorded, older
    checkpoints) with ID vocabulary ``vocab`` reads today's graphs unchanged."""
    if graph_format is None or graph_format == GRAPH_FORMAT_VERSION or graph_format in MODEL_FORMATS:
        return True
    return graph_format in STANDARD_ID_FORMATS and vocab is not None and all(int(k) <= 0x7FF for k in vocab)


def layout_matches(node_features, edge_features, graph_format, vocab=None) -> bool:
    """Whether a model built on graphs with these feature names, graph format and ID vocabulary
    reads the graphs this kdkit builds (:func:`model_reads_format`)."""
    return (list(node_features or []) == list(NODE_FEATURES) and list(edge_features or []) == list(EDGE_FEATURES)
            and model_reads_format(graph_format, vocab))


_HASH_BLOCK = 1 << 23  # checksums hash 8 MiB blocks in parallel threads


def store_checksums(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """A checksum of every (contiguous) tensor's bytes: SHA-256 of the concatenated SHA-256
    digests of its 8 MiB blocks. hashlib reads the memory in place (memoryviews, no copy), and
    the blocks of all tensors are hashed by up to 8 threads at once (hashlib releases the GIL):
    about 0.15-0.2 s for the 80 MB of hcrl_sa's store on a busy 2-core machine."""
    blocks: list[tuple[str, memoryview]] = []
    for name, t in tensors.items():
        data = memoryview(t.numpy()).cast("B") if t.numel() else memoryview(b"")
        blocks += [(name, data[i:i + _HASH_BLOCK]) for i in range(0, max(data.nbytes, 1), _HASH_BLOCK)]
    workers = min(8, os.cpu_count() or 1, len(blocks))
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            digests = list(pool.map(lambda b: hashlib.sha256(b[1]).digest(), blocks))
    else:
        digests = [hashlib.sha256(b).digest() for _, b in blocks]
    per_tensor = {name: hashlib.sha256() for name in tensors}
    for (name, _), digest in zip(blocks, digests):
        per_tensor[name].update(digest)
    return {name: h.hexdigest() for name, h in per_tensor.items()}


NODE_FEATURES = (
    [f"payload_mean_b{j}" for j in range(8)]  # mean of each payload byte / 255
    + [
        "count_frac",      # messages of this ID / W
        "first_pos",       # first position in the window / W
        "last_pos",        # last position in the window / W
        "dlc_mean",        # mean DLC / 8
        "iat_mean",        # log1p(ms) mean interval between consecutive messages of this ID (0 if once)
        "iat_std",         # log1p(ms) std of that interval
        "gap_mean",        # log1p(ms) mean gap to the preceding message (any ID): bus load around it
        "payload_change",  # mean |byte change| between consecutive messages of this ID / 255
        "payload_std",     # mean over bytes of the std of each byte / 255
    ]
)


EDGE_FEATURES = [
    "count_frac",   # transitions a->b / (W - 1)
    "iat_mean",     # log1p(ms) mean time from the a message to the following b message
    "iat_std",      # log1p(ms) std of that time
    "first_pos",    # position of the first transition / W
    "last_pos",     # position of the last transition / W
    "self_loop",    # 1 if a == b
    "reciprocal",   # 1 if b -> a also occurs in the window
]


@dataclass
class IdVocab:
    """CAN ID -> embedding index. Index 0 is the out-of-vocabulary bucket.

    Fitted on training data only; looking up an unseen ID returns 0 and never grows it.
    """

    ids: np.ndarray  # sorted unique uint32 IDs; index i+1 <-> ids[i]

    @classmethod
    def fit(cls, id_arrays: Iterable[np.ndarray]) -> "IdVocab":
        arrays = [np.asarray(a, dtype=np.uint32) for a in id_arrays]
        ids = np.concatenate(arrays) if arrays else np.zeros(0, np.uint32)
        if ids.size and int(ids.max()) < 1 << 20:  # 11-bit and most IDs: mark them in a table, no sort
            seen = np.zeros(int(ids.max()) + 1, bool)
            seen[ids] = True
            return cls(np.flatnonzero(seen).astype(np.uint32))
        return cls(np.unique(ids).astype(np.uint32))

    def __len__(self) -> int:
        """Number of embedding rows, including the OOV bucket."""
        return int(self.ids.shape[0]) + 1

    def lookup(self, can_ids: np.ndarray) -> np.ndarray:
        can_ids = np.asarray(can_ids, dtype=np.uint32)
        if self.ids.size == 0:
            return np.zeros(can_ids.shape, np.int64)
        pos = np.searchsorted(self.ids, can_ids)
        pos_c = np.minimum(pos, self.ids.size - 1)
        return np.where(self.ids[pos_c] == can_ids, pos_c + 1, 0).astype(np.int64)

    def to_list(self) -> list[int]:
        return [int(i) for i in self.ids]

    @classmethod
    def from_list(cls, ids: Sequence[int]) -> "IdVocab":
        return cls(np.asarray(sorted(ids), dtype=np.uint32))


def window_starts(n_messages: int, window: int, stride: int) -> np.ndarray:
    """Start offsets of the full windows of a recording (a trailing partial window is not used)."""
    if window < 2 or stride < 1:
        raise ValueError(f"window must be >= 2 and stride >= 1, got window={window}, stride={stride}")
    if n_messages < window:
        return np.zeros(0, np.int64)
    return np.arange(0, n_messages - window + 1, stride, dtype=np.int64)


def timeline_window_starts(msgs: Messages, window: int, stride: int) -> np.ndarray:
    """:func:`window_starts` of each timeline of a recording (``Messages.restart``): no window
    crosses a restarted clock."""
    if msgs.restart is None or not msgs.restart[1:].any():
        return window_starts(len(msgs), window, stride)
    bounds = [0, *(np.flatnonzero(msgs.restart[1:]) + 1).tolist(), len(msgs)]
    return np.concatenate([a + window_starts(b - a, window, stride) for a, b in zip(bounds[:-1], bounds[1:])])


def _log_ms(seconds: np.ndarray) -> np.ndarray:
    """log1p of milliseconds; ``seconds`` are never negative (``check_time_order``)."""
    return np.log1p(seconds * 1000.0)


def check_time_order(msgs: Messages) -> None:
    """Raise ValueError unless the timestamps are finite and never decrease.

    The timing features are differences of timestamps: a step backwards would give a
    negative interval. The readers drop or report such rows (``on_bad_rows``); this guards
    Messages built any other way.
    """
    ts = msgs.timestamp
    name = msgs.source or "messages"
    if not np.isfinite(ts).all():
        i = int(np.flatnonzero(~np.isfinite(ts))[0])
        raise ValueError(f"{name}: message {i} has timestamp {float(ts[i])!r}; timestamps must be finite")
    back = np.flatnonzero(ts[1:] < ts[:-1])
    if back.size and msgs.restart is not None:  # a reader's new timelines (a restarted clock) go back on purpose
        back = back[~msgs.restart[back + 1]]
    if back.size:
        i = int(back[0]) + 1
        raise ValueError(f"{name}: message {i} (timestamp {float(ts[i])!r}) is earlier than message {i - 1} "
                         f"({float(ts[i - 1])!r}); {back.size} such steps backwards. Timestamps must not decrease: "
                         f"read the file with kdkit's readers (they name the line, and --on-bad-rows skip (on_bad_rows='skip') drops such "
                         f"rows) or sort the messages by time")


def _segment_stats(values: np.ndarray, seg: np.ndarray, cnt: np.ndarray, std: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-segment (mean, std or None) of ``values`` grouped by ``seg``, given each segment's
    count ``cnt`` (float64); 0 for empty segments."""
    n_seg = cnt.shape[0]
    safe = np.maximum(cnt, 1.0)
    mean = np.bincount(seg, weights=values, minlength=n_seg) / safe
    if not std:
        return mean, None
    s2 = np.bincount(seg, weights=values * values, minlength=n_seg)
    return mean, np.sqrt(np.maximum(s2 / safe - mean * mean, 0.0))


@dataclass
class GraphSet:
    """Many window graphs packed into flat arrays (CSR style): the unit of the graph store.

    Graph ``g`` owns nodes ``node_ptr[g]:node_ptr[g+1]`` and edges ``edge_ptr[g]:edge_ptr[g+1]``;
    ``edge_index`` holds node indices local to the graph.
    """

    x: torch.Tensor            # float32 [N, F_node]
    node_id: torch.Tensor      # int64 [N] vocabulary index (0 = OOV)
    can_id: torch.Tensor       # int64 [N] raw CAN ID (for inspection, never a model input)
    node_y: torch.Tensor       # uint8 [N] 1 if any message of this node in the window is an attack
    edge_index: torch.Tensor   # int32 [2, E] local node indices
    edge_attr: torch.Tensor    # float32 [E, F_edge]
    node_ptr: torch.Tensor     # int64 [G+1]
    edge_ptr: torch.Tensor     # int64 [G+1]
    y: torch.Tensor            # int64 [G] graph label
    attack_share: torch.Tensor  # float32 [G] share of attack messages in the window
    attack_type: torch.Tensor  # int64 [G] index into ``attack_types``; 0 = normal
    file_index: torch.Tensor   # int64 [G] index into ``files``
    start: torch.Tensor        # int64 [G] first message of the window in its file
    attack_types: list[str] = field(default_factory=lambda: ["normal"])
    files: list[str] = field(default_factory=list)
    backing: StoreMapping | None = field(default=None, repr=False, compare=False)  # the mapped store file
    gathered: int = field(default=0, repr=False, compare=False)  # graphs read from the mapping since its release

    TENSORS = ("x", "node_id", "can_id", "node_y", "edge_index", "edge_attr", "node_ptr", "edge_ptr",
               "y", "attack_share", "attack_type", "file_index", "start")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def num_nodes(self) -> np.ndarray:
        return (self.node_ptr[1:] - self.node_ptr[:-1]).numpy()

    @property
    def num_edges(self) -> np.ndarray:
        return (self.edge_ptr[1:] - self.edge_ptr[:-1]).numpy()

    def to_data(self, i: int):
        """Graph ``i`` as a torch_geometric ``Data`` (the batch contract of docs/DESIGN.md)."""

        n0, n1 = int(self.node_ptr[i]), int(self.node_ptr[i + 1])
        e0, e1 = int(self.edge_ptr[i]), int(self.edge_ptr[i + 1])
        return Data(x=self.x[n0:n1], node_id=self.node_id[n0:n1], edge_index=self.edge_index[:, e0:e1].long(),
                    edge_attr=self.edge_attr[e0:e1], y=self.y[i:i + 1], node_y=self.node_y[n0:n1].long(),
                    num_nodes=n1 - n0)

    def to_data_list(self, indices: Iterable[int] | None = None) -> list:
        return [self.to_data(int(i)) for i in (range(len(self)) if indices is None else indices)]

    def subset(self, indices: np.ndarray | torch.Tensor) -> "GraphSet":
        """A new GraphSet of the given graphs (vectorized gather)."""
        idx = torch.as_tensor(np.ascontiguousarray(indices, dtype=np.int64))  # reversed views too
        nodes, node_ptr = _gather_ranges(self.node_ptr, idx)
        edges, edge_ptr = _gather_ranges(self.edge_ptr, idx)
        return GraphSet(
            x=self.x[nodes], node_id=self.node_id[nodes], can_id=self.can_id[nodes], node_y=self.node_y[nodes],
            edge_index=self.edge_index[:, edges], edge_attr=self.edge_attr[edges], node_ptr=node_ptr, edge_ptr=edge_ptr,
            y=self.y[idx], attack_share=self.attack_share[idx], attack_type=self.attack_type[idx],
            file_index=self.file_index[idx], start=self.start[idx], attack_types=list(self.attack_types), files=list(self.files))

    @classmethod
    def concat(cls, parts: Sequence["GraphSet"]) -> "GraphSet":
        """Concatenate GraphSets, merging their ``attack_types`` and ``files`` lists."""
        if not parts:
            return empty_graphset()
        types: list[str] = ["normal"]
        files: list[str] = []
        ats, fis, nptrs, eptrs = [], [], [], []
        n_off = e_off = 0
        for p in parts:
            remap_t = torch.tensor([types.index(t) if t in types else (types.append(t) or len(types) - 1) for t in p.attack_types], dtype=torch.long)
            remap_f = torch.tensor([files.index(f) if f in files else (files.append(f) or len(files) - 1) for f in p.files] or [0], dtype=torch.long)
            ats.append(remap_t[p.attack_type] if len(p) else p.attack_type)
            fis.append(remap_f[p.file_index] if len(p) else p.file_index)
            nptrs.append(p.node_ptr[:-1] + n_off)
            eptrs.append(p.edge_ptr[:-1] + e_off)
            n_off += int(p.node_ptr[-1])
            e_off += int(p.edge_ptr[-1])
        cat = lambda name, dim=0: torch.cat([getattr(p, name) for p in parts], dim=dim)  # noqa: E731
        return cls(x=cat("x"), node_id=cat("node_id"), can_id=cat("can_id"), node_y=cat("node_y"),
                   edge_index=cat("edge_index", 1), edge_attr=cat("edge_attr"),
                   node_ptr=torch.cat(nptrs + [torch.tensor([n_off])]), edge_ptr=torch.cat(eptrs + [torch.tensor([e_off])]),
                   y=cat("y"), attack_share=cat("attack_share"), attack_type=torch.cat(ats), file_index=torch.cat(fis),
                   start=cat("start"), attack_types=types, files=files)

    # A gathered graph maps far more than its bytes: the kernel maps the page cache's large folios
    # around each touched page (~200-300 KiB a graph measured here). Stores above RELEASE_ABOVE_BYTES
    # are released every RELEASE_GRAPHS graphs (~17 MiB resident on a 1.2 GB store, ~20 us a graph);
    # smaller ones stay mapped (they fit in memory anyway, and re-faulting costs time).
    RELEASE_GRAPHS = 256
    RELEASE_ABOVE_BYTES = 256 << 20

    def release_pages(self) -> None:
        """Hand the pages of a memory-mapped store back to the page cache; a no-op for graphs
        held in memory."""
        if self.backing is not None:
            self.backing.release()
            self.gathered = 0

    RELEASE_ROWS = 8192  # rows gathered at a time from a released store (~200 graphs' pages)

    @property
    def releasing(self) -> bool:
        """Whether this set's pages are released as batches are gathered (a mapped store above
        :attr:`RELEASE_ABOVE_BYTES`)."""
        return self.backing is not None and self.backing.nbytes > self.RELEASE_ABOVE_BYTES

    def rows(self, t: torch.Tensor, index, dim: int = 0) -> torch.Tensor:
        """``t[index]`` (``dim`` 0) or ``t[:, index]`` (``dim`` 1) of one of this set's tensors. From a
        released store the rows are taken :attr:`RELEASE_ROWS` at a time, the pages released after
        each piece, so even one large batch never holds more than a piece's pages."""
        take = (lambda i: t[i]) if dim == 0 else (lambda i: t[:, i])  # noqa: E731
        if not self.releasing or isinstance(index, slice) or index.numel() <= self.RELEASE_ROWS:
            return take(index)
        pieces = []
        for part in torch.split(index, self.RELEASE_ROWS):
            pieces.append(take(part))
            self.release_pages()
        return torch.cat(pieces, dim)

    def note_gathered(self, graphs: int) -> None:
        """Count graphs read from a mapped store and release its pages every
        :attr:`RELEASE_GRAPHS` (the loaders call this) when it is larger than
        :attr:`RELEASE_ABOVE_BYTES`, so a store larger than RAM is read in a bounded resident set:
        what is not resident is read again from the page cache or disk."""
        if self.releasing:
            self.gathered += graphs
            if self.gathered >= self.RELEASE_GRAPHS:
                self.release_pages()

    # ---- the on-disk store (kdkit.data.store): one file per split, loaded memory-mapped -----
    def save(self, path: str | Path, meta: dict | None = None) -> int:
        """Write atomically (temp file + rename) so a crash never leaves a partial store; returns
        its size. The header holds a SHA-256 checksum of every tensor, verified by :meth:`load`.
        A split too large for memory is written part by part instead (``datasets.prepare``)."""
        arrays = {name: getattr(self, name).contiguous().numpy() for name in self.TENSORS}
        return write_arrays(path, arrays, store_header(self.attack_types, self.files, meta))

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True, verify: bool = True, expect: dict | None = None) -> "GraphSet":
        """Load a store written by :meth:`save` or ``datasets.prepare``.

        Args:
            path: the store file.
            mmap: map the file (copy-on-write) instead of reading it (default True): batches
                read the pages they touch; :meth:`release_pages` drops them again.
            verify: check every tensor against the checksum saved with it (default True;
                about 0.25 s per 100 MB on one core, less with more threads).
            expect: header entries the store must carry (e.g. ``{"key": ..., "split": ...}``).

        Raises:
            GraphStoreError: the file is missing, truncated or unreadable, a checksum does not
                match, an expected entry differs, or it was written by another format version.
        """
        header = read_store_header(path, expect)
        mapping = open_store(path, mmap_file=mmap, verify=verify)
        missing = [name for name in cls.TENSORS if name not in mapping.arrays]
        if missing:
            raise GraphStoreError(path, f"is unreadable (no {', '.join(missing)})")
        tensors = {name: torch.from_numpy(mapping.arrays[name]) for name in cls.TENSORS}
        return cls(**tensors, attack_types=list(header["attack_types"]), files=list(header["files"]),
                   backing=mapping if mmap else None)


def store_header(attack_types: Sequence[str], files: Sequence[str], meta: dict | None = None) -> dict:
    """The JSON header entries of a store file besides the tensors' layout and checksums."""
    return {"attack_types": list(attack_types), "files": list(files), "format": GRAPH_FORMAT_VERSION, **(meta or {})}


def read_store_header(path: str | Path, expect: dict | None = None) -> dict:
    """A store file's header, checked for this format version and the ``expect`` entries."""
    from_file, _, _ = read_header(path)
    if from_file.get("format") != GRAPH_FORMAT_VERSION:
        raise GraphStoreError(path, f"has format {from_file.get('format')}, this kdkit writes {GRAPH_FORMAT_VERSION}; "
                                    f"delete it to rebuild")
    for key, value in (expect or {}).items():
        if from_file.get(key) != value:
            raise GraphStoreError(path, f"belongs elsewhere ({key} {from_file.get(key)!r}, expected {value!r})")
    if not isinstance(from_file.get("attack_types"), list) or not isinstance(from_file.get("files"), list):
        raise GraphStoreError(path, "is unreadable (header without attack_types/files)")
    return from_file


def _gather_ranges(ptr: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat element indices of segments ``idx`` of a CSR pointer, and the new pointer."""
    lens = ptr[idx + 1] - ptr[idx]
    new_ptr = torch.zeros(idx.numel() + 1, dtype=torch.long)
    new_ptr[1:] = torch.cumsum(lens, 0)
    total = int(new_ptr[-1])
    seg = torch.repeat_interleave(torch.arange(idx.numel()), lens, output_size=total)
    flat = ptr[idx][seg] + (torch.arange(total) - new_ptr[:-1][seg])
    return flat, new_ptr


def empty_graphset() -> GraphSet:
    z = lambda *s, dt=torch.float32: torch.zeros(*s, dtype=dt)  # noqa: E731
    return GraphSet(z(0, len(NODE_FEATURES)), z(0, dt=torch.long), z(0, dt=torch.long), z(0, dt=torch.uint8),
                    z(2, 0, dt=torch.int32), z(0, len(EDGE_FEATURES)), z(1, dt=torch.long), z(1, dt=torch.long),
                    z(0, dt=torch.long), z(0), z(0, dt=torch.long), z(0, dt=torch.long), z(0, dt=torch.long), ["normal"], [])


def _group_sums(values: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Sums of consecutive groups of ``values`` ending at indices ``last``, via one cumulative sum.

    Integer sums wrap around in the cumulative sum but the differences are exact as long as
    each group's true sum fits the dtype (the packed lanes below rely on this).
    """
    c = np.cumsum(values)[last]
    c[1:] -= c[:-1]
    return c


_LANES16 = np.uint64(0x00FF00FF00FF00FF)  # bytes 0, 2, 4, 6 of a uint64 as four 16-bit lanes


_LANES32 = np.uint64(0x0000FFFF0000FFFF)  # 16-bit values 0, 2 of a uint64 as two 32-bit lanes


def _sort_rows(keys: np.ndarray, small: bool) -> np.ndarray:
    """Flat indices that stably sort each row of ``keys`` [rows, width]; ``small``: the keys
    fit 16 bits, so numpy sorts them with a radix sort."""
    rows, width = keys.shape
    order = np.argsort(keys.astype(np.uint16) if small else keys, axis=1, kind="stable")
    order += np.arange(0, rows * width, width)[:, None]
    return order.reshape(-1)


def _payload_sums(rows: np.ndarray, last: np.ndarray, max_count: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-group sums of the payload bytes and of their squares, each int64 [groups, 8].

    ``rows`` is uint64 [n]: one 8-byte payload per message, grouped; ``last`` ends each group.
    Several bytes are summed at once in lanes of one uint64 (SWAR) when no group can overflow
    a lane (<= 257 messages for 16-bit byte sums, <= 66051 for 32-bit square sums).
    """
    n_groups = last.shape[0]
    if max_count > 257 or not np.little_endian:
        u8 = rows.view(np.uint8).reshape(-1, 8).astype(np.int64)
        first = np.empty_like(last)
        first[0] = 0
        first[1:] = last[:-1] + 1
        return np.add.reduceat(u8, first, axis=0), np.add.reduceat(u8 * u8, first, axis=0)
    sums = np.empty((n_groups, 8), np.int64)
    sums[:, 0::2] = _group_sums(rows & _LANES16, last).view(np.uint16).reshape(-1, 4)
    sums[:, 1::2] = _group_sums((rows >> np.uint64(8)) & _LANES16, last).view(np.uint16).reshape(-1, 4)
    sq = rows.view(np.uint8).astype(np.uint16)
    sq *= sq  # byte squares fit 16 bits
    sq4 = sq.view(np.uint64).reshape(-1, 2)  # four squares per uint64
    sqs = np.empty((n_groups, 8), np.int64)
    for half in range(2):  # bytes 0-3, then 4-7
        col = np.ascontiguousarray(sq4[:, half])
        sqs[:, 4 * half + 0:4 * half + 4:2] = _group_sums(col & _LANES32, last).view(np.uint32).reshape(-1, 2)
        sqs[:, 4 * half + 1:4 * half + 4:2] = _group_sums((col >> np.uint64(16)) & _LANES32, last).view(np.uint32).reshape(-1, 2)
    return sums, sqs


def _abs_change_sums(rows: np.ndarray) -> np.ndarray:
    """Sum over the 8 bytes of ``|rows[i+1] - rows[i]|`` for uint64-packed payloads -> uint64 [n-1]."""
    a = rows[1:].view(np.uint8)
    b = rows[:-1].view(np.uint8)
    d = (np.maximum(a, b) - np.minimum(a, b)).view(np.uint64)
    d = (d & _LANES16) + ((d >> np.uint64(8)) & _LANES16)  # four 16-bit partial sums
    return (d * np.uint64(0x0001000100010001)) >> np.uint64(48)  # their total lands in the top lane


_CHUNK_MESSAGES = 1 << 15


"""Windows are built in chunks of about this many messages. Every temporary then stays a few
hundred KB: it fits the CPU cache and the allocator reuses it instead of faulting fresh pages,
which took ~40 % off the time of a 180 k-message file compared with one pass over all windows."""


def _runs(sorted_keys: np.ndarray, order: np.ndarray, period: int):
    """Runs of equal keys in a per-window sorted array (a new run also starts every ``period``).

    Returns ``(is_start, run_of_sorted, run_of_original, start, last)``: the run index of each
    sorted and of each original element (``order`` maps sorted -> original position), and the
    first/last sorted position of every run.
    """
    n = sorted_keys.shape[0]
    is_start = np.empty(n, bool)
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=is_start[1:])
    is_start[::period] = True
    run_sorted = np.cumsum(is_start) - 1
    run_orig = np.empty_like(run_sorted)
    run_orig[order] = run_sorted
    start = np.flatnonzero(is_start)
    last = np.empty_like(start)
    last[:-1] = start[1:] - 1
    last[-1] = n - 1
    return is_start, run_sorted, run_orig, start, last


def build_graphs(msgs: Messages, vocab: IdVocab, window: int = 100, stride: int = 100,
                 label_threshold: float = 0.0, starts: np.ndarray | None = None) -> GraphSet:
    """Turn one recording into window graphs.

    Args:
        msgs: the recording.
        vocab: CAN-ID vocabulary (fitted on training data); unseen IDs map to 0.
        window: messages per window (default 100).
        stride: offset between window starts (default 100: no overlap).
        label_threshold: a window is an attack when its attack share is > this (default 0.0:
            any attack message makes the window an attack).
        starts: explicit window start offsets (default: every full window of each timeline,
            :func:`timeline_window_starts`).

    Returns:
        A GraphSet with one graph per window.

    Raises:
        ValueError: when a timestamp is not finite or goes backwards (``check_time_order``).
    """
    if not 0.0 <= float(label_threshold) < 1.0:
        raise ValueError(f"label_threshold must be in [0, 1): a window is an attack when its attack share is above it "
                         f"(0.0: any attack message), got {label_threshold!r}")
    if starts is None:
        starts = timeline_window_starts(msgs, window, stride)
    starts = np.asarray(starts, dtype=np.int64)
    check_time_order(msgs)
    G, W = int(starts.shape[0]), window
    if G == 0:
        out = empty_graphset()
        out.files = [msgs.source]
        return out
    arrays = window_arrays(msgs, starts, W)
    node_ptr = np.zeros(G + 1, np.int64)
    np.cumsum(arrays["nodes"], out=node_ptr[1:])
    edge_ptr = np.zeros(G + 1, np.int64)
    np.cumsum(arrays["edges"], out=edge_ptr[1:])
    node_can = arrays["can_id"]
    share = arrays["share"]
    y = (share > label_threshold).astype(np.int64)
    types, atype = window_types(msgs.attack_type, msgs.type_names if msgs.row_type is not None else None, y,
                                arrays.get("row_type"))
    return GraphSet(
        x=torch.from_numpy(arrays["x"]), node_id=torch.from_numpy(vocab.lookup(node_can)),
        can_id=torch.from_numpy(node_can), node_y=torch.from_numpy(arrays["node_y"]),
        edge_index=torch.from_numpy(arrays["edge_index"]), edge_attr=torch.from_numpy(arrays["edge_attr"]),
        node_ptr=torch.from_numpy(node_ptr), edge_ptr=torch.from_numpy(edge_ptr),
        y=torch.from_numpy(y), attack_share=torch.from_numpy(share.astype(np.float32)),
        attack_type=torch.from_numpy(atype), file_index=torch.zeros(G, dtype=torch.long),
        start=torch.from_numpy(starts.copy()), attack_types=types, files=[msgs.source])


def window_types(attack_type: str, type_names: Sequence[str] | None, y: np.ndarray,
                 row_type: np.ndarray | None) -> tuple[list[str], np.ndarray]:
    """(attack_types, per-window index into them) of a recording's windows with labels ``y``.

    With per-message types (``type_names``; ``row_type`` the most frequent attack type of each
    window's messages) a window takes its own; otherwise an attack window takes the
    recording's type. A recording named attack-free that still holds labelled rows keeps them
    visible as "unnamed". No window: ``["normal"]``.
    """
    if y.size == 0:
        return ["normal"], np.zeros(0, np.int64)
    if type_names is not None:
        return list(type_names), y * row_type
    named = attack_type not in ("attack-free", "normal")
    types = ["normal", attack_type if named else "unnamed"] if (named or y.any()) else ["normal"]
    return types, y * (len(types) - 1)


def window_arrays(msgs: Messages, starts: np.ndarray, W: int, normal_flags: bool = False) -> dict[str, np.ndarray]:
    """The graph arrays of the windows at ``starts`` of ``msgs`` (node and edge indices local
    to each window; the vocabulary is not applied): ``x``, ``can_id``, ``node_y``,
    ``edge_index``, ``edge_attr``, ``nodes`` and ``edges`` (per window), ``share``, plus
    ``row_type`` (each window's most frequent attack type) for per-message types and, with
    ``normal_flags``, ``node_normal`` (the node has a normal message: the vocabulary's IDs).
    Windows are computed ~32 k messages at a time; each window's values do not depend on
    which others are computed with it (streamed preparation relies on this)."""
    parts = list(iter_window_arrays(msgs, starts, W, normal_flags))
    return {name: parts[0][name] if len(parts) == 1 else np.concatenate([p[name] for p in parts],
                                                                         axis=1 if name == "edge_index" else 0)
            for name in parts[0]}


BUILDER = os.environ.get("KDKIT_GRAPH_BUILDER", "auto")
"""Which window graph builder :func:`window_arrays` runs: ``"numpy"`` (vectorized, below),
``"compiled"`` (:mod:`kdkit.data.graph_kernel`, numba: the same arrays bit for bit, ~2x faster)
or ``"auto"`` (the default; ``$KDKIT_GRAPH_BUILDER`` sets another): compiled once this process
has built, or expects to build (:func:`expect_messages`), the windows of more than
:data:`COMPILED_AFTER` messages, or has run the compiled candump reader (numba is set up then,
and the builder loads in ~20 ms), for windows of up to
:data:`kdkit.data.graph_kernel.MAX_WINDOW` messages. The compiled builder's first call costs
~0.6 CPU s (numba sets up its compiler and loads the cached machine code) and saves ~0.1-0.15 us
a message: it pays for itself after ~4-5 M messages, i.e. on large recordings only."""
COMPILED_AFTER = 4_000_000
_built_messages = 0
_expected_messages = 0


def expect_messages(n: int) -> None:
    """Tell the ``"auto"`` builder that this process is about to build the windows of ~``n``
    messages (a preparation's estimate from a recording's file size): when that is more than
    :data:`COMPILED_AFTER`, the compiled builder is taken from the first window on."""
    global _expected_messages
    _expected_messages = max(_expected_messages, int(n))


def _compiled_builder(n_messages: int, window: int) -> bool:
    """Whether the next windows (``n_messages`` in all, of ``window`` messages) go through the
    compiled builder (:data:`BUILDER`)."""
    global _built_messages
    if BUILDER not in ("auto", "numpy", "compiled"):
        raise ValueError(f"kdkit.data.graphs.BUILDER must be 'auto', 'numpy' or 'compiled', got {BUILDER!r} "
                         f"(set by $KDKIT_GRAPH_BUILDER)")
    _built_messages += n_messages
    if BUILDER == "numpy" or not graph_kernel.available(window):
        return False
    return (BUILDER == "compiled" or max(_built_messages, _expected_messages) > COMPILED_AFTER
            or candump_scan.warm())


def iter_window_arrays(msgs: Messages, starts: np.ndarray, W: int, normal_flags: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """:func:`window_arrays` in pieces of ~32 k messages (``starts`` non-empty)."""
    payload64 = np.ascontiguousarray(msgs.payload).view(np.uint64).reshape(-1)  # one uint64 per message
    per = max(1, _CHUNK_MESSAGES // W)
    scratch = graph_kernel.Scratch() if _compiled_builder(int(starts.shape[0]) * W, W) else None
    for i in range(0, int(starts.shape[0]), per):
        out = _chunk_graphs(msgs, payload64, starts[i:i + per], W, normal_flags, scratch)
        if msgs.row_type is not None:
            out["row_type"] = _window_types(msgs.row_type, starts[i:i + per], W, len(msgs.type_names))
        yield out


class WindowStream:
    """Windows of a recording handed out in chunks: :meth:`feed` joins a chunk to the messages
    the next windows still need (and the one before them: the gap feature) and says which
    windows are now complete, as starts in that joined table and in the recording.

    Args:
        window: messages per window.
        stride: offset between window starts (the recording's windows: :func:`window_starts`).
    """

    def __init__(self, window: int, stride: int):
        window_starts(0, window, stride)  # checks the settings
        self.window, self.stride = window, stride
        self.tail: Messages | None = None
        self.tail_start = 0  # the recording's index of tail[0]
        self.next_start = 0  # the next window's start
        self.messages = 0

    def feed(self, chunk: Messages) -> tuple[Messages, np.ndarray, np.ndarray]:
        """(joined messages, complete windows' starts in them, the same in the recording). A new
        timeline (``Messages.restart``) ends the windows of the one before: the next window starts
        on its first message."""
        buf = chunk if self.tail is None else _join(self.tail, chunk)
        base = self.tail_start
        first_new = self.messages
        self.messages += len(chunk)
        end = base + len(buf)
        W, S = self.window, self.stride
        found = []
        restarts = [] if chunk.restart is None else (np.flatnonzero(chunk.restart) + first_new).tolist()
        for r in [*restarts, end]:  # the windows of each timeline, up to the next one's first message
            stop = end if r == end else r
            if self.next_start + W <= stop:
                count = (stop - W - self.next_start) // S + 1
                found.append(self.next_start + S * np.arange(count, dtype=np.int64))
                self.next_start += count * S
            if r != end:
                self.next_start = r
        starts = np.concatenate(found) if found else np.zeros(0, np.int64)
        keep = max(min(self.next_start - 1, end - 1), base)  # the message before the next window, or the last
        self.tail = _copy(buf.slice(keep - base, len(buf))) if len(buf) else self.tail
        self.tail_start = keep if len(buf) else self.tail_start
        check_time_order(buf)
        return buf, starts - base, starts


def _copy(msgs: Messages) -> Messages:
    """Messages that own their arrays (a tail must not keep the whole previous chunk alive)."""
    return Messages(msgs.timestamp.copy(), msgs.can_id.copy(), msgs.dlc.copy(), msgs.payload.copy(), msgs.label.copy(),
                    msgs.source, msgs.attack_type, row_type=None if msgs.row_type is None else msgs.row_type.copy(),
                    type_names=msgs.type_names, restart=None if msgs.restart is None else msgs.restart.copy())


def _join(a: Messages, b: Messages) -> Messages:
    cat = lambda name: np.concatenate([getattr(a, name), getattr(b, name)])  # noqa: E731
    row_type = None if b.row_type is None else np.concatenate([a.row_type if a.row_type is not None
                                                               else np.zeros(len(a), np.uint8), b.row_type])
    restart = None if a.restart is None and b.restart is None else np.concatenate(
        [m.restart if m.restart is not None else np.zeros(len(m), bool) for m in (a, b)])
    return Messages(cat("timestamp"), cat("can_id"), cat("dlc"), cat("payload"), cat("label"), b.source, b.attack_type,
                    row_type=row_type, type_names=b.type_names, restart=restart)


def _window_types(row_type: np.ndarray, starts: np.ndarray, W: int, n_types: int) -> np.ndarray:
    """Per window, the attack type (index > 0) most of its attack messages carry; 0 for none."""
    best = np.zeros(starts.shape[0], np.int64)
    top = np.zeros(starts.shape[0], np.int64)
    for lo in range(0, starts.shape[0], 4096):
        rows = row_type[starts[lo:lo + 4096, None] + np.arange(W)]
        for code in range(1, n_types):
            count = (rows == code).sum(axis=1)
            better = count > top[lo:lo + 4096]
            best[lo:lo + 4096][better], top[lo:lo + 4096][better] = code, count[better]
    return best


def _chunk_graphs(msgs: Messages, payload64: np.ndarray, starts: np.ndarray, W: int,
                  normal_flags: bool = False, scratch: graph_kernel.Scratch | None = None) -> dict[str, np.ndarray]:
    """The graph arrays of the windows at ``starts`` (see :func:`window_arrays`); with
    ``scratch``, by :func:`kdkit.data.graph_kernel.chunk_graphs` (the same arrays) in its work arrays.

    ``kdkit/stream/window.py`` computes the same arrays for one window on the live path, in the
    same float64 operations: a feature change here must be made there too
    (``tests/test_stream_window.py`` compares the two bit for bit)."""
    G = int(starts.shape[0])
    N = G * W
    s0 = int(starts[0])
    if (np.diff(starts) == W).all():
        # back-to-back windows: messages s0 .. s0+N, sliced, no gather
        ids, lab, dlc = msgs.can_id[s0:s0 + N], msgs.label[s0:s0 + N], msgs.dlc[s0:s0 + N]
        ts = msgs.timestamp[s0:s0 + N]
        payload = payload64[s0:s0 + N]
        gap = np.empty(N)
        if msgs.restart is not None and msgs.restart[s0:s0 + N].any():  # a timeline's first message: gap 0
            step = ts - (msgs.timestamp[s0 - 1:s0 + N - 1] if s0 else np.concatenate([ts[:1], ts[:-1]]))
            gap[:] = _log_ms(np.where(msgs.restart[s0:s0 + N], 0.0, step))
        elif s0 == 0:
            gap[0] = 0.0  # the recording's first message
            gap[1:] = _log_ms(ts[1:] - ts[:-1])
        else:
            gap[:] = _log_ms(msgs.timestamp[s0:s0 + N] - msgs.timestamp[s0 - 1:s0 + N - 1])
    else:
        midx = (starts[:, None] + np.arange(W)).ravel()
        ids, lab, dlc, ts, payload = msgs.can_id[midx], msgs.label[midx], msgs.dlc[midx], msgs.timestamp[midx], payload64[midx]
        # gap to the preceding message of the recording (0 for the very first one, and a timeline's first)
        step = ts - msgs.timestamp[np.maximum(midx - 1, 0)]
        gap = _log_ms(step if msgs.restart is None else np.where(msgs.restart[midx], 0.0, step))
    if scratch is not None:
        out = graph_kernel.chunk_graphs(ids, payload, dlc, lab, gap, ts, W, normal_flags, scratch)
        out["share"] = lab.reshape(G, W).mean(axis=1, dtype=np.float64)
        return out

    # ---- nodes: distinct IDs per window. A stable sort of each window's IDs (a radix sort
    # when they fit 16 bits) keeps time order inside each group.
    order = _sort_rows(ids.reshape(G, W), small=int(ids.max()) < 1 << 16)
    sid = ids[order]
    new_grp, grp_sorted, node_of_msg, grp_start, grp_last = _runs(sid, order, W)  # every window starts new groups
    n_nodes = int(grp_sorted[-1]) + 1
    node_can = sid[grp_start].astype(np.int64)
    node_ptr = np.empty(G + 1, np.int64)
    node_ptr[:-1] = grp_sorted[::W]
    node_ptr[-1] = n_nodes
    cnt = (grp_last - grp_start + 1).astype(np.float64)

    rows = payload[order]  # payloads in node order
    pl_sum, pl_sq = _payload_sums(rows, grp_last, W)
    pl_mean = pl_sum / cnt[:, None]
    pl_std = np.sqrt(np.maximum(pl_sq / cnt[:, None] - pl_mean ** 2, 0.0)).mean(axis=1)
    pos_s = order % W
    dlc_mean = _group_sums(dlc[order].astype(np.int64), grp_last) / cnt
    gap_mean, _ = _segment_stats(gap, node_of_msg, cnt)
    # consecutive messages of the same ID (same group in sorted order)
    same = ~new_grp[1:]
    pair_grp = grp_sorted[1:][same]
    n_pairs = cnt - 1.0
    ts_s = ts[order]
    iat_mean, iat_std = _segment_stats(_log_ms(ts_s[1:][same] - ts_s[:-1][same]), pair_grp, n_pairs, std=True)
    change_mean, _ = _segment_stats(_abs_change_sums(rows)[same] / 8.0, pair_grp, n_pairs)
    node_y = _group_sums(lab[order].astype(np.int64), grp_last) > 0

    x = np.empty((n_nodes, len(NODE_FEATURES)), np.float32)
    np.divide(pl_mean, 255.0, out=x[:, 0:8])  # computed in float64, stored as float32
    x[:, 8] = cnt / W
    x[:, 9] = pos_s[grp_start] / W
    x[:, 10] = pos_s[grp_last] / W
    x[:, 11] = dlc_mean / 8.0
    x[:, 12] = iat_mean
    x[:, 13] = iat_std
    x[:, 14] = gap_mean
    x[:, 15] = change_mean / 255.0
    x[:, 16] = pl_std / 255.0

    # ---- edges: consecutive messages inside a window, de-duplicated per (src, dst); nodes are
    # numbered locally per window, so a pair is one small code, sorted per window like the IDs
    local = node_of_msg.reshape(G, W) - node_ptr[:-1, None]
    K = int(local.max()) + 1  # most nodes in one window
    code = local[:, :-1] * K + local[:, 1:]
    eorder = _sort_rows(code, small=K * K <= 1 << 16)
    scode = code.reshape(-1)[eorder]
    T = W - 1  # transitions per window
    _, e_sorted, edge_of_pair, e_start, e_last = _runs(scode, eorder, T)
    n_edges = int(e_sorted[-1]) + 1
    e_code = scode[e_start]
    e_src = e_code // K
    e_dst = e_code - e_src * K
    e_cnt = (e_last - e_start + 1).astype(np.float64)
    dt = gap.reshape(G, W)[:, 1:].ravel()  # the gap of message j+1 is the time from message j
    e_mean, e_std = _segment_stats(dt, edge_of_pair, e_cnt, std=True)
    epos_s = eorder % T  # position of the transition's first message in its window
    # b -> a exists: look its code up among the window's edges (sorted by window, then code)
    wkey = (e_start // T) * (K * K) + e_code
    rev = wkey - e_code + e_dst * K + e_src
    reciprocal = wkey[np.minimum(np.searchsorted(wkey, rev), n_edges - 1)] == rev
    edge_ptr = np.empty(G + 1, np.int64)
    edge_ptr[:-1] = e_sorted[::T]
    edge_ptr[-1] = n_edges

    ea = np.empty((n_edges, len(EDGE_FEATURES)), np.float32)
    ea[:, 0] = e_cnt / (W - 1)
    ea[:, 1] = e_mean
    ea[:, 2] = e_std
    ea[:, 3] = epos_s[e_start] / W
    ea[:, 4] = epos_s[e_last] / W
    ea[:, 5] = e_src == e_dst
    ea[:, 6] = reciprocal
    edge_index = np.empty((2, n_edges), np.int32)
    edge_index[0] = e_src
    edge_index[1] = e_dst

    share = lab.reshape(G, W).mean(axis=1, dtype=np.float64)
    out = {"x": x, "can_id": node_can, "node_y": node_y.astype(np.uint8), "nodes": node_ptr[1:] - node_ptr[:-1],
           "edge_index": edge_index, "edge_attr": ea, "edges": edge_ptr[1:] - edge_ptr[:-1], "share": share}
    if normal_flags:
        out["node_normal"] = _group_sums((lab[order] == 0).astype(np.int64), grp_last) > 0
    return out
