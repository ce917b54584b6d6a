"""Where a data-parallel training step's time goes: one rank alone, two ranks apart, two in step.

The same plain PyG training step (``benchmarks/plain_pyg_loop.py``: kdkit's model, AdamW,
cross-entropy) timed in four settings, each in fresh processes with one thread per process:

- ``alone``: one process (what one core does);
- ``apart``: two processes side by side, each on its own half of the batches, never
  synchronising (what two cores do when nothing waits);
- ``ddp``: two processes in ``torch.nn.parallel.DistributedDataParallel`` over gloo, gradients
  all-reduced every step (what ``kdkit train --devices 2`` does);
- ``split``: two processes that synchronise every step by hand, each part timed on its own:
  forward + backward, a barrier (the wait for the slower rank), one all-reduce of the flattened
  gradients, the optimizer step.

A step's median milliseconds per round, and the graphs per second of the whole (both ranks).

    KDKIT_DATA_ROOT=../shared/data/can-train-and-test \\
        python benchmarks/ddp_step.py --dataset hcrl_sa --type student --batch-size 64 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plain_pyg_loop import plain_loader, plain_loss, plain_optimizer  # noqa: E402

MODES = ("alone", "apart", "ddp", "split")


def spread(vals: list[float]) -> dict:
    vals = sorted(vals)
    return {"min": vals[0], "median": statistics.median(vals), "max": vals[-1]}


def _worker(rank: int, world: int, mode: str, args, port: int, out: str) -> None:
    torch.set_num_threads(1)
    from kdkit.config import make_config
    from kdkit.workflows.run import build_student_or_teacher, class_weights, load_data

    cfg = make_config(model="gat", type=args.type, dataset=args.dataset, batch_size=args.batch_size, seed=0)
    data = load_data(cfg)
    train = data.splits["train"]
    torch.manual_seed(0)  # the same initial weights on every rank, as DDP expects
    model = build_student_or_teacher(cfg, data).train()
    weight = class_weights(train)
    loader = plain_loader(train.to_data_list()[rank::world], args.batch_size, seed=rank)
    batches = [b for _, b in zip(range(args.steps), loader)]
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    net = torch.nn.parallel.DistributedDataParallel(model) if mode == "ddp" else model
    opt = plain_optimizer(net, cfg.learning_rate, cfg.weight_decay)
    steps, parts = [], {"forward_backward": [], "barrier": [], "allreduce": [], "optimizer": []}
    for i in range(args.burn_in + args.steps):
        batch = batches[i % len(batches)]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = plain_loss(net, batch, weight)
        loss.backward()
        t1 = t2 = t3 = time.perf_counter()
        if mode == "split":
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            flat = torch._utils._flatten_dense_tensors(grads)
            t1 = time.perf_counter()
            dist.barrier()
            t2 = time.perf_counter()
            dist.all_reduce(flat)
            flat /= world
            for g, f in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
                g.copy_(f)
            t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        if i >= args.burn_in:
            steps.append(t4 - t0)
            for key, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[key].append(value)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    graphs = sum(batches[i % len(batches)].num_graphs for i in range(args.burn_in, args.burn_in + args.steps))
    result = {"rank": rank, "step_ms": round(1e3 * statistics.median(steps), 2), "seconds": sum(steps),
              "graphs": graphs}
    if mode == "split":
        result["parts_ms"] = {k: round(1e3 * statistics.median(v), 2) for k, v in parts.items()}
    Path(out).write_text(json.dumps(result))


def one(mode: str, args) -> dict:
    """One setting in fresh processes; the ranks' step medians and the graphs per second of all."""
    world = 1 if mode == "alone" else 2
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:  # every rank a fresh interpreter running this script
        outs = [Path(tmp) / f"rank{rank}.json" for rank in range(world)]
        procs = [subprocess.Popen([sys.executable, __file__, "--dataset", args.dataset, "--type", args.type,
                                   "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--burn-in",
                                   str(args.burn_in), "--rank", str(rank), "--world", str(world), "--mode", mode,
                                   "--port", str(port), "--out", str(outs[rank])]) for rank in range(world)]
        codes = [proc.wait(timeout=900) for proc in procs]
        if any(codes):
            raise RuntimeError(f"{mode}: rank exit codes {codes}")
        ranks = [json.loads(o.read_text()) for o in outs]
    out = {"step_ms": max(r["step_ms"] for r in ranks),
           "graphs_per_s": round(sum(r["graphs"] for r in ranks) / max(r["seconds"] for r in ranks), 1)}
    if mode == "split":
        out["parts_ms"] = {k: max(r["parts_ms"][k] for r in ranks) for k in ranks[0]["parts_ms"]}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--type", default="student", choices=["student", "teacher"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--burn-in", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--out", help="JSON record")
    for hidden, kind in (("--rank", int), ("--world", int), ("--mode", str), ("--port", int)):
        p.add_argument(hidden, type=kind, help=argparse.SUPPRESS)  # one rank of one setting (see one())
    args = p.parse_args(argv)
    if args.rank is not None:
        _worker(args.rank, args.world, args.mode, args, args.port, args.out)
        return {}
    modes = args.modes.split(",")
    unknown = set(modes) - set(MODES)
    if unknown:
        p.error(f"unknown modes {sorted(unknown)}; choose from {list(MODES)}")
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(args.rounds):  # interleaved: every mode once per round
        for mode in modes:
            runs[mode].append(one(mode, args))
    result = {"benchmark": "ddp_step", "dataset": args.dataset, "type": args.type, "batch_size": args.batch_size,
              "steps": args.steps, "rounds": args.rounds, "threads_per_process": 1, "cpu": os.cpu_count(),
              "modes": {m: {"step_ms": spread([r["step_ms"] for r in rs]),
                            "graphs_per_s": spread([r["graphs_per_s"] for r in rs]),
                            **({"parts_ms": {k: spread([r["parts_ms"][k] for r in rs]) for k in rs[0]["parts_ms"]}}
                               if "parts_ms" in rs[0] else {})}
                        for m, rs in runs.items()}}
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return result


if __name__ == "__main__":
    main()
