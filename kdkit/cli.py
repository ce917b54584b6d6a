"""The ``kdkit`` command.

    kdkit data simulate --out DIR --seed N
    kdkit data prepare --dataset hcrl_sa [--data-root DIR]
    kdkit data info --dataset hcrl_sa [--json]
    kdkit bench preprocess --file PATH [--json]
    kdkit bench train --model gat --type teacher --dataset hcrl_sa [--steps N] [--repeats R] [--json]
    kdkit bench infer --checkpoint PATH [--json]
    kdkit batch-size --model gat --dataset hcrl_sa [--type teacher|student] [--config JSON]
    kdkit demo
    kdkit report runs/demo --html

Every sub-command calls the same library functions the notebooks and SLURM jobs call.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _print(obj: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=str))
        return
    for k, v in obj.items():
        print(f"{k:>24}: {v}")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    from kdkit.datasets import REGISTRY

    p.add_argument("--dataset", required=True, choices=sorted(REGISTRY), help="dataset key")
    p.add_argument("--data-root", default=None, help="folder holding hcrl-sa/, hcrl-ch/, set_01/ ... (default: $KDKIT_DATA_ROOT)")
    p.add_argument("--cache-dir", default=None, help="graph store folder (default: runs/cache or $KDKIT_CACHE_DIR)")
    p.add_argument("--window", type=int, default=100, help="messages per window (default 100)")
    p.add_argument("--stride", type=int, default=100, help="offset between windows (default 100)")
    p.add_argument("--label-threshold", type=float, default=0.0, help="window is an attack if its attack share > this (default 0)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="validation share of each training file (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--on-bad-rows", choices=["error", "skip"], default="error", help="malformed rows: stop (default) or skip and count")
    p.add_argument("--include-excluded", action="store_true", help="also train on suppress/masquerade recordings")


def prepare_config_from_args(args: argparse.Namespace):
    from kdkit.datasets import PrepareConfig

    return PrepareConfig(window=args.window, stride=args.stride, label_threshold=args.label_threshold,
                         val_fraction=args.val_fraction, seed=args.seed, include_excluded=args.include_excluded,
                         on_bad_rows=args.on_bad_rows)


def cmd_data_simulate(args: argparse.Namespace) -> int:
    from kdkit.simulate import simulate

    out = simulate(args.out, seed=args.seed, scale=args.scale, gzip=args.gzip)
    print(f"wrote synthetic CAN traffic (seed {args.seed}) to {out}")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from kdkit.datasets import prepare

    ds = prepare(args.dataset, prepare_config_from_args(args), args.data_root, args.cache_dir, rebuild=args.rebuild, progress=True)
    state = "loaded from" if ds.loaded_from_cache else "built into"
    print(f"{args.dataset}: {sum(len(g) for g in ds.splits.values())} graphs {state} {ds.cache_dir}")
    for path, n in ds.info.get("skipped_rows", {}).items():
        print(f"  skipped {n} malformed rows in {path}")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    from kdkit.datasets import prepare

    ds = prepare(args.dataset, prepare_config_from_args(args), args.data_root, args.cache_dir)
    if args.json:
        print(json.dumps(ds.info, indent=2))
        return 0
    print(f"dataset {args.dataset} ({ds.info['root']}), vocabulary {ds.info['vocab_size']} IDs incl. OOV, store {ds.cache_dir}")
    for a, b in ds.info["duplicates_skipped"]:
        print(f"  read once: {a} (identical to {b})")
    for p in ds.info["excluded_from_training"]:
        print(f"  excluded from training: {p}")
    print(f"{'split':<42}{'messages':>10}{'windows':>9}{'attack':>8}{'share':>7}{'IDs':>6}{'OOV nodes':>10}{'nodes/win':>13}{'edges/win':>13}")
    for name, s in ds.info["splits"].items():
        print(f"{name:<42}{s['messages']:>10}{s['windows']:>9}{s['attack_windows']:>8}{s['attack_share']:>7.3f}{s['distinct_ids']:>6}"
              f"{s['oov_nodes']:>10}{s['nodes_mean']:>7.1f}±{s['nodes_std']:<5.1f}{s['edges_mean']:>7.1f}±{s['edges_std']:<5.1f}")
    return 0


def cmd_bench_preprocess(args: argparse.Namespace) -> int:
    from kdkit import bench

    if args.dataset:
        result = bench.preprocess_dataset(args.dataset, args.data_root)
    elif args.baseline == "pandas":
        result = bench.pandas_baseline(args.file, limit=args.limit)
    else:
        result = bench.preprocess_file(args.file, repeats=args.repeats)
    _print(result, args.json)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from kdkit.pipeline import demo

    return demo(Path(args.out), quick=args.quick)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdkit", description="Train, distill and benchmark CAN-bus intrusion detection GNNs.")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="simulate, prepare and inspect datasets").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("simulate", help="write built-in synthetic CAN traffic in the can-train-and-test layout")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies recording durations (default 1.0)")
    p.add_argument("--gzip", action="store_true", help="write .csv.gz instead of .csv")
    p.set_defaults(func=cmd_data_simulate)
    p = data.add_parser("prepare", help="build the packed graph store of a dataset")
    _add_data_args(p)
    p.add_argument("--rebuild", action="store_true", help="ignore an existing store")
    p.set_defaults(func=cmd_data_prepare)
    p = data.add_parser("info", help="messages, windows, attack share, IDs, nodes/edges per split and scenario")
    _add_data_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_data_info)

    bench = sub.add_parser("bench", help="benchmarks that print JSON").add_subparsers(dest="bench_command", required=True)
    p = bench.add_parser("preprocess", help="read -> messages -> windows -> graphs -> store throughput")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", help="one CAN file")
    src.add_argument("--dataset", help="a whole dataset, prepared from scratch in a fresh process")
    p.add_argument("--data-root", default=None)
    p.add_argument("--repeats", type=int, default=5, help="measured repeats after one burn-in (default 5)")
    p.add_argument("--baseline", choices=["pandas"], help="run the predecessor-style pandas baseline instead")
    p.add_argument("--limit", type=int, default=20000, help="messages for the pandas baseline (default 20000)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_preprocess)
    from kdkit.batching_auto import report_batch_size
    from kdkit.bench_train import add_bench_parsers
    from kdkit.datasets import REGISTRY

    add_bench_parsers(bench)  # bench train, bench infer

    p = sub.add_parser("batch-size", help="the largest batch that fits (DynamicBatchSizer); reports, trains nothing")
    p.add_argument("--model", choices=["gat", "vgae"], default="gat", help="model family (default gat)")
    p.add_argument("--dataset", required=True, choices=sorted(REGISTRY), help="dataset key")
    p.add_argument("--type", choices=["teacher", "student"], help="model preset (default: both)")
    p.add_argument("--config", help="JSON config keys, e.g. '{\"target_memory_usage\": 0.7, \"max_batch_size\": 1024}'")
    p.add_argument("--data-root", default=None, help="folder holding hcrl-sa/ ... (default $KDKIT_DATA_ROOT)")
    p.add_argument("--precision", choices=["auto", "32-true", "16-mixed", "bf16-mixed"], help="default: from the hardware")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=report_batch_size)

    p = sub.add_parser("demo", help="the whole story on built-in synthetic traffic")
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="data summary only")
    p.set_defaults(func=cmd_demo)

    for extend in _extensions():
        extend(sub)
    return parser


def _extensions():
    """Sub-commands registered by other modules (train, evaluate, slurm, ...)."""
    import importlib

    for mod, attr in (("kdkit.commands", "register_cli"), ("kdkit.slurm", "register_cli"),
                      ("kdkit.report", "register_cli"), ("kdkit.export", "register_cli")):
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as err:
            if err.name != mod:
                raise
            continue
        yield getattr(module, attr)


def main(argv: list[str] | None = None) -> int:
    from kdkit.data import DataFormatError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (DataFormatError, FileNotFoundError, KeyError, ValueError) as err:
        if os.environ.get("KDKIT_DEBUG"):
            raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"kdkit: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
