"""Run records (``metrics.json`` + PNG figures in a run dir) and the shareable HTML report.

    kdkit report runs/demo --html                        # -> runs/demo/report.html, images embedded
    kdkit report runs/demo/teacher/teacher.ipynb --html  # an executed notebook as one HTML file
    kdkit report runs/nb_teacher                         # the recorded metrics as text

Notebooks record what they measure while they run, so SLURM post-processing reads
``metrics.json`` and never parses a notebook::

    rec = RunRecord("runs/nb_teacher", "teacher", dataset="synthetic")
    rec.figure(plots.training_curves(summary["history"]), "training_curves")   # PNG + shown inline
    rec.record(**run_metrics(summary))                                         # merged into metrics.json
    rec.table("per_scenario", scenario_rows(summary["test"]))                  # rows, shown as a table
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

# ----------------------------------------------------------------------------- tables


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
        return f"teacher: {metrics['parameters']:,} parameters, overall F1 {metrics['overall']['f1']:.3f}"
    if kind == "student":
        kd, alone = metrics["student_kd"], metrics["student_alone"]
        return (f"student: {kd['parameters']:,} parameters, overall F1 {kd['overall']['f1']:.3f} with KD, "
                f"{alone['overall']['f1']:.3f} alone (teacher {metrics['teacher']['overall']['f1']:.3f})")
    return f"{kind}: {len(metrics.get('figures', []))} figures, {len(metrics.get('tables', {}))} tables"


# ----------------------------------------------------------------------------- executing notebooks
NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL = "kdkit"


def ensure_kernel(name: str = KERNEL) -> None:
    """Register this environment's Jupyter kernel ``name`` if it is missing (what ``make`` does)."""
    import sys

    from jupyter_client.kernelspec import find_kernel_specs

    if name in find_kernel_specs():
        return
    from ipykernel.kernelspec import install

    try:
        install(kernel_name=name, display_name=f"{name} ({Path(sys.prefix).name})", prefix=sys.prefix)
    except OSError as err:
        raise RuntimeError(f"no Jupyter kernel {name!r} and {sys.prefix} is not writable ({err}); register one with "
                           f"`{sys.executable} -m ipykernel install --user --name {name}`") from err
    print(f"registered Jupyter kernel {name!r} for {sys.executable}")


def execute_notebook(name: str, run_dir: str | Path, **parameters: Any) -> dict:
    """Run ``notebooks/<name>.ipynb`` with papermill (kernel ``kdkit``) into ``run_dir``; return its metrics.json.

    The executed copy is ``<run_dir>/<name>.ipynb``; ``run_dir`` is passed as the notebook's parameter.
    """
    import papermill as pm

    source = NOTEBOOK_DIR / f"{name}.ipynb"
    if not source.is_file():
        raise FileNotFoundError(f"notebook {source} not found (kdkit must run from its source checkout for notebooks)")
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    ensure_kernel()
    pm.execute_notebook(str(source), str(run_dir / source.name), parameters={**parameters, "run_dir": str(run_dir)},
                        kernel_name=KERNEL, progress_bar=False)
    return json.loads((run_dir / "metrics.json").read_text())


# ----------------------------------------------------------------------------- HTML report
_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;margin-top:2em}h3{font-size:1.05em}
table.kdkit{border-collapse:collapse;margin:.6em 0;font-size:.85em}
table.kdkit td,table.kdkit th{border:1px solid #ddd;padding:3px 8px;text-align:right}
table.kdkit td:first-child,table.kdkit th:first-child{text-align:left}
table.kdkit caption{text-align:left;font-weight:bold;padding:4px 0}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}.muted{color:#777;font-size:.85em}"""


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
    """The ``metrics.json`` files of notebook runs under ``root``, in the order they started.

    Without any notebook record (a ``kdkit train`` run folder), every ``metrics.json``.
    """
    root = Path(root)
    found = [(p, json.loads(p.read_text())) for p in root.rglob("metrics.json")]
    notebooks = [(p, m) for p, m in found if "notebook" in m]
    return [p for p, m in sorted(notebooks or found, key=lambda pm: (pm[1].get("started", ""), str(pm[0])))]


def _section(root: Path, path: Path) -> str:
    metrics = json.loads(path.read_text())
    rel = path.parent.relative_to(root).as_posix()
    title = f"{metrics.get('notebook', 'run')}: {rel if rel != '.' else root.name}"
    parts = [f"<h2>{html.escape(title)}</h2>"]
    scalars = {k: v for k, v in _flatten({k: v for k, v in metrics.items() if k not in ("figures", "tables", "history")}).items()}
    parts.append(Table([{"key": k, "value": v} for k, v in scalars.items()], ["key", "value"], "recorded values")._repr_html_())
    for name, t in (metrics.get("tables") or {}).items():
        parts.append(Table(t["rows"], t.get("columns"), name.replace("_", " "))._repr_html_())
    pngs = {f: (path.parent / f).read_bytes() for f in metrics.get("figures") or sorted(p.name for p in path.parent.glob("*.png"))
            if (path.parent / f).is_file()}
    if not pngs and (path.parent / "summary.json").is_file():  # a `kdkit train` run: draw from its summary
        pngs = _summary_figures(json.loads((path.parent / "summary.json").read_text()))
    for fig, png in pngs.items():
        data = base64.b64encode(png).decode()
        parts.append(f"<h3>{html.escape(Path(fig).stem.replace('_', ' '))}</h3><img alt='{html.escape(fig)}' src='data:image/png;base64,{data}'>")
    for nb in sorted(path.parent.glob("*.ipynb")):
        parts.append(f"<p class='muted'>executed notebook {html.escape(nb.name)}: as HTML with "
                     f"<code>kdkit report {html.escape(str(nb))} --html</code></p>")
    return "\n".join(parts)


def _summary_figures(summary: Mapping) -> dict[str, bytes]:
    """Training curves and confusion matrices of a ``pipeline.train`` summary, as PNG bytes."""
    import io

    from kdkit import plots

    figs = {}
    if summary.get("history"):
        figs["training_curves.png"] = plots.training_curves(summary["history"])
    if summary.get("test", {}).get("scenarios"):
        figs["confusion_matrices.png"] = plots.confusion_matrices(summary["test"])
    out = {}
    for name, fig in figs.items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        out[name] = buf.getvalue()
    return out


def run_dir_html(root: str | Path, out: str | Path | None = None) -> Path:
    """One self-contained HTML page for every recorded run under ``root`` (figures as base64)."""
    root = Path(root)
    records = find_records(root)
    if not records:
        raise FileNotFoundError(f"no metrics.json under {root}: run a notebook with run_dir={str(root)!r} first")
    body = "\n".join(_section(root, p) for p in records)
    stamp = time.strftime("%Y-%m-%d %H:%M")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>kdkit report: {html.escape(root.name)}</title>"
            f"<style>{_CSS}</style></head><body><h1>kdkit report: {html.escape(str(root))}</h1>"
            f"<p class='muted'>{len(records)} run record(s), generated {stamp} by <code>kdkit report</code></p>{body}</body></html>")
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
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is neither a run folder nor an .ipynb file")
    return run_dir_html(path, out)


def text_summary(root: str | Path) -> str:
    """The recorded values of every run under ``root`` as plain text."""
    blocks = []
    for p in find_records(root):
        metrics = json.loads(p.read_text())
        flat = _flatten({k: v for k, v in metrics.items() if k not in ("figures", "tables", "history")})
        blocks.append(f"== {p.parent}  ({metrics.get('notebook', 'run')})")
        blocks += [f"  {k:<44} {_cell(v)}" for k, v in flat.items()]
        for name, t in (metrics.get("tables") or {}).items():
            blocks.append(repr(Table(t["rows"], t.get("columns"), f"  [{name}]")))
        if metrics.get("figures"):
            blocks.append("  figures: " + ", ".join(metrics["figures"]))
    if not blocks:
        raise FileNotFoundError(f"no metrics.json under {root}")
    return "\n".join(blocks)


def cmd_report(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if args.html or path.suffix == ".ipynb":
        print(build_html(path, args.out))
    else:
        print(text_summary(path))
    return 0


def register_cli(sub) -> None:
    """Adds ``kdkit report PATH [--html] [--out FILE]``."""
    p = sub.add_parser("report", help="summarise a run folder, or write a self-contained HTML report",
                       description="Print the metrics recorded under a run folder, or with --html write one HTML "
                                   "file (figures embedded) and print its path. An .ipynb is rendered with nbconvert.")
    p.add_argument("path", help="run folder (every metrics.json under it) or an executed .ipynb")
    p.add_argument("--html", action="store_true", help="write <run folder>/report.html (or NAME.html next to the .ipynb)")
    p.add_argument("--out", default=None, help="HTML file to write instead of the default")
    p.set_defaults(func=cmd_report)
