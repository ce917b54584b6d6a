"""What a notebook run records: ``RunRecord`` (metrics.json, figures) and the small tables and
headlines the notebooks and reports show."""
from __future__ import annotations

import html
import json
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np


class Table:
    """Rows of dicts shown as an HTML table in Jupyter, as markdown in nbconvert, as text elsewhere."""

    def __init__(self, rows: Sequence[Mapping], columns: Sequence[str] | None = None, title: str = ""):
        self.rows = [dict(r) for r in rows]
        self.columns = list(columns or dict.fromkeys(k for r in self.rows for k in r))
        self.title = title

    def cells(self) -> list[list[str]]:
        return [[_cell(r.get(c)) for c in self.columns] for r in self.rows]

    def __repr__(self) -> str:
        cells = [self.columns] + self.cells()
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        lines = ["  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths))) for row in cells]
        return "\n".join(([self.title] if self.title else []) + [lines[0], "-" * len(lines[0])] + lines[1:])

    def _repr_markdown_(self) -> str:
        head = f"**{self.title}**\n\n" if self.title else ""
        rows = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        rows += ["| " + " | ".join(r) + " |" for r in self.cells()]
        return head + "\n".join(rows)

    def _repr_html_(self) -> str:
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
        self.metrics: dict[str, Any] = {"notebook": notebook, "started": datetime.now().isoformat(timespec="microseconds"), **info,
                                        "figures": [], "tables": {}}
        self._t0 = time.perf_counter()
        self.write()

    @property
    def path(self) -> Path:
        return self.run_dir / "metrics.json"

    def write(self) -> Path:
        self.metrics["elapsed_seconds"] = round(time.perf_counter() - self._t0, 2)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.metrics, indent=2, default=_json_default))
        tmp.replace(self.path)
        return self.path

    def record(self, **items: Any) -> None:
        """Merge ``items`` into metrics.json."""
        self.metrics.update(items)
        self.write()

    def table(self, name: str, rows: Sequence[Mapping], columns: Sequence[str] | None = None, title: str = "") -> Table:
        """Record rows under ``tables[name]`` and return them as a displayable :class:`Table`."""
        t = Table(rows, columns, title or name.replace("_", " "))
        self.metrics["tables"][name] = {"columns": t.columns, "rows": t.rows}
        self.write()
        return t

    def figure(self, fig, name: str, dpi: int = 110):
        """Save ``fig`` as ``<run_dir>/<name>.png`` and return it (the notebook shows it)."""
        fig.savefig(self.run_dir / f"{name}.png", dpi=dpi, bbox_inches="tight")
        if f"{name}.png" not in self.metrics["figures"]:
            self.metrics["figures"].append(f"{name}.png")
        self.write()
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


def run_metrics(summary: Mapping, prefix: str = "") -> dict:
    """The scalars of a ``pipeline.train`` summary worth keeping (F1 per scenario, sizes, time)."""
    test = summary["test"]
    out = {"model": summary["model"], "type": summary["type"], "kd": summary.get("kd", False),
           "parameters": summary["parameters"], "size_bytes": summary["size_bytes"],
           "epochs_run": summary.get("epochs_run"), "train_seconds": summary.get("train_seconds"),
           "precision": summary.get("precision"), "threshold": summary.get("threshold"),
           "checkpoint": summary["best_checkpoint"],
           "f1": {k: v["f1"] for k, v in test["scenarios"].items()},
           "overall": {k: test["overall"].get(k) for k in ("f1", "accuracy", "precision", "recall", "mcc", "roc_auc", "pr_auc")}}
    return {f"{prefix}{k}": v for k, v in out.items()} if prefix else out


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
    if kind == "student":
        kd, alone = metrics["student_kd"], metrics["student_alone"]
        return (f"student: {kd['parameters']:,} parameters, overall F1 {_f1(kd['overall'])} with KD, "
                f"{_f1(alone['overall'])} alone (teacher {_f1(metrics['teacher']['overall'])})")
    return f"{kind}: {len(metrics.get('figures', []))} figures, {len(metrics.get('tables', {}))} tables"


def _f1(overall: Mapping) -> str:
    """An F1 for a headline: 3 decimals, or ``-`` when undefined (no attack windows)."""
    f1 = overall.get("f1")
    return "-" if f1 is None else f"{f1:.3f}"
