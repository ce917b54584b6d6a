"""Benchmarks that print JSON: preprocessing throughput (more in later sections).

    kdkit bench preprocess --file hcrl-sa/train_02_with_attacks/DoS-kia.csv.gz --json
    kdkit bench preprocess --dataset hcrl_sa --json      # whole dataset, fresh process, peak RSS
    kdkit bench preprocess --file F --baseline pandas    # the predecessor's algorithm vs kdkit, same messages
    kdkit bench preprocess --file drive.log.gz --baseline python-can   # python-can's reader alone
    kdkit bench preprocess --file F --builder compiled   # the compiled graph builder (default: auto)

Throughput is measured on one core (torch and BLAS threads pinned to 1): warm runs after one
burn-in, cold runs each the first of a fresh process, alternating; wall and CPU seconds with
min/median/max (the wall clock of a shared machine also counts waiting for the core).
"""
from __future__ import annotations

import itertools
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data

from kdkit.data import graphs
from kdkit.data.graphs import IdVocab, build_graphs
from kdkit.data.readers import read_messages
from kdkit.training.hardware import machine_info


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB): ``VmHWM``, not ``ru_maxrss`` (which
    Linux carries over ``exec`` from the process image that started this one)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _one_core() -> None:

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _run_kdkit(path: Path, window: int, stride: int, store: Path,
               channel: str | None = None) -> tuple[int, int, list[float]]:
    """read -> messages -> windows -> graphs -> store once: (messages, windows, stage wall seconds)."""
    t0 = time.perf_counter()
    msgs = read_messages(path, channel=channel)
    t1 = time.perf_counter()
    vocab = IdVocab.fit([msgs.can_id[msgs.label == 0]])
    gs = build_graphs(msgs, vocab, window, stride)
    t2 = time.perf_counter()
    gs.save(store)
    return len(msgs), len(gs), [t1 - t0, t2 - t1, time.perf_counter() - t2]


def _fresh_folder(parent: Path, name: str) -> Path:
    """An empty folder for one timed run's store: every run writes a new file, none pays for
    replacing (and freeing) the previous run's, which is deleted untimed (:func:`_drop`)."""
    folder = parent / name
    folder.mkdir()
    return folder


def _drop(folder: Path) -> None:
    """Delete a run's folder, outside the timed part."""
    shutil.rmtree(folder, ignore_errors=True)


def _cold_run(path: Path, window: int, stride: int, channel: str | None = None, folder: Path | None = None) -> dict:
    """The first run in a fresh process (imports done, nothing warmed up): wall and CPU seconds.
    The store goes into ``folder`` (empty, the caller's to delete; default a temporary folder
    deleted here)."""
    if folder is None:
        with tempfile.TemporaryDirectory() as tmp:
            return _cold_run(path, window, stride, channel, Path(tmp))
    code = ("import json,sys,time,pathlib; from kdkit.bench.preprocess import _one_core,_run_kdkit; _one_core(); "
            "c=time.process_time(); t=time.perf_counter(); "
            "n,g,st=_run_kdkit(pathlib.Path(sys.argv[1]),int(sys.argv[2]),int(sys.argv[3]),pathlib.Path(sys.argv[5])/'s.store',"
            "sys.argv[4] or None); "
            "print(json.dumps({'wall':time.perf_counter()-t,'cpu':time.process_time()-c,'messages':n}))")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code, str(path), str(window), str(stride), channel or "", str(folder)],
                         capture_output=True, text=True,
                         env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"cold run on {path} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def spread(values: list[float], digits: int = 4) -> dict:
    """min / median / max of repeated measurements."""
    return {"min": round(min(values), digits), "median": round(statistics.median(values), digits),
            "max": round(max(values), digits)}


def preprocess_file(path: str | Path, repeats: int = 5, window: int = 100, stride: int = 100, cold: bool = True,
                    channel: str | None = None) -> dict:
    """End-to-end throughput of one file (any format :func:`read_messages` reads, logger files
    included): read -> messages -> windows -> graphs -> store.

    Warm runs repeat in this process after one burn-in; cold runs are each the first run of a
    fresh process (``cold``, default True). The two alternate, round after round, so a busy
    spell of a shared machine hits both; wall and CPU seconds with min/median/max. Every run
    writes its store into a new empty folder (the previous run's deleted untimed), so warm and
    cold runs do the same file work; all are deleted at the end. ``channel``: a logger file's bus
    (``"*"``: every bus as one stream).

    Raises:
        ValueError: ``repeats`` below 1.
    """
    if repeats < 1:
        raise ValueError(f"--repeats {repeats}: at least 1 measured run is needed")

    _one_core()
    path = Path(path)
    warm_wall: list[float] = []
    warm_cpu: list[float] = []
    colds: list[dict] = []
    stage: dict[str, list[float]] = {"read": [], "graphs": [], "store": []}
    n = g = 0
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        burn = _fresh_folder(tmp, "burn-in")
        _run_kdkit(path, window, stride, burn / "s.store", channel)  # burn-in
        _drop(burn)
        for i in range(repeats):
            if cold:
                folder = _fresh_folder(tmp, f"cold-{i}")
                colds.append(_cold_run(path, window, stride, channel, folder))
                _drop(folder)
            folder = _fresh_folder(tmp, f"warm-{i}")
            c0, t0 = time.process_time(), time.perf_counter()
            n, g, st = _run_kdkit(path, window, stride, folder / "s.store", channel)
            warm_wall.append(time.perf_counter() - t0)
            warm_cpu.append(time.process_time() - c0)
            _drop(folder)
            for k, v in zip(stage, st):
                stage[k].append(v)
    med = statistics.median(warm_wall)
    out = {"benchmark": "preprocess", "file": str(path), "channel": channel, "builder": graphs.BUILDER, "messages": n,
           "windows": g,
           "seconds_median": round(med, 4), "seconds_all": [round(t, 4) for t in warm_wall],
           "messages_per_s": round(n / med), "stage_seconds_median": {k: round(statistics.median(v), 4) for k, v in stage.items()},
           # CPU seconds next to wall seconds: on a shared machine the wall time also counts waiting for the core
           "cpu_seconds_median": round(statistics.median(warm_cpu), 4),
           "messages_per_cpu_s": round(n / statistics.median(warm_cpu)),
           "warm": {"wall_s": spread(warm_wall), "cpu_s": spread(warm_cpu),
                    "messages_per_cpu_s": spread([n / c for c in warm_cpu], 0)},
           "peak_rss_mib": round(peak_rss_mib(), 1), "threads": 1, "machine": machine_info()}
    if colds:
        out["cold"] = {"wall_s": spread([c["wall"] for c in colds]), "cpu_s": spread([c["cpu"] for c in colds]),
                       "messages_per_cpu_s": spread([c["messages"] / c["cpu"] for c in colds], 0)}
    return out


def predecessor_graphs(path: str | Path, limit: int | None = None, window: int = 100, stride: int = 100,
                       vocab: IdVocab | None = None) -> list:
    """The predecessor's algorithm, written faithfully to produce kdkit's graphs: pandas reads the
    CSV as text, every cell is parsed row by row (``apply`` with ``int(s, 16)``), and every window
    is built with Python loops over its messages, nodes and edges into a PyG ``Data`` (the same
    node and edge features, in the same order, as :func:`kdkit.data.graphs.build_graphs`; tested
    equal on a small file). It is the baseline kdkit's vectorized path is measured against.

    Args:
        path: a can-train-and-test CSV (``.csv`` or ``.csv.gz``).
        limit: read only the first ``limit`` rows (default: all).
        window, stride: as :func:`build_graphs` (default 100, 100).
        vocab: the ID vocabulary (default: fitted on the normal messages read).
    """
    import pandas as pd

    df = pd.read_csv(path, nrows=limit, dtype=str, keep_default_na=False)
    ts = df["timestamp"].apply(lambda s: float(s.strip())).tolist()
    ids = df["arbitration_id"].apply(lambda s: int(s.strip(), 16) | (1 << 31 if len(s.strip()) == 8 else 0)).tolist()
    data = df["data_field"].apply(lambda s: [int(s.strip()[i:i + 2], 16) for i in range(0, len(s.strip()), 2)]).tolist()
    labels = df["attack"].apply(lambda s: int(s.strip())).tolist()
    if vocab is None:
        vocab = IdVocab.fit([np.array([c for c, y in zip(ids, labels) if y == 0], np.uint32)])
    index = {int(c): k + 1 for k, c in enumerate(vocab.ids.tolist())}
    graphs = []
    for s in range(0, len(ts) - window + 1, stride):
        graphs.append(_predecessor_window(ts, ids, data, labels, s, window, index))
    return graphs


def _predecessor_window(ts: list, ids: list, data: list, labels: list, s: int, W: int, index: dict):
    """One window's ``Data``, feature by feature in Python (see :func:`predecessor_graphs`)."""
    def log_ms(seconds: float) -> float:
        return math.log1p(seconds * 1000.0)

    def mean_std(values: list[float], n: int) -> tuple[float, float]:  # as kdkit: over n (>= 1), E[x^2] - mean^2
        safe = max(n, 1)
        mean = sum(values) / safe
        return mean, math.sqrt(max(sum(v * v for v in values) / safe - mean * mean, 0.0))

    rows = range(s, s + W)
    gap = [log_ms(ts[m] - ts[m - 1]) if m > 0 else 0.0 for m in rows]
    payload = [data[m] + [0] * (8 - len(data[m])) for m in rows]
    nodes = sorted({ids[m] for m in rows})
    local = {c: k for k, c in enumerate(nodes)}
    x, node_y = [], []
    for c in nodes:
        pos = [j for j in range(W) if ids[s + j] == c]
        cnt = len(pos)
        pairs = list(itertools.pairwise(pos))
        feats = [sum(payload[j][b] for j in pos) / cnt / 255.0 for b in range(8)]
        feats += [cnt / W, pos[0] / W, pos[-1] / W, sum(len(data[s + j]) for j in pos) / cnt / 8.0]
        iat_mean, iat_std = mean_std([log_ms(ts[s + b] - ts[s + a]) for a, b in pairs], cnt - 1)
        change = sum(sum(abs(payload[b][k] - payload[a][k]) for k in range(8)) / 8.0 for a, b in pairs) / max(cnt - 1, 1)
        stds = []
        for b in range(8):
            mean = sum(payload[j][b] for j in pos) / cnt
            stds.append(math.sqrt(max(sum(payload[j][b] ** 2 for j in pos) / cnt - mean * mean, 0.0)))
        feats += [iat_mean, iat_std, sum(gap[j] for j in pos) / cnt, change / 255.0, sum(stds) / 8 / 255.0]
        x.append(feats)
        node_y.append(int(any(labels[s + j] for j in pos)))
    trans: dict[tuple[int, int], list[int]] = {}
    for j in range(W - 1):
        trans.setdefault((local[ids[s + j]], local[ids[s + j + 1]]), []).append(j)
    edges, edge_attr = [], []
    for (a, b), js in sorted(trans.items()):
        e_mean, e_std = mean_std([gap[j + 1] for j in js], len(js))
        edges.append([a, b])
        edge_attr.append([len(js) / (W - 1), e_mean, e_std, js[0] / W, js[-1] / W, float(a == b), float((b, a) in trans)])
    share = sum(labels[s:s + W]) / W
    return Data(x=torch.tensor(x, dtype=torch.float32), node_id=torch.tensor([index.get(c, 0) for c in nodes]),
                edge_index=torch.tensor(edges, dtype=torch.long).t().contiguous(),
                edge_attr=torch.tensor(edge_attr, dtype=torch.float32), y=torch.tensor([int(share > 0)]),
                node_y=torch.tensor(node_y), num_nodes=len(nodes))


def pandas_baseline(path: str | Path, limit: int = 20000, window: int = 100, repeats: int = 3) -> dict:
    """The predecessor's algorithm (:func:`predecessor_graphs`) against kdkit on the same first
    ``limit`` messages, interleaved round after round, wall and CPU seconds with min/median/max
    (and every run's, ``wall_s_all``/``cpu_s_all``). Both hand over graphs (kdkit a packed store,
    each run's in a new empty folder, the predecessor PyG ``Data`` objects). A first round of both,
    not counted, loads what a process loads once (numba's kernels from their cache, pandas' parser);
    its seconds are ``first_run_wall_s`` (on a few thousand messages it is most of kdkit's time)."""
    import pandas as pd

    if repeats < 1:
        raise ValueError(f"--repeats {repeats}: at least 1 measured run is needed")
    _one_core()
    path = Path(path)
    stage: dict[str, list[float]] = {"read": [], "graphs": [], "store": []}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        head = tmp / "head.csv"
        pd.read_csv(path, nrows=limit, dtype=str, keep_default_na=False).to_csv(head, index=False)
        times: dict[str, list[tuple[float, float]]] = {"predecessor": [], "kdkit": []}
        first: dict[str, float] = {}
        n = g = 0
        for r in range(-1, repeats):  # round -1: the untimed first round
            for variant in ("predecessor", "kdkit"):
                folder = _fresh_folder(tmp, f"run-{r + 1}") if variant == "kdkit" else None
                c0, t0 = time.process_time(), time.perf_counter()
                if variant == "predecessor":
                    g = len(predecessor_graphs(head, window=window, stride=window))
                else:
                    n, _, st = _run_kdkit(head, window, window, folder / "s.store")
                took = time.perf_counter() - t0, time.process_time() - c0
                if folder is not None:
                    _drop(folder)
                if r < 0:
                    first[variant] = round(took[0], 6)
                    continue
                times[variant].append(took)
                if folder is not None:
                    for k, v in zip(stage, st):
                        stage[k].append(v)
    wall = {k: [w for w, _ in v] for k, v in times.items()}
    cpu = {k: [c for _, c in v] for k, v in times.items()}
    med = statistics.median(wall["predecessor"])
    return {"benchmark": "preprocess-pandas-baseline", "file": str(path), "messages": n, "windows": g,
            "seconds": round(med, 4), "messages_per_s": round(n / med),
            "messages_per_cpu_s": round(n / statistics.median(cpu["predecessor"])),
            "variants": {k: {"wall_s": spread(wall[k]), "cpu_s": spread(cpu[k]),
                             "messages_per_cpu_s": spread([n / c for c in cpu[k]], 0),
                             "wall_s_all": [round(w, 6) for w in wall[k]], "cpu_s_all": [round(c, 6) for c in cpu[k]]}
                         for k in times},
            "first_run_wall_s": first,
            "kdkit_speedup_cpu": round(statistics.median(cpu["predecessor"]) / statistics.median(cpu["kdkit"]), 1),
            "kdkit_speedup_wall": round(statistics.median(wall["predecessor"]) / statistics.median(wall["kdkit"]), 1),
            "kdkit_stage_seconds_median": {k: round(statistics.median(v), 4) for k, v in stage.items()},
            "peak_rss_mib": round(peak_rss_mib(), 1), "repeats": repeats, "threads": 1, "machine": machine_info()}


def python_can_baseline(path: str | Path, repeats: int = 3, channel: str | None = None) -> dict:
    """python-can's own reader on a logger file (``.log``, ``.asc``, ``.blf``, ``.trc``, ``.gz`` ok):
    frames -> timestamp/ID/payload arrays, no checks; the reference for kdkit's candump fast path.
    ``channel``: keep that bus's frames only (None or ``"*"``: every frame)."""
    if repeats < 1:
        raise ValueError(f"--repeats {repeats}: at least 1 measured run is needed")
    import gzip

    import can

    _one_core()
    path = Path(path)
    kind = {".log": can.CanutilsLogReader, ".asc": can.ASCReader, ".blf": can.BLFReader, ".trc": can.TRCReader}[
        Path(path.name.lower().removesuffix(".gz")).suffix]
    binary = kind is can.BLFReader
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    times: list[float] = []
    cpu: list[float] = []
    n = 0
    for i in range(repeats + 1):  # run 0 is burn-in
        c0, t0 = time.process_time(), time.perf_counter()
        with opener(path, "rb" if binary else "rt") as handle:
            frames = [m for m in kind(handle) if not m.is_remote_frame and not m.is_error_frame
                      and (channel in (None, "*") or str(m.channel) == channel)]
        n = len(frames)
        ts = np.fromiter((m.timestamp for m in frames), np.float64, n)
        ids = np.fromiter((m.arbitration_id for m in frames), np.uint32, n)
        payload = np.frombuffer(b"".join(bytes(m.data[:8]).ljust(8, b"\0") for m in frames), np.uint8).reshape(n, 8)
        t1, c1 = time.perf_counter(), time.process_time()
        del ts, ids, payload, frames
        if i:
            times.append(t1 - t0)
            cpu.append(c1 - c0)
    med = statistics.median(times)
    return {"benchmark": "read-python-can", "file": str(path), "messages": n, "seconds_median": round(med, 4),
            "seconds_all": [round(t, 4) for t in times], "messages_per_s": round(n / med),
            "cpu_seconds_median": round(statistics.median(cpu), 4), "messages_per_cpu_s": round(n / statistics.median(cpu)),
            "threads": 1, "machine": machine_info()}


def preprocess_dataset(name: str, data_root: str | None = None) -> dict:
    """Prepare a whole dataset from scratch in a fresh process, its cache in a new empty
    temporary folder deleted afterwards; report time and peak RSS."""
    with tempfile.TemporaryDirectory() as cache:
        return _preprocess_dataset(name, data_root, cache)


def _preprocess_dataset(name: str, data_root: str | None, cache: str) -> dict:
    code = ("import json,sys,time; from kdkit.data.datasets import prepare; "
            "from kdkit.bench.preprocess import peak_rss_mib; "
            "t=time.perf_counter(); d=prepare(sys.argv[1], data_root=sys.argv[2] or None, cache_dir=sys.argv[3], rebuild=True); "
            "dt=time.perf_counter()-t; msgs=sum(s['messages'] for s in d.info['splits'].values()); "
            "print(json.dumps({'seconds': round(dt,3), 'messages': msgs, 'messages_per_s': round(msgs/dt), "
            "'windows': {k: v['windows'] for k, v in d.info['splits'].items()}, "
            "'peak_rss_mib': round(peak_rss_mib(),1)}))")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code, name, data_root or "", cache], capture_output=True, text=True,
                         env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"prepare {name} failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"benchmark": "preprocess-dataset", "dataset": name, **result, "machine": machine_info()}
