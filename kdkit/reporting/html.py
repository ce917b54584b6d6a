"""One self-contained HTML report of a run folder (every metrics.json and figure under it) or
of an executed notebook.

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
from kdkit.reporting.records import Table, _cell

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
