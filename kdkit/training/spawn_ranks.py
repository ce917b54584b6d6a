"""Local DDP workers started as fresh ``kdkit train`` processes, for callers that are not the command.

A notebook kernel (JupyterLab, papermill) or a script that calls
:func:`kdkit.workflows.run.train` with ``devices > 1`` cannot use either of the other two ways:

- Lightning's launcher starts the workers by running the process's command line again
  (``sys.argv``): in a kernel that is the kernel itself, and Fabric refuses (a ``TypeError`` about
  ``.launch()`` needing a function); in a script it runs the whole script again, not just the run.
- Forking (:mod:`kdkit.training.fork_ranks`) is only safe before the process has run an OpenMP
  parallel region, and a notebook has usually run many.

So rank zero stays the calling process (its progress bars, live plots and the returned summary
work as with one process) and :func:`spawn_ranks` starts ranks 1..N-1 as ``python -m kdkit.cli
train --config @FILE`` with the same run config, in the same working directory and environment,
plus the variables a launcher sets (``LOCAL_RANK``, ``NODE_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``): Fabric then takes every process as created outside it, as under ``torchrun``.
The workers load the data the config names (a ``data=`` object given to ``train`` stays rank
zero's), after rank zero has loaded or prepared it (one process writes the cache). Each rank runs
``cores // processes`` threads unless ``OMP_NUM_THREADS`` says otherwise.

Failures are never silent and never leave a rank waiting:
- a worker that exits before training starts is reported by rank zero at once, with the end of
  its output (rank zero would otherwise wait for it in the process group for up to 30 minutes);
- a worker's output reaches rank zero's stdout line by line, prefixed ``[rank N]``;
- a rank zero that fails or is interrupted stops its workers; a rank zero killed outright takes
  them with it (``PR_SET_PDEATHSIG`` and the closed data gate).
"""
from __future__ import annotations

import collections
import ctypes
import json
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from kdkit.config import TrainConfig
from kdkit.training.fork_ranks import LAUNCH_VARS, LAUNCHER_ENV, cluster_starts_ranks, threads_per_rank

log = logging.getLogger("kdkit.training")

GATE_FD_ENV = "KDKIT_RANK_GATE_FD"  # a worker reads one byte here once rank zero has its data
READY_FD_ENV = "KDKIT_RANK_READY_FD"  # and writes one byte here once it has its own
PARENT_ENV = "KDKIT_RANK_PARENT"  # rank zero's pid: the worker dies with it
_PR_SET_PDEATHSIG = 1
_TAIL_LINES = 40


def can_spawn_ranks(devices: int, num_nodes: int) -> tuple[bool, str]:
    """Whether :func:`spawn_ranks` applies to this run, and why not when it does not."""
    if devices <= 1 or num_nodes != 1:
        return False, "not a multi-process run on one node"
    if os.environ.get(LAUNCHER_ENV, "").strip().lower() == "lightning":
        return False, f"${LAUNCHER_ENV}=lightning"
    if any(v in os.environ for v in ("LOCAL_RANK", "RANK")):
        return False, "the ranks are started by a launcher already"
    why = cluster_starts_ranks()
    if why:
        return False, why
    return True, ""


class SpawnedRanks:
    """Rank zero's side of a run whose workers :func:`spawn_ranks` started (see the module docstring)."""

    launcher = "spawn"
    rank = 0

    def __init__(self, cfg: TrainConfig, resume: str | os.PathLike | None, port: int):
        self.world, self.port = cfg.devices, port
        self.procs: dict[int, subprocess.Popen] = {}
        self.tails: dict[int, collections.deque] = {}
        self._threads: list[threading.Thread] = []
        self._saved = {k: os.environ.get(k) for k in (*LAUNCH_VARS, "OMP_NUM_THREADS")}
        self._torch_threads: int | None = None
        config = {**cfg.to_dict(), "optimize_batch_size": False}  # rank zero's batch size is the run's
        fd, name = tempfile.mkstemp(prefix="kdkit-ranks-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(config, fh)
        self.config_path = Path(name)
        self.resume = resume
        self._gate_w = self._ready_r = -1
        self._reported = False  # a worker's end was reported already

    # ------------------------------------------------------------------ start
    def start(self) -> "SpawnedRanks":
        import torch

        threads = threads_per_rank(self.world)
        self._torch_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        launch = {"LOCAL_RANK": "0", "NODE_RANK": "0", "WORLD_SIZE": str(self.world), "MASTER_ADDR": "127.0.0.1",
                  "MASTER_PORT": str(self.port)}
        gate_r, self._gate_w = os.pipe()
        self._ready_r, ready_w = os.pipe()
        command = worker_command(self.config_path, self.resume)
        try:
            for rank in range(1, self.world):
                env = {**os.environ, **launch, "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": str(threads),
                       GATE_FD_ENV: str(gate_r), READY_FD_ENV: str(ready_w), PARENT_ENV: str(os.getpid()),
                       "PYTHONUNBUFFERED": "1"}
                proc = subprocess.Popen(command, env=env, pass_fds=(gate_r, ready_w), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
                self.procs[rank] = proc
                self.tails[rank] = collections.deque(maxlen=_TAIL_LINES)
                t = threading.Thread(target=self._forward, args=(rank, proc), daemon=True, name=f"kdkit-rank{rank}-out")
                t.start()
                self._threads.append(t)
        except BaseException:
            os.close(gate_r), os.close(ready_w)
            self.abort()
            raise
        os.close(gate_r), os.close(ready_w)
        os.environ.update(launch, OMP_NUM_THREADS=str(threads))  # Fabric then leaves rank zero's threads alone
        log.info("started %d DDP worker(s) as new processes: %s (%d thread(s) per rank)", len(self.procs),
                 {r: p.pid for r, p in self.procs.items()}, threads)
        return self

    def _forward(self, rank: int, proc: subprocess.Popen) -> None:
        """Copy a worker's output to this process's stdout, line by line, and keep its end for errors."""
        assert proc.stdout is not None
        for line in proc.stdout:
            self.tails[rank].append(line.rstrip("\n"))
            try:
                sys.stdout.write(f"[rank {rank}] {line if line.endswith(chr(10)) else line + chr(10)}")
                sys.stdout.flush()
            except (OSError, ValueError):  # rank zero's stdout closed: keep draining the pipe
                pass

    # ------------------------------------------------------------------ the data gate
    def before_data(self) -> None:
        """Rank zero reads or prepares the data first (nothing to wait for)."""

    def after_data(self) -> None:
        """Rank zero has its data: let the workers load theirs, and wait until they have it.

        Raises:
            RuntimeError: a worker ended before it was ready (its output's end is in the message).
        """
        if self._gate_w < 0:
            return
        try:
            os.write(self._gate_w, b"1" * len(self.procs))
        except BrokenPipeError:  # every worker has ended already: reported below
            pass
        os.close(self._gate_w)
        self._gate_w = -1
        ready = 0
        while ready < len(self.procs):
            readable, _, _ = select.select([self._ready_r], [], [], 0.2)
            if readable:
                got = os.read(self._ready_r, len(self.procs) - ready)
                ready += len(got)
                if got:
                    continue
            for rank, proc in self.procs.items():
                code = proc.poll()
                if code is not None:
                    self._reported = True
                    raise RuntimeError(f"DDP rank {rank} (pid {proc.pid}) {_exit_text(code)} before training "
                                       f"started; its last output:\n{self._tail(rank)}")
        os.close(self._ready_r)
        self._ready_r = -1

    def _tail(self, rank: int) -> str:
        for t in self._threads:  # the forwarding thread ends with the worker's output
            t.join(timeout=2.0)
        return "\n".join(self.tails[rank]) or "(no output)"

    def worker_failure(self, wait: float = 2.0) -> str:
        """Which worker ended abnormally (and its output's end), waiting up to ``wait`` s for it; "" if none.

        Rank zero asks when its run failed: a worker that died makes rank zero's next collective
        fail with a transport error that does not say which process or why.
        """
        if self._reported:
            return ""
        deadline = time.monotonic() + wait
        while True:
            for rank, proc in self.procs.items():
                code = proc.poll()
                if code:
                    return (f"DDP rank {rank} (pid {proc.pid}) {_exit_text(code)} during the run; its last "
                            f"output:\n{self._tail(rank)}")
            if time.monotonic() >= deadline or all(p.poll() is not None for p in self.procs.values()):
                return ""
            time.sleep(0.05)

    # ------------------------------------------------------------------ the end
    def join(self, timeout: float = 300.0) -> None:
        """Rank zero, after its run: wait for the workers; raise if one of them failed."""
        deadline = time.monotonic() + timeout
        failed = {}
        try:
            for rank, proc in self.procs.items():
                try:
                    code = proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self._kill()
                    raise RuntimeError(f"DDP worker rank {rank} (pid {proc.pid}) did not finish {timeout:.0f} s after "
                                       "rank 0; stopped it") from None
                if code:
                    failed[rank] = code
            if failed:
                rank = min(failed)
                raise RuntimeError(f"DDP worker(s) failed after rank 0 finished: exit status by rank {failed}; rank "
                                   f"{rank}'s last output:\n{self._tail(rank)}")
        finally:
            self._cleanup()

    def abort(self) -> None:
        """Rank zero failed or was interrupted: stop the workers now and reap them."""
        self._kill()
        self._cleanup()

    def _kill(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 5.0
        for proc in self.procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _cleanup(self) -> None:
        for fd in (self._gate_w, self._ready_r):
            if fd >= 0:
                os.close(fd)
        self._gate_w = self._ready_r = -1
        self.config_path.unlink(missing_ok=True)
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if self._torch_threads is not None:
            import torch

            torch.set_num_threads(self._torch_threads)
            self._torch_threads = None

    restore_env = _cleanup


def worker_command(config_path: Path, resume: str | os.PathLike | None = None) -> list[str]:
    """The command line of a worker: ``kdkit train`` with the run's config (and checkpoint to resume)."""
    command = [sys.executable, "-m", "kdkit.cli", "train", "--config", f"@{config_path}"]
    return command + ["--resume", str(resume)] if resume else command


def _exit_text(code: int) -> str:
    return f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"


def spawn_ranks(cfg: TrainConfig, resume: str | os.PathLike | None = None) -> SpawnedRanks:
    """Start ``cfg.devices - 1`` workers now (call :func:`can_spawn_ranks` first); returns rank zero's side."""
    from lightning_fabric.plugins.environments.lightning import find_free_network_port

    return SpawnedRanks(cfg, resume, find_free_network_port()).start()


class SpawnedWorker:
    """A worker's side of :class:`SpawnedRanks` (built from the variables rank zero set)."""

    launcher = "spawn"

    def __init__(self, gate_fd: int, ready_fd: int, parent: int):
        self.rank = int(os.environ.get("LOCAL_RANK", "1"))
        self.gate_fd, self.ready_fd = gate_fd, ready_fd
        try:  # die with rank zero, even when it is killed outright
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
        if parent and os.getppid() != parent:
            raise SystemExit(f"DDP rank {self.rank}: rank 0 (pid {parent}) ended before this worker started")

    def before_data(self) -> None:
        """Wait until rank zero has its data (then the store is in the cache)."""
        got = os.read(self.gate_fd, 1)
        os.close(self.gate_fd)
        if got != b"1":
            raise SystemExit(f"DDP rank {self.rank}: rank 0 stopped before its data was ready")

    def after_data(self) -> None:
        os.write(self.ready_fd, b"1")
        os.close(self.ready_fd)

    def join(self, timeout: float = 0.0) -> None:
        pass

    def abort(self) -> None:
        pass


def spawned_worker() -> SpawnedWorker | None:
    """This process's :class:`SpawnedWorker` when rank zero started it with :func:`spawn_ranks`, else None."""
    gate, ready = os.environ.pop(GATE_FD_ENV, None), os.environ.pop(READY_FD_ENV, None)
    if gate is None or ready is None:
        return None
    return SpawnedWorker(int(gate), int(ready), int(os.environ.pop(PARENT_ENV, "0") or 0))
