"""``kdkit report RUN_DIR|SWEEP_DIR|NOTEBOOK.ipynb [--html] [--out FILE]``."""
from __future__ import annotations

import argparse
from pathlib import Path

from kdkit.cli.main import COMMANDS, check_output_file
from kdkit.reporting.html import build_html, text_summary
from kdkit.reporting.sweep import RESULTS_FILE, build_sweep_report, sweep_text


def cmd_report(args: argparse.Namespace) -> int:
    if not args.path.strip():  # "" was the current folder: every run under it summarised
        raise ValueError("kdkit report '': an empty path; name a run folder, a folder of runs, a sweep or a notebook")
    path = Path(args.path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (kdkit report takes a run folder, a folder of runs, a sweep "
                                "folder or an executed notebook)")
    check_output_file("--out", args.out)
    if args.out and Path(args.out).is_file() and Path(args.out).suffix.lower() not in (".html", ".htm"):
        # (`--out runs/x/metrics.json` replaced the run's metrics with the page)
        raise ValueError(f"--out {args.out} is an existing {Path(args.out).suffix or 'extension-less'} file, not a "
                         "report page: writing it would replace it; give a new .html path")
    if args.out and not args.html and path.suffix != ".ipynb":
        raise ValueError(f"--out {args.out} names the HTML page: add --html (without it the text summary is printed)")
    if (path / RESULTS_FILE).is_file():  # a sweep folder
        print(build_sweep_report(path, args.out) if args.html else sweep_text(path))
    elif args.html or path.suffix == ".ipynb":
        print(build_html(path, args.out))
    else:
        print(text_summary(path))
    return 0


def register(sub) -> None:
    """Adds ``kdkit report PATH [--html] [--out FILE]``."""
    p = sub.add_parser("report", help=COMMANDS["report"][1],
                       description="Print the metrics recorded under a run folder, or with --html write one HTML "
                                   "file (figures embedded) and print its path. A sweep folder (holding results.json) "
                                   "gets the sweep report; an .ipynb is rendered with nbconvert.")
    p.add_argument("path", help="run folder (every metrics.json under it), sweep folder (results.json) "
                                "or an executed .ipynb")
    p.add_argument("--html", action="store_true", help="write <folder>/report.html (or NAME.html next to the .ipynb)")
    p.add_argument("--out", default=None, help="HTML file to write instead of the default")
    p.set_defaults(func=cmd_report)
