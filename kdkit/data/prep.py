"""Preparation at any size: recordings -> graph stores in bounded memory, files in parallel.

``datasets.prepare`` runs three steps; none holds a whole recording or split in memory:

1. Every recording is read in chunks (:func:`kdkit.data.readers.iter_messages`) and its
   windows are built as the chunks arrive (:class:`~kdkit.data.graphs.WindowStream`; a window
   crossing a chunk boundary is built once both parts are there) into a *part* file, one per
   recording, without vocabulary. With ``workers > 1`` several recordings are built at once,
   each in its own process.
2. The validation block of each training recording and the ID vocabulary follow from the
   parts alone: a part keeps, for every CAN ID, the first and last window in which it has a
   normal message (or any message, ``vocab_source="all"``), and the windows left to training
   are all but one contiguous block, so an ID is in the training split exactly when it occurs
   before or after that block.
3. Every split is written window range by window range from the parts (the vocabulary
   applied on the way) and the parts are deleted.

The stores are bit-identical to building each split in memory with ``build_graphs`` and
``GraphSet.concat`` (tested), whatever the chunk size and the number of workers.
"""
from __future__ import annotations

import multiprocessing
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kdkit.data.graphs import EDGE_FEATURES, NODE_FEATURES, IdVocab, WindowStream, store_header, window_arrays, window_types
from kdkit.data.readers import CHUNK_ROWS, Messages
from kdkit.data.store import StoreWriter, open_store

PART_COLUMNS = {
    "x": (np.float32, (len(NODE_FEATURES),)), "can_id": (np.int64, ()), "node_y": (np.uint8, ()),
    "node_normal": (np.bool_, ()), "edge_index.0": (np.int32, ()), "edge_index.1": (np.int32, ()),
    "edge_attr": (np.float32, (len(EDGE_FEATURES),)), "nodes": (np.int64, ()), "edges": (np.int64, ()),
    "share": (np.float64, ()), "row_type": (np.int64, ()), "start": (np.int64, ()),
}

SPLIT_COLUMNS = {
    "x": (np.float32, (len(NODE_FEATURES),)), "node_id": (np.int64, ()), "can_id": (np.int64, ()),
    "node_y": (np.uint8, ()), "edge_index.0": (np.int32, ()), "edge_index.1": (np.int32, ()),
    "edge_attr": (np.float32, (len(EDGE_FEATURES),)), "node_ptr": (np.int64, ()), "edge_ptr": (np.int64, ()),
    "y": (np.int64, ()), "attack_share": (np.float32, ()), "attack_type": (np.int64, ()), "file_index": (np.int64, ()),
    "start": (np.int64, ()),
}

COPY_WINDOWS = 1 << 15  # windows copied from a part to a split at a time


@dataclass
class FilePart:
    """One recording's windows in a part file, and what the later steps need of it."""

    path: str
    store: str
    messages: int
    windows: int
    attack_type: str
    type_names: list[str] | None  # per-message types (row_type), else None
    last: Messages  # an empty chunk carrying the file's skip counts and dropped frames
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # IDs of the vocabulary's messages
    first: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # first window holding each
    last_window: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # last window holding each


def _id_ranges(ids: np.ndarray, window_of: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique IDs, first window, last window) of nodes listed in window order."""
    u, first = np.unique(ids, return_index=True)
    _, last_rev = np.unique(ids[::-1], return_index=True)
    return u, window_of[first], window_of[ids.size - 1 - last_rev]


def _merge_ranges(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    ids = np.concatenate([a[0], b[0]])
    u, inv = np.unique(ids, return_inverse=True)
    first = np.full(u.size, np.iinfo(np.int64).max)
    last = np.full(u.size, -1)
    np.minimum.at(first, inv, np.concatenate([a[1], b[1]]))
    np.maximum.at(last, inv, np.concatenate([a[2], b[2]]))
    return u, first, last


def build_part(chunks: Iterator[Messages], path: str, store: Path, window: int, stride: int,
               vocab_source: str = "normal") -> FilePart:
    """Stream one recording's chunks into a part file of all its windows (no vocabulary)."""
    stream = WindowStream(window, stride)
    writer = StoreWriter(store, PART_COLUMNS)
    ranges: tuple[np.ndarray, ...] = (np.zeros(0, np.int64),) * 3
    windows, last = 0, None
    try:
        for chunk in chunks:
            last = chunk
            buf, local, starts = stream.feed(chunk)
            if not starts.size:
                continue
            arr = window_arrays(buf, local, window, normal_flags=True)
            writer.append({"x": arr["x"], "can_id": arr["can_id"], "node_y": arr["node_y"],
                           "node_normal": arr["node_normal"], "edge_index.0": arr["edge_index"][0],
                           "edge_index.1": arr["edge_index"][1], "edge_attr": arr["edge_attr"], "nodes": arr["nodes"],
                           "edges": arr["edges"], "share": arr["share"],
                           "row_type": arr.get("row_type", np.zeros(starts.size, np.int64)), "start": starts})
            window_of = np.repeat(np.arange(windows, windows + starts.size), arr["nodes"])
            keep = arr["node_normal"] if vocab_source == "normal" else slice(None)
            ranges = _merge_ranges(ranges, _id_ranges(arr["can_id"][keep], window_of[keep]))
            windows += starts.size
        if last is None:
            raise ValueError(f"{path}: the reader handed out no chunk")
        writer.finish({"part": path})
    except BaseException:
        writer.abort()
        raise
    return FilePart(path, str(store), stream.messages, windows, last.attack_type,
                    list(last.type_names) if last.row_type is not None else None, last.slice(0, 0), *ranges)


def _part_job(job: tuple) -> FilePart:
    reader, path, store, window, stride, vocab_source, chunk_rows = job
    return build_part(reader(Path(path), chunk_rows), path, Path(store), window, stride, vocab_source)


def build_parts(reader: Callable[[Path, int], Iterator[Messages]], paths: list[Path], folder: Path, window: int,
                stride: int, vocab_source: str, workers: int = 1, chunk_rows: int = CHUNK_ROWS,
                done: Callable[[], None] | None = None) -> dict[str, FilePart]:
    """Step 1 for every recording (in ``workers`` processes when > 1); ``reader(path, chunk_rows)``
    yields a recording's chunks and must pickle for workers (a module-level function or a
    ``functools.partial`` of one). The first failing recording in ``paths`` order raises."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(reader, str(p), str(folder / f"{i}.part"), window, stride, vocab_source, chunk_rows)
            for i, p in enumerate(paths)]
    parts: dict[str, FilePart] = {}
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            parts[job[1]] = _part_job(job)
            if done:
                done()
        return parts
    # spawn, not fork: the parent may hold torch's and pyarrow's thread pools
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_part_job, job) for job in jobs]
        try:
            for job, fut in zip(jobs, futures):
                parts[job[1]] = fut.result()
                if done:
                    done()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    return parts


def excluded_block(part: FilePart, v0: int, v1: int, window: int, stride: int) -> tuple[int, int]:
    """Windows ``[a, b)`` of a training recording left out of training: those overlapping the
    validation windows ``[v0, v1)`` (the windows before and after stay training windows)."""
    if v1 <= v0:
        return 0, 0
    starts = np.arange(part.windows, dtype=np.int64) * stride
    lo, hi = v0 * stride, (v1 - 1) * stride + window
    return int(np.count_nonzero(starts + window <= lo)), int(np.count_nonzero(starts < hi))


def vocab_ids(part: FilePart, a: int, b: int) -> np.ndarray:
    """The IDs of the vocabulary's messages in a recording's windows outside ``[a, b)``."""
    used = (part.first < a) | (part.last_window >= b) if b > a else np.ones(part.ids.size, bool)
    return part.ids[used].astype(np.uint32)


@dataclass
class SplitStats:
    """What ``kdkit data info`` reports of a split, gathered while it is written."""

    messages: int = 0
    y: list[np.ndarray] = field(default_factory=list)
    nodes: list[np.ndarray] = field(default_factory=list)
    edges: list[np.ndarray] = field(default_factory=list)
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    oov: int = 0
    files: list[str] = field(default_factory=list)


def write_split(path: Path, selections: list[tuple[FilePart, list[tuple[int, int]], int]], vocab: IdVocab,
                label_threshold: float, meta: dict) -> tuple[int, SplitStats]:
    """Step 3: a split's store file from window ranges of parts, in order.

    Args:
        path: the store file.
        selections: (part, window ranges ``[(w0, w1), ...]``, messages counted for the split).
        vocab: applied to every node's CAN ID.
        label_threshold: a window is an attack when its attack share is above it.
        meta: header entries (dataset, split, key).

    Returns:
        (file size, the split's statistics).
    """
    writer = StoreWriter(path, SPLIT_COLUMNS)
    types: list[str] = ["normal"]
    files: list[str] = []
    stats = SplitStats()
    n_off = e_off = 0
    try:
        writer.append({**{k: np.zeros((0, *inner), dt) for k, (dt, inner) in SPLIT_COLUMNS.items()},
                       "node_ptr": np.zeros(1, np.int64), "edge_ptr": np.zeros(1, np.int64)})
        for part, ranges, messages in selections:
            stats.messages += messages
            if part.path not in files:
                files.append(part.path)
            file_index = files.index(part.path)
            mapping = open_store(part.store, verify=False)
            a = mapping.arrays
            nptr = np.zeros(part.windows + 1, np.int64)
            np.cumsum(a["nodes"], out=nptr[1:])
            eptr = np.zeros(part.windows + 1, np.int64)
            np.cumsum(a["edges"], out=eptr[1:])
            y_sel = np.concatenate([(a["share"][w0:w1] > label_threshold) for w0, w1 in ranges] or [np.zeros(0, bool)])
            part_types, _ = window_types(part.attack_type, part.type_names, y_sel.astype(np.int64),
                                         np.zeros(y_sel.size, np.int64))
            remap = np.array([types.index(t) if t in types else (types.append(t) or len(types) - 1) for t in part_types])
            for w0, w1 in ranges:
                for c0 in range(w0, w1, COPY_WINDOWS):
                    c1 = min(w1, c0 + COPY_WINDOWS)
                    n0, n1, e0, e1 = nptr[c0], nptr[c1], eptr[c0], eptr[c1]
                    can = np.array(a["can_id"][n0:n1])
                    node_id = vocab.lookup(can)
                    y = (a["share"][c0:c1] > label_threshold).astype(np.int64)
                    if part.type_names is not None:
                        atype = remap[y * a["row_type"][c0:c1]]
                    else:
                        atype = remap[y * (len(part_types) - 1)]
                    writer.append({"x": a["x"][n0:n1], "node_id": node_id, "can_id": can, "node_y": a["node_y"][n0:n1],
                                   "edge_index.0": a["edge_index"][0, e0:e1], "edge_index.1": a["edge_index"][1, e0:e1],
                                   "edge_attr": a["edge_attr"][e0:e1], "node_ptr": nptr[c0 + 1:c1 + 1] - n0 + n_off,
                                   "edge_ptr": eptr[c0 + 1:c1 + 1] - e0 + e_off, "y": y,
                                   "attack_share": a["share"][c0:c1].astype(np.float32), "attack_type": atype,
                                   "file_index": np.full(c1 - c0, file_index, np.int64), "start": a["start"][c0:c1]})
                    n_off += int(n1 - n0)
                    e_off += int(e1 - e0)
                    stats.y.append(y)
                    stats.nodes.append(np.diff(nptr[c0:c1 + 1]))
                    stats.edges.append(np.diff(eptr[c0:c1 + 1]))
                    stats.ids = np.union1d(stats.ids, np.unique(can))
                    stats.oov += int(np.count_nonzero(node_id == 0))
                    mapping.release()
    except BaseException:
        writer.abort()
        raise
    size = writer.finish(store_header(types, files, meta))
    stats.files = [Path(f).name for f in files]
    return size, stats


def remove_parts(folder: Path) -> None:
    """Delete step 1's part files."""
    shutil.rmtree(folder, ignore_errors=True)
