"""Logger files as CAN recordings: candump ``.log``, Vector ``.asc``/``.blf``, PEAK ``.trc``
(optionally gzip-compressed), read into a :class:`~kdkit.data.readers.Messages`.

    from kdkit.data.loggers import iter_logger_file, read_logger_file
    msgs = read_logger_file("capture.log.gz", channel="can0")
    for chunk in iter_logger_file("capture.log.gz", channel="can0"):   # bounded memory, any size
        ...

Importing this module makes :func:`kdkit.data.readers.read_messages` read these formats.

- candump ``-L`` text (``(46408.584930) can0 260#08FFFB0000001884``) of 1 MiB or more is read
  by one compiled pass (:mod:`kdkit.data.candump_scan`, numba: 12 million lines per second on
  one core, 18 million with ``channel=``), smaller text by a vectorized pyarrow/numpy path
  (about 3 million; python-can's reader about 0.15 million, with the same result); both give
  the same frames and faults (tested on mangled lines). Only unusual lines (remote, error and
  CAN FD frames, odd spacing, bad lines) go through a per-line parser. With ``channel=`` the
  lines of other channels (the second of 3 or 4 space-separated fields) are left out before
  their timestamps and frames are parsed (the RAV4 log's can0: 40 % of the lines), so a fault
  in another channel's frame is neither counted nor raised. ``.asc``, ``.blf`` and ``.trc``
  are read with python-can.
- :func:`iter_logger_file` reads a logger file in chunks of messages (a candump log ~4 MiB of the
  file at a time through the compiled pass, the other formats python-can's frames 65,536 at a
  time): the same frames, skips and errors as reading it whole, in memory that does not grow
  with the file (``kdkit data prepare`` and long ``kdkit detect`` replays use it).
- Nothing is lost without a word. A line or frame kdkit cannot use raises
  :class:`~kdkit.data.readers.DataFormatError` naming the file and line (the frame number or
  byte offset for ``.blf``), or with ``on_bad_rows="skip"`` is dropped and counted in
  ``Messages.skipped_rows``: unparsable lines (also the ones python-can skips without a word in
  ``.asc``/``.trc``), frames with more than 8 data bytes (CAN FD: kdkit models classic CAN),
  a standard ID above ``0x7FF``, time going backwards, a truncated ``.blf`` or ``.log.gz`` (the
  part before the cut is kept; the loss is counted). Corrupt compressed data is always an error.
- Header, comment and event lines of the formats (``date``, ``base hex``, ``// ...``,
  ``Begin Triggerblock``, statistics and status events in ``.asc``; ``;`` lines and non-frame
  records in ``.trc``) are not frames and not errors.
- ``.asc`` details: python-can reads each trigger block's times from 0; a block whose times start
  again below the block before's is placed by the dates of the ``Begin Triggerblock`` lines
  (several measurements logged into one file), times that go on are kept. A header saying
  ``timestamps relative`` (each time the gap to the event before) is refused, naming the line: its
  times are not the frames' times. A data line with fewer bytes than its DLC (a cut line) is a
  bad line, not a shorter frame.
- candump IDs follow can-utils: 1-3 hex digits are standard, 8 are extended, an 8-digit ID with
  ``CAN_ERR_FLAG`` (``0x20000000``) is an error frame; 4-7 digits are a bad line (python-can would
  call them extended, and keeps error frames other than bus errors as data frames). CAN FD frames
  of at most 8 data bytes are kept like classic frames.
- Remote and error frames carry no payload for the models: they are dropped, and counted in the
  field ``Messages.dropped_frames`` (``{"remote": n, "error": n}``, frames of the selected channel;
  ``kdkit data info`` prints them).
- Extended IDs keep :data:`~kdkit.data.readers.EXTENDED_ID_FLAG`: ``00000081`` (candump),
  ``81x`` (``.asc``) and an extended ``.blf``/``.trc`` frame differ from the standard ``081``.
- Labels: a logger file has none (label 0, ``attack_type="attack-free"``) unless a sidecar
  ``<file>.labels.csv`` lies beside it (:func:`read_label_intervals`).
"""
from __future__ import annotations

import contextlib
import csv
import gzip
import logging
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from kdkit.data.candump_scan import scan_candump
from kdkit.data.readers import (
    _LOST,
    _Order,
    CHUNK_ROWS,
    LOGGER_SUFFIXES,
    MAX_CAN_ID,
    MAX_STANDARD_ID,
    DataFormatError,
    Messages,
    OnBadRows,
    _BadRows,
    _Chunker,
    _inflate,  # ISA-L's inflate where installed (python-isal), else zlib
    _parse_float,
    _string_parts,
    _TextBlocks,
    _TimeOrder,
    can_id_key,
    id_problem,
    parse_hex_ids,
    set_logger_chunks,
    set_logger_reader,
    slices,
    text_form,
)

_GZ_PIECE = 1 << 22  # compressed bytes inflated at a time (the byte ranges named by corrupt-data errors)
_CAN_READERS = {".log": "CanutilsLogReader", ".asc": "ASCReader", ".blf": "BLFReader", ".trc": "TRCReader"}
CAN_ERR_FLAG = 0x20000000  # candump: an error frame's ID carries this bit (linux/can/error.h)
# said both where such a frame stops a read and where it is one of the rows skipped: no advice that the mode followed
_FD_HINT = ("kdkit models classic CAN (at most 8 bytes); read a classic CAN channel with channel=...; such frames are "
            "bad rows: an error by default in training and kdkit evaluate, skipped and counted under --on-bad-rows skip "
            "(on_bad_rows='skip' in Python; kdkit detect's default)")


# --------------------------------------------------------------------------------------
# sidecar labels


@dataclass
class LabelIntervals:
    """Attack intervals from a ``<recording>.labels.csv`` sidecar, one entry per data row.

    Attributes:
        path: the sidecar file.
        start, end: float64 seconds; a message is labelled when ``start <= timestamp <= end``.
        attack_type: the attack type of each interval.
        can_id: uint32 ``Messages.can_id`` values (extended flag included) or None for
            intervals without a ``can_id`` (every ID).
        line: the sidecar line of each interval.
    """

    path: Path
    start: np.ndarray
    end: np.ndarray
    attack_type: list[str]
    can_id: list[int | None]
    line: list[int]

    def __len__(self) -> int:
        return len(self.line)


def label_sidecar(path: str | Path) -> Path | None:
    """The sidecar label file of a recording, if one exists: ``<name>.labels.csv`` beside it
    (for ``drive.log.gz`` also ``drive.log.labels.csv``)."""
    path = Path(path)
    found = [path.with_name(path.name + ".labels.csv")]
    if path.name.lower().endswith(".gz"):
        found.append(path.with_name(path.name[:-3] + ".labels.csv"))
    found = [p for p in found if p.is_file()]
    if len(found) > 1:
        raise DataFormatError(path, None, f"two label sidecars: {found[0].name} and {found[1].name}; keep one")
    return found[0] if found else None


def carries_labels(path: str | Path) -> bool:
    """Whether a recording says which of its messages are attacks: a logger file by its
    ``.labels.csv`` sidecar only, a file of the HCRL/OTIDS text form never, every other format
    (a label or flag column) always. Read without labels, every message is label 0: ``kdkit evaluate
    --input`` and ``kdkit detect`` keep such a file out of the metrics; in a dataset's attack or test
    folder its windows count as normal, and ``kdkit data info`` says so."""
    path = Path(path)
    if Path(path.name.lower().removesuffix(".gz")).suffix in LOGGER_SUFFIXES:
        return label_sidecar(path) is not None
    return not (path.is_file() and text_form(path))


def read_label_intervals(path: str | Path) -> LabelIntervals:
    """Read a sidecar label file: header ``start,end,attack_type`` with an optional 4th column
    ``can_id`` (hex; 8 digits = extended ID, empty = every ID); one attack interval per row.

    Raises :class:`DataFormatError` (sidecar file and line) on a wrong header, a time that is not
    a finite number, ``end < start``, an empty or ``normal`` attack type, or a bad CAN ID.
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
        rows = list(csv.reader(handle))
    header = [h.strip() for h in rows[0]] if rows else []
    if header not in (["start", "end", "attack_type"], ["start", "end", "attack_type", "can_id"]):
        raise DataFormatError(path, 1, f"header {','.join(header)[:80]!r}; expected 'start,end,attack_type' "
                                       f"or 'start,end,attack_type,can_id'")
    start, end, types, ids, lines = [], [], [], [], []
    for line, row in enumerate(rows[1:], 2):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if len(cells) != len(header):
            raise DataFormatError(path, line, f"expected {len(header)} fields ({','.join(header)}), got {len(cells)}")
        try:
            s, e = float(cells[0]), float(cells[1])
        except ValueError:
            raise DataFormatError(path, line, f"start {cells[0]!r} or end {cells[1]!r} is not a number") from None
        if not (np.isfinite(s) and np.isfinite(e)):
            raise DataFormatError(path, line, f"start {cells[0]!r} and end {cells[1]!r} must be finite")
        if e < s:
            raise DataFormatError(path, line, f"end {cells[1]} is before start {cells[0]}")
        if not cells[2] or cells[2].lower() in ("normal", "attack-free", "attack_free"):
            raise DataFormatError(path, line, f"attack_type {cells[2]!r}: name the attack (e.g. DoS, fuzzing, spoofing)")
        cid = None
        if len(cells) == 4 and cells[3]:
            text = cells[3].removeprefix("0x").removeprefix("0X")
            value, ok = parse_hex_ids(pa.array([text], pa.string()))
            if not ok[0]:
                raise DataFormatError(path, line, f"can_id {cells[3]!r}: {id_problem(text)}")
            cid = int(value[0])
        start.append(s)
        end.append(e)
        types.append(cells[2])
        ids.append(cid)
        lines.append(line)
    return LabelIntervals(path, np.array(start, np.float64), np.array(end, np.float64), types, ids, lines)


def _interval_labels(ts: np.ndarray, can_id: np.ndarray, intervals: LabelIntervals
                     ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(label uint8, row_type uint8, type_names) of messages under ``intervals``; a message in
    two intervals of different attack types is an error naming both sidecar lines."""
    names = ("normal", *dict.fromkeys(intervals.attack_type))
    if len(names) > 255:
        raise DataFormatError(intervals.path, None, f"{len(names) - 1} attack types; at most 254")
    row_type = np.zeros(ts.shape, np.uint8)
    owner = np.full(ts.shape, -1, np.int64)
    for k in range(len(intervals)):
        hit = (ts >= intervals.start[k]) & (ts <= intervals.end[k])
        if intervals.can_id[k] is not None:
            hit &= can_id == np.uint32(intervals.can_id[k])
        t = names.index(intervals.attack_type[k])
        clash = hit & (row_type != 0) & (row_type != t)
        if clash.any():
            i = int(np.flatnonzero(clash)[0])
            other = intervals.line[int(owner[i])]
            raise DataFormatError(intervals.path, intervals.line[k],
                                  f"overlaps the interval on line {other} with another attack type "
                                  f"({names[t]!r} vs {names[row_type[i]]!r}) at timestamp {float(ts[i])!r}")
        row_type[hit] = t
        owner[hit] = k
    return (row_type > 0).astype(np.uint8), row_type, names


def _check_span(intervals: LabelIntervals, ts: np.ndarray, recording: str) -> None:
    """Every interval must overlap the recording's time span (else the time base is wrong)."""
    if not len(intervals):
        return
    lo, hi = (float(ts.min()), float(ts.max())) if ts.size else (np.inf, -np.inf)
    outside = np.flatnonzero((intervals.end < lo) | (intervals.start > hi))
    if outside.size:
        k = int(outside[0])
        raise DataFormatError(intervals.path, intervals.line[k],
                              f"interval {float(intervals.start[k])!r}..{float(intervals.end[k])!r} lies outside the recording "
                              f"{recording} ({lo!r}..{hi!r}); are the times in the recording's time base?")


def _check_timelines(intervals: LabelIntervals, msgs: Messages) -> None:
    """A recording whose clock restarted (``Messages.restart``) holds several timelines whose times
    may overlap: a sidecar interval must match rows of exactly one of them (one matching both
    labelled 51 rows of each, silently; one between them labelled none)."""
    if msgs.restart is None or not msgs.restart.any() or not len(intervals):
        return
    timeline = np.cumsum(msgs.restart)
    starts = np.flatnonzero(msgs.restart).tolist()
    where = ", ".join(f"message {i} ({float(msgs.timestamp[i - 1])!r} -> {float(msgs.timestamp[i])!r})" for i in starts[:3])
    for k in range(len(intervals)):
        hit = (msgs.timestamp >= intervals.start[k]) & (msgs.timestamp <= intervals.end[k])
        if intervals.can_id[k] is not None:
            hit &= msgs.can_id == np.uint32(intervals.can_id[k])
        touched = np.unique(timeline[hit])
        if touched.size == 1:
            continue
        span = f"interval {float(intervals.start[k])!r}..{float(intervals.end[k])!r}"
        what = (f"matches rows of {touched.size} of the recording's timelines" if touched.size else
                "matches no row of any of the recording's timelines")
        raise DataFormatError(intervals.path, intervals.line[k],
                              f"{span} {what}: the clock of {msgs.source} restarted ({where}), and a sidecar's times "
                              f"cannot say which timeline they mean; split the recording at the restart, one sidecar "
                              f"a file")


def apply_label_intervals(msgs: Messages, intervals: LabelIntervals) -> Messages:
    """``msgs`` labelled by sidecar ``intervals``: label 1 and the interval's attack type
    (``row_type``/``type_names``) inside each interval; ``attack_type`` is the one type, or
    ``"mixed"`` for several, or ``"attack-free"`` for a sidecar without intervals.

    Raises :class:`DataFormatError` (sidecar file and line) for an interval outside the
    recording's time span or overlapping intervals of different types.
    """
    _check_span(intervals, msgs.timestamp, msgs.source)
    label, row_type, names = _interval_labels(msgs.timestamp, msgs.can_id, intervals)
    return Messages(msgs.timestamp, msgs.can_id, msgs.dlc, msgs.payload, label, msgs.source,
                    _recording_type(names), msgs.skipped_rows, list(msgs.skipped_examples), msgs.skipped_attack_rows,
                    msgs.skipped_unlabelled_rows, row_type, names)


def _recording_type(names: tuple[str, ...]) -> str:
    return {1: "attack-free", 2: names[-1]}.get(len(names), "mixed")


# --------------------------------------------------------------------------------------
# shared end of every logger reader


@dataclass
class _Frames:
    """Every data frame read, in file order, before the checks (channel filter applied)."""

    ts: np.ndarray          # float64
    arb_id: np.ndarray      # uint32, without flags
    extended: np.ndarray    # bool
    dlc: np.ndarray         # uint8
    payload: np.ndarray     # uint8 [n, 8]
    where: np.ndarray       # int64: line (text formats) or frame number (.blf)
    problem: dict[int, str]  # row -> why the frame cannot be used (more than 8 bytes, ...)


def _frame_checks(frames: _Frames, binary: bool, order: _TimeOrder, final: bool = False,
                  ) -> tuple[np.ndarray, np.ndarray, Callable[[int], str], _Order]:
    """The checks of every frame (finite time, ID range, the reader's problems, time order; a
    block of a file read in chunks goes on from the blocks before through ``order``, a whole file
    has one of its own, ``final``): ``(ok, ok_fields, describe, order verdicts)``."""
    ts, raw_ids, extended = frames.ts, frames.arb_id, frames.extended
    ok_ts = np.isfinite(ts)
    ok_id = extended | (raw_ids <= MAX_STANDARD_ID)
    ok_fields = ok_ts & ok_id
    if frames.problem:
        ok_fields[list(frames.problem)] = False
    unit = "frame" if binary else "line"
    verdict = order.check(ts, ok_fields, lambda j: repr(float(ts[j])), lambda j: f"{unit} {int(frames.where[j])}",
                          final=final)
    ok = ok_fields & ~verdict.bad if verdict.any_bad else ok_fields

    def describe(i: int) -> str:
        prefix = f"frame {frames.where[i]}: " if binary else ""
        if i in frames.problem:
            return prefix + frames.problem[i]
        if not ok_ts[i]:
            return f"{prefix}timestamp {float(ts[i])!r} is not a finite number"
        if not ok_id[i]:
            return (f"{prefix}CAN ID 0x{raw_ids[i]:X} is above 0x7FF, the largest 11-bit ID, but the frame is "
                    f"not flagged extended (29-bit)")
        return prefix + verdict.describe(i)

    return ok, ok_fields, describe, verdict


def _finish(path: Path, bad: _BadRows, frames: _Frames, binary: bool, earlier: list[tuple[int | None, str]],
            lost: tuple[int, str] | None, dropped: dict[str, int], intervals: LabelIntervals | None) -> Messages:
    """Checks (finite time, ID range, time order), skip or raise, sidecar labels -> Messages."""
    ts, raw_ids, extended = frames.ts, frames.arb_id, frames.extended
    n = ts.shape[0]
    ids = can_id_key(raw_ids, extended)
    ok, ok_fields, describe, _ = _frame_checks(frames, binary, _TimeOrder(bad), final=True)  # a whole file

    if intervals is not None:
        label, row_type, names = _interval_labels(ts, ids, intervals)
    else:
        label, row_type, names = np.zeros(n, np.uint8), None, ("normal",)
    if lost is not None and bad.mode == "error":
        raise DataFormatError(path, None, lost[1] + "; read the part before the cut with --on-bad-rows skip "
                                                    "(on_bad_rows='skip' in Python)")
    bad.check(ok, lambda i: None if binary else int(frames.where[i]), describe, earlier, label=label, label_ok=ok_fields)
    if lost is not None:  # skip mode: the loss is counted and named first
        bad.count += lost[0]
        bad.unlabelled += lost[0]
        bad.lead(f"{path}: {lost[1]}")
    if not ok.all():
        ts, ids, label = ts[ok], ids[ok], label[ok]
        dlc, payload = frames.dlc[ok], frames.payload[ok]
        row_type = None if row_type is None else row_type[ok]
    else:
        dlc, payload = frames.dlc, frames.payload
    if ts.shape[0] == 0:
        raise DataFormatError(path, None, "no usable data frames (all were skipped)")
    msgs = bad.messages(ts, ids, dlc, payload, label, source=str(path), attack_type="attack-free")
    if intervals is not None:
        _check_span(intervals, ts, str(path))
        _check_timelines(intervals, msgs)
        msgs.row_type, msgs.type_names, msgs.attack_type = row_type, names, _recording_type(names)
        msgs.__post_init__()
    msgs.dropped_frames = dict(dropped)
    return msgs


def _no_channel(path: Path, channel: str, counts: dict[str, int]) -> DataFormatError:
    listed = ", ".join(f"{name!r} ({k} data frames)" for name, k in sorted(counts.items())) or "none"
    return DataFormatError(path, None, f"no data frames on channel {channel!r}; the file's channels: {listed}")


ALL_CHANNELS = "*"  # channel= value that reads the frames of every channel as one stream, on purpose
_PROBE_BYTES = 1 << 20  # a candump log's first MiB, or
_PROBE_FRAMES = 10_000  # an .asc/.blf/.trc file's first frames, tell its channels when none is chosen
CHOOSE_CHANNEL = (f"Choose one with --channel NAME (a dataset spec: channel = \"NAME\"; Python: channel=), or "
                  f"--channel '{ALL_CHANNELS}' to read them as one stream")  # a dataset's: datasets.prepare


class MixedChannelsError(DataFormatError):
    """A logger file holding frames of several bus channels, read without choosing one.

    ``found``: the channels found; ``remedy``: how to choose one, for the caller at hand (the
    default names every way; :func:`kdkit.data.datasets.prepare` names a dataset's, with
    :meth:`choosing`).
    """

    def __init__(self, path: str | Path, found: str, remedy: str = CHOOSE_CHANNEL):
        self.found, self.remedy = found, remedy
        super().__init__(path, None, f"{found}; windows of one stream would mix buses. {remedy}")

    def __reduce__(self):  # raised in a preparation worker process, re-raised in the parent
        return (type(self), (self.path, self.found, self.remedy))

    def choosing(self, remedy: str) -> MixedChannelsError:
        """The same error, ending with another way to choose."""
        return MixedChannelsError(self.path, self.found, remedy)


def _candump_block_channels(text: bytes) -> dict[str, int]:
    """Data frames per channel of a block of candump text (whole lines)."""
    first = text[:4096].lstrip().split(b"\n", 1)[0].strip().split(b" ")
    table, odd = _candump_table(text, 4 if len(first) == 4 else 3)
    part = _vector_part(table, _rows_and_handed(table.num_rows, odd))
    counts: dict[str, int] = {}
    for name, k in zip(part.names, np.bincount(part.channel[part.fast], minlength=len(part.names)).tolist()):
        counts[name] = counts.get(name, 0) + k
    _, extra = _parse_lines(sorted(odd + part.slow), None, False, set(), {"remote": 0, "error": 0})
    for name in extra["chan"]:
        counts[name] = counts.get(name, 0) + 1
    return {name: k for name, k in counts.items() if k}


def _first_channels(path: Path, suffix: str) -> dict[str, int]:
    """Data frames per channel at the start of a logger file: a candump log's first MiB, an
    ``.asc``/``.blf``/``.trc`` file's first 10,000 frames (a capture's buses interleave from its
    start). Faults are left for the reader to report: {} when the start cannot be read."""
    try:
        if suffix == ".log":
            head, size = [], 0
            for text in _TextBlocks(path, _GZ_PIECE):
                head.append(text)
                size += len(text)
                if size >= _PROBE_BYTES:
                    break
            text = _ascii(b"".join(head))[0][:_PROBE_BYTES]
            if size > _PROBE_BYTES:
                text = text[:text.rfind(b"\n") + 1]
            return _candump_block_channels(text) if text.strip() else {}
        source = _PythonCanFrames(path, suffix, None, "skip", _PROBE_FRAMES)
        batches = iter(source)
        next(batches, None)
        batches.close()
        return dict(source.counts)
    except (DataFormatError, pa.ArrowInvalid, OSError, EOFError, ValueError, zlib.error):
        return {}


def _chosen_channel(path: Path, suffix: str, channel: str | None) -> str | None:
    """The channel to read (None: every frame). Without one, a file whose start holds frames of
    several channels is an error listing them: windows of one stream would mix buses, which is no
    bus's traffic. A file whose start holds one channel is read as that channel, so frames of
    other channels further on (a capture whose other buses start late) are left out, not mixed
    in. ``"*"`` reads them all as one stream on purpose."""
    if channel == ALL_CHANNELS:
        return None
    if channel is None:
        counts = _first_channels(path, suffix)
        if len(counts) > 1:
            listed = ", ".join(f"{name} ({k:,})" for name, k in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
            where = "first MiB" if suffix == ".log" else f"first {_PROBE_FRAMES:,} frames"
            raise MixedChannelsError(path, f"frames of {len(counts)} bus channels (data frames in its {where}: "
                                           f"{listed})")
        if len(counts) == 1:
            return next(iter(counts))
    return channel


def read_channel(path: str | Path, channel: str | None = None) -> str | None:
    """The channel the readers read of a logger file given ``channel`` (None: the one its start
    holds; ``"*"``: every channel, None back); raises :class:`MixedChannelsError` as they do."""
    path = Path(path)
    return _chosen_channel(path, Path(path.name.lower().removesuffix(".gz")).suffix, channel)


def _channel_name(text: str) -> str:
    """A channel as python-can names it: all-digit names are numbers (``"01"`` -> ``"1"``)."""
    return str(int(text)) if text.isascii() and text.isdigit() else text


def read_logger_file(path: str | Path, channel: str | None = None, on_bad_rows: OnBadRows = "error") -> Messages:
    """Read a logger file (candump ``.log``, ``.asc``, ``.blf``, ``.trc``; ``.gz`` ok).

    Args:
        path: the log file.
        channel: keep only this bus channel (e.g. ``can0``; an ``.asc``/``.blf`` file's channels as
            the file numbers them, from 1, not python-can's from 0). None reads a file of one channel; a file holding frames of several
            is then an error listing them (a window mixing buses is no bus's traffic; for a
            candump log its first MiB is looked at). ``"*"`` (:data:`ALL_CHANNELS`) reads every
            channel as one stream. An unknown channel is an error listing the file's channels.
        on_bad_rows: ``"error"`` (default) raises :class:`DataFormatError` at the first bad
            line or frame; ``"skip"`` drops such frames and counts them (module docstring).

    Labels come from a ``<file>.labels.csv`` sidecar if there is one (else label 0,
    ``attack_type="attack-free"``). The count of dropped remote and error frames is in
    ``Messages.dropped_frames``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    bad = _BadRows(path, on_bad_rows)
    name = path.name.lower().removesuffix(".gz")
    suffix = Path(name).suffix
    if suffix not in _CAN_READERS:
        raise DataFormatError(path, None, f"unknown logger format {suffix!r}; expected one of {sorted(_CAN_READERS)}")
    sidecar = label_sidecar(path)
    intervals = read_label_intervals(sidecar) if sidecar is not None else None
    channel = _chosen_channel(path, suffix, channel)
    others: dict[str, int] = {}  # (a candump log's other buses: datasets counts them in a compiled pass)
    if suffix == ".log":
        frames, earlier, lost, dropped = _read_candump(path, channel)
    else:
        frames, earlier, lost, dropped, others = _read_python_can(path, suffix, channel, bad.mode)
    msgs = _finish(path, bad, frames, suffix == ".blf", earlier, lost, dropped, intervals)
    msgs.left_out_channels = others
    return msgs


# --------------------------------------------------------------------------------------
# candump -L: vectorized


def _decompress(path: Path) -> tuple[bytes, str | None]:
    """The file's bytes (gunzipped when gzip, several members too) and, for a truncated gzip
    file, what was lost (its last, cut line is removed). Corrupt compressed data raises
    :class:`DataFormatError` naming the compressed byte range and the text line."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw, None
    parts: list[bytes] = []
    pos, chunk = 0, _GZ_PIECE
    view = memoryview(raw)

    def line_now() -> int:
        return sum(p.count(b"\n") for p in parts) + 1

    while True:
        d = _inflate.decompressobj(wbits=31)
        while pos < len(raw) and not d.eof:
            stop = min(pos + chunk, len(raw))
            try:
                parts.append(d.decompress(view[pos:stop]))
            except (zlib.error, _inflate.error) as err:
                raise DataFormatError(path, None, f"corrupt gzip data in compressed bytes {pos}..{stop} "
                                                  f"(text line {line_now()}): {err}") from err
            pos = stop - len(d.unused_data) if d.eof else stop
        if not d.eof:
            text = b"".join(parts)
            cut = text.rfind(b"\n") + 1
            line = text.count(b"\n", 0, cut) + 1
            partial = f"line {line} is cut short and " if cut < len(text) else ""
            return text[:cut], (f"truncated gzip file: the compressed data ends inside the stream at byte {len(raw)}; "
                                f"{partial}whatever followed line {line - 1} is lost{_LOST}")
        rest = raw[pos:]
        if not rest.strip(b"\0"):
            return b"".join(parts), None
        if rest[:2] != b"\x1f\x8b":
            raise DataFormatError(path, None, f"corrupt gzip data: {len(rest)} bytes of garbage after the gzip "
                                              f"stream at byte {pos}")


_TS_RE = re.compile(r"\(([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\)\Z")
_HEX_RE = re.compile(r"[0-9A-Fa-f]*\Z")
_SCAN_MIN_BYTES = 1 << 20  # candump text from this size on is read by the compiled scanner (numba loads in ~0.4 s)


def _candump_line(text: str) -> tuple:
    """One candump ``-L`` line, the way can-utils writes it:
    ``('blank',)``, ``('bad', why)``, ``('remote'|'error', ts, channel)`` or
    ``('frame', ts, channel, arbitration_id, extended, data bytes, is_fd)``."""
    tokens = text.split()
    if not tokens:
        return ("blank",)
    if len(tokens) == 4 and tokens[3] in ("R", "T", "r", "t"):  # direction, as python-can reads it
        tokens = tokens[:3]
    if len(tokens) != 3:
        return ("bad", f"expected '(timestamp) channel ID#data', got {len(tokens)} fields: {text.strip()[:80]!r}")
    ts_text, chan, frame = tokens
    m = _TS_RE.match(ts_text)
    if not m:
        return ("bad", f"timestamp {ts_text[:40]!r} is not '(seconds)'")
    ts = float(m.group(1))
    if "#" not in frame:
        return ("bad", f"frame {frame[:40]!r} has no '#' between the CAN ID and the data")
    id_text, data = frame.split("#", 1)
    if not id_text or not _HEX_RE.match(id_text):
        return ("bad", f"CAN ID {id_text[:20]!r} is not hex")
    if len(id_text) not in (1, 2, 3, 8):
        return ("bad", (f"CAN ID {id_text!r} has {len(id_text)} hex digits; candump writes 3 (standard, 11-bit) "
                       f"or 8 (extended, 29-bit)"))
    value = int(id_text, 16)
    if len(id_text) == 8 and value & CAN_ERR_FLAG:
        return ("error", ts, chan)
    if value > MAX_CAN_ID:
        return ("bad", f"CAN ID 0x{value:X} is above 0x1FFFFFFF, the largest 29-bit ID")
    fd = data.startswith("#")
    if fd:
        if len(data) < 2 or data[1] not in "0123456789ABCDEFabcdef":
            return ("bad", f"CAN FD frame {frame[:40]!r}: a flags digit must follow '##'")
        data = data[2:]
    if data[:1] in ("R", "r"):
        if not (data[1:].isascii() and data[1:].isdigit()) and data[1:]:
            return ("bad", f"remote frame {frame[:40]!r}: 'R' may only be followed by a DLC digit")
        return ("remote", ts, chan)
    if not fd and len(data) == 18 and data[16] == "_" and data[17] in "9ABCDEFabcdef":
        data = data[:16]  # can-utils' len8_dlc: 8 data bytes sent with a raw DLC of 9..15 (candump -8): 8 bytes
    if len(data) % 2 or not _HEX_RE.match(data):
        return ("bad", f"data {data[:40]!r} is not pairs of hex digits")
    return ("frame", ts, chan, value, len(id_text) == 8, bytes.fromhex(data), fd)


def _candump_table(text: bytes, columns: int) -> tuple[pa.Table, list[tuple[int, str]]]:
    """The lines as ``columns`` binary columns split at single spaces; lines with another number
    of fields come back as (line, text)."""
    odd: list[tuple[int, str]] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        odd.append((row.number, row.text))
        return "skip"

    names = ["t", "c", "f", "d"][:columns]
    table = pacsv.read_csv(
        pa.py_buffer(text),
        read_options=pacsv.ReadOptions(column_names=names, use_threads=False, block_size=1 << 24),
        parse_options=pacsv.ParseOptions(delimiter=" ", quote_char=False, ignore_empty_lines=False,
                                         invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(column_types={k: pa.binary() for k in names}, strings_can_be_null=False,
                                             null_values=[], check_utf8=False),
    )
    return table, odd


def _rows_and_handed(n: int, odd: list[tuple[int, str]]) -> np.ndarray:
    """1-based line of each of the ``n`` table rows: the lines handed to on_invalid are no rows."""
    if not odd:
        return np.arange(1, n + 1)
    is_row = np.ones(n + len(odd), bool)
    is_row[np.array([line for line, _ in odd], np.int64) - 1] = False
    return np.flatnonzero(is_row) + 1


@dataclass
class _Part:
    """Lines parsed by the vectorized path: the plain frames (``fast``) and the other lines."""

    lines: np.ndarray
    ts: np.ndarray
    value: np.ndarray
    id_len: np.ndarray
    payload: np.ndarray
    dlc: np.ndarray
    fast: np.ndarray
    channel: np.ndarray    # per row: index into the channel names of the part
    names: list[str]
    slow: list[tuple[int, str]]


def _clean_channel(field: bytes) -> bool:
    """A channel field that names a channel: not empty, no spaces, tabs or control characters
    (else the line's fields are not where they seem, and the per-line parser reads it)."""
    return bool(field) and min(field) > 32


def _vector_part(table: pa.Table, lines: np.ndarray, direction: bool = False, channel: str | None = None) -> _Part:
    """Rows of ``(timestamp) channel ID#data`` [``R``|``T``] split into columns -> a :class:`_Part`.

    ``channel``: when some rows are of that channel, the rows of other channels are left out
    before their timestamps and frames are parsed (most of the reading time). A row whose
    channel field is empty or holds a tab or control character (odd spacing: the fields are not
    where they seem) is kept for the per-line parser."""
    c_codes = pc.dictionary_encode(table.column("c").combine_chunks())
    raw = c_codes.dictionary.to_pylist()
    names = [_channel_name(b.decode("ascii", "replace")) for b in raw]
    codes = c_codes.indices.to_numpy(zero_copy_only=False)
    if channel in names:
        other = [k for k, (b, name) in enumerate(zip(raw, names)) if name != channel and _clean_channel(b)]
        keep = ~np.isin(codes, other)
        if not keep.all():
            table, lines, codes = table.filter(pa.array(keep)), lines[keep], codes[keep]
    cols = [table.column(k).combine_chunks() for k in table.column_names]
    t_col, c_col, f_col = cols[:3]
    t_off, t_data = _string_parts(t_col)
    t_len = np.diff(t_off)
    last = max(t_data.size - 1, 0)
    t_data = t_data if t_data.size else np.zeros(1, np.uint8)
    paren = ((t_len >= 3) & (t_data[np.minimum(t_off[:-1], last)] == ord("("))
             & (t_data[np.clip(t_off[1:] - 1, 0, last)] == ord(")")))
    ts, ok_ts = _parse_float(pc.binary_slice(t_col, 1, -1))
    value, id_len, payload, dlc, ok_frame = _parse_frames(f_col)
    fast = paren & ok_ts & ok_frame & np.array([_clean_channel(b) for b in raw], bool)[codes]
    if direction:
        d_off, d_data = _string_parts(table.column("d").combine_chunks())
        first = np.append(d_data, np.uint8(0))[d_off[:-1]] | np.uint8(0x20)
        fast &= (np.diff(d_off) == 1) & ((first == ord("r")) | (first == ord("t")))
    slow_rows = np.flatnonzero(~fast)
    if slow_rows.size:
        c_len, f_len = np.diff(_string_parts(c_col)[0]), np.diff(_string_parts(f_col)[0])
        slow_rows = slow_rows[(t_len[slow_rows] != 0) | (c_len[slow_rows] != 0) | (f_len[slow_rows] != 0)]  # not blank
    slow = [(int(lines[i]), b" ".join(c[i].as_py() for c in cols).decode("ascii")) for i in slow_rows.tolist()]
    return _Part(lines, ts, value, id_len, payload, dlc, fast, codes, names, slow)


def _ascii(text: bytes) -> tuple[bytes, set[int]]:
    """``text`` with non-ASCII bytes made ``?`` and the lines that held them (counted as
    python's text mode counts lines: ``\\n``, ``\\r\\n`` and ``\\r`` end one)."""
    if text.isascii():
        return text, set()
    chars = np.frombuffer(text, np.uint8)
    ends = (chars == 10) | ((chars == 13) & (np.append(chars[1:], 0) != 10))
    high = np.flatnonzero(chars >= 0x80)
    lines = set((np.searchsorted(np.flatnonzero(ends), high) + 1).tolist())
    fixed = chars.copy()
    fixed[high] = ord("?")
    return fixed.tobytes(), lines


def _nibbles(chars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ASCII characters (uint8, any shape) -> (hex digit values, True where not a hex digit)."""
    value = (chars & np.uint8(0x0F)) + (chars >> np.uint8(6)) * np.uint8(9)  # '0'-'9', 'A'-'F', 'a'-'f'
    digit = (chars - np.uint8(48)) <= 9
    letter = ((chars | np.uint8(0x20)) - np.uint8(97)) <= 5
    return value, ~(digit | letter)


def _any_row(flags: np.ndarray) -> np.ndarray:
    """Rows of a contiguous bool [n, 8k] array holding a True."""
    words = np.ascontiguousarray(flags).view(np.uint64)
    out = words[:, 0] != 0
    for j in range(1, words.shape[1]):
        out |= words[:, j] != 0
    return out


_BLOCK_ROWS = 1 << 13  # frames decoded per block: the temporaries stay in the CPU cache


def _parse_frames(f_col: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """candump ``ID#data`` cells -> (ID value uint32 without flags, ID digits, payload uint8 [n, 8],
    dlc, ok). ok only for the plain case: 3 or 8 hex digits, ``#``, 0-16 hex digits of even length
    (remote, error and CAN FD frames and anything odd are left to :func:`_candump_line`)."""
    offsets, data = _string_parts(f_col)
    n = offsets.shape[0] - 1
    base = int(offsets[0]) if n else 0
    size = int(offsets[-1]) - base if n else 0
    chars = np.zeros(size + 40, np.uint8)  # zero padding: reads past the end see no '#' and no hex
    chars[:size] = data[base:base + size]
    windows = np.lib.stride_tricks.sliding_window_view(chars, 32)  # row i: the 32 characters from i on
    start = offsets[:-1] - base
    length = np.diff(offsets)
    out = (np.empty(n, np.uint32), np.empty(n, np.int64), np.empty((n, 8), np.uint8), np.empty(n, np.uint8),
           np.empty(n, bool))
    for a in range(0, n, _BLOCK_ROWS):
        b = min(a + _BLOCK_ROWS, n)
        for column, part in zip(out, _parse_block(windows, start[a:b], length[a:b])):
            column[a:b] = part
    return out


_LOW_BYTES = ((np.arange(8) < np.arange(9)[:, None]) * np.uint8(255)).astype(np.uint8).view(np.uint64).ravel()  # k bytes


def _parse_block(windows: np.ndarray, start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, ...]:
    """:func:`_parse_frames` for the cells at ``start`` (of ``length``) in ``windows``."""
    wide = windows[start]  # [n, 32]: whole-row copies, much faster than gathering single characters
    h3 = (length >= 4) & (wide[:, 3] == 35)
    h8 = ~h3 & (length >= 9) & (wide[:, 8] == 35)
    nib, bad = _nibbles(np.ascontiguousarray(wide[:, :3]))
    value = (nib[:, 0].astype(np.uint32) << 8) | (nib[:, 1].astype(np.uint32) << 4) | nib[:, 2]
    ok = h3 & ~(bad[:, 0] | bad[:, 1] | bad[:, 2]) & (value <= MAX_STANDARD_ID)
    text = np.ascontiguousarray(wide[:, 4:20])  # the payload after a 3-digit ID
    if h8.any():
        rows = np.flatnonzero(h8)
        nib, bad = _nibbles(wide[rows, :8])
        v8 = np.zeros(rows.size, np.uint32)
        for j in range(8):
            v8 = (v8 << 4) | nib[:, j]
        value[rows] = v8
        ok[rows] = ~_any_row(bad) & (v8 <= MAX_CAN_ID)
        text[rows] = wide[rows, 9:25]
    id_len = np.where(h8, 8, 3)
    p_len = length - id_len - 1
    ok &= ((p_len & 1) == 0) & (p_len >= 0) & (p_len <= 16)
    dlc = np.clip(p_len >> 1, 0, 8).astype(np.uint8)
    nib, bad = _nibbles(text)
    flags = bad.view(np.uint64)  # [n, 2]: the first and the last 8 payload characters
    chars = dlc.astype(np.int64) << 1
    ok &= ((flags[:, 0] & _LOW_BYTES[np.minimum(chars, 8)]) | (flags[:, 1] & _LOW_BYTES[np.maximum(chars - 8, 0)])) == 0
    pairs = nib.view("<u2")  # [n, 8]: the first character's value in the low byte
    payload = (((pairs << 4) & 0xF0) | (pairs >> 8)).astype(np.uint8)
    payload.view(np.uint64)[:, 0] &= _LOW_BYTES[dlc]  # zero past the DLC
    return value, id_len, payload, dlc, ok


def _read_candump(path: Path, channel: str | None):
    """candump ``-L`` text -> (_Frames, earlier bad lines, loss, dropped counts)."""
    text, cut = _decompress(path)
    if not text or text.isspace():  # (no stripped copy of the whole text)
        raise DataFormatError(path, None, "empty file: no data frames")
    text, non_ascii = _ascii(text)
    # lines have three fields, or four with the direction ('... 123#11 R'): split the file as its
    # first line is, then the other lines (if many) the other way; the rest go one by one
    first = text[:4096].lstrip().split(b"\n", 1)[0].strip().split(b" ")
    columns = 4 if len(first) == 4 else 3
    scanned = None
    if len(text) >= _SCAN_MIN_BYTES and (channel is None or not (channel.isascii() and channel.isdigit())):
        # one compiled pass (kdkit.data.candump_scan); all-digit channels ('1' is also '01') and a
        # channel without plain frames (the error lists every channel) take the pyarrow path below
        scanned = scan_candump(text, channel)[:2]
        if channel is not None and not scanned[0][0].size:
            scanned = None
    try:
        if scanned is not None:
            parts, odd = [], scanned[1]
        else:
            table, odd = _candump_table(text, columns)
            parts = [_vector_part(table, _rows_and_handed(table.num_rows, odd), direction=columns == 4,
                                  channel=channel)]
            if len(odd) > 64:
                table, odd2 = _candump_table("\n".join(line_text for _, line_text in odd).encode(), 7 - columns)
                index = _rows_and_handed(table.num_rows, odd2) - 1
                parts.append(_vector_part(table, np.array([odd[k][0] for k in index], np.int64),
                                          direction=columns == 3, channel=channel))
                odd = [odd[k - 1] for k, _ in odd2]
    except pa.ArrowInvalid as err:
        raise DataFormatError(path, None, f"unreadable text ({err})") from err

    # the lines left over, one by one; with channel=, a line of another channel is left out unparsed
    # here as well, unless the channel has no frames split out above: then every line is parsed,
    # for the error that lists the file's channels
    skip_others = channel is not None and (scanned is not None or any(channel in part.names for part in parts))
    dropped = {"remote": 0, "error": 0}
    earlier, extra = _parse_lines(sorted(odd + [row for part in parts for row in part.slow]), channel, skip_others,
                                  non_ascii, dropped)

    # data frames per channel, and the channel filter
    counts: dict[str, int] = {}
    if scanned is not None:  # plain frames of the channel (or of all channels: counted under '')
        counts[channel or ""] = scanned[0][0].size
    keep = []
    for part in parts:
        per_code = np.bincount(part.channel[part.fast], minlength=len(part.names))
        for name, k in zip(part.names, per_code.tolist()):
            counts[name] = counts.get(name, 0) + k
        wanted = [k for k, name in enumerate(part.names) if name == channel]
        keep.append(part.fast if channel is None else part.fast & np.isin(part.channel, wanted))
    for name in extra["chan"]:
        counts[name] = counts.get(name, 0) + 1
    counts = {name: k for name, k in counts.items() if k}
    keep_extra = np.array([channel is None or name == channel for name in extra["chan"]], bool)
    if channel is not None and not counts.get(channel):
        raise _no_channel(path, channel, counts)
    if not counts and not earlier:
        raise DataFormatError(path, None, f"no data frames ({dropped['remote']} remote and {dropped['error']} error "
                              f"frames dropped)")

    # the frames of every part, in line order
    pieces = [scanned[0]] if scanned is not None else []
    for part, rows in zip(parts, keep):
        rows = slice(None) if rows.all() else np.flatnonzero(rows)  # usually every row: no copies
        pieces.append((part.ts[rows], part.value[rows], part.id_len[rows] == 8, part.dlc[rows], part.payload[rows],
                       part.lines[rows].astype(np.int64)))
    frames = _merge_frames(pieces, extra, keep_extra)
    lost = (1, cut) if cut is not None else None
    return frames, earlier, lost, dropped


def _parse_lines(lines: list[tuple[int, str]], channel: str | None, skip_others: bool, non_ascii: set[int],
                 dropped: dict[str, int]) -> tuple[list[tuple[int | None, str]], dict[str, list]]:
    """The lines the vectorized paths handed back, one by one (in line order): their bad lines
    (line, problem), and their data frames as columns (``extra``: ts, id, ext, data, line, chan,
    problem). Remote and error frames of the channel are counted in ``dropped``. ``skip_others``:
    a line of another channel (the second of its 3 or 4 space-separated fields) is left out
    unparsed, as the vectorized paths leave such lines out."""
    earlier: list[tuple[int | None, str]] = []
    extra: dict[str, list] = {"ts": [], "id": [], "ext": [], "data": [], "line": [], "chan": [], "problem": []}
    for line, line_text in lines:
        if skip_others:
            fields = line_text.split(" ")
            if len(fields) in (3, 4) and _clean_channel(fields[1].encode()) and _channel_name(fields[1]) != channel:
                continue
        parsed = _candump_line(line_text)
        kind = parsed[0]
        if kind == "blank":
            continue
        if kind == "bad":
            note = " (the line holds bytes that are not ASCII text, shown as '?')" if line in non_ascii else ""
            if line_text.lstrip().upper().startswith("***BUSMASTER"):
                note += (" (a BusMaster log, not a candump one: kdkit does not read BusMaster's .log; export the "
                         "capture as .asc or .blf, or read its frame lines with a column mapping (delimiter = "
                         "\"whitespace\", header = false))")
            earlier.append((line, f"not a candump -L frame line: {parsed[1]}{note}"))
            continue
        chan = _channel_name(parsed[2])
        if kind in ("remote", "error"):
            dropped[kind] += channel is None or chan == channel
            continue
        _, t, _, arb, ext, data, fd = parsed
        problem = None
        if len(data) > 8:
            problem = (f"CAN FD frame with {len(data)} data bytes: {_FD_HINT}" if fd else
                       f"{len(data)} data bytes: a classic CAN frame carries at most 8")
        for key, v in zip(extra, (t, arb, ext, data[:8], line, chan, problem)):
            extra[key].append(v)
    return earlier, extra


def _merge_frames(pieces: list[tuple[np.ndarray, ...]], extra: dict[str, list], keep_extra: np.ndarray) -> _Frames:
    """The vectorized paths' frames (``pieces``: ts, ID, extended, dlc, payload, line) and the
    kept frames of :func:`_parse_lines` as one :class:`_Frames` in line order."""
    sel = np.flatnonzero(keep_extra)
    if sel.size:
        e_payload = np.zeros((sel.size, 8), np.uint8)
        for j, i in enumerate(sel.tolist()):
            e_payload[j, :len(extra["data"][i])] = np.frombuffer(extra["data"][i], np.uint8)
        pieces = pieces + [(np.array(extra["ts"], np.float64)[sel], np.array(extra["id"], np.uint32)[sel],
                            np.array(extra["ext"], bool)[sel], np.array([len(d) for d in extra["data"]], np.uint8)[sel],
                            e_payload, np.array(extra["line"], np.int64)[sel])]
    pieces = [p for p in pieces if p[0].size] or pieces[:1]
    if not pieces:
        return _Frames(np.zeros(0), np.zeros(0, np.uint32), np.zeros(0, bool), np.zeros(0, np.uint8),
                       np.zeros((0, 8), np.uint8), np.zeros(0, np.int64), {})
    if len(pieces) == 1:
        frames = _Frames(*pieces[0], {})
    else:
        columns = [np.concatenate(c) for c in zip(*pieces)]
        order = np.argsort(columns[-1], kind="stable")
        frames = _Frames(*(c[order] for c in columns), {})
    if sel.size:
        extra_line = {int(extra["line"][i]): extra["problem"][i] for i in sel.tolist() if extra["problem"][i]}
        if extra_line:
            at = np.flatnonzero(np.isin(frames.where, list(extra_line)))
            frames.problem = {int(i): extra_line[int(frames.where[i])] for i in at}
    return frames


# --------------------------------------------------------------------------------------
# candump -L in chunks, in bounded memory


class _CheckedChunks:
    """Frames of a logger file checked block by block as :func:`_finish` checks them all (time
    order against the blocks before), handed out as Messages chunks of ``chunk_rows``."""

    def __init__(self, path: Path, channel: str | None, mode: OnBadRows, chunk_rows: int, binary: bool = False):
        self.path, self.channel, self.binary = path, channel, binary
        self.bad = _BadRows(path, mode)
        self.out = _Chunker(self.bad, chunk_rows, str(path), "attack-free")  # good frames not handed out yet
        self.dropped = {"remote": 0, "error": 0}
        self.order = _TimeOrder(self.bad)
        self.frames = 0  # data frames of the channel read (before the checks)
        self.deferred: DataFormatError | None = None

    def add(self, frames: _Frames, earlier: list[tuple[int | None, str]]) -> Iterator[Messages]:
        """Check one block's frames (and its bad lines), then hand out the chunks now full."""
        self.frames += frames.ts.shape[0]
        part = self._check(frames, earlier)
        if self.deferred is not None and self.frames:
            raise self.deferred
        for msgs in self.out.add(*part) if part is not None else ():
            msgs.dropped_frames = dict(self.dropped)
            yield msgs

    def close(self, lost: tuple[int, str] | None) -> Messages:
        """The last chunk, with the file's counts (the loss of a truncated file among them)."""
        if lost is not None:
            if self.bad.mode == "error":
                raise DataFormatError(self.path, None, lost[1] + "; read the part before the cut with "
                                                                  "--on-bad-rows skip (on_bad_rows='skip' in Python)")
            self.bad.count += lost[0]
            self.bad.unlabelled += lost[0]
            self.bad.lead(f"{self.path}: {lost[1]}")
        self.out.put(*self.order.close())
        if not self.out.rows:
            raise DataFormatError(self.path, None, "no usable data frames (all were skipped)")
        msgs = self.out.take()
        msgs.dropped_frames = dict(self.dropped)
        return msgs

    def _check(self, frames: _Frames, earlier: list[tuple[int | None, str]]) -> tuple[np.ndarray, ...] | None:
        """The block's good frames as Messages columns (None: a fault deferred, see below)."""
        ts, raw_ids, extended = frames.ts, frames.arb_id, frames.extended
        ok, ok_fields, describe, verdict = _frame_checks(frames, self.binary, self.order)
        label = np.zeros(ts.shape[0], np.uint8)
        self.out.put(*self.order.release(verdict, self.bad))  # the block before's last frame, unless a glitch
        try:
            self.bad.check(ok, lambda i: None if self.binary else int(frames.where[i]), describe, earlier,
                           label=label, label_ok=ok_fields)
        except DataFormatError as err:
            # a fault before the channel's first frame: a channel without frames is the error to
            # raise instead (as when the file is read whole), so it waits for the first frame
            first = self.deferred if self.deferred is not None else err
            if self.channel is None or self.frames:
                raise first from None
            self.deferred = first
            return None
        keep = slice(None) if ok.all() else np.flatnonzero(ok)
        return self.order.hold((ts[keep], can_id_key(raw_ids[keep], extended[keep]), frames.dlc[keep],
                                frames.payload[keep], label[keep]),
                               lambda i: None if self.binary else int(frames.where[i]))


def _candump_chunks(path: Path, channel: str | None, mode: OnBadRows, chunk_rows: int) -> Iterator[Messages]:
    """A candump log in chunks (:func:`iter_logger_file`): text blocks through the compiled pass."""
    out = _CheckedChunks(path, channel, mode, chunk_rows)
    blocks = _TextBlocks(path, _GZ_PIECE)
    base, any_text = 0, False
    for text in blocks:
        any_text = any_text or not text.isspace()
        text, non_ascii = _ascii(text)
        plain, handed, n_lines = scan_candump(text, channel)
        plain = (*plain[:5], plain[5] + base)
        handed = [(line + base, line_text) for line, line_text in handed]
        earlier, extra = _parse_lines(handed, channel, channel is not None, {line + base for line in non_ascii},
                                      out.dropped)
        keep_extra = np.array([channel is None or name == channel for name in extra["chan"]], bool)
        yield from out.add(_merge_frames([plain], extra, keep_extra), earlier)
        base += n_lines
    if not any_text:
        raise DataFormatError(path, None, "empty file: no data frames")
    if channel is not None and not out.frames:
        raise _no_channel(path, channel, _count_channels(path))
    if not out.frames and not out.bad.count:
        raise DataFormatError(path, None, f"no data frames ({out.dropped['remote']} remote and "
                                          f"{out.dropped['error']} error frames dropped)")
    yield out.close((1, blocks.lost + _LOST) if blocks.lost is not None else None)


def _python_can_chunks(path: Path, suffix: str, channel: str | None, mode: OnBadRows,
                       chunk_rows: int) -> Iterator[Messages]:
    """An ``.asc``/``.blf``/``.trc`` file in chunks (:func:`iter_logger_file`): python-can's
    frames ``chunk_rows`` at a time."""
    out = _CheckedChunks(path, channel, mode, chunk_rows, binary=suffix == ".blf")
    source = _PythonCanFrames(path, suffix, channel, mode, min(chunk_rows, 1 << 16))  # (Python objects: ~200 B a frame)
    n_earlier = 0
    for frames, earlier in source:
        n_earlier += len(earlier)
        out.dropped.update(source.dropped)
        yield from out.add(frames, earlier)
    out.dropped.update(source.dropped)
    if not out.frames and not n_earlier and source.lost is None:
        if channel is not None:
            raise _no_channel(path, channel, source.counts)
        raise DataFormatError(path, None, "no data frames")
    if channel is not None and not source.counts.get(channel):
        raise _no_channel(path, channel, source.counts)
    last = out.close(source.lost)
    last.left_out_channels = _other_channels(source.counts, channel)
    yield last


def _other_channels(counts: dict[str, int], channel: str | None) -> dict[str, int]:
    """The data frames of the channels other than ``channel`` (None: every one was read)."""
    return {} if channel is None else {c: n for c, n in counts.items() if c != channel and n}


def left_out_channels(path: str | Path, msgs: Messages | None = None) -> dict[str, int]:
    """The data frames of the buses a logger file read with no channel chosen left out: the file is
    read as the bus its start holds, and buses that start later are not mixed in. An ``.asc``/``.blf``/
    ``.trc`` reader counts them as it reads (``msgs.left_out_channels``); a candump log's come from a
    second, compiled pass (~0.1 s a MB). Empty for other files."""
    path = Path(path)
    if not path.name.lower().removesuffix(".gz").endswith(".log"):
        return dict(getattr(msgs, "left_out_channels", None) or {})
    read = read_channel(path)
    others = {c: n for c, n in channel_counts(path).items() if c != read and n}
    return others if read is not None else {}


def channel_counts(path: str | Path) -> dict[str, int]:
    """Data frames per channel of a whole logger file (candump ``.log``, ``.asc``, ``.blf``,
    ``.trc``; ``.gz`` too), the channels named as ``channel=`` names them. Bad lines are passed
    over (the readers report them). One pass over the file: ~0.1 s for the RAV4's 135,468 lines."""
    path = Path(path)
    suffix = Path(path.name.lower().removesuffix(".gz")).suffix
    if suffix not in _CAN_READERS:
        raise DataFormatError(path, None, f"unknown logger format {suffix!r}; expected one of {sorted(_CAN_READERS)}")
    if suffix == ".log":
        return _count_channels(path)
    source = _PythonCanFrames(path, suffix, "\0", "skip", batch=1 << 16)  # keeps no frame, counts every channel
    for _ in source:
        pass
    return dict(source.counts)


def _count_channels(path: Path) -> dict[str, int]:
    """Data frames per channel of a candump file, a block at a time (for the error of an unknown channel)."""
    counts: dict[str, int] = {}
    for text in _TextBlocks(path, _GZ_PIECE):
        for name, k in _candump_block_channels(_ascii(text)[0]).items():
            counts[name] = counts.get(name, 0) + k
    return counts


def iter_logger_file(path: str | Path, channel: str | None = None, on_bad_rows: OnBadRows = "error",
                     chunk_rows: int = CHUNK_ROWS) -> Iterator[Messages]:
    """:func:`read_logger_file` in chunks of ``chunk_rows`` messages (the last one, possibly
    shorter or empty, carries the file's skip and drop counts).

    Read in bounded memory whatever the file's size, with the same frames, skips and
    ``file:line`` errors as :func:`read_logger_file` (tested), time order checked across blocks:
    a candump ``.log`` (``.gz`` too) ~4 MiB of the file at a time through the compiled scanner;
    ``.asc``/``.blf``/``.trc`` python-can's frames 65,536 at a time. In error mode a fault is
    raised when its block is read, so chunks before it may have been handed out; a truncated
    ``.gz``/``.blf`` is known at its end. Read whole and sliced instead: a file with a label
    sidecar, and a candump log read with an all-digit ``channel``."""
    path = Path(path)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = Path(path.name.lower().removesuffix(".gz")).suffix
    if suffix not in _CAN_READERS:
        raise DataFormatError(path, None, f"unknown logger format {suffix!r}; expected one of {sorted(_CAN_READERS)}")
    if label_sidecar(path) is not None or (suffix == ".log" and channel is not None and channel.isascii()
                                           and channel.isdigit()):
        return slices(read_logger_file(path, channel, on_bad_rows), chunk_rows)
    _BadRows(path, on_bad_rows)  # the mode is checked now, not at the first chunk
    channel = _chosen_channel(path, suffix, channel)
    if suffix == ".log":
        return _candump_chunks(path, channel, on_bad_rows, chunk_rows)
    return _python_can_chunks(path, suffix, channel, on_bad_rows, chunk_rows)


# --------------------------------------------------------------------------------------
# python-can: .asc, .blf, .trc


class _Lines:
    """A text source for python-can that counts the file's lines and keeps the lines read since
    the last frame (to find the lines python-can skipped). ``prefix`` lines (not counted) come first."""

    def __init__(self, handle, prefix: list[str] | None = None) -> None:
        self.handle = handle
        self.prefix = list(prefix or [])
        self.line = 0
        self.pending: list[tuple[int, str]] = []

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self.prefix:
            return self.prefix.pop(0)
        text = next(self.handle)
        self.line += 1
        self.pending.append((self.line, text))
        return text

    def readline(self, *args) -> str:
        try:
            return next(self)
        except StopIteration:
            return ""

    def __getattr__(self, name: str):
        return getattr(self.handle, name)


class _Reads:
    """A binary source for python-can's BLF reader that tracks the byte offset and the first short
    read (a truncated file); reads of 1-3 bytes are the padding after an object and do not count."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self.offset = 0
        self.short: tuple[int, int, int] | None = None  # (offset, wanted, got)

    def read(self, n: int = -1) -> bytes:
        data = self.handle.read(n)
        # an empty 16-byte read is the end of the file between two objects; anything else short is a cut
        if n > 3 and len(data) < n and self.short is None and (data or n != 16):
            self.short = (self.offset, n, len(data))
        self.offset += len(data)
        return data

    def __getattr__(self, name: str):
        return getattr(self.handle, name)


_ASC_META = re.compile(
    r"(date\s|base\s+(hex|dec)\b|(no\s+)?internal\s+events\s+logged|begin\s+triggerblock|end\s+triggerblock|//)",
    re.IGNORECASE)
_ASC_FRAME_SHAPE = re.compile(r"\S+\s+(\d+|CANFD)\s+(\d+\s+)?[0-9A-Fa-f]+x?\s+(Rx|Tx)\b", re.IGNORECASE)
_ASC_EVENT = re.compile(r"\d+\.\d+\s+\S")


def _asc_skipped(text: str) -> str | None:
    """Why a line python-can's ASC reader skipped is junk, or None for a header/comment/event line."""
    line = text.strip()
    if not line or _ASC_META.match(line):
        return None
    if _ASC_FRAME_SHAPE.match(line):
        return (f"python-can's ASC reader skipped this CAN frame line: {line[:80]!r} (right after the header it "
                f"does so unless a '(no) internal events logged' line ends the header)")
    if _ASC_EVENT.match(line):  # '<time> Start of measurement', statistics, chip status, J1939TP, ...
        return None
    return f"not an ASC frame, event, header or comment line: {line[:80]!r}"


_TRC_RECORDS = {"Warng", "Error"}  # non-frame record types of TRC 1.1/1.3
_TRC2_RECORDS = {"ST", "EC", "ER", "EV"}  # TRC 2.x: status, error counter, error frame, event


def _trc_skipped(text: str, reader) -> str | None:
    """Why a line python-can's TRC reader skipped is junk, or None for a comment or a record that
    is not a data frame (bus info, status, error counter, error frame, event)."""
    line = text.strip()
    if not line or line.startswith(";"):
        return None
    cols = line.split()
    version = getattr(reader.file_version, "value", 0)
    if version in (0, 100):
        record = len(cols) > 2 and cols[2] == "FFFFFFFF"  # bus info
    else:
        k = reader.columns.get("T") if version >= 200 else 2 if version == 101 else 3
        known = _TRC2_RECORDS if version >= 200 else _TRC_RECORDS
        record = k is not None and len(cols) > k and cols[k] in known
    if record:
        return None
    return f"python-can's TRC reader skipped this line (not a frame it could read): {line[:80]!r}"


def _trc_error_bus(text: str, reader) -> str | None:
    """The bus of a ``.trc`` error record line, named as python-can names its frames' channels (1
    where the version has no bus column); None for any other line."""
    cols = text.split()
    version = getattr(reader.file_version, "value", 0)
    if version >= 200:
        k, kind, bus = reader.columns.get("T"), "ER", reader.columns.get("B")
    else:
        k, kind, bus = (2, "Error", None) if version == 101 else (3, "Error", 2) if version == 103 else (None, "", None)
    if k is None or len(cols) <= k or cols[k] != kind:
        return None
    try:
        return str(int(cols[bus])) if bus is not None and len(cols) > bus else "1"
    except ValueError:
        return "1"


@contextlib.contextmanager
def _python_can_quiet():
    """python-can's text readers log each line they cannot parse ("TRCReader: Failed to parse
    message ..."), which kdkit reports itself with its file and line: not twice."""
    quiet = logging.Filter("(none)")  # passes no record of theirs
    loggers = [logging.getLogger(name) for name in ("can.io.trc", "can.io.asc")]
    for one in loggers:
        one.addFilter(quiet)
    try:
        yield
    finally:
        for one in loggers:
            one.removeFilter(quiet)


def _read_python_can(path: Path, suffix: str, channel: str | None, mode: OnBadRows):
    """``.asc``/``.blf``/``.trc`` through python-can -> (_Frames, earlier, loss, dropped)."""
    source = _PythonCanFrames(path, suffix, channel, mode)
    (frames, earlier), = list(source)  # one batch: every frame
    if not frames.ts.size and not earlier and source.lost is None:
        if channel is not None:
            raise _no_channel(path, channel, source.counts)
        raise DataFormatError(path, None, "no data frames")
    if channel is not None and not source.counts.get(channel):
        raise _no_channel(path, channel, source.counts)
    return frames, earlier, source.lost, source.dropped, _other_channels(source.counts, channel)


class _PythonCanFrames:
    """The data frames python-can reads from an ``.asc``/``.blf``/``.trc`` file (of ``channel``),
    as ``(_Frames, bad lines)`` batches of ``batch`` frames (None: one batch), in file order.
    After the iteration: ``lost`` (a truncated ``.blf``: (frames lost, why)), ``dropped``
    (remote and error frames of the channel) and ``counts`` (data frames per channel)."""

    def __init__(self, path: Path, suffix: str, channel: str | None, mode: OnBadRows, batch: int | None = None):
        self.path, self.suffix, self.channel, self.mode, self.batch = path, suffix, channel, mode, batch
        self.lost: tuple[int, str] | None = None
        self.dropped = {"remote": 0, "error": 0}
        self.counts: dict[str, int] = {}

    def __iter__(self) -> Iterator[tuple[_Frames, list[tuple[int | None, str]]]]:
        import can  # python-can; imported lazily, it is slow to import

        path, suffix, channel, mode, dropped, counts = (self.path, self.suffix, self.channel, self.mode, self.dropped,
                                                        self.counts)
        binary = suffix == ".blf"
        file_numbers = suffix in (".asc", ".blf")
        gz = path.name.lower().endswith(".gz")
        opener = gzip.open if gz else open
        ts: list[float] = []
        arb: list[int] = []
        ext: list[bool] = []
        datas: list[bytes] = []
        where: list[int] = []
        problem: dict[int, str] = {}
        earlier: list[tuple[int | None, str]] = []
        skipped_junk: list[tuple[int, str]] = []
        number = 0  # messages python-can yielded (the .blf frame number)

        def take(m) -> None:
            nonlocal number
            number += 1
            # python-can numbers .asc/.blf channels from 0 (the file's channel 1 is its 0): kdkit names them as the
            # file, CANoe and the .trc reader do, so --channel 1 is the channel the file calls 1
            chan = str(m.channel + 1) if file_numbers and isinstance(m.channel, int) else str(m.channel)
            # CAN FD has no remote frames: python-can's .asc reader marks a zero-length FD frame remote
            remote = m.is_remote_frame and not m.is_fd
            if not m.is_error_frame and not remote:
                counts[chan] = counts.get(chan, 0) + 1
            if channel is not None and chan != channel:
                return
            if remote or m.is_error_frame:
                dropped["error" if m.is_error_frame else "remote"] += 1
                return
            data = bytes(m.data)
            if len(data) > 8:
                problem[len(ts)] = (f"CAN FD frame with {len(data)} data bytes: {_FD_HINT}" if m.is_fd else
                                    f"{len(data)} data bytes: a classic CAN frame carries at most 8")
            elif not m.is_fd and len(data) < min(m.dlc, 8):  # python-can keeps the bytes a cut line still has
                problem[len(ts)] = (f"the frame's DLC is {m.dlc} but it holds {len(data)} data bytes "
                                    f"(a cut or damaged line)")
            ts.append(m.timestamp)
            arb.append(m.arbitration_id)
            ext.append(m.is_extended_id)
            datas.append(data[:8])

        def flush() -> tuple[_Frames, list[tuple[int | None, str]]]:
            """The frames and bad lines so far, as one batch (the lists emptied)."""
            n = len(ts)
            payload = np.zeros((n, 8), np.uint8)
            for i, d in enumerate(datas):
                payload[i, :len(d)] = np.frombuffer(d, np.uint8)
            frames = _Frames(np.array(ts, np.float64), np.array(arb, np.uint32), np.array(ext, bool),
                             np.array([len(d) for d in datas], np.uint8), payload, np.array(where, np.int64),
                             dict(problem))
            bad = sorted(earlier + skipped_junk)
            for items in (ts, arb, ext, datas, where, earlier, skipped_junk):
                items.clear()
            problem.clear()
            return frames, bad

        def add(m, line: int | None = None) -> bool:
            """Take python-can's frame ``m`` read at ``line`` (None: its frame number, .blf);
            whether a batch is full now."""
            before = len(ts)
            take(m)
            if len(ts) == before:
                return False
            where.append(number if line is None else line)
            return bool(self.batch) and len(ts) >= self.batch

        if binary:
            try:
                with opener(path, "rb") as handle:
                    source = _Reads(handle)
                    reader = can.BLFReader(source)
                    try:
                        for m in reader:
                            if add(m):
                                yield flush()
                    except (struct.error, zlib.error, can.io.blf.BLFParseError) as err:
                        if source.short is None:
                            raise DataFormatError(path, None, f"corrupt BLF data near byte {source.offset} (after "
                                                              f"frame {number}): {type(err).__name__} {err}") from err
                    file_size = reader.file_size
                    object_count = reader.object_count
            except (OSError, EOFError, zlib.error) as err:  # gzip, or the file header
                raise DataFormatError(path, None, f"corrupt or unreadable file ({type(err).__name__}: {err})") from err
            except (struct.error, can.io.blf.BLFParseError) as err:
                raise DataFormatError(path, None, f"not a BLF file or a truncated header ({type(err).__name__} "
                                                  f"{err})") from err
            end = source.offset
            if source.short is not None or file_size > end:
                at = source.short[0] if source.short is not None else end
                missing = object_count - number if object_count > number else None
                what = (f"{missing} of the {object_count} objects the header counts are missing" if missing
                        else "an unknown number of frames is lost")
                self.lost = (missing or 1, (f"truncated BLF file: cut at byte {at} (the header says {file_size} "
                                            f"bytes) after frame {number}; {what}"))
        else:
            prefix: list[str] = []
            header_lines: list[str] = []
            source: _Lines | None = None
            blocks = _AscBlocks() if suffix == ".asc" else None
            if blocks is not None:
                with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
                    head = handle.read(4096)
                relative = re.search(r"^\s*base\s+(hex|dec)\s+timestamps\s+relative\b", head, re.I | re.M)
                if relative is not None:
                    raise DataFormatError(path, head.count("\n", 0, relative.start()) + 1, _ASC_RELATIVE)
            try:
                with opener(path, "rt", encoding="utf-8", errors="replace") as handle, _python_can_quiet():
                    while True:  # once, or after each line python-can could not parse (skip mode)
                        start = source.line if source is not None else 0
                        source = _Lines(handle, prefix)
                        source.line = start
                        reader = getattr(can, _CAN_READERS[suffix])(source)
                        try:
                            for m in reader:
                                frame_line, _ = source.pending[-1]
                                for line, text in source.pending[:-1]:
                                    _classify(suffix, line, text, reader, skipped_junk, dropped, header_lines, channel)
                                    if blocks is not None:
                                        blocks.see(text)
                                source.pending.clear()
                                if blocks is not None:
                                    m.timestamp = blocks.place(m.timestamp)
                                if add(m, frame_line):
                                    yield flush()
                            for line, text in source.pending:
                                _classify(suffix, line, text, reader, skipped_junk, dropped, header_lines, channel)
                            break
                        except (ValueError, IndexError, KeyError, NotImplementedError) as err:
                            line = source.pending[-1][0] if source.pending else source.line
                            for ln, text in source.pending[:-1]:
                                _classify(suffix, ln, text, reader, skipped_junk, dropped, header_lines, channel)
                            if source.line == start:  # no line read: the file (or its header) cannot be read
                                raise DataFormatError(path, line or None, f"python-can could not read the file: "
                                                                          f"{type(err).__name__} {err}") from err
                            earlier.append((line, f"python-can could not parse this line: {type(err).__name__} {err}"))
                            if mode == "error":
                                break
                            prefix = _resume_prefix(suffix, reader, header_lines)
            except (OSError, EOFError, zlib.error) as err:
                after = source.line if source else 0
                raise DataFormatError(path, None, f"corrupt or unreadable file after line {after} "
                                                  f"({type(err).__name__}: {err})") from err
        yield flush()


_ASC_RELATIVE = ("the header says 'timestamps relative': each frame's time is its gap to the event before it, and "
                 "kdkit reads absolute times (python-can's ASC reader would hand out the gaps as times); export "
                 "the log with absolute timestamps (CANoe/CANalyzer: the logging block's format)")
_ASC_TRIGGER = re.compile(r"begin\s+triggerblock\s+\w+\s+(.+)", re.IGNORECASE)


class _AscBlocks:
    """The trigger blocks of an ``.asc`` file: python-can reads each block's times from 0 (its
    ``relative_timestamp``). A block whose times start again below the block before's is placed
    on the first block's clock by the dates its ``Begin Triggerblock`` lines carry (a logger that
    logged several times into one file); times that go on across blocks are kept as they are."""

    def __init__(self) -> None:
        self.first: float | None = None  # the first block's date (epoch seconds)
        self.started: float | None = None  # the date of a block whose first frame is still to come
        self.offset = 0.0
        self.last = -np.inf  # the last frame's time, placed

    def see(self, text: str) -> None:
        match = _ASC_TRIGGER.match(text.strip())
        if match is None:
            return
        import can  # (already imported by the caller)

        try:
            date = can.io.asc.ASCReader._datetime_to_timestamp(match.group(1).strip())
        except ValueError:  # a date python-can cannot read: the block's times stay as they are
            date = None
        if self.first is None:
            self.first = date
        else:
            self.started = date

    def place(self, ts: float) -> float:
        if self.started is not None:
            if ts + self.offset < self.last and self.first is not None:  # its clock started again
                # placed by its date, unless that puts it before the block before (a date earlier than that
                # block's): then its times stay as they are, and the readers take it as a new timeline
                placed_by_date = self.started - self.first
                self.offset = placed_by_date if ts + placed_by_date >= self.last else 0.0
            self.started = None
        placed = ts + self.offset
        self.last = max(self.last, placed)
        return placed


def _classify(suffix: str, line: int, text: str, reader, junk: list, dropped: dict, header_lines: list,
              channel: str | None) -> None:
    """A line python-can read without yielding a frame: junk (counted), or header/meta."""
    if suffix == ".trc":
        if text.strip().startswith(";"):
            header_lines.append(text)
        why = _trc_skipped(text, reader)
        bus = _trc_error_bus(text, reader) if why is None else None
        if bus is not None and channel in (None, bus):
            dropped["error"] += 1  # (the chosen channel's: they were counted only when every channel was read)
    else:
        if _ASC_META.match(text.strip()):
            header_lines.append(text)
        why = _asc_skipped(text)
    if why is not None:
        junk.append((line, why))


def _resume_prefix(suffix: str, reader, header_lines: list[str]) -> list[str]:
    """Lines that put a fresh python-can reader in the state of ``reader`` (after a bad line)."""
    if suffix == ".trc":
        return [h for h in header_lines if h.strip().startswith(";$")]
    base = getattr(reader, "base", "hex")
    return [f"base {base} timestamps absolute\n", "no internal events logged\n"]


set_logger_reader(read_logger_file)
set_logger_chunks(iter_logger_file)
