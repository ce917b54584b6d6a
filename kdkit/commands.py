"""``kdkit train`` and ``kdkit evaluate``: the migration guide's commands.

    kdkit train --model gat --dataset hcrl_sa --type teacher
    kdkit train --model gat --dataset hcrl_sa --type student --teacher saved_models/best_teacher_model_hcrl_sa.pth
    kdkit train --model vgae --dataset hcrl_sa --type teacher --config '{"epochs": 50}'
    kdkit train --list-configs
    kdkit train --optimize-batch-size --dataset hcrl_sa --model gat
    kdkit train --model gat --dataset hcrl_sa --type teacher --use-slurm --slurm-preset v100 --partition gpu
    kdkit evaluate --checkpoint runs/hcrl_sa_gat_teacher/checkpoints/best.pt --dataset hcrl_sa --json
"""
from __future__ import annotations

import argparse
import json


def config_from_args(args: argparse.Namespace):
    """TrainConfig from CLI flags: --config JSON, then explicit flags on top."""
    from kdkit.config import make_config, parse_config_json

    overrides = parse_config_json(args.config)
    for flag, key in (("model", "model"), ("dataset", "dataset"), ("type", "type"), ("teacher", "teacher"),
                      ("epochs", "epochs"), ("precision", "precision"), ("trainer", "trainer"), ("run_name", "run_name"),
                      ("runs_dir", "runs_dir"), ("data_root", "data_root"), ("devices", "devices"),
                      ("num_nodes", "num_nodes"), ("batch_size", "batch_size"), ("seed", "seed")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    if getattr(args, "optimize_batch_size", False):
        overrides["optimize_batch_size"] = True
    if overrides.get("devices", 1) > 1 or overrides.get("num_nodes", 1) > 1:
        overrides.setdefault("strategy", "ddp")
    return make_config(**overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from kdkit.config import list_configs

    if args.list_configs:
        print(list_configs())
        return 0
    if not args.dataset:
        raise ValueError("--dataset is required (see --list-configs)")
    if args.type == "student" and not args.teacher and not args.no_teacher:
        print("note: training a student without --teacher (no distillation); pass --teacher PATH to distill")
    if args.optimize_batch_size and not args.type:
        from kdkit.batching_auto import report_batch_size

        return report_batch_size(args)
    args.model = args.model or "gat"
    args.type = args.type or "teacher"
    if args.use_slurm:
        from kdkit.slurm import submit_train_from_args

        job = submit_train_from_args(args)
        if job:
            print(f"submitted SLURM job {job}")
        return 0
    from kdkit.pipeline import train

    cfg = config_from_args(args)
    if cfg.optimize_batch_size:
        from kdkit.batching_auto import optimize_config_batch_size

        cfg = optimize_config_batch_size(cfg)
    summary = train(cfg, resume=args.resume)
    if summary.get("rank", 0) != 0:
        return 0
    from kdkit.evaluate import format_table

    print(f"\n{summary['model']} {summary['type']} ({'KD' if summary['kd'] else 'no KD'}): {summary['parameters']:,} parameters, "
          f"{summary['size_bytes'] / 1024:.1f} KiB, {summary['epochs_run']} epochs in {summary['train_seconds']:.1f} s "
          f"[{summary['trainer']}, {summary['precision']}]")
    print(format_table(summary["test"]))
    print(f"\nrun folder: {summary['run_dir']}  best checkpoint: {summary['best_checkpoint']}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from kdkit.evaluate import format_table
    from kdkit.pipeline import evaluate_checkpoint

    res = evaluate_checkpoint(args.checkpoint, args.dataset, args.data_root, args.out)
    if args.json:
        print(json.dumps(res, indent=2, default=float))
    else:
        print(format_table(res))
    return 0


def register_cli(sub) -> None:
    from kdkit.datasets import REGISTRY

    p = sub.add_parser("train", help="train a teacher or a (distilled) student",
                       description="Train a GAT or VGAE teacher, or a student distilled from --teacher.")
    p.add_argument("--model", choices=["gat", "vgae"], help="model family (default gat)")
    p.add_argument("--dataset", choices=sorted(REGISTRY), help="dataset key")
    p.add_argument("--type", choices=["teacher", "student"], help="teacher or student (default teacher)")
    p.add_argument("--teacher", help="teacher checkpoint for knowledge distillation (carries its own config)")
    p.add_argument("--no-teacher", action="store_true", help="train a student alone without a notice")
    p.add_argument("--config", help="JSON object of config keys (see --list-configs), or @file.json")
    p.add_argument("--epochs", type=int, help="maximum epochs")
    p.add_argument("--batch-size", type=int, help="graphs per batch")
    p.add_argument("--precision", choices=["auto", "32-true", "16-mixed", "bf16-mixed"], help="default: from the hardware")
    p.add_argument("--trainer", choices=["fabric", "legacy"], help="fabric (default) or the plain-PyTorch baseline")
    p.add_argument("--resume", help="continue an interrupted run from its last.pt")
    p.add_argument("--run-name", help="run folder name under --runs-dir")
    p.add_argument("--runs-dir", help="parent folder of runs (default runs)")
    p.add_argument("--data-root", help="folder holding hcrl-sa/ ... (default $KDKIT_DATA_ROOT)")
    p.add_argument("--devices", type=int, help="processes per node (DDP when > 1)")
    p.add_argument("--num-nodes", type=int, help="nodes (under SLURM)")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--list-configs", action="store_true", help="print presets and every config key, then exit")
    p.add_argument("--optimize-batch-size", action="store_true", help="find the largest batch that fits and use it")
    p.add_argument("--use-slurm", action="store_true", help="submit as a SLURM job instead of running here")
    from kdkit.slurm import add_slurm_arguments

    add_slurm_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="metrics of a checkpoint on every test scenario")
    p.add_argument("--checkpoint", required=True, help="a kdkit checkpoint (best.pt)")
    p.add_argument("--dataset", required=True, choices=sorted(REGISTRY))
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default=None, help="folder for evaluation_<dataset>.json (default: the run folder)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)
