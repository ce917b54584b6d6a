"""Stopping a fit cleanly when the cluster asks: the time-limit warning or preemption.

A SLURM job started through ``python -m kdkit.cluster.requeue`` gets ``KDKIT_STOP_FILE`` in
its environment; the wrapper touches that file when SLURM signals the job (USR1 before the
time limit, TERM on preemption). :class:`StopRequest` is what the trainer asks after every
loader batch: the file exists, or this process itself received USR1/TERM (its handlers are
installed only under the wrapper, and only in the main thread). The trainer then saves
``last.pt`` at that exact step and raises :class:`Preempted`; ``kdkit train`` exits with
:data:`REQUEUE_EXIT_CODE` so the wrapper requeues the job instead of reporting a failure.

    KDKIT_STOP_FILE=/tmp/stop kdkit train --model gat --dataset synthetic --resume auto &
    touch /tmp/stop        # the run saves last.pt after its current step and exits with 85
"""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

STOP_FILE_ENV = "KDKIT_STOP_FILE"
"""Environment variable naming the file whose existence asks a fit to stop (set by the wrapper)."""

RESUME_ENV = "KDKIT_RESUME"
"""``auto`` in a requeued or resubmitted job: ``train`` resumes from its run folder's last.pt."""

REQUEUE_EXIT_CODE = 85
"""Exit status of a process that stopped on request after saving ``last.pt`` (the wrapper requeues)."""

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


def saved_marker(stop_file: str | os.PathLike) -> str:
    """The file a stopped fit writes beside the stop file once ``last.pt`` is saved."""
    return f"{os.fspath(stop_file)}.saved"


class Preempted(Exception):
    """A fit stopped on request (time limit, preemption) after writing ``last.pt``.

    Attributes:
        checkpoint: the ``last.pt`` that holds the exact state to resume from.
        epoch: the epoch it stopped in (0-based; the message counts from 1, as the progress bar does).
        batches_done: loader batches of that epoch already trained.
    """

    def __init__(self, checkpoint: str | Path, epoch: int, batches_done: int, why: str):
        super().__init__(f"stopped on request ({why}) in epoch {epoch + 1} "
                         f"after {batches_done} batch(es); "
                         f"resume from {checkpoint} (kdkit train ... --resume auto)")
        self.checkpoint, self.epoch, self.batches_done, self.why = Path(checkpoint), epoch, batches_done, why


class StopRequest:
    """Whether someone asked this process to stop: a stop file exists, or USR1/TERM arrived.

    Args:
        stop_file: the file to look for (default ``$KDKIT_STOP_FILE``; None: no file).
        signals: catch USR1 and TERM while :meth:`armed` (default: only when a stop file is set,
            i.e. under the wrapper; a plain ``kdkit train`` keeps the default signal behaviour).
    """

    def __init__(self, stop_file: str | os.PathLike | None = None, signals: bool | None = None):
        if stop_file is None:
            stop_file = os.environ.get(STOP_FILE_ENV) or None
        self.stop_file = str(stop_file) if stop_file else None
        self.signals = bool(self.stop_file) if signals is None else signals
        self.received: int | None = None  # the signal that arrived, if any
        self._previous: dict = {}

    def requested(self) -> bool:
        """True once a stop was asked for (one ``stat`` per call: cheap enough for every step)."""
        return self.received is not None or (self.stop_file is not None and os.path.exists(self.stop_file))

    def acknowledge(self, checkpoint: str | Path) -> None:
        """Tell the wrapper that ``checkpoint`` holds the state to resume from: ``<stop file>.saved``.

        A notebook's kernel cannot pass an exit status through papermill, so the wrapper looks
        for this file as well as for :data:`REQUEUE_EXIT_CODE`.
        """
        if self.stop_file is not None:
            saved = Path(saved_marker(self.stop_file))
            saved.parent.mkdir(parents=True, exist_ok=True)
            partial = saved.with_name(saved.name + ".partial")  # whole or absent: the wrapper may be reading it
            partial.write_text(f"{checkpoint}\n")
            os.replace(partial, saved)

    def reason(self) -> str:
        if self.received is not None:
            return f"signal {signal.Signals(self.received).name}"
        return f"stop file {self.stop_file}" if self.stop_file else "stop requested"

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def __enter__(self) -> "StopRequest":
        """Install the USR1/TERM handlers (main thread only; elsewhere the stop file alone works)."""
        if self.signals and threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
