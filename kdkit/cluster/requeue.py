"""Run a job's command so that it survives SLURM's time limit and preemption.

    python -m kdkit.cluster.requeue [--max-requeues N] -- COMMAND ...

Job scripts ``exec`` this as their last line, below ``#SBATCH --signal=B:USR1@<grace>`` and
``#SBATCH --requeue``. It runs COMMAND with ``KDKIT_STOP_FILE=<a fresh file>`` in its
environment (and ``KDKIT_RESUME=auto`` when SLURM_RESTART_COUNT says the job was requeued), and
on USR1 (the time-limit warning) or TERM (preemption; a cancel by ``scancel`` is told apart by
slurmstepd's line in the job's output, :func:`cancelled_by_user`, and not requeued) it touches that file, and sends the signal
on to a direct python COMMAND that catches it (:func:`forwards_to`). The trainer finishes its step,
writes ``last.pt`` and exits with status 85 (a notebook's kernel writes ``<stop file>.saved``
instead, as papermill exits 1). Then:

- the job is requeued (``scontrol requeue $SLURM_JOB_ID``) while SLURM_RESTART_COUNT < N, and
  this exits 0; the requeued job runs the same script and resumes from ``last.pt``;
- with N requeues spent, outside a SLURM job, or when ``scontrol`` fails, it says so and exits 85
  (``kdkit slurm resubmit JOB`` starts it again from ``last.pt``).

Any other exit of COMMAND is passed on as is (a signal as 128 + its number).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The contract with kdkit.training.preemption, repeated here (tests/test_preemption.py checks that they
# agree): importing it would load torch into the batch shell for the whole life of the job.
STOP_FILE_ENV, RESUME_ENV, REQUEUE_EXIT_CODE = "KDKIT_STOP_FILE", "KDKIT_RESUME", 85
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


def saved_marker(stop_file: str | os.PathLike) -> str:
    """The file a stopped fit writes beside the stop file once ``last.pt`` is saved."""
    return f"{os.fspath(stop_file)}.saved"

SCONTROL_TIMEOUT = 60  # seconds for `scontrol requeue`
MARKER_WAIT = 20.0      # seconds a stopped child's kernel may take to report its checkpoint after the child ended


def cancelled_by_user(job: str) -> str | None:
    """The line in which slurmstepd said that ``job`` was cancelled by ``scancel`` (a person, or
    ``kdkit slurm cancel``), else None.

    The TERM of a cancel, of a preemption and of a time limit look the same to the job, and
    ``scontrol`` shows all three as ``JobState=COMPLETING`` until the job ends. slurmstepd writes
    which it was into the job's output before it signals: ``*** JOB 211 ON node CANCELLED AT
    <time> ***`` for a cancel, the same with ``DUE TO TIME LIMIT`` / ``DUE TO PREEMPTION`` for the
    others. A cancelled job must not requeue itself: it would run on to its end.
    """
    try:
        text = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True,
                              timeout=SCONTROL_TIMEOUT, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    paths = dict.fromkeys(m.group(1) for m in re.finditer(r"\bStd(?:Err|Out)=(\S+)", text))
    pattern = re.compile(rf"\*\*\* JOB {re.escape(job)} ON \S+ CANCELLED AT \S+ \*\*\*")
    for path in paths:
        try:
            with open(path, "rb") as handle:
                handle.seek(max(0, os.fstat(handle.fileno()).st_size - (1 << 16)))
                tail = handle.read().decode(errors="replace")
        except OSError:
            continue
        found = pattern.search(tail)
        if found:
            return found.group(0)
    return None


def _read_marker(marker: Path) -> str | None:
    """The checkpoint path a stopped fit wrote into its saved-marker; None while there is none (or it is
    still empty: a kernel of another process may be between creating and writing it)."""
    try:
        return marker.read_text().strip() or None
    except OSError:
        return None


def _say(message: str) -> None:
    print(f"kdkit.cluster.requeue: {message}", file=sys.stderr, flush=True)


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (the ``SigCgt`` mask of /proc/PID/status).

    A process without one would die of the signal (USR1's default action is to terminate), so
    only a process that catches it gets it forwarded; the stop file reaches the others.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def forwards_to(command: list[str], pid: int, signum: int) -> bool:
    """Whether the signal goes on to the child too (the stop file always does).

    Only to a direct command that catches it (:func:`catches`): USR1 would kill a papermill, and
    ``srun`` would pass it on to tasks that may still be importing torch, with no handler yet
    (each task sees the stop file instead; under DDP the ranks agree on it).
    """
    return Path(command[0]).name != "srun" and catches(pid, signum)


class Wrapper:
    """COMMAND as a child process, its stop file, and what the signals did."""

    def __init__(self, command: list[str], max_requeues: int):
        self.command, self.max_requeues = command, max_requeues
        self.stop_dir = Path(tempfile.mkdtemp(prefix="kdkit-stop-"))
        self.stop_file = self.stop_dir / "stop"
        self.child: subprocess.Popen | None = None
        self.received: list[int] = []

    def on_signal(self, signum, frame) -> None:
        self.received.append(signum)
        self.stop_file.touch()
        child = self.child
        if child is not None and child.poll() is None and forwards_to(self.command, child.pid, signum):
            os.kill(child.pid, signum)

    def run(self) -> int:
        restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        env = dict(os.environ, **{STOP_FILE_ENV: str(self.stop_file)})
        if restarts > 0:
            env.setdefault(RESUME_ENV, "auto")
        for sig in STOP_SIGNALS:  # before the child starts: a signal in between still touches the file
            signal.signal(sig, self.on_signal)
        try:
            try:
                self.child = subprocess.Popen(self.command, env=env)
            except OSError as err:
                _say(f"cannot start {self.command[0]!r}: {err}")
                return 127
            rc = self.child.wait()
            marker = Path(saved_marker(self.stop_file))
            checkpoint = _read_marker(marker)
            if self.received and (rc < 0 or rc > 128) and checkpoint is None:
                # killed by the signal: papermill dies of the TERM at once; its kernel, signalled too, is still
                # saving (or is writing the marker: an empty one is not read as "no path")
                deadline = time.monotonic() + MARKER_WAIT
                while checkpoint is None and time.monotonic() < deadline:
                    time.sleep(0.1)
                    checkpoint = _read_marker(marker)
            return self.after(rc, checkpoint, restarts)
        finally:
            shutil.rmtree(self.stop_dir, ignore_errors=True)

    def after(self, rc: int, checkpoint: str | None, restarts: int) -> int:
        """The exit status once the child ended: requeue when it saved a checkpoint and requeues remain."""
        rc = 128 - rc if rc < 0 else rc
        if rc != REQUEUE_EXIT_CODE and checkpoint is None:
            if self.received and rc != 0:
                names = ", ".join(signal.Signals(s).name for s in self.received)
                _say(f"{names} received, and {self.command[0]} exited with status {rc} without saving a checkpoint "
                     "to resume from: not requeued")
            return rc
        where = checkpoint or "its last.pt"
        job = os.environ.get("SLURM_JOB_ID")
        if not job:
            _say(f"{self.command[0]} stopped on request and saved {where}, but this is not a SLURM job "
                 "(no SLURM_JOB_ID): nothing to requeue; run the command again with --resume auto")
            return REQUEUE_EXIT_CODE
        cancelled = cancelled_by_user(job) if signal.SIGTERM in self.received else None
        if cancelled:
            _say(f"job {job} was cancelled ({cancelled.strip('* ')}): not requeued; it saved {where}, from which "
                 f"`kdkit slurm resubmit {job}` or `kdkit train ... --resume {where if checkpoint else 'auto'}` "
                 "continues it")
            return rc if rc != REQUEUE_EXIT_CODE else 128 + signal.SIGTERM
        if restarts >= self.max_requeues:
            _say(f"job {job} stopped and saved {where}, but it was requeued {restarts} time(s) already "
                 f"(--max-requeues {self.max_requeues}): not requeued; `kdkit slurm resubmit {job}` continues it")
            return REQUEUE_EXIT_CODE
        try:
            proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True,
                                  timeout=SCONTROL_TIMEOUT, check=False)
            failure = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}") \
                if proc.returncode else None
        except (OSError, subprocess.TimeoutExpired) as err:
            failure = str(err)
        if failure is not None:
            _say(f"job {job} saved {where}, but `scontrol requeue {job}` failed ({failure}): "
                 f"`kdkit slurm resubmit {job}` continues it")
            return REQUEUE_EXIT_CODE
        _say(f"job {job} saved {where} and was requeued (restart {restarts + 1} of at most {self.max_requeues}); "
             "it resumes from there")
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdkit.cluster.requeue", description=__doc__.splitlines()[0])
    parser.add_argument("--max-requeues", type=int, default=3, help="requeue the job at most this many times "
                                                                     "(SLURM_RESTART_COUNT counts them; default 3)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (python -m kdkit.cluster.requeue -- COMMAND ...)")
    if args.max_requeues < 0:
        parser.error(f"--max-requeues {args.max_requeues}: expected 0 or more")
    return Wrapper(command, args.max_requeues).run()


if __name__ == "__main__":
    sys.exit(main())
