"""Checkpoint files: one plain dict per file (weights, model config, training config, vocabulary,
feature layout, threshold, optimizer state, provenance), written atomically and loaded with
``weights_only`` and a clear error for anything that is not a kdkit checkpoint.

A checkpoint's ``provenance`` says what it is: its role (teacher or student, with or without
KD), model family, dataset, a hash of its ID vocabulary and the graph settings it was trained
on (window, stride, label threshold, validation share, graph format version). Checkpoints
written before kdkit recorded it get it inferred from their ``train_config``, ``model_config``
and vocabulary (:func:`provenance`); only their graph format version is unknown then.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdkit.data.graphs import GRAPH_FORMAT_VERSION
from kdkit.data.readers import data_suffixes
from kdkit.models.registry import model_from_config

log = logging.getLogger(__name__)

CHECKPOINT_KEYS = {"format", "model", "model_config", "train_config", "vocab", "node_features", "edge_features",
                   "threshold", "optimizer", "scheduler", "kd", "epoch", "step", "rng", "rng_other", "best_metric",
                   "best_tiebreak", "bad_epochs", "history", "batch_size", "kdkit_version", "provenance", "position",
                   "threshold_fitted", "loss_scaler", "rng_ranks"}
"""Keys a kdkit checkpoint may hold. ``position`` (only in a ``last.pt`` written when a job was asked
to stop mid-epoch): the epoch, the loader batches of it already trained, the sampler's batch size
and those batches' losses; ``rng_other``: numpy's, Python's and CUDA's generator states;
``threshold_fitted``: False while a VGAE's ``threshold`` is the placeholder a run replaces after
training (:func:`check_threshold_fitted`); ``loss_scaler``: the ``GradScaler``'s state of a ``16-mixed``
run (its loss scale and growth tracker), which a resume restores; ``rng_ranks``: under DDP, every rank's
generator states (``rng``, ``rng_other``: rank zero's), each rank restoring its own."""

GRAPH_SETTINGS = ("window", "stride", "label_threshold", "val_fraction")  # train_config keys that shape the graphs


CHECKPOINT_FORMAT = 1


# ----------------------------------------------------------------------------- checkpoints
def atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:  # (a folder it cannot write: PermissionError naming the file, not torch's RuntimeError)
            torch.save(obj, f)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")  # terminal colour and style codes (torch's unpickler errors hold them)


def archive_kind(path: str | Path) -> str | None:
    """What a torch file is, from its zip archive's members: ``"package"`` (a ``torch.export``
    archive, the ``.pt2`` kdkit export writes), ``"checkpoint"`` (a ``torch.save`` file: a
    training checkpoint) or None (neither, or not readable as a zip)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    if any(n.rsplit("/", 1)[-1] == "data.pkl" for n in names):
        return "checkpoint"
    if any(n.rsplit("/", 1)[-1] == "archive_format" or "/aotinductor/" in n for n in names):
        return "package"
    return None


def _error_text(err: Exception, limit: int = 200) -> str:
    """An exception's text on one line, without terminal colour codes, cut to ``limit`` characters."""
    text = " ".join(_ANSI.sub("", str(err)).split())
    return text if len(text) <= limit else text[:limit].rstrip() + " ..."


def _exported_from(package: Path) -> str:
    """`` (PATH)``: the checkpoint an exported package's ``.json`` names, or a hint where to find it."""
    try:
        named = json.loads(package.with_suffix(".json").read_text()).get("checkpoint")
    except (OSError, ValueError, AttributeError):
        named = None
    return f" ({named})" if isinstance(named, str) and named else " (the .json beside the package names it)"


EXPORT_META_KEYS = ("package", "output_kind", "native_weights")  # keys only the .json of kdkit export holds


def file_kind(path: str | Path) -> str | None:
    """What kind of kdkit-related file ``path`` is, from its content where that is cheap (a zip's
    member names, a ``.json``'s keys) and else its name: ``"checkpoint"`` (a ``torch.save``
    file), ``"package"`` (an exported ``.pt2``), ``"export_metadata"`` (the ``.json`` kdkit
    export writes beside it), ``"native_weights"`` (its ``.npz``), ``"recording"`` (a file
    ending as kdkit's readers read: ``.csv``, ``.txt``, ``.log``, ``.asc``, ``.blf``, ``.trc``,
    each also ``.gz``, or a ``.zip`` that is no torch archive), or None (none of these)."""
    path = Path(path)
    kind = archive_kind(path)
    if kind is not None:
        return kind
    name = path.name.lower()
    if name.endswith(".npz"):
        return "native_weights"
    if name.endswith(".json"):
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        return "export_metadata" if isinstance(meta, dict) and any(k in meta for k in EXPORT_META_KEYS) else None
    if name.endswith(data_suffixes()):
        return "recording"
    return None


def _export_files(path: Path) -> str:
    """``X.pt2, X.json and X.npz``: the files of the export ``path`` belongs to."""
    return f"{path.with_suffix('.pt2').name}, {path.with_suffix('.json').name} and {path.with_suffix('.npz').name}"


def wrong_checkpoint_kind(path: str | Path, kind: str | None = None) -> str | None:
    """Why ``path`` (given as a training checkpoint) is another kind of file, naming what it is
    and what to pass instead; None when it may be a checkpoint (:func:`file_kind`)."""
    path = Path(path)
    kind = file_kind(path) if kind is None else kind
    if kind == "package":
        return (f"{path} is an exported model package (.pt2, written by kdkit export), not a training checkpoint: run it "
                f"with kdkit detect --model {path}, or give the checkpoint it was exported from{_exported_from(path)}")
    if kind in ("export_metadata", "native_weights"):
        what = "metadata" if kind == "export_metadata" else "native-engine weights (.npz)"
        return (f"{path} is the {what} of an exported model (kdkit export writes {_export_files(path)}), not a "
                f"training checkpoint: run the export with kdkit detect --model {path.with_suffix('.pt2')}, or give "
                f"the checkpoint it was exported from{_exported_from(path.with_suffix('.pt2'))}")
    if kind == "recording":
        suffix = next((x for x in sorted(data_suffixes(), key=len, reverse=True) if path.name.lower().endswith(x)),
                      path.suffix)
        return (f"{path} is named as a CAN recording ({suffix}), not a training checkpoint: a "
                f"checkpoint (--checkpoint, --teacher) is the "
                f"best.pt (or last.pt) "
                f"kdkit train writes in runs/<run>/checkpoints/; a recording goes to --input (kdkit evaluate, kdkit "
                f"detect) or --clean (kdkit calibrate)")
    return None


def wrong_recording_kind(path: str | Path, flag: str = "--input") -> str | None:
    """Why ``path`` (given as a recording) is a model file instead, naming what it is and where it
    goes; None when it may be a recording."""
    path = Path(path)
    kind = file_kind(path)
    if kind == "checkpoint":
        return (f"{flag} {path} is a training checkpoint, not a CAN recording: give it to --checkpoint, and to {flag} "
                f"the recordings to score (candump .log, .asc, .blf, .trc or CSV, .gz too)")
    if kind in ("package", "export_metadata", "native_weights"):
        what = {"package": "an exported model package (.pt2)", "export_metadata": "the metadata of an exported model",
                "native_weights": "the native-engine weights of an exported model"}[kind]
        return (f"{flag} {path} is {what}, not a CAN recording (kdkit export writes {_export_files(path)}): run "
                f"the export with kdkit detect --model {path.with_suffix('.pt2')} --input RECORDING, or give "
                f"--checkpoint the checkpoint it was exported from{_exported_from(path.with_suffix('.pt2'))}")
    return None


_TORCH_ADVICE = re.compile(r"WeightsUnpickler error:\s*(.*?)(?:\.\s|\s*Please use|\s*Check the documentation|$)")


def _load_error(err: Exception) -> str:
    """Why ``torch.load`` failed (`` (...)`` or ``: ...``, to follow "not a loadable kdkit checkpoint"), without torch's advice to load the file unsafely
    (``weights_only=False``) or to allow its globals."""
    text = _error_text(err, limit=100_000)
    if "Weights only load failed" not in text:
        return f" ({type(err).__name__}: {_error_text(err)})"
    match = _TORCH_ADVICE.search(text)
    detail = match.group(1).strip().rstrip(".") if match else ""
    if detail.startswith("Unsupported global"):
        return (f": it holds Python objects no kdkit checkpoint holds ({detail}); kdkit loads checkpoints "
                f"weights-only and runs no code from a file")
    return f": not a file torch.save wrote ({detail[:1].lower() + detail[1:] if detail else 'unpickling failed'})"


def load_checkpoint(path: str | Path) -> dict:
    """Load a kdkit checkpoint safely (``weights_only``) and check its keys. A file of another
    kind (an exported model, a recording: :func:`file_kind`) is refused naming what it is."""
    path = Path(path)
    if path.is_dir():  # a run folder given for its checkpoint
        found = [p for p in (path / "checkpoints" / "best.pt", path / "best.pt") if p.is_file()]
        raise FileNotFoundError(f"checkpoint {path} is a folder, not a checkpoint file: "
                                + (f"give {found[0]}" if found else "give the best.pt (or last.pt) kdkit train writes "
                                   "in runs/<run>/checkpoints/"))
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    wrong = wrong_checkpoint_kind(path)
    if wrong is not None:
        raise ValueError(wrong)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for foreign pickles
        raise ValueError(f"{path}: not a loadable kdkit checkpoint{_load_error(err)}. A checkpoint (--checkpoint, "
                         f"--teacher) is the best.pt "
                         f"(or last.pt) kdkit train writes in runs/<run>/checkpoints/") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a kdkit checkpoint (format {ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__})")
    extra = set(ckpt) - CHECKPOINT_KEYS
    if extra:
        raise ValueError(f"{path}: unexpected checkpoint keys {sorted(extra)}; expected a subset of {sorted(CHECKPOINT_KEYS)}")
    return ckpt


def vocab_hash(vocab: list[int] | None) -> str | None:
    """A short hash of an ID vocabulary (``IdVocab.to_list()``); None for none."""
    if vocab is None:
        return None
    return hashlib.sha256(json.dumps([int(i) for i in vocab]).encode()).hexdigest()[:16]


def make_provenance(role: str, family: str, dataset: str, vocab: list[int], train_config: dict,
                    kd: bool = False, teacher: str | None = None) -> dict:
    """The ``provenance`` entry of a new checkpoint.

    Args:
        role: ``"teacher"`` or ``"student"``.
        family: the model family (``model.config["kind"]``).
        dataset: the dataset it was trained on (registry key, folder or spec file, as given).
        vocab: its ID vocabulary (``IdVocab.to_list()``).
        train_config: the run's ``TrainConfig.to_dict()`` (graph settings are read from it).
        kd: a student distilled from a teacher.
        teacher: the teacher checkpoint's path (KD only).
    """
    graph = {k: train_config.get(k) for k in GRAPH_SETTINGS}
    graph["graph_format"] = GRAPH_FORMAT_VERSION
    return {"role": role, "family": family, "dataset": dataset, "vocab_hash": vocab_hash(vocab),
            "vocab_size": len(vocab) + 1, "graph": graph, "synthetic_seed": train_config.get("synthetic_seed"),
            "kd": bool(kd), "teacher": teacher}


def check_threshold_fitted(ckpt: dict, path: str | Path, what: str = "scored") -> None:
    """A VGAE checkpoint saved during training holds a placeholder threshold until the run fits it on
    validation data (after the last epoch): scored at it, every window was an attack, without a word.

    Raises:
        ValueError: ``threshold_fitted`` is False (checkpoints before the flag are taken as fitted).
    """
    if ckpt.get("threshold_fitted") is False:
        raise ValueError(f"{path}: its threshold was never fitted (the run stopped before its validation fit: a time "
                         f"limit, a kill, a failure in the test pass; a last.pt is never fitted), so it cannot be {what} at it: "
                         f"finish the run with kdkit train ... --resume auto and use its best.pt, fit a threshold on "
                         f"attack-free recordings with kdkit calibrate --checkpoint {path} --clean FILES --out NEW.pt, or "
                         f"give a --threshold (kdkit evaluate --input, kdkit detect)")


def provenance(ckpt: dict, where: str | Path = "checkpoint") -> dict:
    """What a checkpoint is: its stored ``provenance``, or one inferred for an older checkpoint.

    An older kdkit checkpoint (no ``provenance`` key) always holds its ``train_config``,
    ``model_config`` and vocabulary: role, family, dataset, vocabulary hash and graph settings
    are inferred from them (``"inferred": True``); its graph format version is unknown (None),
    and a warning says so. Callers still compare its feature layout with the current one.
    """
    if isinstance(ckpt.get("provenance"), dict):
        return ckpt["provenance"]
    tc = ckpt.get("train_config") or {}
    mc = ckpt.get("model_config") or {}
    role = tc.get("type")
    log.warning("%s predates kdkit's provenance record: its role (%s), dataset (%s) and graph settings are taken "
                "from its train_config, its graph format version is unknown", where, role, tc.get("dataset"))
    graph = {k: tc.get(k) for k in GRAPH_SETTINGS}
    graph["graph_format"] = None
    vocab = ckpt.get("vocab")
    return {"role": role, "family": mc.get("kind"), "dataset": tc.get("dataset"), "vocab_hash": vocab_hash(vocab),
            "vocab_size": len(vocab) + 1 if isinstance(vocab, list) else None, "graph": graph,
            "synthetic_seed": tc.get("synthetic_seed"), "kd": role == "student" and bool(tc.get("teacher")),
            "teacher": tc.get("teacher"), "inferred": True}


def _shape_differences(expected: dict, stored: dict) -> list[str]:
    out = [f"{k} missing" for k in expected if k not in stored]
    out += [f"{k} unexpected" for k in stored if k not in expected]
    out += [f"{k}: config gives {tuple(expected[k].shape)}, weights are {tuple(stored[k].shape)}"
            for k in expected if k in stored and tuple(expected[k].shape) != tuple(stored[k].shape)]
    return out


def model_from_checkpoint(ckpt: dict, where: str | Path = "checkpoint") -> nn.Module:
    """The model of a checkpoint with its weights.

    The model config is type-checked and its shapes bounded
    (:data:`kdkit.models.registry.SHAPE_LIMITS`), then the model is built on the ``meta`` device
    (no memory) and its parameter shapes compared with the stored weights; only a config that
    matches its weights is built for real.

    Args:
        ckpt: a loaded checkpoint (:func:`load_checkpoint`).
        where: the checkpoint's path, for messages.

    Raises:
        ValueError: the config is not a valid model config or does not match the weights.
    """
    state = ckpt.get("model")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{where}: its 'model' entry is not a state dict of tensors; not a usable kdkit checkpoint")
    config = ckpt.get("model_config")
    if not isinstance(config, dict):
        raise ValueError(f"{where}: no model_config; not a usable kdkit checkpoint")
    try:
        with torch.device("meta"):
            skeleton = model_from_config(config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: its model_config cannot be built ({err})") from err
    upgrade = getattr(type(skeleton), "upgrade_state", None)  # a family's older layouts, read as the current one
    if upgrade is not None:
        state = upgrade(state)
    diff = _shape_differences(skeleton.state_dict(), state)
    if diff:
        more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
        raise ValueError(f"{where}: its model_config does not match its stored weights ({'; '.join(diff[:3])}{more}); "
                         "the file was edited or is corrupted: use another checkpoint or retrain")
    del skeleton
    model = model_from_config(config)
    model.load_state_dict(state)
    return model


def describe_calibration(record: dict) -> str:
    """What a calibration record names, in a few words: the clean recordings (file names), their
    channel, the part used, the windows, the alarm-rate budget and the date."""
    files = [Path(f.get("path", "?") if isinstance(f, dict) else str(f)).name for f in record.get("files") or []]
    shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "") if files else "clean recordings"
    details = []
    if record.get("channel"):
        details.append(f"channel {record['channel']}")
    if record.get("first_seconds") is not None:
        details.append(f"first {float(record['first_seconds']):g} s")
    if record.get("windows") is not None:
        details.append(f"{int(record['windows']):,} clean windows")
    if record.get("fpr") is not None:
        details.append(f"fpr {float(record['fpr']):g}")
    if record.get("date"):
        details.append(str(record["date"])[:10])
    return shown + (f" ({', '.join(details)})" if details else "")
