"""Scoring recordings that belong to no dataset with a checkpoint: its own vocabulary, graph
settings and threshold, no training data needed (``kdkit evaluate --input``, ``kdkit calibrate``,
``kdkit export``).

    from kdkit.workflows.scoring import evaluate_inputs
    res = evaluate_inputs("runs/x/checkpoints/best.pt", ["capture.log.gz"], channel="can0")
    res["overall"]["alarm_rate"], res["files"][0]["scores"]["p99"]

A recording is read with :func:`kdkit.data.readers.read_messages` (every format kdkit reads; a
folder means every recording inside it, recursively, sorted), cut into the checkpoint's windows
(:func:`kdkit.data.graphs.build_graphs`) and scored with the same functions as
:func:`kdkit.workflows.run.evaluate_checkpoint` (:func:`kdkit.reporting.metrics.predict_scores`,
:func:`~kdkit.reporting.metrics.evaluate_scores`). A labelled recording (one with attack rows, or
one whose format has a label column) gets the usual metrics; every recording gets its alarm rate,
its score distribution and its share of out-of-vocabulary nodes (IDs the model never saw: a
high share means the model does not know this car).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from kdkit.data.columns import read_mapped, training_layout
from kdkit.data.graphs import GRAPH_FORMAT_VERSION, GraphSet, IdVocab, build_graphs, layout_matches
from kdkit.data.loggers import carries_labels, left_out_channels
from kdkit.data.readers import LOGGER_SUFFIXES, Messages, data_suffixes, read_messages, truncation
from kdkit.models.thresholds import is_attack
from kdkit.reporting.metrics import evaluate_scores, predict_scores
from kdkit.training.checkpoint import (check_threshold_fitted, describe_calibration, load_checkpoint,
                                      model_from_checkpoint, provenance, vocab_hash, wrong_recording_kind)
from kdkit.workflows.run import calibration_sample, check_graph_settings, evaluation_dir, in_sample
from kdkit.workflows.run_dir import write_json

log = logging.getLogger(__name__)

OOV_WARNING = 0.10  # a share of out-of-vocabulary nodes above this is reported as a warning

SCORE_QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


def recording_suffixes() -> tuple[str, ...]:
    """File endings taken from a folder: dataset files (``.csv``, ``.csv.gz``, registered readers)
    and logger files (``.log``, ``.asc``, ``.blf``, ``.trc``, each also ``.gz``)."""
    return tuple(dict.fromkeys((*data_suffixes(), *(s + gz for s in LOGGER_SUFFIXES for gz in ("", ".gz")))))


def recording_files(inputs: Sequence[str | Path], flag: str = "--input") -> list[Path]:
    """The recordings named by ``inputs``: a file as given, a folder as every recording in it
    (recursively, sorted; left out: hidden files, ``*.labels.csv`` label sidecars, README and
    LICENSE files); duplicates once, in the order given.

    Raises:
        FileNotFoundError: an input that does not exist.
        ValueError: no inputs, a folder without recordings, or a model file (a checkpoint, an
            exported package or its ``.json``/``.npz``) given as a recording.
    """
    if not inputs:
        raise ValueError(f"{flag}: give at least one recording file or folder")
    suffixes = recording_suffixes()
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            wrong = wrong_recording_kind(path, flag)  # a model file given as a recording: say so, not a reader error
            if wrong is not None:
                raise ValueError(wrong)
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes)
                           and not p.name.lower().endswith(".labels.csv")
                           and not p.name.lower().startswith(("readme", "license"))
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise ValueError(f"{flag} {path}: the folder holds no recordings (looked for {', '.join(suffixes)}, "
                                 "recursively)")
            files += found
        else:
            raise FileNotFoundError(f"{flag} {path}: no such file or folder")
    return list(dict.fromkeys(files))


def is_logger_file(path: str | Path) -> bool:
    """A candump/Vector/PEAK file (the only formats with bus channels)."""
    return Path(Path(path).name.lower().removesuffix(".gz")).suffix in LOGGER_SUFFIXES


def check_channel(files: Sequence[Path], channel: str | None) -> None:
    """``--channel`` selects frames of logger files; given for inputs without one it would do nothing.

    Raises:
        ValueError: a channel was given and none of ``files`` is a logger file.
    """
    if channel is not None and not any(is_logger_file(f) for f in files):
        raise ValueError(f"--channel {channel}: only logger files ({', '.join(LOGGER_SUFFIXES)}) have bus channels, "
                         f"and none of the {len(files)} input recording(s) is one; drop --channel")


def is_labelled(msgs: Messages, path: str | Path) -> bool:
    """Whether a recording says which messages are attacks: it holds attack rows, its reader says
    so (``Messages.labelled`` where a reader sets it), or its format has a label column
    (:func:`kdkit.data.loggers.carries_labels`: not a logger file without a ``.labels.csv``
    sidecar, nor the HCRL/OTIDS text form)."""
    marked = getattr(msgs, "labelled", None)
    if bool(msgs.label.any()):
        return True
    if marked is not None:
        return bool(marked)
    return carries_labels(path)


# ----------------------------------------------------------------------------- the checkpoint
@dataclasses.dataclass
class ScoringModel:
    """A checkpoint ready to score windows: its model (eval mode), vocabulary and graph settings."""

    path: Path
    ckpt: dict
    model: torch.nn.Module
    vocab: IdVocab
    graph: dict  # window, stride, label_threshold, val_fraction
    threshold: float

    @property
    def family(self) -> str | None:
        return (self.ckpt.get("model_config") or {}).get("kind")


def check_checkpoint_layout(ckpt: dict, path: str | Path, what: str = "scored") -> None:
    """What can be checked without the training data: the feature layout and graph format are
    this kdkit's, and the ID vocabulary matches the model's embedding (and the hash its
    provenance recorded).

    Raises:
        ValueError: naming the checkpoint and what differs.
    """
    recorded = (ckpt.get("provenance") or {}).get("graph", {}).get("graph_format")
    if not layout_matches(ckpt.get("node_features"), ckpt.get("edge_features"), recorded, ckpt.get("vocab")):
        raise ValueError(f"{what} checkpoint {path} was built with another feature layout "
                         f"(graph format {recorded or 'unknown'} vs {GRAPH_FORMAT_VERSION}); retrain it")
    vocab = ckpt.get("vocab")
    if not isinstance(vocab, list) or not all(isinstance(i, int) for i in vocab):
        raise ValueError(f"{what} checkpoint {path} holds no ID vocabulary (a list of CAN IDs); use a checkpoint "
                         "written by kdkit train")
    num_ids = (ckpt.get("model_config") or {}).get("num_ids")
    if num_ids is not None and num_ids != len(vocab) + 1:
        raise ValueError(f"{what} checkpoint's ID vocabulary ({len(vocab)} IDs + the unknown-ID bucket) does not match "
                         f"its model's ID embedding ({num_ids} rows) in {path}: the file was edited or is corrupted")
    stored = (ckpt.get("provenance") or {}).get("vocab_hash")
    if stored is not None and stored != vocab_hash(vocab):
        raise ValueError(f"{what} checkpoint's ID vocabulary in {path} does not match the hash its provenance recorded "
                         f"({vocab_hash(vocab)} vs {stored}): the file was edited or is corrupted")


def load_scoring_model(path: str | Path, what: str = "scored", threshold: float | None = None) -> ScoringModel:
    """Load a checkpoint for scoring windows without its training data.

    Args:
        path: a kdkit checkpoint (GAT or VGAE).
        what: how messages name it (``"scored"``, ``"calibrated"``, ``"exported"``).
        threshold: replaces the stored threshold (None: the checkpoint's).

    Raises:
        FileNotFoundError, ValueError: a missing file, not a kdkit checkpoint, no graph settings,
            another feature layout, or a vocabulary that does not fit the model.
    """
    path = Path(path)
    ckpt = load_checkpoint(path)
    graph = check_graph_settings(ckpt, path)
    check_checkpoint_layout(ckpt, path, what)
    if threshold is None and what != "calibrated":  # (calibrate fits a threshold of its own)
        check_threshold_fitted(ckpt, path, what)
    model = model_from_checkpoint(ckpt, path).eval()
    stored = float(ckpt.get("threshold", 0.5))
    if threshold is not None and not np.isfinite(threshold):
        raise ValueError(f"--threshold {threshold}: must be a finite number")
    if threshold is not None and model.objective == "classify" and not 0.0 <= threshold <= 1.0:
        # a GAT's score is an attack probability: -1 alarmed on every window and 5 on none, exit 0 (kdkit detect
        # refused both)
        raise ValueError(f"--threshold {threshold} is outside [0, 1]: {path.name}'s score is an attack probability, "
                         f"so {'no window' if threshold > 1 else 'every window'} would alarm; leave --threshold out "
                         "for the model's own")
    return ScoringModel(path, ckpt, model, IdVocab.from_list(ckpt["vocab"]), graph,
                        stored if threshold is None else float(threshold))


# ----------------------------------------------------------------------------- one recording
@dataclasses.dataclass
class ScoredRecording:
    """One recording's windows and their scores."""

    path: Path
    messages: Messages
    graphs: GraphSet
    scores: np.ndarray  # float32 [windows]: attack probability (GAT) or anomaly score (VGAE)
    labelled: bool

    @property
    def windows(self) -> int:
        return len(self.graphs)


def first_seconds_of(msgs: Messages, seconds: float | None) -> Messages:
    """The messages of the recording's first ``seconds`` (timestamps below the first one plus
    ``seconds``; a recording's timestamps are in order, the readers check it); all of them for None."""
    if seconds is None or len(msgs) == 0:
        return msgs
    end = int(np.searchsorted(msgs.timestamp, msgs.timestamp[0] + float(seconds), side="left"))
    return msgs.slice(0, end)


def check_first_seconds(seconds: float | None) -> None:
    """``--first-seconds``: None, or a positive finite number of seconds."""
    if seconds is not None and not (math.isfinite(float(seconds)) and float(seconds) > 0):
        raise ValueError(f"--first-seconds {seconds}: must be a positive number of seconds (the start of each "
                         "recording to use), or left out to use every message")


def read_recording(sm: ScoringModel, path: str | Path, channel: str | None = None, on_bad_rows: str | None = None,
                   first_seconds: float | None = None) -> Messages:
    """One recording as the checkpoint's model reads it: in the column layout it was trained on (a
    dataset spec's mapping, recorded in its provenance) when the file is in no layout kdkit knows by
    itself, else by name and header; ``channel`` for logger files. ``on_bad_rows`` defaults to the
    checkpoint's (``train_config.on_bad_rows``, else ``error``)."""
    bad = on_bad_rows or (sm.ckpt.get("train_config") or {}).get("on_bad_rows") or "error"
    layout = training_layout((sm.ckpt.get("provenance") or {}).get("reading"), path)  # the model's own layout
    if layout is not None:
        msgs = read_mapped(path, layout, on_bad_rows=bad)  # type: ignore[arg-type]
        msgs.labelled = layout.label is not None  # type: ignore[attr-defined]
    else:
        msgs = read_messages(path, on_bad_rows=bad, channel=channel if is_logger_file(path) else None)  # type: ignore[arg-type]
    return first_seconds_of(msgs, first_seconds)


def score_recording(sm: ScoringModel, path: str | Path, channel: str | None = None,
                    on_bad_rows: str | None = None, batch_size: int = 256,
                    first_seconds: float | None = None) -> ScoredRecording:
    """Read one recording and score its windows with the checkpoint's settings.

    ``on_bad_rows`` defaults to the checkpoint's (``train_config.on_bad_rows``, else ``error``).
    ``first_seconds``: score only the recording's first seconds (:func:`first_seconds_of`).
    """
    check_first_seconds(first_seconds)
    msgs = read_recording(sm, path, channel, on_bad_rows, first_seconds)
    if msgs.skipped_rows:
        log.warning("%s: skipped %d malformed rows (%d of them attack rows)", path, msgs.skipped_rows,
                    msgs.skipped_attack_rows)
    window, stride = int(sm.graph["window"]), int(sm.graph["stride"])
    gs = build_graphs(msgs, sm.vocab, window, stride, float(sm.graph.get("label_threshold") or 0.0))
    scores = predict_scores(sm.model, gs, batch_size) if len(gs) else np.zeros(0, np.float32)
    if not np.isfinite(scores).all():
        raise ValueError(f"{path}: {int((~np.isfinite(scores)).sum())} window scores are NaN or infinite; the model "
                         f"in {sm.path} diverged")
    return ScoredRecording(Path(path), msgs, gs, scores, is_labelled(msgs, path))


def left_out_channels_warning(msgs: Messages, path: str | Path, channel: str | None = None) -> str | None:
    """What a logger file's other buses lost when no ``channel`` was chosen: a file whose start holds
    one bus is read as that bus, and the frames of buses that start later are left out
    (:func:`kdkit.data.loggers.left_out_channels`, also set as ``msgs.left_out_channels``). ``kdkit
    data info`` and ``kdkit detect`` said so; ``evaluate --input`` and ``calibrate`` said nothing."""
    if channel is not None or not is_logger_file(path):
        return None
    others = left_out_channels(path, msgs)
    msgs.left_out_channels = others
    if not others:
        return None
    text = (f"{path}: the frames of bus channels that start later in it were left out: "
            + ", ".join(f"{c} ({n:,})" for c, n in sorted(others.items()))
            + "; --channel NAME reads one of them, --channel '*' every bus as one stream")
    log.warning("%s", text)
    return text


def score_distribution(scores: np.ndarray) -> dict | None:
    """min / p50 / p90 / p99 / max of window scores (None without windows)."""
    if scores.size == 0:
        return None
    s = np.asarray(scores, np.float64)
    return {"min": float(s.min()), **{k: float(np.quantile(s, q)) for k, q in SCORE_QUANTILES.items()},
            "max": float(s.max())}


def alarm_summary(graphs: Sequence[GraphSet], scores: np.ndarray, threshold: float) -> dict:
    """Windows, alarms (``score >= threshold``), alarm rate, score distribution, and among the
    nodes of normal traffic (no attack message: a fuzzing attack's random IDs do not count) the
    share whose ID is out of the vocabulary and the distinct unknown IDs."""
    alarms = int(is_attack(np.asarray(scores, np.float64), threshold).sum()) if scores.size else 0
    normal = [g.node_y == 0 for g in graphs]
    nodes = sum(int(m.sum()) for m in normal)
    oov = sum(int(((g.node_id == 0) & m).sum()) for g, m in zip(graphs, normal))
    unknown = sorted({int(i) for g, m in zip(graphs, normal) for i in g.can_id[(g.node_id == 0) & m].unique().tolist()})
    out = {"windows": int(scores.size), "alarms": alarms, "alarm_rate": alarms / scores.size if scores.size else None,
           "scores": score_distribution(scores), "oov_node_share": oov / nodes if nodes else None,
           "unknown_ids": len(unknown), "unknown_id_examples": [f"0x{i & 0x1FFFFFFF:X}" for i in unknown[:5]]}
    return out


NEW_CAR_HINT = ("its scores say little on this traffic: calibrate its threshold on an attack-free recording of this car "
                "(kdkit calibrate), better retrain it on this car's traffic")


def oov_warning(summary: dict, where: str, hint: str = NEW_CAR_HINT) -> str | None:
    """A warning when more than :data:`OOV_WARNING` of the normal-traffic nodes are IDs the model never saw."""
    share = summary.get("oov_node_share")
    if share is None or share <= OOV_WARNING:
        return None
    return (f"{where}: {share:.0%} of the normal-traffic nodes are CAN IDs the model never saw ({summary['unknown_ids']} "
            f"unknown IDs): the model does not know this car; {hint}")


# ----------------------------------------------------------------------------- evaluate --input
def evaluate_inputs(checkpoint: str | Path, inputs: Sequence[str | Path], channel: str | None = None,
                    on_bad_rows: str | None = None, threshold: float | None = None,
                    out_dir: str | Path | None = None, batch_size: int = 256) -> dict:
    """Score recordings that are no dataset with a checkpoint (``kdkit evaluate --input``).

    Every recording is cut into the checkpoint's windows (window, stride, label threshold) with
    its vocabulary and scored with its stored threshold (or ``threshold``). Per file and overall:
    windows, alarms, alarm rate, score distribution (min/p50/p90/p99/max), share of
    out-of-vocabulary nodes; for labelled recordings also the metrics of ``kdkit evaluate
    --dataset`` (``metrics``, with recall per attack type). A recording shorter than one window
    is listed under ``skipped_files``; none with a window is an error. Written to
    ``evaluation_inputs_<name>_<hash>.json`` (:func:`inputs_json_name`: one file per set of inputs
    and channel) in ``out_dir`` (default: the run folder, as ``evaluate_checkpoint``); the
    result's ``json`` names it.

    Args:
        checkpoint: a kdkit GAT or VGAE checkpoint.
        inputs: files or folders of recordings (see :func:`recording_files`).
        channel: logger files: keep only this bus channel (an error when no input is a logger file).
        on_bad_rows: ``error``/``skip`` (default: as the checkpoint was trained).
        threshold: replaces the checkpoint's threshold.
        out_dir: folder for the JSON.
        batch_size: windows per forward pass.

    Returns:
        The JSON's content as a dict.
    """
    files = recording_files(inputs)
    check_channel(files, channel)
    sm = load_scoring_model(checkpoint, "evaluated", threshold)
    prov = provenance(sm.ckpt, sm.path)
    hint = NEW_CAR_HINT
    if sm.family == "fusion":  # it can learn the car's IDs and timing, which a threshold alone cannot give it
        hint = ("its decisions say little on this traffic (false alarms, or attacks missed: an unknown car is judged "
                "by the classification head alone): adapt it to this car on an attack-free recording of it "
                "(kdkit calibrate --adapt --checkpoint MODEL.pt --clean CLEAN --out MODEL_car.pt)")
    if prov.get("calibration") and threshold is None and prov["calibration"].get("kind") == "adapt":
        hint = (f"the model was adapted (kdkit calibrate --adapt) to {describe_calibration(prov['calibration'])}: it "
                "is that car's model; for another car adapt the checkpoint it was adapted from, and measure "
                "detection on labelled attacks of the car")
    elif prov.get("calibration") and threshold is None:  # no advice to calibrate a calibrated checkpoint again
        hint = (f"its threshold was calibrated (kdkit calibrate) on {describe_calibration(prov['calibration'])}, which "
                "bounds its false alarms on traffic like that; it cannot tell this car's unknown IDs from injected "
                "ones: measure detection on labelled attacks of this car, or retrain on its traffic")
    per_file, skipped, warnings = [], {}, []
    scored: list[ScoredRecording] = []
    for f in files:
        rec = score_recording(sm, f, channel, on_bad_rows, batch_size)
        if not rec.windows:
            skipped[str(f)] = (f"no windows: {len(rec.messages):,} messages, fewer than the checkpoint's window of "
                               f"{sm.graph['window']:,}")
            log.warning("%s skipped: %s", f, skipped[str(f)])
            continue
        scored.append(rec)
        entry = {"file": str(f), "labelled": rec.labelled, "messages": len(rec.messages),
                 "attack_messages": int(rec.messages.label.sum()), "skipped_rows": rec.messages.skipped_rows,
                 "skipped_attack_rows": rec.messages.skipped_attack_rows,
                 "timeline_restarts": rec.messages.timeline_restarts,
                 "timeline_examples": list(rec.messages.timeline_examples[:1]),
                 **alarm_summary([rec.graphs], rec.scores, sm.threshold)}
        dropped = {k: int(v) for k, v in (getattr(rec.messages, "dropped_frames", None) or {}).items() if v}
        if dropped:  # remote and error frames of the bus a logger file held: not data, left out (as detect counts them)
            entry["dropped_frames"] = dropped
        cut = truncation(rec.messages.skipped_examples)
        if cut:
            entry["truncated"] = cut
        if rec.labelled:
            entry["metrics"] = evaluate_scores(rec.graphs, rec.scores, sm.threshold)
        warn = oov_warning(entry, str(f), hint)
        if warn:
            warnings.append(warn)
        others = left_out_channels_warning(rec.messages, f, channel)
        if others:
            entry["left_out_channels"] = dict(rec.messages.left_out_channels)
            warnings.append(others)
        trained = in_sample(prov, f)
        calibrated = calibration_sample(prov, f)
        if trained:
            entry["in_sample"] = True
            warnings.append(f"{f} is {trained}, a training recording of this model: its windows trained it (all but "
                            "the validation block, which chose its epoch and threshold), so these metrics are "
                            "in-sample, not a test; evaluate on recordings it did not see (kdkit evaluate --dataset)")
        elif calibrated:
            entry["in_sample"] = True
            warnings.append(f"{f} is a recording this checkpoint was {calibrated}, so its alarm rate here is the "
                            "budget that was fitted, not a measure on unseen traffic; evaluate on other recordings "
                            "of the car")
        per_file.append(entry)
    if not scored:
        raise ValueError(f"no windows to score: each of the {len(files)} recording(s) is shorter than the checkpoint's "
                         f"window of {sm.graph['window']:,} messages ({'; '.join(f'{k}: {v}' for k, v in skipped.items())})")
    all_scores = np.concatenate([r.scores for r in scored])
    overall = alarm_summary([r.graphs for r in scored], all_scores, sm.threshold)
    labelled = [r for r in scored if r.labelled]
    overall["labelled_files"] = len(labelled)
    overall["unlabelled_files"] = len(scored) - len(labelled)
    if labelled:
        gs = GraphSet.concat([r.graphs for r in labelled])
        overall["metrics"] = evaluate_scores(gs, np.concatenate([r.scores for r in labelled]), sm.threshold)
    if len(scored) > 1:
        warn = oov_warning(overall, "overall", hint)
        if warn and not warnings:
            warnings.append(warn)
    out = {"checkpoint": str(checkpoint), "inputs": [str(i) for i in inputs], "channel": channel,
           "threshold": sm.threshold, "threshold_source": "checkpoint" if threshold is None else "--threshold",
           "stored_threshold": float(sm.ckpt.get("threshold", 0.5)), "family": sm.family, "role": prov.get("role"),
           "trained_on": prov.get("dataset"), "calibration": prov.get("calibration"),
           "graph": {**sm.graph, "graph_format": prov.get("graph", {}).get("graph_format")},
           "files": per_file, "overall": overall, "skipped_files": skipped, "warnings": warnings}
    target = Path(out_dir) if out_dir else evaluation_dir(checkpoint)
    target.mkdir(parents=True, exist_ok=True)
    path = target / inputs_json_name(inputs, channel, threshold, checkpoint)
    write_json(path, out)
    out["json"] = str(path)
    return out


def inputs_json_name(inputs: Sequence[str | Path], channel: str | None = None, threshold: float | None = None,
                     checkpoint: str | Path | None = None) -> str:
    """``evaluation_inputs_<first input's name>_<hash>.json``: the file :func:`evaluate_inputs`
    writes for these inputs. The hash (8 hex digits of SHA-256) is of the inputs' resolved paths
    (sorted, duplicates once), the channel, a ``--threshold`` and the checkpoint (each when given):
    scoring the same recordings with the same model again replaces their file; other recordings,
    another channel, threshold or model (two checkpoints evaluated into one ``--out``) get their own."""
    resolved = sorted({str(Path(i).resolve()) for i in inputs})
    key = {"inputs": resolved, "channel": channel, **({"threshold": float(threshold)} if threshold is not None else {}),
           **({"checkpoint": str(Path(checkpoint).resolve())} if checkpoint is not None else {})}
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:8]
    first = Path(inputs[0]).name if inputs else "none"
    for suffix in sorted(recording_suffixes(), key=len, reverse=True):  # capture.log.gz -> capture
        if first.lower().endswith(suffix):
            first = first[:-len(suffix)]
            break
    first = re.sub(r"[^A-Za-z0-9_.-]+", "_", first).strip("._")[:40] or "input"
    return f"evaluation_inputs_{first}_{digest}.json"


def format_attack_type_recall(scenarios: dict, overall: dict | None = None) -> str | None:
    """A table of the recall per attack type in each scenario (``per_attack_type`` of
    :func:`kdkit.reporting.metrics.evaluate_scores`), with each type's recall over all scenarios
    when it occurs in more than one: ``overall``'s (a recording two scenarios hold counted once,
    :func:`~kdkit.reporting.metrics.evaluate_all_scores`), else weighted by the scenarios' attack
    windows; None when no scenario carries attack types."""
    rows = [(name, t, v["windows"], v["recall"]) for name, m in scenarios.items()
            for t, v in (m.get("per_attack_type") or {}).items()]
    if not rows:
        return None
    totals: dict[str, list[float]] = {}
    for _, t, n, recall in rows:
        acc = totals.setdefault(t, [0, 0.0, 0])
        acc[0] += n
        acc[1] += recall * n
        acc[2] += 1
    pooled = (overall or {}).get("per_attack_type") or {}
    rows += [("all scenarios", t, pooled[t]["windows"], pooled[t]["recall"]) if t in pooled else
             ("all scenarios", t, n, hit / n) for t, (n, hit, k) in totals.items() if k > 1 and n]
    name_w = max(len("scenario"), *(len(r[0]) for r in rows)) + 2
    type_w = max(len("attack type"), *(len(r[1]) for r in rows)) + 2
    lines = ["recall per attack type (share of the type's attack windows that alarm):",
             f"{'scenario':<{name_w}}{'attack type':<{type_w}}{'windows':>9}{'recall':>9}"]
    lines += [f"{name:<{name_w}}{t:<{type_w}}{n:>9,}{recall:>9.4f}" for name, t, n, recall in rows]
    return "\n".join(lines)


def format_inputs_report(res: dict) -> str:
    """The plain-text report of :func:`evaluate_inputs` (one line per file, then overall)."""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.2%}"

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    def line(name: str, e: dict) -> str:
        s = e.get("scores") or {}
        text = (f"{name}: {e['windows']:,} windows, alarm rate {pct(e['alarm_rate'])} ({e['alarms']:,}), scores "
                + " / ".join(f"{k} {num(s.get(k))}" for k in ("min", "p50", "p90", "p99", "max"))
                + f", unknown-ID nodes {pct(e['oov_node_share'])}")
        if e.get("skipped_rows"):
            text += f"\n    skipped {e['skipped_rows']:,} malformed rows ({e['skipped_attack_rows']:,} of them attack rows)"
            if e.get("truncated"):
                text += f" (the file is cut: {e['truncated']})"
        if e.get("dropped_frames"):
            text += ("\n    left out: " + ", ".join(f"{n:,} {kind} frames" for kind, n in e["dropped_frames"].items())
                     + " (not data frames; not in any window)")
        if e.get("timeline_restarts"):
            text += (f"\n    the clock restarted {e['timeline_restarts']} time(s): each part is read as a timeline of its "
                     f"own, no window crosses a restart (first: {e['timeline_examples'][0]})")
        m = e.get("metrics")
        if m:
            text += (f"\n    labelled: {m['attack_windows']:,} attack windows; f1 {num(m['f1'])}  precision "
                     f"{num(m['precision'])}  recall {num(m['recall'])}  mcc {num(m['mcc'])}  pr_auc {num(m['pr_auc'])}"
                     f"  roc_auc {num(m['roc_auc'])}  fpr {num(m['false_positive_rate'])}")
            for t, v in m.get("per_attack_type", {}).items():
                text += f"\n    recall on {t}: {v['recall']:.4f} ({v['windows']:,} windows)"
        return text

    head = (f"{res['checkpoint']} ({res['family']} {res['role']}, trained on {res['trained_on']}): threshold "
            f"{res['threshold']:.6g} ({res['threshold_source']}), window {res['graph']['window']}, stride "
            f"{res['graph']['stride']}")
    rows = [head] + [line(e["file"], e) for e in res["files"]]
    if len(res["files"]) > 1:
        rows.append(line("overall", res["overall"]))
    rows += [f"skipped {k}: {v}" for k, v in res["skipped_files"].items()]
    rows += [f"warning: {w}" for w in res["warnings"]]
    return "\n".join(rows)

