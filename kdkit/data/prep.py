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
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kdkit.data.graphs import (
    EDGE_FEATURES,
    NODE_FEATURES,
    IdVocab,
    WindowStream,
    expect_messages,
    iter_window_arrays,
    store_header,
    window_types,
)
from kdkit.data.readers import CHUNK_ROWS, Messages
from kdkit.data.store import ColumnFiles, StoreWriter, read_columns

PART_COLUMNS = {
    "x": (np.float32, (len(NODE_FEATURES),)), "can_id": (np.int64, ()), "node_y": (np.uint8, ()),
    "node_normal": (np.bool_, ()), "edge_index.0": (np.int32, ()), "edge_index.1": (np.int32, ()),
    "edge_attr": (np.float32, (len(EDGE_FEATURES),)), "nodes": (np.int64, ()), "edges": (np.int64, ()),
    "share": (np.float64, ()), "row_type": (np.int64, ()), "start": (np.int64, ()),
}

COPY_WINDOWS = 4096  # windows copied from a part to a split at a time (~12 MB of pages resident)


@dataclass
class FilePart:
    """One recording's windows in part files, and what the later steps need of it."""

    path: str
    folder: str
    messages: int
    windows: int
    attack_type: str
    type_names: list[str] | None  # per-message types (row_type), else None
    last: Messages  # an empty chunk carrying the file's skip counts and dropped frames
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # IDs of the vocabulary's messages
    first: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # first window holding each
    last_window: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # last window holding each
    seconds: float = 0.0  # the time its messages span (each timeline's span, added up)
    attack_messages: int = 0  # messages labelled attack


def _id_ranges(ids: np.ndarray, window_of: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique IDs, first window, last window) of nodes listed in window order."""
    u, first = np.unique(ids, return_index=True)
    _, last_rev = np.unique(ids[::-1], return_index=True)
    return u, window_of[first], window_of[ids.size - 1 - last_rev]


def _merge_ranges(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    if not a[0].size or np.array_equal(a[0], b[0]):  # the usual case: the same IDs chunk after chunk
        return b if not a[0].size else (a[0], np.minimum(a[1], b[1]), np.maximum(a[2], b[2]))
    ids = np.concatenate([a[0], b[0]])
    u, inv = np.unique(ids, return_inverse=True)
    first = np.full(u.size, np.iinfo(np.int64).max)
    last = np.full(u.size, -1)
    np.minimum.at(first, inv, np.concatenate([a[1], b[1]]))
    np.maximum.at(last, inv, np.concatenate([a[2], b[2]]))
    return u, first, last


def expected_messages(path: str | Path) -> int:
    """A rough count of a recording's messages from its file size (~16 bytes a message
    compressed, ~40 in text): enough to pick the graph builder (:func:`graphs.expect_messages`)."""
    try:
        size = Path(path).stat().st_size
    except OSError:
        return 0
    return size // (16 if Path(path).suffix.lower() in (".gz", ".zip", ".blf") else 40)


def build_part(chunks: Iterator[Messages], path: str, folder: Path, window: int, stride: int,
               vocab_source: str = "normal") -> FilePart:
    """Stream one recording's chunks into part files of all its windows (no vocabulary)."""
    expect_messages(expected_messages(path))
    stream = WindowStream(window, stride)
    cols = ColumnFiles(folder, PART_COLUMNS)
    ranges: tuple[np.ndarray, ...] = (np.zeros(0, np.int64),) * 3
    windows, last = 0, None
    seconds, top = 0.0, None  # the spans of the timelines before, and the current one's (first, last) time
    attack = 0
    try:
        for chunk in chunks:
            last = chunk
            if len(chunk):
                attack += int(np.count_nonzero(chunk.label))
                ts = chunk.timestamp
                cuts = [] if chunk.restart is None else np.flatnonzero(chunk.restart).tolist()
                for a, b in zip([0, *cuts], [*cuts, len(chunk)]):
                    if a in cuts and top is not None:  # a new timeline: the one before ends
                        seconds += top[1] - top[0]
                        top = None
                    if b > a:
                        top = (float(ts[a]) if top is None else top[0], float(ts[b - 1]))
            buf, local, starts = stream.feed(chunk)
            if not starts.size:
                continue
            done = 0
            for arr in iter_window_arrays(buf, local, window, normal_flags=True):
                g = arr["nodes"].size
                cols.append({"x": arr["x"], "can_id": arr["can_id"], "node_y": arr["node_y"],
                             "node_normal": arr["node_normal"], "edge_index.0": arr["edge_index"][0],
                             "edge_index.1": arr["edge_index"][1], "edge_attr": arr["edge_attr"], "nodes": arr["nodes"],
                             "edges": arr["edges"], "share": arr["share"],
                             "row_type": arr.get("row_type", np.zeros(g, np.int64)), "start": starts[done:done + g]})
                window_of = np.repeat(np.arange(windows, windows + g), arr["nodes"])
                keep = arr["node_normal"] if vocab_source == "normal" else slice(None)
                ranges = _merge_ranges(ranges, _id_ranges(arr["can_id"][keep], window_of[keep]))
                windows += g
                done += g
        if last is None:
            raise ValueError(f"{path}: the reader handed out no chunk")
        cols.close()
    except BaseException:
        cols.remove()
        raise
    seconds += top[1] - top[0] if top is not None else 0.0
    return FilePart(path, str(folder), stream.messages, windows, last.attack_type,
                    list(last.type_names) if last.row_type is not None else None, last.slice(0, 0), *ranges,
                    seconds=seconds, attack_messages=attack)


def _part_job(job: tuple) -> FilePart:
    reader, path, folder, window, stride, vocab_source, chunk_rows = job
    return build_part(reader(Path(path), chunk_rows), path, Path(folder), window, stride, vocab_source)


def build_parts(reader: Callable[[Path, int], Iterator[Messages]], paths: list[Path], folder: Path, window: int,
                stride: int, vocab_source: str, workers: int = 1, chunk_rows: int = CHUNK_ROWS,
                done: Callable[[], None] | None = None) -> dict[str, FilePart]:
    """Step 1 for every recording (in ``workers`` processes when > 1); ``reader(path, chunk_rows)``
    yields a recording's chunks and must pickle for workers (a module-level function or a
    ``functools.partial`` of one). The first failing recording in ``paths`` order raises."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(reader, str(p), str(folder / f"{i}"), window, stride, vocab_source, chunk_rows)
            for i, p in enumerate(paths)]
    parts: dict[str, FilePart] = {}
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            parts[job[1]] = _part_job(job)
            if done:
                done()
        return parts
    # not fork: the parent may hold torch's and pyarrow's thread pools. A fork server imports kdkit
    # once (seconds) and forks every worker from that clean process, for this and later calls.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["kdkit.data.prep"])
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context, initializer=_watch_parent,
                             initargs=(os.getpid(),)) as pool:
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


PARENT_CHECK_S = 1.0  # how often a preparation worker looks whether the process that started it still runs


def _watch_parent(parent: int) -> None:
    """In a preparation worker: exit when the process that started it is gone. Its parent is the
    fork server, so a SIGKILLed ``kdkit data prepare --workers N`` left its workers running, idle,
    until someone killed them (a login node's stray processes; SLURM's cgroup would end them)."""
    def watch() -> None:
        while True:
            time.sleep(PARENT_CHECK_S)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(1)
            except OSError:
                pass

    threading.Thread(target=watch, name="kdkit-watch-parent", daemon=True).start()


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
    pointers = {}
    n_graphs = n_nodes = n_edges = 0
    for part, ranges, _ in selections:  # the split's sizes, from the parts' per-window counts
        if part.folder not in pointers:
            cols = read_columns(part.folder).arrays
            nptr, eptr = np.zeros(part.windows + 1, np.int64), np.zeros(part.windows + 1, np.int64)
            np.cumsum(cols["nodes"], out=nptr[1:])
            np.cumsum(cols["edges"], out=eptr[1:])
            pointers[part.folder] = nptr, eptr
        nptr, eptr = pointers[part.folder]
        for w0, w1 in ranges:
            n_graphs += max(w1 - w0, 0)
            n_nodes += int(nptr[max(w1, w0)] - nptr[w0])
            n_edges += int(eptr[max(w1, w0)] - eptr[w0])
    F, E = len(NODE_FEATURES), len(EDGE_FEATURES)
    writer = StoreWriter(path, {
        "x": (np.float32, (n_nodes, F)), "node_id": (np.int64, (n_nodes,)), "can_id": (np.int64, (n_nodes,)),
        "node_y": (np.uint8, (n_nodes,)), "edge_index": (np.int32, (2, n_edges)), "edge_attr": (np.float32, (n_edges, E)),
        "node_ptr": (np.int64, (n_graphs + 1,)), "edge_ptr": (np.int64, (n_graphs + 1,)), "y": (np.int64, (n_graphs,)),
        "attack_share": (np.float32, (n_graphs,)), "attack_type": (np.int64, (n_graphs,)),
        "file_index": (np.int64, (n_graphs,)), "start": (np.int64, (n_graphs,))})
    types: list[str] = ["normal"]
    files: list[str] = []
    stats = SplitStats()
    n_off = e_off = 0
    try:
        writer.write("node_ptr", np.zeros(1, np.int64))
        writer.write("edge_ptr", np.zeros(1, np.int64))
        for part, ranges, messages in selections:
            stats.messages += messages
            if part.path not in files:
                files.append(part.path)
            file_index = files.index(part.path)
            mapping = read_columns(part.folder)
            a = mapping.arrays
            nptr, eptr = pointers[part.folder]
            y_sel = np.concatenate([(a["share"][w0:w1] > label_threshold) for w0, w1 in ranges] or [np.zeros(0, bool)])
            part_types, _ = window_types(part.attack_type, part.type_names, y_sel.astype(np.int64),
                                         np.zeros(y_sel.size, np.int64))
            remap = np.array([types.index(t) if t in types else (types.append(t) or len(types) - 1) for t in part_types])
            for w0, w1 in ranges:
                for c0 in range(w0, w1, COPY_WINDOWS):
                    c1 = min(w1, c0 + COPY_WINDOWS)
                    n0, n1, e0, e1 = nptr[c0], nptr[c1], eptr[c0], eptr[c1]
                    can = a["can_id"][n0:n1]
                    node_id = vocab.lookup(can)
                    y = (a["share"][c0:c1] > label_threshold).astype(np.int64)
                    atype = remap[y * a["row_type"][c0:c1]] if part.type_names is not None else remap[y * (len(part_types) - 1)]
                    for name, value in (("x", a["x"][n0:n1]), ("node_id", node_id), ("can_id", can),
                                        ("node_y", a["node_y"][n0:n1]), ("edge_attr", a["edge_attr"][e0:e1]),
                                        ("node_ptr", nptr[c0 + 1:c1 + 1] - n0 + n_off),
                                        ("edge_ptr", eptr[c0 + 1:c1 + 1] - e0 + e_off), ("y", y),
                                        ("attack_share", a["share"][c0:c1].astype(np.float32)), ("attack_type", atype),
                                        ("file_index", np.full(c1 - c0, file_index, np.int64)),
                                        ("start", a["start"][c0:c1])):
                        writer.write(name, value)
                    writer.write("edge_index", a["edge_index.0"][e0:e1], row=0)
                    writer.write("edge_index", a["edge_index.1"][e0:e1], row=1)
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
    stats.files = _shown_names(files)
    return size, stats


def _shown_names(paths: list[str]) -> list[str]:
    """The recordings' file names, or, where two share a name (DAGA's ``V40_03.can.zip`` in several
    attack folders), their paths below the folder they have in common."""
    names = [Path(p).name for p in paths]
    if len(set(names)) == len(names):
        return names
    common = os.path.commonpath([str(Path(p).parent) for p in paths])
    return [os.path.relpath(p, common) for p in paths]


def remove_parts(folder: Path) -> None:
    """Delete step 1's part files."""
    shutil.rmtree(folder, ignore_errors=True)
