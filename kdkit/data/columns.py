"""Any CSV-like CAN recording through one explicit column mapping, and the presets for the
public layouts a CAN-IDS researcher meets.

    from kdkit.data.columns import ColumnMapping, PRESETS, read_mapped
    msgs = read_mapped("V40_03.can.zip", PRESETS["daga"])
    mapping = ColumnMapping(timestamp="Time", can_id="Id", payload=[f"Byte{i}" for i in range(1, 9)],
                            byte_base=10, label="Label", label_map={"Benign": "normal", "Fuzzing": "fuzzing"})

A mapping names the columns (or, for files without a header, their positions) and says how to
read each: timestamp unit; ID base (hex or decimal) and whether float-formatted IDs (``290.0``,
as DAGA writes a few) are allowed; the payload as one hex string, as byte columns
(``Byte1..Byte8``) or as a string of bits; the DLC column and its unit (bytes or bits); the label
column and a value map giving normal or the attack type per message. Every quirk is declared,
never guessed: a value outside the mapping is a bad row (``DataFormatError`` with file:line, or a
counted skip with ``on_bad_rows="skip"``, attack rows among the skipped counted).

Whitespace around every field is stripped. Files may be ``.csv``/``.txt``, gzip-compressed
(``.gz``) or a ``.zip`` holding one recording (DAGA publishes its traces so).
"""
from __future__ import annotations

import gzip
import re
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from kdkit.data.readers import (
    EXTENDED_ID_FLAG,
    MAX_CAN_ID,
    MAX_STANDARD_ID,
    DataFormatError,
    Messages,
    OnBadRows,
    _BadRows,
    _parse_float,
    _string_parts,
    _text,
    _time_order,
    _time_problem,
    attack_type_from_name,
    parse_hex_ids,
    parse_hex_payload,
    register_header_reader,
    zip_recording,
)

TIME_UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}  # per second (dividing is exact for 1001 ms)
NORMAL = "normal"
ATTACK = "attack"  # a label value mapped to this takes the recording's attack type (file or folder name)


@dataclass(frozen=True)
class ColumnMapping:
    """How to read one CSV-like layout. Column references are header names, or 0-based
    positions (ints) when ``header`` is False.

    Args:
        timestamp: the timestamp column.
        can_id: the arbitration ID column.
        payload: one column with the payload as hex (``payload_format="hex"``) or bits
            (``"bits"``), or a list of byte columns (``"bytes"``; an empty cell ends the payload).
        time_unit: ``s``, ``ms``, ``us`` or ``ns``.
        id_base: 16 (hex) or 10.
        float_ids: allow an ID written as a float with a zero fraction (``290.0``: DAGA).
        extended: optional column flagging 29-bit IDs (``1``/``0``, ``true``/``false``);
            without it an ID of 8 hex digits is extended, as in can-train-and-test.
        payload_format: ``hex``, ``bytes`` or ``bits``.
        byte_base: base of byte columns (16 or 10).
        pad_payload: a hex payload shorter than the DLC says is left-padded with zeros
            (DAGA writes an all-zero payload as ``0``); needs ``dlc``.
        dlc: optional DLC column, checked against the payload's length.
        dlc_unit: ``bytes`` or ``bits`` (DAGA's DLC 64 means 8 bytes).
        label: optional label column; without it every message is normal.
        label_map: label value -> ``normal``, ``attack`` (the recording's attack type, from
            its file or folder name) or an attack type name. Values are compared after
            stripping whitespace; a value not in the map is a bad row.
        attack_type_from: where ``attack`` labels take their type: ``file`` (its name, e.g.
            ``DoS-kia.csv``) or ``folder`` (the folder holding it, e.g. DAGA's
            ``infected/DenialOfService/``).
        delimiter: ``,`` or another single character; ``whitespace`` splits on runs of blanks.
        header: whether the first line is a header.
    """

    timestamp: str | int
    can_id: str | int
    payload: str | int | tuple[str | int, ...]
    time_unit: str = "s"
    id_base: int = 16
    float_ids: bool = False
    extended: str | int | None = None
    payload_format: str = "hex"
    byte_base: int = 16
    pad_payload: bool = False
    dlc: str | int | None = None
    dlc_unit: str = "bytes"
    label: str | int | None = None
    label_map: dict[str, str] = field(default_factory=dict)
    attack_type_from: str = "file"
    delimiter: str = ","
    header: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.payload, list):
            object.__setattr__(self, "payload", tuple(self.payload))
        checks = [("time_unit", self.time_unit in TIME_UNITS, sorted(TIME_UNITS)),
                  ("id_base", self.id_base in (10, 16), [10, 16]),
                  ("payload_format", self.payload_format in ("hex", "bytes", "bits"), ["hex", "bytes", "bits"]),
                  ("byte_base", self.byte_base in (10, 16), [10, 16]),
                  ("dlc_unit", self.dlc_unit in ("bytes", "bits"), ["bytes", "bits"]),
                  ("attack_type_from", self.attack_type_from in ("file", "folder"), ["file", "folder"])]
        for key, good, allowed in checks:
            if not good:
                raise ValueError(f"column mapping: {key} = {getattr(self, key)!r}; expected one of {allowed}")
        if (self.payload_format == "bytes") != isinstance(self.payload, tuple):
            raise ValueError("column mapping: payload must be a list of byte columns exactly when payload_format "
                             f"is 'bytes' (got payload={self.payload!r}, payload_format={self.payload_format!r})")
        if isinstance(self.payload, tuple) and not 1 <= len(self.payload) <= 8:
            raise ValueError(f"column mapping: payload lists {len(self.payload)} byte columns; expected 1 to 8")
        if self.pad_payload and (self.dlc is None or self.payload_format != "hex"):
            raise ValueError("column mapping: pad_payload needs a dlc column and payload_format 'hex'")
        if self.label is not None and not self.label_map:
            raise ValueError(f"column mapping: label column {self.label!r} needs a label_map "
                             "(value -> 'normal', 'attack' or an attack type)")
        if self.label_map and NORMAL not in self.label_map.values():
            raise ValueError(f"column mapping: label_map {self.label_map!r} maps no value to 'normal'")
        if len(self.delimiter) != 1 and self.delimiter != "whitespace":
            raise ValueError(f"column mapping: delimiter {self.delimiter!r}; expected one character or 'whitespace'")
        refs = self.columns()
        kinds = {type(r) for r in refs}
        if kinds != ({int} if not self.header else {str}):
            raise ValueError(f"column mapping: with header={self.header} columns are "
                             f"{'names' if self.header else '0-based positions'}, got {refs!r}")

    def columns(self) -> list[str | int]:
        """Every column the mapping reads."""
        pl = list(self.payload) if isinstance(self.payload, tuple) else [self.payload]
        return [self.timestamp, self.can_id, *pl, *(c for c in (self.extended, self.dlc, self.label) if c is not None)]

    @classmethod
    def from_dict(cls, spec: dict[str, Any], where: str = "column mapping") -> ColumnMapping:
        """From a spec file's table; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        missing = [k for k in ("timestamp", "can_id", "payload") if k not in spec]
        if missing:
            raise ValueError(f"{where}: missing key(s) {missing}")
        try:
            return cls(**{k: (tuple(v) if k == "payload" and isinstance(v, list) else v) for k, v in spec.items()})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if isinstance(self.payload, tuple):
            out["payload"] = list(self.payload)
        return out


_BYTES = tuple(f"Byte{i}" for i in range(1, 9))

# The public layouts. can-train-and-test, HCRL Car-Hacking/OTIDS text and candump have their own
# fast readers (readers.py, loggers.py): their presets name those readers instead of a mapping.
PRESETS: dict[str, ColumnMapping | str] = {
    "can-train-and-test": "read_ctt_csv",
    "hcrl-car-hacking": "read_hcrl_car_hacking",
    "otids": "read_hcrl_car_hacking",  # the same 'Timestamp: ... ID: ... DLC: ...' text lines
    "candump": "read_logger_file",
    "daga": ColumnMapping(timestamp="timestamp", can_id="CAN_ID", payload="PAYLOAD_HEX", float_ids=True,
                          pad_payload=True, dlc="DLC", dlc_unit="bits", label="ANOMALY",
                          label_map={"False": NORMAL, "True": ATTACK, "FALSE": NORMAL, "TRUE": ATTACK},  # the clean trace: FALSE
                          attack_type_from="folder"),
    "road": ColumnMapping(timestamp="Time", can_id="Id", payload=_BYTES, payload_format="bytes", label="Label",
                          label_map={"0": NORMAL, "1": ATTACK, "Benign": NORMAL, "Fuzzing": "fuzzing",
                                     "Fabrication": "fabrication", "Masquerade": "masquerade"}),
}


def _open_text(path: Path) -> bytes:
    """The whole file's bytes: plain, gzip or a zip holding one recording."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                return zf.read(zip_recording(zf, path))
        with open(path, "rb") as handle:
            raw = handle.read()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zipfile.BadZipFile, gzip.BadGzipFile) as err:
        raise DataFormatError(path, None, f"unreadable or corrupt file ({err})") from err


def _attack_type(path: Path, mapping: ColumnMapping) -> str:
    if mapping.attack_type_from == "folder":
        return path.parent.name or attack_type_from_name(path)
    return attack_type_from_name(path)


def _read_table(raw: bytes, path: Path, mapping: ColumnMapping) -> tuple[pa.Table, list[tuple[int, str]]]:
    """(table of trimmed string columns, rows the parser rejected as (line, problem))."""
    if mapping.delimiter == "whitespace":
        raw = re.sub(rb"[ \t]+", b" ", raw)
        raw = re.sub(rb"(?m)^ | $", b"", raw)
        delimiter = " "
    else:
        delimiter = mapping.delimiter
    rejected: list[tuple[int, str]] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        rejected.append((row.number, f"expected {row.expected_columns} fields, got {row.actual_columns}: {_text(row.text)}"))
        return "skip"

    first = raw.lstrip(b"\r\n").split(b"\n", 1)[0].decode("utf-8", "replace").strip().lstrip("\ufeff")
    names = [c.strip() for c in first.split(delimiter)]
    if not mapping.header:
        names = [f"f{i}" for i in range(len(names))]
    elif len(set(names)) != len(names):
        raise DataFormatError(path, 1, f"header {first[:120]!r} repeats a column name")
    try:
        table = pacsv.read_csv(
            pa.py_buffer(raw),
            read_options=pacsv.ReadOptions(use_threads=False, column_names=names, skip_rows=int(mapping.header)),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid,
                                             ignore_empty_lines=True),
            convert_options=pacsv.ConvertOptions(strings_can_be_null=False, null_values=[], check_utf8=True,
                                                 column_types={c: pa.string() for c in names}))
    except pa.ArrowInvalid as err:
        raise DataFormatError(path, None, f"unreadable CSV ({err})") from err
    # every column as trimmed text
    cols = {name: pc.ascii_trim_whitespace(table.column(name)).combine_chunks() for name in table.column_names}
    return pa.table(cols), rejected


def _row_lines(raw: bytes, header: bool, rejected: set[int]) -> list[int]:
    """The 1-based physical line of every data row (blank lines and rejected rows skipped)."""
    blank = [i + 1 for i, line in enumerate(raw.split(b"\n")) if not line.strip()]
    skip = set(blank) | rejected
    out, line = [], 1 + (1 if header else 0)
    total = raw.count(b"\n") + 1
    while line <= total:
        if line not in skip:
            out.append(line)
        line += 1
    return out


def _column(table: pa.Table, ref: str | int, path: Path) -> pa.Array:
    names = table.column_names
    if isinstance(ref, int):
        if ref >= len(names):
            raise DataFormatError(path, 1, f"column {ref} does not exist: rows have {len(names)} fields")
        return table.column(ref).combine_chunks()  # positions: columns are f0, f1, ... in order
    if ref not in names:
        raise DataFormatError(path, 1, f"column {ref!r} not in the header {names}")
    return table.column(ref).combine_chunks()


def _parse_ids(arr: pa.Array, mapping: ColumnMapping, extended: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if mapping.float_ids:
        arr = pc.replace_substring_regex(arr, r"^([0-9A-Fa-f]+)\.0+$", r"\1")
    if mapping.id_base == 16 and extended is None:
        return parse_hex_ids(arr)
    if mapping.id_base == 16:
        digits = pc.match_substring_regex(arr, r"^[0-9A-Fa-f]{1,8}$").to_numpy(zero_copy_only=False)
        safe = pc.if_else(pa.array(digits), arr, "0")
        value = np.array([int(v, 16) for v in safe.to_pylist()], dtype=np.uint64) if len(arr) else np.zeros(0, np.uint64)
    else:
        digits = pc.match_substring_regex(arr, r"^\d{1,10}$").to_numpy(zero_copy_only=False)
        value = pc.cast(pc.if_else(pa.array(digits), arr, "0"), pa.uint64()).to_numpy(zero_copy_only=False)
    ext = extended if extended is not None else np.zeros(len(arr), bool)
    ok = digits & (value <= np.where(ext, MAX_CAN_ID, MAX_STANDARD_ID))
    ids = np.where(ok, value, 0).astype(np.uint32) | (ext.astype(np.uint32) << np.uint32(31))
    return ids, ok


def _flags(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    low = pc.utf8_lower(arr).to_numpy(zero_copy_only=False)
    yes, no = np.isin(low, ["1", "true", "x", "yes", "t"]), np.isin(low, ["0", "false", "", "no", "f"])
    return yes, yes | no


def _payload(table: pa.Table, mapping: ColumnMapping, dlc_bytes: np.ndarray | None, path: Path
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(payload uint8 [n, 8], dlc uint8, ok)."""
    n = table.num_rows
    if mapping.payload_format == "hex":
        arr = _column(table, mapping.payload, path)
        if mapping.pad_payload and dlc_bytes is not None:
            lengths = pc.utf8_length(arr).to_numpy(zero_copy_only=False)
            short = lengths < 2 * dlc_bytes
            for d in np.unique(dlc_bytes[short]) if short.any() else []:
                rows = short & (dlc_bytes == d)
                arr = pc.if_else(pa.array(rows), pc.utf8_lpad(arr, width=int(2 * d), padding="0"), arr)
        return parse_hex_payload(arr)
    if mapping.payload_format == "bits":
        arr = _column(table, mapping.payload, path)
        lengths = pc.utf8_length(arr).to_numpy(zero_copy_only=False)
        bits_ok = pc.match_substring_regex(arr, r"^[01]*$").to_numpy(zero_copy_only=False)
        ok = bits_ok & (lengths % 8 == 0) & (lengths <= 64)
        padded = pc.utf8_rpad(pc.if_else(pa.array(ok), arr, ""), width=64, padding="0")
        offsets, data = _string_parts(padded)
        chars = data[offsets[0]:offsets[-1]].reshape(n, 64) - np.uint8(48)
        payload = np.packbits(chars, axis=1)
        return payload, (lengths // 8).clip(0, 8).astype(np.uint8), ok
    # byte columns: an empty cell ends the payload; nothing after it may be filled
    payload = np.zeros((n, 8), np.uint8)
    ok = np.ones(n, bool)
    dlc = np.zeros(n, np.uint8)
    ended = np.zeros(n, bool)
    pattern = r"^[0-9A-Fa-f]{1,2}$" if mapping.byte_base == 16 else r"^\d{1,3}$"
    for j, ref in enumerate(mapping.payload):
        arr = _column(table, ref, path)
        empty = (pc.utf8_length(arr).to_numpy(zero_copy_only=False) == 0)
        good = pc.match_substring_regex(arr, pattern).to_numpy(zero_copy_only=False)
        safe = pc.if_else(pa.array(good), arr, "0")
        if mapping.byte_base == 16:
            value = parse_hex_ids(safe)[0].astype(np.int64)
        else:
            value = pc.cast(safe, pa.int64()).to_numpy(zero_copy_only=False)
        ok &= np.where(empty, True, good & (value <= 255) & ~ended)
        ended |= empty
        payload[:, j] = np.where(empty, 0, value).clip(0, 255)
        dlc += (~ended).astype(np.uint8)
    return payload, dlc, ok


def read_mapped(path: str | Path, mapping: ColumnMapping, on_bad_rows: OnBadRows = "error") -> Messages:
    """Read one recording with ``mapping``; see the module docstring.

    Raises:
        DataFormatError: a missing column, an unreadable file, or (``on_bad_rows="error"``) the
            first bad row, naming file:line and the field.
    """
    path = Path(path)
    bad = _BadRows(path, on_bad_rows)
    raw = _open_text(path)
    if not raw.strip():
        raise DataFormatError(path, None, "empty file")
    table, rejected = _read_table(raw, path, mapping)
    line_no: list[int] = []  # physical line of each row, computed for the first error only
    n = table.num_rows
    if n == 0 and not rejected:
        raise DataFormatError(path, None, "no data rows" + (" after the header" if mapping.header else ""))
    for ref in mapping.columns():
        _column(table, ref, path)  # missing columns fail here, before any row

    ts, ok_ts = _parse_float(_column(table, mapping.timestamp, path))
    ts = ts / TIME_UNITS[mapping.time_unit]
    ext_flags, ok_ext = (None, np.ones(n, bool))
    if mapping.extended is not None:
        ext_flags, ok_ext = _flags(_column(table, mapping.extended, path))
    ids, ok_id = _parse_ids(_column(table, mapping.can_id, path), mapping, ext_flags)
    dlc_bytes, ok_dlc = None, np.ones(n, bool)
    if mapping.dlc is not None:
        dlc_num, ok_dlc = _parse_float(_column(table, mapping.dlc, path))
        unit = 8 if mapping.dlc_unit == "bits" else 1
        ok_dlc &= (dlc_num >= 0) & (dlc_num <= 8 * unit) & (dlc_num % unit == 0) & (dlc_num == np.round(dlc_num))
        dlc_bytes = np.where(ok_dlc, dlc_num // unit, 0).astype(np.int64)
    payload, dlc, ok_pl = _payload(table, mapping, dlc_bytes, path)
    if dlc_bytes is not None:
        ok_dlc &= ~ok_pl | (dlc.astype(np.int64) == dlc_bytes)

    label = np.zeros(n, np.uint8)
    ok_lab = np.ones(n, bool)
    recording_type = _attack_type(path, mapping)
    row_type, type_names = None, ("normal",)
    if mapping.label is not None:
        values = _column(table, mapping.label, path).to_numpy(zero_copy_only=False)
        names = [NORMAL] + sorted({(recording_type if v == ATTACK else v) for v in mapping.label_map.values()} - {NORMAL})
        code_of = {k: names.index(recording_type if v == ATTACK else v) for k, v in mapping.label_map.items()}
        uniq, inverse = np.unique(values.astype(str), return_inverse=True)
        codes = np.array([code_of.get(u, -1) for u in uniq], np.int64)[inverse] if n else np.zeros(0, np.int64)
        ok_lab = codes >= 0
        row_type = np.where(ok_lab, codes, 0).astype(np.uint8)
        label = (row_type > 0).astype(np.uint8)
        type_names = tuple(names)
    fields_ok = ok_ts & ok_id & ok_pl & ok_dlc & ok_lab & ok_ext
    negative, backwards = _time_order(ts, fields_ok)
    ok = fields_ok & ~negative & ~backwards

    def line_of(i: int) -> int:
        if not line_no:  # header (if any) is line 1; blank and rejected lines shift the rest
            line_no.extend(_row_lines(raw, mapping.header, {line for line, _ in rejected}))
        return line_no[i] if i < len(line_no) else i + 1 + int(mapping.header)

    def cell(ref: str | int | None, i: int) -> str:
        return repr(_column(table, ref, path)[i].as_py()) if ref is not None else ""

    def describe(i: int) -> str:
        def name(ref: str | int | None) -> str:
            return ref if isinstance(ref, str) else f"column {ref}"

        pl_ref = mapping.payload if not isinstance(mapping.payload, tuple) else mapping.payload[0]
        if not ok_ts[i]:
            return f"{name(mapping.timestamp)} {cell(mapping.timestamp, i)}: not a number"
        if not ok_ext[i]:
            return f"{name(mapping.extended)} {cell(mapping.extended, i)}: expected 1/0 or true/false"
        if not ok_id[i]:
            base = "hex" if mapping.id_base == 16 else "decimal"
            hint = "" if mapping.float_ids or "." not in cell(mapping.can_id, i) else \
                " (a float-formatted ID is accepted only with float_ids = true in the mapping)"
            return (f"{name(mapping.can_id)} {cell(mapping.can_id, i)}: not a {base} CAN ID of at most 0x7FF "
                    f"(standard) or 0x1FFFFFFF (extended){hint}")
        if not ok_pl[i]:
            what = {"hex": "hex digits of even length (at most 16)", "bits": "0/1 characters, 8 per byte (at most 64)",
                    "bytes": f"byte values in base {mapping.byte_base} (0-255), no gap"}[mapping.payload_format]
            return f"{name(pl_ref)} {cell(pl_ref, i)}: payload must be {what}"
        if not ok_dlc[i]:
            return (f"{name(mapping.dlc)} {cell(mapping.dlc, i)}: not a DLC in {mapping.dlc_unit} matching the "
                    f"payload's {int(dlc[i])} bytes")
        if not ok_lab[i]:
            return (f"{name(mapping.label)} {cell(mapping.label, i)}: not a value of the mapping's label_map "
                    f"{sorted(mapping.label_map)}")
        return _time_problem(ts, fields_ok, negative, i, lambda j: cell(mapping.timestamp, j),
                             lambda j: f"line {line_of(j)}")

    bad.check(ok, line_of, describe, rejected, label=label, label_ok=ok_lab)
    keep = ok if not ok.all() else slice(None)
    msgs = bad.messages(ts[keep], ids[keep], dlc[keep], payload[keep], label[keep], source=str(path),
                        attack_type=_recording_type(recording_type, row_type, type_names, label, keep))
    if row_type is not None:
        msgs.row_type, msgs.type_names = row_type[keep], type_names
    return msgs


def _recording_type(from_name: str, row_type: np.ndarray | None, names: Sequence[str], label: np.ndarray,
                    keep) -> str:
    """The recording's attack type: the one type its labelled rows carry, ``mixed`` for several,
    ``attack-free`` for none."""
    if row_type is None:
        return from_name
    used = sorted({names[c] for c in np.unique(row_type[keep]) if c > 0})
    if not used:
        return "attack-free"
    return used[0] if len(used) == 1 else "mixed"


# The published headers of the mapped presets: a file with exactly this header is read with the preset by
# readers.read_messages (so a DAGA or ROAD file works in any dataset folder without a spec).
PRESET_HEADERS = {
    "daga": ("timestamp", "CAN_ID", "DLC", "PAYLOAD_HEX", "PAYLOAD_BIN", "ANOMALY"),
    "road": ("Time", "Id", *_BYTES, "Label"),
}
for _name, _header in PRESET_HEADERS.items():
    register_header_reader(_header, partial(read_mapped, mapping=PRESETS[_name]))

__all__ = ["ATTACK", "EXTENDED_ID_FLAG", "NORMAL", "PRESETS", "ColumnMapping", "read_mapped"]
