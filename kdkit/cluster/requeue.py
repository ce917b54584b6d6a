"""Run a job's command so that it survives SLURM's time limit and preemption.

    python -m kdkit.cluster.requeue [--max-requeues N] -- COMMAND ...

Job scripts ``exec`` this as their last line (``#SBATCH --signal=B:USR1@<grace>`` and
``#SBATCH --requeue`` above it). SKELETON: runs COMMAND and passes its exit status on;
the signal forwarding, stop file and ``scontrol requeue`` are being written (issue 16).
"""
from __future__ import annotations

import argparse
import subprocess
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdkit.cluster.requeue", description=__doc__.splitlines()[0])
    parser.add_argument("--max-requeues", type=int, default=3, help="requeue the job at most this many times")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (python -m kdkit.cluster.requeue -- COMMAND ...)")
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
