"""Peak memory and speed of ``kdkit data prepare`` on column-mapped recordings (ROAD, DAGA), streamed
(``columns.iter_mapped``) or read whole and handed out in slices (how they were prepared before).

    # a ROAD-layout CSV (Time,Id,Byte1..Byte8,Label; .csv or .csv.gz) or a DAGA-layout zip of N rows
    .venv/bin/python benchmarks/prep_memory_mapped.py make runs/bigr/train_02_with_attacks/DoS-big.csv.gz 3000000
    .venv/bin/python benchmarks/prep_memory_mapped.py make runs/bigd/train_02_with_attacks/DoS-big.can.zip 3000000 \
        --format daga
    # prepare a dataset folder once in a fresh process (one JSON line), streamed or read whole
    .venv/bin/python benchmarks/prep_memory_mapped.py measure runs/bigr runs/bigr-cache [--read-whole]
    # streamed and read whole, interleaved in fresh processes, sizes x repeats; generated data deleted after
    .venv/bin/python benchmarks/prep_memory_mapped.py table --format road --sizes 3000000 --repeats 3

The messages are those of ``benchmarks/prep_memory.py`` (40 IDs in a shuffled cycle, random
payloads, a DoS interval in every 10th block of 100 k rows), written in the ROAD layout (labels
0/1, 48 bytes a row) or the DAGA one (DLC in bits, the payload as hex and as bits, 113 bytes a
row, zipped); both are known by their header, so a plain dataset folder holds them. ``measure``
is ``prep_memory.measure`` (peak RSS above the imports, CPU seconds, messages per CPU second,
one torch thread).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prep_memory  # noqa: E402  (the sibling script: generated messages, measure)

SLICE = prep_memory.SLICE
ROAD_HEADER = b"Time,Id,Byte1,Byte2,Byte3,Byte4,Byte5,Byte6,Byte7,Byte8,Label\n"
DAGA_HEADER = b"timestamp,CAN_ID,DLC,PAYLOAD_HEX,PAYLOAD_BIN,ANOMALY\n"
NAMES = {"road": "DoS-generated.csv.gz", "daga": "DoS-generated.can.zip"}


def road_text(first: int, n: int, rng: np.random.Generator) -> bytes:
    """The messages of ``prep_memory.rows_text`` in the ROAD layout (48 bytes a row)."""
    text = np.frombuffer(prep_memory.rows_text(first, n, rng), np.uint8).reshape(n, 41)
    line = np.empty((n, 48), np.uint8)
    line[:, 0:22] = text[:, 0:22]  # seconds, ID and their commas
    for k in range(8):
        line[:, 22 + 3 * k:24 + 3 * k] = text[:, 22 + 2 * k:24 + 2 * k]
        line[:, 24 + 3 * k] = ord(",")
    line[:, 46] = text[:, 39]  # the label, 0 or 1
    line[:, 47] = ord("\n")
    return line.tobytes()


def daga_text(first: int, n: int, rng: np.random.Generator) -> bytes:
    """The messages of ``prep_memory.rows_text`` in the DAGA layout (113 bytes a row)."""
    text = np.frombuffer(prep_memory.rows_text(first, n, rng), np.uint8).reshape(n, 41)
    line = np.empty((n, 113), np.uint8)
    line[:, 0:22] = text[:, 0:22]
    line[:, 22:25] = np.frombuffer(b"64,", np.uint8)  # DLC in bits
    line[:, 25:41] = text[:, 22:38]
    line[:, 41] = ord(",")
    hexits = text[:, 22:38]
    nibble = np.where(hexits >= ord("A"), hexits - 55, hexits - 48).astype(np.uint8)
    line[:, 42:106] = 48 + np.unpackbits((nibble[:, 0::2] << 4) | nibble[:, 1::2], axis=1)
    line[:, 106] = ord(",")
    line[:, 107:112] = np.where(text[:, 39:40] == ord("1"), np.frombuffer(b" True", np.uint8),
                                np.frombuffer(b"False", np.uint8))  # (fields are trimmed)
    line[:, 112] = ord("\n")
    return line.tobytes()


def make(path: Path, rows: int, fmt: str = "road", seed: int = 0) -> Path:
    """Write ``rows`` generated messages in the ROAD layout (gzip when ``path`` ends in .gz) or
    the DAGA layout (a zip holding the text), slice by slice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if fmt == "daga":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf, \
                zf.open(path.name.removesuffix(".zip") + ".txt", "w", force_zip64=True) as out:
            out.write(DAGA_HEADER)
            for a in range(0, rows, SLICE):
                out.write(daga_text(a, min(SLICE, rows - a), rng))
        return path
    import gzip

    with (gzip.open(path, "wb", compresslevel=1) if path.suffix == ".gz" else open(path, "wb")) as out:
        out.write(ROAD_HEADER)
        for a in range(0, rows, SLICE):
            out.write(road_text(a, min(SLICE, rows - a), rng))
    return path


def measure(dataset: str, cache: str, read_whole: bool = False) -> dict:
    """``prep_memory.measure`` of one preparation; ``read_whole``: every recording read whole and
    handed out in slices, as ``DatasetSource.chunks`` did for these formats."""
    if read_whole:
        from kdkit.data.readers import slices
        from kdkit.data.sources import DatasetSource

        def chunks(self, path, on_bad_rows="error", chunk_rows=1 << 18):
            return slices(self.read(path, on_bad_rows), chunk_rows)

        DatasetSource.chunks = chunks
    return {**prep_memory.measure(dataset, cache), "read_whole": read_whole}


def table(fmt: str, sizes: list[int], repeats: int, work: Path) -> list[dict]:
    """Every size prepared streamed and read whole, ``repeats`` times, interleaved, each in a fresh
    process; min/median/max per size and way."""
    try:
        roots = {s: make(work / f"gen-{s}" / "train_02_with_attacks" / NAMES[fmt], s, fmt).parents[1] for s in sizes}
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return prep_memory.interleaved(__file__, roots, work, repeats, {False: ([], {}), True: (["--read-whole"], {})},
                                   "read_whole")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="write a generated ROAD CSV or DAGA zip")
    m.add_argument("path", type=Path)
    m.add_argument("rows", type=int)
    m.add_argument("--format", choices=sorted(NAMES), default="road")
    m.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("measure", help="prepare a dataset folder once; one JSON line")
    r.add_argument("dataset")
    r.add_argument("cache")
    r.add_argument("--read-whole", action="store_true", help="read every recording whole, hand it out in slices")
    t = sub.add_parser("table", help="streamed and read whole, sizes x repeats, interleaved; data deleted after")
    t.add_argument("--format", choices=sorted(NAMES), default="road")
    t.add_argument("--sizes", default="3000000")
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument("--work", type=Path, default=Path("runs/prep_memory_mapped"))
    t.add_argument("--out", type=Path, default=None, help="also write the summary JSON here")
    args = p.parse_args(argv)
    if args.cmd == "make":
        make(args.path, args.rows, args.format, args.seed)
    elif args.cmd == "measure":
        print(json.dumps(measure(args.dataset, args.cache, args.read_whole)))
    else:
        summary = table(args.format, [int(s) for s in args.sizes.split(",")], args.repeats, args.work)
        text = json.dumps({"machine": os.uname().nodename, "cores": os.cpu_count(), "format": args.format,
                           "summary": summary}, indent=1)
        print(text)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
