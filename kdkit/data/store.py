"""The graph store on disk: one file per split, written as a stream, read memory-mapped.

A store file is ``KDKITGS\\0``, the header's length (8 bytes, little-endian), the header
(JSON: format version, tensor dtypes, shapes and offsets, SHA-256 checksums, the split's
``attack_types`` and ``files``, the caller's metadata) and then every tensor's raw bytes at
a 64-byte aligned offset. Nothing in it needs the whole split in memory:

- :class:`StoreWriter` appends graphs part by part (each tensor to its own spill file next to
  the target), then writes the file once, hashing while it copies, and renames it into place
  (a crash never leaves a partial store).
- :func:`open_store` verifies the checksums with plain reads (no page stays resident) and maps
  the file copy-on-write: tensors are views of the mapping, pages are read when a batch
  touches them, and :meth:`StoreMapping.release` hands them back to the page cache, so a
  store larger than RAM trains in a bounded resident set. Store tensors are read-only by
  contract (a write would be dropped by a release).

The checksum of a tensor is SHA-256 over the SHA-256 digests of its 8 MiB blocks
(:func:`kdkit.data.graphs.store_checksums` computes the same for tensors in memory).
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"KDKITGS\0"
ALIGN = 64
HASH_BLOCK = 1 << 23  # 8 MiB, as graphs.store_checksums


class GraphStoreError(ValueError):
    """A graph store file that cannot be used: truncated, unreadable, altered (checksum
    mismatch) or of another format version. ``reason`` says which; the file should be rebuilt."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"graph store {path} {reason}")


class _BlockHasher:
    """SHA-256 of the 8 MiB blocks' digests of a byte stream fed in pieces of any size."""

    def __init__(self) -> None:
        self.outer, self.block, self.filled = hashlib.sha256(), hashlib.sha256(), 0

    def update(self, data: memoryview) -> None:
        while data.nbytes:
            take = min(HASH_BLOCK - self.filled, data.nbytes)
            self.block.update(data[:take])
            self.filled += take
            data = data[take:]
            if self.filled == HASH_BLOCK:
                self.outer.update(self.block.digest())
                self.block, self.filled = hashlib.sha256(), 0

    def hexdigest(self) -> str:
        out = self.outer.copy()
        if self.filled:
            out.update(self.block.digest())
        return out.hexdigest()


def _digest_of_empty() -> str:
    """The checksum of a tensor without bytes (one block of zero bytes)."""
    return hashlib.sha256(hashlib.sha256(b"").digest()).hexdigest()


@dataclass
class _Column:
    dtype: np.dtype
    inner: tuple[int, ...]  # shape without the first (growing) dimension
    rows: int = 0


class StoreWriter:
    """Append graph arrays to a store file in parts; :meth:`finish` writes it.

    Args:
        path: the store file to write (replaced atomically).
        columns: tensor name -> (dtype, shape without the first dimension). A name whose
            shape is ``(2, ...)`` in the store is given as two columns ``name.0``, ``name.1``
            (written one after the other: the ``[2, E]`` layout of ``edge_index``).
    """

    def __init__(self, path: str | Path, columns: dict[str, tuple[np.dtype, tuple[int, ...]]]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.spill = self.path.with_name(f"{self.path.name}.{os.getpid()}.{id(self)}.parts")
        self.spill.mkdir()
        self.columns = {name: _Column(np.dtype(dt), tuple(inner)) for name, (dt, inner) in columns.items()}
        self.handles = {name: open(self.spill / name, "wb") for name in self.columns}

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        """Append rows to every column (all columns in each call)."""
        if set(arrays) != set(self.columns):
            raise ValueError(f"StoreWriter.append needs exactly {sorted(self.columns)}, got {sorted(arrays)}")
        for name, arr in arrays.items():
            col = self.columns[name]
            arr = np.ascontiguousarray(arr, dtype=col.dtype)
            if arr.shape[1:] != col.inner:
                raise ValueError(f"column {name}: rows of shape {arr.shape[1:]}, expected {col.inner}")
            if arr.size:
                self.handles[name].write(memoryview(arr.reshape(-1)).cast("B"))
            col.rows += arr.shape[0]

    def finish(self, header: dict) -> int:
        """Write the store file with ``header`` added to its JSON header; returns its size."""
        for h in self.handles.values():
            h.close()
        tensors: dict[str, list[str]] = {}
        for name in self.columns:
            base = name.split(".")[0]
            tensors.setdefault(base, []).append(name)
        layout, offset = {}, 0
        for base, parts in tensors.items():
            col = self.columns[parts[0]]
            shape = ([len(parts)] if len(parts) > 1 else []) + [col.rows, *col.inner]
            nbytes = int(np.prod(shape, dtype=np.int64)) * col.dtype.itemsize
            layout[base] = {"dtype": col.dtype.str, "shape": shape, "offset": offset, "nbytes": nbytes}
            offset += -(-nbytes // ALIGN) * ALIGN
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            checksums = {}
            with open(tmp, "wb") as out:
                head = _header_bytes({**header, "tensors": layout, "checksums": {b: "0" * 64 for b in tensors}})
                data_start = _data_start(len(head))
                out.seek(data_start)
                for base, parts in tensors.items():
                    out.seek(data_start + layout[base]["offset"])
                    hasher = _BlockHasher()
                    for name in parts:
                        with open(self.spill / name, "rb") as src:
                            while block := src.read(HASH_BLOCK):
                                hasher.update(memoryview(block))
                                out.write(block)
                    checksums[base] = hasher.hexdigest() if layout[base]["nbytes"] else _digest_of_empty()
                end = data_start + offset
                out.truncate(end)
                head = _header_bytes({**header, "tensors": layout, "checksums": checksums})
                if _data_start(len(head)) != data_start:  # the checksums have a fixed length: never happens
                    raise RuntimeError("store header changed size")
                out.seek(0)
                out.write(head)
            tmp.replace(self.path)
        finally:
            tmp.unlink(missing_ok=True)
            shutil.rmtree(self.spill, ignore_errors=True)
        return end

    def abort(self) -> None:
        """Drop the spill files (after an error)."""
        for h in self.handles.values():
            h.close()
        shutil.rmtree(self.spill, ignore_errors=True)


def _header_bytes(header: dict) -> bytes:
    text = json.dumps(header, sort_keys=True).encode()
    return MAGIC + len(text).to_bytes(8, "little") + text


def _data_start(head_len: int) -> int:
    return -(-head_len // ALIGN) * ALIGN


def write_arrays(path: str | Path, arrays: dict[str, np.ndarray], header: dict) -> int:
    """A store file of arrays held in memory (``GraphSet.save``); returns its size."""
    columns = {}
    for name, arr in arrays.items():
        if name == "edge_index":
            columns.update({f"{name}.0": (arr.dtype, ()), f"{name}.1": (arr.dtype, ())})
        else:
            columns[name] = (arr.dtype, arr.shape[1:])
    writer = StoreWriter(path, columns)
    try:
        parts = {k: v for k, v in arrays.items() if k != "edge_index"}
        if "edge_index" in arrays:
            parts.update({"edge_index.0": arrays["edge_index"][0], "edge_index.1": arrays["edge_index"][1]})
        writer.append(parts)
    except BaseException:
        writer.abort()
        raise
    return writer.finish(header)


@dataclass
class StoreMapping:
    """A store file mapped copy-on-write; the arrays are views of ``mm``."""

    path: Path
    mm: mmap.mmap | None
    arrays: dict[str, np.ndarray]
    header: dict

    def release(self) -> None:
        """Drop the mapped pages from this process (they stay in the page cache)."""
        if self.mm is not None and hasattr(self.mm, "madvise"):
            self.mm.madvise(mmap.MADV_DONTNEED)


def read_header(path: str | Path) -> tuple[dict, int, int]:
    """(header, where the data starts, file size); raises :class:`GraphStoreError`."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            start = f.read(16)
            if start[:8] != MAGIC:
                if zipfile.is_zipfile(path):  # a torch.save store of kdkit <= format 7
                    raise GraphStoreError(path, "has format 7 or older (a torch file); delete it to rebuild")
                raise GraphStoreError(path, "is unreadable (not a kdkit graph store)")
            n = int.from_bytes(start[8:16], "little")
            if n > size:
                raise GraphStoreError(path, "is truncated (header)")
            header = json.loads(f.read(n))
    except FileNotFoundError as err:
        raise GraphStoreError(path, "is missing") from err
    except (OSError, ValueError, UnicodeDecodeError) as err:
        if isinstance(err, GraphStoreError):
            raise
        raise GraphStoreError(path, f"is unreadable ({type(err).__name__}: {str(err)[:200]})") from err
    return header, _data_start(16 + n), size


def verify_file(path: str | Path, header: dict, data_start: int) -> None:
    """Check every tensor against its checksum, reading the file (not mapping it) in 8 MiB
    blocks with up to 8 threads; raises :class:`GraphStoreError` naming the tensor."""
    saved = header.get("checksums") or {}
    layout = header["tensors"]
    missing = [name for name in layout if not saved.get(name)]
    if missing:
        raise GraphStoreError(path, f"is corrupt (no checksum for {', '.join(missing)})")
    blocks = [(name, data_start + t["offset"] + i, min(HASH_BLOCK, t["nbytes"] - i))
              for name, t in layout.items() for i in range(0, max(t["nbytes"], 1), HASH_BLOCK)]
    fd = os.open(path, os.O_RDONLY)
    try:
        def digest(block: tuple[str, int, int]) -> bytes:
            _, at, n = block
            data = os.pread(fd, n, at) if n > 0 else b""
            if len(data) != max(n, 0):
                raise GraphStoreError(path, "is truncated")
            return hashlib.sha256(data).digest()

        workers = min(8, os.cpu_count() or 1, len(blocks))
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                digests = list(pool.map(digest, blocks))
        else:
            digests = [digest(b) for b in blocks]
    finally:
        os.close(fd)
    per = {name: hashlib.sha256() for name in layout}
    for (name, _, _), d in zip(blocks, digests):
        per[name].update(d)
    for name in layout:
        if per[name].hexdigest() != saved[name]:
            raise GraphStoreError(path, f"is corrupt (checksum mismatch in {name})")


def open_store(path: str | Path, mmap_file: bool = True, verify: bool = True) -> StoreMapping:
    """The arrays of a store file: views of a copy-on-write mapping, or read into memory.

    Raises:
        GraphStoreError: missing, truncated, unreadable, or a checksum does not match.
    """
    path = Path(path)
    header, data_start, size = read_header(path)
    try:
        layout = header["tensors"]
        end = max((data_start + t["offset"] + t["nbytes"] for t in layout.values()), default=data_start)
    except (KeyError, TypeError) as err:
        raise GraphStoreError(path, f"is unreadable (header without {err})") from err
    if end > size:
        raise GraphStoreError(path, f"is truncated ({size} of {end} bytes)")
    if verify:
        verify_file(path, header, data_start)
    arrays: dict[str, np.ndarray] = {}
    mm = None
    if mmap_file:
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        for name, t in layout.items():
            count = t["nbytes"] // np.dtype(t["dtype"]).itemsize
            arrays[name] = np.frombuffer(mm, np.dtype(t["dtype"]), count, data_start + t["offset"]).reshape(t["shape"])
    else:
        with open(path, "rb") as f:
            for name, t in layout.items():
                f.seek(data_start + t["offset"])
                arr = np.empty(t["shape"], np.dtype(t["dtype"]))
                f.readinto(memoryview(arr).cast("B"))
                arrays[name] = arr
    return StoreMapping(path, mm, arrays, header)
