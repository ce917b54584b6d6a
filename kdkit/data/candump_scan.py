"""One pass over candump ``-L`` text, compiled with numba: the plain frame lines of the wanted
channel are parsed in place, other channels' lines are left out, and every other line is handed
back (line number, byte range) for the per-line parser in :mod:`kdkit.data.loggers`.

Used by :func:`kdkit.data.loggers.read_logger_file` for large candump files: on the 4-channel
RAV4 log (135,468 lines, can0 = 53,800 of them) reading ``channel="can0"`` drops from about
22 ms (pyarrow's CSV split of every line, then the channel filter and the vectorized parse) to
the time of this one pass; the result is the same (tests run the candump suite both ways).

What counts as a plain line is deliberately narrow; anything else goes to the per-line parser,
which is the reference, so a plain line parsed here gives exactly what that parser gives:

- fields split at single spaces: ``(seconds) channel ID#data``, or four fields with a
  one-letter direction (``R``/``T``); the channel field non-empty, without control characters;
- the timestamp ``(digits[.digits])`` with a mantissa below 2**53 and at most 22 decimals: the
  value is then ``mantissa / 10**decimals``, one correctly rounded IEEE division of two exact
  numbers, the same double as Python's ``float()`` of the text;
- the ID 3 hex digits up to ``0x7FF`` or 8 hex digits up to ``0x1FFFFFFF`` without
  ``CAN_ERR_FLAG``; the data 0-16 hex digits, of even length (no ``R``, no ``##``).

A line of another channel (3 or 4 fields, a clean channel field) is left out without looking at
its timestamp or frame, as the pyarrow path and the per-line parser do.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from kdkit.data.jit import leaf_kernel

_POW10 = np.array([10.0 ** k for k in range(23)], np.float64)  # exact doubles: 1e0 .. 1e22


_HEX = np.full(256, -1, np.int64)  # an ASCII character's hex value, or -1
for _k, _c in enumerate("0123456789abcdef"):
    _HEX[ord(_c)] = _HEX[ord(_c.upper())] = _k


_LO, _HI = np.uint64(0x0101010101010101), np.uint64(0x8080808080808080)
_SP, _NL, _CR = np.uint64(0x2020202020202020), np.uint64(0x0A0A0A0A0A0A0A0A), np.uint64(0x0D0D0D0D0D0D0D0D)
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)


def _scan_loops(chars, words, want, use_want, pow10, hexv, pos, line_no, ts, arb, ext, dlc, payload, line,
                n_fast, slow_line, slow_start, slow_end):
    """Fill the output arrays from ``pos`` (the start of line ``line_no + 1``) on, see the module
    docstring. Returns (pos, line_no, n_fast, n_slow) where it stopped: the end of the text, or a
    line that found the hand-back arrays full (the caller grows them and calls again).

    Fields are found 8 bytes at a time: ``words`` is the text as uint64, and a byte equal to
    ``c`` shows up as the high bit of its lane in ``(x - 0x01..) & ~x & 0x80..`` with
    ``x = word ^ c*0x01..`` (exact for the lowest lane, which is the one taken)."""
    n_chars = chars.shape[0]
    n8 = words.shape[0] * 8
    n_want = want.shape[0]
    cap_slow = slow_line.shape[0]
    n_slow = 0
    while pos < n_chars:
        s = pos
        # the single spaces up to the end of the line
        k = s
        n_spaces = 0
        sp1 = -1
        sp2 = -1
        sp3 = -1
        while True:
            while True:  # k -> the first space, '\n' or '\r' at or after k (or n_chars)
                if k >= n8:
                    while k < n_chars and chars[k] != 32 and chars[k] != 10 and chars[k] != 13:
                        k += 1
                    break
                wi = k >> 3
                x = words[wi]
                a = x ^ _SP
                b = x ^ _NL
                c = x ^ _CR
                m = (((a - _LO) & ~a) | ((b - _LO) & ~b) | ((c - _LO) & ~c)) & _HI
                m &= _ALL << np.uint64((k & 7) << 3)
                if m != 0:
                    k = (wi << 3) + (np.int64(trailing_zeros(m)) >> 3)
                    break
                k = (wi + 1) << 3
            if k >= n_chars or chars[k] != 32:
                break
            n_spaces += 1
            if n_spaces == 1:
                sp1 = k
            elif n_spaces == 2:
                sp2 = k
            elif n_spaces == 3:
                sp3 = k
            k += 1
        e = k
        if e < n_chars and chars[e] == 13 and e + 1 < n_chars and chars[e + 1] == 10:
            pos = e + 2
        else:
            pos = e + 1
        if e == s:
            line_no += 1
            continue  # blank: the per-line parser would skip it
        fields = n_spaces + 1
        clean = fields >= 3 and fields <= 4 and sp2 > sp1 + 1
        if clean:
            for j in range(sp1 + 1, sp2):
                if chars[j] < 33:
                    clean = False
                    break
        ok = clean
        if clean and use_want:
            same = sp2 - sp1 - 1 == n_want
            if same:
                for j in range(n_want):
                    if chars[sp1 + 1 + j] != want[j]:
                        same = False
                        break
            if not same:
                line_no += 1
                continue  # another channel's line: left out unparsed
        f_end = e
        if ok and fields == 4:
            f_end = sp3
            d = chars[sp3 + 1] | 32 if e - sp3 == 2 else 0
            ok = d == 114 or d == 116  # 'r' or 't'
        # the timestamp: '(' digits [ '.' digits ] ')'
        mantissa = 0
        decimals = 0
        digits = 0
        seen_dot = False
        if ok and sp1 - s >= 3 and chars[s] == 40 and chars[sp1 - 1] == 41:
            for j in range(s + 1, sp1 - 1):
                c8 = chars[j]
                if 48 <= c8 <= 57:
                    mantissa = mantissa * 10 + (c8 - 48)
                    digits += 1
                    if seen_dot:
                        decimals += 1
                    if mantissa >= 9007199254740992:  # 2**53
                        ok = False
                        break
                elif c8 == 46 and not seen_dot:
                    seen_dot = True
                else:
                    ok = False
                    break
            if digits == 0 or decimals > 22:
                ok = False
        else:
            ok = False
        # the frame: ID '#' data
        f = sp2 + 1
        length = f_end - f
        id_len = 0
        if ok:
            if length >= 4 and chars[f + 3] == 35:
                id_len = 3
            elif length >= 9 and chars[f + 8] == 35:
                id_len = 8
            else:
                ok = False
        value = 0
        if ok:
            for j in range(f, f + id_len):
                h = hexv[chars[j]]
                if h < 0:
                    ok = False
                    break
                value = (value << 4) | h
            if ok and (value > 0x7FF if id_len == 3 else value > 0x1FFFFFFF):
                ok = False  # above the range, or an error frame (CAN_ERR_FLAG): per-line parser
        n_data = length - id_len - 1
        if ok and (n_data & 1 or n_data > 16):
            ok = False
        if ok:
            start = f + id_len + 1
            for j in range(8):
                payload[n_fast, j] = 0
            for j in range(n_data >> 1):
                hi = hexv[chars[start + 2 * j]]
                lo = hexv[chars[start + 2 * j + 1]]
                if hi < 0 or lo < 0:
                    ok = False
                    break
                payload[n_fast, j] = (hi << 4) | lo
        if not ok:
            if n_slow == cap_slow:
                return s, line_no, n_fast, n_slow  # full: grown by the caller, this line again
            line_no += 1
            slow_line[n_slow] = line_no
            slow_start[n_slow] = s
            slow_end[n_slow] = e
            n_slow += 1
            continue
        line_no += 1
        ts[n_fast] = mantissa / pow10[decimals]
        arb[n_fast] = value
        ext[n_fast] = id_len == 8
        dlc[n_fast] = n_data >> 1
        line[n_fast] = line_no
        n_fast += 1
    return pos, line_no, n_fast, n_slow


_compiled = None
trailing_zeros = None  # numba's count of trailing zero bits, imported with numba by _kernel


def _kernel():
    """:func:`_scan_loops` compiled (numba, on first use; cached on disk beside this file)."""
    global _compiled, trailing_zeros
    if _compiled is None:
        import numba  # imported here: only large candump files need it
        from numba.cpython.unsafe.numbers import trailing_zeros  # (an LLVM cttz; bound as this module's global)

        started = time.perf_counter()
        _compiled = leaf_kernel(numba.njit(cache=True, nogil=True, boundscheck=False)(_scan_loops))
        took = time.perf_counter() - started
        if took > 2.0:
            logging.getLogger("kdkit.data").info("compiled the candump scanner in %.1f s (numba, first use)", took)
    return _compiled


def warm() -> bool:
    """Whether the scanner has run in this process: numba's compiler is then set up, and other
    compiled code (the window graph builder) loads in ~20 ms instead of ~0.6 s."""
    return _compiled is not None


def scan_candump(text: bytes, channel: str | None):
    r"""Scan ASCII candump text. Returns ``(ts, arb_id, extended, dlc, payload, line)`` of the
    plain frames (file order), ``[(line, text), ...]`` of the lines handed back, and the number
    of lines of the text (a ``\n``, ``\r\n`` or ``\r`` ends one; 1-based line numbers)."""
    chars = np.frombuffer(text, np.uint8)
    words = np.frombuffer(text, np.uint64, count=len(text) // 8)
    n_max = len(text) // 11 + 1  # a plain frame line takes at least 11 bytes: '(0) c 000#\n'
    out = (np.empty(n_max, np.float64), np.empty(n_max, np.uint32), np.empty(n_max, np.bool_),
           np.empty(n_max, np.uint8), np.empty((n_max, 8), np.uint8), np.empty(n_max, np.int64))
    want = np.frombuffer((channel or "").encode("ascii"), np.uint8)
    kernel = _kernel()
    pos = line_no = n_fast = 0
    handed: list[tuple[int, str]] = []
    cap = 256
    while True:
        slow = (np.empty(cap, np.int64), np.empty(cap, np.int64), np.empty(cap, np.int64))
        pos, line_no, n_fast, n_slow = kernel(chars, words, want, channel is not None, _POW10, _HEX, pos,
                                              line_no, *out, n_fast, *slow)
        handed += [(line, text[a:b].decode("ascii")) for line, a, b in zip(*(a[:n_slow].tolist() for a in slow))]
        if pos >= len(text):
            break
        cap = min(cap * 16, n_max * 11)
    return tuple(a[:n_fast] for a in out), handed, line_no
