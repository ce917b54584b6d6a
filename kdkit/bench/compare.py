"""Side by side: teacher vs students, the plain PyG loop vs Fabric, vectorized vs pandas preprocessing.

What the student and benchmark notebooks call; every figure comes from a benchmark a user
can rerun (``kdkit bench train|infer|preprocess``), recorded with the machine it ran on.

    from kdkit import compare
    rows = compare.compare_models({"teacher": t, "student (KD)": s}, data)   # sizes, F1, latency
    results = compare.bench_grid(["gat", "vgae"], ["teacher", "student"], ["32-true", "bf16-mixed"])
    compare.speedup_rows(results, data)          # the migration guide's "Performance Comparison"
    compare.bench_preprocess(compare.sample_file("synthetic"), repeats=3, baseline_limit=5000)
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

from kdkit.bench import preprocess as bench
from kdkit.bench.infer import bench_infer
from kdkit.bench.train import MODELS, bench_train
from kdkit.config import PRECISIONS
from kdkit.data.datasets import discover
from kdkit.data.readers import ctt_layout
from kdkit.models.registry import count_parameters, model_size_bytes
from kdkit.reporting.metrics import evaluate_model, repeated_tests
from kdkit.training.checkpoint import load_checkpoint, model_from_checkpoint
from kdkit.workflows.run import check_compatible


# ----------------------------------------------------------------------------- teacher vs students
def load_teacher(checkpoint: str | Path, data) -> dict:
    """A trained teacher as a summary-like dict (checkpoint, model, sizes, ``test`` metrics on ``data``).

    ``best_epoch`` is the epoch (1-based) of the best validation metric in the checkpoint's
    history. ``epochs_run`` comes from the run's ``last.pt`` next to it: a ``best.pt`` holds the
    history only up to its own epoch. Without a ``last.pt`` it is None (unknown) unless
    ``checkpoint`` is the last one itself.
    """

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"teacher_checkpoint {path} does not exist; pass a best.pt or leave it empty "
                                "to train a quick teacher first")
    ckpt = load_checkpoint(path)
    check_compatible(ckpt, data, "teacher")
    model = model_from_checkpoint(ckpt).eval()
    results = evaluate_model(model, data.splits, float(ckpt.get("threshold", 0.5)), repeats=repeated_tests(data.info))
    history = ckpt.get("history", [])
    last = path.with_name("last.pt")
    if last.is_file() and last.resolve() != path.resolve():
        history = load_checkpoint(last).get("history", history)  # the whole run: the best epoch and the ones after
        epochs_run = len(history)
    else:
        epochs_run = len(history) if path.name == "last.pt" else None
    return {"model": ckpt["model_config"]["kind"], "type": "teacher", "kd": False, "best_checkpoint": str(path),
            "parameters": count_parameters(model), "size_bytes": model_size_bytes(model),
            "epochs_run": epochs_run, "best_epoch": best_epoch(history), "train_seconds": None, "precision": None,
            "threshold": float(ckpt.get("threshold", 0.5)), "history": history,
            "test": {k: v for k, v in results.items() if k != "scores"}}


def best_epoch(history: Sequence[Mapping]) -> int | None:
    """The epoch (1-based) the best checkpoint was saved at, from a run's ``history``.

    The monitored metric is ``val_f1`` (higher is better) when recorded, else ``val_loss``
    (lower is better), as in :attr:`kdkit.training.task.Task.monitor`; the first epoch wins a
    tie (the trainers save ``best.pt`` only on a strict improvement). None without history.
    """
    key, sign = ("val_f1", 1.0) if any("val_f1" in h for h in history) else ("val_loss", -1.0)
    scored = [(sign * float(h[key]), -i, h) for i, h in enumerate(history)
              if h.get(key) is not None and not math.isnan(float(h[key]))]
    if not scored:
        return None
    _, neg_i, h = max(scored, key=lambda t: (t[0], t[1]))
    return int(h.get("epoch", -neg_i)) + 1


def f1_by_model(models: Mapping[str, Mapping]) -> dict[str, dict[str, float]]:
    """``{label: {scenario: f1}}`` from summaries (``train``'s or :func:`load_teacher`'s)."""
    return {name: {k: v["f1"] for k, v in s["test"]["scenarios"].items()} for name, s in models.items()}


def f1_rows(models: Mapping[str, Mapping]) -> list[dict]:
    """One row per scenario (and overall), one F1 column per model."""
    f1 = f1_by_model(models)
    scenarios = list(dict.fromkeys(k for m in f1.values() for k in m))
    rows = [{"scenario": sc, **{name: f1[name].get(sc) for name in models}} for sc in scenarios]
    rows.append({"scenario": "overall", **{name: s["test"]["overall"].get("f1") for name, s in models.items()}})
    return rows


def kd_verdict(kd: Mapping, alone: Mapping) -> str:
    """Whether distillation helped, in words: the KD gain in F1 (student with KD minus the same
    student alone) per scenario and overall, from two ``train`` summaries of one seed."""
    gains = {}
    for name, m in kd["test"]["scenarios"].items():
        a = alone["test"]["scenarios"].get(name, {}).get("f1")
        if m.get("f1") is not None and a is not None:
            gains[name] = m["f1"] - a
    if not gains:
        return "KD gain: no scenario with an F1 for both students"
    overall = [kd["test"]["overall"].get("f1"), alone["test"]["overall"].get("f1")]
    helped = sum(g > 0 for g in gains.values())
    lines = ["KD gain (F1 of the student with KD minus the same student alone):"]
    lines += [f"  {name}: {gain:+.3f}" for name, gain in gains.items()]
    if None not in overall:
        lines.append(f"  overall: {overall[0] - overall[1]:+.3f}")
    where = f"none of the {len(gains)}" if helped == 0 else f"{helped} of {len(gains)}"
    lines.append(f"distillation helped on {where} scenarios, on this one seed; seeds differ by more than small "
                 "gains, so repeat over seeds before concluding (kdkit sweep --seeds 0,1,2)")
    return "\n".join(lines)


def compare_models(models: Mapping[str, Mapping], dataset: str, data_root: str | None = None,
                   latency_calls: int = 200, seconds: float = 0.5, variant: str = "fp32-eager") -> list[dict]:
    """Size, overall F1 and measured inference speed (``kdkit bench infer``) of each model.

    Args:
        models: ``{label: summary}``; the first entry is the reference (the teacher).
        dataset: whose validation windows are scored.
        data_root: folder holding the datasets.
        latency_calls: single-window calls timed for p50/p99 (after a burn-in).
        seconds: measuring time of the batched throughput.
        variant: ``fp32-eager`` | ``bf16-eager`` | ``fp32-compiled`` | ``bf16-compiled`` | ``fp32-aot`` (GAT).
    """

    rows, ref = [], None
    for name, s in models.items():
        speed = bench_infer(s["best_checkpoint"], dataset, data_root, seconds=seconds,
                            single=latency_calls, variants=variant)["variants"][variant]
        ref = ref or s
        rows.append({"name": name, "parameters": s["parameters"], "size_bytes": s["size_bytes"],
                     "param_share": s["parameters"] / ref["parameters"], "f1_overall": s["test"]["overall"].get("f1"),
                     "best_epoch": best_epoch(s.get("history", [])), "epochs_run": s.get("epochs_run"),
                     "latency_ms_p50": speed["latency_ms_p50"], "latency_ms_p99": speed["latency_ms_p99"],
                     "windows_per_s": speed["windows_per_s"], "messages_per_s": speed["messages_per_s"]})
    return rows


# ----------------------------------------------------------------------------- the plain PyG loop vs Fabric
def split_list(text: str) -> list[str]:
    """``"gat, vgae"`` -> ``["gat", "vgae"]`` (notebook parameters are flat strings)."""
    return [t.strip() for t in text.split(",") if t.strip()]


def check_grid(models: Sequence[str], types: Sequence[str], precisions: Sequence[str]) -> None:
    """The benchmark notebook's grid checked in its first cell: a misspelt value (``vgea``,
    ``studnet``) failed in section 3, after every grid point before it was measured.

    Raises:
        ValueError: naming the parameter, the value and the choices.
    """
    for name, values, choices in (("models", models, MODELS), ("types", types, ("teacher", "student")),
                                  ("precisions", precisions, PRECISIONS)):
        if not values:
            raise ValueError(f"{name}: empty; choose from {', '.join(choices)}")
        bad = [v for v in values if v not in choices]
        if bad:
            raise ValueError(f"{name}: {', '.join(map(repr, bad))} unknown; choose from {', '.join(choices)}")


def bench_grid(models: Sequence[str], types: Sequence[str], precisions: Sequence[str], **kwargs: Any) -> list[dict]:
    """``kdkit bench train`` for every model x type x Fabric precision; prints one line each.

    Args:
        models, types, precisions: the grid (the plain PyG loop runs fp32 next to each Fabric precision).
        **kwargs: passed to :func:`kdkit.bench.train.bench_train` (dataset, steps, repeats, ...).
    """

    results = []
    for model in models:
        for type_ in types:
            for precision in precisions:
                r = bench_train(model=model, type=type_, precision=precision, **kwargs)
                results.append(r)
                print(f"{model} {type_:<8} fabric {r['fabric']['precision']:<10} {r['fabric']['graphs_per_s']['median']:>8.1f} "
                      f"graphs/s, plain PyG loop {r['plain']['graphs_per_s']['median']:>8.1f}: {r['speedup']}x", flush=True)
    return results


def train_rows(results: Sequence[Mapping]) -> list[dict]:
    """Bar rows (``model``, ``variant``, per-metric ``{median, min, max}``) from :func:`bench_grid`.

    The plain loop is fp32 in every call: its measurements are pooled into one bar per model.
    """
    rows: dict[tuple[str, str], dict] = {}
    for r in results:
        group = f"{r['model']} {r['type']}"
        for name in ("plain", "fabric"):
            v = r[name]
            key = (group, "plain PyG loop (fp32)" if name == "plain" else f"fabric ({v['precision']})")
            row = rows.setdefault(key, {"model": group, "variant": key[1], "graphs_per_s": [], "peak_mib": [], "step_ms": []})
            for metric in ("graphs_per_s", "peak_mib", "step_ms"):
                row[metric].append(v[metric])
    return [{**row, **{m: _pool(row[m]) for m in ("graphs_per_s", "peak_mib", "step_ms")}} for row in rows.values()]


def _pool(summaries: list[dict]) -> dict:
    return {"median": statistics.median(s["median"] for s in summaries), "min": min(s["min"] for s in summaries),
            "max": max(s["max"] for s in summaries)}


def train_windows(data, model: str) -> int:
    """Graphs in one training epoch: every train window (GAT), attack-free ones only (VGAE)."""
    y = data.splits["train"].y.numpy()
    return int(len(y) if model == "gat" else (y == 0).sum())


def speedup_rows(results: Sequence[Mapping], data) -> list[dict]:
    """The guide's speed-up table, measured: epoch time from graphs/s x this dataset's epoch size."""
    rows = []
    for r in results:
        n = train_windows(data, r["model"])
        pl, fb = r["plain"], r["fabric"]
        rows.append({"model": f"{r['model'].upper()} {r['type'].capitalize()}", "precision": fb["precision"],
                     "plain_epoch_s": n / pl["graphs_per_s"]["median"], "fabric_epoch_s": n / fb["graphs_per_s"]["median"],
                     "speedup": r["speedup"], "plain_peak_mib": pl["peak_mib"]["median"],
                     "fabric_peak_mib": fb["peak_mib"]["median"], "memory_ratio": r["memory_ratio"]})
    return rows


# ----------------------------------------------------------------------------- preprocessing and inference
def sample_file(dataset: str = "synthetic", data_root: str | None = None) -> Path:
    """The largest training recording of a dataset (what the preprocessing benchmark reads): of its
    can-train-and-test CSVs when it has some (the layout the pandas baseline reads), else of all."""
    train = discover(dataset, data_root).train
    return max([p for p in train if ctt_layout(p)] or train, key=lambda p: p.stat().st_size)


def bench_preprocess(path: str | Path, repeats: int = 3, baseline_limit: int = 20000) -> dict:
    """Vectorized preprocessing vs the predecessor's pandas loop on the same messages: the file's
    first ``baseline_limit`` (the pandas loop is too slow for whole files), ``repeats`` runs each,
    interleaved run after run after one untimed first round of both (its seconds are
    ``first_run_wall_s``) (:func:`kdkit.bench.preprocess.pandas_baseline`), on one core.
    ``speedup`` is the wall-clock ratio and ``speedup_cpu`` the CPU-seconds one (on a shared
    machine the wall clock also counts waiting for the core). kdkit's own throughput on the whole
    file is ``kdkit bench preprocess --file``: fixed costs weigh more on a few thousand messages."""

    if not ctt_layout(path):  # (the pandas loop read it as one and stopped on KeyError 'arbitration_id')
        return _kdkit_only(path, repeats)
    base = bench.pandas_baseline(path, limit=baseline_limit, repeats=repeats)
    n, v = base["messages"], base["variants"]

    def rates(variant: str, key: str) -> list[float]:
        return [n / max(t, 1e-12) for t in v[variant][key]]

    def median_ratio(key: str) -> float:
        return statistics.median(v["predecessor"][key]) / max(statistics.median(v["kdkit"][key]), 1e-12)

    return {"file": str(path), "messages": n, "baseline_messages": n,
            "compared_on": f"the file's first {n:,} messages, both variants, interleaved, {repeats} runs each "
                           "after an untimed first round, one core",
            "rows": [{"stage": "preprocess", "variant": "kdkit (vectorized)", "messages_per_s": rates("kdkit", "wall_s_all"),
                      "messages_per_cpu_s": rates("kdkit", "cpu_s_all")},
                     {"stage": "preprocess", "variant": "pandas loop (baseline)",
                      "messages_per_s": rates("predecessor", "wall_s_all"),
                      "messages_per_cpu_s": rates("predecessor", "cpu_s_all")}],
            "speedup": median_ratio("wall_s_all"), "speedup_cpu": median_ratio("cpu_s_all"),
            "seconds": {name: {"wall_s": v[key]["wall_s"], "cpu_s": v[key]["cpu_s"]}
                        for name, key in (("kdkit", "kdkit"), ("pandas loop", "predecessor"))},
            "first_run_wall_s": {"kdkit": base["first_run_wall_s"]["kdkit"],
                                 "pandas loop": base["first_run_wall_s"]["predecessor"]},
            "stage_seconds_median": base["kdkit_stage_seconds_median"], "peak_rss_mib": base["peak_rss_mib"]}


def _kdkit_only(path: Path, repeats: int) -> dict:
    """:func:`bench_preprocess` of a recording the pandas baseline cannot read (a logger file, a
    spec's layout): kdkit's own throughput on the whole file, warm runs after a burn-in, no ratio."""
    r = bench.preprocess_file(path, repeats=repeats, cold=False)
    n = r["messages"]
    return {"file": str(path), "messages": n, "baseline_messages": 0, "speedup": None, "speedup_cpu": None,
            "compared_on": f"kdkit alone on the whole file ({n:,} messages, {repeats} runs after a burn-in, one core): "
                           "the pandas baseline reads can-train-and-test CSVs only",
            "rows": [{"stage": "preprocess", "variant": "kdkit (vectorized)",
                      "messages_per_s": [n / t for t in r["seconds_all"]],
                      "messages_per_cpu_s": [r["messages_per_cpu_s"]]}],
            "stage_seconds_median": r["stage_seconds_median"], "peak_rss_mib": r["peak_rss_mib"]}


def preprocess_headline(result: Mapping) -> str:
    """One line of a :func:`bench_preprocess` result: the ratio both ways, faster or slower, and the
    untimed first round's seconds (kdkit's throughput alone where there is no baseline)."""
    if result["speedup"] is None:
        rates = result["rows"][0]["messages_per_s"]
        return f"{result['file']}: {result['compared_on']}; {statistics.median(rates):,.0f} messages/s (median)"
    x, first = result["speedup"], result["first_run_wall_s"]
    return (f"{result['file']}, {result['compared_on']}: kdkit {x:.1f}x {'faster' if x >= 1 else 'slower'} than the "
            f"pandas loop (wall; {result['speedup_cpu']:.1f}x in CPU seconds); the first round took "
            f"{first['kdkit']:.3f} s and {first['pandas loop']:.3f} s")


def infer_rows(result: Mapping) -> list[dict]:
    """Rows of a ``bench_infer`` result: one per variant (fp32/bf16, eager/compiled); a min/median/max
    spread as one ``min-median-max`` cell."""
    def cell(v):
        if isinstance(v, Mapping) and {"min", "max"} <= set(v):
            parts = [v["min"], v.get("median"), v["max"]]
            return "-".join(f"{x:,.0f}" if isinstance(x, (int, float)) and abs(x) >= 100 else f"{x:.4g}"
                            for x in parts if x is not None)
        return v

    return [{"variant": name, **{k: cell(x) for k, x in v.items()}} for name, v in result["variants"].items()]
