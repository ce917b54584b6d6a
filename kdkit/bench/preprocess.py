"""Benchmarks that print JSON: preprocessing throughput (more in later sections).

    kdkit bench preprocess --file hcrl-sa/train_02_with_attacks/DoS-kia.csv.gz --json
    kdkit bench preprocess --dataset hcrl_sa --json      # whole dataset, fresh process, peak RSS
    kdkit bench preprocess --file F --baseline pandas    # the predecessor-style pandas loop
    kdkit bench preprocess --file drive.log.gz --baseline python-can   # python-can's reader alone

Throughput is measured on one core (torch and BLAS threads pinned to 1) after one
burn-in run; the median of the repeats is reported together with every repeat.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kdkit.data.graphs import IdVocab, build_graphs
from kdkit.data.readers import read_messages
from kdkit.training.hardware import machine_info


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _one_core() -> None:

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def preprocess_file(path: str | Path, repeats: int = 5, window: int = 100, stride: int = 100) -> dict:
    """End-to-end throughput of one file (any format :func:`read_messages` reads, logger files
    included): read -> messages -> windows -> graphs -> store."""

    _one_core()
    path = Path(path)
    times: list[float] = []
    cpu: list[float] = []
    stage: dict[str, list[float]] = {"read": [], "graphs": [], "store": []}
    n = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats + 1):  # run 0 is burn-in
            c0, t0 = time.process_time(), time.perf_counter()
            msgs = read_messages(path)
            t1 = time.perf_counter()
            vocab = IdVocab.fit([msgs.can_id[msgs.label == 0]])
            gs = build_graphs(msgs, vocab, window, stride)
            t2 = time.perf_counter()
            gs.save(Path(tmp) / "store.pt")
            t3, c3 = time.perf_counter(), time.process_time()
            if i:
                times.append(t3 - t0)
                cpu.append(c3 - c0)
                for k, v in zip(stage, (t1 - t0, t2 - t1, t3 - t2)):
                    stage[k].append(v)
            n = len(msgs)
    med = statistics.median(times)
    # CPU seconds next to wall seconds: on a shared machine the wall time also counts waiting for the core
    return {"benchmark": "preprocess", "file": str(path), "messages": n, "windows": len(gs),
            "seconds_median": round(med, 4), "seconds_all": [round(t, 4) for t in times],
            "messages_per_s": round(n / med), "stage_seconds_median": {k: round(statistics.median(v), 4) for k, v in stage.items()},
            "cpu_seconds_median": round(statistics.median(cpu), 4), "messages_per_cpu_s": round(n / statistics.median(cpu)),
            "peak_rss_mib": round(peak_rss_mib(), 1), "threads": 1, "machine": machine_info()}


def pandas_baseline(path: str | Path, limit: int = 20000, window: int = 100) -> dict:
    """The predecessor's style: pandas per-cell ``apply`` hex parsing and Python loops per window,
    node and edge. Run on the first ``limit`` messages only (it is ~100x slower)."""
    import pandas as pd

    t0 = time.perf_counter()
    df = pd.read_csv(path, nrows=limit, dtype=str)
    df["can_id"] = df["arbitration_id"].apply(lambda s: int(s, 16))
    df["bytes"] = df["data_field"].apply(lambda s: [int(s[i:i + 2], 16) for i in range(0, len(s), 2)] + [0] * (8 - len(s) // 2))
    graphs = []
    for w0 in range(0, len(df) - window + 1, window):
        win = df.iloc[w0:w0 + window]
        nodes: dict[int, list] = {}
        edges: dict[tuple[int, int], int] = {}
        ids = list(win["can_id"])
        for j, (cid, b) in enumerate(zip(ids, win["bytes"])):
            nodes.setdefault(cid, []).append((j, b))
            if j + 1 < len(ids):
                edges[(cid, ids[j + 1])] = edges.get((cid, ids[j + 1]), 0) + 1
        feats = {cid: [float(np.mean([b[k] for _, b in v])) / 255 for k in range(8)] + [len(v) / window, v[-1][0] / window]
                 for cid, v in nodes.items()}
        graphs.append((feats, edges))
    dt = time.perf_counter() - t0
    return {"benchmark": "preprocess-pandas-baseline", "file": str(path), "messages": len(df),
            "windows": len(graphs), "seconds": round(dt, 4), "messages_per_s": round(len(df) / dt)}


def python_can_baseline(path: str | Path, repeats: int = 3) -> dict:
    """python-can's own reader on a logger file (``.log``, ``.asc``, ``.blf``, ``.trc``, ``.gz`` ok):
    frames -> timestamp/ID/payload arrays, no checks; the reference for kdkit's candump fast path."""
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
            frames = [m for m in kind(handle) if not m.is_remote_frame and not m.is_error_frame]
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
    """Prepare a whole dataset from scratch in a fresh process; report time and peak RSS."""
    code = ("import json,sys,time,tempfile,resource; from kdkit.datasets import prepare; "
            "t=time.perf_counter(); d=prepare(sys.argv[1], data_root=sys.argv[2] or None, cache_dir=tempfile.mkdtemp(), rebuild=True); "
            "dt=time.perf_counter()-t; msgs=sum(s['messages'] for s in d.info['splits'].values()); "
            "print(json.dumps({'seconds': round(dt,3), 'messages': msgs, 'messages_per_s': round(msgs/dt), "
            "'windows': {k: v['windows'] for k, v in d.info['splits'].items()}, "
            "'peak_rss_mib': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024,1)}))")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code, name, data_root or ""], capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"prepare {name} failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"benchmark": "preprocess-dataset", "dataset": name, **result, "machine": machine_info()}
