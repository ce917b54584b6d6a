"""The headline table of a report: teacher, KD student, student alone (and any other model of the
record, e.g. a fused one) side by side, with the KD gain.

    from kdkit.reporting.headline import headline, headline_html
    h = headline([json.load(open("runs/x_student/metrics.json"))])   # several records: mean +- std
    html = headline_html(h)
    text = headline_text(h)                                           # the same table as plain text

Rows: F1, MCC and detection at 1 % false-positive rate per test scenario and overall, then
parameters, bytes and p99 single-window latency. Columns: one per model, then the KD gain
(KD student minus student alone, per record, so seeds are paired). Several records (runs that
differ only by seed) give mean +- sample std over them; a value a record lacks is skipped, and a
cell with none is ``-``.
"""
from __future__ import annotations

import html
import math
import statistics
from typing import Mapping, Sequence

from kdkit.reporting.records import model_entries, model_label

QUALITY = (("f1", "F1"), ("mcc", "MCC"), ("detection_at_1pct_fpr", "detection at 1 % FPR"))
COST = (("parameters", "parameters"), ("size_bytes", "bytes"), ("latency_ms_p99", "p99 latency (ms / window)"))
GAIN = "KD gain"


def scenario_value(entry: Mapping, scenario: str, metric: str) -> float | None:
    """One model's ``metric`` on ``scenario`` (or ``overall``); older records hold only F1 per scenario."""
    if scenario == "overall":
        return (entry.get("overall") or {}).get(metric)
    per = (entry.get("scenarios") or {}).get(scenario)
    if per is None:
        return (entry.get("f1") or {}).get(scenario) if metric == "f1" else None
    return per.get(metric)


def cost_value(record: Mapping, key: str, metric: str) -> float | None:
    """Parameters and bytes from the model's entry; p99 latency from the record's ``comparison`` table."""
    if metric != "latency_ms_p99":
        return model_entries(record)[key].get(metric)
    rows = ((record.get("tables") or {}).get("comparison") or {}).get("rows") or []
    row = next((r for r in rows if r.get("name") == model_label(key)), None)
    return None if row is None else row.get(metric)


def scenarios_of(records: Sequence[Mapping]) -> list[str]:
    """The test scenarios of the records' models, in recorded order."""
    return list(dict.fromkeys(sc for r in records for e in model_entries(r).values()
                              for sc in (e.get("scenarios") or e.get("f1") or {})))


def distinct_runs(records: Sequence[Mapping], key: str) -> list[Mapping]:
    """The records holding model ``key``, one per model run: a teacher checkpoint given to every seed
    (``--teacher-checkpoint``, ``--teacher-notebook``) is one run; pooled n times it showed a "± 0.000"
    spread it does not have. Entries without a recorded checkpoint count each."""
    seen, out = set(), []
    for r in records:
        if key not in model_entries(r):
            continue
        where = model_entries(r)[key].get("checkpoint")
        if where is not None:
            if where in seen:
                continue
            seen.add(where)
        out.append(r)
    return out


def headline(records: Sequence[Mapping]) -> dict:
    """Values of the headline table of one record, or of several (seeds) pooled.

    Returns:
        ``{"models": [record keys], "labels": [column labels], "records": n, "rows": [{"metric",
        "label", "scenario", "values": {key: [per-record values]}, "gain": [per-record KD gain]
        or None}]}``. ``gain`` is None for cost rows and without both a KD student and a student
        alone.
    """
    if not records:
        raise ValueError("headline: no records")
    keys = list(dict.fromkeys(k for r in records for k in model_entries(r)))
    if not keys:
        raise ValueError("headline: the records hold no model entry (teacher, student_kd, student_alone, ...)")
    has_gain = "student_kd" in keys and "student_alone" in keys
    rows = []

    runs = {k: distinct_runs(records, k) for k in keys}

    def collect(metric: str, label: str, scenario: str, get, gain: bool) -> None:
        values = {k: [v for r in runs[k] if (v := get(r, k)) is not None] for k in keys}
        diffs = None
        if gain and has_gain:
            diffs = [a - b for r in records if {"student_kd", "student_alone"} <= set(model_entries(r))
                     and (a := get(r, "student_kd")) is not None and (b := get(r, "student_alone")) is not None]
        rows.append({"metric": metric, "label": label, "scenario": scenario, "values": values, "gain": diffs})

    for metric, label in QUALITY:
        for sc in [*scenarios_of(records), "overall"]:
            collect(metric, label, sc, lambda r, k, m=metric, s=sc: scenario_value(model_entries(r)[k], s, m), True)
    for metric, label in COST:
        collect(metric, label, "", lambda r, k, m=metric: cost_value(r, k, m), False)
    # a column some records lack (a seed whose teacher or student-alone run is missing): its mean is over
    # fewer runs than the table's header says, so the column says over how many (a review, 2026-12-07)
    n = len(records)
    present = {k: sum(1 for r in records if k in model_entries(r)) for k in keys}
    pairs = sum(1 for r in records if {"student_kd", "student_alone"} <= set(model_entries(r)))
    labels = [model_label(k) + (f" ({present[k]} of {n} runs)" if present[k] < n else "") for k in keys]
    return {"models": keys, "labels": labels, "records": n, "rows": rows,
            "gain_label": GAIN + (f" ({pairs} of {n} pairs)" if has_gain and pairs < n else "")}


def mean_std(values: Sequence[float]) -> tuple[float, float | None, int]:
    """``(mean, sample std or None for one value, n)``; NaN mean without values."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return math.nan, None, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None), len(vals)


def fmt(values: Sequence[float], metric: str = "f1", signed: bool = False) -> str:
    """``0.912`` or ``0.912 ± 0.013`` (several values); integers with thousands separators; ``-`` without values."""
    mean, std, n = mean_std(values)
    if not n:
        return "-"
    if metric in ("parameters", "size_bytes"):
        text = f"{mean:,.0f}"
        return text if not std else f"{text} ± {std:,.0f}"  # one model size over seeds: no "± 0"
    digits = 2 if metric == "latency_ms_p99" else 3
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return text if std is None else f"{text} ± {std:.{digits}f}"


def _scenario_name(name: str) -> str:
    return name.replace("_", " ")


def headline_html(h: Mapping, table_id: str = "headline") -> str:
    """The headline table as HTML (``<table id=headline>``): metric and scenario, a column per model, the KD gain.

    A positive KD gain is green, a negative one red.
    """
    gain = any(r["gain"] is not None for r in h["rows"])
    columns = ["metric", "scenario", *h["labels"], *([h.get("gain_label", GAIN)] if gain else [])]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body, last = [], None
    for r in h["rows"]:
        first = r["label"] if r["label"] != last else ""
        last = r["label"]
        cls = " class='group'" if first else ""
        cells = [f"<th scope='row'>{html.escape(first)}</th>", f"<td>{html.escape(_scenario_name(r['scenario']))}</td>"]
        cells += [f"<td>{html.escape(fmt(r['values'][k], r['metric']))}</td>" for k in h["models"]]
        if gain:
            text = "" if r["gain"] is None else fmt(r["gain"], r["metric"], signed=True)
            mean = mean_std(r["gain"] or [])[0]
            tone = "" if not r["gain"] or math.isnan(mean) or abs(mean) < 5e-4 else ("up" if mean > 0 else "down")
            cells.append(f"<td class='gain {tone}'>{html.escape(text)}</td>")
        body.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    return (f"<table class='kdkit headline' id='{html.escape(table_id)}'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def headline_text(h: Mapping) -> str:
    """The headline table as aligned plain text (``kdkit report`` without ``--html``)."""
    gain = any(r["gain"] is not None for r in h["rows"])
    columns = ["metric", "scenario", *h["labels"], *([h.get("gain_label", GAIN)] if gain else [])]
    rows, last = [], None
    for r in h["rows"]:
        first = r["label"] if r["label"] != last else ""
        last = r["label"]
        cells = [first, _scenario_name(r["scenario"]), *(fmt(r["values"][k], r["metric"]) for k in h["models"])]
        if gain:
            cells.append("" if r["gain"] is None else fmt(r["gain"], r["metric"], signed=True))
        rows.append(cells)
    widths = [max(len(str(row[i])) for row in [columns, *rows]) for i in range(len(columns))]

    def line(cells) -> str:
        return "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(columns), *(line(r) for r in rows)])
