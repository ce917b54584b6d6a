"""``kdkit data simulate|prepare|info``: the built-in traffic and the graph store of a dataset.

    kdkit data simulate --out DIR --seed N
    kdkit data prepare --dataset hcrl_sa [--data-root DIR] [--workers N]
    kdkit data prepare --dataset mycar --channel can0       # a folder holding a multi-bus logger capture
    kdkit data info --dataset hcrl_sa [--json]
"""
from __future__ import annotations

import argparse
import json

from kdkit.cli.main import CACHE_DIR_HELP, COMMANDS
from kdkit.config import validate_overrides
from kdkit.data.datasets import REGISTRY, PrepareConfig, dataset_defaults, format_info, prepare, skipped_rows_report
from kdkit.data.simulate import simulate

# flags shared with the run schema (kdkit train): checked by the same rules (types, ranges, finite)
SCHEMA_FLAGS = ("window", "stride", "label_threshold", "val_fraction")


def _add_data_args(p: argparse.ArgumentParser) -> None:

    p.add_argument("--dataset", required=True, metavar="NAME|PATH",
                   help=f"registry key ({', '.join(REGISTRY)}), a dataset folder, a spec file (.toml/.json[:name]) or a "
                        "name declared in ./datasets.toml or $KDKIT_DATASETS")
    p.add_argument("--data-root", default=None, help="folder holding hcrl-sa/, hcrl-ch/, set_01/ ... (default: $KDKIT_DATA_ROOT)")
    p.add_argument("--cache-dir", default=None, metavar="DIR", help=CACHE_DIR_HELP)
    p.add_argument("--window", type=int, default=None, help="messages per window (default: the dataset spec's, else 100)")
    p.add_argument("--stride", type=int, default=None, help="offset between windows (default: the spec's, else the window)")
    p.add_argument("--label-threshold", type=float, default=0.0, help="window is an attack if its attack share > this (default 0)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="validation share of each training file (default 0.2)")
    p.add_argument("--seed", type=int, default=0,
                   help="where each training recording's validation block is placed (default 0: the split kdkit train "
                        "uses for every run seed; another seed prepares a split no training run uses)")
    p.add_argument("--synthetic-seed", type=int, default=0, metavar="N",
                   help="seed of the built-in synthetic dataset (--dataset synthetic; default 0), as kdkit train's")
    p.add_argument("--on-bad-rows", choices=["error", "skip"], default="error", help="malformed rows: stop (default) or skip and count")
    p.add_argument("--include-excluded", action="store_true", help="also train on suppress/masquerade recordings")
    p.add_argument("--channel", default=None, metavar="NAME",
                   help="logger files (.log/.asc/.blf/.trc): keep only this bus channel, e.g. can0 ('*': every channel "
                        "as one stream); default: the dataset spec's channel, if any (given, it replaces it)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="recordings prepared at once, one process each; the store is the same for any N "
                        "(default: $KDKIT_PREPARE_WORKERS, else 1)")


def prepare_config_from_args(args: argparse.Namespace) -> PrepareConfig:
    """The graph settings of ``kdkit data prepare|info``, checked like the same keys of ``kdkit train``.

    Raises:
        ValueError: naming the flag and its value (``--label-threshold nan``, ``-1``...).
    """
    spec = dataset_defaults(args.dataset)
    if args.window is not None:  # as kdkit train: the spec's stride was meant for the spec's window
        spec.pop("stride", None)
    args.window = args.window if args.window is not None else spec.get("window", 100)
    args.stride = args.stride if args.stride is not None else spec.get("stride", args.window)
    for key in SCHEMA_FLAGS:
        value = getattr(args, key)
        try:
            validate_overrides({key: value})
        except ValueError as err:
            raise ValueError(f"--{key.replace('_', '-')} {value!r}: {err}") from None
    return PrepareConfig(window=args.window, stride=args.stride, label_threshold=args.label_threshold,
                         val_fraction=args.val_fraction, seed=args.seed, include_excluded=args.include_excluded,
                         on_bad_rows=args.on_bad_rows)


def cmd_data_simulate(args: argparse.Namespace) -> int:

    out = simulate(args.out, seed=args.seed, scale=args.scale, gzip=args.gzip)
    print(f"wrote synthetic CAN traffic (seed {args.seed}) to {out}")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:

    ds = prepare(args.dataset, prepare_config_from_args(args), args.data_root, args.cache_dir, rebuild=args.rebuild,
                 progress=True, workers=args.workers, channel=args.channel, synthetic_seed=args.synthetic_seed)
    state = "loaded from" if ds.loaded_from_cache else "built into"
    print(f"{ds.name}: {sum(len(g) for g in ds.splits.values())} graphs {state} {ds.cache_dir}")
    for line in skipped_rows_report(ds.info):
        print(line)
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    ds = prepare(args.dataset, prepare_config_from_args(args), args.data_root, args.cache_dir, workers=args.workers,
                 channel=args.channel, synthetic_seed=args.synthetic_seed)
    print(json.dumps(ds.info, indent=2) if args.json else format_info(ds.name, ds))
    return 0


def register(sub) -> None:
    """Adds ``kdkit data simulate|prepare|info``."""
    data = sub.add_parser("data", help=COMMANDS["data"][1]).add_subparsers(dest="data_command", required=True)
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
