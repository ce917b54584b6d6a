"""Any CSV-like CAN recording through one explicit column mapping, and the presets for the
public layouts a CAN-IDS researcher meets.

    from kdkit.data.columns import ColumnMapping, PRESETS, iter_mapped, read_mapped
    msgs = read_mapped("V40_03.can.zip", PRESETS["daga"])
    for chunk in iter_mapped("V40_03.can.zip", PRESETS["daga"]):   # bounded memory, any size
        ...
    mapping = ColumnMapping(timestamp="Time", can_id="Id", payload=[f"Byte{i}" for i in range(1, 9)],
                            byte_base=10, label="Label", label_map={"Benign": "normal", "Fuzzing": "fuzzing"})

A mapping names the columns (or, for files without a header, their positions) and says how to
read each: timestamp unit; ID base (hex or decimal) and whether float-formatted IDs (``290.0``,
as DAGA writes a few) are allowed; the payload as one hex string, as byte columns
(``Byte1..Byte8``) or as a string of bits; the DLC column and its unit (bytes or bits); the label
column and a value map giving normal or the attack type per message. Every quirk is declared,
never guessed: a value outside the mapping is a bad row (``DataFormatError`` with file:line, or a
counted skip with ``on_bad_rows="skip"``, attack rows among the skipped counted).

Whitespace around every field is stripped, and double quotes around a field. One message per
line: quotes hide no delimiter and no line break. Files may be ``.csv``/``.txt`` (UTF-8),
gzip-compressed (``.gz``) or a ``.zip`` holding one recording (DAGA publishes its traces so).
Empty lines are no rows; error messages name the file's physical line, whatever blank or rejected
lines precede it.

:func:`iter_mapped` reads the same in chunks of messages in bounded memory (``kdkit data prepare``
does): the file inflated and parsed ~1 MiB at a time, with the same messages, skip counts and
errors as :func:`read_mapped`.
"""
from __future__ import annotations

import codecs
import gzip
import re
import sys
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from kdkit.data.readers import (
    CHUNK_ROWS,
    CTT_HEADER,
    EXTENDED_ID_FLAG,
    MAX_CAN_ID,
    MAX_STANDARD_ID,
    DataFormatError,
    Messages,
    OnBadRows,
    _BadRows,
    _Chunker,
    _parse_float,
    _stream_text,
    _string_parts,
    _text,
    _TimeOrder,
    attack_type_from_name,
    concat_messages,
    known_layout,
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
        decimal: the timestamp's decimal separator, ``.`` or ``,`` (a European export:
            ``0,001500`` with ``;`` between fields).
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
    decimal: str = "."

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
        if self.decimal not in (".", ","):
            raise ValueError(f"column mapping: decimal = {self.decimal!r}; expected '.' or ','")
        if self.decimal == self.delimiter:
            raise ValueError(f"column mapping: decimal and delimiter are both {self.delimiter!r}; a file with decimal "
                             f"commas separates its fields otherwise (delimiter = ';')")
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
        for f in fields(cls):  # "false" (a string) was taken as true: float_ids = "false" read 290.0 as 0x290
            if f.name in spec and f.type in ("bool", bool) and not isinstance(spec[f.name], bool):
                raise ValueError(f"{where}: {f.name} must be true or false, got {spec[f.name]!r}")
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


TRAILING_FIELD = "(after the last delimiter)"  # the empty field of rows that end with the delimiter


def _attack_type(path: Path, mapping: ColumnMapping) -> str:
    """The recording's attack type: its folder's name (``attack_type_from = "folder"``, DAGA's
    ``infected/DoS/``), unless that folder is a split of the can-train-and-test layout
    (``train_02_with_attacks/``, ``test_01_.../``: DAGA files put there were typed "train_02_with_attacks"),
    else the first word of its file name."""
    folder = path.parent.name
    if mapping.attack_type_from == "folder" and folder and not re.match(r"(train|test)_\d", folder, re.IGNORECASE):
        return folder
    return attack_type_from_name(path)


def _read_table(raw: bytes, path: Path, names: list[str], delimiter: str, skip: int
                ) -> tuple[pa.Table, list[tuple[int, str]]]:
    """(table of trimmed string columns, rows the parser rejected as (pyarrow's row number, problem)).

    One row per line, whatever the quotes: a field written in double quotes loses them (and the
    blanks around and inside them), but quotes hide no delimiter and no line break, so a row never
    spans two lines and a file can be cut at any line end. Empty lines are no rows; pyarrow numbers
    the rows it sees (lines with a character) from 1, the ``skip`` header rows counted."""
    rejected: list[tuple[int, str]] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        rejected.append((row.number, f"expected {row.expected_columns} fields, got {row.actual_columns}: {_text(row.text)}"))
        return "skip"

    try:
        table = pacsv.read_csv(
            pa.py_buffer(raw),
            read_options=pacsv.ReadOptions(use_threads=False, column_names=names, skip_rows=skip),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=False, invalid_row_handler=on_invalid,
                                             ignore_empty_lines=True),
            convert_options=pacsv.ConvertOptions(strings_can_be_null=False, null_values=[], check_utf8=True,
                                                 column_types={c: pa.string() for c in names}))
    except pa.ArrowInvalid as err:
        raise DataFormatError(path, None, f"unreadable CSV ({err})") from err
    quoted = b'"' in raw
    cols = {}
    for name in table.column_names:  # every column as trimmed text
        col = pc.ascii_trim_whitespace(table.column(name)).combine_chunks()
        if quoted:
            col = pc.ascii_trim_whitespace(pc.replace_substring_regex(col, r'^"(.*)"$', r"\1"))
        cols[name] = col
    return pa.table(cols), rejected


_LINE_END = re.compile(rb"\r\n|\n|\r")


def _utf8_problem(raw: bytes, start: int = 0) -> tuple[int, int, str] | None:
    """The first line of ``raw`` from byte ``start`` on holding bytes that are not UTF-8 text, as
    (its 1-based line in ``raw``, the offset where it starts, the problem); None if there is none."""
    if raw.isascii():
        return None
    try:
        codecs.utf_8_decode(memoryview(raw)[start:], "strict", True)
    except UnicodeDecodeError as err:
        a = start + err.start
        line = raw.count(b"\n", 0, a) + raw.count(b"\r", 0, a) - raw.count(b"\r\n", 0, a) + 1
        begin = max(raw.rfind(b"\n", 0, a), raw.rfind(b"\r", 0, a)) + 1
        return line, begin, (f"bytes that are not UTF-8 text ({raw[a:a + 4]!r}...); a CSV read through a mapping "
                             f"is UTF-8")
    return None


def _line_count(raw: bytes) -> int:
    r"""Lines in ``raw`` as pyarrow's CSV parser counts them (ended by ``\n``, ``\r\n`` or a lone
    ``\r``; text after the last line end is a line too)."""
    ends = raw.count(b"\n") + raw.count(b"\r") - raw.count(b"\r\n")
    return ends + (1 if raw and raw[-1] not in b"\r\n" else 0)


def _filled_lines(raw: bytes) -> np.ndarray:
    """The 1-based numbers of the lines of ``raw`` (as :func:`_line_count` counts them) holding
    at least one character: the lines pyarrow's CSV parser makes rows of (it skips empty ones)."""
    chars = np.frombuffer(raw, np.uint8)
    lf, cr = chars == 10, chars == 13
    end = lf.copy()
    end[:-1] |= cr[:-1] & ~lf[1:]  # a lone \r ends a line; the \r of a \r\n is part of its end
    end[-1:] |= cr[-1:]
    ends = np.flatnonzero(end)
    starts = np.concatenate([[0], ends + 1])
    stops = np.concatenate([ends, [chars.size]])
    crlf = np.zeros(starts.size, np.int64)
    crlf[:-1] = lf[ends] & cr[np.maximum(ends - 1, 0)] & (ends > 0)
    length = stops - starts - crlf
    if starts[-1] == chars.size:  # nothing after the last line end: no line there
        length = length[:-1]
    return np.flatnonzero(length > 0) + 1


def _column(table: pa.Table, ref: str | int, path: Path, header_line: int = 1) -> pa.Array:
    names = table.column_names
    if isinstance(ref, int):
        if ref >= len(names):
            raise DataFormatError(path, header_line, f"column {ref} does not exist: rows have {len(names)} fields")
        return table.column(ref).combine_chunks()  # positions: columns are f0, f1, ... in order
    if ref not in names:
        raise DataFormatError(path, header_line, f"column {ref!r} not in the header {names}")
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
        if pc.any(pc.match_substring(arr, " ")).as_py():  # bytes written apart ("11 22 33"): the same hex digits
            arr = pc.replace_substring(arr, " ", "")
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


def _bad_byte_column(mapping: ColumnMapping, value_of: Callable[[str | int], object]) -> tuple[str | int, bool]:
    """The first byte column of one row that :func:`_payload` refused, and whether it was
    refused for following an empty one (``value_of``: a column's cell in that row)."""
    pattern = r"[0-9A-Fa-f]{1,2}" if mapping.byte_base == 16 else r"\d{1,3}"
    ended = False
    for ref in mapping.payload:
        text = value_of(ref)
        text = "" if text is None else str(text)
        if not text:
            ended = True
        elif ended:
            return ref, True
        elif not re.fullmatch(pattern, text) or int(text, mapping.byte_base) > 255:
            return ref, False
    return mapping.payload[0], False


def read_mapped(path: str | Path, mapping: ColumnMapping, on_bad_rows: OnBadRows = "error") -> Messages:
    """Read one recording with ``mapping``; see the module docstring. The whole text is decoded
    at once; :func:`iter_mapped` reads the same in chunks.

    Raises:
        DataFormatError: a missing column, an unreadable file, or (``on_bad_rows="error"``) the
            first bad row, naming file:line and the field.
    """
    path = Path(path)
    stream = _MappedStream(path, mapping, on_bad_rows, sys.maxsize)
    raw = _open_text(path)
    if not raw.strip():
        raise DataFormatError(path, None, "empty file")
    return concat_messages([*stream.feed(raw), stream.close()])


def iter_mapped(path: str | Path, mapping: ColumnMapping, on_bad_rows: OnBadRows = "error",
                chunk_rows: int = CHUNK_ROWS, block_bytes: int | None = None) -> Iterator[Messages]:
    """:func:`read_mapped` in chunks of ``chunk_rows`` messages, in bounded memory whatever the
    file's size.

    The file is read ``block_bytes`` at a time (a ``.gz`` or the recording of a ``.zip`` inflated
    on the fly) and parsed in pieces of whole lines of about ``block_bytes``, carrying across
    pieces the column names (from the header), the line count, the largest good timestamp so far
    and its line (time order) and the attack types of the rows kept so far. Joined
    (:func:`~kdkit.data.readers.concat_messages`), the chunks equal :func:`read_mapped`: the same
    messages, per-message types, skip counts and ``file:line`` errors (tested at every cut).

    Every chunk carries the counts as they stand when it is handed out, so the last one (always
    handed out, maybe empty) has the file's: the skip counts, and the recording's
    ``attack_type`` where the mapping has a label column, which names the types of the rows kept
    (one type, ``mixed`` or ``attack-free``) and so is known only at the end (a first pass could
    not know it either without decoding every row: in skip mode only the checks tell which rows
    are kept). The per-message types (``row_type``, ``type_names``) are exact in every chunk:
    ``type_names`` follow from the mapping and the file's name alone. In error mode a bad row
    raises when its piece is read, after the chunks before it were handed out.

    Args:
        path: ``.csv``/``.txt`` (any name), optionally ``.gz``, or a ``.zip`` holding one recording.
        mapping: the layout.
        on_bad_rows: ``"error"`` (default) or ``"skip"``, as :func:`read_mapped`.
        chunk_rows: messages per chunk (default :data:`~kdkit.data.readers.CHUNK_ROWS`).
        block_bytes: text decoded at a time (default ``readers._TEXT_PIECE``, 1 MiB).
    """
    path = Path(path)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    stream = _MappedStream(path, mapping, on_bad_rows, chunk_rows)  # the mode is checked before anything is read
    try:
        zipped = zipfile.is_zipfile(path)
    except OSError as err:
        raise DataFormatError(path, None, f"unreadable or corrupt file ({err})") from err
    return _stream_text(stream, path, block_bytes, zipped)


class _MappedStream:
    """The decoding and checking state of one recording read through a column mapping, fed
    piece by piece (pieces of whole lines; a whole read is one piece): the column names (from
    the header, or the first line's fields), the lines so far, the largest good timestamp so far
    and its line, and the attack types of the rows kept so far."""

    def __init__(self, path: Path, mapping: ColumnMapping, mode: OnBadRows, chunk_rows: int):
        self.path, self.mapping = path, mapping
        self.bad = _BadRows(path, mode)
        from_name = _attack_type(path, mapping)
        self.code_of: dict[str, int] = {}  # label value -> index into type_names
        type_names = None
        if mapping.label is not None:
            kinds = {(from_name if v == ATTACK else v) for v in mapping.label_map.values()}
            names = [NORMAL] + sorted(kinds - {NORMAL})
            self.code_of = {k: names.index(from_name if v == ATTACK else v) for k, v in mapping.label_map.items()}
            type_names = tuple(names)
        self.out = _Chunker(self.bad, chunk_rows, str(path), from_name if type_names is None else "attack-free",
                            type_names)
        self.delimiter = " " if mapping.delimiter == "whitespace" else mapping.delimiter
        self.names: list[str] | None = None  # the columns, known from the first line with a character
        self.header_line = 1  # that line
        self.lines = 0  # lines of the pieces so far
        self.any_text = self.any_row = False
        self.used: set[int] = set()  # type codes of the rows kept so far
        self.trailing_checked = False  # whether the first row was looked at for a trailing delimiter
        self.order = _TimeOrder(self.bad)

    def feed(self, raw: bytes) -> Iterator[Messages]:
        """Decode and check one piece of whole lines; hand out the chunks now full."""
        mapping, path = self.mapping, self.path
        self.any_text = self.any_text or (bool(raw) and not raw.isspace())  # (no stripped copy)
        if mapping.delimiter == "whitespace":  # line by line: the same on a piece as on the whole text
            raw = re.sub(rb"[ \t]+", b" ", raw)
            raw = re.sub(rb"(?m)^ | $", b"", raw)
        skip = 0
        if self.names is None:  # the file's first line with a character names the columns
            text = raw.lstrip(b"\r\n")
            self.lines += _line_count(raw[:len(raw) - len(text)])
            if not text:
                return
            raw, skip = text, int(mapping.header)
            head = _LINE_END.search(raw)
            first = raw[:head.start() if head else len(raw)].decode("utf-8", "replace").strip().lstrip("\ufeff")
            names = [c.strip() for c in first.split(self.delimiter)]
            self.header_line = self.lines + 1
            if not mapping.header:
                names = [f"f{i}" for i in range(len(names))]
            elif len(set(names)) != len(names):
                raise DataFormatError(path, self.header_line, f"header {first[:120]!r} repeats a column name")
            self.names = names
        base = self.lines  # the piece's line k (1-based) is the file's line base + k
        self.lines += _line_count(raw)
        body = 0  # where the rows start: the header is not decoded (pyarrow skips it); alone it is no row
        if skip:
            head = _LINE_END.search(raw)
            if head is None:
                return
            body = head.end()
        if not self.trailing_checked:
            self._check_trailing(raw, body)
        bad_text = _utf8_problem(raw, body)
        if bad_text is None:
            yield from self._decode(raw, base, skip)
            return
        # an error in both modes (pyarrow's names no line), after the lines before it, whose bad
        # rows come first (as when a piece ends right before it)
        line, start, problem = bad_text
        if start > body:
            yield from self._decode(raw[:start], base, skip)
        raise DataFormatError(path, base + line, problem)

    def _check_trailing(self, raw: bytes, start: int) -> None:
        """Rows that end with the delimiter (SavvyCAN's GVRET export) have one more field, empty,
        than the header names: the file's first row tells, and the columns get a name for it."""
        if not self.mapping.header or self.delimiter == " ":
            self.trailing_checked = True
            return
        row = re.search(rb"[^\r\n]*[^\s][^\r\n]*", raw[start:])
        if row is None:
            return  # no row in this piece yet
        self.trailing_checked = True
        text = row.group().decode("utf-8", "replace").rstrip()
        if text.endswith(self.delimiter) and text.count(self.delimiter) == len(self.names):
            self.names = [*self.names, TRAILING_FIELD]

    def _decode(self, raw: bytes, base: int, skip: int) -> Iterator[Messages]:
        """Parse, decode and check whole lines (the file's lines ``base + 1``...; the first is the
        header when ``skip``); hand out the chunks now full."""
        mapping, path = self.mapping, self.path
        table, rejected = _read_table(raw, path, self.names, self.delimiter, skip)
        n = table.num_rows
        if not n and not rejected:
            return
        self.any_row = True
        for ref in mapping.columns():
            _column(table, ref, path, self.header_line)  # missing columns fail here, before any row
        line_no: list[np.ndarray] = []  # the file line of each row, computed where a row is bad

        def row_lines() -> np.ndarray:
            if not line_no:  # the lines with a character, less the header and the rejected rows
                filled = _filled_lines(raw) + base
                drop = [0] * skip + [number - 1 for number, _ in rejected]
                line_no.append(np.delete(filled, drop))
                line_no.append(filled)
                if line_no[0].size != n:
                    raise DataFormatError(path, None, f"cannot number the rows of lines {base + 1}..{self.lines}: "
                                                      f"{n} rows parsed in {filled.size - len(drop)} lines")
            return line_no[0]

        def line_of(i: int) -> int:
            return int(row_lines()[i])

        earlier = []
        if rejected:
            row_lines()
            earlier = [(int(line_no[1][number - 1]), problem) for number, problem in rejected]

        ts_text = _column(table, mapping.timestamp, path)
        if mapping.decimal == ",":
            ts_text = pc.replace_substring(ts_text, ",", ".", max_replacements=1)
        ts, ok_ts = _parse_float(ts_text)
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
        row_type = None
        if mapping.label is not None:
            values = _column(table, mapping.label, path).to_numpy(zero_copy_only=False)
            uniq, inverse = np.unique(values.astype(str), return_inverse=True)
            codes = np.array([self.code_of.get(u, -1) for u in uniq], np.int64)[inverse] if n else np.zeros(0, np.int64)
            ok_lab = codes >= 0
            row_type = np.where(ok_lab, codes, 0).astype(np.uint8)
            label = (row_type > 0).astype(np.uint8)
        fields_ok = ok_ts & ok_id & ok_pl & ok_dlc & ok_lab & ok_ext
        extra = None
        if TRAILING_FIELD in table.column_names:  # rows end with the delimiter: nothing may follow it
            extra = pc.not_equal(table.column(TRAILING_FIELD), "").to_numpy(zero_copy_only=False)
            fields_ok &= ~extra

        def cell(ref: str | int | None, i: int) -> str:
            return repr(_column(table, ref, path)[i].as_py()) if ref is not None else ""

        order = self.order.check(ts, fields_ok, lambda j: cell(mapping.timestamp, j), lambda j: f"line {line_of(j)}")
        ok = fields_ok & ~order.bad if order.any_bad else fields_ok
        released = self.order.release(order, self.bad)

        def describe(i: int) -> str:
            def name(ref: str | int | None) -> str:
                return ref if isinstance(ref, str) else f"column {ref}"

            pl_ref = mapping.payload if not isinstance(mapping.payload, tuple) else mapping.payload[0]
            if not ok_ts[i]:
                shown = cell(mapping.timestamp, i)
                hint = (" (a decimal comma: the mapping reads it with decimal = \",\")" if mapping.decimal == "."
                        and re.fullmatch(r"'[+-]?\d+,\d+'", shown) else
                        " (date-times are not read: timestamps are numbers, seconds or time_unit)"
                        if re.search(r"\d[-/.]\d+[-/.]\d+.*\d:\d", shown) else "")
                return f"{name(mapping.timestamp)} {shown}: not a number{hint}"
            if extra is not None and extra[i]:
                return (f"a value after the last column ({cell(TRAILING_FIELD, i)}), where the file's rows end with "
                        f"the delimiter")
            if not ok_ext[i]:
                return f"{name(mapping.extended)} {cell(mapping.extended, i)}: expected 1/0 or true/false"
            if not ok_id[i]:
                base16 = "hex" if mapping.id_base == 16 else "decimal"
                hint = "" if mapping.float_ids or "." not in cell(mapping.can_id, i) else \
                    " (a float-formatted ID is accepted only with float_ids = true in the mapping)"
                if cell(mapping.can_id, i).strip("'\"").lower().startswith("0x"):
                    hint = " (write hex IDs without '0x'; the mapping reads plain hex digits)"
                return (f"{name(mapping.can_id)} {cell(mapping.can_id, i)}: not a {base16} CAN ID of at most 0x7FF "
                        f"(standard) or 0x1FFFFFFF (extended){hint}")
            if not ok_pl[i]:
                what = {"hex": "hex digits of even length (at most 16)",
                        "bits": "0/1 characters, 8 per byte (at most 64)",
                        "bytes": f"byte values in base {mapping.byte_base} (0-255), no gap"}[mapping.payload_format]
                if isinstance(mapping.payload, tuple):  # the byte column at fault, not the first one
                    pl_ref, gap = _bad_byte_column(mapping, lambda ref: _column(table, ref, path)[i].as_py())
                    if gap:
                        return (f"{name(pl_ref)} {cell(pl_ref, i)} after an empty byte column: payload must be {what} "
                                f"(an empty cell ends the payload)")
                return f"{name(pl_ref)} {cell(pl_ref, i)}: payload must be {what}"
            if not ok_dlc[i]:
                return (f"{name(mapping.dlc)} {cell(mapping.dlc, i)}: not a DLC in {mapping.dlc_unit} matching the "
                        f"payload's {int(dlc[i])} bytes")
            if not ok_lab[i]:
                return (f"{name(mapping.label)} {cell(mapping.label, i)}: not a value of the mapping's label_map "
                        f"{sorted(mapping.label_map)}")
            return order.describe(i)

        self.bad.check(ok, line_of, describe, earlier, label=label, label_ok=ok_lab)
        keep = ok if not ok.all() else slice(None)
        columns = [ts[keep], ids[keep], dlc[keep], payload[keep], label[keep]]
        if row_type is not None:
            columns.append(row_type[keep])
        if released:
            self._note_types(released)
            yield from self.out.add(*released)
        columns = self.order.hold(columns, line_of)
        self._note_types(columns)
        yield from self.out.add(*columns)

    def _note_types(self, columns: Sequence[np.ndarray]) -> None:
        """The attack types of rows handed out (the recording's type is theirs)."""
        if len(columns) > 5 and columns[5].size:
            self.used.update(np.unique(columns[5]).tolist())
            self.out.attack_type = _recording_type(self.out.type_names, self.used)

    def close(self) -> Messages:
        """The last chunk, with the file's skip counts and attack type."""
        if not self.any_text:
            raise DataFormatError(self.path, None, "empty file")
        if not self.any_row:
            after = " after the header" if self.mapping.header else ""
            raise DataFormatError(self.path, None, f"no data rows{after}")
        held = self.order.close()
        self._note_types(held)
        self.out.put(*held)
        return self.out.take()


def _recording_type(names: Sequence[str], used: set[int]) -> str:
    """The recording's attack type from the type codes of its kept rows: the one attack type they
    carry, ``mixed`` for several, ``attack-free`` for none."""
    kinds = sorted({names[c] for c in used if c > 0})
    if not kinds:
        return "attack-free"
    return kinds[0] if len(kinds) == 1 else "mixed"


# The published headers of the mapped presets: a file with exactly this header is read with the preset by
# readers.read_messages (so a DAGA or ROAD file works in any dataset folder without a spec).
PRESET_HEADERS = {
    "daga": ("timestamp", "CAN_ID", "DLC", "PAYLOAD_HEX", "PAYLOAD_BIN", "ANOMALY"),
    "road": ("Time", "Id", *_BYTES, "Label"),
}
for _name, _header in PRESET_HEADERS.items():
    register_header_reader(_header, partial(read_mapped, mapping=PRESETS[_name]),
                           partial(iter_mapped, mapping=PRESETS[_name]))
# a can-train-and-test CSV zipped: its own reader reads plain and gzip files, this mapping the same rows in a zip
CTT_MAPPING = ColumnMapping(timestamp="timestamp", can_id="arbitration_id", payload="data_field", label="attack",
                            label_map={"0": NORMAL, "1": ATTACK})
register_header_reader(tuple(CTT_HEADER), partial(read_mapped, mapping=CTT_MAPPING),
                       partial(iter_mapped, mapping=CTT_MAPPING), zipped_only=True)

def training_layout(reading: dict | None, path: str | Path) -> ColumnMapping | None:
    """The column mapping a model's training data was read with (``reading``: the dataset's
    ``describe()``, recorded in the checkpoint's provenance and an export's ``.json``), when ``path``
    is a CSV-like file in a layout :func:`~kdkit.data.readers.read_messages` does not know by
    itself: a model trained on one's own layout scores new recordings of it (``kdkit evaluate
    --input``, ``kdkit detect --input``). None otherwise."""
    mapping = (reading or {}).get("mapping")
    if not mapping or known_layout(Path(path)):
        return None
    return ColumnMapping.from_dict(mapping, "the training data's column mapping")


__all__ = ["ATTACK", "EXTENDED_ID_FLAG", "NORMAL", "PRESETS", "ColumnMapping", "iter_mapped", "read_mapped",
           "training_layout"]
