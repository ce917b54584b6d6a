"""Logger files as CAN recordings: candump ``.log``, Vector ``.asc``/``.blf``, PEAK ``.trc``
(optionally gzip-compressed), read with python-can into a :class:`~kdkit.data.readers.Messages`.

    from kdkit.data.loggers import read_logger_file
    msgs = read_logger_file("capture.log.gz", channel="can0")

Importing this module makes :func:`kdkit.data.readers.read_messages` read these formats.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from kdkit.data.readers import (
    MAX_STANDARD_ID,
    DataFormatError,
    Messages,
    OnBadRows,
    _BadRows,
    _time_order,
    _time_problem,
    can_id_key,
    set_logger_reader,
)

_CAN_READERS = {".log": "CanutilsLogReader", ".asc": "ASCReader", ".blf": "BLFReader", ".trc": "TRCReader"}


class _LineCounter:
    """A text file handle that counts the lines python-can has read from it, so a frame (or a
    parse error) can be placed at its line."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self.line = 0

    def __iter__(self) -> "_LineCounter":
        return self

    def __next__(self) -> str:
        text = next(self.handle)
        self.line += 1
        return text

    def readline(self, *args) -> str:
        text = self.handle.readline(*args)
        self.line += bool(text)
        return text

    def __getattr__(self, name: str):
        return getattr(self.handle, name)


def read_logger_file(path: str | Path, channel: str | None = None, on_bad_rows: OnBadRows = "error") -> Messages:
    """Read a python-can logger file (candump ``.log``, ``.asc``, ``.blf``, ``.trc``; ``.gz`` ok).

    Args:
        path: the log file.
        channel: keep only this bus channel (e.g. ``can0``); None keeps every frame.
        on_bad_rows: ``"error"`` (default) raises :class:`DataFormatError` at the first bad
            frame (a negative timestamp, time going backwards, an ID above 0x7FF not flagged
            extended); ``"skip"`` drops such frames and counts them. A line python-can cannot
            parse is always an error (python-can stops reading there).

    The messages are unlabelled (label 0). Remote and error frames are dropped. Errors name
    the line for the text formats and the frame number for ``.blf``.
    """
    import can  # python-can; imported lazily, it is slow to import

    path = Path(path)
    bad = _BadRows(path, on_bad_rows)
    name = path.name.lower().removesuffix(".gz")
    suffix = Path(name).suffix
    if suffix not in _CAN_READERS:
        raise DataFormatError(path, None, f"unknown logger format {suffix!r}; expected one of {sorted(_CAN_READERS)}")
    binary = suffix == ".blf"
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    frames: list = []
    lines: list[int] = []  # where each frame is: its line (text formats) or its number in the file (.blf)
    with opener(path, "rb") if binary else opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        source = handle if binary else _LineCounter(handle)
        try:
            for number, m in enumerate(getattr(can, _CAN_READERS[suffix])(source), 1):
                if not m.is_remote_frame and not m.is_error_frame and (channel is None or str(m.channel) == channel):
                    frames.append(m)
                    lines.append(number if binary else source.line)
        except (ValueError, IndexError) as err:
            line = None if binary else source.line
            what = "it" if binary else "this line"
            raise DataFormatError(path, line, f"python-can could not parse {what}: {err}") from err
    if not frames:
        raise DataFormatError(path, None, "no data frames" + (f" on channel {channel!r}" if channel else ""))
    n = len(frames)
    ts = np.fromiter((m.timestamp for m in frames), np.float64, n)
    raw_ids = np.fromiter((m.arbitration_id for m in frames), np.uint32, n)
    extended = np.fromiter((m.is_extended_id for m in frames), bool, n)
    ids = can_id_key(raw_ids, extended)
    dlc = np.fromiter((min(len(m.data), 8) for m in frames), np.uint8, n)
    joined = b"".join(bytes(m.data[:8]).ljust(8, b"\0") for m in frames)
    payload = np.frombuffer(joined, np.uint8).reshape(n, 8).copy()

    ok_ts = np.isfinite(ts)
    ok_id = extended | (raw_ids <= MAX_STANDARD_ID)
    negative, backwards = _time_order(ts, ok_ts & ok_id)
    ok = ok_ts & ok_id & ~negative & ~backwards

    def where(i: int) -> str:
        return f"frame {lines[i]}" if binary else f"line {lines[i]}"

    def describe(i: int) -> str:
        frame = f"frame {lines[i]}: " if binary else ""
        if not ok_ts[i]:
            return f"{frame}timestamp {float(ts[i])!r} is not a finite number"
        if not ok_id[i]:
            return (f"{frame}CAN ID 0x{raw_ids[i]:X} is above 0x7FF, the largest 11-bit ID, but the frame is not "
                    f"flagged extended (29-bit)")
        return frame + _time_problem(ts, ok_ts & ok_id, negative, i, lambda j: repr(float(ts[j])), where)

    label = np.zeros(n, np.uint8)
    bad.check(ok, lambda i: None if binary else lines[i], describe, label=label)
    keep = ok if not ok.all() else slice(None)
    return bad.messages(ts[keep], ids[keep], dlc[keep], payload[keep], label[keep], source=str(path),
                        attack_type="attack-free")


set_logger_reader(read_logger_file)
