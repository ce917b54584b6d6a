"""Reading CAN recordings into one internal messages table.

Every input format ends up as a :class:`Messages` object (one recording per object, rows in
recorded order)::

    from kdkit.data import read_messages
    msgs = read_messages("hcrl-sa/train_02_with_attacks/DoS-kia.csv.gz")
    msgs.can_id, msgs.payload, msgs.label

Formats:
- can-train-and-test v1.5 CSV (``timestamp,arbitration_id,data_field,attack``), ``.csv`` or
  ``.csv.gz``, parsed with pyarrow and decoded with vectorized numpy (no per-row Python).
- HCRL Car-Hacking original CSV (no header, ``Timestamp,CAN ID,DLC,DATA0..,Flag`` with the
  R/T flag shifted left for DLC < 8) and its ``normal_run_data.txt`` text form.
- Logger formats (candump ``.log``, Vector ``.asc``/``.blf``, PEAK ``.trc``, optionally
  gzip-compressed) are read by :mod:`kdkit.data.loggers`, which plugs into :func:`read_messages`.
- Any CSV-like layout through a column mapping (DAGA, ROAD, ...: :mod:`kdkit.data.columns`).

Every built-in format is also read in chunks of messages in bounded memory, with the same messages,
skip counts and errors as a whole read (:func:`iter_messages`; ``kdkit data prepare`` uses it).

Malformed input raises :class:`DataFormatError` naming the file, the line and the problem.
With ``on_bad_rows="skip"`` such rows are dropped instead and counted in
``Messages.skipped_rows`` (with how many of them were attack rows; the CLI reports them per
file). Nothing is turned into 0 or NaN. Besides unparsable fields, these rows are malformed:

- a negative timestamp, or one earlier than a row kept before it (time never goes backwards:
  the timing features are differences of timestamps), or a lone glitch: one row later than the
  row after it while that row follows on from the rows before (:class:`_TimeOrder`). The glitch is
  the row skipped, not every row after it. With ``"skip"`` the rows kept never go back in time,
  but where the clock restarted: from :data:`RESTART_ROWS` rows in a row behind the rows before
  them, in order among themselves (a lone glitch among them passed over), a new timeline starts
  (kept, marked in ``Messages.restart``, counted in ``Messages.timeline_restarts``; windows never
  cross it). That is no bad row.
- an ID above ``0x7FF`` (the largest 11-bit ID) written with fewer than 8 hex digits. An ID
  written with 8 digits (``18FEF100``), or flagged extended by a logger format, is a 29-bit
  extended ID; HCRL's 4-digit standard IDs (``0316``) stay valid.
- bytes that are not ASCII text (invalid UTF-8 included).
"""
from __future__ import annotations

import gzip
import os
import re
import sys
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

try:  # ISA-L's gzip reader (python-isal): inflates 2.2x faster than zlib on a 46 MB .csv.gz, same bytes
    from isal import igzip as _igzip
except ImportError:  # pragma: no cover - a dependency; pyarrow's zlib gives the same bytes, slower
    _igzip = None
try:  # ISA-L's inflate (python-isal): 3.3x faster than zlib on the RAV4 log (5.4 vs 18 ms), same API
    from isal import isal_zlib as _inflate
except ImportError:  # pragma: no cover - a dependency; zlib gives the same bytes, slower
    _inflate = zlib

OnBadRows = Literal["error", "skip"]


CTT_HEADER = ["timestamp", "arbitration_id", "data_field", "attack"]


MAX_CAN_ID = 0x1FFFFFFF  # 29-bit extended identifiers


MAX_STANDARD_ID = 0x7FF  # 11-bit identifiers; a larger ID must be written with 8 hex digits (extended)


EXTENDED_ID_FLAG = 1 << 31  # set in Messages.can_id for a 29-bit (extended) ID: 0x81 extended != 0x081 standard


def can_id_key(arbitration_id: np.ndarray | int, is_extended: np.ndarray | bool) -> np.ndarray | int:
    """The ``Messages.can_id`` of a frame: its arbitration ID, with :data:`EXTENDED_ID_FLAG` set
    when the frame is extended, so a standard and an extended ID of equal value stay two nodes."""
    if isinstance(arbitration_id, (int, np.integer)) and isinstance(is_extended, (bool, np.bool_)):
        return int(arbitration_id) | (EXTENDED_ID_FLAG if is_extended else 0)
    ids = np.asarray(arbitration_id, np.uint32)
    return ids | (np.asarray(is_extended, bool).astype(np.uint32) << np.uint32(31))


_ATTACK_ALIASES = {
    "dos": "DoS", "fuzzy": "fuzzing", "fuzzing": "fuzzing", "gear": "gear", "rpm": "rpm",
    "malfunction": "malfunction", "suppress": "suppress", "masquerade": "masquerade",
    "attack-free": "attack-free", "attack_free": "attack-free", "normal": "attack-free",
    "spoofing": "spoofing",
}


class DataFormatError(ValueError):
    """Malformed CAN input. The message names the file, the line (1-based) and the problem."""

    def __init__(self, path: str | Path, line: int | None, problem: str):
        self.path, self.line, self.problem = str(path), line, problem
        super().__init__(f"{_where(path, line)}: {problem}")

    def __reduce__(self):  # raised in a preparation worker process, re-raised in the parent
        return (type(self), (self.path, self.line, self.problem))


def _where(path: str | Path, line: int | None) -> str:
    return f"{path}:{line}" if line is not None else str(path)


@dataclass
class Messages:
    """One recording as a struct of numpy arrays (the kit's one internal messages table).

    Attributes:
        timestamp: float64 [N] seconds, as recorded (finite, >= 0: what every reader gives).
        can_id: uint32 [N] arbitration IDs: a standard (11-bit) ID as it is (``0x316``), an
            extended (29-bit) one with :data:`EXTENDED_ID_FLAG` set (``0x18FEF100 | EXTENDED_ID_FLAG``),
            so that ``0x81`` extended and ``0x081`` standard stay apart.
        dlc: uint8 [N] data length codes (0..8).
        payload: uint8 [N, 8] payload bytes, zero past ``dlc`` (a table built otherwise is refused).
        label: uint8 [N], 1 = injected/attack message, 0 = normal.
        source: the file this came from.
        attack_type: the recording's attack type from its file name (``DoS``, ``fuzzing``,
            ``malfunction``, ``gear``, ``rpm``, ``attack-free``, ...).
        skipped_rows: rows dropped under ``on_bad_rows="skip"``.
        skipped_examples: up to 5 of them as ``file:line: problem``.
        skipped_attack_rows: how many of the skipped rows were labelled attack rows.
        skipped_unlabelled_rows: how many of the skipped rows had no readable label (the
            rest of ``skipped_rows`` were normal rows).
        row_type: optional uint8 [N] per-message attack type, an index into ``type_names``
            (0 = ``normal``), for recordings whose label column names the attack (ROAD,
            OTIDS-like value maps) or whose sidecar intervals do; None: the recording's
            ``attack_type`` applies to every attack message.
        type_names: the names ``row_type`` indexes; ``type_names[0] == "normal"``.
        dropped_frames: frames a logger file holds that are no data messages and were left
            out, by kind (``{"remote": 3, "error": 1}``); counted, never silent.
        restart: optional bool [N], True on the first row of a new timeline: the recording's clock
            restarted there (a logger restarted, two recordings in one file; see the readers'
            time-order rule). Timestamps go back only at such rows; windows never cross them.
            None: one timeline.
        timeline_restarts: how many new timelines the recording's reader found (the file's total
            on its last chunk), ``timeline_examples`` the first five as ``file line N: ...``.
        left_out_channels: data frames of the other bus channels an ``.asc``/``.blf``/``.trc``
            file's reader passed over while reading one channel (``{"2": 5120}``; on the last
            chunk, the file's totals); empty for other readers.
    """

    timestamp: np.ndarray
    can_id: np.ndarray
    dlc: np.ndarray
    payload: np.ndarray
    label: np.ndarray
    source: str = ""
    attack_type: str = "unknown"
    skipped_rows: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    skipped_attack_rows: int = 0
    skipped_unlabelled_rows: int = 0
    row_type: np.ndarray | None = None
    type_names: tuple[str, ...] = ("normal",)
    dropped_frames: dict[str, int] = field(default_factory=dict)
    restart: np.ndarray | None = None
    timeline_restarts: int = 0
    timeline_examples: list[str] = field(default_factory=list)
    left_out_channels: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.timestamp.shape[0])

    def __post_init__(self) -> None:
        for name, dtype in _COLUMN_TYPES.items():  # a table built by hand (pandas columns, int64 bytes): cast or refused
            value = getattr(self, name)
            if not (isinstance(value, np.ndarray) and value.dtype == dtype):
                setattr(self, name, _as_column(name, value, dtype))
        n = self.timestamp.shape[0]
        for name in ("can_id", "dlc", "label"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"Messages.{name} has shape {getattr(self, name).shape}, expected ({n},)")
        if self.payload.shape != (n, 8):
            raise ValueError(f"Messages.payload has shape {self.payload.shape}, expected ({n}, 8)")
        if self.row_type is not None:
            if self.row_type.shape != (n,):
                raise ValueError(f"Messages.row_type has shape {self.row_type.shape}, expected ({n},)")
            if not self.type_names or self.type_names[0] != "normal":
                raise ValueError(f"Messages.type_names must start with 'normal', got {self.type_names!r}")
            if n and int(self.row_type.max()) >= len(self.type_names):
                raise ValueError(f"Messages.row_type holds {int(self.row_type.max())}, beyond type_names {self.type_names!r}")
        if self.restart is not None:
            self.restart = np.asarray(self.restart, bool)
            if self.restart.shape != (n,):
                raise ValueError(f"Messages.restart has shape {self.restart.shape}, expected ({n},)")
        if n:
            _check_values(self)

    def slice(self, start: int, stop: int) -> Messages:
        """Rows ``start:stop`` as a new Messages sharing memory."""
        return self.take(slice(start, stop))

    def take(self, rows: slice | np.ndarray) -> Messages:
        """The rows selected by a slice, a boolean mask or indices, as new Messages (same
        source, types and skip counts)."""
        return Messages(self.timestamp[rows], self.can_id[rows], self.dlc[rows], self.payload[rows], self.label[rows],
                        self.source, self.attack_type, self.skipped_rows, list(self.skipped_examples),
                        self.skipped_attack_rows, self.skipped_unlabelled_rows,
                        None if self.row_type is None else self.row_type[rows], self.type_names,
                        dict(self.dropped_frames), None if self.restart is None else self.restart[rows],
                        self.timeline_restarts, list(self.timeline_examples), dict(self.left_out_channels))

    @property
    def message_attack_type(self) -> np.ndarray:
        """Per-message attack type: ``row_type``'s name where given, else the recording's type
        where labelled; ``normal`` for normal messages."""
        if self.row_type is not None:
            names = np.array(self.type_names, dtype=object)[self.row_type]
            return np.where(self.label.astype(bool), names, "normal")
        return np.where(self.label.astype(bool), self.attack_type, "normal")


_COLUMN_TYPES = {"timestamp": np.float64, "can_id": np.uint32, "dlc": np.uint8, "payload": np.uint8, "label": np.uint8}
_COLUMN_HINTS = {
    "timestamp": "seconds as finite numbers >= 0 (datetimes: (t - t[0]) / np.timedelta64(1, 's'))",
    "can_id": ("arbitration IDs as unsigned integers (hex text: int(text, 16)); an extended (29-bit) ID with "
               "EXTENDED_ID_FLAG set (can_id | kdkit.data.readers.EXTENDED_ID_FLAG)"),
    "dlc": "data length codes 0..8",
    "payload": "[N, 8] bytes 0..255, zero past the dlc",
    "label": "1 for an attack message, 0 for a normal one",
}


def _as_column(name: str, value, dtype) -> np.ndarray:
    """``value`` (an array, a pandas column, a list) as a Messages column of ``dtype``, when every
    value is exactly representable; else a ValueError naming the column, the row and the value."""
    where = f"Messages.{name}"
    hint = _COLUMN_HINTS[name]
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: not an array ({type(value).__name__}: {err}); expected {hint}") from None
    kind = arr.dtype.kind
    if kind not in "biuf":
        sample = repr(arr.item(0)) if arr.size else "none"
        raise ValueError(f"{where} holds {arr.dtype} values (e.g. {sample}); expected {hint}")
    if dtype is np.float64 or kind == "b":
        return arr.astype(dtype)
    flat = arr.reshape(-1)
    if kind == "f":
        bad = np.flatnonzero(~np.isfinite(flat) | (flat != np.round(flat)))
        if bad.size:
            raise ValueError(f"{where}{_row(arr, int(bad[0]))} is {flat[bad[0]].item()!r}, not a whole number; "
                             f"expected {hint}")
    top = np.iinfo(dtype).max
    bad = np.flatnonzero((flat < 0) | (flat > top))
    if bad.size:
        raise ValueError(f"{where}{_row(arr, int(bad[0]))} is {flat[bad[0]].item()!r}, outside 0..{top}; "
                         f"expected {hint}")
    return arr.astype(dtype)


def _row(arr: np.ndarray, flat_index: int) -> str:
    """``[i]`` / ``[i, j]``: where a flat index lies in ``arr``."""
    return "[" + ", ".join(str(int(i)) for i in np.unravel_index(flat_index, arr.shape)) + "]" if arr.ndim else ""


def _check_values(m: Messages) -> None:
    """The value rules of a Messages table (cheap reductions; a row named when one is broken): what
    every reader guarantees, so that a table built in Python is one :func:`write_ctt_csv` can write
    and the readers give back, the same."""
    t = m.timestamp
    if not (t.min() >= 0 and t.max() < np.inf):  # (a NaN makes both NaN, and both comparisons False)
        i = int(np.flatnonzero(~np.isfinite(t) | (t < 0))[0])
        raise ValueError(f"Messages.timestamp[{i}] is {t[i].item()!r}; expected {_COLUMN_HINTS['timestamp']}"
                         + (" (shift the clock: t - t.min())" if np.isfinite(t[i]) else ""))
    if int(m.dlc.max()) > 8:
        i = int(np.argmax(m.dlc > 8))
        raise ValueError(f"Messages.dlc[{i}] is {int(m.dlc[i])}; expected {_COLUMN_HINTS['dlc']} (kdkit reads classic "
                         f"CAN: a CAN FD frame of more than 8 bytes has no place in a table)")
    if int(m.dlc.min()) < 8:  # (every classic frame full, the usual case, costs one reduction)
        short = np.flatnonzero(m.dlc < 8)
        beyond = (m.payload[short] != 0) & (np.arange(8, dtype=np.uint8) >= m.dlc[short, None])
        if beyond.any():
            r, b = np.argwhere(beyond)[0]
            i = int(short[r])
            raise ValueError(f"Messages.payload[{i}, {int(b)}] is {int(m.payload[i, b])} past the row's dlc "
                             f"{int(m.dlc[i])}; expected {_COLUMN_HINTS['payload']} (the readers give zeros there, and "
                             "write_ctt_csv writes the first dlc bytes only; zero them: "
                             "payload[np.arange(8) >= dlc[:, None]] = 0)")
    if int(m.label.max()) > 1:
        i = int(np.argmax(m.label > 1))
        raise ValueError(f"Messages.label[{i}] is {int(m.label[i])}; expected {_COLUMN_HINTS['label']}")
    if int(m.can_id.max()) > MAX_STANDARD_ID:  # (the usual case, every ID standard, costs one reduction)
        ext = (m.can_id & np.uint32(EXTENDED_ID_FLAG)) != 0
        raw = m.can_id & np.uint32(~EXTENDED_ID_FLAG & 0xFFFFFFFF)
        bad = np.flatnonzero(np.where(ext, raw > MAX_CAN_ID, raw > MAX_STANDARD_ID))
        if bad.size:
            i = int(bad[0])
            v = int(m.can_id[i])
            fix = (f"if it is the extended ID 0x{v:X}, set EXTENDED_ID_FLAG: can_id | kdkit.data.readers.EXTENDED_ID_FLAG"
                   if v <= MAX_CAN_ID else "an extended ID has at most 29 bits")
            raise ValueError(f"Messages.can_id[{i}] is 0x{v:X}: above 0x7FF, the largest standard (11-bit) ID, and not "
                             f"flagged extended ({fix})")


def attack_type_from_name(path: str | Path) -> str:
    """Attack type from a file name: ``DoS-kia.csv.gz`` -> ``DoS``, ``Fuzzy_dataset.csv`` -> ``fuzzing``."""
    stem = Path(path).name.lower()
    for suffix in (".gz", ".csv", ".txt", ".log", ".asc", ".blf", ".trc"):
        stem = stem.removesuffix(suffix)
    if stem.startswith(("attack-free", "attack_free", "normal")):
        return "attack-free"
    head = re.split(r"[-_ .]", stem, maxsplit=1)[0]
    return _ATTACK_ALIASES.get(head, head or "unknown")


def _string_parts(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [n+1], data uint8) of a pyarrow string or binary array, zero-copy."""
    if pa.types.is_string(arr.type) or pa.types.is_binary(arr.type):
        off_dtype = np.int32
    elif pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type):
        off_dtype = np.int64
    else:
        raise TypeError(f"expected a string array, got {arr.type}")
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=off_dtype, count=len(arr) + 1, offset=arr.offset * np.dtype(off_dtype).itemsize)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    return offsets, data


def _hex_values(chars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ASCII characters (uint8) -> (nibble values uint8, True where not a hex digit)."""
    digit = chars - np.uint8(48)  # '0'..'9' -> 0..9; anything else wraps or lands above 9
    letter = (chars | np.uint8(0x20)) - np.uint8(87)  # 'a'..'f' and 'A'..'F' -> 10..15
    bad = ~((digit <= 9) | ((letter - np.uint8(10)) <= 5))
    return np.minimum(digit, letter), bad  # a digit's `letter` wraps above 200, a letter's `digit` is >= 17


def _gather(values: np.ndarray, starts: np.ndarray, width: int, step: int = 1) -> np.ndarray:
    """Rows ``values[s : s + width*step : step]`` for every start ``s`` (zero past the end), as [n, width]."""
    padded = np.zeros(values.size + width * step, values.dtype)
    padded[:values.size] = values
    view = np.lib.stride_tricks.as_strided(padded, (values.size + 1, width), (padded.strides[0], padded.strides[0] * step),
                                           writeable=False)
    return view[starts]


def _bad_rows(bad_chars: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Rows (of a string array with ``offsets``) holding at least one flagged character."""
    rows = np.zeros(offsets.shape[0] - 1, bool)
    if bad_chars.any():
        pos = np.flatnonzero(bad_chars) + offsets[0]
        rows[np.searchsorted(offsets, pos, side="right") - 1] = True
    return rows


def parse_hex_ids(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Hex CAN IDs (1..8 digits) -> (uint32 values, ok mask). All-digit IDs are hex too.

    An ID of 8 digits is a 29-bit extended ID (at most ``0x1FFFFFFF``; its value carries
    :data:`EXTENDED_ID_FLAG`); a shorter one is an 11-bit standard ID, so above ``0x7FF`` it is
    not ok (see :func:`id_problem`).
    """
    offsets, data = _string_parts(arr)
    n = offsets.shape[0] - 1
    lengths = np.diff(offsets)
    chars = data[offsets[0]:offsets[-1]]
    nib, bad = _hex_values(chars)
    ok = (lengths >= 1) & (lengths <= 8) & ~_bad_rows(bad, offsets)
    first = int(lengths[0]) if n else 0
    if n and 1 <= first <= 8 and (lengths == first).all():
        block = nib.reshape(n, first).astype(np.uint32)  # uniform width: plain positional sum
        value = block[:, 0].copy()
        for j in range(1, first):
            value = (value << 4) | block[:, j]
        ok &= value <= (MAX_CAN_ID if first == 8 else MAX_STANDARD_ID)
        if first == 8:
            value |= np.uint32(EXTENDED_ID_FLAG)
    else:
        block = _gather(nib, offsets[:-1] - offsets[0], 8).astype(np.uint32)
        value = np.zeros(n, np.uint32)
        for j in range(8):
            value = np.where(j < lengths, (value << 4) | block[:, j], value)
        ok &= np.where(lengths == 8, value <= MAX_CAN_ID, value <= MAX_STANDARD_ID)
        value = np.where(lengths == 8, value | np.uint32(EXTENDED_ID_FLAG), value)
    return value, ok


def id_problem(text: str | bytes) -> str:
    """Why a CAN ID cell is not valid, as the end of an error message (for the rows
    :func:`parse_hex_ids` flags)."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if re.fullmatch(r"0[xX][0-9A-Fa-f]{1,8}", text):
        return "not a CAN ID as this layout writes them: hex digits without '0x' (a column mapping reads them)"
    if not re.fullmatch(r"[0-9A-Fa-f]{1,8}", text):
        return "not a hex CAN ID of 1-8 digits"
    value = int(text, 16)
    if len(text) == 8:
        return f"0x{value:X} is above 0x1FFFFFFF, the largest 29-bit ID"
    decimal = (" If the column holds decimal IDs (pandas' to_csv writes them so), read the file with a column "
               "mapping with id_base = 10 (README, 'Bring your own data')." if text.isdigit() else "")
    return (f"0x{value:X} is above 0x7FF, the largest 11-bit ID, but has only {len(text)} hex digits; "
            f"a 29-bit extended ID is written with 8 ({value:08X}).{decimal}")


def parse_hex_payload(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hex payloads without spaces (0..16 digits, even) -> (uint8 [n,8], dlc uint8, ok)."""
    offsets, data = _string_parts(arr)
    n = offsets.shape[0] - 1
    lengths = np.diff(offsets)
    chars = data[offsets[0]:offsets[-1]]
    nib, bad = _hex_values(chars)
    ok = (lengths <= 16) & (lengths % 2 == 0) & ~_bad_rows(bad, offsets)
    dlc = np.minimum(lengths // 2, 8).astype(np.uint8)
    if n and lengths[0] == 16 and (lengths == 16).all():
        pairs = nib.reshape(n, 8, 2)  # every payload has 8 bytes: no gather, no padding
        return (pairs[:, :, 0] << 4) | pairs[:, :, 1], dlc, ok
    # byte value of every pair of adjacent characters; a row's bytes sit at its start + 0, 2, 4...
    byte = np.empty_like(nib)
    byte[:-1] = (nib[:-1] << 4) | nib[1:]
    byte[-1:] = 0
    payload = _gather(byte, offsets[:-1] - offsets[0], 8, step=2)
    short = np.flatnonzero(dlc < 8)  # zero the bytes past a short payload's end (they belong to the next row)
    if short.size:
        payload[short] *= np.arange(8, dtype=np.uint8) < dlc[short, None]
    return payload, dlc, ok


def _parse_float(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Strings -> (float64, ok). Fast path: one pyarrow cast; on failure find the bad rows."""
    if pa.types.is_binary(arr.type):
        arr = arr.view(pa.string())
    try:
        values = pc.cast(arr, pa.float64())
        ok = np.ones(len(arr), bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # what pyarrow's parser accepts (no spaces); nan/inf are caught by isfinite below
        ok = pc.match_substring_regex(arr.view(pa.binary()),
                                      r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$").to_numpy(zero_copy_only=False)
        values = pc.cast(pc.if_else(pa.array(ok), arr, "0"), pa.float64())
    out = values.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    ok &= np.isfinite(out)
    return out, ok


def _text(value: object) -> str:
    """A cell for an error message: bytes decoded leniently, at most 80 characters."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return repr(str(value)[:80])


def _without_hints(problem: str) -> str:
    for hint in _HINTS:
        problem = problem.replace(hint, "")
    return problem


class _BadRows:
    """Collects bad rows; raises on the first one unless skipping."""

    def __init__(self, path: Path, mode: OnBadRows):
        if mode not in ("error", "skip"):
            raise ValueError(f"on_bad_rows must be 'error' or 'skip', got {mode!r}")
        self.path, self.mode = path, mode
        self.count = 0
        self.attack = 0
        self.unlabelled = 0
        self.examples: list[str] = []
        self._found: list[tuple[int, str]] = []  # (line, example) of the examples
        # error mode: the line of the first row whose time-order verdict still waits for rows after it
        # (:class:`_TimeOrder` sets it), and a bad row below it held back until that verdict is in
        self.waiting_line: Callable[[], int | None] = lambda: None
        self._deferred: tuple[int | None, str] | None = None
        self.restarts = 0  # new timelines (the clock restarted, :class:`_TimeOrder`)
        self.restart_examples: list[str] = []
        self._last_ts = -np.inf  # the last row handed out (a row earlier than the one before it starts a timeline)

    def check(self, ok: np.ndarray, line_of: Callable[[int], int | None], describe: Callable[[int], str],
              earlier: Sequence[tuple[int, str]] = (), label: np.ndarray | None = None,
              label_ok: np.ndarray | None = None) -> None:
        """Report every row where ``ok`` is False, plus ``earlier`` (line, problem) pairs found
        by the parser (rows without a readable label). In error mode the first bad line of the
        file raises.

        Args:
            ok: True for the rows kept.
            line_of: row index -> line in the file (None where the format has no lines).
            describe: row index -> the problem.
            earlier: (line, problem) of rows the parser dropped before ``ok`` was computed.
            label: per-row label (1 = attack), to count the skipped attack rows.
            label_ok: where ``label`` could be read (default: everywhere).
        """
        bad = np.flatnonzero(~ok)
        found = list(earlier) + [(line_of(int(i)), describe(int(i))) for i in bad[:5]]
        found.sort(key=lambda f: -1 if f[0] is None else f[0])
        if not found:
            self.due()
            return
        if self.mode == "error":
            first = found[0]
            if self._deferred is not None and first[0] is not None and self._deferred[0] < first[0]:
                first = self._deferred
            wait = self.waiting_line()
            if wait is not None and first[0] is not None and first[0] > wait:
                # a row above it waits for the rows after it (a run behind: a restarted clock, or rows going
                # backwards): it may be the file's first bad row, which the error must name, as a whole read does
                self._deferred = first
                return
            raise DataFormatError(self.path, *first)
        self.count += int(bad.size) + len(earlier)
        self.unlabelled += len(earlier)
        if label is not None:
            known = label_ok[bad] if label_ok is not None else np.ones(bad.size, bool)
            self.attack += int(((label[bad] == 1) & known).sum())
            self.unlabelled += int((~known).sum())
        else:
            self.unlabelled += int(bad.size)
        # several calls (a streamed file's chunks) keep the file's first five by line, without the advice on
        # skipping that an error gives (these rows were skipped). By line, not by call: a row whose verdict waited
        # for the next block is reported after a bad row below it, and a whole read and a streamed one must agree
        self._found = sorted([*self._found, *((-1 if line is None else line, f"{_where(self.path, line)}: "
                                               f"{_without_hints(problem)}") for line, problem in found)],
                             key=lambda f: f[0])[:5]
        self.examples = [text for _, text in self._found]

    def lead(self, example: str) -> None:
        """An example named before every row's (a truncated file's loss): it stays first."""
        self._found = [(-2, example), *self._found][:5]
        self.examples = [text for _, text in self._found]

    def due(self) -> None:
        """Raise the bad row held back (error mode) once no row above it waits for its verdict."""
        if self._deferred is not None:
            wait = self.waiting_line()
            if wait is None or self._deferred[0] is None or wait > self._deferred[0]:
                raise DataFormatError(self.path, *self._deferred)

    def restarted(self, where: str, what: str) -> None:
        """A new timeline starts at ``where`` (``line 12``): counted, the first five described."""
        self.restarts += 1
        if len(self.restart_examples) < 5:
            self.restart_examples.append(f"{self.path} {where}: {what}")

    def messages(self, *arrays: np.ndarray, source: str, attack_type: str) -> Messages:
        """The kept rows as Messages, with this collector's counts. The rows kept never go back in
        time but where a new timeline starts: those rows are marked (``Messages.restart``)."""
        restart = None
        ts = arrays[0]
        if self.restarts and ts.shape[0]:
            flags = ts < np.concatenate([[self._last_ts], ts[:-1]])
            restart = flags if flags.any() else None
        if ts.shape[0]:
            self._last_ts = float(ts[-1])
        return Messages(*arrays, source, attack_type, self.count, self.examples, self.attack, self.unlabelled,
                        restart=restart, timeline_restarts=self.restarts,
                        timeline_examples=list(self.restart_examples))


_TIME_HINT = ("timestamps must not decrease: if rows are out of order, sort the file by time, or skip such rows with "
              "--on-bad-rows skip (on_bad_rows='skip' in Python); a clock that restarts is read as a new timeline from "
              "8 rows on, and fewer rows are skipped so")
_GLITCH_HINT = ("a glitched timestamp, or rows out of order: correct, move or delete that row, or skip such rows "
                "with --on-bad-rows skip (on_bad_rows='skip' in Python); only that row is skipped, not the rows "
                "after it")
# what to do about a row, said in an error; a skipped row's example needs none of it
_HINTS = (f" ({_TIME_HINT})", f" ({_GLITCH_HINT})")
_FIXPOINT_ROUNDS = 8  # vectorized passes over a block's glitches before the row-by-row pass


RESTART_ROWS = 8  # rows in a row behind the rows before them, in order among themselves: the clock restarted
_KEEP, _BACK, _GLITCH, _RESTART = 0, 1, 2, 3  # a good row's verdict (_RESTART: kept, the first of a new timeline)


@dataclass
class _Pending:
    """Good rows at a block's end whose verdict waits for the rows after them: the last row kept
    so far (a glitch, if the row after it says so), or up to ``RESTART_ROWS - 1`` rows behind the
    rows before them and in order among themselves (a restarted clock, if enough such rows follow;
    else rows going backwards)."""

    ts: np.ndarray
    shown: list[str]              # their timestamps as written
    where: list[str]              # "line 12" / "frame 12", for messages
    lines: list[int | None]       # for the bad-row report
    columns: tuple                # their Messages columns, handed out if they are kept

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def tail(self, start: int) -> _Pending | None:
        return None if start >= len(self) else _Pending(
            self.ts[start:], self.shown[start:], self.where[start:], self.lines[start:],
            tuple(c[start:] for c in self.columns))


def _decide(g: np.ndarray, floor: float, final: bool, ordered: bool = False) -> tuple[np.ndarray | None, int, list[int]]:
    """The verdicts on good rows ``g`` (``_KEEP`` ... ``_RESTART``; None: every row kept), given the
    largest timestamp kept before them on the current timeline (``floor``): ``(verdicts, first
    undecided row, restart rows)``. Unless ``final`` (nothing follows), the rows from the first
    undecided one on wait for the rows after them (:class:`_Pending`). ``ordered``: the caller knows
    ``g`` never decreases (its in-order check is not made twice on the hot path)."""
    m = g.size
    if m == 0:
        return None, 0, []
    if g[0] >= floor and (ordered or not (g[1:] < g[:-1]).any()):  # in order (the usual case): the last row waits
        return None, m if final else m - 1, []
    codes = np.zeros(m, np.int8)
    restarts: list[int] = []
    start, base, end = 0, floor, m
    while True:
        sub = g[start:]
        back, glitch = _order_block(sub, base)
        part = np.where(back, _BACK, np.where(glitch, _GLITCH, _KEEP)).astype(np.int8)
        restart = wait = None
        if back.any():
            restart, wait = _restart_run(sub, glitch, base, final)
        if restart is not None:
            codes[start:start + restart] = part[:restart]
            start += restart
            restarts.append(start)
            base = -np.inf  # the new timeline: its first row is kept
            continue
        if wait is not None:
            codes[start:start + wait] = part[:wait]
            end = start + wait
        else:
            codes[start:] = part  # a last row behind waits above: the last row here is kept, and waits
            end = m if final else m - 1
        break
    codes[restarts] = _RESTART
    return codes, end, restarts


def _restart_run(sub: np.ndarray, glitch: np.ndarray, base: float, final: bool) -> tuple[int | None, int | None]:
    """Where a new timeline starts among good rows ``sub``, and else where a run behind that the
    block's end cuts short starts (its rows wait for the next block; never when ``final``):
    ``(restart, wait)``, None for none. ``glitch``, ``base``: :func:`_order_block`'s.

    A run is :data:`RESTART_ROWS` rows in order among themselves, all behind the rows kept before its
    first (in order: its last is). A lone row out of line inside it (a *spike*: later than the row
    after it, which follows on from the row before it) is passed over, not a row of the run: a
    glitched timestamp within 8 rows of a restart broke the restart (those rows were read as going
    backwards, an error naming the restart's row), where the spike is the one row wrong. The spike is
    then judged on the new timeline (a glitch there)."""
    n, R = sub.size, RESTART_ROWS
    spike = np.zeros(n, bool)
    if n >= 3:
        spike[1:-1] = (sub[1:-1] > sub[2:]) & (sub[:-2] <= sub[2:])
    idx = np.flatnonzero(~spike)  # the rows that count, spikes passed over
    v, floor = sub[idx], _max_before(sub, glitch, base)[idx]
    c = idx.size
    down = np.concatenate([[0, 0], np.cumsum(v[1:] < v[:-1])])  # down[j + 1]: steps down among v[:j + 1]
    if c >= R:
        k = np.arange(c - R + 1)
        hit = np.flatnonzero((down[k + R] == down[k + 1]) & (v[k + R - 1] < floor[k]))
        if hit.size:
            return int(idx[hit[0]]), None
    if final:
        return None, None
    k = np.arange(max(c - R + 1, 0), c)  # rows k.. to the block's end: behind and in order, fewer than R
    hit = np.flatnonzero((down[c] == down[k + 1]) & (v[c - 1] < floor[k]))
    if hit.size:
        return None, int(idx[k[hit[0]]])
    if c >= 2:  # the same up to the block's last row, which may be a spike (the next block says)
        k = np.arange(max(c - R, 0), c - 1)
        hit = np.flatnonzero((down[c - 1] == down[k + 1]) & (v[c - 2] < floor[k]))
        if hit.size:
            return None, int(idx[k[hit[0]]])
    return None, None


class _TimeOrder:
    """The time order of one recording read block by block (a whole read is one final block).

    A row whose fields are good and whose timestamp is not negative ("good") is
    - *backwards* when it is earlier than a row kept before it;
    - a *glitch* when it is not, but the next good row is earlier than it and not earlier than
      the rows kept before it: one row out of line with both its neighbours (a timestamp with a
      wrong digit, a frame stamped in the future). It is the row skipped (or named by the
      error), not every row after it, which its timestamp would otherwise put "in the past";
    - the first row of a *new timeline* when it and the :data:`RESTART_ROWS` - 1 good rows after
      it are all earlier than the rows kept before them and in order among themselves (a lone row
      out of line among them, later than the row after it, which follows on from the one before,
      is passed over: :func:`_restart_run`): the clock restarted (a logger restarted, two
      recordings in one file). It is kept and the rows after it are judged on its timeline (that
      lone row is a glitch there); the reader's Messages mark it (``Messages.restart``) and
      windows never cross it;
    - kept otherwise. The rows kept never go back in time within a timeline.

    The good rows at a block's end whose verdict needs rows after them (:class:`_Pending`) wait
    for the next block: :meth:`check` decides them with it, the reader hands out the ones kept
    first (:meth:`release`) and keeps the block's own undecided rows back (:meth:`hold`) until
    then; :meth:`close` decides the last ones. The result is the same wherever the blocks are cut.
    """

    def __init__(self, bad: _BadRows) -> None:
        self.bad = bad
        bad.waiting_line = self._waiting_line
        self.floor, self.floor_at = -np.inf, ("", "")  # the last kept row's timestamp, and where it is
        self.pending: _Pending | None = None
        self._last: _Order | None = None  # the last check, for hold()

    def check(self, ts: np.ndarray, fields_ok: np.ndarray, shown: Callable[[int], str],
              where: Callable[[int], str], final: bool = False) -> _Order:
        """The verdicts on a block's rows and on the rows pending from the blocks before
        (``final``: nothing follows; a whole read)."""
        n = ts.shape[0]
        in_order = bool(n and ts[0] >= 0 and fields_ok.all() and not (ts[1:] < ts[:-1]).any())
        if in_order:  # every row good and in order (the usual case): no index, no copy
            gi, g, negative = None, ts, None
        else:
            negative = fields_ok & (ts < 0)
            gi = np.flatnonzero(fields_ok & ~negative)
            g = ts[gi]
        pending = self.pending
        k = len(pending) if pending is not None else 0
        comb = np.concatenate([pending.ts, g]) if k else g
        codes, end, restarts = _decide(comb, self.floor, final, ordered=in_order and not k)
        order = _Order(n, gi, g, negative, codes, k, end, shown, where, pending, self.floor, self.floor_at)
        if codes is None:
            kept = end - 1
        else:
            kept_rows = np.flatnonzero((codes[:end] == _KEEP) | (codes[:end] == _RESTART))
            kept = int(kept_rows[-1]) if kept_rows.size else -1
        for c in restarts:
            _, before = order.kept_before(c)
            self.bad.restarted(order.at(c)[1], f"the clock goes back from {before[0]} ({before[1]}) to "
                                               f"{order.at(c)[0]} and stays there: a new timeline starts")
        if kept >= 0:
            self.floor, self.floor_at = float(comb[kept]), order.at(kept)
        self._last = order
        return order

    def _waiting_line(self) -> int | None:
        """The line of the first row whose verdict waits (None: none waits, or it has no line)."""
        return self.pending.lines[0] if self.pending is not None and len(self.pending) else None

    def release(self, order: _Order, bad: _BadRows) -> tuple:
        """The pending rows this check decided kept (see :meth:`_release`); then a bad row held back
        below them is raised, if no row above it waits any more (error mode)."""
        out = self._release(order, bad)
        bad.due()
        return out

    def _release(self, order: _Order, bad: _BadRows) -> tuple:
        """The pending rows this check decided kept, as columns to hand out before the block's rows
        (empty when there are none); the ones decided bad are reported to ``bad`` (which may raise)."""
        pending = self.pending
        if pending is None or not order.k:
            return ()
        done = min(order.end, order.k)
        if not done:
            return ()
        self.pending = pending.tail(done)
        codes = order.codes[:done] if order.codes is not None else np.zeros(done, np.int8)
        keep = (codes == _KEEP) | (codes == _RESTART)
        if not keep.all():
            bad.check(keep, lambda i: pending.lines[i], order.describe_good,
                      label=pending.columns[4][:done] if len(pending.columns) > 4 else None)
        if not keep.any():
            return ()
        return tuple(c[:done][keep] if not keep.all() else c[:done] for c in pending.columns)

    def hold(self, columns: Sequence[np.ndarray], line_of: Callable[[int], int | None]) -> tuple:
        """This block's kept columns, less its rows whose verdict waits for the next block (kept
        here; ``line_of`` gives a block row's line for the bad-row report)."""
        order, self._last = self._last, None
        if order is None:
            return tuple(columns)
        waiting = order.g.shape[0] - max(order.end - order.k, 0)  # the block's undecided good rows: its last ones
        if waiting <= 0:
            return tuple(columns)
        first = order.g.shape[0] - waiting
        rows = [order.row(j) for j in range(first, order.g.shape[0])]
        new = _Pending(order.g[first:].copy(), [order.shown(r) for r in rows], [order.where(r) for r in rows],
                       [line_of(r) for r in rows], tuple(c[-waiting:] for c in columns))
        old = self.pending
        self.pending = new if old is None else _Pending(
            np.concatenate([old.ts, new.ts]), old.shown + new.shown, old.where + new.where, old.lines + new.lines,
            tuple(np.concatenate([a, b]) for a, b in zip(old.columns, new.columns)))
        return tuple(c[:-waiting] for c in columns)

    def close(self) -> tuple:
        """The pending rows at the end of the recording, decided (nothing follows them): the kept
        ones' columns; the others are reported to the bad-row collector (which may raise)."""
        if self.pending is None:
            self.bad.due()
            return ()
        order = self.check(np.zeros(0), np.zeros(0, bool), str, str, final=True)
        self._last = None
        return self.release(order, self.bad)


def _glitch_text(text: str, before: tuple[str, str], after: tuple[str, str]) -> str:
    """A glitch's message: its timestamp, the row after it and the one kept before it (none at the start)."""
    prev = f", which follows on from the row before it ({before[0]} on {before[1]})" if before[0] else \
        " (the first row)"
    return (f"timestamp {text} is out of line: later than the row after it ({after[0]} on {after[1]}){prev} "
            f"({_GLITCH_HINT})")


def _max_before(g: np.ndarray, dropped: np.ndarray | None, base: float) -> np.ndarray:
    """The largest kept timestamp before each good row (``base``: of the blocks before)."""
    out = np.full(g.shape, base, np.float64)
    if g.size > 1:
        vals = np.where(dropped, -np.inf, g) if dropped is not None else g.copy()
        np.maximum.accumulate(vals, out=vals)
        np.maximum(vals[:-1], base, out=out[1:])
    return out


def _order_block(g: np.ndarray, base: float) -> tuple[np.ndarray, np.ndarray]:
    """(backwards, glitch) over a block's good rows, as :class:`_TimeOrder` defines them; the last
    row is never a glitch here (its next row is in the next block)."""
    m = g.size
    glitch = np.zeros(m, bool)
    for _ in range(_FIXPOINT_ROUNDS):  # marking a glitch only lowers the maxima after it: glitches only grow
        before = _max_before(g, glitch, base)
        back = g < before
        new = np.zeros(m, bool)
        new[:-1] = ~back[:-1] & (g[1:] < g[:-1]) & (g[1:] >= before[:-1])
        if not (new & ~glitch).any():
            return back, glitch
        glitch |= new
    back = np.zeros(m, bool)  # a cascade of glitches: row by row
    glitch[:] = False
    top = base
    for k in range(m):
        if g[k] < top:
            back[k] = True
        elif k + 1 < m and top <= g[k + 1] < g[k]:
            glitch[k] = True
        else:
            top = g[k]
    return back, glitch


class _Order:
    """The time-order verdicts of one check (:meth:`_TimeOrder.check`): over the rows pending from
    the blocks before (the first ``k`` good rows it judged) and the block's good rows after them;
    masks over the block's rows."""

    def __init__(self, n: int, gi: np.ndarray | None, g: np.ndarray, negative: np.ndarray | None,
                 codes: np.ndarray | None, k: int, end: int, shown: Callable[[int], str], where: Callable[[int], str],
                 pending: _Pending | None, base: float, base_at: tuple[str, str]):
        self.n, self.gi, self.g, self.k, self.end = n, gi, g, k, end
        self.codes = codes  # over the pending rows and the block's good rows (None: all kept)
        self.shown, self.where, self.pending = shown, where, pending
        self.base, self.base_at = base, base_at  # the last kept row before this check
        own = codes[k:] if codes is not None else None
        self.negative = negative if negative is not None else np.zeros(n, bool)
        self.any_bad = bool((negative is not None and negative.any())
                            or (own is not None and ((own == _BACK) | (own == _GLITCH)).any()))
        self.backwards = self._spread(own, _BACK)
        self.glitch = self._spread(own, _GLITCH)
        self.restart = self._spread(own, _RESTART)

    def _spread(self, own: np.ndarray | None, code: int) -> np.ndarray:
        out = np.zeros(self.n, bool)
        if own is not None:
            out[self.gi if self.gi is not None else slice(None)] = own == code
        return out

    @property
    def bad(self) -> np.ndarray:
        """The block's rows out of time order (negative, backwards or a glitch)."""
        return self.negative | self.backwards | self.glitch if self.any_bad else self.negative

    def row(self, j: int) -> int:
        """The block row of the block's good row ``j``."""
        return int(self.gi[j]) if self.gi is not None else j

    def at(self, c: int) -> tuple[str, str]:
        """(timestamp as written, where) of judged row ``c`` (pending rows first)."""
        if c < self.k:
            return self.pending.shown[c], self.pending.where[c]
        r = self.row(c - self.k)
        return self.shown(r), self.where(r)

    def _ts(self, c: int) -> float:
        return float(self.pending.ts[c]) if c < self.k else float(self.g[c - self.k])

    def kept_before(self, c: int) -> tuple[float, tuple[str, str]]:
        """The largest kept timestamp before judged row ``c`` on its timeline, and where it is (the
        first of equal ones; ``("", "")`` where there is none)."""
        codes = self.codes
        idx = np.arange(c) if codes is None else np.flatnonzero((codes[:c] == _KEEP) | (codes[:c] == _RESTART))
        if not idx.size:
            return self.base, (self.base_at if self.base > -np.inf else ("", ""))
        j = int(idx[-1])
        value = self._ts(j)
        restarts = np.zeros(0, np.int64) if codes is None else np.flatnonzero(codes[:j + 1] == _RESTART)
        if not restarts.size and value <= self.base:  # (an equal one may lie in the blocks before)
            return self.base, self.base_at
        lo = int(restarts[-1]) if restarts.size else 0
        first = next(i for i in idx[idx >= lo].tolist() if self._ts(i) == value)
        return value, self.at(first)

    def describe_good(self, c: int) -> str:
        """The time problem of judged row ``c`` (backwards or a glitch)."""
        shown = self.at(c)[0]
        _, at = self.kept_before(c)
        if self.codes is not None and self.codes[c] == _GLITCH:
            return _glitch_text(shown, at, self.at(c + 1))
        return f"timestamp {shown} goes backwards: earlier than {at[0]} on {at[1]} ({_TIME_HINT})"

    def describe(self, i: int) -> str:
        """The time problem of block row ``i`` (negative, backwards or a glitch)."""
        if self.negative[i]:
            return f"timestamp {self.shown(i)} is negative (timestamps are seconds >= 0)"
        j = int(np.searchsorted(self.gi, i)) if self.gi is not None else i
        return self.describe_good(self.k + j)


def _ascii_only(raw: bytes) -> tuple[bytes, set[int]]:
    """``raw`` with every non-ASCII byte (invalid UTF-8 included) replaced by ``?``, and the
    1-based lines that held one. No row of a CAN text format has such bytes: they make the row
    bad, and the ``?`` keeps the row bad without a decoding error anywhere."""
    if raw.isascii():
        return raw, set()
    chars = np.frombuffer(raw, np.uint8)
    high = np.flatnonzero(chars >= 0x80)
    newlines = np.flatnonzero(chars == 10)
    lines = set((np.searchsorted(newlines, high) + 1).tolist())
    fixed = chars.copy()
    fixed[high] = ord("?")
    return fixed.tobytes(), lines


_NON_ASCII_NOTE = " (the line holds bytes that are not ASCII text, shown as '?')"


def _gunzip(raw: bytes, path: Path) -> bytes:
    """Decompress gzip data (several members too) without an extra copy for the usual one member."""
    try:
        d = zlib.decompressobj(wbits=31)
        out = d.decompress(raw)
        if d.eof and not d.unused_data:
            return out
        return gzip.decompress(raw)  # a multi-member file, or a truncated one (raises)
    except (OSError, EOFError, zlib.error) as err:
        raise DataFormatError(path, None, f"corrupt gzip data ({err})") from err


def _zipped(path: Path) -> bool:
    """A ``.zip`` holding one recording (as DAGA publishes its traces, and as users zip theirs)."""
    return path.name.lower().endswith(".zip")


def _open_bytes(path: Path) -> bytes:
    if _zipped(path):
        try:
            with zipfile.ZipFile(path) as zf:
                return zf.read(zip_recording(zf, path))
        except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as err:
            raise DataFormatError(path, None, f"corrupt or unreadable zip file ({err})") from err
    raw = path.read_bytes()
    return _gunzip(raw, path) if raw[:2] == b"\x1f\x8b" else raw


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


_HEAD_BYTES = 1 << 16


def _head(path: Path, gz: bool) -> bytes:
    """The first 64 KiB of the file, decompressed."""
    out = bytearray()
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as handle:
            while len(out) < _HEAD_BYTES and (piece := handle.read(min(1 << 13, _HEAD_BYTES - len(out)))):
                out += piece
    except EOFError as err:  # a cut .gz: its head is what could be read (the streamed read says where it is cut)
        if not out:
            raise DataFormatError(path, None, "truncated gzip file: the compressed data ends before any text could "
                                              "be read") from err
    except (OSError, zlib.error) as err:
        raise DataFormatError(path, None, f"corrupt gzip data ({err})") from err
    return bytes(out)


# --------------------------------------------------------------------------------------
# text files in blocks, in bounded memory (the streamed readers here, in loggers.py and columns.py)

_GZ_PIECE = 1 << 22  # bytes of the file read (compressed bytes inflated) at a time; corrupt-data errors name them


def _cut_lines(buf: bytes) -> tuple[bytes, bytes]:
    r"""``buf`` split after its last complete line (a ``\r`` at the very end may be half of a
    ``\r\n``, so it waits for the next block)."""
    cut = max(buf.rfind(b"\n"), buf.rfind(b"\r", 0, len(buf) - 1)) + 1
    return buf[:cut], buf[cut:]


class _TextBlocks:
    """A text file's bytes as blocks that end at a line end (the last block may not), ``piece``
    bytes of the file at a time: gunzipped on the fly when gzip (several members too), the one
    recording of a zip inflated on the fly when ``zipped`` (see :func:`zip_recording`).

    Corrupt compressed data raises :class:`DataFormatError` naming the compressed byte range and
    the text line it reached (gzip) or zipfile's words (zip). After the iteration ``lost`` says
    what a truncated gzip file lost (None if nothing): the blocks end with its last complete line.
    """

    def __init__(self, path: Path, piece: int = _GZ_PIECE, zipped: bool = False):
        self.path, self.piece, self.zipped = path, piece, zipped
        self.lost: str | None = None
        self.newlines = 0  # '\n' inflated so far (the text line of a corrupt byte range)

    def __iter__(self) -> Iterator[bytes]:
        if self.zipped:
            try:
                with zipfile.ZipFile(self.path) as zf, zf.open(zip_recording(zf, self.path)) as handle:
                    yield from self._plain(handle)
            except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as err:
                raise DataFormatError(self.path, None, f"unreadable or corrupt file ({err})") from err
            return
        with open(self.path, "rb") as handle:
            if handle.read(2) != b"\x1f\x8b":
                handle.seek(0)
                yield from self._plain(handle)
                return
            handle.seek(0)
            yield from self._inflated(handle)

    def _plain(self, handle) -> Iterator[bytes]:
        carry = b""
        while piece := handle.read(self.piece):
            out, carry = _cut_lines(carry + piece)
            if out:
                yield out
        if carry:
            yield carry

    def _inflated(self, handle) -> Iterator[bytes]:
        size = os.fstat(handle.fileno()).st_size
        pos, carry = 0, b""  # pos: the file offset of the next compressed byte to inflate
        pending = handle.read(self.piece)
        while True:  # one gzip member per turn
            d = _inflate.decompressobj(wbits=31)
            while not d.eof:
                if not pending:
                    pending = handle.read(self.piece)
                    if not pending:  # the file ends inside the stream: truncated
                        cut = carry.rfind(b"\n") + 1
                        line = self.newlines + 1
                        partial = f"line {line} is cut short and " if cut < len(carry) else ""
                        self.lost = (f"truncated gzip file: the compressed data ends inside the stream at byte {size}; "
                                     f"{partial}whatever followed line {line - 1} is lost")
                        if cut:
                            yield carry[:cut]
                        return
                try:
                    text = d.decompress(pending)
                except (zlib.error, _inflate.error) as err:
                    raise DataFormatError(self.path, None, f"corrupt gzip data in compressed bytes {pos}.."
                                                           f"{pos + len(pending)} (text line {self.newlines + 1}): "
                                                           f"{err}") from err
                self.newlines += text.count(b"\n")
                used = len(pending) - len(d.unused_data) if d.eof else len(pending)
                pos += used
                pending = pending[used:]
                out, carry = _cut_lines(carry + text)
                if out:
                    yield out
            # the member ended: another member, zero padding, or garbage
            if len(pending) < 2:
                pending += handle.read(self.piece)
            if pending[:2] == b"\x1f\x8b":
                pending += handle.read(max(self.piece - len(pending), 0))  # the same byte ranges as a whole read
                continue
            zeros = not pending.strip(b"\0")
            while zeros and (more := handle.read(self.piece)):
                zeros = not more.strip(b"\0")
            if not zeros:
                raise DataFormatError(self.path, None, f"corrupt gzip data: {size - pos} bytes of garbage after the "
                                                       f"gzip stream at byte {pos}")
            if carry:
                yield carry
            return


_TEXT_PIECE = 1 << 20  # text a streamed HCRL or column-mapped reader parses at a time (~15-25 k rows)


def _line_pieces(blocks: Iterable[bytes], size: int) -> Iterator[bytes]:
    r"""Text blocks re-cut into pieces of about ``size`` bytes that end after a ``\n`` (the last
    one may not): the unit a streamed CSV reader parses at once. A row never spans two pieces,
    and a ``\r\n`` is never cut."""
    carry = b""
    for block in blocks:
        buf = carry + block if carry else block
        a = 0
        while len(buf) - a >= size:
            cut = buf.find(b"\n", a + size - 1) + 1
            if not cut:
                break
            yield buf[a:cut]
            a = cut
        carry = buf[a:]
    if carry:
        yield carry


class _Chunker:
    """The good rows of a recording decoded piece by piece, handed out as Messages of exactly
    ``chunk_rows`` rows, and by :meth:`take` at the end the rest (maybe none). Every chunk carries
    the skip counts of ``bad`` so far, so the last one has the file's, and the recording's
    ``attack_type`` as it stands when the chunk is handed out. With ``type_names`` the rows carry
    per-message types (``Messages.row_type``)."""

    def __init__(self, bad: _BadRows, chunk_rows: int, source: str, attack_type: str,
                 type_names: tuple[str, ...] | None = None):
        self.bad, self.chunk_rows, self.source = bad, chunk_rows, source
        self.attack_type, self.type_names = attack_type, type_names
        self.parts: list[tuple[np.ndarray, ...]] = []  # good rows not handed out yet
        self.buffered = 0
        self.rows = 0  # good rows added so far

    def add(self, *columns: np.ndarray) -> Iterator[Messages]:
        """Buffer good rows (timestamp, can_id, dlc, payload, label and, with ``type_names``,
        row_type); hand out the chunks now full."""
        self.put(*columns)
        while self.buffered >= self.chunk_rows:
            yield self.take(self.chunk_rows)

    def put(self, *columns: np.ndarray) -> None:
        """Buffer good rows without handing out a chunk (the end of a recording: :meth:`take` next)."""
        n = columns[0].shape[0] if columns else 0
        if n:
            self.parts.append(columns)
            self.buffered += n
            self.rows += n

    def take(self, rows: int | None = None) -> Messages:
        """The next ``rows`` buffered rows (default: all of them) as Messages."""
        k = 5 if self.type_names is None else 6
        if self.parts:
            cols = [np.concatenate([p[j] for p in self.parts]) if len(self.parts) != 1 else self.parts[0][j]
                    for j in range(k)]
        else:
            cols = [np.zeros(0, np.float64), np.zeros(0, np.uint32), np.zeros(0, np.uint8), np.zeros((0, 8), np.uint8),
                    np.zeros(0, np.uint8), np.zeros(0, np.uint8)][:k]
        rows = cols[0].shape[0] if rows is None else rows
        rest = cols[0].shape[0] - rows
        self.parts = [tuple(c[rows:] for c in cols)] if rest else []
        self.buffered = rest
        msgs = self.bad.messages(*(c[:rows] for c in cols[:5]), source=self.source, attack_type=self.attack_type)
        if self.type_names is not None:
            msgs.row_type, msgs.type_names = cols[5][:rows], self.type_names
        return msgs


def _stream_text(stream, path: Path, block_bytes: int | None, zipped: bool = False) -> Iterator[Messages]:
    """The chunks of a streamed text reader: the file read ``block_bytes`` at a time (None:
    :data:`_TEXT_PIECE`) by :class:`_TextBlocks`, fed to ``stream`` in pieces of whole lines of
    about that size (``stream.feed(piece)`` hands out the chunks filled, ``stream.close()`` returns
    the last, with the file's counts). A truncated gzip file is an error once its readable part is
    read (a whole read cannot decompress it at all)."""
    size = block_bytes or _TEXT_PIECE
    blocks = _TextBlocks(path, size, zipped)
    for piece in _line_pieces(blocks, size):
        yield from stream.feed(piece)
    if blocks.lost is not None:
        raise DataFormatError(path, None, blocks.lost)
    yield stream.close()


_LOST = " (counted as 1 skipped row)"  # what a truncated gzip file's loss counts as
TRUNCATED = "is lost" + _LOST  # how a skipped row's example says the file was cut there


def truncation(examples: Iterable[str]) -> str | None:
    """What a reading's skipped-row examples (``"<path>: <problem>"``) say of a cut file, or None: a
    cut gzip stream (its text ends at the last whole line, the rest counted as 1 skipped row) or a
    cut ``.blf`` (``truncated BLF file: ...``, the objects its header counts and the file lacks)."""
    return next((e.split(": ", 1)[-1] for e in examples if TRUNCATED in e or ": truncated BLF file: " in e), None)


class _WholeLines:
    """A gzip file's text for pyarrow's CSV reader (read as it is inflated, nothing copied) that ends
    at its last complete line when the file is cut (truncated: ``EOFError`` from the inflater, whose
    failing read would lose its text): the text after what was handed out is then inflated again
    piece by piece up to the cut (:class:`_TextBlocks`, a second pass only for a cut file), and
    ``lost`` says the file was cut (the reader counts the loss as one skipped row, as for a cut
    logger file)."""

    def __init__(self, raw, path: Path):
        self.raw, self.path = raw, path
        self.handed = 0  # text bytes handed out
        self.lost, self.closed, self.rest = False, False, b""

    def read(self, n: int = -1) -> bytes:
        if self.lost:  # at most n bytes, as a file's read gives
            cut = len(self.rest) if n is None or n < 0 else n
            out, self.rest = self.rest[:cut], self.rest[cut:]
            return out
        try:
            data = self.raw.read(n)
        except EOFError:  # cut: the text after what was handed out, to the cut's last line end
            self.lost = True
            blocks, skip, tail = _TextBlocks(self.path), self.handed, []
            for block in blocks:
                if skip >= len(block):
                    skip -= len(block)
                    continue
                tail.append(block[skip:])
                skip = 0
            self.rest = b"".join(tail)
            return self.read(n)
        self.handed += len(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True
        self.raw.close()


_CTT_BATCH_BYTES = 1 << 20  # CSV parsed and decoded about 25 k rows at a time: small, reused temporaries


CHUNK_ROWS = 1 << 19  # rows per chunk a streamed recording is handed out in (~12 MB of messages)


def write_ctt_csv(msgs: Messages, path: str | Path) -> Path:
    """Write a Messages table as a can-train-and-test CSV (``.csv``, or ``.csv.gz`` compressed),
    the layout every kdkit command reads: a table built in Python (from a pandas DataFrame:
    ``Messages(timestamp=df.t, can_id=df.id, ...)``) becomes a recording of a folder dataset
    (``train_01_attack_free/drive.csv``, ``test_01_.../DoS-x.csv``; README, "Bring your own data").
    Timestamps are written exactly (``read_messages`` gives them back bit for bit), standard IDs
    with 3 hex digits, extended ones with 8. Missing folders are made; the file is written to a
    temporary file first, then renamed."""
    path = Path(path)
    if msgs.restart is not None and msgs.restart.any():
        raise ValueError(f"{path}: the table holds {int(msgs.restart.sum())} restarted clock(s) (Messages.restart): "
                         "write each timeline to a file of its own")
    ext = (msgs.can_id & np.uint32(EXTENDED_ID_FLAG)) != 0
    raw = (msgs.can_id & np.uint32(~EXTENDED_ID_FLAG & 0xFFFFFFFF)).tolist()
    lines = ["timestamp,arbitration_id,data_field,attack\n"]
    for t, i, e, d, row, lab in zip(msgs.timestamp.tolist(), raw, ext.tolist(), msgs.dlc.tolist(), msgs.payload,
                                    msgs.label.tolist()):
        lines.append(f"{t!r},{i:08X}," if e else f"{t!r},{i:03X},")
        lines.append(f"{row[:d].tobytes().hex().upper()},{lab}\n")
    data = "".join(lines).encode()
    path.parent.mkdir(parents=True, exist_ok=True)  # the README's example writes into a dataset's new folders
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(gzip.compress(data) if path.name.lower().endswith(".gz") else data)
    os.replace(tmp, path)
    return path


def read_ctt_csv(path: str | Path, on_bad_rows: OnBadRows = "error") -> Messages:
    """Read a can-train-and-test v1.5 CSV (``timestamp,arbitration_id,data_field,attack``)
    whole: the chunks of :func:`iter_ctt_csv` joined.

    Args:
        path: ``.csv`` or ``.csv.gz`` file.
        on_bad_rows: ``"error"`` (default) raises :class:`DataFormatError` at the first bad
            row; ``"skip"`` drops bad rows and counts them in ``Messages.skipped_rows``.
    """
    return concat_messages(list(iter_ctt_csv(path, on_bad_rows)))


def concat_messages(chunks: Sequence[Messages]) -> Messages:
    """The chunks of one streamed recording as one Messages; counts (skipped rows, dropped
    frames) from the last chunk, which carries the file's totals."""
    last = chunks[-1]
    if len(chunks) == 1:
        return last
    cat = lambda name: np.concatenate([getattr(c, name) for c in chunks])  # noqa: E731
    restart = None if all(c.restart is None for c in chunks) else np.concatenate(
        [c.restart if c.restart is not None else np.zeros(len(c), bool) for c in chunks])
    return Messages(cat("timestamp"), cat("can_id"), cat("dlc"), cat("payload"), cat("label"), last.source,
                    last.attack_type, last.skipped_rows, list(last.skipped_examples), last.skipped_attack_rows,
                    last.skipped_unlabelled_rows, None if last.row_type is None else cat("row_type"), last.type_names,
                    dict(last.dropped_frames), restart, last.timeline_restarts, list(last.timeline_examples),
                    dict(last.left_out_channels))


def iter_ctt_csv(path: str | Path, on_bad_rows: OnBadRows = "error", chunk_rows: int = CHUNK_ROWS,
                 block_bytes: int = _CTT_BATCH_BYTES) -> Iterator[Messages]:
    """A can-train-and-test CSV in chunks, in bounded memory whatever the file's size.

    pyarrow's streaming reader parses ``block_bytes`` of text at a time (decompressing a
    ``.gz`` on the fly); the rows are decoded and checked block by block, carrying what a
    check needs across blocks (the time order's state and the row it holds back, blank rows that
    are bad only if a row follows them, rows the parser dropped). The chunks hold the good rows of
    ``chunk_rows`` CSV rows each (a block's last good row waits for the next block, which tells
    whether it was a glitch: it may move to the next chunk); every chunk carries the skip counts so far, so the last one
    (always yielded, maybe empty) has the file's totals. Joined (:func:`concat_messages`) they
    equal the file read whole, bad-row errors (file:line) and skip counts included.

    Args:
        path: ``.csv`` or ``.csv.gz`` file.
        on_bad_rows: ``"error"`` (default) or ``"skip"``, as :func:`read_ctt_csv`.
        chunk_rows: CSV rows per chunk (default :data:`CHUNK_ROWS`).
        block_bytes: bytes pyarrow parses at a time (default 1 MiB).
    """
    path = Path(path)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    _BadRows(path, on_bad_rows)  # the mode is checked before anything is read
    if _zipped(path):  # the CSV in a zip (a spec's format "can-train-and-test" read none): read as auto reads it
        if tuple(CTT_HEADER) not in _ZIP_HEADER_READERS:
            raise RuntimeError("kdkit.data.columns is not imported (import kdkit.data first)")
        yield from _ZIP_HEADER_READERS[tuple(CTT_HEADER)][1](path, on_bad_rows=on_bad_rows, chunk_rows=chunk_rows)
        return
    gz = _is_gzip(path)
    head = _head(path, gz)
    if not head.strip():
        raise DataFormatError(path, None, "empty file (expected the header 'timestamp,arbitration_id,data_field,attack')")
    first_line, _, rest = head.partition(b"\n")
    first_line = first_line.decode("utf-8", "replace").strip().lstrip("\ufeff")
    header = [h.strip() for h in first_line.split(",")]
    if header != CTT_HEADER:
        raise DataFormatError(path, 1, f"wrong or missing header {first_line[:80]!r}; expected 'timestamp,arbitration_id,"
                                       f"data_field,attack' (the can-train-and-test layout). A CSV in another layout "
                                       f"is read through a dataset spec's column mapping (README, 'Bring your own "
                                       f"data'): make its folder a dataset with the spec and use --dataset SPEC")
    if len(head) < _HEAD_BYTES and not rest.strip():
        raise DataFormatError(path, None, "no data rows after the header")
    handed = 0
    try:
        for chunk in _CttStream(path, on_bad_rows, chunk_rows, block_bytes, gz):
            handed += len(chunk)
            yield chunk
        return
    except _UndecodableRow:
        pass
    # A row with the wrong number of fields held invalid UTF-8: pyarrow cannot even build its text
    # for the handler. Rare: read the file again (whole, in memory) with such bytes made '?', and
    # hand out only the rows after those already handed out (the rows are the same).
    raw, lines = _ascii_only(_open_bytes(path))
    for chunk in _CttStream(path, on_bad_rows, chunk_rows, block_bytes, gz, raw=raw, non_ascii=lines):
        cut = min(handed, len(chunk))
        handed -= cut
        if cut < len(chunk) or not handed:
            yield chunk.slice(cut, len(chunk)) if cut else chunk


class _UndecodableRow(Exception):
    """pyarrow could not decode a malformed row's text for the row handler (see iter_ctt_csv)."""


class _CttStream:
    """The decoding and checking state of one streamed can-train-and-test CSV (iter_ctt_csv)."""

    def __init__(self, path: Path, mode: OnBadRows, chunk_rows: int, block_bytes: int, gz: bool,
                 raw: bytes | None = None, non_ascii: set[int] | None = None):
        self.path, self.chunk_rows, self.block_bytes, self.gz, self.raw = path, chunk_rows, block_bytes, gz, raw
        self.bad = _BadRows(path, mode)
        self.non_ascii = non_ascii or set()
        self.field_errors: list[tuple[int, str]] = []  # rows the parser dropped: (line, problem), in line order
        self.consumed = 0  # field errors already reported
        self.rows = 0  # CSV rows parsed so far (not counting the dropped ones)
        self.pending: list[int] = []  # blank rows at the end so far: bad only if a row follows
        self.any_row = False
        self.order = _TimeOrder(self.bad)
        self.text: _WholeLines | None = None  # a .gz file's text (says whether the file was cut)
        self.out: list[tuple[np.ndarray, ...]] = []

    def line_of(self, row: int) -> int:
        """The 1-based file line of CSV row ``row`` (0-based, after the header)."""
        line = row + 2
        for s, _ in self.field_errors:  # rows the parser dropped shift the physical line numbers
            if s > line:
                break
            line += 1
        return line

    def _on_invalid(self, row: pacsv.InvalidRow) -> str:
        # never raise here: pyarrow would swallow the exception; collect, decide below
        note = _NON_ASCII_NOTE if row.number in self.non_ascii else ""
        problem = (f"expected 4 fields (timestamp,arbitration_id,data_field,attack), "
                   f"got {row.actual_columns}: {_text(row.text)}{note}")
        self.field_errors.append((row.number, problem))
        return "skip"

    def __iter__(self) -> Iterator[Messages]:
        def handler(row: pacsv.InvalidRow) -> str:  # a function object can carry the marker below
            return self._on_invalid(row)

        handler._kdkit_row_handler = True  # type: ignore[attr-defined]
        quiet = _RowDecodeErrors()
        options = {
            "read_options": pacsv.ReadOptions(use_threads=False, block_size=self.block_bytes, column_names=CTT_HEADER,
                                              skip_rows=1),
            "parse_options": pacsv.ParseOptions(invalid_row_handler=handler, ignore_empty_lines=False),
            # binary, not string: the hex and number parsers below validate every byte anyway
            "convert_options": pacsv.ConvertOptions(column_types={c: pa.binary() for c in CTT_HEADER},
                                                    strings_can_be_null=False, null_values=[], check_utf8=False)}
        try:
            with quiet, self._open() as stream:
                reader = pacsv.open_csv(stream, **options)
                while True:
                    try:
                        batch = reader.read_next_batch()
                    except StopIteration:
                        break
                    a = 0
                    while a < batch.num_rows:  # cut at every multiple of chunk_rows
                        b = min(batch.num_rows, a + self.chunk_rows - self.rows % self.chunk_rows)
                        self._decode(batch.slice(a, b - a))
                        a = b
                        if self.rows % self.chunk_rows == 0:
                            yield self._chunk()
        except pa.ArrowInvalid as err:
            if quiet.seen and self.raw is None:
                raise _UndecodableRow() from err
            raise DataFormatError(self.path, None, f"unreadable CSV ({err})") from err
        except (OSError, EOFError, zlib.error) as err:
            raise DataFormatError(self.path, None, f"{'corrupt gzip data' if self.gz else 'unreadable file'} ({err})") from err
        if not self.any_row and not self.field_errors and not (self.text is not None and self.text.lost):
            raise DataFormatError(self.path, None, "no data rows after the header")
        rest = self.field_errors[self.consumed:]  # rows the parser dropped after the last row
        self.consumed = len(self.field_errors)
        self.bad.check(np.ones(0, bool), self.line_of, str, rest)
        if self.text is not None and self.text.lost:
            last = self.line_of(self.rows - 1) if self.rows else 1
            cut = (f"truncated gzip file: the compressed data ends inside the stream; whatever followed line {last} "
                   f"is lost")
            if self.bad.mode == "error":
                raise DataFormatError(self.path, None, cut + "; read the part before the cut with --on-bad-rows skip "
                                                             "(on_bad_rows='skip' in Python)")
            self.bad.count += 1
            self.bad.unlabelled += 1
            self.bad.lead(f"{self.path}: {cut}{_LOST}")
        self._emit(self.order.close())
        yield self._chunk()

    def _open(self):
        """The file's text as a pyarrow stream, inflated on the fly (ISA-L when installed)."""
        if self.raw is not None:
            return pa.BufferReader(self.raw)
        if self.gz and _igzip is not None:
            self.text = _WholeLines(_igzip.open(self.path, "rb"), self.path)
            return pa.PythonFile(self.text, mode="r")
        return pa.input_stream(str(self.path), compression="gzip" if self.gz else None, buffer_size=self.block_bytes)

    def _chunk(self) -> Messages:
        parts = self.out
        self.out = []
        cols = [np.concatenate([p[j] for p in parts]) if len(parts) != 1 else parts[0][j] for j in range(5)] \
            if parts else [np.zeros(0, np.float64), np.zeros(0, np.uint32), np.zeros(0, np.uint8),
                           np.zeros((0, 8), np.uint8), np.zeros(0, np.uint8)]
        return self.bad.messages(*cols, source=str(self.path), attack_type=attack_type_from_name(self.path))

    def _decode(self, batch: pa.RecordBatch) -> None:
        """Decode and check one slice of CSV rows; keep its good rows in ``self.out``."""
        n, g0 = batch.num_rows, self.rows
        self.rows += n
        ts_a, id_a, pl_a, at_a = (_trimmed(c) for c in batch.columns)
        ts, ok_ts = _parse_float(ts_a)
        ids, ok_id = parse_hex_ids(id_a)
        payload, dlc, ok_pl = parse_hex_payload(pl_a)
        at_off, at_data = _string_parts(at_a)
        lab = np.append(at_data, np.uint8(0))[at_off[:-1]] - np.uint8(48)  # first character: '0'/'1' -> 0/1
        ok_lab = (np.diff(at_off) == 1) & (lab <= 1)
        lengths = [np.diff(_string_parts(c)[0]) for c in (ts_a, id_a, pl_a)]
        blank = (lengths[0] == 0) & (lengths[1] == 0) & (lengths[2] == 0) & (np.diff(at_off) == 0)
        filled = np.flatnonzero(~blank)
        k = int(filled[-1]) + 1 if filled.size else 0  # blank rows after the last row: bad if a row follows
        earlier: list[tuple[int | None, str]] = []
        if k:
            self.any_row = True
            earlier = [(self.line_of(r), "empty row") for r in self.pending]
            self.pending = []
            last = self.line_of(g0 + k - 1)
            take = self.consumed
            while take < len(self.field_errors) and self.field_errors[take][0] <= last:
                take += 1
            earlier += self.field_errors[self.consumed:take]
            self.consumed = take
        self.pending += range(g0 + k, g0 + n)
        fields_ok = (ok_ts & ok_id & ok_pl & ok_lab & ~blank)[:k]

        def cell(col: int, i: int) -> str:
            return _text(batch.column(col)[i].as_py())

        order = self.order.check(ts[:k], fields_ok, lambda i: cell(0, i), lambda i: f"line {self.line_of(g0 + i)}")
        ok = fields_ok & ~order.bad if order.any_bad else fields_ok
        self._emit(self.order.release(order, self.bad))

        def describe(i: int) -> str:
            note = _NON_ASCII_NOTE if self.non_ascii and self.line_of(g0 + i) in self.non_ascii else ""
            if blank[i]:
                return "empty row"
            for col, good, hint in ((0, ok_ts, "timestamp {}: not a number"),
                                    (1, ok_id, "arbitration_id {}: " + id_problem(batch.column(1)[i].as_py())),
                                    (2, ok_pl, "data_field {}: payload must be 0-16 hex digits of even length"),
                                    (3, ok_lab, "attack {}: label must be 0 or 1")):
                if not good[i]:
                    return hint.format(cell(col, i)) + note
            return order.describe(i)

        self.bad.check(ok, lambda i: self.line_of(g0 + i), describe, earlier, label=lab[:k], label_ok=ok_lab[:k])
        whole = k == n and ok.all()
        keep = slice(None) if whole else np.flatnonzero(ok)
        self._emit(self.order.hold((ts[keep], ids[keep], dlc[keep], payload[keep], lab[keep]),
                                   lambda i: self.line_of(g0 + i)))

    def _emit(self, columns: tuple) -> None:
        if columns:
            self.out.append(columns)


_BLANKS = np.array([9, 10, 11, 12, 13, 32], np.uint8)


def _trimmed(arr: pa.Array) -> pa.Array:
    """``arr`` without whitespace around its values (a real can-train-and-test file has a payload
    ending in a tab); the same array when it holds no whitespace (the usual case, one scan)."""
    data = _string_parts(arr)[1]
    if not data.size or data.min() > 32:  # no byte that could be whitespace: one vectorized scan
        return arr
    offsets, _ = _string_parts(arr)
    lengths = np.diff(offsets)
    starts, ends = offsets[:-1].copy(), offsets[1:].copy()
    blank = np.zeros(data.size + 1, bool)
    blank[:data.size] = np.isin(data, _BLANKS)
    for _ in range(int(lengths.max(initial=0))):  # peel one blank at a time from both ends (few, short fields)
        lead = (starts < ends) & blank[np.minimum(starts, data.size)]
        trail = (starts < ends) & blank[np.maximum(ends - 1, 0)]
        if not (lead.any() or trail.any()):
            break
        starts += lead
        ends -= trail & (starts < ends)
    keep = np.zeros(data.size + 1, np.int64)
    np.add.at(keep, starts, 1)
    np.add.at(keep, ends, -1)
    mask = np.cumsum(keep)[:data.size] > 0
    new_offsets = np.zeros(len(arr) + 1, np.int32)
    np.cumsum(ends - starts, out=new_offsets[1:])
    return pa.Array.from_buffers(pa.binary(), len(arr), [None, pa.py_buffer(new_offsets),
                                                         pa.py_buffer(np.ascontiguousarray(data[mask]))])


class _RowDecodeErrors:
    """While a CSV read is active, ``sys.unraisablehook`` swallows and counts the
    ``UnicodeDecodeError`` pyarrow reports as "Exception ignored" when it cannot decode an
    invalid row's text for a kdkit row handler (marked ``_kdkit_row_handler``). Anything else
    goes to the previous hook. Safe with several threads reading at once: the hook is installed
    by the first active read and restored by the last; ``seen`` counts from this read's start."""

    _lock = threading.Lock()
    _active = 0
    _previous: Callable | None = None
    _count = 0

    @classmethod
    def _hook(cls, unraisable) -> None:
        ours = getattr(unraisable.object, "_kdkit_row_handler", False)
        if ours and isinstance(unraisable.exc_value, UnicodeDecodeError):
            cls._count += 1
        else:
            (cls._previous or sys.__unraisablehook__)(unraisable)

    def __enter__(self) -> _RowDecodeErrors:
        cls = type(self)
        with cls._lock:
            if cls._active == 0:
                cls._previous, sys.unraisablehook = sys.unraisablehook, cls._hook
            cls._active += 1
            self._start = cls._count
        return self

    def __exit__(self, *exc: object) -> None:
        cls = type(self)
        with cls._lock:
            cls._active -= 1
            if cls._active == 0:
                sys.unraisablehook, cls._previous = cls._previous or sys.__unraisablehook__, None

    @property
    def seen(self) -> int:
        return type(self)._count - self._start


def _read_lines(raw: bytes, path: Path) -> pa.Array:
    r"""Every line of ASCII text as one pyarrow string array (no CSV splitting; lines end with
    ``\n``, ``\r\n`` or a lone ``\r``, as pyarrow counts them). A trailing newline does not make
    an extra line; blank lines are lines."""
    try:
        table = pacsv.read_csv(
            pa.py_buffer(raw),
            read_options=pacsv.ReadOptions(use_threads=False, column_names=["line"], block_size=1 << 24),
            parse_options=pacsv.ParseOptions(delimiter="\x1f", quote_char=False, ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(column_types={"line": pa.string()}, strings_can_be_null=False,
                                                 null_values=[]))
    except pa.ArrowInvalid as err:  # (a line holding the unit separator 0x1F would split in two columns)
        raise DataFormatError(path, None, f"unreadable text ({err})") from err
    return table.column("line").combine_chunks()


def _filled(lines: pa.Array) -> int:
    """How many of ``lines`` there are up to the last one that is not blank (0: none)."""
    lengths = pc.utf8_length(pc.utf8_trim_whitespace(lines)).to_numpy(zero_copy_only=False)
    filled = np.flatnonzero(lengths)
    return int(filled[-1]) + 1 if filled.size else 0


def read_hcrl_car_hacking(path: str | Path, on_bad_rows: OnBadRows = "error") -> Messages:
    """Read an original HCRL Car-Hacking file: ``*_dataset.csv`` or ``normal_run_data.txt``.

    CSV rows are ``Timestamp,CAN ID,DLC,DATA[0]..DATA[DLC-1],Flag`` (no header; Flag ``T`` =
    injected, ``R`` = normal; the flag sits in column ``3 + DLC``). The text form is
    ``Timestamp: 1479121434.850202  ID: 0350  000  DLC: 8  05 28 84 66 6d 00 00 a2``.
    The whole text is decoded at once; :func:`iter_hcrl_car_hacking` reads the same in chunks.
    """
    path = Path(path)
    stream = _HcrlStream(path, on_bad_rows, sys.maxsize)
    raw = _open_bytes(path)
    if not raw.strip():
        raise DataFormatError(path, None, "empty file")
    return concat_messages([*stream.feed(raw), stream.close()])


def iter_hcrl_car_hacking(path: str | Path, on_bad_rows: OnBadRows = "error", chunk_rows: int = CHUNK_ROWS,
                          block_bytes: int | None = None) -> Iterator[Messages]:
    """An HCRL Car-Hacking file (CSV or text form) in chunks of ``chunk_rows`` messages, in
    bounded memory whatever the file's size.

    The file is read ``block_bytes`` at a time (a ``.gz`` inflated on the fly) and decoded in
    pieces of whole lines of about ``block_bytes``, carrying across pieces what the checks need:
    the line count, the largest good timestamp so far and its line (time order), and the blank
    lines at a piece's end (rows only if a row follows them). Joined (:func:`concat_messages`),
    the chunks equal :func:`read_hcrl_car_hacking`: the same messages, skip counts and
    ``file:line`` errors (tested at every cut). Every chunk carries the skip counts so far; the
    last (always handed out, maybe empty) has the file's. In error mode a bad row raises when its
    piece is read, after the chunks before it were handed out. A truncated ``.gz`` raises once
    its readable part is read (a whole read raises at once).

    Args:
        path: ``.csv``/``.txt``, optionally ``.gz``.
        on_bad_rows: ``"error"`` (default) or ``"skip"``, as :func:`read_hcrl_car_hacking`.
        chunk_rows: messages per chunk (default :data:`CHUNK_ROWS`).
        block_bytes: text decoded at a time (default :data:`_TEXT_PIECE`, 1 MiB).
    """
    path = Path(path)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    stream = _HcrlStream(path, on_bad_rows, chunk_rows)  # the mode is checked before anything is read
    return _stream_text(stream, path, block_bytes, _zipped(path))


_HCRL_TEXT_RX = (r"^\s*Timestamp:\s*(?P<ts>\S+)\s+ID:\s*(?P<id>\S+)\s+\S+\s+DLC:\s*(?P<dlc>\d+)\s*"
                 r"(?P<data>(?:[0-9A-Fa-f]{2}\s*)*)$")


class _HcrlStream:
    """The decoding and checking state of one HCRL Car-Hacking file fed piece by piece (pieces of
    whole lines; a whole read is one piece): the form (CSV or text, from the first line), the
    lines so far, the largest good timestamp so far and its line, and the blank lines at the end
    so far (rows only when a row follows them: blank lines at the end of a file are no rows)."""

    def __init__(self, path: Path, mode: OnBadRows, chunk_rows: int):
        self.path = path
        self.bad = _BadRows(path, mode)
        self.out = _Chunker(self.bad, chunk_rows, str(path), attack_type_from_name(path))
        self.text_form: bool | None = None
        self.rows = 0  # lines decoded so far (the held-back blank lines not counted)
        self.newlines = 0  # '\n' in the pieces so far (_ascii_only numbers the lines it names by them)
        self.pending: pa.Array | None = None  # blank lines at the end so far
        self.any_text = False
        self.order = _TimeOrder(self.bad)

    def feed(self, raw: bytes) -> Iterator[Messages]:
        """Decode and check one piece of whole lines; hand out the chunks now full."""
        self.any_text = self.any_text or (bool(raw) and not raw.isspace())  # (no stripped copy)
        raw, non_ascii = _ascii_only(raw)
        if b"\x1f" in raw:  # the separator _read_lines splits on (no CAN text holds it): a bad row, not a bad file
            raw = raw.replace(b"\x1f", b"?")
        non_ascii = {self.newlines + line for line in non_ascii}
        self.newlines += raw.count(b"\n")
        lines = _read_lines(raw, self.path)
        if self.pending is not None:
            lines = pa.concat_arrays([self.pending, lines])
        if self.text_form is None and len(lines):
            self.text_form = lines[0].as_py().lstrip().startswith("Timestamp:")
        k = _filled(lines)
        self.pending = lines.slice(k) if k < len(lines) else None
        if k:
            yield from self._decode(lines.slice(0, k) if k < len(lines) else lines, non_ascii)

    def close(self) -> Messages:
        """The last chunk, with the file's skip counts."""
        if not self.any_text:
            raise DataFormatError(self.path, None, "empty file")
        self.out.put(*self.order.close())
        return self.out.take()

    def _decode(self, lines: pa.Array, non_ascii: set[int]) -> Iterator[Messages]:
        n, base = len(lines), self.rows  # line base + i + 1 is the row i
        self.rows += n
        text_form = self.text_form
        if text_form:
            parts = pc.extract_regex(lines, _HCRL_TEXT_RX)
            matched = parts.is_valid().to_numpy(zero_copy_only=False)
            filled = pc.if_else(parts.is_valid(), parts, pa.scalar({"ts": "0", "id": "0", "dlc": "0", "data": ""},
                                                                   parts.type))
            ts_a, id_a, dlc_a, data_a = (pc.struct_field(filled, i) for i in range(4))
            data_a = pc.replace_substring_regex(data_a, r"\s+", "")
            flag_ok = np.ones(n, bool)
            label = np.zeros(n, np.uint8)
        else:
            fields = pc.split_pattern(lines, ",")
            nfields = pc.list_value_length(fields).to_numpy(zero_copy_only=False)
            flat = pc.utf8_trim_whitespace(pc.list_flatten(fields))
            starts = fields.offsets.to_numpy()[:-1] - fields.offsets.to_numpy()[0]
            matched = (nfields >= 4) & (nfields <= 12)  # timestamp, ID, DLC, 0..8 data bytes, flag

            def field(k: np.ndarray | int) -> pa.Array:  # field k of every row (of a row not matched: its first)
                return pc.take(flat, pa.array(np.where(matched, starts + k, starts)))

            ts_a, id_a, dlc_a = field(0), field(1), field(2)
            dlc_guess = np.clip(nfields - 4, 0, 8)
            data_a = pa.array(np.full(n, "", dtype=object), pa.string())
            for j in range(8):
                col = pc.if_else(pa.array(dlc_guess > j), field(np.where(dlc_guess > j, 3 + j, 0)), "")
                data_a = pc.binary_join_element_wise(data_a, col, "")
            flag = field(3 + dlc_guess).to_numpy(zero_copy_only=False)
            flag_ok = (flag == "R") | (flag == "T")
            label = (flag == "T").astype(np.uint8)
        ts, ok_ts = _parse_float(ts_a)
        ids, ok_id = parse_hex_ids(id_a)
        pl, dlc_from_data, ok_pl = parse_hex_payload(data_a)
        dlc_num, ok_dlc = _parse_float(dlc_a)
        ok_dlc &= (dlc_num >= 0) & (dlc_num <= 8) & (dlc_num == np.round(dlc_num))
        ok_dlc &= np.where(ok_dlc, dlc_num.astype(np.int64) == dlc_from_data, False)
        fields_ok = matched & ok_ts & ok_id & ok_pl & ok_dlc & flag_ok
        order = self.order.check(ts, fields_ok, lambda j: repr(ts_a[j].as_py()), lambda j: f"line {base + j + 1}")
        ok = fields_ok & ~order.bad if order.any_bad else fields_ok
        released = self.order.release(order, self.bad)

        def id_what(i: int) -> str:
            text = id_a[i].as_py()
            problem = id_problem(text)
            return "CAN ID is not 1-8 hex digits" if problem.startswith("not a hex") else f"CAN ID {text!r}: {problem}"

        def describe(i: int) -> str:
            note = _NON_ASCII_NOTE if base + i + 1 in non_ascii else ""
            if not matched[i]:
                if not text_form:
                    return (f"expected 4 + DLC fields (timestamp,ID,DLC,data bytes...,flag), got {nfields[i]}: "
                            f"{lines[i].as_py()[:80]!r}{note}")
                return f"unrecognised row {lines[i].as_py()[:80]!r}{note}"
            for good, what in ((ok_ts, "timestamp is not a number"), (ok_id, None),
                               (ok_pl, "data bytes are not 2-digit hex"),
                               (ok_dlc, "DLC does not match the number of data bytes"),
                               (flag_ok, "flag must be R or T")):
                if not good[i]:
                    return f"{what or id_what(i)}: {lines[i].as_py()[:80]!r}{note}"
            return order.describe(i)

        self.bad.check(ok, lambda i: base + i + 1, describe, label=label, label_ok=matched & flag_ok)
        keep = ok if not ok.all() else slice(None)
        if released:
            yield from self.out.add(*released)
        yield from self.out.add(*self.order.hold((ts[keep], ids[keep], dlc_from_data[keep], pl[keep], label[keep]),
                                                 lambda i: base + i + 1))


LOGGER_SUFFIXES = (".log", ".asc", ".blf", ".trc")  # read by kdkit.data.loggers (candump, Vector, PEAK)
_LOGGER_READER: list[Callable[..., Messages]] = []  # set by kdkit.data.loggers when it is imported


def set_logger_reader(reader: Callable[..., Messages]) -> None:
    """Called by :mod:`kdkit.data.loggers` at import: ``reader(path, channel=, on_bad_rows=)``
    reads the logger formats (:data:`LOGGER_SUFFIXES`) in :func:`read_messages`."""
    _LOGGER_READER[:] = [reader]


# Readers added for other file layouts: suffix (lower-case, without ".gz") -> reader(path, on_bad_rows).
_EXTRA_READERS: dict[str, Callable[..., Messages]] = {}


def register_reader(suffix: str, reader: Callable[..., Messages]) -> None:
    """Read files ending in ``suffix`` (or ``suffix + ".gz"``) with ``reader(path, on_bad_rows=...)``,
    in :func:`read_messages` and so in every dataset folder.

    Args:
        suffix: e.g. ``".kvlog"``; lower-case, with the dot.
        reader: returns a :class:`Messages`; raises :class:`DataFormatError` (file:line) on bad
            input unless ``on_bad_rows="skip"``, then counts the skipped rows in
            ``Messages.skipped_rows``.
    """
    if not suffix.startswith(".") or suffix != suffix.lower():
        raise ValueError(f"suffix {suffix!r}: lower-case with a leading dot, e.g. '.kvlog'")
    _EXTRA_READERS[suffix] = reader


# Known CSV headers (stripped column names) -> (reader(path, on_bad_rows), its chunked form or None): added by
# kdkit.data.columns for the public layouts it has presets for (DAGA, ROAD), so such files are read as published,
# by their header.
_HEADER_READERS: dict[tuple[str, ...], tuple[Callable[..., Messages], Callable[..., Iterator[Messages]] | None]] = {}
_ZIP_HEADER_READERS: dict[tuple[str, ...], tuple[Callable[..., Messages], Callable[..., Iterator[Messages]] | None]] = {}


def register_header_reader(header: Sequence[str], reader: Callable[..., Messages],
                           chunked: Callable[..., Iterator[Messages]] | None = None, zipped_only: bool = False) -> None:
    """Read a CSV whose header is exactly ``header`` with ``reader(path, on_bad_rows=...)``, and in
    :func:`iter_messages` with ``chunked(path, on_bad_rows=..., chunk_rows=...)`` (None: read
    whole and handed out in slices). ``zipped_only``: for such a CSV in a ``.zip`` only (a plain
    can-train-and-test CSV has its own, faster reader)."""
    (_ZIP_HEADER_READERS if zipped_only else _HEADER_READERS)[tuple(header)] = (reader, chunked)


def data_suffixes() -> tuple[str, ...]:
    """Every file ending a dataset folder's recordings may have (built-in and registered)."""
    builtin = (".csv", ".txt", *LOGGER_SUFFIXES)
    return (*(s + gz for s in builtin for gz in ("", ".gz")), ".zip",
            *(s + gz for s in _EXTRA_READERS for gz in ("", ".gz")))


def zip_recording(zf: zipfile.ZipFile, path: Path) -> zipfile.ZipInfo:
    """The one recording a zip holds (DAGA publishes each trace so); macOS metadata ignored."""
    members = [m for m in zf.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")]
    if len(members) != 1:
        raise DataFormatError(path, None, f"a zip must hold exactly one recording, found {[m.filename for m in members]}")
    return members[0]


def _first_bytes(path: Path, n: int = 4096) -> bytes:
    """The first bytes of a plain, gzip or single-recording zip file."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf, zf.open(zip_recording(zf, path)) as handle:
                return handle.read(n)
        with open(path, "rb") as handle:
            if handle.read(4) == b"PK\x03\x04":  # a zip's first entry, but no table of contents at its end
                raise DataFormatError(path, None, f"a cut or damaged zip file ({path.stat().st_size:,} bytes; the "
                                                  "table of contents at the end of a zip is missing): copy or download "
                                                  "it again (unzip -t tests it)")
        with (gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")) as handle:
            return handle.read(n)
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as err:
        raise DataFormatError(path, None, f"corrupt or unreadable file ({err})") from err


def read_messages(path: str | Path, on_bad_rows: OnBadRows = "error", channel: str | None = None) -> Messages:
    """Read any supported CAN file, choosing the reader from its name and first line.

    Args:
        path: a can-train-and-test CSV, an HCRL Car-Hacking file or a python-can logger file.
        on_bad_rows: ``"error"`` (default) or ``"skip"``; see the module docstring.
        channel: for logger files, keep only this channel.
    """
    reader, _ = pick_reader(Path(path), channel)
    return reader(Path(path), on_bad_rows=on_bad_rows)


def iter_messages(path: str | Path, on_bad_rows: OnBadRows = "error", channel: str | None = None,
                  chunk_rows: int = CHUNK_ROWS) -> Iterator[Messages]:
    """:func:`read_messages` in chunks of about ``chunk_rows`` rows (the last carries the file's
    skip counts; see :func:`iter_ctt_csv`). Every built-in format is streamed in bounded memory:
    can-train-and-test CSVs (:func:`iter_ctt_csv`), HCRL Car-Hacking files
    (:func:`iter_hcrl_car_hacking`), logger files (:func:`kdkit.data.loggers.iter_logger_file`)
    and the layouts known by their header (DAGA, ROAD: :func:`kdkit.data.columns.iter_mapped`).
    A reader added with :func:`register_reader` is read whole and handed out in slices."""
    reader, chunked = pick_reader(Path(path), channel)
    if chunked is not None:
        return chunked(Path(path), on_bad_rows=on_bad_rows, chunk_rows=chunk_rows)
    return slices(reader(Path(path), on_bad_rows=on_bad_rows), chunk_rows)


def slices(msgs: Messages, chunk_rows: int = CHUNK_ROWS) -> Iterator[Messages]:
    """A recording read whole, handed out as chunks (views) of ``chunk_rows`` rows, at least one."""
    for a in range(0, max(len(msgs), 1), chunk_rows):
        yield msgs.slice(a, min(a + chunk_rows, len(msgs)))


# Chunked logger reader (candump), set by kdkit.data.loggers: reader(path, channel=, on_bad_rows=, chunk_rows=)
_LOGGER_CHUNKS: list[Callable[..., Iterator[Messages]]] = []


def set_logger_chunks(reader: Callable[..., Iterator[Messages]]) -> None:
    """Called by :mod:`kdkit.data.loggers` at import: the chunked reader of the logger formats."""
    _LOGGER_CHUNKS[:] = [reader]


def _first_line(path: Path) -> tuple[str, tuple[str, ...]]:
    """A CSV-like file's first line, and its comma-separated fields (a header's names)."""
    first = _first_bytes(path).decode("utf-8", "replace").lstrip("\ufeff").split("\n", 1)[0].strip()
    return first, tuple(c.strip() for c in first.split(","))


def _hcrl_line(first: str) -> bool:
    """Whether a first line is an HCRL Car-Hacking recording's (text or CSV form)."""
    return first.startswith("Timestamp:") or bool(re.match(r"^\d+(\.\d+)?\s*,\s*[0-9A-Fa-f]{1,8}\s*,\s*\d\s*,", first))


def ctt_layout(path: str | Path) -> bool:
    """Whether a file is a can-train-and-test CSV by its header (``timestamp,arbitration_id,
    data_field,attack``; plain, ``.gz`` or a one-recording ``.zip``)."""
    name = Path(path).name.lower().removesuffix(".gz")
    if Path(name).suffix in LOGGER_SUFFIXES or Path(name).suffix in _EXTRA_READERS:
        return False
    return [c.lower() for c in _first_line(Path(path))[1]] == CTT_HEADER


def text_form(path: str | Path) -> bool:
    """Whether a file holds the HCRL/OTIDS text lines (``Timestamp: ... ID: ... DLC: ...``): a form
    without a label column, whose attack messages are marked nowhere (read as label 0)."""
    return _first_line(Path(path))[0].startswith("Timestamp:")


def known_layout(path: Path) -> bool:
    """Whether :func:`read_messages` knows ``path``'s layout by its name or first line (a logger
    file, a registered reader, can-train-and-test, HCRL, a preset's header), rather than reading
    an unknown header as can-train-and-test and failing on it."""
    name = path.name.lower().removesuffix(".gz")
    if Path(name).suffix in _EXTRA_READERS or Path(name).suffix in LOGGER_SUFFIXES:
        return True
    first, header = _first_line(path)
    return header in _HEADER_READERS or header == tuple(CTT_HEADER) or _hcrl_line(first)


def pick_reader(path: Path, channel: str | None = None) -> tuple[Callable[..., Messages], Callable[..., Iterator[Messages]] | None]:
    """The reader of a file by its name and first line, and its chunked form (None: none)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    name = path.name.lower().removesuffix(".gz")
    if Path(name).suffix in _EXTRA_READERS:
        return _EXTRA_READERS[Path(name).suffix], None
    if Path(name).suffix in LOGGER_SUFFIXES:
        if not _LOGGER_READER:
            raise RuntimeError("kdkit.data.loggers is not imported (import kdkit.data first)")
        chunked = _LOGGER_CHUNKS[0] if _LOGGER_CHUNKS else None
        return (partial(_LOGGER_READER[0], channel=channel),
                partial(chunked, channel=channel) if chunked is not None else None)
    first, header = _first_line(path)
    if header in _HEADER_READERS:
        return _HEADER_READERS[header]
    if path.name.lower().endswith(".zip") and header in _ZIP_HEADER_READERS:
        return _ZIP_HEADER_READERS[header]
    if path.name.lower().endswith(".zip") and _hcrl_line(first):
        return read_hcrl_car_hacking, iter_hcrl_car_hacking
    if path.name.lower().endswith(".zip"):
        raise DataFormatError(path, 1, f"header {first[:100]!r} is not a layout kdkit knows by its header "
                                       f"({', '.join(','.join(h) for h in _HEADER_READERS)}); declare its columns "
                                       f"in a dataset spec (README: 'Bring your own data')")
    if _hcrl_line(first):
        return read_hcrl_car_hacking, iter_hcrl_car_hacking
    return read_ctt_csv, iter_ctt_csv
