"""What ``--dataset`` names: a registry key, a folder, or a dataset declared in a spec file.

    kdkit data info --dataset hcrl_sa                              # registry key (+ --data-root)
    kdkit data info --dataset ~/captures/my-car                    # a folder in the can-train-and-test layout
    kdkit data info --dataset volvo.toml                           # a spec file declaring one dataset
    kdkit data info --dataset volvo.toml:volvo-v40                 # ... or one of several
    kdkit data info --dataset volvo-v40                            # a name declared in ./datasets.toml or
                                                                   # a file listed in $KDKIT_DATASETS

A folder needs no spec when it follows the can-train-and-test convention
(``train_01_attack_free/``, ``train_02_with_attacks/``, ``test_*/``; at least one training
folder); a folder holding ``kdkit-dataset.toml`` uses that spec. A spec (TOML or JSON) declares::

    [dataset]
    name = "volvo-v40"                      # run folders, caches and saved_models use it
    root = "../shared/data/daga-volvo-v40"  # relative to the spec file
    format = "daga"                         # a preset of kdkit.data.columns, or a [dataset.columns] table
    train_attack_free = ["clean/*.zip"]     # globs under root
    train_with_attacks = ["infected/DenialOfService/*.zip", "infected/MessageIDFuzzing/*.zip"]
    channel = "can0"                        # logger files: keep this channel (optional)
    window = 100                            # defaults for the graph settings (optional)
    stride = 100

    [dataset.tests]                         # one named scenario per key
    single_id_replay = ["infected/SingleIDReplay/*.zip"]

Several datasets in one file: ``[datasets.<name>]`` tables instead of ``[dataset]`` (JSON: an
object of name -> dataset, ``{"datasets": {"volvo": {...}, ...}}``, not a list). Every
key is checked; an unknown key, a wrong type or a missing training glob is an error naming the
file and the key. A test scenario whose globs match nothing is reported (``missing_scenarios``),
not fatal: releases are often partial.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import tomllib

from kdkit.data.columns import PRESETS, ColumnMapping, iter_mapped, read_mapped
from kdkit.data.loggers import iter_logger_file, read_logger_file
from kdkit.data.readers import (
    CHUNK_ROWS,
    Messages,
    OnBadRows,
    iter_ctt_csv,
    iter_hcrl_car_hacking,
    iter_messages,
    read_ctt_csv,
    read_hcrl_car_hacking,
    read_messages,
)

SPEC_IN_FOLDER = "kdkit-dataset.toml"
SPEC_SEARCH = ("datasets.toml",)  # in the working directory; plus the files in $KDKIT_DATASETS
_KEYS = {"name": str, "root": str, "format": str, "columns": dict, "channel": str, "window": int, "stride": int,
         "train_attack_free": object, "train_with_attacks": object, "tests": dict, "description": str}

log = logging.getLogger("kdkit.data")


class DatasetSpecError(ValueError):
    """A dataset spec file that cannot be used; the message names the file and the key."""


@dataclass
class DatasetSource:
    """Where a dataset's recordings are and how to read them.

    Attributes:
        name: the dataset's own name (run folders, caches, saved_models).
        root: the folder the globs are relative to.
        train_attack_free, train_with_attacks: training globs (folder layout: the two folders).
        tests: scenario name -> globs.
        format: reader preset name or ``auto`` (by file name and first line).
        mapping: a column mapping (overrides ``format``).
        channel: logger files keep only this channel.
        window, stride: the spec's defaults for the graph settings (None: the kit's).
        spec: the spec file, if any.
        searched: a registry dataset's folder under each data root looked in (the fallback roots
            when no data root is set), for the error when none exists.
    """

    name: str
    root: Path
    train_attack_free: list[str]
    train_with_attacks: list[str]
    tests: dict[str, list[str]]
    format: str = "auto"
    mapping: ColumnMapping | None = None
    channel: str | None = None
    window: int | None = None
    stride: int | None = None
    spec: Path | None = None
    description: str = ""
    layout: str = "spec"  # "spec" or "folder"
    hints: list[str] = field(default_factory=list)
    searched: list[Path] = field(default_factory=list)

    def reader(self) -> Callable[..., Messages]:
        """``read(path, on_bad_rows=...)`` for this dataset's recordings."""
        if self.mapping is not None:
            return partial(read_mapped, mapping=self.mapping)
        preset = PRESETS.get(self.format)
        if isinstance(preset, ColumnMapping):
            return partial(read_mapped, mapping=preset)
        if self.format in ("can-train-and-test",):
            return read_ctt_csv
        if self.format in ("hcrl-car-hacking", "otids"):
            return read_hcrl_car_hacking
        if self.format == "candump":
            return partial(read_logger_file, channel=self.channel)
        return partial(read_messages, channel=self.channel)

    def read(self, path: Path, on_bad_rows: OnBadRows = "error") -> Messages:
        return self.reader()(path, on_bad_rows=on_bad_rows)

    def chunks(self, path: Path, on_bad_rows: OnBadRows = "error", chunk_rows: int = CHUNK_ROWS) -> Iterator[Messages]:
        """:meth:`read` in chunks of ``chunk_rows`` messages (the last one carries the file's skip
        counts), streamed in bounded memory for every format: a column mapping or a mapped preset
        (DAGA, ROAD, ...: :func:`~kdkit.data.columns.iter_mapped`), can-train-and-test, HCRL
        Car-Hacking and OTIDS, logger files, and ``auto``
        (:func:`~kdkit.data.readers.iter_messages`: there only a reader added with
        ``register_reader`` is read whole and handed out in slices)."""
        mapping = self.mapping if self.mapping is not None else PRESETS.get(self.format)
        if isinstance(mapping, ColumnMapping):
            return iter_mapped(path, mapping, on_bad_rows, chunk_rows)
        if self.format == "can-train-and-test":
            return iter_ctt_csv(path, on_bad_rows, chunk_rows)
        if self.format in ("hcrl-car-hacking", "otids"):
            return iter_hcrl_car_hacking(path, on_bad_rows, chunk_rows)
        if self.format == "candump":
            return iter_logger_file(path, self.channel, on_bad_rows, chunk_rows)
        return iter_messages(path, on_bad_rows, self.channel, chunk_rows)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "root": str(self.root), "layout": self.layout,
                "spec": str(self.spec) if self.spec else None, "format": self.format,
                "mapping": self.mapping.to_dict() if self.mapping else None, "channel": self.channel}


def safe_name(text: str) -> str:
    """A dataset name usable in folder names: letters, digits, ``-``, ``_``, ``.``."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "dataset"
    return name


def folder_name(text: str) -> str:
    """:func:`safe_name` of a dataset folder's name, with a short hash of the name when characters were
    replaced: `Müller` and `Möller` were both `M_ller`, `my car` and `my_car` one name, so their runs,
    caches and saved_models/ copies replaced each other's."""
    name = safe_name(text)
    return name if name == text else f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:6]}"


def _load_spec_file(path: Path) -> dict[str, dict]:
    """name -> the dataset's table, from a TOML or JSON spec."""
    try:
        text = path.read_text()
    except OSError as err:
        raise DatasetSpecError(f"{path}: cannot read the dataset spec ({err})") from err
    try:
        doc = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise DatasetSpecError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'} ({err})") \
            from err
    if not isinstance(doc, dict):
        raise DatasetSpecError(f"{path}: expected a table with [dataset] or [datasets.<name>]")
    extra = sorted(set(doc) - {"dataset", "datasets"})
    if extra:
        raise DatasetSpecError(f"{path}: unknown top-level key(s) {extra}; expected [dataset] or [datasets.<name>]")
    json_spec = path.suffix.lower() == ".json"
    out: dict[str, dict] = {}
    if "dataset" in doc:
        table = doc["dataset"]
        if not isinstance(table, dict):
            raise DatasetSpecError(
                f"{path}: " + ('"dataset" must be one object, {"dataset": {"name": "...", ...}}' if json_spec
                               else "[dataset] must be one table") + f", got {_kind(table, json_spec)}; several "
                f"datasets go in " + ('"datasets", an object of name -> dataset' if json_spec
                                      else "[datasets.<name>] tables"))
        if not isinstance(table.get("name"), str):
            raise DatasetSpecError(f"{path}: [dataset] needs a name = \"...\"")
        out[table["name"]] = table
    datasets = doc.get("datasets") or {}
    if not isinstance(datasets, dict):
        names = [t.get("name") for t in datasets if isinstance(t, dict)] if isinstance(datasets, list) else []
        example = (f'"{names[0]}"' if names and isinstance(names[0], str) else '"NAME"')
        raise DatasetSpecError(
            f"{path}: " + (f'"datasets" must be an object of name -> dataset, e.g. {{"datasets": {{{example}: '
                           f'{{"root": "...", "train_attack_free": [...]}}, ...}}}}' if json_spec
                           else "datasets must be [datasets.<name>] tables, one per dataset") +
            f", got {_kind(datasets, json_spec)}; one dataset: " +
            ('{"dataset": {"name": "...", ...}}' if json_spec else "a [dataset] table with name = \"...\""))
    for name, table in datasets.items():
        if not isinstance(table, dict):
            raise DatasetSpecError(f"{path}: datasets.{name} must be a table")
        if table.get("name", name) != name:  # [datasets.y] name = "x": y ran as x, sharing x's runs and caches
            raise DatasetSpecError(f"{path}: datasets.{name} sets name = {table['name']!r}; a [datasets.<name>] "
                                   f"table is named by its key: drop the name, or rename the table")
        if name in out:  # [dataset] name = "x" beside [datasets.x]: one replaced the other
            raise DatasetSpecError(f"{path}: dataset {name!r} is declared twice ([dataset] and [datasets.{name}]); "
                                   "give each its own name")
        out[name] = {**table, "name": name}
    if not out:
        raise DatasetSpecError(f"{path}: declares no dataset ([dataset] or [datasets.<name>])")
    return out


def _kind(value: Any, json_spec: bool) -> str:
    """What a spec value is, in the file's own words: a JSON list / a TOML array, a string..."""
    if isinstance(value, list):
        return ("a list" if json_spec else "an array (of tables: [[...]])") + f" of {len(value)}"
    return {str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _globs(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise DatasetSpecError(f"{where}: expected a glob or a list of globs, got {value!r}")
    return list(value)


def source_from_spec(table: dict, spec: Path) -> DatasetSource:
    """Validate one dataset table of ``spec``."""
    name = table.get("name", "?")
    where = f"{spec}: dataset {name!r}"
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        raise DatasetSpecError(f"{where}: unknown key(s) {unknown}; known: {sorted(_KEYS)}")
    for key, kind in _KEYS.items():
        if key in table and not isinstance(table[key], kind) or (kind is int and isinstance(table.get(key), bool)):
            raise DatasetSpecError(f"{where}: {key} must be of type {kind.__name__}, got {table[key]!r}")
    if table.get("name") != safe_name(table["name"]):
        raise DatasetSpecError(f"{where}: name {table['name']!r} must be letters, digits, '-', '_' or '.' "
                               f"(it names folders), e.g. {safe_name(table['name'])!r}")
    root = Path(table.get("root", ".")).expanduser()
    if not root.is_absolute():
        root = spec.parent / root
        tidy = Path(os.path.normpath(root))  # docs/datasets/../../x -> ../x, where symlinks do not make them differ
        root = tidy if tidy.resolve() == root.resolve() else root
    train_free = _globs(table.get("train_attack_free", []), f"{where}: train_attack_free")
    train_att = _globs(table.get("train_with_attacks", []), f"{where}: train_with_attacks")
    if not train_free and not train_att:
        raise DatasetSpecError(f"{where}: declares no training data (train_attack_free and/or train_with_attacks)")
    tests = {str(k): _globs(v, f"{where}: tests.{k}") for k, v in table.get("tests", {}).items()}
    for scen in tests:
        # a scenario's name names its split and its store file: "train" or "val" replaced that split (the model
        # trained on the test recordings, without a word), and "../x" wrote outside the cache folder
        if scen in ("train", "val") or scen != safe_name(scen) or scen.startswith("."):
            raise DatasetSpecError(f"{where}: test scenario name {scen!r} " + (
                "is a split of its own (the training or validation windows): name it e.g. 'test_train_drive'"
                if scen in ("train", "val") else
                f"must be letters, digits, '-', '_' or '.' and not start with '.' (it names files), e.g. "
                f"{safe_name(scen).lstrip('.') or 'test_01'!r}"))
    for key, globs in (("train_attack_free", train_free), ("train_with_attacks", train_att),
                       *((f"tests.{k}", v) for k, v in tests.items())):
        absolute = [g for g in globs if Path(g).expanduser().is_absolute()]
        if absolute:  # (pathlib's glob raised NotImplementedError: a traceback)
            raise DatasetSpecError(f"{where}: {key} glob {absolute[0]!r} is absolute; globs are relative to the "
                                   f"dataset's root ({root}): set root to a folder above the recordings")
    fmt = table.get("format", "auto")
    known_formats = ["auto", *PRESETS]
    if fmt not in known_formats:
        raise DatasetSpecError(f"{where}: format {fmt!r} is not a preset; known: {known_formats} "
                               "(or give a [columns] table)")
    mapping = None
    if "columns" in table:
        try:
            mapping = ColumnMapping.from_dict(table["columns"], f"{where}: columns")
        except ValueError as err:
            raise DatasetSpecError(str(err)) from None
    for key in ("window", "stride"):
        if key in table and table[key] < (2 if key == "window" else 1):
            raise DatasetSpecError(f"{where}: {key} = {table[key]} is too small")
    return DatasetSource(name=table["name"], root=root, train_attack_free=train_free, train_with_attacks=train_att,
                         tests=tests, format=fmt, mapping=mapping, channel=table.get("channel"),
                         window=table.get("window"), stride=table.get("stride"), spec=spec,
                         description=table.get("description", ""), layout="spec")


def folder_source(folder: Path, name: str | None = None) -> DatasetSource:
    """A folder in the can-train-and-test layout (or holding ``kdkit-dataset.toml``)."""
    spec = folder / SPEC_IN_FOLDER
    if spec.is_file():
        tables = _load_spec_file(spec)
        if len(tables) != 1:
            raise DatasetSpecError(f"{spec}: a folder's spec must declare exactly one dataset, found {sorted(tables)}")
        table = next(iter(tables.values()))
        return source_from_spec({"root": ".", **table}, spec)
    tests = {d.name: [f"{d.name}/*"] for d in sorted(folder.iterdir()) if d.is_dir() and d.name.startswith("test_")} \
        if folder.is_dir() else {}
    return DatasetSource(name=folder_name(name or folder.resolve().name), root=folder,
                         train_attack_free=["train_01_attack_free/*"], train_with_attacks=["train_02_with_attacks/*"],
                         tests=tests, layout="folder")


def spec_search_path() -> list[Path]:
    """Spec files searched for dataset names: ``$KDKIT_DATASETS`` (os.pathsep-separated) and
    ``./datasets.toml``."""
    files = [Path(p).expanduser() for p in os.environ.get("KDKIT_DATASETS", "").split(os.pathsep) if p]
    files += [Path(p) for p in SPEC_SEARCH if Path(p).is_file()]
    return files


def declared_datasets() -> dict[str, Path]:
    """Every dataset name declared in the spec search path -> its spec file (first wins; a name
    declared in two files is warned about, once per process)."""
    out: dict[str, Path] = {}
    for spec in spec_search_path():
        if not spec.is_file():
            raise DatasetSpecError(f"{spec}: listed in $KDKIT_DATASETS but does not exist")
        for name in _load_spec_file(spec):
            if name in out and out[name].resolve() != spec.resolve():
                _warn_once(f"dataset {name!r} is declared in {out[name]} and in {spec}: {out[name]}'s is used "
                           f"($KDKIT_DATASETS comes before ./datasets.toml); rename one")
            out.setdefault(name, spec)
    return out


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning("%s", message)


def warn_if_shadowed(name: str, used: str) -> None:
    """``name`` is also declared in a spec of the search path, but ``used`` (a registry dataset, a
    folder of that name) wins: said once, naming both (it was resolved without a word)."""
    try:
        declared = declared_datasets()
    except DatasetSpecError:
        return
    if name in declared:
        _warn_once(f"--dataset {name}: {used} is used, not the dataset {name!r} that {declared[name]} declares; "
                   f"rename that one to use it")


def resolve_custom(text: str) -> DatasetSource | None:
    """The source ``text`` names when it is not a registry key: a spec file (``file[:name]``),
    a folder, or a declared name; None when it is none of them."""
    spec_part, _, pick = text.partition(":") if re.match(r"^.+\.(toml|json):[^/\\]+$", text, re.IGNORECASE) else (text, "", "")
    path = Path(spec_part).expanduser()
    if path.is_file() and path.suffix.lower() in (".toml", ".json"):
        tables = _load_spec_file(path)
        if pick:
            if pick not in tables:
                raise DatasetSpecError(f"{path}: declares no dataset {pick!r}; it declares {sorted(tables)}")
            return source_from_spec(tables[pick], path)
        if len(tables) > 1:
            raise DatasetSpecError(f"{path} declares {len(tables)} datasets {sorted(tables)}: "
                                   f"name one as {path}:<name>")
        return source_from_spec(next(iter(tables.values())), path)
    if path.is_dir():
        warn_if_shadowed(text, f"the folder {path.resolve()}")
        return folder_source(path)
    declared = declared_datasets()
    if text in declared:
        return source_from_spec(_load_spec_file(declared[text])[text], declared[text])
    return None
