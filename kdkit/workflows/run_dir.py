"""Run folders: one run per folder, locked for its whole life, never overwritten silently.

``train`` takes :class:`RunLock` on ``<run>/.lock`` (a second process with the same run name
fails at once, naming the first one's pid) and refuses, with :func:`check_run_dir`, a folder
that already holds a run unless ``overwrite`` (:func:`clear_run_outputs` removes that run's
outputs and nothing else) or resuming from one of its checkpoints.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from kdkit.config import TrainConfig
from kdkit.data.store import scratch_tag

# What ``train`` writes into a run folder; ``overwrite`` removes these and nothing else (a SLURM
# job's script and logs in the same folder stay).
RUN_OUTPUTS = ("config.json", "summary.json", "metrics.json", "test_scores.npz", "test_labels.npz",
               "fabric_training.log", "report.html",
               "evaluation_*.json", "checkpoints", "logs", "tb")


class RunDirError(ValueError):
    """A run folder that is in use by another process, or holds a run this one would replace."""


def launch_rank(cfg: TrainConfig) -> int:
    """This process's global rank as its launcher set it, known before Fabric starts.

    0 for a single-process run. Under DDP the workers that Fabric's launcher, torchrun or
    ``srun`` start carry ``LOCAL_RANK`` / ``RANK`` / ``NODE_RANK`` / ``SLURM_PROCID``; a
    process where any of them is non-zero is not rank zero and shares rank zero's run folder.
    """
    if cfg.devices * cfg.num_nodes <= 1:
        return 0
    for var in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"):
        try:
            rank = int(os.environ.get(var, "0") or 0)
        except ValueError:
            continue
        if rank:
            return rank
    return 0


class RunLock:
    """An exclusive, non-blocking ``fcntl.flock`` on ``<run_dir>/.lock`` (the holder's pid is written in it).

    The kernel releases it when the process ends, even on ``kill -9``: a stale ``.lock`` file
    never blocks a later run. Usable as a context manager.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / ".lock"
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock or raise :class:`RunDirError` naming the holder's pid."""
        for attempt in range(3):  # the folder may vanish between mkdir and open (a failed run removing it)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            for _ in range(20):  # the holder writes its pid right after taking the lock
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                if holder:
                    break
                time.sleep(0.05)
            os.close(fd)
            raise RunDirError(f"run dir {self.run_dir} is in use by another kdkit process (pid {holder or 'unknown'}); "
                              "wait for it to finish, or choose another --run-name") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def existing_run(run_dir: Path) -> list[str]:
    """What in ``run_dir`` shows a run was (or is being) trained there: config.json, summary.json, checkpoints."""
    found = [name for name in ("config.json", "summary.json") if (run_dir / name).is_file()]
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")) if (run_dir / "checkpoints").is_dir() else []
    return found + [f"checkpoints/{name}" for name in ckpts]


def inside(path: str | Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


def check_run_dir(run_dir: Path, cfg: TrainConfig, resume: str | Path | None) -> None:
    """Refuse to train into a folder that holds a run, unless ``overwrite`` or resuming from that folder.

    Raises:
        RunDirError: naming the folder, what it holds and the three ways on.
    """
    held = existing_run(run_dir)
    if held and cfg.teacher and inside(cfg.teacher, run_dir):  # --overwrite would delete the checkpoint it distils
        raise RunDirError(f"run dir {run_dir} holds the --teacher checkpoint {cfg.teacher} this student distils "
                          f"from; training the student there would remove it{' (--overwrite)' if cfg.overwrite else ''}"
                          ": give the student its own --run-name (without one it is "
                          f"{dataclasses.replace(cfg, run_name=None).resolved_run_name})")
    if not held or cfg.overwrite or (resume and inside(resume, run_dir)):
        return
    last = run_dir / "checkpoints" / "last.pt"
    resume_hint = f", --resume {last} to continue it" if last.is_file() else \
        ", --resume auto to start it afresh if it stopped before its first checkpoint" \
        if "summary.json" not in held else ""
    error = RunDirError(f"run dir {run_dir} already holds a run ({', '.join(held)}); training again would replace "
                        f"it. Pass --overwrite to replace it{resume_hint}, or choose another --run-name")
    error.run_dir, error.held = run_dir, held  # for callers that say it their own way (the panel)
    raise error


def resolve_resume(resume: str | os.PathLike | None, run_dir: Path, env: str | None = None) -> Path | None:
    """The checkpoint to resume from: ``resume`` as given; ``"auto"``: ``run_dir/checkpoints/last.pt``
    when it exists, else None (a fresh start). ``env`` (``$KDKIT_RESUME``) stands in for a missing
    ``resume``: a requeued SLURM job sets it to ``auto``.

    Raises:
        ValueError: ``env`` is set to anything but ``auto``.
    """
    if resume is None and env:
        if env != "auto":
            raise ValueError(f"KDKIT_RESUME={env!r}: the only value is 'auto' (resume from the run folder's last.pt "
                             "when there is one); unset it to start fresh")
        resume = "auto"
    if resume is None or os.fspath(resume) != "auto":
        return Path(resume) if resume is not None else None
    last = run_dir / "checkpoints" / "last.pt"
    return last if last.is_file() else None


def clear_run_outputs(run_dir: Path) -> list[str]:
    """Remove what a previous ``train`` wrote into ``run_dir`` (:data:`RUN_OUTPUTS`); returns the names removed."""
    removed = []
    for pattern in RUN_OUTPUTS:
        for path in sorted(run_dir.glob(pattern)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path.name)
    return removed


def savez_atomic(path: Path, arrays: dict) -> None:
    """``np.savez`` to a temp file renamed over the target: a kill while writing leaves no half-written file."""
    tmp = path.with_name(f".{path.stem}.{scratch_tag()}.tmp.npz")
    try:
        np.savez(tmp, **arrays)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (a temp file renamed over the target)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(obj, indent=2, default=float))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
