"""``kdkit slurm ...`` and ``kdkit train --use-slurm``: the command line over kdkit.cluster.

    kdkit slurm status [123 ...] [--runs-dir runs]   # every registered job, or the ones named
    kdkit slurm wait 123 [--timeout 3600] [--poll 10]
    kdkit slurm logs 123 [--tail 50]
    kdkit slurm cancel 123
    kdkit slurm resubmit 123 [--time 08:00:00]   # a PREEMPTED/TIMEOUT/NODE_FAIL job again, resuming its last.pt
    kdkit slurm submit-notebook notebooks/teacher.ipynb -p dataset hcrl_ch -p epochs 5 \\
        [--preset cpu] [--partition P] [--account A] [--time 01:00:00] [--dry-run]
    kdkit train --model gat --dataset hcrl_ch --type teacher --use-slurm \\
        [--slurm-preset v100 --partition gpu --account X --time 04:00:00 --dry-run]
        [--signal-grace 300 --max-requeues 5]    # USR1 5 min before the time limit; requeue up to 5 times

Every sub-command's ``func`` returns the process exit status: 0 when the job (or the
request) succeeded, 1 when Slurm refused, did not answer (squeue/scontrol/sacct/scancel
get ``$KDKIT_SLURM_QUERY_TIMEOUT`` seconds, default 10) or the job ended in a state other
than COMPLETED. A job ID that is not one (``--name=x``) is refused before Slurm is asked
(``kdkit.cli.main`` turns the ValueError into exit status 2). A state Slurm could not
confirm is shown with ``[stale]``: the registry keeps the last known one.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kdkit.cli.main import COMMANDS, seconds, whole
from kdkit.cluster.orchestrator import FabricSlurmTrainingOrchestrator, SlurmError, SlurmUnavailable, load_presets
from kdkit.cluster.sweep import list_sweeps

_RESOURCE_FLAGS = ("partition", "account", "qos", "time", "gpus", "mem", "signal_grace", "max_requeues")


def format_job(info: dict) -> str:
    """One line per job for people; a failed job adds its exit code and log tail, a job whose
    state Slurm could not confirm is marked ``[stale]`` (with its ``last_error`` if given)."""
    line = f"{info['job_id']:>8}  {info.get('state', '?'):<13} {info.get('name') or '-'}"
    for key in ("exit_code", "reason", "nodes"):
        if info.get(key) and not (key == "exit_code" and info[key] == "0:0"):
            line += f"  {key}={info[key]}"
    if info.get("stale"):
        line += "  [stale: last known state]"
        if info.get("last_error"):
            line += f"\n    last check: {info['last_error']}"
    if info.get("log_tail"):
        line += f"\n    log {info.get('log')}:\n" + "\n".join(
            "    | " + ln for ln in info["log_tail"].splitlines())
    return line


def _add_resource_flags(parser: argparse.ArgumentParser, preset_flag: str, preset_default: str | None = "cpu",
                        preset_help: str = "resource preset from slurm_templates/presets.ini (default cpu)") -> None:
    parser.add_argument(preset_flag, dest="slurm_preset", default=preset_default, choices=sorted(load_presets()),
                        help=preset_help)
    parser.add_argument("--partition", help="Slurm partition (default: the preset's)")
    parser.add_argument("--account", help="account to charge")
    parser.add_argument("--qos", help="quality of service")
    parser.add_argument("--time", help="time limit, e.g. 04:00:00 (default: the preset's)")
    parser.add_argument("--gpus", type=whole(0), help="GPUs per node (default: the preset's)")
    parser.add_argument("--mem", help="memory per node, e.g. 32G (default: the preset's)")
    parser.add_argument("--signal-grace", type=whole(1), metavar="SECONDS",
                        help="SLURM warns the job (USR1) this long before its time limit; the run saves last.pt and "
                             "the job requeues itself (default 120; 0: no warning)")
    parser.add_argument("--max-requeues", type=whole(0), metavar="N",
                        help="requeue a job stopped by its time limit or preemption at most N times (default 3)")
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch script, do not submit")


def _resources(args) -> dict:
    return {k: getattr(args, k) for k in _RESOURCE_FLAGS if getattr(args, k, None) is not None}


def add_slurm_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the SLURM options of ``kdkit train`` (``--use-slurm`` unless it is there)."""
    group = parser.add_argument_group("SLURM (with --use-slurm)")
    if "--use-slurm" not in parser._option_string_actions:
        group.add_argument("--use-slurm", action="store_true", help="submit as a SLURM job instead of running here")
    _add_resource_flags(group, "--slurm-preset")


def submit_train_from_args(args: argparse.Namespace, overrides: dict) -> str | None:
    """Submits the training ``kdkit train ... --use-slurm`` describes.

    Args:
        args: parsed ``kdkit train`` arguments (SLURM resources: slurm_preset, partition,
            account, qos, time, gpus, mem, dry_run; resume is refused).
        overrides: the run's validated config keys (``--config`` JSON and flags); the job
            gets every one of them as ``kdkit train`` flags.

    Returns:
        The job ID; None with ``--dry-run`` (the script is printed instead).
    """
    if getattr(args, "resume", None):
        raise ValueError("--resume cannot be combined with --use-slurm: a SLURM job resumes its run folder's "
                         "last.pt by itself (--resume auto in its script); to continue a job that stopped or was "
                         "cancelled, `kdkit slurm resubmit JOB` (`kdkit slurm status` lists the jobs)")
    run = dict(overrides)
    orch = FabricSlurmTrainingOrchestrator(runs_dir=run.pop("runs_dir", None) or "runs",
                                           preset=getattr(args, "slurm_preset", None) or "cpu")
    dry_run = bool(getattr(args, "dry_run", False))
    resources = _resources(args)
    if run.get("threads"):  # --threads N: each task asks the CPUs it uses (the cpu preset's 4 would idle)
        resources.setdefault("cpus_per_task", int(run["threads"]))
    result = orch.submit_run(run, dry_run=dry_run, **resources)
    if dry_run:
        print(result, end="")
        return None
    record = orch.registry.load()[result]
    if record.get("dependency"):
        print(f"starts once job {record['dependency'].split(':', 1)[1]} has succeeded ({record['dependency']}: the "
              "teacher's job, which writes the --teacher checkpoint)")
    print(f"run dir {record['run_dir']}; follow it: kdkit slurm wait {result} / kdkit slurm logs {result}")
    return result


def _orchestrator(args) -> FabricSlurmTrainingOrchestrator:
    return FabricSlurmTrainingOrchestrator(runs_dir=args.runs_dir)


def _cmd_status(args) -> int:
    if args.jobs:
        return _status_of(args)
    try:
        jobs = _orchestrator(args).check_all_jobs()
    except SlurmUnavailable as err:                   # last known states, then the error (exit 1)
        if args.json:
            print(json.dumps(err.jobs, indent=1))
        for info in [] if args.json else err.jobs:
            print(format_job({**info, "last_error": None}))
        raise
    if args.json:
        print(json.dumps(jobs, indent=1))
    for info in [] if args.json else jobs:
        print(format_job(info))
    if not jobs and not args.json:
        print(f"no jobs in {args.runs_dir}/slurm_jobs.json")
    sweeps = list_sweeps(Path(args.runs_dir) / "sweeps")
    if sweeps and not args.json:  # a sweep's job arrays are the sweep's, not in this registry
        print(f"sweeps ({len(sweeps)}, job arrays not listed here): kdkit sweep status "
              f"[{', '.join(p.name for p in sweeps[-3:])}{', ...' if len(sweeps) > 3 else ''}]")
    return 0


def _status_of(args) -> int:
    """``kdkit slurm status JOB ...``: the jobs named, with their run folder and log; exit 1 when one
    is not known to the registry or to Slurm (state UNKNOWN)."""
    orch = _orchestrator(args)
    infos = [orch.status(job) for job in args.jobs]
    status = 1 if any(i.get("state") == "UNKNOWN" for i in infos) else 0
    if args.json:
        print(json.dumps(infos, indent=1))
        return status
    for info in infos:
        print(format_job(info))
        if info.get("state") == "UNKNOWN":
            print(f"    not in {args.runs_dir}/slurm_jobs.json, and Slurm does not know it "
                  "(`kdkit slurm status` lists the registered jobs)")
        for key in ("run_dir", "log"):
            if info.get(key) and not (key == "log" and info.get("log_tail")):
                print(f"    {key.replace('_', ' ')}: {info[key]}")
    return status


def _cmd_wait(args) -> int:
    info = _orchestrator(args).wait(args.job, timeout=args.timeout, poll=args.poll)
    print(format_job(info))
    return 0 if info["state"] == "COMPLETED" else 1


def _cmd_cancel(args) -> int:
    _orchestrator(args).cancel(args.job)
    print(f"cancelled job {args.job}")
    return 0


def _cmd_resubmit(args) -> int:
    new = _orchestrator(args).resubmit(args.job, time=args.time, mem=args.mem)
    limits = ", ".join(f"--{k} {v}" for k, v in (("time", args.time), ("mem", args.mem)) if v)
    print(f"resubmitted job {args.job} as {new}{f' ({limits})' if limits else ''}: it resumes from its run "
          "folder's last.pt")
    return 0


def _cmd_logs(args) -> int:
    print(_orchestrator(args).logs(args.job, tail=args.tail))
    return 0


_PYTHON_WORDS = {"None": None, "True": True, "False": False}


def _parameter_value(text: str):
    """``-p`` values: JSON when they parse (3, 0.5, true, null, [1, 2]), papermill's own words
    ``None``, ``True`` and ``False`` as papermill's ``-p`` reads them (the README's ``-p threads None``),
    else the string."""
    if text in _PYTHON_WORDS:
        return _PYTHON_WORDS[text]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _cmd_submit_notebook(args) -> int:
    orch = FabricSlurmTrainingOrchestrator(runs_dir=args.runs_dir, preset=args.slurm_preset)
    params = {key: _parameter_value(value) for key, value in args.parameters or []}
    result = orch.submit_notebook(args.notebook, params, run_name=args.run_name,
                                  dry_run=args.dry_run, **_resources(args))
    if args.dry_run:
        print(result, end="")
    else:
        print(f"submitted job {result}: run dir {orch.registry.load()[result]['run_dir']}")
    return 0


def _errors_to_status(func):
    """Slurm refusals and timeouts become a message and exit status 1, not a traceback."""
    def run(args) -> int:
        try:
            return func(args)
        except (SlurmError, TimeoutError) as err:
            print(f"kdkit slurm: {err}", file=sys.stderr)
            return 1
    return run


def register(subparsers) -> None:
    """Adds the ``slurm`` sub-command (status, wait, cancel, resubmit, logs, submit-notebook)."""
    slurm = subparsers.add_parser("slurm", help=COMMANDS["slurm"][1])
    slurm.add_argument("--runs-dir", default="runs", help="run dirs and slurm_jobs.json (default runs)")
    sub = slurm.add_subparsers(dest="slurm_command", required=True)

    p = sub.add_parser("status", help="every registered job (or the ones named), refreshed from Slurm")
    p.add_argument("jobs", nargs="*", metavar="JOB", help="job IDs (default: every registered job)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_errors_to_status(_cmd_status))
    p = sub.add_parser("wait", help="wait until a job ends; exit 0 only if it COMPLETED")
    p.add_argument("job", help="job ID")
    p.add_argument("--timeout", type=seconds, default=None, help="give up after this many seconds")
    p.add_argument("--poll", type=seconds, default=10.0, help="seconds between checks (default 10)")
    p.set_defaults(func=_errors_to_status(_cmd_wait))
    p = sub.add_parser("cancel", help="cancel a job")
    p.add_argument("job", help="job ID")
    p.set_defaults(func=_errors_to_status(_cmd_cancel))
    p = sub.add_parser("resubmit", help="submit a PREEMPTED, TIMEOUT or NODE_FAIL job (or one cancelled after it "
                                        "saved last.pt) again, resuming its last.pt")
    p.add_argument("job", help="job ID")
    p.add_argument("--time", help="a new time limit for it, e.g. 08:00:00 (default: the job's)")
    p.add_argument("--mem", help="a new memory limit for it, e.g. 32G (default: the job's)")
    p.set_defaults(func=_errors_to_status(_cmd_resubmit))
    p = sub.add_parser("logs", help="the end of a job's log")
    p.add_argument("job", help="job ID")
    p.add_argument("--tail", type=whole(1), default=50, help="lines (default 50)")
    p.set_defaults(func=_errors_to_status(_cmd_logs))
    p = sub.add_parser("submit-notebook", help="run a notebook with papermill as a SLURM job")
    p.add_argument("notebook", help="path of the .ipynb")
    p.add_argument("-p", "--parameter", dest="parameters", nargs=2, action="append",
                   metavar=("KEY", "VALUE"), help="notebook parameter; VALUE is JSON if it parses, else a string")
    p.add_argument("--run-name", help="run dir name (default <notebook>_<timestamp>)")
    _add_resource_flags(p, "--preset")
    p.set_defaults(func=_errors_to_status(_cmd_submit_notebook))
