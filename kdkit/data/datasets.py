"""Dataset registry, file discovery, train/validation split and the cached graph store.

    kdkit data prepare --dataset hcrl_sa --data-root /data/can-train-and-test
    kdkit data info --dataset hcrl_sa --json

A dataset key (``hcrl_ch``, ``hcrl_sa``, ``set_01``..``set_04``, ``synthetic``) maps to the
can-train-and-test layout under a data root (``--data-root`` or ``KDKIT_DATA_ROOT``):
``<root>/<folder>/train_01_attack_free``, ``train_02_with_attacks`` and ``test_0x_*`` folders,
each test folder a named scenario. ``synthetic`` is simulated on first use (no download).

- Byte-identical files (the attack-free files present in both train folders) are read once.
- suppress / masquerade recordings are left out of training by default and kept as tests.
- The validation split is one contiguous, seeded block of windows per training file: a
  recording never has windows in both train and validation by shuffling.
- The ID vocabulary is fitted on the training split only (normal messages by default).
- Prepared graphs live in ``<cache>/<dataset>/<key>/<split>.pt``; the key covers the graph
  code version, every setting and the input files' content hashes, so a changed input or
  setting rebuilds and an unchanged one loads memory-mapped. Every store file carries
  checksums verified on load (~0.25 s per 100 MB): a damaged, truncated or missing one is
  rebuilt, with a line on stderr saying so, never loaded.
- Rows skipped with ``on_bad_rows="skip"`` are reported per file in ``info["skipped"]``
  (count, attack rows among them, examples) and printed by ``kdkit data prepare|info``.
"""
from __future__ import annotations

import contextlib
import difflib
import gzip
import hashlib
import json
import logging
import math
import os
import sys
import time
import zipfile
import zlib
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

from kdkit.data.graphs import GRAPH_FORMAT_VERSION, GraphSet, GraphStoreError, IdVocab
from kdkit.data.loggers import ALL_CHANNELS, MixedChannelsError, carries_labels, label_sidecar, left_out_channels
from kdkit.data.prep import SplitStats, build_parts, excluded_block, remove_parts, vocab_ids, write_split
from kdkit.data.progress import progress_bar
from kdkit.data.readers import (LOGGER_SUFFIXES, DataFormatError, Messages, attack_type_from_name, data_suffixes,
                                zip_recording)
from kdkit.data.simulate import ensure_synthetic
from kdkit.data.sources import (DatasetSource, DatasetSpecError, declared_datasets, folder_source, resolve_custom,
                                warn_if_shadowed)
from kdkit.data.store import remove_stale_scratch, scratch_tag

log = logging.getLogger("kdkit.data")

DATA_SUFFIXES = (".csv", ".csv.gz")  # built in; readers.register_reader adds others (readers.data_suffixes)


EXCLUDED_FROM_TRAINING = ("suppress", "masquerade")


@dataclass(frozen=True)
class DatasetSpec:
    key: str
    folder: str
    description: str


REGISTRY: dict[str, DatasetSpec] = {
    "hcrl_ch": DatasetSpec("hcrl_ch", "hcrl-ch", "HCRL Car-Hacking (can-train-and-test v1.5 layout)"),
    "hcrl_sa": DatasetSpec("hcrl_sa", "hcrl-sa", "HCRL survival analysis (Kia Soul, Sonata, Spark)"),
    **{f"set_0{i}": DatasetSpec(f"set_0{i}", f"set_0{i}", f"can-train-and-test set_0{i}") for i in range(1, 5)},
    "synthetic": DatasetSpec("synthetic", "", "built-in simulated CAN traffic (no download)"),
}


_DEFAULT_ROOTS = ("data/can-train-and-test", "../shared/data/can-train-and-test", "../../shared/data/can-train-and-test")


@dataclass(frozen=True)
class PrepareConfig:
    """Settings that shape the prepared graphs (all of them enter the cache key).

    Args:
        window: messages per window (default 100).
        stride: offset between windows (default 100; ``kdkit train`` and ``kdkit data`` default it to
            the window). Above the window, messages between windows are left out (warned).
        label_threshold: window is an attack when its attack share > this (default 0.0).
        val_fraction: share of each training file's windows held out for validation (0.2).
        seed: seeds the position of each file's validation block (0).
        include_excluded: train on suppress/masquerade recordings too (False).
        vocab_source: ``"normal"`` fits the ID vocabulary on attack-free messages of the
            training split, ``"all"`` on every training message (default ``"normal"``).
        on_bad_rows: ``"error"`` or ``"skip"`` (default ``"error"``).
    """

    window: int = 100
    stride: int = 100
    label_threshold: float = 0.0
    val_fraction: float = 0.2
    seed: int = 0
    include_excluded: bool = False
    vocab_source: str = "normal"
    on_bad_rows: str = "error"

    def __post_init__(self) -> None:
        if self.window < 2 or self.stride < 1:
            raise ValueError(f"window must be >= 2 and stride >= 1 (got window={self.window}, stride={self.stride})")
        try:
            threshold = float(self.label_threshold)
        except (TypeError, ValueError):
            threshold = math.nan
        if not (math.isfinite(threshold) and 0.0 <= threshold < 1.0):
            raise ValueError(f"label_threshold must be a number in [0, 1) (a window is an attack when its share of "
                             f"attack messages is above it), got {self.label_threshold!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.vocab_source not in ("normal", "all"):
            raise ValueError(f"vocab_source must be 'normal' or 'all', got {self.vocab_source!r}")
        if self.on_bad_rows not in ("error", "skip"):
            raise ValueError(f"on_bad_rows must be 'error' or 'skip', got {self.on_bad_rows!r}")


@dataclass
class DatasetFiles:
    """The files of one dataset after discovery and de-duplication."""

    name: str
    root: Path
    train: list[Path]
    tests: dict[str, list[Path]]
    duplicates: list[tuple[Path, Path]] = field(default_factory=list)  # (skipped, same content as)
    excluded: list[Path] = field(default_factory=list)  # left out of training
    hashes: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    source: DatasetSource | None = None
    missing_scenarios: dict[str, str] = field(default_factory=dict)  # scenario -> why it has no files
    tests_in_training: list[tuple[Path, Path]] = field(default_factory=list)  # (test recording, training one it is)
    test_repeats: list[tuple[Path, Path]] = field(default_factory=list)  # (test recording, one of an earlier scenario)
    attack_free: set[Path] = field(default_factory=set)  # the recordings the attack-free training globs matched


def resolve_data_root(data_root: str | Path | None = None) -> Path:
    """The folder that holds ``hcrl-sa``, ``hcrl-ch``, ``set_01``...: argument, env, defaults."""
    if data_root:
        return Path(data_root).expanduser()
    if os.environ.get("KDKIT_DATA_ROOT"):
        return Path(os.environ["KDKIT_DATA_ROOT"]).expanduser()
    for cand in _DEFAULT_ROOTS:
        if Path(cand).is_dir():
            return Path(cand)
    return Path(_DEFAULT_ROOTS[0])


def data_root_candidates(data_root: str | Path | None = None) -> list[Path]:
    """The data roots a registry dataset's folder is looked for in, in order: the argument, else
    ``KDKIT_DATA_ROOT``, else the fallback roots (relative to the current directory)."""
    if data_root or os.environ.get("KDKIT_DATA_ROOT"):
        return [resolve_data_root(data_root)]
    return [Path(cand) for cand in _DEFAULT_ROOTS]


def dataset_dir(name: str, data_root: str | Path | None = None, synthetic_seed: int = 0) -> Path:
    """The folder of a registry dataset; ``synthetic`` is simulated there on first use. Without
    ``data_root`` and ``KDKIT_DATA_ROOT``, the first fallback root holding the dataset's folder."""
    if name not in REGISTRY:
        guess = did_you_mean(name, list(REGISTRY))
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(REGISTRY)}"
                       + (f"; did you mean {guess!r}?" if guess else ""))
    if name == "synthetic":
        return Path(ensure_synthetic(seed=synthetic_seed))
    folder = REGISTRY[name].folder
    for root in data_root_candidates(data_root):
        if (root / folder).is_dir():
            return root / folder
    return resolve_data_root(data_root) / folder


def did_you_mean(name: str, names: list[str]) -> str | None:
    """The one of ``names`` that ``name`` nearly is (``-`` for ``_``, a registry dataset's folder
    name such as ``hcrl-sa`` for ``hcrl_sa``, a typo), else None."""
    folders = {spec.folder: key for key, spec in REGISTRY.items() if spec.folder and key in names}
    norm = lambda text: text.lower().replace("-", "_")  # noqa: E731
    normalised = {norm(n): n for n in names}
    guess = folders.get(name) or normalised.get(norm(name))
    if guess is None:
        close = difflib.get_close_matches(norm(name), list(normalised), n=1)
        guess = normalised[close[0]] if close else None
    return guess if guess != name else None


def resolve_source(name: str, data_root: str | Path | None = None, synthetic_seed: int = 0) -> DatasetSource:
    """What ``--dataset name`` means: a registry key (under ``data_root``), a spec file
    (``file.toml[:name]``), a folder, or a name declared in ``./datasets.toml`` or
    ``$KDKIT_DATASETS`` (see :mod:`kdkit.data.sources`)."""
    if not str(name).strip():  # "" was the current folder, taken as a dataset folder
        raise ValueError(f"--dataset {name!r}: an empty name; give a registry key ({', '.join(REGISTRY)}), a dataset "
                         "folder or a spec file")
    if name in REGISTRY:
        warn_if_shadowed(name, f"the built-in registry's {name}")
        source = folder_source(dataset_dir(name, data_root, synthetic_seed), name=name)
        if name != "synthetic":
            source.searched = [root / REGISTRY[name].folder for root in data_root_candidates(data_root)]
        source.hints.append(f"set --data-root or KDKIT_DATA_ROOT to the folder holding '{REGISTRY[name].folder or name}'")
        if name != "synthetic":  # what a migrating user lacks is the release itself: name it
            source.hints.append(f"'{REGISTRY[name].folder}' is a set of the public can-train-and-test v1.5 release (B. Lampe "
                                "and W. Meng, 'can-train-and-test: A Curated CAN Dataset for Automotive Intrusion "
                                "Detection'): download it and unpack it as published, its hcrl-ch/, hcrl-sa/ and set_0N/ "
                                "folders side by side in the data root; kdkit --dataset synthetic runs without any "
                                "download")
        return source
    source = resolve_custom(name)
    if source is None:
        try:
            declared = sorted(declared_datasets())
        except DatasetSpecError:
            declared = []
        looks_like_path = "/" in name or name.endswith((".toml", ".json"))
        where = (f" ({Path(name).resolve()} does not exist: a relative path is taken from the current directory, "
                 f"{Path.cwd()})" if looks_like_path and not Path(name).exists() else "")
        guess = None if looks_like_path else did_you_mean(name, [*REGISTRY, *declared])
        raise FileNotFoundError(
            f"unknown dataset {name!r}{where}" + (f" (did you mean {guess!r}?)" if guess else "")
            + f": not a registry key ({', '.join(REGISTRY)}), not an existing folder or "
            f"spec file (.toml/.json), and not declared in ./datasets.toml or $KDKIT_DATASETS"
            + (f" (declared there: {', '.join(declared)})" if declared else "")
            + "; see the README section 'Bring your own data'")
    return source


def check_dataset(name: str) -> None:
    """Raise ValueError (naming what is wrong) unless ``name`` is a registry key, a dataset
    folder, a spec file or a declared name. The files themselves are checked when read."""
    if name in REGISTRY:
        return
    if resolve_custom(name) is None:  # a broken spec raises DatasetSpecError (a ValueError) here
        try:
            resolve_source(name)
        except FileNotFoundError as err:
            raise ValueError(str(err)) from None


def dataset_defaults(name: str) -> dict[str, int]:
    """The graph settings a dataset's spec declares (``window``, ``stride``); {} for none."""
    if name in REGISTRY:
        return {}
    try:
        source = resolve_custom(name)
    except (DatasetSpecError, OSError):
        return {}
    if source is None:
        return {}
    return {k: v for k, v in (("window", source.window), ("stride", source.stride)) if v is not None}


def known_datasets() -> tuple[str, ...]:
    """Registry keys and the names declared in ./datasets.toml and $KDKIT_DATASETS (for the panel)."""
    try:
        declared = tuple(declared_datasets())
    except DatasetSpecError:
        declared = ()
    return (*REGISTRY, *(d for d in declared if d not in REGISTRY))


def dataset_name(name: str, data_root: str | Path | None = None) -> str:
    """The dataset's own name for run folders and caches: the key, the spec's name or the folder's name."""
    if name in REGISTRY:
        return name
    try:
        source = resolve_custom(name)
    except (DatasetSpecError, OSError):
        source = None
    return source.name if source is not None else name


_NOT_RECORDINGS = ("readme", "license", "licence", "notes", "changelog")


def _is_recording(p: Path) -> bool:
    """A file a dataset folder's glob takes as a recording: a known ending, not a sidecar label
    file (``*.labels.csv``), not hidden, not a README/LICENSE text."""
    low = p.name.lower()
    return (p.is_file() and low.endswith(data_suffixes()) and not low.endswith(".labels.csv")
            and not low.startswith((".", *_NOT_RECORDINGS)))


def _data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_recording(p))


_NEVER_RECORDINGS = (".md", ".json", ".toml", ".yml", ".yaml", ".pdf", ".png", ".jpg", ".html", ".py", ".ipynb")


def _glob(root: Path, patterns: list[str]) -> list[Path]:
    """Recordings matched by the globs under ``root``, sorted, once each. A folder matched by a
    glob gives its recordings (known endings); a file matched by name is taken whatever its
    ending (a spec's column mapping may read ``.dat`` files), unless it is a sidecar label file,
    hidden, a README/LICENSE or a document (``.md``, ``.json``, ...)."""
    out: dict[Path, None] = {}
    for pattern in patterns:
        for p in sorted(root.glob(pattern)):
            if p.is_dir():
                out.update(dict.fromkeys(_data_files(p)))
            elif _is_recording(p) or (p.is_file() and not p.name.lower().endswith((".labels.csv", *_NEVER_RECORDINGS))
                                      and not p.name.lower().startswith((".", *_NOT_RECORDINGS))):
                out[p] = None
    return list(out)


_HASH_MEMO: dict[tuple, str] = {}


def _identity(path: Path, root: Path, hashes: dict[str, str], plain_names: frozenset[str] = frozenset()) -> str:
    """A recording's content as a dataset reads it: its hash, and its label sidecar's (a logger
    file's ``.labels.csv``: new labels must rebuild the store) when it has one; both go to
    ``hashes`` (the cache key) by path below ``root``.

    A compressed recording (``X.csv.gz``, a zip holding ``X.csv``) beside an uncompressed file of its
    inner name somewhere in the dataset (``gunzip -k``, an unzipped copy) is identified by its inflated
    content, the plain file's hash when they are one recording: such a copy was read twice (and a
    test copy of a training recording was not named in-sample). Only then is it inflated here."""
    digest = hashes[str(path.relative_to(root))] = file_sha256(path)
    inner = _inner_name(path)
    if inner is not None and inner in plain_names:
        with contextlib.suppress(OSError, EOFError, zlib.error, zipfile.BadZipFile):  # its reader says what is wrong
            digest = inflated_sha256(path)
    sidecar = label_sidecar(path)
    if sidecar is None:
        return digest
    labels = hashes[str(sidecar.relative_to(root))] = file_sha256(sidecar)
    return digest + "+" + labels


def _inner_name(path: Path) -> str | None:
    """The name a compressed recording inflates to (``X.csv`` for ``X.csv.gz`` and for a zip holding
    ``X.csv``); None for an uncompressed file or an unreadable zip (its reader names what is wrong)."""
    lower = path.name.lower()
    if lower.endswith(".gz"):
        return path.name[:-3]
    if lower.endswith(".zip"):
        try:
            with zipfile.ZipFile(path) as zf:
                return Path(zip_recording(zf, path).filename).name
        except (OSError, zipfile.BadZipFile, DataFormatError):
            return None
    return None


def inflated_sha256(path: Path) -> str:
    """SHA-256 of a ``.gz`` or ``.zip`` recording's inflated bytes (equal to :func:`file_sha256` of its
    uncompressed copy), memoised as :func:`file_sha256` is."""
    return _memo_sha256(path, inflated=True)


def file_sha256(path: Path) -> str:
    """Content hash, memoised per (path, inode, size, mtime, ctime) for this process."""
    return _memo_sha256(path, inflated=False)


def _memo_sha256(path: Path, inflated: bool) -> str:
    st = path.stat()
    memo_key = (inflated, str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if memo_key not in _HASH_MEMO:
        h = hashlib.sha256()
        with contextlib.ExitStack() as stack:
            if not inflated:
                handle = stack.enter_context(open(path, "rb"))
            elif path.name.lower().endswith(".zip"):
                zf = stack.enter_context(zipfile.ZipFile(path))
                handle = stack.enter_context(zf.open(zip_recording(zf, path)))
            else:
                handle = stack.enter_context(gzip.open(path, "rb"))
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                h.update(chunk)
        _HASH_MEMO[memo_key] = h.hexdigest()
    return _HASH_MEMO[memo_key]


def discover(name: str, data_root: str | Path | None = None, include_excluded: bool = False,
             synthetic_seed: int = 0, source: DatasetSource | None = None, channel: str | None = None) -> DatasetFiles:
    """Find a dataset's train files and test scenarios; a clear error names what is missing.
    A test scenario without files is reported in ``missing_scenarios``, not fatal. ``channel``
    (logger files: the bus channel to keep) replaces the dataset spec's when given."""
    source = source or resolve_source(name, data_root, synthetic_seed)
    if channel is not None:
        source = replace(source, channel=channel)
    root = source.root
    if source.layout == "folder":
        layout = (f"expected {root}/train_01_attack_free/ and/or {root}/train_02_with_attacks/ holding recordings "
                  f"({', '.join(data_suffixes())}) and {root}/test_*/ folders (can-train-and-test layout), "
                  f"or a {root}/kdkit-dataset.toml spec")
    else:
        layout = f"check the globs in {source.spec}"
    layout += "".join(f"; {h}" for h in source.hints)
    if not root.is_dir():
        if len(source.searched) > 1:  # no --data-root nor KDKIT_DATA_ROOT: every fallback root was looked in
            raise FileNotFoundError(f"dataset {source.name!r}: none of the folders looked in exists: "
                                    f"{', '.join(map(str, source.searched))} (relative to the current directory, "
                                    f"{Path.cwd()}); {layout}")
        if source.spec is not None and source.layout != "folder":  # a spec's root is relative to the spec file
            raise FileNotFoundError(f"dataset {source.name!r}: its root {root.resolve()} does not exist ({source.spec}: "
                                    f"root is relative to the spec file's folder, {Path(source.spec).resolve().parent}; "
                                    "a spec copied elsewhere needs its root changed, or an absolute one)")
        raise FileNotFoundError(f"dataset {source.name!r}: folder {root} does not exist; {layout}")
    files = DatasetFiles(name=source.name, root=root, train=[], tests={}, source=source)
    train_sets = [(g, _glob(root, [g])) for g in source.train_attack_free + source.train_with_attacks]
    if source.layout == "folder":
        present = [g for g, found in train_sets if (root / g.split("/")[0]).is_dir()]
        if not present:
            raise FileNotFoundError(f"dataset {source.name!r}: no train_01_attack_free or train_02_with_attacks "
                                    f"folder in {root}; {layout}")
        for g, found in train_sets:
            if (root / g.split("/")[0]).is_dir() and not found:
                raise FileNotFoundError(f"dataset {source.name!r}: no recordings ({'/'.join(data_suffixes())}) in "
                                        f"{root / g.split('/')[0]}; {layout}")
    else:
        for g, found in train_sets:
            if not found:
                raise FileNotFoundError(f"dataset {source.name!r}: training glob {g!r} matches no recording under "
                                        f"{root}; {layout}")
    files.attack_free = {p for g, found in train_sets if g in source.train_attack_free for p in found}
    test_sets = {scen: _glob(root, globs) for scen, globs in source.tests.items()}
    plain_names = frozenset(p.name for found in [*(f for _, f in train_sets), *test_sets.values()] for p in found
                            if _inner_name(p) is None)
    seen: dict[str, Path] = {}
    for _, found in train_sets:
        for p in found:
            digest = _identity(p, root, files.hashes, plain_names)
            if digest in seen:
                files.duplicates.append((p, seen[digest]))
                continue
            seen[digest] = p
            # the file's name or a folder of it below the root (DAGA: infected/Masquerade/V40_03.can.zip)
            if not include_excluded and any(k in str(p.relative_to(root)).lower() for k in EXCLUDED_FROM_TRAINING):
                files.excluded.append(p)
                continue
            files.train.append(p)
    trained = set(files.train)  # (not the excluded suppress/masquerade recordings: no model saw them)
    tested: dict[str, tuple[str, Path]] = {}  # content -> (scenario, recording) of the first test recording of it
    for scen, globs in source.tests.items():
        found = test_sets[scen]
        if not found:
            files.missing_scenarios[scen] = f"no recordings match {globs} under {root}"
            continue
        files.tests[scen] = []
        for p in found:
            digest = _identity(p, root, files.hashes, plain_names)
            if digest in seen and seen[digest] in trained:  # a training recording: its test metrics would be in-sample
                files.tests_in_training.append((p, seen[digest]))
            if digest in tested and tested[digest][0] == scen:  # a copy in the same scenario: read once
                files.duplicates.append((p, tested[digest][1]))
                continue
            if digest in tested:  # also a recording of an earlier scenario: "overall" counts it once
                files.test_repeats.append((p, tested[digest][1]))
            else:
                tested[digest] = (scen, p)
            files.tests[scen].append(p)
    if not files.tests and source.layout == "folder":
        files.missing_scenarios["test_*"] = f"no test_* folder with recordings in {root}"
    return files


def validation_block(n_windows: int, val_fraction: float, rng: np.random.Generator) -> tuple[int, int]:
    """A contiguous block ``[v0, v1)`` of window indices for validation, placed by the seed."""
    n_val = int(round(n_windows * val_fraction))
    if n_val == 0 or n_windows < 2:
        return 0, 0
    n_val = min(n_val, n_windows - 1)
    v0 = int(rng.integers(0, n_windows - n_val + 1))
    return v0, v0 + n_val


@dataclass
class PreparedDataset:
    """Graphs of every split of one dataset, plus the vocabulary and a summary."""

    name: str
    config: PrepareConfig
    vocab: IdVocab
    splits: dict[str, GraphSet]  # "train", "val", then one per test scenario
    info: dict
    cache_dir: Path | None = None
    loaded_from_cache: bool = False
    synthetic_seed: int | None = None  # the simulator's seed (``synthetic`` only)
    channel: str | None = None  # the bus kept from logger files (the spec's or the one asked for; "*": every bus)

    @property
    def scenarios(self) -> list[str]:
        return [k for k in self.splits if k not in ("train", "val")]


# what a store holds beyond the graph format: its info's meaning (2: a split's messages are those in its windows,
# files named below their common folder) and the reading (2: a logger file whose start holds one bus is read as
# that bus; 3: a lone glitched timestamp is the row skipped, not every row after it; 4: a restarted clock starts a new
# timeline, its rows kept, where they were skipped as going backwards; 5: the info names the recordings that fill no
# window, attack-labelled messages in attack-free training recordings, test recordings that are training ones or
# repeat another scenario's; a logger file's label sidecar is part of the key). A store of another version is
# rebuilt, not reused with old numbers.
STORE_VERSION = 6


def cache_key(files: DatasetFiles, config: PrepareConfig) -> str:
    src = files.source
    reading = {"format": src.format, "mapping": src.mapping.to_dict() if src.mapping else None, "channel": src.channel,
               "tests": {k: sorted(str(p.relative_to(files.root)) for p in v) for k, v in files.tests.items()}} \
        if src is not None else None
    payload = {"graph_format": GRAPH_FORMAT_VERSION, "store": STORE_VERSION, "config": asdict(config), "reading": reading,
               "files": sorted(files.hashes.items()), "train": [str(p.relative_to(files.root)) for p in files.train]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    return Path(os.environ.get("KDKIT_CACHE_DIR", "runs/cache"))


def prepare(name: str, config: PrepareConfig | None = None, data_root: str | Path | None = None,
            cache_dir: str | Path | None = None, rebuild: bool = False, progress: bool = False,
            synthetic_seed: int = 0, workers: int | None = None, channel: str | None = None) -> PreparedDataset:
    """Build (or load from the store) the graphs of every split of a dataset.

    Recordings are streamed in chunks and the splits written part by part (see
    :mod:`kdkit.data.prep`): memory stays bounded whatever the files' sizes, and the splits
    come back memory-mapped.

    Args:
        name: registry key (``hcrl_sa``, ``synthetic``, ...).
        config: graph and split settings (default ``PrepareConfig()``).
        data_root: folder holding the datasets (default: ``KDKIT_DATA_ROOT`` or a known path).
        cache_dir: where the store lives (default ``runs/cache`` or ``KDKIT_CACHE_DIR``).
        rebuild: ignore an existing store.
        progress: show a progress bar per file (a line a minute in a log).
        synthetic_seed: seed of the simulated dataset (``synthetic`` only).
        workers: recordings prepared at once, each in its own process (default
            ``KDKIT_PREPARE_WORKERS`` or 1); the store is the same for any number.
        channel: logger files: keep only this bus channel (``"*"``: every channel as one
            stream); None: the dataset spec's channel, if any. Given, it replaces the spec's and,
            like it, enters the cache key.
    """
    config = config or PrepareConfig()
    if config.stride > config.window:
        log.warning("%s", stride_gap_note(config.window, config.stride))
    workers = prepare_workers(workers)
    files = discover(name, data_root, config.include_excluded, synthetic_seed, channel=channel)
    if channel is not None:
        _check_channel_applies(files, channel)
    name = files.name  # a folder's or spec's own name, for the store and the summaries
    key = cache_key(files, config)
    store = Path(cache_dir or default_cache_dir()) / name / key
    meta_path = store / "meta.json"
    if meta_path.is_file() and not rebuild:
        cached = _load_store(name, config, store, key)
        if cached is not None:
            remove_stale_scratch(store)  # a killed rebuild's scratch beside the store it did not replace
            cached.info.update(_files_info(files))  # where the recordings are now (the store's key is their content)
            cached.info["missing_scenarios"] = dict(files.missing_scenarios)  # (empty test folders are no content)
            return replace(cached, **_reading(name, files, synthetic_seed))

    t0 = time.perf_counter()
    bar = None
    if progress:
        bar = progress_bar(total=len(_recordings(files)), desc=f"prepare {name}", unit="file")
    try:
        vocab, splits, info = _build(name, files, config, store, key, bar, workers)
    except MixedChannelsError as err:  # say how to choose a channel for a dataset, not for one file
        raise err.choosing(_choose_channel(files.source)) from None
    finally:
        if bar:
            bar.close()  # also on an error, so the message starts on its own line
    info["build_seconds"] = round(time.perf_counter() - t0, 3)
    tmp = meta_path.with_name(f"meta.json.{scratch_tag()}.tmp")  # per writer: parallel jobs may build the same key
    tmp.write_text(json.dumps({"key": key, "splits": list(splits), "vocab": vocab.to_list(), "info": info}, indent=1))
    tmp.replace(meta_path)  # meta.json last: its presence marks a complete store
    return PreparedDataset(name, config, vocab, splits, info, store, False, **_reading(name, files, synthetic_seed))


def _reading(name: str, files: DatasetFiles, synthetic_seed: int) -> dict:
    """How ``prepare`` read the recordings beyond its PrepareConfig (``train(data=...)`` compares them)."""
    return {"synthetic_seed": synthetic_seed if name == "synthetic" else None,
            "channel": files.source.channel if files.source is not None else None}


def _check_channel_applies(files: DatasetFiles, channel: str) -> None:
    """A channel picks frames of logger files (candump, ASC, BLF, TRC). Given for a dataset whose
    recordings are all CSV or text tables, it selected nothing and only gave the run its own cache key.

    Raises:
        ValueError: naming the channel, the dataset and one of its recordings.
    """
    recordings = _recordings(files)
    tables = [p for p in recordings if Path(_inner_name(p) or p.name).suffix.lower() in (".csv", ".txt")]
    if recordings and len(tables) == len(recordings):
        raise ValueError(f"channel {channel!r} (--channel, config key \"channel\"): dataset {files.name!r} holds no "
                         f"logger file, only CSV/text recordings (e.g. {tables[0]}), which have no bus channels; "
                         "drop it")


def _choose_channel(source: DatasetSource | None) -> str:
    """How to pick a bus channel for a dataset's logger files (the end of a :class:`MixedChannelsError`)."""
    spec = f"; or channel = \"NAME\" in its spec {source.spec}" if source is not None and source.spec else ""
    return (f"Choose one with --channel NAME on kdkit train and kdkit data prepare|info (config key \"channel\"; "
            f"Python: make_config(channel=...), prepare(..., channel=...){spec}), or --channel '{ALL_CHANNELS}' to "
            "read them as one stream")


PREPARE_CHUNK_ROWS = 1 << 18  # rows of a recording read at a time (a few hundred bytes a row while it is decoded)


def prepare_workers(workers: int | None = None) -> int:
    """The number of preparation processes: ``workers``, else ``KDKIT_PREPARE_WORKERS``, else 1."""
    if workers is None:
        text = os.environ.get("KDKIT_PREPARE_WORKERS", "1")
        try:
            workers = int(text)
        except ValueError:
            raise ValueError(f"KDKIT_PREPARE_WORKERS={text!r}: expected a whole number of processes >= 1") from None
    if workers < 1:
        raise ValueError(f"workers must be >= 1 (processes preparing recordings at once), got {workers}")
    return workers


def stride_gap_note(window: int, stride: int) -> str:
    """What a stride above the window leaves out ("" when it does not)."""
    if stride <= window:
        return ""
    return (f"stride {stride} > window {window}: {stride - window} of every {stride} messages fall in no window (never "
            "trained on, validated or tested, attacks included); leave stride unset (it follows the window) or set "
            "it <= the window to use every message")


def _files_info(files: DatasetFiles) -> dict:
    """The info a store's recordings give as they are now (set again when a cached store is loaded):
    their root, the training recordings' hashes and the spec's description."""
    return {"root": str(files.root), "train_files_sha256": train_hashes(files),
            "description": files.source.description if files.source else ""}


def train_hashes(files: DatasetFiles) -> dict[str, str]:
    """The training recordings' content hashes by path below the root (what trained and validated a
    model: ``evaluate --input`` of one of them says its metrics are in-sample)."""
    return {str(p.relative_to(files.root)): files.hashes[str(p.relative_to(files.root))] for p in files.train}


def covered_messages(ranges: list[tuple[int, int]], window: int, stride: int) -> int:
    """Messages in the windows ``[w0, w1)`` of a recording, each counted once (overlapping windows
    share messages; a stride above the window leaves the ones between windows out; the last
    messages of a recording that fill no whole window are in none): the split's ``messages``."""
    total = 0
    for w0, w1 in ranges:
        if w1 > w0:
            total += (w1 - w0) * window if stride >= window else (w1 - w0 - 1) * stride + window
    return total


def store_file(store: Path, split: str) -> Path:
    """A split's file in a dataset's store folder."""
    return store / f"{split}.store"


def _load_store(name: str, config: PrepareConfig, store: Path, key: str) -> PreparedDataset | None:
    """The complete store in ``store``, or None (after a line on stderr) when a file of it is
    damaged: unreadable JSON, a missing, truncated or altered split file (checksums)."""
    meta_path = store / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
        vocab, info, split_names = IdVocab.from_list(meta["vocab"]), meta["info"], list(meta["splits"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"kdkit: graph cache {meta_path} is unreadable ({type(err).__name__}: {err}): rebuilding",
              file=sys.stderr, flush=True)
        return None
    splits = {}
    for s in split_names:
        try:
            splits[s] = GraphSet.load(store_file(store, s), expect={"key": key, "split": s})
        except GraphStoreError as err:
            print(f"kdkit: graph cache {err.path} {err.reason}: rebuilding", file=sys.stderr, flush=True)
            return None
    return PreparedDataset(name, config, vocab, splits, info, store, True)


def _note_skipped(skipped: dict[str, dict], path: Path, msgs: Messages, dropped: dict[str, dict] | None = None,
                  timelines: dict[str, dict] | None = None, kept: int | None = None) -> None:
    """Record a file's skipped rows (``on_bad_rows="skip"``) for ``info["skipped"]``, the
    remote/error frames a logger file held for ``info["dropped_frames"]``, and the new timelines
    its reader found (a restarted clock) for ``info["timelines"]``."""
    if timelines is not None and msgs.timeline_restarts:
        timelines[str(path)] = {"restarts": int(msgs.timeline_restarts), "examples": list(msgs.timeline_examples)}
    if dropped is not None and any(msgs.dropped_frames.values()):
        dropped[str(path)] = {k: int(v) for k, v in msgs.dropped_frames.items() if v}
    if msgs.skipped_rows:
        attack, unlabelled = msgs.skipped_attack_rows, msgs.skipped_unlabelled_rows
        skipped[str(path)] = {"rows": msgs.skipped_rows, "attack_rows": attack, "unlabelled_rows": unlabelled,
                              "normal_rows": msgs.skipped_rows - attack - unlabelled,
                              "examples": list(msgs.skipped_examples), "kept": kept}


SLOWEST_GAP_S = 1.0  # a recording whose messages come farther apart on average is no CAN bus's traffic
FASTEST_GAP_S = 20e-6  # nor one faster than a 1 Mbit/s bus carries frames (~47 us a frame)


def _note_timing(timing: dict[str, str], path: Path, part) -> None:
    """Note a recording whose messages come implausibly far apart, or close together, on average:
    timestamps in milliseconds or microseconds read as seconds (a mapping without its time_unit)
    gave 250-1000 s between messages, without a word."""
    if part.messages < 100 or part.seconds <= 0:
        return
    gap = part.seconds / (part.messages - 1)
    if gap > SLOWEST_GAP_S:
        timing[str(path)] = (f"its {part.messages:,} messages come {gap:.3g} s apart on average, slower than any CAN "
                             f"bus carries them: if its timestamps are milliseconds or microseconds, a column "
                             f"mapping says so with time_unit = \"ms\" or \"us\"")
    elif gap < FASTEST_GAP_S:
        timing[str(path)] = (f"its {part.messages:,} messages come {gap * 1e6:.3g} us apart on average, faster than a "
                             f"CAN bus carries them (~47 us a frame at 1 Mbit/s): if its timestamps are seconds, "
                             f"its column mapping's time_unit reads them as smaller units")


def _note_no_windows(no_windows: dict[str, int], path: Path, part) -> None:
    """Note a recording with messages but no window (shorter than a window, or every timeline of
    it is): its messages are in no split, which the split table's counts do not show."""
    if part.windows == 0 and part.messages > 0:
        no_windows[str(path)] = int(part.messages)


def skipped_rows_report(info: dict) -> list[str]:
    """One line per file with skipped rows (and its first example): how many, how many of
    them attack rows. Empty when nothing was skipped."""
    lines = []
    for path, s in info.get("skipped", {}).items():
        parts = [f"{s['attack_rows']} attack", f"{s['normal_rows']} normal"]
        if s["unlabelled_rows"]:
            parts.append(f"{s['unlabelled_rows']} with no readable label")
        lines.append(f"  skipped {s['rows']} malformed rows in {path} ({', '.join(parts)})")
        if s.get("kept") is not None and s["rows"] > s["kept"]:  # (0 windows, exit 0, and no word why)
            lines.append(f"    more rows skipped than kept ({s['kept']:,}): the file is not what its reader expects; "
                         f"see the first one")
        if s["examples"]:
            lines.append(f"    first: {s['examples'][0]}")
    for test, train in info.get("tests_in_training", []):
        lines.append(f"  test recording {test} is the training recording {train} (the same content): its windows trained "
                     f"the model, so its metrics are in-sample, not a test (the overall metrics leave it out); take "
                     f"it out of the test folder")
    for test, first in info.get("test_repeats", []):
        lines.append(f"  test recording {test} is also {first} of an earlier test scenario (the same content): each "
                     f"scenario scores it, the overall metrics count its windows once")
    window = info.get("config", {}).get("window")
    for path, n in info.get("no_windows", {}).items():
        lines.append(f"  no window from {path}: its {n:,} messages are fewer than a window ({window}), or each of its "
                     f"timelines' are (a restarted clock); they are in no split")
    for path, n in info.get("attacks_in_attack_free", {}).items():
        lines.append(f"  {path} is an attack-free training recording (train_attack_free) but {n:,} of its messages are "
                     f"labelled attack: a file in the wrong folder, or labels to check (its windows are trained on "
                     f"with the labels as they are)")
    for path in info.get("unlabelled", []):
        how = ("a logger file without a .labels.csv sidecar: give it one if it holds attacks"
               if Path(path.lower().removesuffix(".gz")).suffix in LOGGER_SUFFIXES else
               "a format without a label column (the HCRL/OTIDS text form): if it holds attacks, label them in a "
               "format that has one, e.g. kdkit.data.write_ctt_csv of a table whose label column you set")
        lines.append(f"  {path} carries no attack labels ({how}): every window of it counts as normal, in a folder "
                     f"for recordings with attacks or tests")
    for path, note in info.get("timing", {}).items():
        lines.append(f"  timestamps of {path}: {note}")
    for path, t in info.get("timelines", {}).items():
        lines.append(f"  the clock restarted {t['restarts']} time(s) in {path}: each part is read as a timeline of its "
                     f"own, no window crosses a restart")
        if t["examples"]:
            lines.append(f"    first: {t['examples'][0]}")
    return lines


def _recordings(files: DatasetFiles) -> list[Path]:
    """Every recording to read, once each: training files, then test scenarios' and excluded ones."""
    return list(dict.fromkeys([*files.train, *(p for ps in _scenarios(files).values() for p in ps)]))


def _scenarios(files: DatasetFiles) -> dict[str, list[Path]]:
    scenarios = dict(files.tests)
    if files.excluded:  # suppress/masquerade training recordings: not trained on, still evaluated
        scenarios["train_excluded_" + "_".join(sorted({attack_type_from_name(p) for p in files.excluded}))] = files.excluded
    return scenarios


def _chunks(source: DatasetSource, path: Path, chunk_rows: int, on_bad_rows: str = "error"):
    """A recording's chunks (module level: pickled for preparation workers)."""
    return source.chunks(path, on_bad_rows=on_bad_rows, chunk_rows=chunk_rows)  # type: ignore[arg-type]


def _build(name: str, files: DatasetFiles, config: PrepareConfig, store: Path, key: str, bar,
           workers: int = 1) -> tuple[IdVocab, dict[str, GraphSet], dict]:
    """Stream every recording once into a part, split, fit the vocabulary on the training split,
    write every split's store (see :mod:`kdkit.data.prep`) and map it."""
    W, S = config.window, config.stride
    removed = remove_stale_scratch(store)  # a killed preparation's parts and temp files
    if removed:
        log.info("removed the scratch of a preparation that stopped (killed or timed out) from %s: %s", store,
                 ", ".join(removed))
    folder = store / f"parts.{scratch_tag()}"
    reader = partial(_chunks, files.source, on_bad_rows=config.on_bad_rows)
    try:
        parts = build_parts(reader, _recordings(files), folder, W, S, config.vocab_source, workers, PREPARE_CHUNK_ROWS,
                            done=(lambda: bar.update(1)) if bar else None)
        rng = np.random.default_rng(config.seed)
        skipped: dict[str, dict] = {}
        dropped: dict[str, dict] = {}
        timelines: dict[str, dict] = {}
        timing: dict[str, str] = {}
        no_windows: dict[str, int] = {}
        attacks_in_free = {str(p): parts[str(p)].attack_messages for p in files.train
                           if p in files.attack_free and parts[str(p)].attack_messages}
        selections: dict[str, list] = {"train": [], "val": []}
        vocab_parts = []
        for p in files.train:
            part = parts[str(p)]
            _note_no_windows(no_windows, p, part)
            _note_skipped(skipped, p, part.last, dropped, timelines, part.messages)
            _note_timing(timing, p, part)
            v0, v1 = validation_block(part.windows, config.val_fraction, rng)
            a, b = excluded_block(part, v0, v1, W, S)
            kept = [(0, a), (b, part.windows)] if b > a else [(0, part.windows)]
            selections["train"].append((part, kept, covered_messages(kept, W, S)))
            selections["val"].append((part, [(v0, v1)], covered_messages([(v0, v1)], W, S)))
            vocab_parts.append(vocab_ids(part, a, b))
        vocab = IdVocab.fit(vocab_parts)
        info = {"dataset": name, **_files_info(files), "config": asdict(config), "vocab_size": len(vocab),
                "left_out_channels": _left_out_channels(files, parts),
                "duplicates_skipped": [[str(a), str(b)] for a, b in files.duplicates],
                "tests_in_training": [[str(a), str(b)] for a, b in files.tests_in_training],
                "test_repeats": [[str(a), str(b)] for a, b in files.test_repeats],
                "excluded_from_training": [str(p) for p in files.excluded],
                "skipped_rows": {p: v["rows"] for p, v in skipped.items()}, "skipped": skipped, "splits": {},
                "source": files.source.describe() if files.source else None,
                "missing_scenarios": dict(files.missing_scenarios), "dropped_frames": dropped, "timelines": timelines,
                "timing": timing, "no_windows": no_windows, "attacks_in_attack_free": attacks_in_free,
                "unlabelled": _unlabelled(files),
                "messages_read": sum(part.messages for part in parts.values())}
        for scen, paths in _scenarios(files).items():
            selections[scen] = []
            for p in paths:
                part = parts[str(p)]
                _note_no_windows(no_windows, p, part)
                _note_skipped(skipped, p, part.last, dropped, timelines, part.messages)
                _note_timing(timing, p, part)
                selections[scen].append((part, [(0, part.windows)], covered_messages([(0, part.windows)], W, S)))
        splits: dict[str, GraphSet] = {}
        for split, chosen in selections.items():
            path = store_file(store, split)
            _, stats = write_split(path, chosen, vocab, config.label_threshold, {"dataset": name, "split": split, "key": key})
            info["splits"][split] = _split_info(stats)
            splits[split] = GraphSet.load(path, verify=False)
    finally:
        remove_parts(folder)
    return vocab, splits, info


def _left_out_channels(files: DatasetFiles, parts: dict) -> dict[str, dict[str, int]]:
    """Per logger file read as the one bus its start holds (no channel chosen), the data frames of
    the buses that start later in it and were left out: a candump log's from a second, compiled
    pass (~0.1 s a MB); an ``.asc``/``.blf``/``.trc`` file's as its reader counted them
    (``Messages.left_out_channels``)."""
    if files.source is not None and files.source.channel is not None:
        return {}
    out: dict[str, dict[str, int]] = {}
    for path in _recordings(files):
        others = left_out_channels(path, parts[str(path)].last)
        if others:
            out[str(path)] = others
    return out


def _split_info(stats: SplitStats) -> dict:
    """What ``kdkit data info`` shows of a split ."""
    cat = lambda arrays: np.concatenate(arrays) if arrays else np.zeros(0, np.int64)  # noqa: E731
    y, nn, ne = cat(stats.y), cat(stats.nodes), cat(stats.edges)
    return {"messages": int(stats.messages), "windows": int(y.size), "attack_windows": int(y.sum()),
            "attack_share": float(y.mean()) if len(y) else 0.0, "distinct_ids": int(stats.ids.size), "oov_nodes": stats.oov,
            "nodes_mean": float(nn.mean()) if len(nn) else 0.0, "nodes_std": float(nn.std()) if len(nn) else 0.0,
            "edges_mean": float(ne.mean()) if len(ne) else 0.0, "edges_std": float(ne.std()) if len(ne) else 0.0,
            "files": stats.files}


def _unlabelled(files: DatasetFiles) -> list[str]:
    """Recordings of the with-attacks training folders and the test scenarios whose reader has no labels
    for them (a logger file without a ``.labels.csv`` sidecar, the OTIDS text format): their windows all
    count as normal, and an attack in them was trained on, or tested, as normal without a word."""
    def label_less(path: Path) -> bool:
        return not carries_labels(path) or (files.source is not None and files.source.format == "otids")

    with_attacks = [p for p in files.train if p not in files.attack_free]
    return [str(p) for p in [*with_attacks, *(p for paths in files.tests.values() for p in paths)] if label_less(p)]


def format_info(name: str, ds: PreparedDataset) -> str:
    """The table ``kdkit data info`` prints: files read once, excluded or with skipped rows, and
    per split and scenario the messages, windows, attack share, IDs, OOV nodes and graph sizes."""
    info = ds.info
    lines = [f"dataset {name} ({info['root']}), vocabulary {info['vocab_size']} IDs incl. OOV, store {ds.cache_dir}"]
    if info.get("description"):  # a spec's own words (what the data is, and what its tests measure)
        lines.append(f"  {info['description']}")
    lines += [f"  read once: {a} (identical to {b})" for a, b in info["duplicates_skipped"]]
    lines += [f"  excluded from training: {p}" for p in info["excluded_from_training"]]
    lines += skipped_rows_report(info)
    if info["splits"].get("train", {}).get("windows", 1) == 0:  # (data info and prepare said nothing, exit 0)
        lines.append(f"  no training windows: kdkit train refuses this dataset (its training recordings, or their "
                     f"timelines, are shorter than a window of {info['config']['window']} messages, or their rows were "
                     f"skipped)")
    lines += [f"  missing test scenario {k}: {why}" for k, why in info.get("missing_scenarios", {}).items()]
    lines += [f"  left out of {path}: " + ", ".join(f"{n} {kind} frames" for kind, n in kinds.items())
              for path, kinds in info.get("dropped_frames", {}).items()]
    lines += [f"  left out of {path}: the frames of channels that start later in it, "
              + ", ".join(f"{c} ({n:,})" for c, n in others.items())
              + " (it is read as the bus its start holds; --channel NAME reads another, '*' every one as one stream)"
              for path, others in info.get("left_out_channels", {}).items()]
    lines.append(f"{'split':<42}{'messages':>10}{'windows':>9}{'attack':>8}{'share':>7}{'IDs':>6}{'OOV nodes':>10}"
                 f"{'nodes/win':>13}{'edges/win':>13}")
    for split, s in info["splits"].items():
        lines.append(f"{split:<42}{s['messages']:>10}{s['windows']:>9}{s['attack_windows']:>8}{s['attack_share']:>7.3f}"
                     f"{s['distinct_ids']:>6}{s['oov_nodes']:>10}{s['nodes_mean']:>7.1f}±{s['nodes_std']:<5.1f}"
                     f"{s['edges_mean']:>7.1f}±{s['edges_std']:<5.1f}")
    if info.get("messages_read") is not None:  # the column counts a split's windows' messages (each once)
        in_windows = sum(s["messages"] for s in info["splits"].values())
        lines.append(f"messages: those in a split's windows; {info['messages_read']:,} were read, {in_windows:,} of "
                     f"them in windows (the rest: a recording's or a timeline's last messages short of a whole window, "
                     f"messages a stride above the window passes over, recordings too short for one)")
    by_type = [(split, attack_windows_by_type(gs)) for split, gs in ds.splits.items()]
    if any(len(types) > 1 for _, types in by_type):  # the attacks of a split told apart (one type: the table says it)
        lines.append("attack windows by type:")
        lines += [f"  {split:<40}" + ", ".join(f"{t} {n:,}" for t, n in types.items()) for split, types in by_type
                  if types]
    return "\n".join(lines)


def attack_windows_by_type(gs: GraphSet) -> dict[str, int]:
    """Attack windows of a split per attack type (a window's type is its attack messages' type)."""
    y = gs.y.numpy() == 1
    if not y.any():
        return {}
    kinds, counts = np.unique(gs.attack_type.numpy()[y], return_counts=True)
    return {gs.attack_types[int(k)]: int(n) for k, n in zip(kinds, counts)}

