"""One self-contained HTML report of a run folder (every metrics.json and figure under it) or
of an executed notebook. It opens with the headline table of a notebook record or, without one,
of a ``kdkit train`` run (:mod:`kdkit.reporting.train_run`), and the figures drawn from its scores.

    kdkit report runs/demo --html
"""
from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path
from typing import Any, Mapping

from kdkit.reporting import plots
from kdkit.reporting.headline import headline, headline_html, headline_text
from kdkit.reporting.records import (UNFINISHED, Table, _cell, attack_recall, attack_recall_rows, load_scores,
                                     model_entries, model_label, run_metrics, scenario_rows, smoke_label, unfinished)
from kdkit.reporting.records import headline as headline_line
from kdkit.reporting.train_run import (TrainRun, data_settings, is_train_run, read_json, role_key, run_seed,
                                       same_setting, same_student, train_run_record)

# ----------------------------------------------------------------------------- HTML report
CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;color:#222;line-height:1.4}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;margin-top:2em}h3{font-size:1.05em;margin-bottom:.2em}
table.kdkit{border-collapse:collapse;margin:.6em 0;font-size:.85em;display:block;max-width:100%;overflow-x:auto}
table.kdkit td,table.kdkit th{border:1px solid #ddd;padding:3px 8px;text-align:right}
table.kdkit td:first-child,table.kdkit th:first-child{text-align:left}
table.kdkit caption{text-align:left;font-weight:bold;padding:4px 0}
table.headline{font-size:.9em}table.headline thead th{background:#f3f3f3}
table.headline tr.group{border-top:2px solid #999}
table.headline td:nth-child(2),table.headline th:nth-child(2){text-align:left}
td.gain.up{color:#17692b;font-weight:bold}td.gain.down{color:#a11}
figure{margin:1em 0}figcaption{font-size:.9em;color:#444;max-width:900px}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}.muted{color:#777;font-size:.85em}
.warning{background:#fff3cd;border:1px solid #e0c060;padding:.5em .8em}
details{margin:.8em 0}summary{cursor:pointer;color:#555}"""

# section titles of the notebooks' records
SECTION_TITLES = {"teacher": "Teacher training", "student": "Student: distilled against trained alone",
                  "benchmark": "Benchmark: the plain PyG loop against Fabric, preprocessing, inference",
                  "gateway": "Gateway: streaming detection on a recording"}

# figure file stem -> (title, what to look at)
FIGURES = {
    "training_curves": ("Training curves", "Loss per epoch (train and validation) and validation F1: a validation "
                        "loss that turns up means over-fitting; an F1 still climbing means more epochs would help."),
    "training_curves_kd": ("Training curves of the KD student",
                           "Loss and validation F1 per epoch of the distilled student."),
    "training_curves_overlay": ("Training curves: KD student and student alone",
                                "Validation F1 and loss per epoch of both students: distillation should reach a given "
                                "F1 in fewer epochs or end higher."),
    "roc_pr": ("ROC and precision-recall per scenario", "Curves near the top-left (ROC) and top-right (PR) corners "
               "separate attacks from normal traffic at every threshold."),
    "confusion_matrices": ("Confusion matrices at the threshold", "Counts of windows: top right are false alarms, "
                           "bottom left missed attacks."),
    "f1_per_scenario": ("F1 per test scenario", "The scenarios with attacks (or a car) unseen in training are the "
                        "hard ones: a student close to the teacher there generalises, not just memorises."),
    "size_and_latency": ("Size and inference latency", "What the student buys: parameters, bytes and single-window "
                         "latency against the teacher, measured on this machine."),
    "roc_pr_over_teacher": ("Student ROC and precision-recall over the teacher's", "Dashed grey: teacher; orange: "
                            "KD student; dots: where each model decides (its threshold). A student curve close to the "
                            "teacher's and a dot near the top-left corner is what distillation is for."),
    "score_histograms_kd": ("Scores of the KD student against its threshold",
                            "Normal windows (blue) should sit left of "
                            "the dashed threshold, attacks (red) right of it; overlap is where it errs. Log scale."),
    "score_histograms_teacher": ("Scores of the teacher against its threshold", "As above, for the teacher."),
    "score_histograms": ("Scores against the threshold", "Normal windows (blue) should sit left of the dashed "
                         "threshold, attacks (red) right of it; overlap is where the model errs. Log scale."),
    "attack_recall": ("Recall per attack type", "Share of attack windows detected, per attack type and scenario: "
                      "a type the student misses but the teacher catches is knowledge the distillation lost."),
    "train_graphs_per_s": ("Training throughput: the plain PyG loop against Fabric", "Median graphs per second, bars from "
                           "the fastest to the slowest repeat; higher is better."),
    "train_peak_memory": ("Peak memory of the training steps", "Lower is better."),
    "preprocess": ("Preprocessing throughput", "Messages per second read, windowed and turned into graphs: "
                   "the vectorized path against the pandas loop."),
    "inference": ("Student inference: throughput and latency", "Batched messages per second, and single-window "
                  "latency (bar p50, whisker p99)."),
    "alarm_timeline": ("Alarm timeline", "Window scores over time with the threshold; shaded: labelled attacks."),
    "latency": ("Decision latency", "From a window's last frame to its decision."),
}
TABLE_TITLES = {"per_scenario": "Metrics per test scenario", "f1_per_scenario": "F1 per test scenario",
                "comparison": "Size, F1 and inference speed", "speedup": "The plain PyG loop against Fabric: epoch time",
                "inference": "Inference throughput and latency", "alarms": "First alarms"}


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            if len(v) <= 12 and all(not isinstance(x, (dict, list)) for x in v):
                out[key] = ", ".join(_cell(x) for x in v)
        else:
            out[key] = v
    return out


def find_records(root: str | Path) -> list[Path]:
    """The ``metrics.json`` files under ``root``, in the order they started: every notebook run's,
    and every ``kdkit train`` run's but those inside a notebook run's folder (the runs the notebook
    trained, which its record reports). A notebook run beside ``kdkit train`` runs in one runs
    folder hid all of them."""
    root = Path(root)
    found = [(p, json.loads(p.read_text())) for p in root.rglob("metrics.json")]
    homes = [p.parent for p, m in found if "notebook" in m]
    kept = [(p, m) for p, m in found
            if "notebook" in m or not any(p.parent.is_relative_to(home) for home in homes)]
    return [p for p, m in sorted(kept, key=lambda pm: (pm[1].get("started", ""), str(pm[0])))]


def _train_records(loaded: list[tuple[Path, dict]]) -> list[Path]:
    """The ``kdkit train`` runs' records among ``loaded`` (the others are notebook records)."""
    return [p for p, m in loaded if "notebook" not in m]


def png_html(png: bytes, name: str, caption: str = "", title: str = "") -> str:
    """A ``<figure>``: human title, the PNG embedded as base64, a caption saying what to look at.

    ``name`` is the figure's file stem; its title and caption come from :data:`FIGURES`
    (``caption`` and ``title`` replace the stored ones), an unknown name is its stem in words.
    """
    stored_title, stored = FIGURES.get(name, (name.replace("_", " ").capitalize(), ""))
    title = title or stored_title
    data = base64.b64encode(png).decode()
    cap = caption or stored
    return (f"<figure data-figure='{html.escape(name)}'><h3>{html.escape(title)}</h3>"
            f"<img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>"
            + (f"<figcaption>{html.escape(cap)}</figcaption>" if cap else "") + "</figure>")


def fig_png(fig, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def raw_values_html(metrics: Mapping, title: str = "raw recorded values") -> str:
    """Every scalar of a record as a key/value table, folded away (``<details>``)."""
    flat = _flatten({k: v for k, v in metrics.items() if k not in ("figures", "tables", "history")})
    table = Table([{"key": k, "value": v} for k, v in flat.items()], ["key", "value"])._repr_html_()
    return f"<details class='raw'><summary>{html.escape(title)} ({len(flat)})</summary>{table}</details>"


def _smoke(metrics: Mapping) -> str | None:
    """The smoke label of a benchmark record (recorded, or from its steps and repeats)."""
    if metrics.get("smoke"):
        return str(metrics["smoke"])
    settings = {k: metrics[k] for k in ("steps", "repeats") if isinstance(metrics.get(k), (int, float))}
    return smoke_label(**settings) if metrics.get("notebook") == "benchmark" and settings else None


def _section(root: Path, path: Path, shown: set[str], run: TrainRun | None = None) -> str:
    """One record: human title, its tables, its figures not already shown above, raw values folded.

    ``run``: the record is the ``kdkit train`` run whose headline opens the report (its scores
    draw the ROC/PR curves here when the headline has none).
    """
    metrics = json.loads(path.read_text())
    rel = path.parent.relative_to(root).as_posix()
    where = rel if rel != "." else root.name
    kind = metrics.get("notebook")
    summary = read_json(path.parent / "summary.json") if kind is None else None
    title = f"{SECTION_TITLES.get(kind, kind or 'Training run')} ({where})"
    if summary and summary.get("model") and summary.get("type"):
        title = (f"Training run: {summary['model']} {model_label(role_key(summary))} on {summary.get('dataset')} "
                 f"({where})")
    parts = [f"<h2>{html.escape(title)}</h2>"]
    if unfinished(metrics):
        parts.append(f"<p class='warning unfinished'>{html.escape(UNFINISHED[0].upper() + UNFINISHED[1:])}.</p>")
    if kind in ("teacher", "student") and model_entries(metrics):
        parts.append(f"<p class='muted'>{html.escape(headline_line(metrics))}</p>")
    if kind == "gateway" and metrics.get("counts"):  # what the run found, and a foreign car said up front
        warned = (metrics.get("summary") or {}).get("unknown_vehicle") or metrics.get("in_sample_warning")
        parts.append(f"<p class='{'warning' if warned else 'muted'} gateway'>{html.escape(headline_line(metrics))}</p>")
    smoke = _smoke(metrics)
    if smoke:
        parts.append(f"<p class='warning smoke'>{html.escape(smoke)}: the timings below show that the benchmark "
                     "runs, not how fast anything is. The measurement command is in notebooks/benchmark.ipynb.</p>")
    for name, t in (metrics.get("tables") or {}).items():
        parts.append(Table(t["rows"], t.get("columns"), TABLE_TITLES.get(name, name.replace("_", " ")))._repr_html_())
    if summary and (summary.get("test") or {}).get("scenarios"):  # a `kdkit train` run: its summary's tables
        parts.append(Table(scenario_rows(summary["test"]), title=TABLE_TITLES["per_scenario"])._repr_html_())
        parts += _evaluation_tables(path.parent)
    # the record's own figures; the folder's PNGs only for an older record without the list: a re-run that
    # failed before its first figure ("figures": []) showed the previous run's PNGs under its values
    names = metrics["figures"] if "figures" in metrics else sorted(p.name for p in path.parent.glob("*.png"))
    pngs = {f: (path.parent / f).read_bytes() for f in names
            if (path.parent / f).is_file() and (kind != "student" or Path(f).stem not in shown)}
    if not pngs and summary:  # a `kdkit train` run: draw from its summary
        scores = run.scores if run is not None and "roc_pr_over_teacher" not in shown else {}
        pngs = _summary_figures(summary, scores.get("label"), scores.get(run.main) if scores else None)
    parts += [png_html(png, Path(fig).stem) for fig, png in pngs.items()]
    for nb in sorted(path.parent.glob("*.ipynb")):
        parts.append(f"<p class='muted'>executed notebook {html.escape(nb.name)}: as HTML with "
                     f"<code>kdkit report {html.escape(str(nb))} --html</code></p>")
    parts.append(raw_values_html(metrics))
    return "\n".join(parts)


def _evaluation_tables(folder: Path) -> list[str]:
    """The metrics per scenario of each ``evaluation_<dataset>.json`` (``kdkit evaluate``) in a run folder,
    and one row per recording of each ``evaluation_inputs_*.json`` (``kdkit evaluate --input``)."""
    out = []
    for path in sorted(folder.glob("evaluation_*.json")):
        ev = read_json(path)
        if ev and ev.get("files"):  # --input: alarm rate and score spread per recording, metrics where labelled
            # in-sample: a training or calibration recording of the model, its metrics no test (evaluate warned)
            rows = [{"recording": Path(e["file"]).name + (" (in-sample)" if e.get("in_sample") else ""),
                     "windows": e["windows"], "alarm_rate": e["alarm_rate"],
                     "unknown_id_share": e.get("oov_node_share"), **{k: (e.get("metrics") or {}).get(k)
                                                                     for k in ("f1", "recall", "false_positive_rate")}}
                    for e in ev["files"]]
            model = Path(ev["checkpoint"]).name if ev.get("checkpoint") else "?"
            out.append(Table(rows, title=f"kdkit evaluate --input of {model}, threshold "
                                         f"{ev.get('threshold', float('nan')):.6g} ({path.name})")._repr_html_())
            out += [f"<p class='warning'>{html.escape(w)}</p>" for w in ev.get("warnings") or []
                    if "in-sample" in w or "the budget that was fitted" in w]
            continue
        if not ev or not ev.get("scenarios"):
            continue
        # the model and threshold it was scored with: a calibrated copy's or last.pt's table in a run's section
        # read as the run's own
        model = Path(ev["checkpoint"]).name if ev.get("checkpoint") else "?"
        threshold = ev.get("threshold")
        title = (f"kdkit evaluate of {model}" + (f" at threshold {threshold:.6g}" if isinstance(threshold, (int, float))
                                                  else "")
                 + f" on {ev.get('dataset', path.stem.removeprefix('evaluation_'))} ({path.name})")
        out.append(Table(scenario_rows({"scenarios": ev["scenarios"], "overall": ev.get("overall") or {}}),
                         title=title)._repr_html_())
    return out


def _summary_figures(summary: Mapping, labels: Mapping | None = None, scores: Mapping | None = None) -> dict[str, bytes]:
    """Training curves, ROC/PR curves (with ``labels`` and ``scores`` per scenario) and confusion
    matrices of a ``pipeline.train`` summary, as PNG bytes."""

    figs = {}
    if summary.get("history"):
        figs["training_curves.png"] = plots.training_curves(summary["history"])
    if labels and scores:
        figs["roc_pr.png"] = plots.roc_pr_curves(labels, scores)
    if summary.get("test", {}).get("scenarios"):
        figs["confusion_matrices.png"] = plots.confusion_matrices(summary["test"])
    return {name: fig_png(fig, 110) for name, fig in figs.items()}


HEADLINE_CAPTION = ("F1, MCC and detection rate at 1 % false-positive rate on each test scenario, then size and "
                    "p99 single-window latency (where measured: one short run on this machine, which can differ by "
                    "2x between two models of one size on a busy host; kdkit bench infer interleaves repeats). The "
                    "scenarios with an attack unseen in training are the test of generalisation.")
KD_GAIN_CAPTION = " KD gain: KD student minus the same student trained alone (green: distillation helped)."
NO_SCORES = ("no scores.npz beside this record (recorded by an older notebook): no score histograms or ROC/PR "
             "curves.")
# how the headline's title names each model
LEAD_NAMES = {"teacher": "teacher", "student_kd": "KD student", "student_alone": "student alone"}


def headline_title(keys: list[str]) -> str:
    """``The teacher`` (one model), ``Teacher and KD student``, ``Teacher, KD student and student alone``."""
    if len(keys) == 1:
        return f"The {model_label(keys[0])}"
    names = [LEAD_NAMES.get(k, model_label(k)) for k in keys]
    text = ", ".join(names[:-1]) + " and " + names[-1]
    return text[0].upper() + text[1:]


def headline_section(record: Mapping, run_dir: Path, scores: Mapping | None = None, notes: list[str] | None = None,
                     subject: str = "", main: str | None = None, overlay: bool = True,
                     ident: str = "", also: list[str] | None = None) -> tuple[str, set[str]]:
    """The report's opening: the headline table of a student (or teacher) record and the figures
    drawn from it and its scores; returns the HTML and the figure names it drew.

    Args:
        record: a notebook's metrics.json, or a ``kdkit train`` run's
            (:func:`~kdkit.reporting.train_run.train_run_record`).
        run_dir: where ``scores.npz`` is read when ``scores`` is None.
        scores: ``{model key or "label": {scenario: array}}``; without labels, no score figures.
        notes: what is left out, said under the table (default: no scores.npz beside the record).
        subject: added to the title, e.g. ``(gat on synthetic)``.
        main: the model whose scores are drawn (default the KD student, else the first model).
        overlay: draw the validation curves of the students overlaid.
        ident: added to the element ids (a report with a headline per model family: ``-2``, ...).
        also: notes said after ``notes`` (or the default one), e.g. the other runs the table leaves out.
    """
    h = headline([record])
    figs: dict[str, Any] = {}
    titles: dict[str, str] = {}
    entries = model_entries(record)
    scores = load_scores(run_dir) if scores is None else scores
    main = main or ("student_kd" if "student_kd" in entries else next(iter(entries)))
    threshold = entries[main].get("threshold", 0.5)
    if "label" in scores and main in scores:
        if main != "teacher" and "teacher" in scores:  # a teacher record's own ROC/PR figure is shown with it below
            figs["roc_pr_over_teacher"] = plots.roc_pr_over_teacher(
                scores["label"], scores[main], scores.get("teacher"), threshold,
                entries.get("teacher", {}).get("threshold"), model_label(main))
        hist = {"teacher": "score_histograms_teacher", "student_kd": "score_histograms_kd"}.get(main, "score_histograms")
        figs[hist] = plots.score_histograms(scores["label"], scores[main], threshold, model_label(main))
        if hist == "score_histograms":
            titles[hist] = f"Scores of the {model_label(main)} against its threshold"
    recall = attack_recall(record)
    if recall:
        figs["attack_recall"] = plots.attack_recall(recall)
    histories = {model_label(k): e["history"] for k, e in entries.items() if e.get("history") and k != "teacher"}
    if histories and overlay:
        figs["training_curves_overlay"] = plots.training_curves_overlay(histories)
    lead = headline_title(list(entries)) + (f" ({subject})" if subject else "")
    gain = any(r["gain"] is not None for r in h["rows"])
    parts = [f"<h2 id='headline-title{ident}'>{html.escape(lead)}</h2>",
             f"<p class='caption'>{html.escape(HEADLINE_CAPTION + (KD_GAIN_CAPTION if gain else ''))}</p>",
             headline_html(h, table_id=f"headline{ident}")]
    if notes is None and "label" not in scores:
        notes = [NO_SCORES]
    if unfinished(record):  # a headline of a run that stopped midway says so above its numbers
        parts.insert(1, f"<p class='warning unfinished'>{html.escape(UNFINISHED[0].upper() + UNFINISHED[1:])}.</p>")
    parts += [f"<p class='muted note'>{html.escape(n)}</p>" for n in [*(notes or []), *(also or [])]]
    for name, fig in figs.items():
        parts.append(png_html(fig_png(fig), name, title=titles.get(name, "")))
        if name == "attack_recall":
            parts.append(f"<div id='attack-recall{ident}'>{attack_recall_rows(recall)._repr_html_()}</div>")
    return "\n".join(parts), set(figs) | {"training_curves_kd"}


def page_html(title: str, subtitle: str, body: str) -> str:
    """A self-contained page: the CSS inline, no external resource."""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p class='muted'>{subtitle}</p>{body}</body></html>")


# which `kdkit train` run of a folder opens its report: a KD student, else a student alone, else a teacher
LEAD_ORDER = ("student_kd", "student_alone", "teacher")


def lead_train_run(records: list[Path]) -> Path | None:
    """The folder of the ``kdkit train`` run among ``records`` whose headline opens the report (the
    last in path order of the first role of :data:`LEAD_ORDER` found); None without one."""
    runs = [p.parent for p in records if is_train_run(p.parent)]
    roles = {d: role_key(read_json(d / "summary.json")) for d in runs}
    return next((d for role in LEAD_ORDER for d in reversed(runs) if roles[d] == role), None)


def notebook_lead(loaded: list[tuple[Path, dict]]) -> tuple[Path, dict] | None:
    """The notebook record a report opens with: the newest student record with models, else teacher;
    a finished run before one that stopped midway (which keeps its own section, flagged)."""
    for kind in ("student", "teacher"):
        found = [pm for pm in loaded if pm[1].get("notebook") == kind and model_entries(pm[1])]
        if found:
            return ([pm for pm in found if not unfinished(pm[1])] or found)[-1]
    return None


def record_family(metrics: Mapping) -> str | None:
    """The model family of a teacher or student notebook record (``gat``, ``vgae``, ``fusion``)."""
    return metrics.get("model") or (metrics.get("notebook_parameters") or {}).get("model")


def _model_records(loaded: list[tuple[Path, dict]]) -> list[tuple[Path, dict]]:
    return [pm for pm in loaded if pm[1].get("notebook") in ("student", "teacher") and model_entries(pm[1])]


def notebook_leads(loaded: list[tuple[Path, dict]]) -> list[tuple[Path, dict]]:
    """One lead record per model family among the notebook records (a runs folder of GAT and VGAE
    student notebooks gets a headline for each, as ``kdkit train`` folders do with
    :func:`lead_train_runs`): :func:`notebook_lead`'s first, then each other family's."""
    first = notebook_lead(loaded)
    if first is None:
        return []
    records = _model_records(loaded)
    leads = [first]
    for family in list(dict.fromkeys([record_family(first[1]), *(record_family(m) for _, m in records)]))[1:]:
        lead = notebook_lead([pm for pm in records if record_family(pm[1]) == family])
        if lead is not None:
            leads.append(lead)
    return leads


def notebook_others_note(lead: tuple[Path, dict], loaded: list[tuple[Path, dict]]) -> str | None:
    """A note naming the other notebook records of the lead's family and notebook (a folder of three
    GAT student runs shows one in its table); None when there are none."""
    kind, family = lead[1].get("notebook"), record_family(lead[1])
    others = [p.parent.name for p, m in _model_records(loaded)
              if p != lead[0] and m.get("notebook") == kind and record_family(m) == family]
    if not others:
        return None
    return (f"{len(others)} other {family} {kind} notebook run(s) in this folder, not in this table: "
            f"{', '.join(sorted(others))} (their own sections below; kdkit report RUN_FOLDER for each one's table)")


def _lead_subject(lead: tuple[Path, dict], leads: list) -> str:
    """``gat on synthetic`` in a headline's title when a report has a headline per family; "" for one."""
    return run_subject({"model": record_family(lead[1]), "dataset": lead[1].get("dataset")}) if len(leads) > 1 else ""


def run_subject(record: Mapping) -> str:
    """``gat on hcrl_sa``: a train run record's model and dataset, for a headline's title."""
    return " on ".join(str(v) for v in (record.get("model"), record.get("dataset")) if v)


def lead_train_runs(records: list[Path]) -> list[Path]:
    """One lead run per model family among ``records`` (a runs folder of GAT and fusion runs gets a
    headline for each): :func:`lead_train_run`'s first, then each other family's, by :data:`LEAD_ORDER`."""
    first = lead_train_run(records)
    if first is None:
        return []
    runs = [p.parent for p in records if is_train_run(p.parent)]
    summaries = {d: read_json(d / "summary.json") or {} for d in runs}
    families = list(dict.fromkeys([summaries[first].get("model"), *(summaries[d].get("model") for d in runs)]))
    leads = [first]
    for family in families[1:]:
        mine = [d for d in runs if summaries[d].get("model") == family]
        lead = next((d for role in LEAD_ORDER for d in reversed(mine) if role_key(summaries[d]) == role), None)
        if lead is not None:
            leads.append(lead)
    return leads


def others_note(lead: Path, records: list[Path]) -> str | None:
    """A note naming the other runs of the lead's family and role in the folder, which its headline
    leaves out (a folder of three KD students shows one); None when there are none."""
    summary = read_json(lead / "summary.json") or {}
    family, role = summary.get("model"), role_key(summary)
    found = [p.parent for p in records if is_train_run(p.parent) and p.parent != lead
             and (s := read_json(p.parent / "summary.json")) is not None and s.get("model") == family
             and role_key(s) == role]
    if not found:
        return None
    others = [f.name for f in found]
    if len(set(others)) < len(others) or lead.name in others:  # one run name in several folders: say which
        others = [f"{f.parent.name}/{f.name}" for f in found]
    return (f"{len(others)} other {family} {LEAD_NAMES.get(role, role)} run(s) in this folder, not in this table: "
            f"{', '.join(sorted(others))} (their own sections below; kdkit report RUN_FOLDER for each one's table)")


def seeds_headline(lead: Path, records: list[Path]) -> tuple[dict, list] | None:
    """The headline over seeds of a runs folder (``benchmarks/quality.py``'s, or ``kdkit train``
    runs of several seeds): every KD student of the lead's architecture and data, each with its own
    seed's teacher and student alone, pooled; ``(headline, seeds)``, None for fewer than two seeds."""
    summary = read_json(lead / "summary.json")
    if not summary or role_key(summary) != "student_kd":
        return None
    folders = [p.parent for p in records]
    lead_data = data_settings(lead, summary)
    # one setting over seeds: the same architecture and data, and the same training settings but for the seed
    # (a folder of KD students of other kd_alpha, temperature or epochs was pooled as "over N seeds")
    def of_setting(role: str) -> list[Path]:
        return [f for f in folders if is_train_run(f) and (s := read_json(f / "summary.json")) is not None
                and role_key(s) == role and same_student(summary, s, lead_data, data_settings(f, s))
                and same_setting(lead, f)]

    same, alone = of_setting("student_kd"), of_setting("student_alone")
    if not _distinct_seeds([run_seed(f) for f in same]):  # several folders of one seed (two invocations side by
        same = [f for f in same if f.parent == lead.parent]  # side): the lead's own folder's runs, if they pool
        alone = [f for f in alone if f.parent == lead.parent]
    seeds = [run_seed(f) for f in same]
    # a seed whose KD student is missing (failed, deleted) keeps its student alone in the table: that column
    # is over every seed, the KD student's says "(k of n runs)" (the seed was dropped whole, without a word)
    lone = [f for f in alone if (seed := run_seed(f)) is not None and seed not in seeds
            and sum(run_seed(g) == seed for g in alone) == 1]
    if not _distinct_seeds(seeds + [run_seed(f) for f in lone]):
        return None
    records = [train_run_record(f, folders, with_scores=False).record for f in same]
    for f in lone:
        s = read_json(f / "summary.json")
        records.append({"model": s.get("model"), "dataset": s.get("dataset"), "student_alone": run_metrics(s)})
    return headline(records), sorted(seeds + [run_seed(f) for f in lone])


def _distinct_seeds(seeds: list) -> bool:
    """Whether runs of these seeds pool: two or more, each seed known and once."""
    return len(seeds) >= 2 and None not in seeds and len(set(seeds)) == len(seeds)


_NOT_SETTINGS = ("seed", "run_dir")  # what differs between the seeds of one notebook setting


def notebook_seeds_headline(lead: tuple[Path, dict], loaded: list[tuple[Path, dict]]) -> tuple[dict, list] | None:
    """The headline over seeds of the notebook records that share the lead's parameters cell but for
    its seed and run_dir (a sweep's tasks of one grid point, a folder of seed runs), pooled;
    ``(headline, seeds)``, None for fewer than two seeds or records without ``notebook_parameters``."""
    params = lead[1].get("notebook_parameters") or {}
    if "seed" not in params:
        return None
    setting = {k: v for k, v in params.items() if k not in _NOT_SETTINGS}
    same = [m for _, m in loaded if m.get("notebook") == lead[1].get("notebook") and model_entries(m)
            and {k: v for k, v in (m.get("notebook_parameters") or {}).items() if k not in _NOT_SETTINGS} == setting]
    seeds = [m["notebook_parameters"].get("seed") for m in same]
    return (headline(same), sorted(seeds)) if _distinct_seeds(seeds) else None


def seeds_html(pooled: tuple[dict, list] | None, ident: str = "") -> str:
    """The pooled headline as HTML (""without one): mean ± std over the seeds, named."""
    if pooled is None:
        return ""
    h, seeds = pooled
    return (f"<h2 id='headline-seeds-title{ident}'>Over {len(seeds)} seeds ({', '.join(map(str, seeds))})</h2>"
            f"<p class='caption'>{html.escape(HEADLINE_CAPTION + KD_GAIN_CAPTION)} Mean ± sample std (n - 1) over the seeds; each "
            "KD student beside the teacher and the student alone of its own seed (one teacher given to every seed "
            "is one value). The table and figures below are one seed's.</p>"
            + headline_html(h, table_id=f"headline-seeds{ident}"))


def seeds_section(lead: Path, records: list[Path], ident: str = "") -> str:
    """:func:`seeds_headline` as HTML; "" for fewer than two seeds."""
    return seeds_html(seeds_headline(lead, records), ident)


def run_dir_html(root: str | Path, out: str | Path | None = None) -> Path:
    """One self-contained HTML page for every recorded run under ``root`` (figures as base64).

    It opens with the headline table of the newest student record (else of the newest teacher
    record), one per model family, each naming the other runs of its kind it leaves out; a run that
    did not finish is flagged; without a notebook record, of a ``kdkit train`` run (a KD student with its teacher
    and a student alone beside it where found, else a student alone, else a teacher). Then one
    section per record.
    """
    root = Path(root)
    records = find_records(root)
    if not records:
        raise FileNotFoundError(f"no metrics.json under {root}: run a notebook with run_dir={str(root)!r} first")
    loaded = [(p, json.loads(p.read_text())) for p in records]
    leads = notebook_leads(loaded)
    shown: dict[Path, set[str]] = {}  # the figures a headline drew, per record
    runs: dict[Path, TrainRun] = {}
    top = ""
    for i, lead in enumerate(leads):  # notebook records: a headline per model family
        ident = f"-{i + 1}" if i else ""
        pooled = notebook_seeds_headline(lead, loaded)
        also = [] if pooled else list(filter(None, [notebook_others_note(lead, loaded)]))
        section, shown[lead[0]] = headline_section(lead[1], lead[0].parent, subject=_lead_subject(lead, leads),
                                                   ident=ident, also=also)
        top += seeds_html(pooled, ident) + section
    trained = _train_records(loaded)
    for i, folder in enumerate(lead_train_runs(trained), start=len(leads)):
        # `kdkit train` runs (beside notebook runs too): a headline per model family
        ident = f"-{i + 1}" if i else ""
        run = train_run_record(folder, [p.parent for p in trained])
        seeds = seeds_section(folder, trained, ident)
        if not seeds:  # several seeds are pooled there; else say which runs of this kind the table leaves out
            run.notes = [*(run.notes or []), *filter(None, [others_note(folder, trained)])]
        subject = run_subject(run.record)
        section, shown[folder / "metrics.json"] = headline_section(run.record, folder, run.scores, run.notes,
                                                                   subject, run.main, overlay=False, ident=ident)
        top += seeds + section
        runs[folder / "metrics.json"] = run
    body = top + "\n".join(_section(root, p, shown.get(p, set()), runs.get(p)) for p in records)
    stamp = time.strftime("%Y-%m-%d %H:%M")
    page = page_html(f"kdkit report: {root}", f"{len(records)} run record(s), generated {stamp} by "
                     f"<code>kdkit report</code>", body)
    target = Path(out) if out else root / "report.html"
    target.write_text(page, encoding="utf-8")
    return target


def notebook_html(notebook: str | Path, out: str | Path | None = None) -> Path:
    """An executed notebook as one HTML file (nbconvert's lab template, images embedded)."""
    from nbconvert import HTMLExporter

    notebook = Path(notebook)
    body, _ = HTMLExporter(embed_images=True).from_filename(str(notebook))
    target = Path(out) if out else notebook.with_suffix(".html")
    target.write_text(body, encoding="utf-8")
    return target


def build_html(path: str | Path, out: str | Path | None = None) -> Path:
    """HTML report of a run dir (every metrics.json under it) or of an executed ``.ipynb``."""
    path = Path(path)
    if path.suffix == ".ipynb":
        if not path.is_file():
            raise FileNotFoundError(f"notebook {path} does not exist")
        return notebook_html(path, out)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (a run folder, a runs folder or an executed .ipynb; "
                                f"sweeps: `kdkit sweep report NAME`)")
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is neither a run folder nor an .ipynb file")
    return run_dir_html(path, out)


def text_summary(root: str | Path) -> str:
    """The recorded values of every run under ``root`` as plain text, opened (for ``kdkit train`` runs)
    by the headline of each model family: teacher, KD student and student alone with the KD gain, as
    the HTML report's."""
    blocks = []
    records = find_records(root)
    loaded = [(p, json.loads(p.read_text())) for p in records]
    leads = notebook_leads(loaded)  # as the HTML report opens; else kdkit train runs

    def over_seeds(pooled: tuple[dict, list] | None, what: str) -> list[str]:
        if pooled is None:
            return []
        h, seeds = pooled
        return [f"== over {len(seeds)} seeds ({', '.join(map(str, seeds))}): {what}, mean ± sample std", headline_text(h), ""]

    for lead in leads:
        pooled = notebook_seeds_headline(lead, loaded)
        subject = _lead_subject(lead, leads)
        title = headline_title(list(model_entries(lead[1])))
        blocks += over_seeds(pooled, title + (f" ({subject})" if subject else ""))
        notes = [*([UNFINISHED] if unfinished(lead[1]) else []),
                 *([] if pooled else filter(None, [notebook_others_note(lead, loaded)]))]
        blocks += [f"== {title} ({f'{subject}; ' if subject else ''}{lead[0].parent})",
                   headline_text(headline([lead[1]])), *(f"  note: {n}" for n in notes), ""]
    trained = _train_records(loaded)
    for folder in lead_train_runs(trained):
        run = train_run_record(folder, [p.parent for p in trained], with_scores=False)
        subject = run_subject(run.record)
        pooled = seeds_headline(folder, trained)
        blocks += over_seeds(pooled, f"{headline_title(list(model_entries(run.record)))} ({subject})")
        notes = [*(run.notes or []), *([] if pooled else filter(None, [others_note(folder, trained)]))]
        blocks += [f"== {headline_title(list(model_entries(run.record)))} ({subject}; {folder})",
                   headline_text(headline([run.record])), *(f"  note: {n}" for n in notes), ""]
    for p, metrics in loaded:
        flat = _flatten({k: v for k, v in metrics.items() if k not in ("figures", "tables", "history")})
        blocks.append(f"== {p.parent}  ({metrics.get('notebook', 'run')})")
        if unfinished(metrics):
            blocks.append(f"  WARNING: {UNFINISHED}")
        kind = metrics.get("notebook")
        if (kind in ("teacher", "student") and model_entries(metrics)) or (kind == "gateway" and metrics.get("counts")):
            blocks.append(f"  {headline_line(metrics)}")  # as the HTML section's line
        blocks += [f"  {k:<44} {_cell(v)}" for k, v in flat.items()]
        for name, t in (metrics.get("tables") or {}).items():
            blocks.append(repr(Table(t["rows"], t.get("columns"), f"  [{name}]")))
        if metrics.get("figures"):
            blocks.append("  figures: " + ", ".join(metrics["figures"]))
    if not blocks:
        raise FileNotFoundError(f"no metrics.json under {root}")
    return "\n".join(blocks)
