"""The HTML report of a sweep: which grid point works best, at what cost, over seeds.

    kdkit report runs/sweeps/kd_grid --html        # a folder holding results.json
    from kdkit.reporting.sweep import build_sweep_report
    build_sweep_report("runs/sweeps/kd_grid")       # -> runs/sweeps/kd_grid/report.html

``results.json`` (written by ``kdkit sweep``)::

    {"sweep": name, "notebook": path, "grid": {param: [values]}, "seeds": [..], "rows": [
       {"task": int, "state": "COMPLETED|FAILED|PENDING|...", "seed": int|null, "params": {param: value},
        "run_dir": path, "job_id": str|null, "error": str|null, "metrics": {the task's metrics.json or {}}}]}

The page opens with one headline table, a row per grid point (runs that differ only by seed
pooled as mean ± std), best KD student first; then the best grid point per test scenario,
the tasks that did not finish, a heat map over the two grid parameters with the most values,
F1 against parameters and latency (Pareto), and the training curves of every run. A failed or
missing task is listed, never fatal.
"""
from __future__ import annotations

import html
import json
import math
import re
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from kdkit.reporting import plots, sweep_plots
from kdkit.reporting.headline import cost_value, distinct_runs, fmt, headline, headline_html, mean_std
from kdkit.reporting.html import fig_png, page_html, png_html
from kdkit.reporting.records import Table, model_entries, model_label

RESULTS_FILE = "results.json"
DONE = "COMPLETED"

FIGURES = {
    "sweep_heatmap": ("KD student F1 and KD gain over the grid",
                      "Mean over seeds (and over any other grid parameter) with the seeds' standard deviation and "
                      "the number of runs in each cell. A gain whose ± spread crosses 0 is not yet a result."),
    "sweep_pareto": ("Accuracy against cost", "Overall F1 of every run against its parameters and its measured p99 "
                     "single-window latency. Dashed: the Pareto front; runs below it are beaten on both axes."),
    "sweep_training_curves": ("Training curves of every KD student", "Validation F1 and loss per epoch, one line per "
                              "run: curves still rising at the end want more epochs; a spread between seeds of one "
                              "setting is noise the grid differences must exceed."),
}


class SweepFormatError(ValueError):
    """``results.json`` does not follow the sweep schema; the message names the file and the row."""


def load_results(sweep_dir: str | Path) -> dict:
    """``sweep_dir/results.json``, checked against the schema of the module docstring."""
    path = Path(sweep_dir) / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not a sweep folder (kdkit sweep writes it)")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SweepFormatError(f"{path}: not JSON ({err})") from None
    for key, kind in (("grid", dict), ("rows", list)):
        if not isinstance(results.get(key), kind):
            raise SweepFormatError(f"{path}: '{key}' must be a {kind.__name__}")
    for i, row in enumerate(results["rows"]):
        if not isinstance(row, dict):
            raise SweepFormatError(f"{path}: rows[{i}] is not an object")
        missing = [k for k in ("task", "state", "params") if k not in row]
        if missing:
            raise SweepFormatError(f"{path}: rows[{i}] lacks {', '.join(missing)}")
        if not isinstance(row["params"], dict) or not isinstance(row.get("metrics") or {}, dict):
            raise SweepFormatError(f"{path}: rows[{i}] (task {row['task']}): 'params' and 'metrics' must be objects")
    return results


def finished(row: Mapping) -> bool:
    """A task counts when it completed and left a record with at least one model."""
    return row.get("state") == DONE and bool(model_entries(row.get("metrics") or {}))


def grid_key(row: Mapping) -> tuple:
    """The grid point of a row: its parameters without the seed."""
    return tuple(sorted((k, _hashable(v)) for k, v in row["params"].items() if k != "seed"))


def _hashable(v: Any) -> Any:
    return json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v


def groups(results: Mapping) -> list[tuple[dict, list[Mapping]]]:
    """``[(params without seed, finished rows)]``, one per grid point with a finished task."""
    out: dict[tuple, list[Mapping]] = {}
    for row in results["rows"]:
        if finished(row):
            out.setdefault(grid_key(row), []).append(row)
    return [(dict(k), rows) for k, rows in out.items()]


def shown_params(results: Mapping) -> list[str]:
    """Grid parameters that vary (all of them when none does), in grid order."""
    grid = results["grid"]
    varying = [k for k, v in grid.items() if k != "seed" and isinstance(v, list) and len(v) > 1]
    return varying or [k for k in grid if k != "seed"]


def primary(keys: Sequence[str]) -> str:
    """The model the sweep is about: the KD student, else the first model recorded."""
    return "student_kd" if "student_kd" in keys else keys[0]


def sweep_rows(results: Mapping) -> list[dict]:
    """Rows of the headline table, best primary-model F1 first.

    Each: the shown grid parameters, ``runs``, ``{label} F1`` per model, ``KD gain F1`` (when
    both students are recorded) and the primary model's MCC, detection at 1 % FPR, parameters
    and p99 latency; every value a list over the grid point's runs (seeds).
    """
    rows = []
    params = shown_params(results)
    for point, members in groups(results):
        records = [r["metrics"] for r in members]
        keys = list(dict.fromkeys(k for m in records for k in model_entries(m)))
        main = primary(keys)
        row: dict[str, Any] = {p: point.get(p) for p in params}
        row["runs"] = len(members)
        row["_values"] = values = {}
        for k in keys:
            values[f"{model_label(k)} F1"] = ("f1", [model_entries(m)[k]["overall"].get("f1")
                                                     for m in distinct_runs(records, k)])
        if {"student_kd", "student_alone"} <= set(keys):
            values["KD gain F1"] = ("gain", [_gain(m) for m in records if _gain(m) is not None])
        label = model_label(main)
        for metric, name in (("mcc", "MCC"), ("detection_at_1pct_fpr", "det. at 1 % FPR")):
            values[f"{label} {name}"] = (metric, [model_entries(m)[main]["overall"].get(metric) for m in records
                                                  if main in model_entries(m)])
        values[f"{label} parameters"] = ("parameters", [cost_value(m, main, "parameters") for m in records])
        values[f"{label} p99 ms"] = ("latency_ms_p99", [cost_value(m, main, "latency_ms_p99") for m in records])
        row["_sort"] = mean_std(values[f"{label} F1"][1])[0]
        rows.append(row)
    return sorted(rows, key=lambda r: -r["_sort"] if math.isfinite(r["_sort"]) else math.inf)


def chance_notes(rows: Sequence[Mapping], params: Sequence[str]) -> list[str]:
    """A note per grid point whose ranked model's mean MCC is at or below 0: its F1 ranks it, but it
    separates attacks from normal windows no better than chance (a 1-epoch KD student flagging
    most windows ranked "best" by F1 with MCC -0.08)."""
    notes = []
    for r in rows:
        mcc = next(((name, vals) for name, (metric, vals) in r["_values"].items() if metric == "mcc"), None)
        if mcc is None:
            continue
        mean, _, n = mean_std(mcc[1])
        if n and mean <= 0:
            where = ", ".join(f"{p} = {_param(r[p])}" for p in params) or "the sweep's one setting"
            f1 = mean_std(r["_values"].get(mcc[0].removesuffix(" MCC") + " F1", ("f1", []))[1])[0]
            if f1 == 0:  # (no better than chance, and no F1 either: "flagging most windows" would be wrong)
                notes.append(f"{where}: {mcc[0]} {mean:+.3f} and F1 0: it flags no attack window (a smoke run's "
                             "epochs, or a model that did not learn)")
                continue
            notes.append(f"{where}: {mcc[0]} {mean:+.3f}, no better than chance, though its F1 ranks it; read its "
                         "F1 as the F1 of flagging most windows (a smoke run's epochs, or a model that did not learn)")
    return notes


def _gain(metrics: Mapping) -> float | None:
    e = model_entries(metrics)
    a, b = e["student_kd"]["overall"].get("f1"), e["student_alone"]["overall"].get("f1")
    return None if a is None or b is None else a - b


def sweep_table_html(rows: Sequence[Mapping], params: Sequence[str]) -> str:
    """The headline table (``<table id=headline>``); the KD gain green when positive, red when negative."""
    if not rows:
        return "<p class='warning'>no task finished: no table yet (see the tasks below)</p>"
    cols = list(dict.fromkeys(c for r in rows for c in r["_values"]))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in [*params, "runs", *cols])
    body = []
    for r in rows:
        cells = [f"<td>{html.escape(_param(r[p]))}</td>" for p in params] + [f"<td>{r['runs']}</td>"]
        for c in cols:
            metric, vals = r["_values"].get(c, ("f1", []))
            mean = mean_std(vals)[0]
            tone = "" if metric != "gain" or not vals or abs(mean) < 5e-4 else (" up" if mean > 0 else " down")
            text = fmt(vals, "f1" if metric == "gain" else metric, signed=metric == "gain")
            attr = f" class='gain{tone}'" if metric == "gain" else ""
            cells.append(f"<td{attr}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<table class='kdkit headline sweep' id='headline'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def _param(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def error_line(text: str | None, limit: int = 240) -> str:
    """A task's error for a table cell: its last non-blank line (the exception, after a notebook's
    traceback), without terminal colour codes, at most ``limit`` characters."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;?]*[ -/]*[@-~]", "", text or "").splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    return last if len(last) <= limit else last[:limit - 4].rstrip() + " ..."


def unfinished(results: Mapping) -> list[dict]:
    """The tasks that did not leave a result: state, seed, parameters, job, and the error's last
    line (the whole text is in results.json and the task's task.json; ``kdkit sweep status`` shows
    its end)."""
    out = []
    for row in results["rows"]:
        if finished(row):
            continue
        why = error_line(row.get("error")) or ("completed but no metrics.json was collected"
                                               if row.get("state") == DONE else "")
        out.append({"task": row["task"], "state": row["state"], "seed": row.get("seed"),
                    "params": _params_text(row["params"]), "job": row.get("job_id"), "error": why})
    return out


def _params_text(params: Mapping) -> str:
    return ", ".join(f"{k}={_param(v)}" for k, v in params.items())


def heatmap_axes(results: Mapping) -> tuple[str, list, str, list] | None:
    """The two grid parameters with the most values (x has at least as many); one: a one-row map; none: None."""
    ranked = sorted(((k, v) for k, v in results["grid"].items() if k != "seed" and isinstance(v, list) and len(v) > 1),
                    key=lambda kv: -len(kv[1]))
    if not ranked:
        return None
    (x, xs), *rest = ranked
    return (x, list(xs), rest[0][0], list(rest[0][1])) if rest else (x, list(xs), "", [None])


def heatmap_cells(results: Mapping, x: str, y: str) -> dict[tuple, dict[str, list[float]]]:
    """``{(x value, y value): {"kd_f1": [...], "kd_gain": [...]}}`` over the finished tasks."""
    cells: dict[tuple, dict[str, list[float]]] = {}
    for row in results["rows"]:
        if not finished(row):
            continue
        entries = model_entries(row["metrics"])
        at = (row["params"].get(x), row["params"].get(y) if y else None)
        cell = cells.setdefault(at, {"kd_f1": [], "kd_gain": []})
        f1 = entries[primary(list(entries))]["overall"].get("f1")
        if f1 is not None:
            cell["kd_f1"].append(f1)
        if {"student_kd", "student_alone"} <= set(entries) and (g := _gain(row["metrics"])) is not None:
            cell["kd_gain"].append(g)
    return cells


def pareto_points(results: Mapping) -> list[dict]:
    """One point per finished task and model: overall F1, parameters, p99 latency."""
    points = []
    for row in results["rows"]:
        if finished(row):
            m = row["metrics"]
            for key, e in model_entries(m).items():
                points.append({"model": model_label(key), "f1": e["overall"].get("f1"), "task": row["task"],
                               "parameters": e.get("parameters"),
                               "latency_ms_p99": cost_value(m, key, "latency_ms_p99")})
    return points


def resolve_run_dir(row: Mapping, sweep_dir: Path) -> Path | None:
    """A row's ``run_dir`` as given (absolute or relative to the working directory), else under the sweep folder."""
    if not row.get("run_dir"):
        return None
    for path in (Path(row["run_dir"]), sweep_dir / row["run_dir"]):
        if path.is_dir():
            return path
    return None


def run_history(row: Mapping, sweep_dir: Path) -> list[dict]:
    """The primary model's training curve: from the record, else the sub-run's ``summary.json`` under run_dir."""
    entries = model_entries(row.get("metrics") or {})
    if not entries:
        return []
    key = primary(list(entries))
    if entries[key].get("history"):
        return list(entries[key]["history"])
    run_dir = resolve_run_dir(row, sweep_dir)
    suffix = key.removeprefix("student_")
    for summary in sorted(run_dir.glob(f"*_{suffix}/summary.json")) if run_dir else []:
        return list(json.loads(summary.read_text()).get("history") or [])
    return []


def build_sweep_report(sweep_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the sweep's HTML report (``sweep_dir/report.html`` unless ``out``) and return its path."""
    sweep_dir = Path(sweep_dir)
    results = load_results(sweep_dir)
    params = shown_params(results)
    rows = sweep_rows(results)
    states: dict[str, int] = {}
    for r in results["rows"]:
        states[r["state"]] = states.get(r["state"], 0) + 1
    name = results.get("sweep") or sweep_dir.name
    grid = ", ".join(f"{k} {len(v) if isinstance(v, list) else 1}" for k, v in results["grid"].items())
    seeds = results.get("seeds") or []
    parts = ["<h2 id='headline-title'>Which setting works best</h2>",
             f"<p class='caption'>One row per grid point, best {html.escape(_primary_label(rows))} first; with "
             f"several seeds each value is mean ± standard deviation over them (runs: how many finished). KD gain: KD "
             f"student minus the same student trained alone, paired by seed.</p>",
             sweep_table_html(rows, params)]
    parts += [f"<p class='warning chance'>{html.escape(n)}</p>" for n in chance_notes(rows, params)]
    if rows:
        best = rows[0]
        members = next(ms for point, ms in groups(results) if all(point.get(p) == best[p] for p in params))
        where = _params_text({p: best[p] for p in params})
        parts.append(f"<h3>Best setting per test scenario: {html.escape(where)}</h3>")
        parts.append(headline_html(headline([m["metrics"] for m in members]), table_id="headline-best"))
    lost = unfinished(results)
    if lost:
        parts.append(f"<h2>Tasks without a result ({len(lost)})</h2>")
        parts.append(Table(lost, ["task", "state", "seed", "params", "job", "error"])._repr_html_()
                     .replace("<table class=\"kdkit\">", "<table class=\"kdkit\" id=\"unfinished\">"))
    target = Path(out) if out else sweep_dir / "report.html"
    figures = _figures(results, sweep_dir)
    saved = save_figures(figures, target.parent / "figures")
    parts.append("<h2>Figures</h2>")
    if saved:
        parts.append(f"<p class='caption'>Also saved for a paper as PNG (150 dpi) and PDF (vector): "
                     f"{html.escape(', '.join(str(p.relative_to(target.parent)) for p in saved))}.</p>")
    parts += [png_html(fig_png(fig), key, FIGURES[key][1], FIGURES[key][0]) for key, fig in figures.items()]
    parts.append(_raw_tasks(results))
    subtitle = (f"notebook {html.escape(str(results.get('notebook', '?')))}; grid {html.escape(grid)}; "
                f"{len(seeds)} seed(s); tasks: " + ", ".join(f"{n} {html.escape(s)}" for s, n in sorted(states.items()))
                + f"; generated {time.strftime('%Y-%m-%d %H:%M')} by <code>kdkit report</code>")
    target.write_text(page_html(f"kdkit sweep report: {name}", subtitle, "\n".join(parts)), encoding="utf-8")
    return target


def save_figures(figures: Mapping[str, Any], folder: Path) -> list[Path]:
    """Each figure as ``folder/<name>.png`` (150 dpi) and ``.pdf`` (vector, for a paper); the paths."""
    saved: list[Path] = []
    for key, fig in figures.items():
        folder.mkdir(parents=True, exist_ok=True)
        for ext, kw in ((".png", {"dpi": 150}), (".pdf", {})):
            path = folder / f"{key}{ext}"
            tmp = path.with_name(f".{path.name}.tmp")
            fig.savefig(tmp, format=ext[1:], bbox_inches="tight", **kw)
            tmp.replace(path)
            saved.append(path)
    return saved


def _primary_label(rows: Sequence[Mapping]) -> str:
    f1_cols = [c for r in rows for c in r["_values"] if c.endswith(" F1") and not c.startswith("KD gain")]
    return next((c for c in f1_cols if c.startswith("student (KD)")), f1_cols[0] if f1_cols else "F1")


def _figures(results: Mapping, sweep_dir: Path) -> dict[str, Any]:
    figs: dict[str, Any] = {}
    axes = heatmap_axes(results)
    if axes and any(finished(r) for r in results["rows"]):
        x, xs, y, ys = axes
        figs["sweep_heatmap"] = sweep_plots.grid_heatmap(heatmap_cells(results, x, y), x, xs, y, ys)
    points = pareto_points(results)
    if points:
        figs["sweep_pareto"] = sweep_plots.pareto(points)
    params = shown_params(results)
    histories, colors = {}, {}
    for row in results["rows"]:
        hist = run_history(row, sweep_dir) if finished(row) else []
        if hist:
            seed = f", seed {row['seed']}" if row.get("seed") is not None else ""
            label = f"task {row['task']}: " + _params_text({p: row["params"].get(p) for p in params}) + seed
            histories[label] = hist
            if axes and row["params"].get(axes[0]) in axes[1]:  # one colour per value of the heat map's x
                colors[label] = f"C{axes[1].index(row['params'][axes[0]]) % 10}"
    if histories:
        groups = {f"{axes[0]} = {_param(v)}": f"C{i % 10}" for i, v in enumerate(axes[1])} if colors else None
        figs["sweep_training_curves"] = plots.training_curves_overlay(histories, colors=colors, groups=groups)
    return figs


def _raw_tasks(results: Mapping) -> str:
    rows = []
    for row in results["rows"]:
        entries = model_entries(row.get("metrics") or {})
        rows.append({"task": row["task"], "state": row["state"], "seed": row.get("seed"),
                     "params": _params_text(row["params"]),
                     **{f"{model_label(k)} F1": e["overall"].get("f1") for k, e in entries.items()},
                     "run_dir": row.get("run_dir")})
    table = Table(rows)._repr_html_()
    return f"<details class='raw'><summary>every task ({len(rows)})</summary>{table}</details>"


def sweep_text(sweep_dir: str | Path) -> str:
    """The headline table and the tasks without a result as plain text (``kdkit report SWEEP_DIR``)."""
    results = load_results(sweep_dir)
    params = shown_params(results)
    rows = []
    for r in sweep_rows(results):
        cells = {c: fmt(v, "f1" if m == "gain" else m, signed=m == "gain") for c, (m, v) in r["_values"].items()}
        rows.append({**{p: _param(r[p]) for p in params}, "runs": r["runs"], **cells})
    blocks = [repr(Table(rows, title=f"sweep {results.get('sweep') or Path(sweep_dir).name}: mean ± sample std over seeds"))]
    blocks += [f"note: {n}" for n in chance_notes(sweep_rows(results), params)]
    lost = unfinished(results)
    if lost:
        blocks.append(repr(Table(lost, ["task", "state", "seed", "params", "job", "error"], "tasks without a result")))
    return "\n\n".join(blocks)
