"""``kdkit bench preprocess|train|infer``: benchmarks that print a JSON result with ``--json``.

    kdkit bench preprocess --file PATH [--json]
    kdkit bench train --model gat --type teacher --dataset hcrl_sa [--steps N] [--repeats R] [--json]
    kdkit bench infer --checkpoint PATH [--json]
    kdkit bench detect --model student.pt2 --input capture.log [--channel can0] [--live] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from kdkit.bench import preprocess as bench
from kdkit.bench.detect import bench_live, bench_replay
from kdkit.bench.infer import bench_infer
from kdkit.bench.train import bench_train
from kdkit.cli.main import COMMANDS, seconds, whole
from kdkit.data import graphs
from kdkit.stream.detector import ENGINES
from kdkit.workflows.scoring import check_channel


def print_result(obj: dict, as_json: bool) -> None:
    """A flat result as JSON or as aligned ``key: value`` lines."""
    if as_json:
        print(json.dumps(obj, indent=2, default=str))
        return
    for k, v in obj.items():
        print(f"{k:>24}: {v}")


# bench preprocess: the options each mode reads (the others were accepted and ignored)
_PREPROCESS_OPTIONS = {"dataset": ("data_root", "builder"), "file": ("repeats", "channel", "builder"),
                       "pandas": ("limit", "repeats"), "python-can": ("repeats", "channel")}


def _refuse_unused(args: argparse.Namespace) -> None:
    """An option of ``bench preprocess`` the chosen mode does not read is refused, naming the mode."""
    mode = "dataset" if args.dataset else args.baseline or "file"
    given = [k for k in ("data_root", "repeats", "channel", "limit", "builder") if getattr(args, k) is not None]
    unused = [f"--{k.replace('_', '-')}" for k in given if k not in _PREPROCESS_OPTIONS[mode]]
    if unused:
        what = {"dataset": "--dataset (a whole dataset, prepared once in a fresh process)",
                "file": "--file", "pandas": "--baseline pandas", "python-can": "--baseline python-can"}[mode]
        reads = ", ".join(f"--{k.replace('_', '-')}" for k in _PREPROCESS_OPTIONS[mode])
        raise ValueError(f"{', '.join(unused)} {'does' if len(unused) == 1 else 'do'} nothing with {what}, which "
                         f"reads {reads}: drop {'it' if len(unused) == 1 else 'them'}")


def cmd_bench_preprocess(args: argparse.Namespace) -> int:
    _refuse_unused(args)
    if args.repeats is None:
        args.repeats = 5
    if args.limit is None:
        args.limit = 20000
    if args.builder:  # this process and the fresh ones of the cold runs
        os.environ["KDKIT_GRAPH_BUILDER"] = args.builder
        graphs.BUILDER = args.builder

    if args.dataset:
        result = bench.preprocess_dataset(args.dataset, args.data_root)
    elif args.baseline == "pandas":
        result = bench.pandas_baseline(args.file, limit=args.limit, repeats=args.repeats)
    elif args.baseline == "python-can":
        result = bench.python_can_baseline(args.file, repeats=args.repeats, channel=args.channel)
    else:
        result = bench.preprocess_file(args.file, repeats=args.repeats, channel=args.channel)
    print_result(result, args.json)
    return 0


def cmd_bench_train(args: argparse.Namespace) -> int:
    result = bench_train(model=args.model, type=args.type, dataset=args.dataset, steps=args.steps, repeats=args.repeats,
                         burn_in=args.burn_in, batch_size=args.batch_size, precision=args.precision,
                         compile=args.compile, threads=args.threads, data_root=args.data_root,
                         isolate=not args.in_process, accelerator=args.accelerator, attention=args.attention)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['model']} {result['type']} on {result['dataset']}: {result['steps']} steps x {result['repeats']} "
          f"repeats, batch {result['batch_size']}")
    print(f"  baseline: {result['baseline']}")
    for name in ("plain", "fabric"):
        r = result[name]
        g, c = r["graphs_per_s"], r["graphs_per_cpu_s"]
        print(f"  {name:<7} {r['precision']:<11}{' compiled' if r['compiled'] else '':<10} "
              f"{g['median']:>9.1f} graphs/s [{g['min']:.1f}..{g['max']:.1f}]  {c['median']:>8.1f} graphs/CPU-s "
              f"[{c['min']:.1f}..{c['max']:.1f}]  peak {r['peak_mib']['median']:.1f} MiB (RSS {r['rss_peak_mib']['median']:.1f} MiB)")
    print(f"  precision: {result['fabric']['precision_reason']}")
    print(f"  fabric/plain: {result['speedup']}x graphs/s ({result['speedup_cpu_time']}x per CPU second), "
          f"{result['memory_ratio']}x peak memory ({result['memory_ratio_rss']}x RSS); memory: {result['memory_measured_by']}")
    print(f"  numba's one-time set-up ({result['fabric']['numba_setup_mib']['median']:.1f} MiB) is left out of the peaks "
          f"like the imports; counted as the Fabric path's: {result['memory_ratio_with_numba_setup']}x")
    return 0


def cmd_bench_infer(args: argparse.Namespace) -> int:
    result = bench_infer(args.checkpoint, args.dataset, args.data_root, args.batch_size, args.seconds, args.single,
                         args.variants, args.split, rounds=args.rounds,
                         end_to_end=None if args.end_to_end == "off" else args.end_to_end,
                         end_to_end_repeats=args.end_to_end_repeats)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['model']} ({result['parameters']:,} parameters) on {result['dataset']}/{result['split']}, one core, "
          f"{result['rounds']} interleaved rounds (median [min..max]); messages counted: {result['messages_counted']}:")
    for name, r in result["variants"].items():
        s = r["messages_per_s_spread"]
        print(f"  {name:<20} {r['messages_per_s']:>11,} messages/s [{s['min']:,.0f}..{s['max']:,.0f}]  "
              f"p50 {r['latency_ms_p50']:.3f} ms  p99 {r['latency_ms_p99']:.3f} ms  |  per CPU second: "
              f"{r['messages_per_cpu_s']:,} messages/s, p50 {r['latency_cpu_ms_p50']:.3f} ms, p99 {r['latency_cpu_ms_p99']:.3f} ms")
    for label, ratio in result["effects"].items():
        print(f"  {label}: {ratio}x")
    e2e = result.get("end_to_end")
    if e2e and "skipped" not in e2e:
        print(f"  end to end (read -> graphs -> scores) on {e2e['input']}:")
        for label, r in e2e.items():
            if isinstance(r, dict):
                m = r["messages_per_s"]
                print(f"    {label:<34} {m['median']:>11,.0f} messages/s [{m['min']:,.0f}..{m['max']:,.0f}] "
                      f"(engine {r.get('engine')}, single windows {r.get('single_window_engine')})")
    elif e2e:
        print(f"  end to end: {e2e['skipped']}")
    return 0


def _refuse_unused_detect(args: argparse.Namespace) -> None:
    """``--repeats`` is read by the replay only, ``--seconds`` by ``--live`` only: the other mode would
    accept it and ignore it (a figure asked for and silently not measured), so it is refused."""
    if args.live and args.repeats is not None:
        raise ValueError(f"--repeats {args.repeats} does nothing with --live (one live run of --seconds of the "
                         "recording): drop it, or drop --live to time replays")
    if not args.live and args.seconds is not None:
        raise ValueError(f"--seconds {args.seconds} is read with --live only (the replay reads the whole file, "
                         "--repeats times): drop it, or add --live")


def cmd_bench_detect(args: argparse.Namespace) -> int:
    _refuse_unused_detect(args)
    if args.repeats is None:
        args.repeats = 5
    if args.seconds is None:
        args.seconds = 10.0
    check_channel([Path(args.input)], args.channel)  # as kdkit detect: a CSV has no channels to pick
    if args.live:
        result = bench_live(args.model, args.input, args.channel, args.seconds, args.threads, args.engine)
    else:
        result = bench_replay(args.model, args.input, args.channel, args.repeats, args.threads, args.engine)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['benchmark']}: {result['model']} on {result['input']}"
          + (f" (channel {result['channel']})" if result["channel"] else "")
          + f", {result['threads']} thread(s), engine {result['engine']}:")
    if args.live:
        print(f"  {result['messages']:,} messages, {result['windows']:,} windows in {result['seconds']} s of recording; "
              f"decision latency p50 {result['latency_ms_p50']} ms, p99 {result['latency_ms_p99']} ms, "
              f"max {result['latency_ms_max']} ms; from sending the window's last frame p50 "
              f"{result['send_to_decision_ms_p50']} ms, p99 {result['send_to_decision_ms_p99']} ms; CPU time per "
              f"decision p50 {result['cpu_ms_p50']} ms, p99 {result['cpu_ms_p99']} ms")
        return 0
    m, c = result["messages_per_s"], result["cpu_seconds"]
    print(f"  {result['messages']:,} messages, {result['windows']:,} windows, {result['alarms']:,} alarms; reader "
          f"{result['reader']}")
    print(f"  {m['median']:,.0f} messages/s [{m['min']:,.0f}..{m['max']:,.0f}] over {result['repeats']} repeats, "
          f"{c['median']} CPU s ({result['messages_per_cpu_s']['median']:,.0f} messages per CPU second); reading "
          f"{result['read_seconds']['median']} s, detecting "
          f"{result['detect_seconds']['median']} s ({result['detect_messages_per_s']['median']:,.0f} messages/s)")
    return 0


def register(sub) -> None:
    """Adds ``kdkit bench preprocess|train|infer|detect``."""
    bench_sub = sub.add_parser("bench", help=COMMANDS["bench"][1]).add_subparsers(dest="bench_command", required=True)
    p = bench_sub.add_parser("preprocess", help="read -> messages -> windows -> graphs -> store throughput")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", help="one CAN file")
    src.add_argument("--dataset", help="a whole dataset, prepared from scratch in a fresh process")
    p.add_argument("--data-root", default=None)
    p.add_argument("--repeats", type=whole(1), default=None, help="measured repeats after one burn-in (default 5)")
    p.add_argument("--channel", default=None,
                   help="a logger file of several buses: this bus ('*': every bus as one stream)")
    p.add_argument("--baseline", choices=["pandas", "python-can"],
                   help="run a baseline instead: the predecessor-style pandas loop, or python-can's reader alone "
                        "(logger files)")
    p.add_argument("--limit", type=whole(1), default=None, help="messages for the pandas baseline (default 20000)")
    p.add_argument("--builder", choices=["auto", "numpy", "compiled"], default=None,
                   help="window graph builder (kdkit.data.graphs.BUILDER; default $KDKIT_GRAPH_BUILDER or auto: "
                        "compiled only past 4 M messages)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_preprocess)

    p = bench_sub.add_parser("train", help="the plain PyG loop vs the Fabric path: graphs/s, CPU s, peak memory")
    p.add_argument("--model", choices=["gat", "vgae"], default="gat", help="model family (default gat)")
    p.add_argument("--type", choices=["teacher", "student"], default="teacher", help="model preset (default teacher)")
    p.add_argument("--dataset", default="synthetic", metavar="NAME|PATH",
                   help="dataset key, folder or spec file (default synthetic)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--steps", type=whole(1), default=20, help="measured steps per repeat (default 20)")
    p.add_argument("--repeats", type=whole(1), default=3, help="repeats of each variant, alternating in fresh processes (default 3)")
    p.add_argument("--burn-in", type=whole(0), default=3, help="untimed steps first (default 3)")
    p.add_argument("--batch-size", type=whole(1), default=64, help="graphs per batch for both (default 64)")
    p.add_argument("--precision", default="auto", choices=["auto", "32-true", "bf16-mixed", "16-mixed"],
                   help="Fabric path precision (default: the trainer's policy); the plain loop is always fp32")
    p.add_argument("--compile", choices=["on", "off"], default="off", help="torch.compile the Fabric path's model")
    p.add_argument("--attention", choices=["auto", "fused", "stock"], default="auto",
                   help="the Fabric path's GATv2 attention kernel (default auto: fused on CPU); the plain loop runs PyG's")
    p.add_argument("--threads", type=whole(1), default=None, help="torch threads for both (default: torch's default)")
    p.add_argument("--accelerator", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--in-process", action="store_true", help="run every variant in this process (faster, less clean memory)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_train)

    p = bench_sub.add_parser("infer", help="batched messages/s and single-window p50/p99 latency on one core")
    p.add_argument("--checkpoint", required=True, help="a kdkit checkpoint (best.pt)")
    p.add_argument("--dataset", default=None, metavar="NAME|PATH",
                   help="dataset key, folder or spec file (default: the checkpoint's dataset)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--split", default="val", help="split whose windows are scored (default val)")
    p.add_argument("--batch-size", type=whole(1), default=64, help="windows per batch (default 64)")
    p.add_argument("--seconds", type=seconds, default=3.0, help="measuring time per throughput figure (default 3)")
    p.add_argument("--single", type=whole(1), default=2000, help="single-window calls for p50/p99 (default 2000)")
    p.add_argument("--variants", default="default",
                   help="default, all, or a comma list of fp32-eager, bf16-eager (stock model), fp32-scorer, bf16-scorer "
                        "(GATScorer, eager), fp32-stock-compiled, fp32-compiled, bf16-compiled (scorer), fp32-aot. "
                        "The compiled and AOT variants are built before they are timed: ~50 s each on a 2-core CPU, "
                        "untimed, reported as warmup_seconds")
    p.add_argument("--rounds", type=whole(1), default=3, help="interleaved measuring rounds per variant (default 3)")
    p.add_argument("--end-to-end", default="auto", metavar="FILE|auto|off",
                   help="a recording replayed file -> graphs -> scores (default auto: the split's longest file)")
    p.add_argument("--end-to-end-repeats", type=whole(1), default=3, help="timed replays per model form (default 3)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_infer)

    p = bench_sub.add_parser("detect", help="kdkit detect end to end: replay messages/s, or live decision latency")
    p.add_argument("--model", required=True, help="an exported student (.pt2) or a checkpoint (best.pt)")
    p.add_argument("--input", required=True, help="the recording to replay (candump .log, .asc, .blf, .trc, CSV)")
    p.add_argument("--channel", default=None,
                   help="only this channel of a logger file (e.g. can0). A file of several"
                        " buses needs one ('*' reads them all as one stream).")
    p.add_argument("--repeats", type=whole(1), default=None,
                   help="timed replays after one burn-in (default 5; not with --live)")
    p.add_argument("--live", action="store_true", help="measure live latency on a virtual bus at the recorded pace")
    p.add_argument("--seconds", type=float, default=None,
                   help="with --live only: seconds of the recording sent (default 10)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--engine", choices=list(ENGINES), default="auto",
                   help="the detector's engine, as kdkit detect --engine (default auto)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_detect)
