"""Re-setting a checkpoint's threshold for a new car from that car's attack-free recordings
(``kdkit calibrate``).

    from kdkit.workflows.calibrate import calibrate_checkpoint
    res = calibrate_checkpoint("best.pt", ["rav4-clean.log.gz"], "best_rav4.pt", fpr=0.01, channel="can0")
    res["alarm_rate_before"], res["alarm_rate_after"]

A model trained on one car alarms far more often on another car's normal traffic (other IDs,
periods and payloads). Calibration scores every window of the new car's attack-free recordings
with the checkpoint's own vocabulary and graph settings and sets the threshold to the smallest
value that keeps the alarm rate on them at most ``fpr`` under kdkit's rule (a window is an
attack when ``score >= threshold``). Only the threshold changes: the weights, the vocabulary and
the graph settings stay, and the new checkpoint's provenance records what it was calibrated on.
Calibration cannot teach the model the new car's IDs: a new car needs its own attack-free
recording, and the detection rate on that car is unknown until it is measured on labelled
attacks of that car.
"""
from __future__ import annotations

import copy
import datetime as dt
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from kdkit.data.datasets import file_sha256
from kdkit.data.graphs import GraphSet, IdVocab, build_graphs
from kdkit.models.fusion import PROFILE_MIN_WINDOWS, adapt_to_vehicle, extend_vocabulary, predict_parts
from kdkit.models.thresholds import is_attack, quantile_threshold
from kdkit.training.checkpoint import atomic_torch_save, load_checkpoint, model_from_checkpoint, provenance, vocab_hash
from kdkit.workflows.run import in_sample
from kdkit.workflows.scoring import (
    ScoringModel,
    alarm_summary,
    check_channel,
    check_first_seconds,
    left_out_channels_warning,
    load_scoring_model,
    oov_warning,
    read_recording,
    recording_files,
    score_recording,
)

log = logging.getLogger(__name__)

CALIBRATED_HINT = ("the new threshold bounds its false alarms on traffic like this, but the model cannot tell this "
                   "car's unknown IDs from injected ones: measure detection on labelled attacks of this car, or "
                   "retrain on its traffic")


def windows_needed(fpr: float) -> int:
    """Fewest windows with which a false-alarm budget of ``fpr`` allows one alarm (``ceil(1 / fpr)``)."""
    return math.ceil(1.0 / fpr - 1e-9)


def fpr_threshold(scores: np.ndarray, fpr: float) -> float:
    """A threshold with at most ``floor(fpr * n)`` of the ``n`` scores ``>=`` it: midway between
    the highest score that must stay below it and the lowest one allowed to alarm, so that an
    engine whose float rounding differs (the native engine, an exported package) decides those
    windows alike (on the lowest alarm score itself, 1 of 5 alarms flipped between ``kdkit
    detect`` and ``kdkit evaluate``).

    The value is a float32 number (scores are float32; a gateway compares float32 probabilities
    with it), so the budget holds whether the comparison runs in float32 or float64.
    """
    s = np.asarray(scores, np.float32)
    exact = quantile_threshold(s.astype(np.float64), 1.0 - fpr)
    below = s[s.astype(np.float64) < exact]
    if below.size:
        exact = (float(below.max()) + exact) / 2.0  # (still above every score that must stay below)
    t = np.float32(exact)
    if float(t) < exact:  # "just above the highest allowed score" rounded down to it in float32
        t = np.nextafter(t, np.float32(np.inf))
    allowed = math.floor(fpr * s.size + 1e-9)
    while int(is_attack(s, t).sum()) > allowed or int(is_attack(s.astype(np.float64), float(t)).sum()) > allowed:
        t = np.nextafter(t, np.float32(np.inf))  # ties at the boundary (float32 rounding): step above them
    return float(t)


def check_fpr(fpr: float) -> None:
    """Raises ValueError unless ``0 < fpr < 0.5``."""
    if not (isinstance(fpr, (int, float)) and math.isfinite(fpr) and 0.0 < fpr < 0.5):
        shown = f"{fpr:g}" if isinstance(fpr, (int, float)) else repr(fpr)
        raise ValueError(f"--fpr {shown}: the false-alarm rate to keep on the clean recordings must be in (0, 0.5), "
                         "e.g. 0.01")


def _open_inputs(checkpoint: str | Path, clean: Sequence[str | Path], out: str | Path, fpr: float,
                 channel: str | None, force: bool, what: str) -> tuple[Path, Path, list[Path], ScoringModel]:
    """The checks shared by calibration and adaptation (``what``: ``calibrated`` or ``adapted``);
    returns the checkpoint and output paths, the clean recordings and the loaded checkpoint."""
    check_fpr(fpr)
    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and out.resolve() == checkpoint.resolve() and not force:
        raise ValueError(f"--out {out} is the checkpoint being {what}: it would be replaced; write the {what} "
                         "copy elsewhere, or pass --force to replace it")
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder: give the new checkpoint's file name (e.g. {out / f'{what}.pt'})")
    files = recording_files(clean, "--clean")
    check_channel(files, channel)
    return checkpoint, out, files, load_scoring_model(checkpoint, what)


def _longer(first_seconds: float | None) -> str:
    return "" if first_seconds is None else f" (or use more than the first {first_seconds:g} s: --first-seconds)"


def attack_free(graphs: GraphSet) -> np.ndarray:
    """The windows holding no attack message. A window's label follows the model's ``label_threshold``
    (an attack only above that share of attack messages); a threshold fitted on "attack-free" windows
    must not take in the windows that label calls normal but that hold attack frames (with
    ``--allow-attacks`` and a ``label_threshold`` of 0.3 a DoS window of 28 attack rows set the threshold)."""
    return graphs.attack_share.numpy() == 0


def calibrate_checkpoint(checkpoint: str | Path, clean: Sequence[str | Path], out: str | Path, fpr: float = 0.01,
                         channel: str | None = None, on_bad_rows: str | None = None, allow_attacks: bool = False,
                         force: bool = False, batch_size: int = 256, first_seconds: float | None = None) -> dict:
    """Set a checkpoint's threshold from attack-free recordings of a new car; write it to ``out``.

    Every window of the ``clean`` recordings (files or folders, any format kdkit reads) is scored
    with the checkpoint's vocabulary and graph settings; the new threshold is the smallest value
    that keeps their alarm rate ``<= fpr``. ``out`` is written atomically (temp file + replace)
    with the new threshold and a ``calibration`` entry in its provenance (files with SHA-256,
    fpr, windows, old and new threshold, alarm rates, date); everything else is kept.

    Args:
        checkpoint: a kdkit GAT or VGAE checkpoint.
        clean: attack-free recordings of the new car.
        out: the new checkpoint's path.
        fpr: the alarm rate to keep on the clean windows, in (0, 0.5).
        channel: logger files: keep only this bus channel.
        on_bad_rows: ``error``/``skip`` (default: as the checkpoint was trained).
        allow_attacks: calibrate on the attack-free windows of recordings that hold labelled
            attack rows (their attack windows are left out) instead of refusing them.
        force: allow ``out`` to be ``checkpoint`` itself (replaced).
        batch_size: windows per forward pass.
        first_seconds: use only the first seconds of each recording (e.g. the clean start of a
            drive whose rest is then replayed); None: every message.

    Returns:
        ``{"checkpoint", "out", "fpr", "windows", "old_threshold", "new_threshold",
        "alarm_rate_before", "alarm_rate_after", "files": [...], "warnings": [...], ...}``.

    Raises:
        FileNotFoundError: a missing checkpoint or recording.
        ValueError: fpr outside (0, 0.5); ``out`` is the checkpoint without ``force``; a folder
            without recordings; ``channel`` without logger files or matching no frame; labelled
            attack rows in the clean recordings (without ``allow_attacks``); fewer than
            ``ceil(1 / fpr)`` windows.
    """
    check_first_seconds(first_seconds)
    checkpoint, out, files, sm = _open_inputs(checkpoint, clean, out, fpr, channel, force, "calibrated")
    old = sm.threshold
    scored, entries, attacks, channel_notes = [], [], [], []
    for f in files:
        rec = score_recording(sm, f, channel, on_bad_rows, batch_size, first_seconds)
        n_attack = int(rec.messages.label.sum())
        keep = np.ones(rec.windows, bool)
        if n_attack:
            attack_windows = int(rec.graphs.y.sum())
            if not allow_attacks:
                attacks.append(f"{f}: {n_attack:,} of {len(rec.messages):,} messages are labelled attacks "
                               f"({attack_windows:,} of {rec.windows:,} windows)")
            keep = attack_free(rec.graphs)
        scored.append((rec, keep))
        channel_notes += [w for w in [left_out_channels_warning(rec.messages, f, channel)] if w]  # (sets the counts)
        entries.append({"path": str(f.resolve()), "sha256": file_sha256(f), "messages": len(rec.messages),
                        "windows": int(keep.sum()), "attack_messages": n_attack,
                        "left_out_attack_windows": int((~keep).sum()), "skipped_rows": rec.messages.skipped_rows,
                        "skipped_attack_rows": rec.messages.skipped_attack_rows,
                        "left_out_channels": dict(rec.messages.left_out_channels)})
    if attacks:
        raise ValueError("--clean takes attack-free recordings, and these hold labelled attacks: " + "; ".join(attacks)
                         + ". Remove them, or pass --allow-attacks to calibrate on their attack-free windows only")
    scores = np.concatenate([rec.scores[keep] for rec, keep in scored]) if scored else np.zeros(0, np.float32)
    need = windows_needed(fpr)
    if scores.size < need:
        per = f"window {sm.graph['window']:,}, stride {sm.graph['stride']:,}"
        raise ValueError(f"--fpr {fpr:g} needs at least {need:,} clean windows (so the budget allows one alarm), and the "
                         f"{len(files)} recording(s) give {scores.size:,} ({per}: about "
                         f"{(need - 1) * int(sm.graph['stride']) + int(sm.graph['window']):,} messages are needed); "
                         f"record more attack-free traffic{_longer(first_seconds)}, or raise --fpr to at least "
                         f"{1.0 / max(scores.size, 1):.3g}")
    new = fpr_threshold(scores, fpr)
    before = float(is_attack(scores, old).mean())
    after = float(is_attack(scores, new).mean())
    if after > fpr:  # fpr_threshold guarantees it; a broken guarantee must not be written
        raise RuntimeError(f"calibration failed: alarm rate {after} > fpr {fpr} at threshold {new}")
    graphs = [rec.graphs.subset(np.flatnonzero(keep)) for rec, keep in scored]
    summary = alarm_summary(graphs, scores, new)
    warnings = [*channel_notes, *(w for w in [oov_warning(summary, "clean recordings", CALIBRATED_HINT)] if w)]
    trained_on = provenance(sm.ckpt, checkpoint)
    warnings += [f"{f} is {t}, a training recording of this model: it scores its own training windows lower than "
                 "unseen drives of the car, so this threshold may alarm more on new drives; calibrate on a drive it "
                 "was not trained on" for f in files if (t := in_sample(trained_on, Path(f)))]
    if new > float(scores.max()):
        warnings.append(f"the new threshold {new:.6g} is above every clean window's score (max {float(scores.max()):.6g}): "
                        "with this few windows the model alarms on none of them; it may miss attacks that score "
                        "like this car's normal traffic")
    record = {"files": entries, "channel": channel, "first_seconds": first_seconds, "fpr": fpr,
              "windows": int(scores.size), "old_threshold": old,
              "new_threshold": new, "alarm_rate_before": before, "alarm_rate_after": after,
              "from_checkpoint": str(checkpoint.resolve()), "from_checkpoint_sha256": file_sha256(checkpoint),
              "allow_attacks": allow_attacks, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    ckpt = copy.copy(sm.ckpt)
    prov = copy.deepcopy(provenance(sm.ckpt, checkpoint))
    prov["calibration"] = record
    prov["calibrations"] = [*prov.get("calibrations", []), record]  # every calibration, oldest first
    ckpt["provenance"] = prov
    ckpt["threshold"], ckpt["threshold_fitted"] = new, True
    atomic_torch_save(ckpt, out)
    load_checkpoint(out)  # the written file loads as a kdkit checkpoint
    log.info("calibrated %s on %d windows: threshold %.6g -> %.6g, alarm rate %.4f -> %.4f; written to %s",
             checkpoint, scores.size, old, new, before, after, out)
    per_file = []
    for (rec, keep), entry in zip(scored, entries):
        s = rec.scores[keep]
        per_file.append({**entry, "alarm_rate_before": float(is_attack(s, old).mean()) if s.size else None,
                         "alarm_rate_after": float(is_attack(s, new).mean()) if s.size else None})
    return {"checkpoint": str(checkpoint), "out": str(out), "fpr": fpr, "first_seconds": first_seconds,
            "windows": int(scores.size), "windows_needed": need, "old_threshold": old, "new_threshold": new, "alarm_rate_before": before,
            "alarm_rate_after": after, "alarms_before": int(is_attack(scores, old).sum()),
            "alarms_after": int(is_attack(scores, new).sum()), "scores": summary["scores"],
            "oov_node_share": summary["oov_node_share"], "family": sm.family, "files": per_file,
            "warnings": warnings}


ADAPT_HINT = ("adapted: this car's IDs, their timing and the score scales now come from its clean recordings; "
              "detection on this car is unknown until it is measured on labelled attacks of it")


def adapt_checkpoint(checkpoint: str | Path, clean: Sequence[str | Path], out: str | Path, fpr: float = 0.01,
                     channel: str | None = None, on_bad_rows: str | None = None, allow_attacks: bool = False,
                     force: bool = False, first_seconds: float | None = None) -> dict:
    """Adapt a fusion checkpoint to a new car from that car's attack-free recordings (``kdkit
    calibrate --adapt``); write the adapted copy to ``out``.

    A threshold alone cannot make a model trained on one car useful on another: the new car's IDs
    are all unknown to it, so it judges the car in the unknown-vehicle mode with the known car's
    score scales. Adapting keeps every trained weight and re-fits what belongs to the car, from
    its clean windows only: the car's IDs join the vocabulary (:func:`~kdkit.models.fusion.extend_vocabulary`:
    each starts as the unknown-ID embedding), each ID's timing profile is learned, and the
    combiner's vehicle-mode count, standardisation and thresholds are re-fitted so that at most
    ``fpr`` of the clean windows alarm (:func:`~kdkit.models.fusion.adapt_to_vehicle`). The car
    is then a known vehicle: an ID it never sends is suspicious again, and an ID off its own
    timing is seen by the profile.

    Args and the written file as :func:`calibrate_checkpoint`; the optimizer state is left out
    (the adapted copy cannot be resumed: it scores, exports and streams). Needs at least
    ``max(ceil(1 / fpr), 20)`` clean windows.

    Returns:
        ``{"checkpoint", "out", "fpr", "windows", "ids_before", "ids_added", "ids_profiled",
        "alarm_rate_before", "alarm_rate_after", "unknown_vehicle_share_before", "files", ...}``.

    Raises:
        FileNotFoundError, ValueError: as :func:`calibrate_checkpoint`; a checkpoint that is not
            a fusion model with a fitted combiner.
    """
    check_first_seconds(first_seconds)
    checkpoint, out, files, sm = _open_inputs(checkpoint, clean, out, fpr, channel, force, "adapted")
    if sm.family != "fusion":
        raise ValueError(f"--adapt needs a fusion checkpoint (kdkit train --model fusion), {checkpoint} is a "
                         f"{sm.family} model: only a fusion model has the per-car parts (ID profiles, a vehicle-mode "
                         "combiner) to re-fit; calibrate its threshold instead (kdkit calibrate without --adapt)")
    msgs, entries, attacks, channel_notes = [], [], [], []
    for f in files:
        m = read_recording(sm, f, channel, on_bad_rows, first_seconds)  # in the model's own layout, as calibrate reads it
        n_attack = int(m.label.sum())
        if n_attack and not allow_attacks:
            attacks.append(f"{f}: {n_attack:,} of {len(m):,} messages are labelled attacks")
        msgs.append(m)
        channel_notes += [w for w in [left_out_channels_warning(m, f, channel)] if w]  # (sets the counts)
        entries.append({"path": str(f.resolve()), "sha256": file_sha256(f), "messages": len(m), "attack_messages": n_attack,
                        "skipped_rows": m.skipped_rows, "skipped_attack_rows": m.skipped_attack_rows,
                        "left_out_channels": dict(m.left_out_channels)})
    if attacks:
        raise ValueError("--clean takes attack-free recordings, and these hold labelled attacks: " + "; ".join(attacks)
                         + ". Remove them, or pass --allow-attacks to adapt on their attack-free windows only")
    window, stride = int(sm.graph["window"]), int(sm.graph["stride"])
    label_threshold = float(sm.graph.get("label_threshold") or 0.0)
    # the car's IDs: those of its normal traffic (an attack row's ID is not the car's)
    seen = np.unique(np.concatenate([m.can_id[m.label == 0] for m in msgs])) if msgs else np.zeros(0, np.uint32)

    state, config, vocab = extend_vocabulary(sm.ckpt["model"], sm.ckpt["model_config"], sm.ckpt["vocab"], seen.tolist())
    ckpt = {k: v for k, v in sm.ckpt.items() if k not in ("optimizer", "scheduler", "kd", "rng", "rng_other")}
    ckpt.update(model=state, model_config=config, vocab=vocab)
    model = model_from_checkpoint(ckpt, checkpoint).eval()
    ids = IdVocab.from_list(vocab)
    graphs = [build_graphs(m, ids, window, stride, label_threshold) for m in msgs]
    for g, entry in zip(graphs, entries):
        entry["windows"] = int(attack_free(g).sum())
        entry["left_out_attack_windows"] = len(g) - entry["windows"]
    graphs = [g.subset(np.flatnonzero(attack_free(g))) for g in graphs if len(g)]
    n = sum(len(g) for g in graphs)
    need = max(windows_needed(fpr), PROFILE_MIN_WINDOWS)
    if n < need:
        raise ValueError(f"--adapt with --fpr {fpr:g} needs at least {need:,} clean windows, and the {len(files)} "
                         f"recording(s) give {n:,} (window {window:,}, stride {stride:,}: about "
                         f"{(need - 1) * stride + window:,} messages are needed); record more attack-free traffic"
                         + _longer(first_seconds)
                         + (f", or raise --fpr to at least {1.0 / max(n, 1):.3g}" if n >= PROFILE_MIN_WINDOWS else ""))
    clean_gs = GraphSet.concat(graphs) if len(graphs) > 1 else graphs[0]
    before = [g for g in (build_graphs(m, sm.vocab, window, stride, label_threshold) for m in msgs) if len(g)]
    before = GraphSet.concat(before) if len(before) > 1 else before[0]  # n >= need: one at least
    before_scores, before_mode = _fused(sm.model, before)
    before_keep = attack_free(before)
    fit = adapt_to_vehicle(model, clean_gs, quantile=1.0 - fpr)
    scores, after_mode = _fused(model, clean_gs)
    if not np.isfinite(scores).all():
        raise ValueError(f"the adapted model gives {int((~np.isfinite(scores)).sum())} NaN or infinite scores on the "
                         "clean windows; nothing was written")
    ckpt["model"] = {k: v.detach().clone() for k, v in model.state_dict().items()}  # the re-fitted profile and combiner
    # the re-fitted combiner puts the decision at a fused score of 0 (a threshold an earlier threshold-only
    # calibration moved no longer applies)
    threshold = 0.0
    ckpt["threshold"], ckpt["threshold_fitted"] = threshold, True
    after = float(is_attack(scores, threshold).mean())
    rate_before = float(is_attack(before_scores[before_keep], sm.threshold).mean()) if before_keep.any() else None
    added = sorted(set(vocab) - set(sm.ckpt["vocab"]))
    record = {"kind": "adapt", "files": entries, "channel": channel, "first_seconds": first_seconds, "fpr": fpr,
              "windows": int(n),
              "ids_before": len(sm.ckpt["vocab"]), "ids_added": len(added), "ids_of_the_car": int(seen.size),
              "ids_shared_with_training": int(seen.size) - len(added),
              "ids_profiled": fit["profile"]["ids_profiled"], "combiner": fit["combiner"],
              "alarm_rate_before": rate_before, "alarm_rate_after": after,
              "from_checkpoint": str(checkpoint.resolve()), "from_checkpoint_sha256": file_sha256(checkpoint),
              "allow_attacks": allow_attacks, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    prov = copy.deepcopy(provenance(sm.ckpt, checkpoint))
    prov["calibration"] = record
    prov["calibrations"] = [*prov.get("calibrations", []), record]
    prov["vocab_hash"], prov["vocab_size"] = vocab_hash(vocab), len(vocab)
    ckpt["provenance"] = prov
    atomic_torch_save(ckpt, out)
    load_checkpoint(out)
    log.info("adapted %s to %d clean windows: %d IDs added (%d profiled), alarm rate %s -> %.4f; written to %s",
             checkpoint, n, len(added), fit["profile"]["ids_profiled"],
             "-" if rate_before is None else f"{rate_before:.4f}", after, out)
    return {"checkpoint": str(checkpoint), "out": str(out), "fpr": fpr, "first_seconds": first_seconds,
            "windows": int(n), "windows_needed": need,
            "ids_before": record["ids_before"], "ids_added": len(added), "ids_of_the_car": int(seen.size),
            "ids_shared_with_training": record["ids_shared_with_training"], "ids_profiled": record["ids_profiled"],
            "added_id_examples": [f"0x{i & 0x1FFFFFFF:X}" for i in added[:5]],
            "alarm_rate_before": rate_before, "alarm_rate_after": after,
            "unknown_vehicle_share_before": float(before_mode[before_keep].mean()) if before_keep.any() else None,
            "unknown_vehicle_share_after": float(after_mode.mean()),
            "threshold": threshold, "family": "fusion", "files": entries, "warnings": [*channel_notes, ADAPT_HINT]}


def _fused(model, gs: GraphSet) -> tuple[np.ndarray, np.ndarray]:
    """Per window of a fusion model, from one pass: the fused score (as ``predict_scores`` gives it)
    and whether the combiner judged it as an unknown vehicle."""
    parts = torch.as_tensor(predict_parts(model, gs))
    with torch.no_grad():
        scores = model.combiner(parts).float().numpy()
    return scores, model.combiner.mode(parts).numpy() == 1
