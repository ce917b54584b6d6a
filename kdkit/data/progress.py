"""Progress bars that suit where the output goes.

A terminal or a notebook gets tqdm's live bar (``tqdm.auto``). A file or a pipe (a SLURM job's
log, ``kdkit ... 2> log``, a CI log) cannot redraw a line: tqdm's carriage-return redraws ran into
the messages around them as one long line. There the bar writes a plain line at most once a
:data:`LOG_INTERVAL` (nothing for work that ends sooner), and its clearing is dropped.
"""
from __future__ import annotations

import sys

from tqdm.auto import tqdm

LOG_INTERVAL = 60.0  # seconds between a bar's lines in a log


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _in_notebook() -> bool:
    """Whether ``tqdm.auto`` chose the notebook bar (a widget, not text on stderr)."""
    return any(cls.__name__ == "tqdm_notebook" for cls in tqdm.__mro__)


class LogLines:
    """A text stream's side of a bar in a log: each redraw becomes a line of its own, without the
    carriage return and the padding; a bar's clearing (blank) writes nothing."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(**kwargs) -> tqdm:
    """``tqdm(**kwargs)`` on stderr: live in a terminal or a notebook, else a line a minute at most
    (:class:`LogLines`), the first after a minute."""
    if kwargs.get("file") is None and not _in_notebook() and not _isatty(sys.stderr):
        interval = max(float(kwargs.get("mininterval") or 0.0), LOG_INTERVAL)
        kwargs.update(file=LogLines(sys.stderr), mininterval=interval, maxinterval=interval,
                      delay=max(float(kwargs.get("delay") or 0.0), interval))
    return tqdm(**kwargs)
