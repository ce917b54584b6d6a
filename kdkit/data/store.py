"""The graph store on disk: one file per split, written as a stream, read memory-mapped.

A store file is ``KDKITGS\\0``, the header's offset and length (8 bytes each, little-endian),
every tensor's raw bytes from byte 64 on (each at a 64-byte aligned offset), then the header
(JSON: format version, tensor dtypes, shapes and offsets, SHA-256 checksums, the split's
``attack_types`` and ``files``, the caller's metadata), written last. Nothing in it needs the
whole split in memory:

- :class:`StoreWriter` fills a file of known tensor sizes piece by piece, hashing as it
  writes, and renames it into place (a crash never leaves a partial store);
  :class:`ColumnFiles` holds the columns of a recording whose size is not known yet.
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
import secrets
import shutil
import socket
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"KDKITGS\0"
ALIGN = 64
DATA_START = 64  # after MAGIC, the header's offset and length
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


class ColumnFiles:
    """Columns appended part by part to raw files in a folder (no header, no checksum): the
    scratch space of a streamed preparation, read back with :meth:`arrays`.

    Args:
        folder: created; :meth:`remove` deletes it.
        columns: name -> (dtype, shape without the first, growing, dimension).
    """

    def __init__(self, folder: str | Path, columns: dict[str, tuple[np.dtype, tuple[int, ...]]]):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True)
        self.columns = {name: (np.dtype(dt), tuple(inner)) for name, (dt, inner) in columns.items()}
        self.rows = dict.fromkeys(self.columns, 0)
        self.handles = {name: open(self.folder / name, "wb") for name in self.columns}  # noqa: SIM115  (closed in close)

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        """Append rows to every column (all columns in each call)."""
        if set(arrays) != set(self.columns):
            raise ValueError(f"append needs exactly {sorted(self.columns)}, got {sorted(arrays)}")
        for name, arr in arrays.items():
            dtype, inner = self.columns[name]
            arr = np.ascontiguousarray(arr, dtype=dtype)
            if arr.shape[1:] != inner:
                raise ValueError(f"column {name}: rows of shape {arr.shape[1:]}, expected {inner}")
            if arr.size:
                self.handles[name].write(memoryview(arr.reshape(-1)).cast("B"))
            self.rows[name] += arr.shape[0]

    def close(self) -> None:
        """Close the files and record the columns' dtypes and lengths (for :func:`read_columns`)."""
        for h in self.handles.values():
            h.close()
        (self.folder / "columns.json").write_text(json.dumps(
            {name: {"dtype": dt.str, "shape": [self.rows[name], *inner]} for name, (dt, inner) in self.columns.items()}))

    def remove(self) -> None:
        for h in self.handles.values():
            h.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def read_columns(folder: str | Path) -> StoreMapping:
    """The columns a :class:`ColumnFiles` wrote, each file mapped copy-on-write."""
    folder = Path(folder)
    layout = json.loads((folder / "columns.json").read_text())
    arrays, maps = {}, []
    for name, t in layout.items():
        dtype, shape = np.dtype(t["dtype"]), tuple(t["shape"])
        if not shape[0]:
            arrays[name] = np.zeros(shape, dtype)
            continue
        with open(folder / name, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        maps.append(mm)
        arrays[name] = np.frombuffer(mm, dtype).reshape(shape)
    return StoreMapping(folder, maps, arrays, {})


class StoreWriter:
    """A store file of known tensor sizes, filled tensor by tensor in sequential pieces, each
    hashed as it is written; :meth:`finish` writes the header and renames the file into place.

    Args:
        path: the store file to write (replaced atomically).
        layout: tensor name -> (dtype, full shape).
    """

    def __init__(self, path: str | Path, layout: dict[str, tuple[np.dtype, tuple[int, ...]]]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.layout, offset = {}, 0
        for name, (dt, shape) in layout.items():
            dtype = np.dtype(dt)
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            self.layout[name] = {"dtype": dtype.str, "shape": [int(d) for d in shape], "offset": offset, "nbytes": nbytes}
            offset += -(-nbytes // ALIGN) * ALIGN
        self.size = offset
        self.written: dict = dict.fromkeys(self.layout, 0)
        self.rehash: set[str] = set()
        self.hashers = {name: _BlockHasher() for name in self.layout}
        self.tmp = self.path.with_name(f"{self.path.name}.{scratch_tag()}.tmp")
        self.out = open(self.tmp, "w+b")  # noqa: SIM115  (closed in finish or abort)
        self.data_start = DATA_START

    def write(self, name: str, arr: np.ndarray, row: int | None = None) -> None:
        """The next bytes of tensor ``name`` (its pieces in order), or with ``row`` the next
        bytes of ``name[row]`` (a ``[2, E]`` tensor filled in both rows at once)."""
        t = self.layout[name]
        arr = np.ascontiguousarray(arr, dtype=np.dtype(t["dtype"]))
        if not arr.size:
            return
        data = memoryview(arr.reshape(-1)).cast("B")
        key = name if row is None else (name, row)
        done = self.written.get(key, 0)
        limit = t["nbytes"] if row is None else t["nbytes"] // t["shape"][0]
        if done + data.nbytes > limit:
            raise ValueError(f"tensor {name}{'' if row is None else f'[{row}]'}: more than its {limit} bytes written")
        at = self.data_start + t["offset"] + (0 if row is None else row * limit) + done
        os.pwrite(self.out.fileno(), data, at)
        self.written[key] = done + data.nbytes
        if row is None:
            self.hashers[name].update(data)
        else:  # hashed from the file at the end (the rows are written interleaved)
            self.written[name] = self.written.get(name, 0) + data.nbytes
            self.rehash.add(name)

    def finish(self, header: dict) -> int:
        """Write the header (with ``header``'s entries) after the data and rename the file into
        place; returns its size."""
        try:
            short = [name for name, t in self.layout.items() if self.written[name] != t["nbytes"]]
            if short:
                raise ValueError(f"store {self.path}: tensors {short} not completely written")
            self.out.flush()
            for name in self.rehash:
                t, hasher = self.layout[name], _BlockHasher()
                for i in range(0, t["nbytes"], HASH_BLOCK):
                    hasher.update(memoryview(os.pread(self.out.fileno(), min(HASH_BLOCK, t["nbytes"] - i),
                                                      self.data_start + t["offset"] + i)))
                self.hashers[name] = hasher
            checksums = {name: self.hashers[name].hexdigest() if t["nbytes"] else _digest_of_empty()
                         for name, t in self.layout.items()}
            text = json.dumps({**header, "tensors": self.layout, "checksums": checksums}, sort_keys=True).encode()
            at = DATA_START + self.size
            os.pwrite(self.out.fileno(), MAGIC + at.to_bytes(8, "little") + len(text).to_bytes(8, "little"), 0)
            os.pwrite(self.out.fileno(), text, at)
            self.out.truncate(at + len(text))
            self.out.close()
            self.tmp.replace(self.path)
        finally:
            self.abort()
        return at + len(text)

    def abort(self) -> None:
        """Drop the unfinished file (after an error)."""
        self.out.close()
        self.tmp.unlink(missing_ok=True)


def write_arrays(path: str | Path, arrays: dict[str, np.ndarray], header: dict) -> int:
    """A store file of arrays held in memory (``GraphSet.save``); returns its size."""
    writer = StoreWriter(path, {name: (arr.dtype, arr.shape) for name, arr in arrays.items()})
    try:
        for name, arr in arrays.items():
            writer.write(name, arr)
    except BaseException:
        writer.abort()
        raise
    return writer.finish(header)


@dataclass
class StoreMapping:
    """A store file (or column files) mapped copy-on-write; the arrays are views of ``maps``."""

    path: Path
    maps: list[mmap.mmap]
    arrays: dict[str, np.ndarray]
    header: dict

    @property
    def nbytes(self) -> int:
        """Bytes of the mapped arrays."""
        return sum(int(a.nbytes) for a in self.arrays.values())

    def release(self) -> None:
        """Drop the mapped pages from this process; they stay in the page cache, and the arrays
        stay valid (a later read maps the file's pages again)."""
        for mm in self.maps:
            if hasattr(mm, "madvise"):
                mm.madvise(mmap.MADV_DONTNEED)


def read_header(path: str | Path) -> tuple[dict, int, int]:
    """(header, where the data starts, file size); raises :class:`GraphStoreError`."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            start = f.read(24)
            if start[:8] != MAGIC:
                if zipfile.is_zipfile(path):  # a torch.save store of kdkit <= format 7
                    raise GraphStoreError(path, "has format 7 or older (a torch file); delete it to rebuild")
                raise GraphStoreError(path, "is unreadable (not a kdkit graph store)")
            at, n = int.from_bytes(start[8:16], "little"), int.from_bytes(start[16:24], "little")
            if at + n > size:
                raise GraphStoreError(path, f"is truncated ({size} of {at + n} bytes)")
            f.seek(at)
            header = json.loads(f.read(n))
    except FileNotFoundError as err:
        raise GraphStoreError(path, "is missing") from err
    except (OSError, ValueError, UnicodeDecodeError) as err:
        if isinstance(err, GraphStoreError):
            raise
        raise GraphStoreError(path, f"is unreadable ({type(err).__name__}: {str(err)[:200]})") from err
    if not isinstance(header, dict):
        raise GraphStoreError(path, "is unreadable (its header is no JSON object)")
    return header, DATA_START, size


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
    maps = []
    if mmap_file:
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        if hasattr(mm, "madvise"):  # batches touch a few pages per graph: no readahead
            mm.madvise(mmap.MADV_RANDOM)
        maps.append(mm)
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
    return StoreMapping(path, maps, arrays, header)


def scratch_tag() -> str:
    """``host.pid.random``: the name part of a writer's scratch files and folders in a shared cache.
    The pid alone collided across the nodes of a cluster sharing one cache over NFS, and across
    containers with their own pid namespace (two builders in ``parts.1``, one deleting the other's)."""
    return f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}"


STALE_SCRATCH_S = 600.0  # untouched this long, by a process of this host that is gone: a killed writer's
STALE_SCRATCH_ANY_S = 86400.0  # untouched this long, whoever wrote it


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _last_touched(path: Path) -> float:
    """The newest modification time of ``path`` and, for a folder, of everything below it."""
    newest = path.stat().st_mtime
    if path.is_dir():
        for sub in path.iterdir():
            newest = max(newest, _last_touched(sub) if sub.is_dir() else sub.stat().st_mtime)
    return newest


def remove_stale_scratch(folder: Path, now: float | None = None) -> list[str]:
    """Remove the scratch a killed writer left in a store folder (``parts.*`` folders, ``*.tmp``
    files): untouched for :data:`STALE_SCRATCH_S` and written by a process of this host that no
    longer runs, or untouched for :data:`STALE_SCRATCH_ANY_S` (another node's, or named before
    :func:`scratch_tag`). A SIGKILL or a time limit left them to pile up (183 MB beside a 48 MB
    store after five kills). Returns the names removed."""
    if not folder.is_dir():
        return []
    now = time.time() if now is None else now
    host, removed = socket.gethostname(), []
    for entry in folder.iterdir():
        name = entry.name
        if not (name.startswith("parts.") or name.endswith(".tmp")):
            continue
        try:
            age = now - _last_touched(entry)
        except OSError:  # removed meanwhile by its own writer
            continue
        tag = name.removesuffix(".tmp").removeprefix("parts.").rsplit(".", 2)
        mine_and_gone = (len(tag) == 3 and (tag[0] == host or tag[0].endswith("." + host)) and tag[1].isdigit()
                         and not _alive(int(tag[1])))
        if age > STALE_SCRATCH_ANY_S or (age > STALE_SCRATCH_S and mine_and_gone):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(name)
    return removed
