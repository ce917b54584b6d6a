"""Local DDP workers forked from the running command, after its imports.

Lightning's local launcher starts ranks 1..N-1 by running the command again in new interpreters;
each re-imports torch, PyG and Lightning (~5 s on the 2-core VM) before the process group forms.
For ``kdkit train --devices N`` on one machine, :func:`fork_ranks` forks the workers from the
command's own process instead (milliseconds), and sets the variables a launcher sets
(``LOCAL_RANK``, ``NODE_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``): Fabric then takes
the processes as created outside it (``LightningEnvironment.creates_processes_externally``) and
forms the process group as it does under ``torchrun``.

When it applies (:func:`can_fork_ranks`): one node, more than one process, no cluster environment
that starts the ranks itself (SLURM, torchelastic, LSF, MPI) and none started yet, CPU only (CUDA
must not be initialised before a fork, so GPUs keep Lightning's launcher), on Linux.

The caller must fork before the process has run any parallel (OpenMP) region: a libgomp thread
pool used before a fork hangs the child's first parallel region when it has more than one thread
(measured here with torch's bundled libgomp). ``kdkit train`` forks before it reads any data.

Failures are never silent and never leave a rank waiting: a worker that fails prints its
traceback and rank zero stops the run at once, naming the worker (it would otherwise wait for it
in the process group for up to 30 minutes); a rank zero that fails stops its workers; a rank zero
killed outright takes them with it (``PR_SET_PDEATHSIG``).
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import traceback
from typing import Callable, NoReturn

from kdkit.training.trainer import _srun_warning_outside_slurm

log = logging.getLogger("kdkit.training")

# the variables a launcher sets for Fabric / torch.distributed (restored in the command's process afterwards)
LAUNCH_VARS = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# "lightning" makes kdkit train use Lightning's own launcher (benchmarks, troubleshooting)
LAUNCHER_ENV = "KDKIT_DDP_LAUNCHER"
_PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def cpu_threads(threads: int | None):
    """While inside, torch and every process started from here use ``threads`` CPU threads
    (``torch.set_num_threads`` and ``$OMP_NUM_THREADS``, which :func:`threads_per_rank` and the
    spawned or forked DDP workers read); both are restored on exit. ``None`` changes nothing."""
    if not threads:
        yield
        return
    import torch

    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env


def threads_per_rank(world: int) -> int:
    """CPU threads for each of ``world`` processes on this machine: ``$OMP_NUM_THREADS`` when set,
    else the cores this process may use divided among the processes (what Lightning's launchers give)."""
    try:
        given = int(os.environ.get("OMP_NUM_THREADS", "") or 0)
    except ValueError:
        given = 0
    if given > 0:
        return given
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, world))


def cluster_starts_ranks() -> str:
    """Why the ranks are a cluster's to start (SLURM, torchelastic, LSF, MPI), or "" when they are not."""
    from lightning_fabric.plugins.environments import (
        LSFEnvironment,
        MPIEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    with _srun_warning_outside_slurm():  # Lightning warns while it looks for SLURM
        for env in (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment):
            if env.detect():
                return f"{env.__name__} starts the ranks"
    return ""


def can_fork_ranks(devices: int, num_nodes: int, accelerator: str) -> tuple[bool, str]:
    """Whether this process may fork its DDP workers, and why not when it may not."""
    if devices <= 1 or num_nodes != 1:
        return False, "not a multi-process run on one node"
    if os.environ.get(LAUNCHER_ENV, "").strip().lower() == "lightning":
        return False, f"${LAUNCHER_ENV}=lightning"
    if not sys.platform.startswith("linux"):
        return False, "fork launch is Linux only"
    if any(v in os.environ for v in ("LOCAL_RANK", "RANK")):
        return False, "the ranks are started by a launcher already"
    why = cluster_starts_ranks()
    if why:
        return False, why
    if accelerator != "cpu":
        return False, f"accelerator {accelerator}: CUDA cannot be used after a fork"
    import torch

    if torch.cuda.is_initialized():
        return False, "CUDA is initialised in this process"
    return True, ""


class ForkedRanks:
    """The DDP workers of one run, forked from the command's process; see the module docstring.

    In rank zero (the command's process) ``rank`` is 0 and it keeps the workers' pids; in a
    worker ``rank`` is its local rank and :meth:`run_worker` never returns.
    """

    launcher = "fork"

    def __init__(self, world: int, port: int):
        self.world, self.port = world, port
        self.rank = 0
        self.pids: dict[int, int] = {}  # rank -> pid (rank zero only)
        self._saved = {k: os.environ.get(k) for k in LAUNCH_VARS}
        self._gate_r, self._gate_w = os.pipe()  # rank zero writes one byte per worker when its data is loaded
        self._exits: dict[int, int] = {}
        self._done = threading.Event()
        self._finishing = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ start
    def start(self) -> "ForkedRanks":
        os.environ.update(LOCAL_RANK="0", NODE_RANK="0", WORLD_SIZE=str(self.world), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(self.port))
        parent = os.getpid()
        for rank in range(1, self.world):
            sys.stdout.flush(), sys.stderr.flush()  # nothing buffered is written twice
            pid = os.fork()
            if pid == 0:
                self._become_worker(rank, parent)
                return self
            self.pids[rank] = pid
        os.close(self._gate_r)
        if not self.pids:
            self._done.set()
        for rank, pid in self.pids.items():
            threading.Thread(target=self._watch, args=(rank, pid), daemon=True, name=f"kdkit-rank{rank}").start()
        log.info("forked %d DDP worker(s): %s", len(self.pids), self.pids)
        return self

    def _become_worker(self, rank: int, parent: int) -> None:
        self.rank, self.pids = rank, {}
        os.environ["LOCAL_RANK"] = str(rank)
        os.close(self._gate_w)
        try:  # die with rank zero, even when it is killed outright
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
        if os.getppid() != parent:  # rank zero died before prctl took effect
            os._exit(1)

    # ------------------------------------------------------------------ data gate
    def before_data(self) -> None:
        """A worker waits here until rank zero has its data (one reads or prepares the store, not N at once)."""
        if self.rank == 0:
            return
        if os.read(self._gate_r, 1) != b"1":  # end of file: rank zero failed before its data was ready
            os._exit(1)
        os.close(self._gate_r)

    def after_data(self) -> None:
        """Rank zero: the data is ready; the workers go on."""
        if self.rank != 0 or self._gate_w < 0:
            return
        os.write(self._gate_w, b"1" * len(self.pids))
        os.close(self._gate_w)
        self._gate_w = -1

    # ------------------------------------------------------------------ worker side
    def run_worker(self, fn: Callable[[], object]) -> NoReturn:
        """A worker runs ``fn`` and exits: 0 on success, 1 with its traceback on stderr otherwise."""
        code = 0
        try:
            fn()
        except BaseException:  # noqa: BLE001 - reported, then this process ends
            code = 1
            sys.stderr.write(f"kdkit train: DDP rank {self.rank} (pid {os.getpid()}) failed:\n{traceback.format_exc()}")
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001 - a closed stream must not change the exit code
                    pass
            os._exit(code)

    # ------------------------------------------------------------------ rank zero side
    def _watch(self, rank: int, pid: int) -> None:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            status = 0
        code = os.waitstatus_to_exitcode(status)
        with self._lock:
            self._exits[rank] = code
            if len(self._exits) == len(self.pids):
                self._done.set()
            if code == 0 or self._finishing:
                return
            self._finishing = True
        why = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        sys.stderr.write(f"\nkdkit train: DDP rank {rank} (pid {pid}) {why} during the run; stopping rank 0 and the "
                         "other workers (the worker's error is above)\n")
        sys.stderr.flush()
        self._kill_workers()
        logging.shutdown()
        os._exit(1)  # rank zero may be waiting for that worker inside torch.distributed: no clean way out

    def _kill_workers(self) -> None:
        for rank, pid in self.pids.items():
            if rank not in self._exits:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def join(self, timeout: float = 300.0) -> None:
        """Rank zero, after its run: wait for the workers; raise if one of them failed."""
        with self._lock:
            self._finishing = True
        self._close_gate()
        if not self._done.wait(timeout):
            self._kill_workers()
            self._done.wait(5.0)
            self.restore_env()
            raise RuntimeError(f"DDP worker(s) {sorted(set(self.pids) - set(self._exits))} did not finish "
                               f"{timeout:.0f} s after rank 0; stopped them")
        self.restore_env()
        failed = {r: c for r, c in self._exits.items() if c != 0}
        if failed:
            raise RuntimeError(f"DDP worker(s) failed after rank 0 finished: exit status by rank {failed}")

    def abort(self) -> None:
        """Rank zero failed: stop the workers now (they may be waiting for it) and reap them."""
        with self._lock:
            self._finishing = True
        self._close_gate()
        self._kill_workers()
        self._done.wait(10.0)
        self.restore_env()

    def _close_gate(self) -> None:
        if self._gate_w >= 0:
            os.close(self._gate_w)
            self._gate_w = -1

    def restore_env(self) -> None:
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def fork_ranks(devices: int) -> ForkedRanks:
    """Fork ``devices - 1`` workers now (call :func:`can_fork_ranks` first). Returns in every process."""
    from lightning_fabric.plugins.environments.lightning import find_free_network_port

    return ForkedRanks(devices, find_free_network_port()).start()
