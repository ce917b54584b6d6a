"""``kdkit report RUN_DIR [--html] [--out FILE]``."""
from __future__ import annotations

import argparse
from pathlib import Path

from kdkit.reporting.html import build_html, text_summary


def cmd_report(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if args.html or path.suffix == ".ipynb":
        print(build_html(path, args.out))
    else:
        print(text_summary(path))
    return 0


def register(sub) -> None:
    """Adds ``kdkit report PATH [--html] [--out FILE]``."""
    p = sub.add_parser("report", help="summarise a run folder, or write a self-contained HTML report",
                       description="Print the metrics recorded under a run folder, or with --html write one HTML "
                                   "file (figures embedded) and print its path. An .ipynb is rendered with nbconvert.")
    p.add_argument("path", help="run folder (every metrics.json under it) or an executed .ipynb")
    p.add_argument("--html", action="store_true", help="write <run folder>/report.html (or NAME.html next to the .ipynb)")
    p.add_argument("--out", default=None, help="HTML file to write instead of the default")
    p.set_defaults(func=cmd_report)
