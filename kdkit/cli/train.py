"""``kdkit train`` and ``kdkit evaluate``: the migration guide's commands.

    kdkit train --model gat --dataset hcrl_sa --type teacher
    kdkit train --model gat --dataset hcrl_sa --type student --teacher saved_models/best_teacher_model_hcrl_sa.pth
    kdkit train --model vgae --dataset hcrl_sa --type teacher --config '{"epochs": 50}'
    kdkit train --list-configs
    kdkit train --optimize-batch-size --dataset hcrl_sa --model gat
    kdkit train --model gat --dataset hcrl_sa --type teacher --use-slurm --slurm-preset v100 --partition gpu
    kdkit train ... --run-name s1 --overwrite          # replace runs/s1 (a reused run name is refused otherwise)
    kdkit train ... --run-name s1 --resume runs/s1/checkpoints/last.pt
    kdkit train ... --run-name s1 --resume auto        # runs/s1's last.pt if there is one, else a fresh start
    kdkit evaluate --checkpoint runs/hcrl_sa_gat_teacher/checkpoints/best.pt --dataset hcrl_sa --json
    kdkit evaluate --checkpoint best.pt --input capture.log.gz other_recordings/ --channel can0
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

from kdkit.cli.main import CACHE_DIR_HELP, COMMANDS
from kdkit.cli.slurm import _RESOURCE_FLAGS, add_slurm_arguments, submit_train_from_args
from kdkit.cluster.orchestrator import SlurmError
from kdkit.config import (
    TrainConfig,
    add_config_arguments,
    family_keys_set_unread,
    keys_without_effect,
    list_configs,
    make_config,
    overrides_from_args,
    parse_config_json,
    validate_overrides,
)
from kdkit.data.datasets import stride_gap_note
from kdkit.reporting.metrics import format_table
from kdkit.training.checkpoint import load_checkpoint
from kdkit.training.fork_ranks import cpu_threads
from kdkit.training.preemption import REQUEUE_EXIT_CODE, Preempted, StopRequest
from kdkit.workflows.batch_size import describe, optimize_config_batch_size, sizer_for_config
from kdkit.workflows.demo import demo
from kdkit.workflows.run import END_NOTE, evaluate_checkpoint, load_data, train
from kdkit.workflows.scoring import evaluate_inputs, format_attack_type_recall, format_inputs_report


def overrides_from_cli(args: argparse.Namespace) -> dict:
    """The run's config keys: ``--config`` JSON, then the explicit flags on top (both validated)."""
    overrides = parse_config_json(getattr(args, "config", None))
    overrides.update(validate_overrides(overrides_from_args(args)))
    if overrides.get("devices", 1) > 1 or overrides.get("num_nodes", 1) > 1:
        overrides.setdefault("strategy", "ddp")
    return overrides


def config_from_args(args: argparse.Namespace):
    """TrainConfig from CLI flags: --config JSON, then explicit flags on top."""
    return make_config(**overrides_from_cli(args))


def cmd_train(args: argparse.Namespace) -> int:
    if args.list_configs:
        print(list_configs())
        return 0
    overrides = overrides_from_cli(args)
    if "dataset" not in overrides:
        raise ValueError("--dataset is required (see --list-configs)")
    if not args.use_slurm:  # a SLURM option alone would be ignored: --dry-run trained for real
        given = [f"--{k.replace('_', '-')}" for k in ("dry_run", *_RESOURCE_FLAGS) if getattr(args, k, None)]
        if given:
            raise ValueError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to a SLURM job only: "
                             "add --use-slurm (with --dry-run it prints the job's script and submits nothing); "
                             "without it kdkit train trains here")
    if args.resume and overrides.get("overwrite"):  # (the run resumed and --overwrite was ignored)
        raise ValueError(f"--resume {args.resume} continues the run folder's run and --overwrite replaces it: give "
                         "one of them")
    if not args.use_slurm and overrides.get("num_nodes", 1) > 1 and not (
            os.environ.get("SLURM_JOB_ID") or os.environ.get("MASTER_ADDR") or os.environ.get("NODE_RANK")):
        # outside a SLURM allocation or a launcher that wires the nodes up, rank zero waited for ever for nodes
        # that nobody started
        raise ValueError(f"--num-nodes {overrides['num_nodes']}: the other nodes' processes are started by SLURM "
                         "(add --use-slurm, or run this inside an allocation with srun) or by a launcher that sets "
                         "MASTER_ADDR and NODE_RANK (torchrun); here it would wait for them for ever")
    worker = os.environ.get("LOCAL_RANK", "0") not in ("", "0")  # a DDP worker: rank zero says it
    if overrides.get("type") == "student" and not overrides.get("teacher") and not args.no_teacher and not worker:
        print("note: training a student without --teacher (no distillation); pass --teacher PATH to distill")
    if overrides.get("optimize_batch_size"):
        if overrides.get("node_budget"):  # (the sizer's batch size was recorded; the loader made batches of the budget)
            raise ValueError(f"--optimize-batch-size and --node-budget {overrides['node_budget']}: a node budget makes "
                             "batches of its nodes whatever batch size the sizer picks; give one of them")
        if "batch_size" in overrides_from_args(args):  # (replaced by the sizer's without a word)
            raise ValueError(f"--optimize-batch-size and --batch-size {overrides['batch_size']}: the sizer picks the "
                             "batch size and would replace the one given; give one of them")
    sizer_keys = [k for k in ("target_memory_usage", "max_batch_size") if k in overrides]
    if sizer_keys and not overrides.get("optimize_batch_size"):
        print(f"kdkit train: warning: {', '.join(sizer_keys)} only steer the batch sizer: add --optimize-batch-size "
              f"(now batch_size {make_config(**overrides).batch_size} is used as it is)", file=sys.stderr)
    if overrides.get("optimize_batch_size") and "type" not in overrides:
        print("kdkit train: --optimize-batch-size without --type reports the batch sizes of teacher and student and "
              "trains nothing (add --type teacher|student to size the batch and train with it)", file=sys.stderr)
        return report_batch_size(args)
    planned_cfg = make_config(**overrides)
    # a key set away from its default for a family that does not read it is said by train() itself (every front
    # end's run); here the rest, and everything for a SLURM job, whose training logs it only in the job
    said_by_train = set() if args.use_slurm else {k.split(" ")[0] for k in family_keys_set_unread(planned_cfg)}
    unread = keys_without_effect(planned_cfg, [k for k in overrides if k not in said_by_train])
    if unread and not worker:
        print(f"kdkit train: warning: this run does not read {', '.join(unread)}; "
              f"{'it is' if len(unread) == 1 else 'they are'} recorded in config.json as given", file=sys.stderr)
    if args.use_slurm:
        if stride_gap_note(planned_cfg.window, planned_cfg.stride):  # said now, not hours later in the job's log
            print(f"kdkit train: warning: {stride_gap_note(planned_cfg.window, planned_cfg.stride)}", file=sys.stderr)
        try:
            job = submit_train_from_args(args, overrides)
        except SlurmError as err:
            print(f"kdkit train: {err}", file=sys.stderr)
            return 1
        if job:
            print(f"submitted SLURM job {job}")
        return 0
    cfg = planned_cfg
    if cfg.optimize_batch_size:
        print(f"--optimize-batch-size with --type {cfg.type}: sizing the batch, then training the {cfg.type} with "
              "it (without --type it only reports the sizes)")
        cfg = optimize_config_batch_size(cfg)
    try:
        # DDP workers are forked from this process (no second start-up) unless the batch sizer
        # already ran tensor work in it (an OpenMP pool used before a fork can hang the workers):
        # then they start as new processes with the batch size found (kdkit.training.spawn_ranks)
        with _end_notes_held():
            # TERM (and the cluster's USR1) save last.pt mid-epoch and stop, also outside a SLURM job: a
            # `kill`, `timeout` or a closed session lost the epoch in progress without a word
            summary = train(cfg, resume=args.resume, fork_workers=not cfg.optimize_batch_size,
                            stop=StopRequest(signals=True))
    except Preempted as stopped:  # the requeue wrapper (kdkit.cluster.requeue) requeues the job on this status
        print(f"kdkit train: {stopped}", file=sys.stderr)
        return REQUEUE_EXIT_CODE
    if summary.get("rank", 0) != 0:
        return 0
    if summary.get("resumed_from"):
        batch = f", batch {summary['resumed_at_batch']}" if summary.get("resumed_at_batch") else ""
        print(f"resumed from {summary['resumed_from']} at epoch {summary['resumed_at_epoch']}{batch}")
    print(f"\n{summary['model']} {summary['type']} ({'KD' if summary['kd'] else 'no KD'}): {summary['parameters']:,} parameters, "
          f"{summary['size_bytes'] / 1024:.1f} KiB, {summary['epochs_run']} epochs in {summary['train_seconds']:.1f} s "
          f"[{summary['trainer']}, {summary['precision']}{_processes(summary)}]")
    print(format_timings(summary.get("timings"), _process_seconds()))
    print(format_table(summary["test"]))
    print_skipped(summary.get("skipped_scenarios"))
    for name, why in (summary.get("missing_scenarios") or {}).items():  # a test folder without recordings
        print(f"missing test scenario {name}: {why}")
    for path, rows in (summary.get("skipped_rows") or {}).items():
        print(f"skipped {rows:,} malformed rows of {path} (--on-bad-rows skip)")
    if summary.get("still_learning"):
        print(f"\nnote: {summary['still_learning']}")
    print(f"\nrun folder: {summary['run_dir']}  best checkpoint: {summary['best_checkpoint']}")
    if summary.get("compat_note"):
        print(summary["compat_note"])
    return 0


@contextlib.contextmanager
def _end_notes_held():
    """While training, the run's end notes (the "still learning" note) are not logged: ``cmd_train``
    prints them once, after the table."""
    logger = logging.getLogger("kdkit.workflows.run")
    hold = _drop_end_notes
    logger.addFilter(hold)
    try:
        yield
    finally:
        logger.removeFilter(hold)


def _drop_end_notes(record: logging.LogRecord) -> bool:
    return not getattr(record, END_NOTE, False)


def _processes(summary: dict) -> str:
    """', 2 threads' for one process, ', 2 processes x 1 thread (forked)' for a DDP run: how many
    ranks, their torch threads each, and who started them."""
    world = summary.get("world_size") or 1
    threads = summary.get("threads")
    each = f" x {threads} thread{'s' if threads != 1 else ''}" if threads else ""
    if world <= 1:
        return f", {threads} thread{'s' if threads != 1 else ''}" if threads else ""
    who = {"fork": "forked", "spawn": "started by kdkit", "lightning": "started by Lightning",
           "external": "started by the launcher"}
    launcher = summary.get("launcher")
    return f", {world} processes{each}" + (f" ({who.get(launcher, launcher)})" if launcher else "")


def _process_seconds() -> float | None:
    """Seconds since this process started (Linux ``/proc``; None elsewhere)."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22: start time after boot
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def format_timings(timings: dict | None, process_s: float | None = None) -> str:
    """One line: where a run's wall time went (start-up = the process's age minus the run's phases)."""
    if not timings:
        return ""
    parts = [("data", "data_s"), ("training", "train_s"), ("threshold/combiner", "calibrate_s"),
             ("test pass", "evaluate_s")]
    text = ", ".join(f"{label} {timings[key]:.1f} s" for label, key in parts if key in timings)
    if process_s is not None and "total_s" in timings:
        startup = max(process_s - timings["total_s"], 0.0)
        return f"time: {process_s:.1f} s in all: start-up and imports {startup:.1f} s, {text}"
    return f"time: {text}"


def print_skipped(skipped: dict | None) -> None:
    """The test scenarios left out of the metrics (no windows), one line each."""
    for name, why in (skipped or {}).items():
        print(f"skipped test scenario {name}: {why}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads {args.threads}: must be >= 1 (torch's CPU threads)")
    with cpu_threads(args.threads):
        return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    if args.input and any(not item.strip() for item in args.input):  # "" was the current folder, read recursively
        raise ValueError("--input '': an empty path; name the recordings or folders to score")
    if args.input:
        for flag, value in (("--dataset", args.dataset), ("--data-root", args.data_root)):
            if value is not None:
                raise ValueError(f"{flag} {value} and --input: evaluate either a dataset's test scenarios (--dataset) "
                                 "or given recordings (--input), not both")
        res = evaluate_inputs(args.checkpoint, args.input, channel=args.channel, on_bad_rows=args.on_bad_rows,
                              threshold=args.threshold, out_dir=args.out)
        print(json.dumps(res, indent=2, default=float) if args.json else format_inputs_report(res))
        if not args.json:
            print(f"written {res['json']}")
        return 0
    if args.dataset is None:  # the dataset the checkpoint was trained on: its test scenarios
        trained_on = (load_checkpoint(args.checkpoint).get("train_config") or {}).get("dataset")
        if not trained_on:
            raise ValueError("kdkit evaluate needs --dataset NAME (its test scenarios) or --input FILE_OR_FOLDER ... "
                             f"(any recordings): {args.checkpoint} records no dataset")
        args.dataset = trained_on
        print(f"dataset {trained_on} (the checkpoint's training data; --dataset or --input evaluates others)",
              file=sys.stderr if args.json else sys.stdout)  # --json: stdout is the JSON alone
    for flag, value in (("--channel", args.channel), ("--threshold", args.threshold)):
        if value is not None:
            raise ValueError(f"{flag} {value} applies to --input recordings; --dataset {args.dataset} is evaluated "
                             "with the checkpoint's threshold on its test scenarios")
    res = evaluate_checkpoint(args.checkpoint, args.dataset, args.data_root, args.out, on_bad_rows=args.on_bad_rows)
    if args.json:
        print(json.dumps(res, indent=2, default=float))
    else:
        print(format_table(res))
        per_type = format_attack_type_recall(res["scenarios"], res.get("overall"))
        if per_type:
            print(f"\n{per_type}")
        print_skipped(res.get("skipped_scenarios"))
        for warning in res["warnings"]:
            print(f"warning: {warning}")
        print(f"written {res['json']}")
    return 0


def add_train_arguments(p: argparse.ArgumentParser, cls: type = TrainConfig) -> None:
    """The ``kdkit train`` options: its own (config JSON, resume, SLURM) and one flag per run-schema field."""
    p.add_argument("--config", help="JSON object of config keys (see --list-configs), or @file.json; flags win")
    p.add_argument("--resume", help="continue an interrupted run from its last.pt (same settings; into its own run "
                                    "folder, the metrics history continues); 'auto': the run folder's last.pt if "
                                    "there is one, else start fresh (what SLURM jobs pass)")
    p.add_argument("--no-teacher", action="store_true", help="train a student alone without a notice")
    p.add_argument("--cache-dir", default=None, metavar="DIR", help=CACHE_DIR_HELP)
    p.add_argument("--list-configs", action="store_true", help="print presets and every config key, then exit")
    add_config_arguments(p, cls)
    add_slurm_arguments(p)


def register(sub) -> None:
    """Adds ``kdkit train``, ``evaluate``, ``batch-size`` and ``demo``."""
    p = sub.add_parser("train", help=COMMANDS["train"][1],
                       description="Train a GAT, VGAE or fusion teacher, or a student distilled from --teacher. Every config "
                                   "key is a flag (--list-configs lists them with their defaults).")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help=COMMANDS["evaluate"][1],
                       description="Evaluate a checkpoint on a dataset's test scenarios (--dataset), or score any "
                                   "recordings with it (--input): metrics for labelled ones; alarm rate, score "
                                   "distribution and unknown-ID share for all. Both use the checkpoint's own "
                                   "vocabulary, window, stride and threshold.")
    p.add_argument("--checkpoint", required=True, help="a kdkit checkpoint (best.pt)")
    p.add_argument("--dataset", default=None, metavar="NAME|PATH", help="evaluate its test scenarios (a registry key, folder or spec file; default, "
                                                                   "without --input: the checkpoint's training dataset)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default=None, metavar="DIR", help=CACHE_DIR_HELP)
    p.add_argument("--input", nargs="+", default=None, metavar="FILE_OR_FOLDER",
                   help="score these recordings instead (any format kdkit reads; a folder: every recording in it, "
                        "recursively); writes evaluation_inputs_<first input>_<hash of the inputs and "
                        "channel>.json")
    p.add_argument("--channel", default=None, help="--input logger files (.log/.asc/.blf/.trc): keep only this bus "
                                                   "channel. A file of several buses needs one ('*' reads them all "
                                                   "as one stream).")
    p.add_argument("--threshold", type=float, default=None,
                   help="--input: decide with this threshold instead of the checkpoint's")
    p.add_argument("--out", default=None, help="folder for evaluation_<dataset>.json or evaluation_inputs_*.json "
                                               "(default: the run folder of <run>/checkpoints/X.pt, else beside the "
                                               "checkpoint)")
    p.add_argument("--on-bad-rows", choices=["error", "skip"], default=None,
                   help="malformed rows: stop or skip and count (default: as the checkpoint was trained)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads while scoring (default: torch's; 1 on a node shared with other jobs)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)
    _register_batch_size_and_demo(sub)


def report_batch_size(args) -> int:
    """``kdkit batch-size`` / ``kdkit train --optimize-batch-size`` without --type: report, train nothing."""

    overrides = overrides_from_cli(args)
    if "dataset" not in overrides:
        raise ValueError("--dataset is required")
    types = [overrides["type"]] if "type" in overrides else ["teacher", "student"]
    rows, data = [], None
    for kind in types:
        cfg = make_config(**{**overrides, "type": kind})
        if data is None:
            data = load_data(cfg)
        sizer = sizer_for_config(cfg, data)
        sizer.estimate_optimal_batch_size()
        rows.append((cfg, sizer.result))
    if getattr(args, "json", False):
        print(json.dumps([{"model": c.model, "type": c.type, "dataset": c.dataset, **r.to_dict()} for c, r in rows],
                         indent=2))
    else:
        for c, r in rows:
            print(describe(c, r))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    return demo(Path(args.out), quick=args.quick)


def _register_batch_size_and_demo(sub) -> None:
    p = sub.add_parser("batch-size", help=COMMANDS["batch-size"][1],
                       description="Report the largest batch that fits for the run the flags describe (both presets "
                                   "unless --type is given); trains nothing.")
    p.add_argument("--config", help="JSON config keys, e.g. '{\"target_memory_usage\": 0.7, \"max_batch_size\": 1024}'")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--cache-dir", default=None, metavar="DIR", help=CACHE_DIR_HELP)
    add_config_arguments(p)
    p.set_defaults(func=report_batch_size)

    p = sub.add_parser("demo", help=COMMANDS["demo"][1])
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="data summary only")
    p.set_defaults(func=cmd_demo)
