"""Peak memory and speed of ``kdkit data prepare`` on recordings of any size.

    # a can-train-and-test CSV (.csv or .csv.gz) of N generated rows, written in slices
    .venv/bin/python benchmarks/prep_memory.py make runs/big/train_02_with_attacks/DoS-big.csv.gz 30000000
    # the same messages as a candump -L log (a name ending in .log or .log.gz) or a Vector ASC log (.asc)
    .venv/bin/python benchmarks/prep_memory.py make runs/bigc/train_01_attack_free/drive-big.log.gz 30000000
    # prepare a dataset folder once in a fresh process: one JSON line
    .venv/bin/python benchmarks/prep_memory.py measure runs/big runs/big-cache [--workers N]
    # one shuffled pass of the training loader over a prepared (memory-mapped) split: peak RSS
    .venv/bin/python benchmarks/prep_memory.py iterate runs/big-cache/NAME/KEY/train.store --batch-size 256
    # the table of docs/PERFORMANCE.md "Preparation at any size": sizes x repeats, interleaved
    .venv/bin/python benchmarks/prep_memory.py table --sizes 200000,2700000,30000000 --repeats 3 --out runs/prep_memory.json
    .venv/bin/python benchmarks/prep_memory.py table --format candump ...   # the same with candump logs
    .venv/bin/python benchmarks/prep_memory.py table --builders numpy,auto ...  # both graph builders, interleaved

``measure`` reports the peak RSS (``VmHWM`` of the process, ``ru_maxrss`` of any worker) above the
RSS right after ``import kdkit.data``, the CPU seconds (process and workers) beside the wall
seconds, and messages per CPU second; one torch thread. With ``--workers N`` > 1 the workers are
children of a multiprocessing fork server (``kdkit.data.prep``), which reaps them but lives on:
``measure`` stops and reaps that server after the preparation, so that ``getrusage(RUSAGE_CHILDREN)``
holds the server and every worker it reaped (their CPU seconds and largest RSS). Generated data goes under ``runs/``
(git-ignored) and ``table`` deletes it afterwards.

The generated traffic: 40 IDs sent in a shuffled cycle (like periodic ECUs), 8 random payload
bytes, a DoS interval (ID 0x000 every other message) in every 10th block of 100 k rows.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HEADER = b"timestamp,arbitration_id,data_field,attack\n"
SLICE = 1 << 20  # rows generated at a time
HEX = np.frombuffer(b"0123456789ABCDEF", np.uint8)


def _digits(values: np.ndarray, width: int) -> np.ndarray:
    """Decimal digits (ASCII) of non-negative integers, zero-padded to ``width``: [n, width]."""
    out = np.empty((values.size, width), np.uint8)
    v = values.astype(np.int64).copy()
    for j in range(width - 1, -1, -1):
        out[:, j] = 48 + v % 10
        v //= 10
    return out


def rows_text(first: int, n: int, rng: np.random.Generator, candump: bool = False) -> bytes:
    """``n`` CSV rows starting at row ``first`` (fixed width: 41 bytes a row), or the same
    messages as candump ``-L`` lines (``(seconds) can0 ID#data``, 46 bytes, no labels)."""
    i = np.arange(first, first + n, dtype=np.int64)
    us = 1_500_000_000_000_000 + i * 500 + rng.integers(0, 100, n)  # ~2000 messages a second
    pool = np.arange(0x100, 0x100 + 40 * 0x11, 0x11)
    ids = pool[(i + (i // 40) * 7) % 40]
    attack = ((i // 100_000) % 10 == 9) & (i % 2 == 0)
    ids = np.where(attack, 0, ids)
    payload = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    text = np.empty((n, 41), np.uint8)
    text[:, 0:10] = _digits(us // 1_000_000, 10)
    text[:, 10] = ord(".")
    text[:, 11:17] = _digits(us % 1_000_000, 6)
    text[:, 17] = ord(",")
    text[:, 18:21] = HEX[np.stack([(ids >> 8) & 15, (ids >> 4) & 15, ids & 15], axis=1)]
    text[:, 21] = ord(",")
    text[:, 22:38:2] = HEX[payload >> 4]
    text[:, 23:38:2] = HEX[payload & 15]
    text[:, 38] = ord(",")
    text[:, 39] = 48 + attack
    text[:, 40] = ord("\n")
    if candump:  # (seconds) can0 ID#data
        line = np.empty((n, 46), np.uint8)
        line[:, 0] = ord("(")
        line[:, 1:18] = text[:, 0:17]
        line[:, 18:25] = np.frombuffer(b") can0 ", np.uint8)
        line[:, 25:28] = text[:, 18:21]
        line[:, 28] = ord("#")
        line[:, 29:45] = text[:, 22:38]
        line[:, 45] = ord("\n")
        return line.tobytes()
    return text.tobytes()


ASC_HEADER = (b"date Wed Dec 2 04:00:00.000 pm 2026\nbase hex  timestamps absolute\ninternal events logged\n"
              b"Begin Triggerblock Wed Dec 2 04:00:00.000 pm 2026\n")


def asc_text(first: int, n: int, rng: np.random.Generator) -> bytes:
    """The messages of :func:`rows_text` as Vector ASC frame lines (time from the first message)."""
    lines = np.frombuffer(rows_text(first, n, rng, candump=True), np.uint8).reshape(n, 46)
    out = []
    for row in lines.tobytes().splitlines():
        stamp, _, frame = row.split(b" ")
        ident, data = frame.split(b"#")
        seconds = float(stamp[1:-1]) - 1_500_000_000
        out.append(b"%11.6f 1  %s             Rx   d 8 %s\n" % (seconds, ident,
                                                                b" ".join(data[k:k + 2] for k in range(0, 16, 2))))
    return b"".join(out)


def make(path: Path, rows: int, seed: int = 0) -> Path:
    """Write a generated can-train-and-test CSV of ``rows`` rows, or the same messages as a
    candump log (a name ending in ``.log``) or a Vector ASC log (``.asc``); gzip when ``path``
    ends in .gz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    kind = Path(path.name.removesuffix(".gz")).suffix
    with (gzip.open(path, "wb", compresslevel=1) if path.suffix == ".gz" else open(path, "wb")) as out:
        out.write({".log": b"", ".asc": ASC_HEADER}.get(kind, HEADER))
        for a in range(0, rows, SLICE):
            n = min(SLICE, rows - a)
            out.write(asc_text(a, n, rng) if kind == ".asc" else rows_text(a, n, rng, kind == ".log"))
        if kind == ".asc":
            out.write(b"End TriggerBlock\n")
    return path


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _peak_rss_mib() -> float:
    """This process's own peak RSS (``VmHWM``). Not ``ru_maxrss``: Linux carries the peak of the
    process image before ``exec`` over, so a script started from a big process (pytest after
    hundreds of tests) would report the parent's RSS as its own peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: the best there is


def _stop_fork_server() -> bool:
    """Stop and reap multiprocessing's fork server, if one runs; True if it did.

    Preparation workers are forked by that server and reaped by it, never by this process: their
    CPU seconds and peak RSS reach this process's ``RUSAGE_CHILDREN`` only once the server itself
    is reaped (a reaped process's figures include those of the children it reaped). A later
    ``prepare`` starts a new server. Raises RuntimeError where this Python has no way to stop it
    (the figures would leave the workers out)."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if server is None or not hasattr(server, "_stop"):
        raise RuntimeError("measure --workers N>1: this Python's multiprocessing.forkserver has no _stop(), so the "
                           "fork server cannot be reaped and the workers' CPU seconds and memory would not be counted")
    running = getattr(server, "_forkserver_pid", None) is not None
    server._stop()
    return running


def measure(dataset: str, cache: str, workers: int = 1) -> dict:
    """Prepare ``dataset`` once (rebuild) in this process; the figures as a dict. With ``workers``
    > 1 the fork server is stopped and reaped before and after (:func:`_stop_fork_server`), so the
    CPU seconds and the peak RSS count every worker (``workers_counted`` says how)."""
    import torch

    torch.set_num_threads(1)
    import kdkit.data  # noqa: F401  (the imports are the baseline)
    from kdkit.data.datasets import prepare

    # an empty cache, as on a first preparation: deleting the previous run's store (untimed here) frees
    # its page cache, ~80 ms for a 137 MB store, which a rebuild would otherwise count
    shutil.rmtree(cache, ignore_errors=True)
    if workers > 1:
        _stop_fork_server()  # one left from earlier work would count its earlier workers too
    base = _rss_mib()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    d = prepare(dataset, cache_dir=cache, rebuild=True, workers=workers)
    wall = time.perf_counter() - wall0
    own_cpu = time.process_time() - cpu0
    server_reaped = _stop_fork_server() if workers > 1 else False  # untimed: after the wall clock stopped
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers_cpu = (ch.ru_utime + ch.ru_stime) - (ch0.ru_utime + ch0.ru_stime)
    cpu = own_cpu + workers_cpu
    peak = _peak_rss_mib()
    child_peak = ch.ru_maxrss / 1024
    messages = d.info["messages_read"]
    store_bytes = sum(p.stat().st_size for p in d.cache_dir.glob("*.store"))
    from kdkit.data import graphs

    return {"dataset": dataset, "workers": workers, "builder": graphs.BUILDER, "messages": messages, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "msg_per_cpu_s": round(messages / cpu), "msg_per_wall_s": round(messages / wall),
            "rss_after_imports_mib": round(base, 1), "peak_rss_mib": round(peak, 1),
            "peak_above_imports_mib": round(max(peak, child_peak) - base, 1), "worker_peak_rss_mib": round(child_peak, 1),
            "process_cpu_s": round(own_cpu, 3), "workers_cpu_s": round(workers_cpu, 3),
            "workers_counted": ("no workers: preparation in this process" if workers <= 1 else
                                "cpu_s and worker_peak_rss_mib include the workers and the fork server that starts "
                                "them (its start-up and imports too): the server was stopped and reaped after the "
                                "preparation" + ("" if server_reaped else " (none ran: too few recordings for workers)")),
            "store_bytes": store_bytes}


def iterate(store: str, batch_size: int = 256) -> dict:
    """One shuffled epoch of ``graph_loader`` batches over a store file (memory-mapped, checksums
    verified first): peak RSS above the imports against the file's size."""
    import torch

    torch.set_num_threads(1)
    from kdkit.data.graphs import GraphSet
    from kdkit.data.loader import graph_loader

    base = _rss_mib()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    gs = GraphSet.load(store)
    graphs = nodes = 0
    for batch in graph_loader(gs, batch_size=batch_size, shuffle=True, num_workers=0):
        graphs += batch.num_graphs
        nodes += batch.num_nodes
    peak = _peak_rss_mib()
    return {"store": store, "store_bytes": os.path.getsize(store), "graphs": graphs, "nodes": nodes,
            "batch_size": batch_size, "cpu_s": round(time.process_time() - cpu0, 2),
            "wall_s": round(time.perf_counter() - wall0, 2), "rss_after_imports_mib": round(base, 1),
            "peak_above_imports_mib": round(peak - base, 1)}


def _layout(root: Path, rows: int, fmt: str = "csv") -> Path:
    """A dataset folder with one generated training recording (and no test scenario)."""
    make(root / "train_02_with_attacks" / ("DoS-generated.csv.gz" if fmt == "csv" else "drive-generated.log.gz"), rows)
    return root


def interleaved(script: str, roots: dict[int, Path], work: Path, repeats: int,
                variants: dict[object, tuple[list[str], dict[str, str]]], key: str) -> list[dict]:
    """``script measure ROOT CACHE`` for every size (``roots``) and variant (name -> extra
    arguments and environment), ``repeats`` rounds, interleaved (variant after variant, size after
    size, round after round), each in a fresh process; min/median/max per size and variant, the
    variant's name under ``key``. ``work`` is deleted afterwards."""
    runs: dict[tuple[int, object], list[dict]] = {(s, v): [] for s in roots for v in variants}
    try:
        for _ in range(repeats):
            for s, root in roots.items():
                for v, (extra, env) in variants.items():
                    out = subprocess.run([sys.executable, script, "measure", str(root), str(work / f"cache-{s}"), *extra],
                                         check=True, capture_output=True, text=True, env={**os.environ, **env})
                    runs[s, v].append(json.loads(out.stdout.strip().splitlines()[-1]))
                    print(json.dumps(runs[s, v][-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = []
    for (s, v), rs in runs.items():
        row = {"messages": s, key: v, "runs": len(rs), "store_bytes": rs[0]["store_bytes"] if rs else None}
        for name in ("peak_above_imports_mib", "cpu_s", "wall_s", "msg_per_cpu_s", "msg_per_wall_s"):
            vals = [r[name] for r in rs]
            row[name] = {"min": min(vals), "median": statistics.median(vals), "max": max(vals)}
        summary.append(row)
    return summary


def table(sizes: list[int], repeats: int, work: Path, workers: int = 1, fmt: str = "csv",
          builders: tuple[str, ...] = ("auto",)) -> list[dict]:
    """Every size prepared ``repeats`` times with every graph builder (``$KDKIT_GRAPH_BUILDER``),
    interleaved, each in a fresh process; min/median/max per size and builder."""
    try:
        roots = {s: _layout(work / f"gen-{s}", s, fmt) for s in sizes}
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    variants = {b: (["--workers", str(workers)], {"KDKIT_GRAPH_BUILDER": b}) for b in builders}
    return interleaved(__file__, roots, work, repeats, variants, "builder")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="write a generated CSV")
    m.add_argument("path", type=Path)
    m.add_argument("rows", type=int)
    m.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("measure", help="prepare a dataset folder once; one JSON line")
    r.add_argument("dataset")
    r.add_argument("cache")
    r.add_argument("--workers", type=int, default=1)
    i = sub.add_parser("iterate", help="one shuffled loader pass over a store file; one JSON line")
    i.add_argument("store")
    i.add_argument("--batch-size", type=int, default=256)
    t = sub.add_parser("table", help="sizes x repeats, interleaved, generated under runs/ and deleted")
    t.add_argument("--sizes", default="200000,2700000,30000000")
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument("--work", type=Path, default=Path("runs/prep_memory"))
    t.add_argument("--workers", type=int, default=1)
    t.add_argument("--format", choices=["csv", "candump"], default="csv",
                   help="generate can-train-and-test CSVs (default) or candump -L logs")
    t.add_argument("--builders", default="auto",
                   help="graph builders to interleave, e.g. numpy,auto (kdkit.data.graphs.BUILDER)")
    t.add_argument("--out", type=Path, default=None, help="also write the summary JSON here")
    args = p.parse_args(argv)
    if args.cmd == "make":
        make(args.path, args.rows, args.seed)
    elif args.cmd == "measure":
        print(json.dumps(measure(args.dataset, args.cache, args.workers)))
    elif args.cmd == "iterate":
        print(json.dumps(iterate(args.store, args.batch_size)))
    else:
        summary = table([int(s) for s in args.sizes.split(",")], args.repeats, args.work, args.workers, args.format,
                        tuple(args.builders.split(",")))
        text = json.dumps({"machine": os.uname().nodename, "cores": os.cpu_count(), "format": args.format,
                           "summary": summary}, indent=1)
        print(text)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
