"""Data-parallel scaling of ``kdkit train``: 1 process against N processes on the same machine.

Every run is a real ``kdkit train`` in a fresh process (so start-up, data, worker launch and the
final test pass are all counted), variants interleaved round by round. Per run: wall and CPU
seconds (this process's children), the epochs' seconds, the run's own phase timings
(``summary.json["timings"]``: data, training, threshold/combiner, test pass), the fixed cost of
training (training seconds minus the epochs: worker launch, process group, checkpoints) and the
quality reached (validation loss and F1 of the last epoch, test F1 over all folders), so a
speed-up that costs accuracy shows. Also a gloo all-reduce microbenchmark at the models'
gradient sizes (the synchronisation each step pays), the input of the scaling model in
docs/PERFORMANCE.md.

Variants: ``p1t2`` one process with as many threads as cores (what ``kdkit train`` does),
``p1t1`` one process, one thread (the per-core baseline), ``p2t1`` two processes, one thread
each (Lightning gives each rank cores / processes threads; the worker forked from the command,
``kdkit.training.fork_ranks``), ``p2t1L`` the same with the worker started by Lightning's launcher
as a second command (``$KDKIT_DDP_LAUNCHER=lightning``, what ``kdkit train`` did before 2026-12-06).
A suffix ``bN`` sets the batch per process (``p2t1b128``: two processes, 128 windows each a step);
without it the preset's batch.

    KDKIT_DATA_ROOT=../shared/data/can-train-and-test \\
        python benchmarks/scaling.py --roles student,student_kd,teacher --epochs 2 --repeats 3 \\
        --out runs/bench/scaling.json --markdown
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

# name: (processes, threads per process, $KDKIT_DDP_LAUNCHER); kdkit train forks its workers unless told "lightning"
VARIANTS = {"p1t2": (1, None, None), "p1t1": (1, 1, None), "p2t1": (2, 1, None), "p2t1L": (2, 1, "lightning")}


def _split_variant(name: str) -> tuple[str, int | None]:
    """``p2t1b128`` -> ("p2t1", 128); ``p2t1`` -> ("p2t1", None)."""
    base, sep, batch = name.partition("b")
    if base not in VARIANTS or (sep and not (batch.isdigit() and int(batch) > 0)):
        raise ValueError(f"unknown variant {name!r}: one of {sorted(VARIANTS)}, optionally + bN (batch per process)")
    return base, int(batch) if sep else None


def parse_variant(name: str) -> tuple[int, int | None, str | None, int | None]:
    """(processes, threads, launcher, batch per process or None) of a variant such as ``p2t1b128``."""
    base, batch = _split_variant(name)
    return (*VARIANTS[base], batch)


def spread(values: list[float]) -> dict:
    """min / median / max of the values (rounded), and how many."""
    vals = sorted(float(v) for v in values)
    return {"min": round(vals[0], 3), "median": round(statistics.median(vals), 3), "max": round(vals[-1], 3),
            "n": len(vals)}


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def become_subreaper() -> bool:
    """Make orphaned descendants this process's children (Linux ``PR_SET_CHILD_SUBREAPER``).

    A worker that Lightning's launcher starts is not waited for by rank zero: when it outlives
    rank zero it goes to init, and its CPU seconds were never counted in ``RUSAGE_CHILDREN`` (the
    tables before 2026-12-06 undercounted the 2-process runs' CPU that way). As subreaper this
    process inherits it and :func:`reap_orphans` counts it.
    """
    import ctypes

    global _SUBREAPER
    try:
        _SUBREAPER = ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        _SUBREAPER = False
    return _SUBREAPER


_SUBREAPER = False


def reap_orphans() -> None:
    """As subreaper: wait for every remaining descendant (call with no other child running)."""
    while _SUBREAPER:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def train_cmd(kdkit: str, role: str, devices: int, args, run_dir: Path, name: str,
              batch: int | None = None) -> list[str]:
    typ = "teacher" if role == "teacher" else "student"
    cmd = [kdkit, "train", "--model", args.model, "--type", typ, "--dataset", args.dataset, "--epochs",
           str(args.epochs), "--devices", str(devices), "--compile", "false", "--runs-dir", str(run_dir),
           "--run-name", name, "--overwrite", "--no-save-compat", "--seed", str(args.seed)]
    if devices > 1:
        cmd += ["--strategy", "ddp"]
    if batch:
        cmd += ["--batch-size", str(batch)]
    if role == "student_kd":
        cmd += ["--teacher", str(args.teacher)]
    elif role == "student":
        cmd += ["--no-teacher"]
    return cmd


def one_run(kdkit: str, role: str, variant: str, args, run_dir: Path, i: int) -> dict:
    devices, threads, launcher, batch = parse_variant(variant)
    name = f"{role}_{variant}_r{i}"
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    env.pop("KDKIT_DDP_LAUNCHER", None)
    if launcher:
        env["KDKIT_DDP_LAUNCHER"] = launcher
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)  # torch and Lightning read it (Lightning sets it per rank otherwise)
    cpu0, t0 = children_cpu(), time.perf_counter()
    proc = subprocess.run(train_cmd(kdkit, role, devices, args, run_dir, name, batch), env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    reap_orphans()  # a worker still ending after rank zero (its CPU seconds count too)
    cpu = children_cpu() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    s = json.loads((run_dir / name / "summary.json").read_text())
    epochs = [h["epoch_seconds"] for h in s["history"]]
    last = s["history"][-1]
    t = s.get("timings", {})
    return {"role": role, "variant": variant, "processes": devices, "threads": threads, "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2), "epoch_s": [round(e, 3) for e in epochs], "timings": t,
            "train_fixed_s": round(t.get("train_s", s["train_seconds"]) - sum(epochs), 2),
            "outside_run_s": round(wall - t.get("total_s", wall), 2),
            "steps": last["step"], "val_loss": last.get("val_loss"), "val_f1": last.get("val_f1"),
            "test_f1": s["test"]["overall"].get("f1"), "world_size": s.get("world_size", devices),
            "launcher": s.get("launcher"), "batch_size": last.get("batch_size", batch),
            "parameters": s["parameters"]}


def allreduce_worker(rank: int, world: int, sizes: list[int], repeats: int, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    res = {}
    for n in sizes:
        t = torch.randn(n)
        for _ in range(5):
            dist.all_reduce(t)
        times = []
        for _ in range(repeats):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(t)
            times.append((time.perf_counter() - t0) * 1e3)
        res[str(n)] = spread(times)
    if rank == 0:
        Path(out).write_text(json.dumps(res))
    dist.destroy_process_group()


def allreduce_bench(sizes: list[int], world: int = 2, repeats: int = 200) -> dict:
    """Median time of one gloo all-reduce of ``n`` fp32 values between ``world`` local processes
    (this script started ``world`` times with ``--allreduce-rank``)."""
    import socket
    import tempfile

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.NamedTemporaryFile(suffix=".json") as fh:
        procs = [subprocess.Popen([sys.executable, __file__, "--allreduce-rank", str(rank), "--allreduce-world",
                                   str(world), "--allreduce-sizes", ",".join(map(str, sizes)), "--allreduce-port",
                                   str(port), "--allreduce-repeats", str(repeats), "--out", fh.name])
                 for rank in range(world)]
        codes = [proc.wait(timeout=600) for proc in procs]
        if any(codes):
            raise RuntimeError(f"all-reduce benchmark processes exited with {codes}")
        return json.loads(Path(fh.name).read_text())


def summarise(runs: list[dict]) -> dict:
    out: dict = {}
    for r in runs:
        out.setdefault(r["role"], {}).setdefault(r["variant"], []).append(r)
    table = {}
    for role, by_variant in out.items():
        table[role] = {}
        reference = by_variant.get("p1t2") or next(iter(by_variant.values()))  # speed-ups are against this
        base = statistics.median(statistics.median(r["epoch_s"]) for r in reference)
        base_wall = statistics.median(r["wall_s"] for r in reference)
        for variant, rs in by_variant.items():
            epoch = [statistics.median(r["epoch_s"]) for r in rs]
            table[role][variant] = {
                "epoch_s": spread(epoch),
                # the first epoch holds the warm-up (first allocations, kernels loaded): left out here
                "epoch_s_after_first": spread([statistics.median(r["epoch_s"][1:] or r["epoch_s"]) for r in rs]),
                "wall_s": spread([r["wall_s"] for r in rs]),
                "cpu_s": spread([r["cpu_s"] for r in rs]),
                "epoch_speedup_vs_p1t2": round(base / statistics.median(epoch), 2),
                "wall_speedup_vs_p1t2": round(base_wall / statistics.median(r["wall_s"] for r in rs), 2),
                "train_fixed_s": spread([r["train_fixed_s"] for r in rs]),
                "test_pass_s": spread([r["timings"].get("evaluate_s", 0.0) for r in rs]),
                "outside_run_s": spread([r["outside_run_s"] for r in rs]),
                "steps": rs[0]["steps"], "epochs": min(len(r["epoch_s"]) for r in rs),
                "val_loss": spread([r["val_loss"] for r in rs]),
                "test_f1": spread([r["test_f1"] for r in rs if r["test_f1"] is not None] or [0.0]),
                "parameters": rs[0]["parameters"]}
    return table


def markdown(table: dict, allreduce: dict | None) -> str:
    lines = ["| model | variant | s / epoch | epoch speed-up | wall s (whole run) | CPU s | training fixed s | "
             "test pass s | steps | val loss | test F1 |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    names = {"p1t2": "1 process x 2 threads", "p1t1": "1 process x 1 thread", "p2t1": "2 processes x 1 thread",
             "p2t1L": "2 processes x 1 thread, worker started by Lightning"}

    def rng(d: dict, fmt: str = "{:.1f}") -> str:
        return f"{fmt.format(d['median'])} ({fmt.format(d['min'])}-{fmt.format(d['max'])})"

    def name(variant: str) -> str:
        base, batch = _split_variant(variant)
        return names[base] + (f", batch {batch}" if batch else "")

    for role, by_variant in table.items():
        for variant, v in by_variant.items():
            lines.append(f"| {role} | {name(variant)} | {rng(v['epoch_s'])} | {v['epoch_speedup_vs_p1t2']}x | "
                         f"{rng(v['wall_s'])} | {rng(v['cpu_s'])} | {rng(v['train_fixed_s'])} | {rng(v['test_pass_s'])} | "
                         f"{v['steps']} | {rng(v['val_loss'], '{:.4f}')} | {rng(v['test_f1'], '{:.3f}')} |")
    if any(v.get("epochs", 3) < 3 for by_variant in table.values() for v in by_variant.values()):
        lines += ["", "(Fewer than 3 epochs: the first epoch's warm-up weighs heavily in each median; "
                  "`epoch_s_after_first` in the JSON leaves it out.)"]
    if allreduce:
        lines += ["", "| gloo all-reduce, 2 local processes | ms (median, min-max) |", "|---|---:|"]
        for n, d in allreduce.items():
            lines.append(f"| {int(n):,} fp32 values ({int(n) * 4 / 2**20:.2f} MiB) | {d['median']:.3f} ({d['min']:.3f}-{d['max']:.3f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="hcrl_sa")
    p.add_argument("--model", default="gat")
    p.add_argument("--roles", default="student,teacher", help="student (alone), student_kd (needs --teacher), teacher")
    p.add_argument("--teacher", help="teacher checkpoint for student_kd")
    p.add_argument("--variants", default="p1t2,p1t1,p2t1")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs-dir", default="runs/bench/scaling")
    p.add_argument("--allreduce-sizes", default="", help="comma-separated value counts (default: the models' parameter counts)")
    p.add_argument("--out", help="JSON record")
    p.add_argument("--markdown", action="store_true")
    for hidden in ("--allreduce-rank", "--allreduce-world", "--allreduce-port", "--allreduce-repeats"):
        p.add_argument(hidden, type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.allreduce_rank is not None:  # one process of allreduce_bench
        allreduce_worker(args.allreduce_rank, args.allreduce_world, [int(x) for x in args.allreduce_sizes.split(",")],
                         args.allreduce_repeats, args.allreduce_port, args.out)
        return 0
    roles = [r for r in args.roles.split(",") if r]
    if "student_kd" in roles and not args.teacher:
        p.error("--roles student_kd needs --teacher PATH")
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        try:
            parse_variant(v)
        except ValueError as err:
            p.error(str(err))
    kdkit = str(Path(sys.executable).parent / "kdkit")
    run_dir = Path(args.runs_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for i in range(args.repeats):  # rounds: every role and variant once per round, interleaved
        for role in roles:
            for variant in variants:
                r = one_run(kdkit, role, variant, args, run_dir, i)
                print(f"round {i} {role} {variant}: wall {r['wall_s']} s, epochs {r['epoch_s']}, "
                      f"fixed {r['train_fixed_s']} s, test pass {r['timings'].get('evaluate_s')} s", file=sys.stderr)
                runs.append(r)
    sizes = [int(s) for s in args.allreduce_sizes.split(",") if s] or sorted({r["parameters"] for r in runs})
    allreduce = allreduce_bench(sizes) if sizes else None
    from kdkit.training.hardware import machine_info

    record = {"machine": machine_info(), "args": vars(args), "runs": runs, "table": summarise(runs),
              "allreduce_ms": allreduce, "cpu_counts_every_rank": _SUBREAPER}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=1))
    print(markdown(record["table"], allreduce) if args.markdown else json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    become_subreaper()  # here only: not in a process that imports main() (a test runner)
    sys.exit(main())
