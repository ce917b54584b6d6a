"""Detection quality over seeds: teacher, KD student and student alone, per test folder, mean ± std.

For every model family and seed: a teacher, a student distilled from that seed's teacher and the
same student trained without KD, each evaluated on every test folder of the dataset. The table
gives, per folder, F1, MCC, detection at 1 % FPR and the false-positive rate as mean ± std over the
seeds, the recall per attack type, parameters, CPU seconds of training (and the final test pass),
and the KD gain (KD student minus student alone, per seed, then mean ± std). One JSON record
(``--out``) and a Markdown table (``--markdown``) for the README.

    KDKIT_DATA_ROOT=../shared/data/can-train-and-test \\
        python benchmarks/quality.py --dataset hcrl_sa --models gat,vgae --seeds 0,1,2 --epochs 8
    python benchmarks/quality.py --dataset docs/datasets/daga-volvo-v40.toml --models gat --seeds 0,1,2

Generalises the single-seed ``quality_hcrl_sa.py`` (kept for the README's older table).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import statistics
import time
from pathlib import Path

import numpy as np
import torch

METRICS = ("f1", "mcc", "detection_at_1pct_fpr", "false_positive_rate")
ROLES = ("teacher", "student_kd", "student_alone")


def spread(values: list) -> dict | None:
    """``{"mean", "std", "n", "values"}`` of the defined values (None: undefined, e.g. F1 of a
    folder without attacks); sample std (0 for one value)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    # not rounded here: the tables round once (rounded to 4 places and then to 3, 0.83648 ± 0.06648 was
    # printed 0.837 ± 0.067 where kdkit report printed 0.836 ± 0.066)
    return {"mean": statistics.fmean(vals), "std": std, "n": len(vals), "values": [round(v, 6) for v in vals]}


def brief(summary: dict, cpu_seconds: float) -> dict:
    """What the table needs from a ``kdkit.workflows.run.train`` summary."""
    scen = summary["test"]["scenarios"]
    return {"parameters": summary["parameters"], "size_bytes": summary["size_bytes"],
            "epochs_run": summary["epochs_run"], "train_seconds": summary["train_seconds"],
            "cpu_seconds": round(cpu_seconds, 1), "threshold": summary["threshold"],
            "threshold_rule": summary.get("threshold_rule"), "checkpoint": summary["best_checkpoint"],
            "still_learning": summary.get("still_learning"), "scenarios": scenario_brief(scen)}


def scenario_brief(scenarios: dict) -> dict:
    """Per test folder: :data:`METRICS` and the recall per attack type of its metrics."""
    return {name: {**{k: m.get(k) for k in METRICS},
                   "per_attack_type": {t: v["recall"] for t, v in (m.get("per_attack_type") or {}).items()}}
            for name, m in scenarios.items()}


def aggregate(runs: dict[str, list[dict]]) -> dict:
    """Per role: per scenario and metric mean ± std over the seeds; parameters; CPU seconds; the
    KD gain per scenario and metric (paired by seed)."""
    out: dict = {}
    for role, per_seed in runs.items():
        if not per_seed:
            continue
        scenarios = list(per_seed[0]["scenarios"])
        table = {}
        for name in scenarios:
            row = {k: spread([r["scenarios"][name][k] for r in per_seed]) for k in METRICS}
            types = sorted({t for r in per_seed for t in r["scenarios"][name]["per_attack_type"]})
            row["per_attack_type_recall"] = {t: spread([r["scenarios"][name]["per_attack_type"].get(t) for r in per_seed])
                                             for t in types}
            table[name] = row
        out[role] = {"parameters": per_seed[0]["parameters"], "size_bytes": per_seed[0]["size_bytes"],
                     "cpu_seconds": spread([r["cpu_seconds"] for r in per_seed]),
                     "epochs_run": spread([r["epochs_run"] for r in per_seed]), "scenarios": table}
        if all("ablation" in r for r in per_seed):
            # the variants every seed has (records of different versions merged)
            variants = [v for v in per_seed[0]["ablation"] if all(v in r["ablation"] for r in per_seed)]
            out[role]["ablation"] = {v: {name: {k: spread([r["ablation"][v][name][k] for r in per_seed])
                                                for k in ("f1", "false_positive_rate")}
                                         for name in per_seed[0]["ablation"][v]}
                                     for v in variants}
    kd, alone = runs.get("student_kd") or [], runs.get("student_alone") or []
    if kd and alone:
        gain = {}
        for name in kd[0]["scenarios"]:
            gain[name] = {k: spread([None if a["scenarios"][name][k] is None or b["scenarios"][name][k] is None
                                     else a["scenarios"][name][k] - b["scenarios"][name][k] for a, b in zip(kd, alone)])
                          for k in ("f1", "mcc", "detection_at_1pct_fpr")}
        out["kd_gain"] = gain
    if runs.get("teacher") and kd:
        out["student_share_of_teacher_parameters"] = round(kd[0]["parameters"] / runs["teacher"][0]["parameters"], 4)
    return out


def _cell(s: dict | None, signed: bool = False) -> str:
    if s is None:
        return "-"
    mean = f"{s['mean']:+.3f}" if signed else f"{s['mean']:.3f}"
    return mean if s["n"] == 1 else f"{mean} ± {s['std']:.3f}"


def markdown(record: dict) -> str:
    """One Markdown table per model family: rows = roles, columns = test folders (F1 / MCC /
    det@1%FPR / FPR), then parameters and CPU seconds."""
    lines = []
    for family, agg in record["families"].items():
        roles = [r for r in ROLES if r in agg]
        if not roles:
            continue
        scenarios = list(agg[roles[0]]["scenarios"])
        students, every = record.get("student_set"), record.get("set")
        lines.append(f"**{family.upper()}** on {record['dataset']}, seeds {family_seeds(record, family)} "
                     f"(F1 / MCC / detection at 1 % FPR / false-positive rate, mean ± sample std)"
                     + (f"; every run with {json.dumps(every)}" if every else "")
                     + (f"; students with {json.dumps(students)}" if students else "") + "\n")
        lines.append("| model | parameters | CPU s | " + " | ".join(scenarios) + " |")
        lines.append("|---|---:|---:|" + "---|" * len(scenarios))
        for role in roles:
            a = agg[role]
            cells = [" / ".join(_cell(a["scenarios"][s][k]) for k in METRICS) for s in scenarios]
            lines.append(f"| {role.replace('_', ' ')} | {a['parameters']:,} | {_cell(a['cpu_seconds'])} | "
                         + " | ".join(cells) + " |")
        if "kd_gain" in agg:
            cells = [_cell(agg["kd_gain"][s]["f1"], signed=True) for s in scenarios]
            lines.append("| KD gain (F1) | | | " + " | ".join(cells) + " |")
        lines.append("")
        runs = (record.get("runs") or {}).get(family) or {}
        learning = {r: sum(bool(b.get("still_learning")) for b in runs.get(r, [])) for r in roles}
        if any(learning.values()):  # the epoch limit ended these runs while their validation loss still fell
            lines.append("Still learning when their epochs ran out (validation loss fell > 1 % in the last epoch): "
                         + ", ".join(f"{r.replace('_', ' ')} {n} of {len(runs.get(r, []))}"
                                     for r, n in learning.items() if n) + "; train longer before reading the table.\n")
        lines.append("Recall per attack type (test folder: type), mean ± std\n")
        lines.append("| model | " + " | ".join(scenarios) + " |")
        lines.append("|---|" + "---|" * len(scenarios))
        for role in roles:
            cells = ["<br>".join(f"{t} {_cell(v)}" for t, v in agg[role]["scenarios"][s]["per_attack_type_recall"].items())
                     or "-" for s in scenarios]
            lines.append(f"| {role.replace('_', ' ')} | " + " | ".join(cells) + " |")
        lines.append("")
        for role in roles:
            if "ablation" not in agg[role]:
                continue
            lines.append(f"{role.replace('_', ' ')}: heads alone and combiners, all fitted on validation "
                         "(F1 / false-positive rate)\n")
            lines.append("| variant | " + " | ".join(scenarios) + " |")
            lines.append("|---|" + "---|" * len(scenarios))
            for variant, per in agg[role]["ablation"].items():
                cells = [" / ".join(_cell(per[s][k]) for k in ("f1", "false_positive_rate")) if s in per else "-"
                         for s in scenarios]
                lines.append(f"| {variant} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def run_tag(*settings: dict | None) -> str:
    """The run-name suffix of ``--set`` / ``--student-set`` settings (``_heads=2``): runs of another
    setting get folders of their own, never the base runs' (a student ablation into the same
    ``--runs-dir`` replaced them, and the base record then pointed at the variant's checkpoints)."""
    items = list({k: v for d in settings if d for k, v in d.items()}.items())  # (--student-set wins over --set)
    if not items:
        return ""
    text = "_".join(f"{k}={v if isinstance(v, (int, float, str)) else json.dumps(v, sort_keys=True)}" for k, v in items)
    text = re.sub(r"[^A-Za-z0-9._=+-]", "-", text)
    return "_" + (text if len(text) <= 60 else hashlib.sha256(text.encode()).hexdigest()[:12])


def family_seeds(record: dict, family: str) -> list[int]:
    """The seeds of one family's runs, in run order: recorded per family (records since 2026-12-08),
    else per run, else the record's seeds (a record of one invocation: every family ran them all)."""
    if family in record.get("family_seeds", {}):
        return list(record["family_seeds"][family])
    runs = record.get("runs", {}).get(family, {}).get("teacher", [])
    if runs and all("seed" in r for r in runs):
        return [r["seed"] for r in runs]
    return list(record.get("seeds", []))


def _fit(role: str, family: str, seed: int, data, base: dict, tag: str = "", **kw) -> dict:
    """Train and evaluate one (family, seed, role) run; its brief with the CPU seconds (a fusion run
    also with its :func:`fusion_ablation`). ``tag``: the run name's :func:`run_tag`."""
    from kdkit.config import make_config
    from kdkit.workflows.run import train

    c = time.process_time()
    cfg = make_config(**{**base, "model": family, "seed": seed, "run_name": f"{family}_{role}_seed{seed}{tag}", **kw})
    s = train(cfg, progress=False, data=data)
    out = {"seed": seed, **brief(s, time.process_time() - c)}
    if family == "fusion":
        out["ablation"] = fusion_ablation(s["best_checkpoint"], data, cfg.fusion_quantile, cfg.threshold_quantile)
    return out


ABLATION = ("classifier_at_0.5", "classifier_at_val_fpr", "autoencoder_at_val_fpr", "autoencoder_standardised",
            "id_profile_at_val_fpr", "fused_max_without_profile", *(f"fused_{k}" for k in ("max", "logistic", "mlp", "policy")))


def fusion_ablation(checkpoint: str, data, quantile: float, vgae_quantile: float) -> dict:
    """F1 per test folder of a fusion model's heads alone and of every combiner, all fitted on the
    validation split only (the model is trained once; only the combination differs):

    - ``classifier_at_0.5``: the classification head as a GAT decides (attack probability >= 0.5);
    - ``classifier_at_val_fpr``: the same head at the ``quantile`` of attack-free validation scores;
    - ``autoencoder_at_val_fpr``: the reconstruction head as a VGAE decides (feature + ID + edge error
      at the ``vgae_quantile`` of attack-free validation windows);
    - ``autoencoder_standardised``: the reconstruction parts (and OOV share) each standardised on
      attack-free validation windows, their maximum (the ``max`` combiner without the classifier
      and the ID profiles);
    - ``id_profile_at_val_fpr``: the ID-profile distance alone, at the ``quantile`` of the attack-free
      validation windows of a known vehicle (windows of an unknown vehicle: never an attack);
    - ``fused_max_without_profile``: the ``max`` combiner without the ID-profile part (the fused
      decision before that part existed);
    - ``fused_<kind>``: :class:`kdkit.models.fusion.Combiner` of that kind.

    The ``fused`` variants judge an unknown vehicle's windows by the run's ``unknown_vehicle`` rule.
    """
    import numpy as np
    import torch

    from kdkit.models.fusion import KNOWN, PARTS, Combiner, calibration_windows, fit_combiner, predict_parts
    from kdkit.models.thresholds import quantile_threshold
    from kdkit.reporting.metrics import binary_metrics
    from kdkit.training.checkpoint import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(checkpoint), checkpoint).eval()
    val = data.splits["val"]
    yv = val.y.numpy()
    known, unknown = predict_parts(model, val), predict_parts(model, val, ids_hidden=True)
    ref, _ = calibration_windows(val)  # as the run calibrates
    tests = {name: (predict_parts(model, data.splits[name]), data.splits[name].y.numpy())
             for name in data.scenarios if len(data.splits[name])}
    c = model.config
    recon = lambda p: p[:, 1] + c["id_weight"] * p[:, 2] + c["edge_weight"] * p[:, 3]  # noqa: E731 - the VGAE's score
    scorers = {
        "classifier_at_0.5": (lambda p: p[:, 0], 0.0),
        "classifier_at_val_fpr": (lambda p: p[:, 0], quantile_threshold(known[(yv == 0) & ref, 0], quantile)),
        "autoencoder_at_val_fpr": (recon, quantile_threshold(recon(known[(yv == 0) & ref]), vgae_quantile)),
    }
    at = PARTS.index("profile")
    standardised = Combiner("max", known_id_fraction=c["known_id_fraction"])
    standardised.mask[:, [0, at]] = 0.0  # the reconstruction parts (and OOV share) alone, each on its validation scale
    fit_combiner(standardised, (known, yv), (unknown, yv), quantile=quantile, reference=ref)
    scorers["autoencoder_standardised"] = (lambda p: standardised(torch.as_tensor(p, dtype=torch.float32)).numpy(), 0.0)
    in_known = standardised.mode(torch.as_tensor(known, dtype=torch.float32)).numpy() == KNOWN
    profile_cut = quantile_threshold(known[(yv == 0) & in_known & ref, at], quantile)

    def profile_alone(p):
        mode = standardised.mode(torch.as_tensor(p, dtype=torch.float32)).numpy()
        return np.where(mode == KNOWN, p[:, at] - profile_cut, -1e9)

    scorers["id_profile_at_val_fpr"] = (profile_alone, 0.0)
    rule = c.get("unknown_vehicle", "fused")  # the run's unknown-vehicle rule, for the fused variants
    without = Combiner("max", known_id_fraction=c["known_id_fraction"], unknown_vehicle=rule)
    without.mask[:, at] = 0.0
    fit_combiner(without, (known, yv), (unknown, yv), quantile=quantile, reference=ref)
    scorers["fused_max_without_profile"] = (lambda p: without(torch.as_tensor(p, dtype=torch.float32)).numpy(), 0.0)
    for kind in ("max", "logistic", "mlp", "policy"):
        comb = Combiner(kind, c["combiner_hidden"], known_id_fraction=c["known_id_fraction"], unknown_vehicle=rule)
        fit_combiner(comb, (known, yv), (unknown, yv), quantile=quantile, reference=ref)
        scorers[f"fused_{kind}"] = (lambda p, m=comb: m(torch.as_tensor(p, dtype=torch.float32)).numpy(), 0.0)
    out: dict = {}
    for variant, (score, threshold) in scorers.items():
        out[variant] = {}
        for name, (parts, y) in tests.items():
            m = binary_metrics(y, np.asarray(score(parts), np.float64), threshold)
            out[variant][name] = {"f1": m["f1"], "false_positive_rate": m["false_positive_rate"]}
    return out


def run(dataset: str, families: list[str], seeds: list[int], epochs: int, student_epochs: int | None,
        runs_dir: str, data_root: str | None = None, threads: int = 1, extra: dict | None = None,
        student_extra: dict | None = None, teachers: dict | None = None) -> dict:
    """Train and evaluate every (family, seed, role); returns the JSON record.

    ``student_extra`` holds run-schema keys for the student runs only (a student size or loss
    ablation); ``teachers`` is an earlier record whose teacher runs (per family and seed) are
    reused instead of trained again, so student variants share the very same teachers.
    """
    if threads:
        torch.set_num_threads(threads)
    from kdkit.config import make_config
    from kdkit.training.hardware import machine_info
    from kdkit.workflows.run import load_data

    base = dict(dataset=dataset, runs_dir=runs_dir, save_compat=False, precision="32-true", overwrite=True,
                **({"data_root": data_root} if data_root else {}), **(extra or {}))
    t0 = time.perf_counter()
    record: dict = {"benchmark": "quality", "dataset": dataset, "seeds": seeds,
                    "family_seeds": {family: list(seeds) for family in families}, "epochs": epochs,
                    "student_epochs": student_epochs or epochs, "torch_threads": torch.get_num_threads(),
                    "families": {}, "runs": {}}
    if extra:
        record["set"] = extra  # every run's settings: records of other settings must not merge
    if student_extra:
        record["student_set"] = student_extra
    stored = _stored_teachers(teachers, dataset, families, seeds, epochs, extra) if teachers else {}
    if stored:
        record["teachers_from"] = teachers.get("path")
    for family in families:
        data = load_data(make_config(model=family, **base))
        runs: dict[str, list[dict]] = {r: [] for r in ROLES}
        for seed in seeds:
            one = {"family": family, "seed": seed, "data": data, "base": base}
            teacher = stored.get((family, seed)) or _fit("teacher", **one, type="teacher", epochs=epochs,
                                                         tag=run_tag(extra))
            runs["teacher"].append(teacher)
            se = student_epochs or epochs
            sx = {"epochs": se, **(student_extra or {}), "type": "student",  # --student-set wins over --set
                  "tag": run_tag(extra, student_extra)}
            runs["student_kd"].append(_fit("student_kd", **one, teacher=teacher["checkpoint"], **sx))
            runs["student_alone"].append(_fit("student_alone", **one, **sx))
        record["runs"][family] = runs
        record["families"][family] = aggregate(runs)
    record["total_seconds"] = round(time.perf_counter() - t0, 1)
    record["machine"] = machine_info()
    return record


def _stored_teachers(record: dict, dataset: str, families: list[str], seeds: list[int], epochs: int,
                     extra: dict | None = None) -> dict:
    """The teacher runs of an earlier record, keyed by (family, seed) (a record lists its runs in
    the order of its ``seeds``, merged records too).

    Raises:
        ValueError: the record is of another dataset or teacher epochs, lacks a family or seed
            asked for, or its checkpoint file is gone.
    """
    where = record.get("path", "the --teachers record")
    if record.get("dataset") != dataset or record.get("epochs") != epochs:
        raise ValueError(f"--teachers {where}: its teachers are dataset {record.get('dataset')!r}, "
                         f"{record.get('epochs')} epochs; this run asks for {dataset!r}, {epochs} epochs")
    if (record.get("set") or {}) != (extra or {}):
        raise ValueError(f"--teachers {where}: its runs were trained with --set {json.dumps(record.get('set') or {})}, "
                         f"this run asks for --set {json.dumps(extra or {})}: give the same --set")
    out = {}
    for family in families:
        teachers = record.get("runs", {}).get(family, {}).get("teacher", [])
        known = family_seeds(record, family)
        if len(known) != len(teachers):  # (a merged record of before 2026-12-08 listed every family's seeds)
            raise ValueError(f"--teachers {where}: its {len(teachers)} {family} teacher run(s) and its seeds {known} "
                             "do not pair up (a record merged from families of other seeds, before kdkit recorded "
                             "each family's seeds); merge the records again")
        by_seed = dict(zip(known, teachers))
        for seed in seeds:
            run = by_seed.get(seed)
            if run is None:
                raise ValueError(f"--teachers {where}: no {family} teacher of seed {seed} "
                                 f"(it holds seeds {sorted(by_seed)})")
            if not Path(run["checkpoint"]).is_file():
                raise ValueError(f"--teachers {where}: the teacher checkpoint {run['checkpoint']} is gone; "
                                 "train the teachers again")
            out[(family, seed)] = run
    return out


def refit(record: dict, data_root: str | None = None, unknown_vehicle: str | None = None) -> dict:
    """Re-fit what a fusion run fits after training (the ID profiles and the combiner, with the
    current code) on every run's stored checkpoint, re-evaluate and redo its ablation; training is
    not repeated (a scoring rule changed, the weights did not). The checkpoints are rewritten, and so
    are the run folders' test outputs (summary.json's test metrics, test_scores.npz, metrics.json:
    ``kdkit report`` of the runs then shows the record's numbers). ``unknown_vehicle`` also sets that
    rule in each checkpoint's model config (a checkpoint from before the option scores with ``"fused"``).

    Each run is re-fitted on the graphs it was trained on (its checkpoint's graph settings: a record of
    ``--set window=50`` was re-fitted and scored on the default windows).

    Raises:
        ValueError: a family other than fusion (its threshold is fitted the same way as before).
    """
    from kdkit.data.datasets import file_sha256
    from kdkit.models.fusion import fit_after_training
    from kdkit.reporting.metrics import evaluate_model, repeated_tests
    from kdkit.training.checkpoint import atomic_torch_save, load_checkpoint, model_from_checkpoint
    from kdkit.workflows.run import checkpoint_data, write_test_outputs

    bad = sorted(set(record["runs"]) - {"fusion"})
    if bad:
        raise ValueError(f"--refit: only fusion runs are re-fitted (the record holds {bad})")
    out = json.loads(json.dumps(record))
    prepared: dict[str, object] = {}
    rewritten: dict[str, str] = {}  # a teacher checkpoint's SHA-256 before the re-fit -> after
    for family, runs in out["runs"].items():
        for role in ROLES:  # the teachers first: their students' summaries then name the rewritten files
            for run in runs.get(role, []):
                path = Path(run["checkpoint"])
                ckpt = load_checkpoint(path)
                if unknown_vehicle is not None:
                    ckpt["model_config"] = {**ckpt["model_config"], "unknown_vehicle": unknown_vehicle}
                tc = ckpt.get("train_config", {})
                key = json.dumps({k: tc.get(k) for k in ("window", "stride", "label_threshold", "val_fraction",
                                                         "synthetic_seed", "on_bad_rows")}, sort_keys=True)
                if key not in prepared:
                    prepared[key] = checkpoint_data(ckpt, record["dataset"], data_root)
                data = prepared[key]
                model = model_from_checkpoint(ckpt, path).eval()
                quantile = float(tc.get("fusion_quantile", 0.999))
                fit = fit_after_training(model, data.splits["train"], data.splits["val"], quantile, int(tc.get("seed", 0)))
                ckpt["model"] = model.state_dict()
                before = file_sha256(path)
                atomic_torch_save(ckpt, path)
                after = file_sha256(path)
                if role == "teacher" and after != before:
                    rewritten[before] = after
                res = evaluate_model(model, data.splits, float(ckpt.get("threshold", 0.0)), progress=False,
                                     repeats=repeated_tests(data.info))
                run["scenarios"] = scenario_brief(res["scenarios"])
                run["refit"] = {"profile": fit.get("profile"), "calibrated_on": fit.get("calibrated_on")}
                run["ablation"] = fusion_ablation(str(path), data, quantile,
                                                  float(tc.get("threshold_quantile", 0.99)))
                _rewrite_run_outputs(path, res, data, run["refit"], rewritten, write_test_outputs)
        out["families"][family] = aggregate(runs)
    out["refitted"] = True
    out["refit_unknown_vehicle"] = unknown_vehicle  # None: each checkpoint's own rule
    return out


def _rewrite_run_outputs(checkpoint: Path, results: dict, data, refit: dict, rewritten: dict[str, str],
                         write_test_outputs) -> None:
    """The run folder of ``checkpoint`` (``<run>/checkpoints/best.pt``) after a re-fit: its test outputs
    from ``results``, and a KD student's summary naming its re-fitted teacher's new file (the weights it
    was distilled from did not change; the report otherwise left the teacher out as replaced)."""
    run_dir = checkpoint.parent.parent
    summary_path = run_dir / "summary.json"
    if checkpoint.parent.name != "checkpoints" or not summary_path.is_file():
        return
    summary = json.loads(summary_path.read_text())
    summary["test"] = {k: v for k, v in results.items() if k != "scores"}
    summary["refit"] = refit
    teacher = summary.get("teacher")
    if isinstance(teacher, dict) and teacher.get("sha256") in rewritten:
        summary["teacher"] = {**teacher, "sha256": rewritten[teacher["sha256"]], "refitted_from": teacher["sha256"]}
    labels = {name: data.splits[name].y.numpy().astype(np.uint8) for name in results["scores"]}
    write_test_outputs(run_dir, summary, results, labels)


def merge(records: list[dict]) -> dict:
    """One record from records of the same dataset and epochs over different seeds (e.g. seeds run
    as separate processes or SLURM jobs): runs concatenated per family and role, re-aggregated.

    Raises:
        ValueError: the records differ in dataset or epochs, or share a seed.
    """
    first = records[0]
    # refit_unknown_vehicle: the rule a --refit set in every checkpoint (records re-fitted with other rules
    # were pooled into one table without a word)
    for key in ("dataset", "epochs", "student_epochs", "set", "student_set", "refit_unknown_vehicle"):
        values = {json.dumps(r.get(key)) for r in records}
        if len(values) > 1:
            raise ValueError(f"--merge: the records differ in {key} ({sorted(values)}); only runs of one setting merge")
    families = list(dict.fromkeys(f for r in records for f in r["runs"]))
    per_family = {f: [s for r in records if f in r["runs"] for s in family_seeds(r, f)] for f in families}
    for family, seeds in per_family.items():
        if len(set(seeds)) < len(seeds):
            raise ValueError(f"--merge: a {family} seed appears in more than one record ({seeds})")
    out = {k: v for k, v in first.items() if k not in ("runs", "families", "markdown", "total_seconds")}
    out["seeds"] = sorted({s for seeds in per_family.values() for s in seeds})
    out["family_seeds"], out["runs"], out["families"] = per_family, {}, {}
    out["total_seconds"] = round(sum(r.get("total_seconds", 0.0) for r in records), 1)
    out["merged_from"] = len(records)
    for family in families:
        runs = {role: [run for r in records for run in r["runs"].get(family, {}).get(role, [])] for role in ROLES}
        out["runs"][family] = runs
        out["families"][family] = aggregate(runs)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="hcrl_sa", help="registry key, folder or spec file")
    ap.add_argument("--models", default="gat", help="model families, comma-separated (gat, vgae, fusion)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--student-epochs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0: torch's default)")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--runs-dir", default="runs/quality")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="any run-schema key for every run, e.g. --set window=50 (value parsed as JSON if it can be)")
    ap.add_argument("--student-set", action="append", default=[], metavar="KEY=JSON",
                    help="a run-schema key for the student runs only, e.g. --student-set heads=2 (a size ablation)")
    ap.add_argument("--teachers", default=None, metavar="RECORD.json",
                    help="reuse the teacher runs of this earlier record (same dataset, teacher epochs and seeds) "
                         "instead of training them again")
    ap.add_argument("--out", default=None, help="write the JSON record here")
    ap.add_argument("--markdown", action="store_true", help="print the Markdown table instead of the JSON")
    ap.add_argument("--merge", nargs="+", default=None, metavar="RECORD.json",
                    help="train nothing: merge the JSON records of separate runs over other seeds into one table")
    ap.add_argument("--refit", default=None, metavar="RECORD.json",
                    help="train nothing: re-fit the profiles and combiners of a fusion record's checkpoints with the "
                         "current code and re-evaluate them")
    ap.add_argument("--unknown-vehicle", default=None, choices=("classifier", "fused"),
                    help="with --refit: the fusion models' unknown-vehicle rule to set (default: each checkpoint's own)")
    args = ap.parse_args(argv)
    if args.unknown_vehicle and not args.refit:
        ap.error("--unknown-vehicle goes with --refit (a training run takes --set unknown_vehicle=...)")
    if args.merge:
        try:
            record = merge([json.loads(Path(p).read_text()) for p in args.merge])
        except ValueError as e:  # records of different settings: an error naming them, not a traceback
            ap.error(str(e))
        return _report(record, args)
    if args.refit:
        return _report(refit(json.loads(Path(args.refit).read_text()), args.data_root, args.unknown_vehicle), args)
    families = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = sorted(set(families) - {"gat", "vgae", "fusion"})
    if bad:
        ap.error(f"--models: unknown {bad}; choose from gat, vgae, fusion")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds {args.seeds!r}: comma-separated integers, e.g. 0,1,2")
    if not seeds:
        ap.error(f"--seeds {args.seeds!r}: no seed given; comma-separated integers, e.g. 0,1,2")
    if len(set(seeds)) < len(seeds):  # the second run of a seed replaced the first: a spread over one run
        ap.error(f"--seeds {args.seeds}: a seed given twice; each seed once")
    extra, student_extra = ({k: v for k, v in (_key_value(ap, flag, item) for item in items)}
                            for flag, items in (("--set", args.set), ("--student-set", args.student_set)))
    fixed = sorted(set(student_extra) & {"model", "type", "teacher", "seed", "run_name", "dataset", "runs_dir"})
    if fixed:
        ap.error(f"--student-set {fixed}: the benchmark sets these itself (use --models, --seeds, --dataset, "
                 f"--student-epochs)")
    teachers = None
    if args.teachers:
        teachers = {**json.loads(Path(args.teachers).read_text()), "path": args.teachers}
    try:
        record = run(args.dataset, families, seeds, args.epochs, args.student_epochs, args.runs_dir, args.data_root,
                     args.threads, extra, student_extra, teachers)
    except ValueError as e:
        if str(e).startswith("--teachers"):
            ap.error(str(e))
        raise
    return _report(record, args)


def _key_value(ap: argparse.ArgumentParser, flag: str, item: str) -> tuple[str, object]:
    """``KEY=VALUE`` of ``--set``/``--student-set``; the value parsed as JSON if it can be."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        ap.error(f"{flag} {item!r}: write KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _report(record: dict, args: argparse.Namespace) -> dict:
    """Add the Markdown table, write ``--out``, print the table or the JSON; returns the record."""
    record["markdown"] = markdown(record)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=1))
    print(record["markdown"] if args.markdown else json.dumps({k: v for k, v in record.items() if k != "runs"}, indent=1))
    return record


if __name__ == "__main__":
    main()
