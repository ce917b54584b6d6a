"""What a notebook run records: ``RunRecord`` (metrics.json, figures) and the small tables and
headlines the notebooks and reports show."""
from __future__ import annotations

import html
import json
import logging
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from kdkit.reporting.metrics import predict_scores
from kdkit.training.checkpoint import load_checkpoint, model_from_checkpoint

log = logging.getLogger(__name__)


class Table:
    """Rows of dicts shown as an HTML table in Jupyter, as markdown in nbconvert, as text elsewhere."""

    EMPTY = "(no rows)"

    def __init__(self, rows: Sequence[Mapping], columns: Sequence[str] | None = None, title: str = ""):
        self.rows = [dict(r) for r in rows]
        self.columns = list(columns or dict.fromkeys(k for r in self.rows for k in r))
        self.title = title

    def cells(self) -> list[list[str]]:
        return [[_cell(r.get(c)) for c in self.columns] for r in self.rows]

    def __repr__(self) -> str:
        if not self.rows:  # an empty table says so (e.g. no alarms), not a header with nothing under it
            return "\n".join(([self.title] if self.title else []) + [self.EMPTY])
        cells = [self.columns] + self.cells()
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        lines = ["  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths))) for row in cells]
        return "\n".join(([self.title] if self.title else []) + [lines[0], "-" * len(lines[0])] + lines[1:])

    def _repr_markdown_(self) -> str:
        head = f"**{self.title}**\n\n" if self.title else ""
        if not self.rows:
            return head + self.EMPTY
        rows = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        rows += ["| " + " | ".join(r) + " |" for r in self.cells()]
        return head + "\n".join(rows)

    def _repr_html_(self) -> str:
        if not self.rows:
            cap = f"<b>{html.escape(self.title)}</b>: " if self.title else ""
            return f'<p class="kdkit">{cap}{self.EMPTY}</p>'
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>" for r in self.cells())
        cap = f"<caption>{html.escape(self.title)}</caption>" if self.title else ""
        return f'<table class="kdkit">{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _cell(v: Any) -> str:
    if v is None or isinstance(v, float) and math.isnan(v):
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"
    return str(v)


# ----------------------------------------------------------------------------- run records
RECORD_VERSION = 2
"""Version of the notebook records :class:`RunRecord` writes. From 2 a record holds ``completed``
(None until the notebook's last step): a record of version 2 without it is a run that did not
finish. Older records (no ``record_version``) cannot tell, and are read as before."""

UNFINISHED = ("this run did not finish: its notebook stopped before its last step (an error, or it was "
              "stopped), so what is recorded here is partial; see the executed notebook in its folder")


def unfinished(metrics: Mapping) -> bool:
    """Whether a notebook record is of a run that stopped midway: a record that knows (version 2 on)
    and was never completed. Older records without ``record_version`` are not flagged."""
    return isinstance(metrics.get("record_version"), int) and not metrics.get("completed")


def _read_json(path: Path) -> dict:
    """A JSON object from ``path``; {} when it is missing or not one."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


class RunRecord:
    """``metrics.json`` and the figures of one notebook run, written as they are produced.

    Args:
        run_dir: folder of the run (created); a previous ``metrics.json`` there is replaced.
        notebook: which story wrote it (``teacher``, ``student``, ``benchmark``).
        **info: first entries of ``metrics.json`` (dataset, model, ...).
    """

    def __init__(self, run_dir: str | Path, notebook: str, **info: Any):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        before = _read_json(self.run_dir / "metrics.json")
        if before.get("notebook") not in (None, notebook):  # (the teacher's table and figure list went, silently)
            log.warning("%s holds the %s notebook's record (metrics.json): this %s run replaces it (its figures stay, "
                        "the runs it trained too); give each notebook its own run_dir to keep both records",
                        self.run_dir, before["notebook"], notebook)
        # "completed" stays None until the notebook's last step (write()): a run that fails midway leaves a
        # record the reports flag as unfinished, not one read as a whole run with the previous run's figures
        self.metrics: dict[str, Any] = {"notebook": notebook, "record_version": RECORD_VERSION,
                                        "started": datetime.now().isoformat(timespec="microseconds"), **info,
                                        "figures": [], "tables": {}, "completed": None}
        self._t0 = time.perf_counter()
        self._save()

    @property
    def path(self) -> Path:
        return self.run_dir / "metrics.json"

    def _save(self) -> Path:
        """metrics.json as it stands (after each step, so a failed run keeps what it had measured)."""
        self.metrics["elapsed_seconds"] = round(time.perf_counter() - self._t0, 2)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.metrics, indent=2, default=_json_default))
        tmp.replace(self.path)
        return self.path

    def write(self) -> Path:
        """The notebook's last step (``print("recorded:", rec.write())``): marks the record complete
        (``completed``: when it finished) and saves it. A record without it is a run that stopped
        midway, and ``kdkit report`` says so."""
        self.metrics["completed"] = datetime.now().isoformat(timespec="seconds")
        return self._save()

    def record(self, **items: Any) -> None:
        """Merge ``items`` into metrics.json."""
        self.metrics.update(items)
        self._save()

    def table(self, name: str, rows: Sequence[Mapping], columns: Sequence[str] | None = None, title: str = "") -> Table:
        """Record rows under ``tables[name]`` and return them as a displayable :class:`Table`."""
        t = Table(rows, columns, title or name.replace("_", " "))
        self.metrics["tables"][name] = {"columns": t.columns, "rows": t.rows}
        self._save()
        return t

    def figure(self, fig, name: str, dpi: int = 110):
        """Save ``fig`` as ``<run_dir>/<name>.png`` and return it (the notebook shows it)."""
        fig.savefig(self.run_dir / f"{name}.png", dpi=dpi, bbox_inches="tight")
        if f"{name}.png" not in self.metrics["figures"]:
            self.metrics["figures"].append(f"{name}.png")
        self._save()
        return fig


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (Path,)):
        return str(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ----------------------------------------------------------------------------- notebook helpers
def data_table(info: Mapping) -> Table:
    """The split summary of ``prepare(...).info`` (what ``kdkit data info`` prints)."""
    cols = ("messages", "windows", "attack_windows", "attack_share", "distinct_ids", "oov_nodes", "nodes_mean", "edges_mean")
    rows = [{"split": name, **{c: s[c] for c in cols}} for name, s in info["splits"].items()]
    return Table(rows, ["split", *cols], f"dataset {info['dataset']}: vocabulary {info['vocab_size']} IDs incl. OOV")


def epoch_printer(total_epochs: int) -> Callable[[dict], None]:
    """``on_epoch_end`` callback that prints one line per epoch (live in Jupyter and papermill logs)."""

    def show(rec: dict) -> None:
        vals = "  ".join(f"{k} {rec[k]:.4f}" for k in ("train_loss", "val_loss", "val_f1") if k in rec)
        print(f"epoch {rec['epoch'] + 1}/{total_epochs}  {vals}  ({rec.get('epoch_seconds', 0):.1f} s)", flush=True)

    return show


def stop_note(summary: Mapping, epochs: int, patience: int, requested: bool = False) -> str:
    """Why a run ended before its last epoch, for the line after the epoch lines: ``"stopped early after
    epoch 7/50: no better validation for 5 epochs"`` (or ``"stopped on request after epoch 3/50"``);
    ``""`` for a run that trained every epoch."""
    ran = summary.get("epochs_run") or 0
    if ran >= epochs:
        return ""
    if requested:
        return f"stopped on request after epoch {ran}/{epochs}"
    return f"stopped early after epoch {ran}/{epochs}: no better validation for {patience} epochs"


# per-scenario values a notebook records for each model (what the report's headline table and figures read)
SCENARIO_KEYS = ("windows", "attack_windows", "f1", "mcc", "detection_at_1pct_fpr", "false_positive_rate",
                 "precision", "recall", "roc_auc", "pr_auc")
OVERALL_KEYS = ("f1", "accuracy", "precision", "recall", "mcc", "roc_auc", "pr_auc", "detection_at_1pct_fpr",
                "false_positive_rate")
HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "val_f1", "epoch_seconds")


def run_metrics(summary: Mapping, prefix: str = "") -> dict:
    """The values of a ``pipeline.train`` summary worth keeping.

    F1 per scenario (``f1``), per scenario the headline metrics and the recall per attack
    type (``scenarios``), overall metrics, sizes, time and the training curve (``history``).
    """
    test = summary["test"]
    scenarios = {name: {**{k: m.get(k) for k in SCENARIO_KEYS},
                        "per_attack_type": {t: v["recall"] for t, v in (m.get("per_attack_type") or {}).items()}}
                 for name, m in test["scenarios"].items()}
    history = [{k: h[k] for k in HISTORY_KEYS if k in h} for h in summary.get("history") or []]
    out = {"model": summary["model"], "type": summary["type"], "kd": summary.get("kd", False),
           "parameters": summary["parameters"], "size_bytes": summary["size_bytes"],
           "epochs_run": summary.get("epochs_run"), "train_seconds": summary.get("train_seconds"),
           "precision": summary.get("precision"), "threshold": summary.get("threshold"),
           "combiner": summary.get("combiner"),
           "checkpoint": summary["best_checkpoint"], "run_dir": summary.get("run_dir"),
           "f1": {k: v["f1"] for k, v in test["scenarios"].items()}, "scenarios": scenarios,
           "overall": {k: test["overall"].get(k) for k in OVERALL_KEYS}, "history": history}
    return {f"{prefix}{k}": v for k, v in out.items()} if prefix else out


SCORES_FILE = "scores.npz"


def save_scores(run_dir: str | Path, models: Mapping[str, Mapping], data) -> Path:
    """Test-window scores of each model beside metrics.json: ``<run_dir>/scores.npz``.

    Keys ``<model>/<scenario>`` (float32 scores) and ``label/<scenario>`` (uint8, 1 = attack):
    what the report's score histograms and ROC/PR curves are drawn from. A model's scores
    come from its run's ``test_scores.npz``, or (a loaded checkpoint) are computed here.

    Args:
        run_dir: the notebook's run folder.
        models: ``{record key: summary}`` (``train``'s or ``compare.load_teacher``'s), e.g.
            ``{"teacher": teacher, "student_kd": kd}``.
        data: the prepared dataset the models were evaluated on (``load_data``).
    """
    arrays: dict[str, np.ndarray] = {}
    for key, summary in models.items():
        if "/" in key:
            raise ValueError(f"model key {key!r} may not contain '/'")
        for name, score in model_scores(summary, data).items():
            arrays[f"{key}/{name}"] = np.asarray(score, dtype=np.float32)
            arrays[f"label/{name}"] = data.splits[name].y.numpy().astype(np.uint8)
    path = Path(run_dir) / SCORES_FILE
    np.savez_compressed(path, **arrays)
    return path


def model_scores(summary: Mapping, data) -> dict[str, np.ndarray]:
    """``{scenario: scores}`` of a summary's model on ``data``'s test scenarios."""
    saved = Path(summary.get("run_dir") or "") / "test_scores.npz"
    scenarios = list(summary["test"]["scenarios"])
    if summary.get("run_dir") and saved.is_file():
        with np.load(saved) as npz:
            if set(scenarios) <= set(npz.files):
                return {k: npz[k] for k in scenarios}
    ckpt = load_checkpoint(summary["best_checkpoint"])
    model = model_from_checkpoint(ckpt).eval()
    return {k: predict_scores(model, data.splits[k]) for k in scenarios}


def load_scores(run_dir: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """``{model key or "label": {scenario: array}}`` from ``<run_dir>/scores.npz`` ({} without one)."""
    path = Path(run_dir) / SCORES_FILE
    if not path.is_file():
        return {}
    out: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path) as npz:
        for k in npz.files:
            model, _, scenario = k.partition("/")
            out.setdefault(model, {})[scenario] = npz[k]
    return out


# the record keys of models in a student notebook's metrics.json and how tables label them;
# any other entry with "overall" and "parameters" (a fused model, ...) is a model too
MODEL_LABELS = {"teacher": "teacher", "student_kd": "student (KD)", "student_alone": "student alone",
                "fused": "fused", "student_fused": "student (fused)"}


def model_entries(metrics: Mapping) -> dict[str, Mapping]:
    """``{key: entry}`` of the models a notebook record holds, teacher first, then KD, alone, others.

    A teacher notebook's record is one model itself (key ``teacher``).
    """
    if metrics.get("notebook") == "teacher" and "overall" in metrics and "parameters" in metrics:
        return {"teacher": metrics}
    found = {k: v for k, v in metrics.items() if isinstance(v, Mapping) and "overall" in v and "parameters" in v}
    order = [k for k in MODEL_LABELS if k in found] + [k for k in found if k not in MODEL_LABELS]
    return {k: found[k] for k in order}


def model_label(key: str) -> str:
    """The column label of a model record key (``student_kd`` -> ``student (KD)``)."""
    return MODEL_LABELS.get(key, key.replace("_", " "))


# A benchmark below these settings is a smoke run, labelled so on its figures: `kdkit bench train`
# measures with 30 steps x 5 repeats (the benchmark notebook's measurement command), `kdkit bench
# infer` 3 s of throughput and 2000 single-window calls by default, preprocessing 3 repeats.
MEASUREMENT_SETTINGS = {"steps": 30, "repeats": 5, "infer_seconds": 3.0, "infer_calls": 2000, "preprocess_repeats": 3}


def smoke_label(**settings: float) -> str | None:
    """``"smoke run: 2 steps, 2 repeats, not a measurement"`` when a setting is below
    :data:`MEASUREMENT_SETTINGS`; None for a measurement.

    Args:
        **settings: names of :data:`MEASUREMENT_SETTINGS` with the values used.
    """
    unknown = set(settings) - set(MEASUREMENT_SETTINGS)
    if unknown:
        raise ValueError(f"smoke_label: unknown setting(s) {sorted(unknown)}; known: {sorted(MEASUREMENT_SETTINGS)}")
    low = [k for k, v in settings.items() if v < MEASUREMENT_SETTINGS[k]]
    if not low:
        return None
    shown = ", ".join(f"{_cell(v)} {k.replace('_', ' ')}" for k, v in settings.items())
    return f"smoke run: {shown}, not a measurement"


def scenario_rows(test: Mapping) -> list[dict]:
    """One row per scenario (and overall) with the headline metrics of ``summary["test"]``."""
    cols = ("windows", "attack_windows", "accuracy", "precision", "recall", "f1", "mcc", "roc_auc", "detection_at_1pct_fpr")
    items = list(test["scenarios"].items()) + [("overall", test["overall"])]
    return [{"scenario": name, **{c: m.get(c) for c in cols}} for name, m in items]


def scenario_scores(summary: Mapping, data) -> tuple[dict, dict]:
    """``(labels, scores)`` per test scenario: scores from the run's ``test_scores.npz``."""
    with np.load(Path(summary["run_dir"]) / "test_scores.npz") as npz:
        scores = {k: npz[k] for k in npz.files}
    labels = {k: data.splits[k].y.numpy() for k in scores}
    return labels, scores


def headline(metrics: Mapping) -> str:
    """One line that sums up a notebook's metrics.json (``kdkit demo`` prints it per step)."""
    kind = metrics.get("notebook")
    if kind == "teacher":
        return f"teacher: {metrics['parameters']:,} parameters, overall F1 {_f1(metrics['overall'])}"
    if kind == "student" and not {"student_kd", "student_alone", "teacher"} <= set(metrics):
        # a run that stopped midway (e.g. after its teacher): the models it recorded, not a KeyError in the report
        found = [f"{model_label(k)} F1 {_f1(e.get('overall') or {})}" for k, e in model_entries(metrics).items()]
        return f"student (partial record): {', '.join(found) or 'no model recorded'}"
    if kind == "student":
        kd, alone = metrics["student_kd"], metrics["student_alone"]
        return (f"student: {kd['parameters']:,} parameters, overall F1 {_f1(kd['overall'])} with KD, "
                f"{_f1(alone['overall'])} alone (teacher {_f1(metrics['teacher']['overall'])})")
    if kind == "gateway" and isinstance(metrics.get("counts"), Mapping):
        return gateway_line(metrics)
    return f"{kind}: {len(metrics.get('figures', []))} figures, {len(metrics.get('tables', {}))} tables"


UNKNOWN_BUS = ("the bus did not look like a vehicle the model was trained on (most IDs outside its vocabulary): "
               "its decisions there are unreliable, false alarms or attacks missed; calibrate it on a clean capture "
               "of this car (kdkit calibrate)")


def gateway_line(metrics: Mapping) -> str:
    """A gateway record in one line: windows, alarms and, for labelled input, detected attack
    windows and false alarms; what the detector said of an unknown car, and that the recording was
    one the model trained on."""
    c = metrics["counts"]
    rate = f" ({c['alarms'] / c['windows']:.1%})" if c.get("windows") else ""
    text = f"gateway: {c.get('windows', 0):,} windows, {c.get('alarms', 0):,} alarms{rate}"
    if "attack_windows" in c:
        text += (f"; attack windows {c['attack_windows']:,}, detected {c['detected']:,}, "
                 f"false alarms {c['false_alarms']:,}")
    else:
        text += "; unlabelled input (no truth to score against)"
    if (metrics.get("summary") or {}).get("unknown_vehicle"):
        text += f". Warning: {UNKNOWN_BUS}"
    if metrics.get("in_sample_warning"):  # a training recording replayed: its recall is not a test
        text += f". Warning: {metrics['in_sample_warning']}"
    return text


def _f1(overall: Mapping) -> str:
    """An F1 for a headline: 3 decimals, or ``-`` when undefined (no attack windows)."""
    f1 = overall.get("f1")
    return "-" if f1 is None else f"{f1:.3f}"


def attack_recall(metrics: Mapping) -> dict[str, dict[str, dict[str, float]]]:
    """``{model label: {scenario: {attack type: recall}}}`` of a notebook record (for
    :func:`kdkit.reporting.plots.attack_recall`); models without per-type recall are left out."""
    out = {}
    for key, entry in model_entries(metrics).items():
        per = {sc: dict(m.get("per_attack_type") or {}) for sc, m in (entry.get("scenarios") or {}).items()}
        if any(per.values()):
            out[model_label(key)] = per
    return out


def attack_recall_rows(recall: Mapping[str, Mapping[str, Mapping[str, float]]]) -> Table:
    """The numbers of :func:`attack_recall` as a table: one row per (scenario, attack type), one
    recall column per model (``-`` where a model has none)."""
    models = list(recall)
    pairs = dict.fromkeys((sc, t) for per in recall.values() for sc, types in per.items() for t in types)
    rows = [{"scenario": sc.replace("_", " "), "attack type": t,
             **{m: (recall[m].get(sc) or {}).get(t) for m in models}} for sc, t in pairs]
    return Table(rows, ["scenario", "attack type", *models], "Recall per attack type")
