"""``kdkit sweep``: grids of notebook runs, as one SLURM job array or a local pool (kdkit/cluster/sweep.py).

    kdkit sweep --notebook notebooks/student.ipynb --grid grid.json [--seeds 0,1,2] [-p epochs 5] \\
        [--use-slurm --max-parallel 4 --preset cpu --time 01:00:00] [--name NAME] [--dry-run] \\
        [--teacher-notebook notebooks/teacher.ipynb [--teacher-param epochs 5] | --teacher-checkpoint best.pt]
    kdkit sweep status [SWEEP] [--json]      (no SWEEP: every sweep under --sweeps-dir)
    kdkit sweep wait SWEEP [--timeout S] [--poll S]
    kdkit sweep cancel SWEEP
    kdkit sweep retry-failed SWEEP [--max-parallel K] [--time 02:00:00] [--mem 8G]
    kdkit sweep report SWEEP                  (the sweep's HTML report)
    kdkit sweep run-task SWEEP_DIR [--task N | --teacher]   (what each array task runs)

SWEEP is a sweep's folder or its name under ``--sweeps-dir`` (default ``runs/sweeps``). Exit
status: 0 when every task COMPLETED (or the request succeeded), 1 when a task did not or Slurm
refused or did not answer, 2 for bad input (a grid key or value the notebook refuses, ...).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kdkit.cli.main import COMMANDS, seconds, whole
from kdkit.cli.slurm import _add_resource_flags, _parameter_value, _resources
from kdkit.cluster import sweep as sw
from kdkit.cluster.orchestrator import FabricSlurmTrainingOrchestrator, SlurmError
from kdkit.reporting.sweep import build_sweep_report


def format_results(results: dict, teacher: dict | None = None) -> str:
    """The results as text: a count per state, then one line per task (failed ones with their error)."""
    rows = results["rows"]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines = [f"sweep {results['sweep']}: {len(rows)} task(s): "
             + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))]
    if teacher:
        lines.append(f"  teacher: {teacher['state']}" + (f" (job {teacher['job_id']})" if teacher.get("job_id") else "")
                     + ("\n    | " + "\n    | ".join(teacher["error"].splitlines()[-5:]) if teacher.get("error") else ""))
    for r in rows:
        flat = sw.flatten(r["metrics"])
        which, f1 = ("KD student", flat["student_kd.overall.f1"]) if "student_kd.overall.f1" in flat \
            else ("overall", flat.get("overall.f1"))
        params = " ".join(f"{k}={json.dumps(v)}" for k, v in r["params"].items())
        seed = "" if r["seed"] is None else f" seed={r['seed']}"
        line = f"  {r['task']:>4} {r['state']:<13} {r['job_id'] or '-':>10}  {params}{seed}"
        if isinstance(f1, (int, float)):
            line += f"  {which} F1 {f1:.4f}"
        if r["error"] and r["state"] != "COMPLETED":
            line += "\n    | " + "\n    | ".join(r["error"].splitlines()[-5:])
        lines.append(line)
    return "\n".join(lines)


def _orchestrator(args, sweep_dir: Path) -> FabricSlurmTrainingOrchestrator:
    """The sweep's orchestrator: the preset given, else the one its last submission used, else ``cpu``."""
    preset = getattr(args, "slurm_preset", None)
    if preset is None and (sweep_dir / "sweep.json").is_file():
        preset = next((sub["preset"] for sub in reversed(sw.load(sweep_dir).get("submissions", []))
                       if sub.get("preset")), None)
    return FabricSlurmTrainingOrchestrator(runs_dir=sweep_dir, preset=preset or "cpu")


def _all_completed(results: dict) -> int:
    return 0 if all(r["state"] == "COMPLETED" for r in results["rows"]) else 1


def cmd_sweep(args) -> int:
    if args.sweep_command is not None:
        return args.sub_func(args)
    if not args.notebook or not (args.grid or args.seeds):
        raise ValueError("kdkit sweep needs --notebook and --grid and/or --seeds (or a sub-command: status, wait, "
                         "cancel, retry-failed, report, run-task)")
    grid = sw.load_grid(args.grid) if args.grid else {}  # --seeds alone: one setting over seeds
    seeds = sw.parse_seeds(args.seeds) if args.seeds else None
    params = {k: _parameter_value(v) for k, v in args.parameters or []}
    teacher_params = {k: _parameter_value(v) for k, v in args.teacher_parameters or []}
    if not args.use_slurm and args.max_parallel and args.max_parallel > sw.local_cores():
        print(f"--max-parallel {args.max_parallel}: this machine has {sw.local_cores()} core(s); "
              f"running {sw.local_cores()} at a time", file=sys.stderr)
    spec = sw.plan(args.notebook, grid, seeds, parameters=params, name=args.name, sweeps_dir=args.sweeps_dir,
                   teacher_notebook=args.teacher_notebook, teacher_parameters=teacher_params,
                   teacher_checkpoint=args.teacher_checkpoint)
    sweep_dir = Path(spec["sweeps_dir"]) / spec["name"]
    resources = _resources(args) if args.use_slurm else {}
    orch = _orchestrator(args, sweep_dir) if args.use_slurm else None
    if args.dry_run:
        print(sw.describe(spec, orch, max_parallel=args.max_parallel, slurm=args.use_slurm, **resources), end="")
        return 0
    if args.use_slurm:
        orch.resources(resources)
        sweep_dir = sw.create(spec)
        job = sw.submit(sweep_dir, orch, max_parallel=args.max_parallel, **resources)
        print(f"submitted sweep {spec['name']} ({len(spec['tasks'])} tasks) as job array {job}: {sweep_dir}\n"
              f"follow it: kdkit sweep status {spec['name']} / kdkit sweep wait {spec['name']}")
        return 0
    sweep_dir = sw.create(spec)
    print(f"sweep {spec['name']}: {len(spec['tasks'])} task(s) in {sweep_dir}", flush=True)
    results = sw.run_local(sweep_dir, max_parallel=args.max_parallel,
                           on_task_end=lambda i, state: print(f"  task {i}: {state}", flush=True))
    print(format_results(results))
    print(f"results: {sweep_dir / 'results.csv'} and results.json")
    return _all_completed(results)


def _cmd_status(args) -> int:
    if args.sweep is None:
        sweeps = sw.list_sweeps(args.sweeps_dir)
        for d in sweeps:
            print(format_results(sw.collect(d)).splitlines()[0] + f"  [{d}]")
        if not sweeps:
            print(f"no sweeps in {args.sweeps_dir}")
        return 0
    sweep_dir = sw.find(args.sweep, args.sweeps_dir)
    orch = _orchestrator(args, sweep_dir)
    results = sw.status(sweep_dir, orch)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print(format_results(results, sw.teacher_state(sweep_dir, orch)))
    return 0


def _cmd_wait(args) -> int:
    sweep_dir = sw.find(args.sweep, args.sweeps_dir)
    results = sw.wait(sweep_dir, _orchestrator(args, sweep_dir), timeout=args.timeout, poll=args.poll)
    print(format_results(results))
    return _all_completed(results)


def _cmd_cancel(args) -> int:
    sweep_dir = sw.find(args.sweep, args.sweeps_dir)
    done = sw.cancel(sweep_dir, _orchestrator(args, sweep_dir))
    print(f"cancelled {', '.join(done) or 'nothing'}")
    return 0


def _cmd_retry(args) -> int:
    sweep_dir = sw.find(args.sweep, args.sweeps_dir)
    limits = {k: getattr(args, k) for k in ("time", "mem") if getattr(args, k, None)}
    indices, result = sw.retry_failed(sweep_dir, _orchestrator(args, sweep_dir), max_parallel=args.max_parallel,
                                      **limits)
    if not indices:
        print("no failed tasks to retry")
        return 0
    if isinstance(result, dict):
        print(format_results(result))
        return _all_completed(result)
    print(f"resubmitted task(s) {', '.join(map(str, indices))} as job array {result}")
    return 0


def _cmd_report(args) -> int:
    sweep_dir = sw.find(args.sweep, args.sweeps_dir)
    sw.status(sweep_dir, _orchestrator(args, sweep_dir))      # the latest states into results.json first
    print(build_sweep_report(sweep_dir))
    return 0


def _cmd_run_task(args) -> int:
    sw.papermill_logging()
    return 0 if sw.run_task(args.sweep_dir, args.task, teacher=args.teacher) == "COMPLETED" else 1


def _errors_to_status(func):
    """Slurm refusals, timeouts and failed notebook runs become a message and exit status 1."""
    def run(args) -> int:
        try:
            return func(args)
        except (SlurmError, TimeoutError) as err:
            print(f"kdkit sweep: {err}", file=sys.stderr)
            return 1
    return run


def register(subparsers) -> None:
    """Adds ``kdkit sweep`` and its sub-commands."""
    p = subparsers.add_parser("sweep", help=COMMANDS["sweep"][1],
                              allow_abbrev=False,    # `run-task DIR --teacher` is not --teacher-notebook
                              description="One papermill run of NOTEBOOK per grid point x seed: on SLURM one job "
                                          "array, locally a pool bounded by the cores. See docs/SWEEPS.md.")
    p.add_argument("--sweeps-dir", default=str(sw.SWEEPS_DIR), help="where sweeps live (default runs/sweeps)")
    p.add_argument("--notebook", help="the notebook every task runs, e.g. notebooks/student.ipynb")
    p.add_argument("--grid", help="JSON or TOML file: notebook parameter -> list of values (none: --seeds alone "
                                  "runs one setting over the seeds)")
    p.add_argument("--seeds", help="values of the notebook's seed parameter, e.g. 0,1,2 (one task each)")
    p.add_argument("-p", "--parameter", dest="parameters", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="a notebook parameter fixed for every task; VALUE is JSON if it parses, else a string")
    p.add_argument("--name", help="the sweep's name (default <notebook>_<timestamp>)")
    p.add_argument("--use-slurm", action="store_true", help="submit one SLURM job array instead of running here")
    p.add_argument("--max-parallel", type=whole(1), help="tasks at once (SLURM: --array=...%%K; locally: at most the cores)")
    teacher = p.add_mutually_exclusive_group()
    teacher.add_argument("--teacher-notebook", help="run this notebook first (a SLURM job the array waits for, "
                         "afterok); its checkpoint is every task's teacher_checkpoint")
    teacher.add_argument("--teacher-checkpoint", help="an existing checkpoint passed as every task's teacher_checkpoint")
    p.add_argument("--teacher-param", dest="teacher_parameters", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="a parameter of the teacher notebook")
    _add_resource_flags(p, "--preset", None, "resource preset from slurm_templates/presets.ini (default cpu; a "
                                              "sub-command: the one the sweep was submitted with)")
    p.set_defaults(func=_errors_to_status(cmd_sweep), sweep_command=None)

    sub = p.add_subparsers(dest="sweep_command", metavar="{status,wait,cancel,retry-failed,report,run-task}")
    s = sub.add_parser("status", help="every task's state and metrics, refreshed (no SWEEP: list the sweeps)")
    s.add_argument("sweep", nargs="?", help="sweep name or folder")
    s.add_argument("--json", action="store_true", help="print results.json")
    s.set_defaults(sub_func=_cmd_status)
    s = sub.add_parser("wait", help="wait until every task ends; exit 0 only if all COMPLETED")
    s.add_argument("sweep", help="sweep name or folder")
    s.add_argument("--timeout", type=seconds, default=None, help="give up after this many seconds")
    s.add_argument("--poll", type=seconds, default=10.0, help="seconds between checks (default 10)")
    s.set_defaults(sub_func=_cmd_wait)
    s = sub.add_parser("cancel", help="cancel the sweep's jobs (or stop its local pool)")
    s.add_argument("sweep", help="sweep name or folder")
    s.set_defaults(sub_func=_cmd_cancel)
    s = sub.add_parser("retry-failed", help="run the FAILED/TIMEOUT/PREEMPTED/... tasks again, in their run dirs")
    s.add_argument("sweep", help="sweep name or folder")
    s.add_argument("--max-parallel", dest="max_parallel", type=whole(1), help="tasks at once (default: the sweep's)")
    s.add_argument("--time", help="SLURM: a new time limit per task, e.g. 02:00:00 (a task that timed out needs "
                                  "more; default: the sweep's)")
    s.add_argument("--mem", help="SLURM: a new memory limit per task, e.g. 8G (default: the sweep's)")
    s.set_defaults(sub_func=_cmd_retry)
    s = sub.add_parser("report", help="write the sweep's HTML report and print its path")
    s.add_argument("sweep", help="sweep name or folder")
    s.set_defaults(sub_func=_cmd_report)
    for name in ("status", "wait", "cancel", "retry-failed", "report"):  # after the sub-command too (it was refused)
        sub.choices[name].add_argument("--sweeps-dir", default=argparse.SUPPRESS,
                                       help="where sweeps live (default runs/sweeps); also before the sub-command")
    s = sub.add_parser("run-task", help="run one task of a sweep (what each SLURM array task runs)")
    s.add_argument("sweep_dir", help="the sweep's folder")
    which = s.add_mutually_exclusive_group()
    which.add_argument("--task", type=whole(0), default=None, help="task index (default $SLURM_ARRAY_TASK_ID)")
    which.add_argument("--teacher", action="store_true", help="run the sweep's teacher notebook")
    s.set_defaults(sub_func=_cmd_run_task)
