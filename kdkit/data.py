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
- Logger formats read by python-can: candump ``.log``, Vector ``.asc``/``.blf``, PEAK ``.trc``
  (optionally gzip-compressed). They carry no labels: every message is labelled normal.

Malformed input raises :class:`DataFormatError` naming the file, the line and the problem.
With ``on_bad_rows="skip"`` such rows are dropped instead and counted in
``Messages.skipped_rows`` (the CLI reports them per file). Nothing is turned into 0 or NaN.
Timestamps are kept as recorded, even when they step backwards (some real files do).
"""
from __future__ import annotations

import gzip
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

OnBadRows = Literal["error", "skip"]
CTT_HEADER = ["timestamp", "arbitration_id", "data_field", "attack"]
MAX_CAN_ID = 0x1FFFFFFF  # 29-bit extended identifiers

# Hex digit lookup: ASCII code -> nibble value, 255 = not a hex digit.
_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate("0123456789abcdef"):
    _HEX[ord(_c)] = _i
    _HEX[ord(_c.upper())] = _i

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
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


@dataclass
class Messages:
    """One recording as a struct of numpy arrays (the kit's one internal messages table).

    Attributes:
        timestamp: float64 [N] seconds, as recorded.
        can_id: uint32 [N] arbitration IDs.
        dlc: uint8 [N] data length codes (0..8).
        payload: uint8 [N, 8] payload bytes, zero past ``dlc``.
        label: uint8 [N], 1 = injected/attack message.
        source: the file this came from.
        attack_type: the recording's attack type from its file name (``DoS``, ``fuzzing``,
            ``malfunction``, ``gear``, ``rpm``, ``attack-free``, ...).
        skipped_rows: rows dropped under ``on_bad_rows="skip"``.
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

    def __len__(self) -> int:
        return int(self.timestamp.shape[0])

    def __post_init__(self) -> None:
        n = self.timestamp.shape[0]
        for name in ("can_id", "dlc", "label"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"Messages.{name} has shape {getattr(self, name).shape}, expected ({n},)")
        if self.payload.shape != (n, 8):
            raise ValueError(f"Messages.payload has shape {self.payload.shape}, expected ({n}, 8)")

    def slice(self, start: int, stop: int) -> "Messages":
        """Rows ``start:stop`` as a new Messages sharing memory."""
        return Messages(self.timestamp[start:stop], self.can_id[start:stop], self.dlc[start:stop],
                        self.payload[start:stop], self.label[start:stop], self.source, self.attack_type)

    @property
    def message_attack_type(self) -> np.ndarray:
        """Per-message attack type: the recording's type where labelled, else ``normal``."""
        return np.where(self.label.astype(bool), self.attack_type, "normal")


def attack_type_from_name(path: str | Path) -> str:
    """Attack type from a file name: ``DoS-kia.csv.gz`` -> ``DoS``, ``Fuzzy_dataset.csv`` -> ``fuzzing``."""
    stem = Path(path).name.lower()
    for suffix in (".gz", ".csv", ".txt", ".log", ".asc", ".blf", ".trc"):
        stem = stem.removesuffix(suffix)
    if stem.startswith(("attack-free", "attack_free", "normal")):
        return "attack-free"
    head = re.split(r"[-_ .]", stem, maxsplit=1)[0]
    return _ATTACK_ALIASES.get(head, head or "unknown")


# --------------------------------------------------------------------------------------
# vectorized hex decoding of pyarrow string arrays


def _string_parts(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64 [n+1], data uint8) of a pyarrow (large_)string array, zero-copy."""
    if pa.types.is_string(arr.type):
        off_dtype = np.int32
    elif pa.types.is_large_string(arr.type):
        off_dtype = np.int64
    else:
        raise TypeError(f"expected a string array, got {arr.type}")
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=off_dtype, count=len(arr) + 1, offset=arr.offset * np.dtype(off_dtype).itemsize)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    return offsets.astype(np.int64), data


def _nibbles(arr: pa.Array, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hex nibble matrix of a string array: (nibbles uint8 [n, width], lengths, ok bool [n]).

    ``ok`` is False where a string is longer than ``width`` or holds a non-hex character.
    Nibbles past a string's length are 0.
    """
    offsets, data = _string_parts(arr)
    lengths = np.diff(offsets)
    n = lengths.shape[0]
    if data.size == 0 or n == 0:
        return np.zeros((n, width), np.uint8), lengths, lengths == 0
    first = int(lengths[0])
    if 0 < first <= width and (lengths == first).all():
        # Fast path: every string has the same length, so the bytes form an [n, first] block.
        block = data[offsets[0]: offsets[0] + n * first].reshape(n, first)
        nib = _HEX[block]
        ok = (nib != 255).all(axis=1)
        if first < width:
            nib = np.concatenate([nib, np.zeros((n, width - first), np.uint8)], axis=1)
        return nib, lengths, ok
    cols = np.arange(width, dtype=np.int64)
    idx = offsets[:-1, None] + cols
    inside = cols < lengths[:, None]
    nib = _HEX[data[np.minimum(idx, data.size - 1)]]
    nib[~inside] = 0
    ok = (lengths <= width) & ~(nib == 255).any(axis=1)
    return nib, lengths, ok


def parse_hex_ids(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Hex CAN IDs (1..8 digits) -> (uint32 values, ok mask). All-digit IDs are hex too."""
    nib, lengths, ok = _nibbles(arr, 8)
    if nib.shape[0] and (lengths == lengths[0]).all() and 1 <= lengths[0] <= 8:
        value = np.zeros(nib.shape[0], np.uint64)  # uniform width: plain positional sum
        for j in range(int(lengths[0])):
            value = value * 16 + nib[:, j]
    else:
        value = np.zeros(nib.shape[0], np.uint64)
        for j in range(8):
            value = np.where(j < lengths, value * 16 + nib[:, j], value)
    ok &= (lengths >= 1) & (value <= MAX_CAN_ID)
    return value.astype(np.uint32), ok


def parse_hex_payload(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hex payloads without spaces (0..16 digits, even) -> (uint8 [n,8], dlc uint8, ok)."""
    nib, lengths, ok = _nibbles(arr, 16)
    ok &= (lengths % 2 == 0)
    payload = (nib[:, 0::2] << 4) | nib[:, 1::2]
    dlc = np.minimum(lengths // 2, 8).astype(np.uint8)
    return payload.astype(np.uint8), dlc, ok


def _parse_float(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Strings -> (float64, ok). Fast path: one pyarrow cast; on failure find the bad rows."""
    try:
        values = pc.cast(arr, pa.float64())
        ok = np.ones(len(arr), bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        ok = pc.match_substring_regex(arr, r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$").to_numpy(zero_copy_only=False)
        values = pc.cast(pc.if_else(pa.array(ok), arr, "0"), pa.float64())
    out = values.to_numpy(zero_copy_only=False).astype(np.float64)
    ok &= np.isfinite(out)
    return out, ok


# --------------------------------------------------------------------------------------
# bad-row bookkeeping shared by the readers


class _BadRows:
    """Collects bad rows; raises on the first one unless skipping."""

    def __init__(self, path: Path, mode: OnBadRows):
        if mode not in ("error", "skip"):
            raise ValueError(f"on_bad_rows must be 'error' or 'skip', got {mode!r}")
        self.path, self.mode = path, mode
        self.count = 0
        self.examples: list[str] = []

    def report(self, line: int | None, problem: str) -> None:
        if self.mode == "error":
            raise DataFormatError(self.path, line, problem)
        self.count += 1
        if len(self.examples) < 5:
            self.examples.append(f"{self.path}:{line}: {problem}")

    def check(self, ok: np.ndarray, line_of: Callable[[int], int], describe: Callable[[int], str]) -> None:
        """Report every row where ``ok`` is False (the first one raises in error mode)."""
        bad = np.flatnonzero(~ok)
        if bad.size == 0:
            return
        if self.mode == "error":
            i = int(bad[0])
            raise DataFormatError(self.path, line_of(i), describe(i))
        self.count += int(bad.size)
        for i in bad[: max(0, 5 - len(self.examples))]:
            self.examples.append(f"{self.path}:{line_of(int(i))}: {describe(int(i))}")


def _open_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataFormatError(path, None, f"corrupt gzip data ({err})") from err
    return raw


def read_ctt_csv(path: str | Path, on_bad_rows: OnBadRows = "error") -> Messages:
    """Read a can-train-and-test v1.5 CSV (``timestamp,arbitration_id,data_field,attack``).

    Args:
        path: ``.csv`` or ``.csv.gz`` file.
        on_bad_rows: ``"error"`` (default) raises :class:`DataFormatError` at the first bad
            row; ``"skip"`` drops bad rows and counts them in ``Messages.skipped_rows``.
    """
    path = Path(path)
    bad = _BadRows(path, on_bad_rows)
    raw = _open_bytes(path)
    if not raw.strip():
        raise DataFormatError(path, None, "empty file (expected the header 'timestamp,arbitration_id,data_field,attack')")
    first_line = raw.split(b"\n", 1)[0].decode("utf-8", "replace").strip().lstrip("\ufeff")
    header = [h.strip() for h in first_line.split(",")]
    if header != CTT_HEADER:
        raise DataFormatError(path, 1, f"wrong or missing header {first_line[:80]!r}; expected 'timestamp,arbitration_id,data_field,attack'")

    handler_lines: list[int] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad.report(row.number, f"expected {row.expected_columns} fields, got {row.actual_columns}: {row.text[:80]!r}")
        handler_lines.append(row.number or 0)
        return "skip"

    try:
        table = pacsv.read_csv(
            pa.py_buffer(raw),
            read_options=pacsv.ReadOptions(use_threads=False, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid, ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in CTT_HEADER},
                                                 strings_can_be_null=False, null_values=[]),
        )
    except pa.ArrowInvalid as err:
        raise DataFormatError(path, None, f"unreadable CSV ({err})") from err

    def line_of(i: int) -> int:
        line = i + 2
        for s in handler_lines:  # rows the handler dropped shift the physical line numbers
            if s <= line:
                line += 1
        return line

    parts = {"ts": [], "id": [], "pl": [], "dlc": [], "lab": [], "ok": []}
    base = 0
    for batch in table.to_batches():
        ts_a, id_a, pl_a, at_a = (batch.column(i) for i in range(4))
        empty = np.asarray(pc.equal(pc.binary_length(ts_a), 0).to_numpy(zero_copy_only=False)) & \
            np.asarray(pc.equal(pc.binary_length(id_a), 0).to_numpy(zero_copy_only=False))
        ts, ok_ts = _parse_float(ts_a)
        ids, ok_id = parse_hex_ids(id_a)
        pl, dlc, ok_pl = parse_hex_payload(pl_a)
        lab_s = at_a.to_numpy(zero_copy_only=False)
        ok_lab = (lab_s == "0") | (lab_s == "1")
        lab = (lab_s == "1").astype(np.uint8)
        ok = ~empty & ok_ts & ok_id & ok_pl & ok_lab

        def describe(i: int, b=batch, e=empty, a=ok_ts, c=ok_id, d=ok_pl) -> str:
            if e[i]:
                return "empty line"
            cols = ["timestamp", "arbitration_id", "data_field", "attack"]
            flags = [a[i], c[i], d[i], True]
            for col, good in zip(cols, flags):
                if not good:
                    value = b.column(cols.index(col))[i].as_py()
                    hint = {"timestamp": "not a number", "arbitration_id": "not a hex CAN ID of 1-8 digits",
                            "data_field": "payload must be 0-16 hex digits of even length"}[col]
                    return f"{col} {value!r}: {hint}"
            return f"attack {b.column(3)[i].as_py()!r}: label must be 0 or 1"

        bad.check(ok, lambda i, base=base: line_of(base + i), describe)
        for key, value in zip(("ts", "id", "pl", "dlc", "lab", "ok"), (ts, ids, pl, dlc, lab, ok)):
            parts[key].append(value)
        base += batch.num_rows

    if not parts["ok"] or sum(len(o) for o in parts["ok"]) == 0:
        raise DataFormatError(path, None, "no data rows after the header")
    ok = np.concatenate(parts["ok"])
    keep = None if ok.all() else ok
    cat = {k: np.concatenate(v) for k, v in parts.items() if k != "ok"}
    if keep is not None:
        cat = {k: v[keep] for k, v in cat.items()}
    return Messages(cat["ts"], cat["id"], cat["dlc"], cat["pl"], cat["lab"], str(path),
                    attack_type_from_name(path), bad.count, bad.examples)


def _read_lines(raw: bytes, path: Path) -> pa.Array:
    """Every line of a text file as one pyarrow string array (no CSV splitting)."""
    table = pacsv.read_csv(
        pa.py_buffer(raw),
        read_options=pacsv.ReadOptions(use_threads=False, column_names=["line"], block_size=1 << 24),
        parse_options=pacsv.ParseOptions(delimiter="\x1f", quote_char=False, ignore_empty_lines=False),
        convert_options=pacsv.ConvertOptions(column_types={"line": pa.string()}, strings_can_be_null=False, null_values=[]),
    )
    lines = table.column("line").combine_chunks()
    # A trailing newline does not make an extra line, but trailing blank lines do: drop those.
    n = len(lines)
    lengths = pc.utf8_length(pc.utf8_trim_whitespace(lines)).to_numpy(zero_copy_only=False)
    while n and lengths[n - 1] == 0:
        n -= 1
    return lines.slice(0, n)


def read_hcrl_car_hacking(path: str | Path, on_bad_rows: OnBadRows = "error") -> Messages:
    """Read an original HCRL Car-Hacking file: ``*_dataset.csv`` or ``normal_run_data.txt``.

    CSV rows are ``Timestamp,CAN ID,DLC,DATA[0]..DATA[DLC-1],Flag`` (no header; Flag ``T`` =
    injected, ``R`` = normal; the flag sits in column ``3 + DLC``). The text form is
    ``Timestamp: 1479121434.850202  ID: 0350  000  DLC: 8  05 28 84 66 6d 00 00 a2``.
    """
    path = Path(path)
    bad = _BadRows(path, on_bad_rows)
    raw = _open_bytes(path)
    lines = _read_lines(raw, path)
    if len(lines) == 0:
        raise DataFormatError(path, None, "empty file")
    text_form = lines[0].as_py().lstrip().startswith("Timestamp:")
    if text_form:
        rx = r"^\s*Timestamp:\s*(?P<ts>\S+)\s+ID:\s*(?P<id>\S+)\s+\S+\s+DLC:\s*(?P<dlc>\d+)\s*(?P<data>(?:[0-9A-Fa-f]{2}\s*)*)$"
        parts = pc.extract_regex(lines, rx)
        matched = parts.is_valid().to_numpy(zero_copy_only=False)
        filled = pc.if_else(parts.is_valid(), parts, pa.scalar({"ts": "0", "id": "0", "dlc": "0", "data": ""}, parts.type))
        ts_a, id_a, dlc_a, data_a = (pc.struct_field(filled, i) for i in range(4))
        data_a = pc.replace_substring_regex(data_a, r"\s+", "")
        flag_ok = np.ones(len(lines), bool)
        label = np.zeros(len(lines), np.uint8)
    else:
        fields = pc.split_pattern(lines, ",")
        nfields = pc.list_value_length(fields).to_numpy(zero_copy_only=False)
        flat = pc.utf8_trim_whitespace(pc.list_flatten(fields))
        starts = fields.offsets.to_numpy()[:-1] - fields.offsets.to_numpy()[0]
        matched = nfields >= 4
        safe_starts = np.where(matched, starts, 0)
        ts_a = pc.take(flat, pa.array(safe_starts))
        id_a = pc.take(flat, pa.array(safe_starts + 1))
        dlc_a = pc.take(flat, pa.array(safe_starts + 2))
        dlc_guess = np.clip(nfields - 4, 0, 8)
        data_a = pa.array(np.full(len(lines), "", dtype=object), pa.string())
        for j in range(8):
            col = pc.take(flat, pa.array(np.where(dlc_guess > j, safe_starts + 3 + j, safe_starts)))
            col = pc.if_else(pa.array(dlc_guess > j), col, "")
            data_a = pc.binary_join_element_wise(data_a, col, "")
        flag = pc.take(flat, pa.array(safe_starts + 3 + dlc_guess)).to_numpy(zero_copy_only=False)
        flag_ok = (flag == "R") | (flag == "T")
        label = (flag == "T").astype(np.uint8)
    ts, ok_ts = _parse_float(ts_a)
    ids, ok_id = parse_hex_ids(id_a)
    pl, dlc_from_data, ok_pl = parse_hex_payload(data_a)
    dlc_num, ok_dlc = _parse_float(dlc_a)
    ok_dlc &= (dlc_num >= 0) & (dlc_num <= 8) & (dlc_num == np.round(dlc_num))
    ok_dlc &= np.where(ok_dlc, dlc_num.astype(np.int64) == dlc_from_data, False)
    ok = matched & ok_ts & ok_id & ok_pl & ok_dlc & flag_ok

    def describe(i: int) -> str:
        if not matched[i]:
            return f"unrecognised row {lines[i].as_py()[:80]!r}"
        for good, what in ((ok_ts, "timestamp is not a number"), (ok_id, "CAN ID is not 1-8 hex digits"),
                           (ok_pl, "data bytes are not 2-digit hex"), (ok_dlc, "DLC does not match the number of data bytes"),
                           (flag_ok, "flag must be R or T")):
            if not good[i]:
                return f"{what}: {lines[i].as_py()[:80]!r}"
        return "bad row"

    bad.check(ok, lambda i: i + 1, describe)
    keep = ok if not ok.all() else slice(None)
    return Messages(ts[keep], ids[keep], dlc_from_data[keep], pl[keep], label[keep], str(path),
                    attack_type_from_name(path), bad.count, bad.examples)


_CAN_READERS = {".log": "CanutilsLogReader", ".asc": "ASCReader", ".blf": "BLFReader", ".trc": "TRCReader"}


def read_logger_file(path: str | Path, channel: str | None = None) -> Messages:
    """Read a python-can logger file (candump ``.log``, ``.asc``, ``.blf``, ``.trc``; ``.gz`` ok).

    Args:
        path: the log file.
        channel: keep only this bus channel (e.g. ``can0``); None keeps every frame.

    The messages are unlabelled (label 0). Remote and error frames are dropped.
    """
    import can  # python-can; imported lazily, it is slow to import

    path = Path(path)
    name = path.name.lower().removesuffix(".gz")
    suffix = Path(name).suffix
    if suffix not in _CAN_READERS:
        raise DataFormatError(path, None, f"unknown logger format {suffix!r}; expected one of {sorted(_CAN_READERS)}")
    binary = suffix == ".blf"
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb" if binary else "rt") as handle:
        try:
            frames = [m for m in getattr(can, _CAN_READERS[suffix])(handle)
                      if not m.is_remote_frame and not m.is_error_frame
                      and (channel is None or str(m.channel) == channel)]
        except (ValueError, IndexError) as err:
            raise DataFormatError(path, None, f"python-can could not parse it: {err}") from err
    if not frames:
        raise DataFormatError(path, None, "no data frames" + (f" on channel {channel!r}" if channel else ""))
    n = len(frames)
    ts = np.fromiter((m.timestamp for m in frames), np.float64, n)
    ids = np.fromiter((m.arbitration_id for m in frames), np.uint32, n)
    dlc = np.fromiter((min(len(m.data), 8) for m in frames), np.uint8, n)
    joined = b"".join(bytes(m.data[:8]).ljust(8, b"\0") for m in frames)
    payload = np.frombuffer(joined, np.uint8).reshape(n, 8).copy()
    return Messages(ts, ids, dlc, payload, np.zeros(n, np.uint8), str(path), "attack-free")


def read_messages(path: str | Path, on_bad_rows: OnBadRows = "error", channel: str | None = None) -> Messages:
    """Read any supported CAN file, choosing the reader from its name and first line.

    Args:
        path: a can-train-and-test CSV, an HCRL Car-Hacking file or a python-can logger file.
        on_bad_rows: ``"error"`` (default) or ``"skip"``; see the module docstring.
        channel: for logger files, keep only this channel.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    name = path.name.lower().removesuffix(".gz")
    if Path(name).suffix in _CAN_READERS:
        return read_logger_file(path, channel=channel)
    with (gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")) as handle:
        try:
            head = handle.read(256).decode("utf-8", "replace").lstrip("\ufeff")
        except (OSError, EOFError) as err:
            raise DataFormatError(path, None, f"corrupt gzip data ({err})") from err
    first = head.split("\n", 1)[0].strip()
    if first.startswith("Timestamp:") or re.match(r"^\d+(\.\d+)?\s*,\s*[0-9A-Fa-f]{1,8}\s*,\s*\d\s*,", first):
        return read_hcrl_car_hacking(path, on_bad_rows)
    return read_ctt_csv(path, on_bad_rows)
