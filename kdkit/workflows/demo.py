"""``kdkit demo``: the whole story on built-in synthetic traffic, through the notebooks."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from kdkit.data.datasets import PrepareConfig, format_info, prepare
from kdkit.reporting.html import build_html
from kdkit.reporting.records import headline
from kdkit.workflows.notebooks import execute_notebook


def demo(out: Path, quick: bool = False) -> int:
    """``kdkit demo``: the whole story on built-in synthetic traffic; returns an exit code.

    Runs ``notebooks/teacher``, ``student`` (distilling that teacher) and ``benchmark``
    through papermill into ``out/<name>/`` (executed notebook, metrics.json, PNG figures,
    checkpoints), then writes ``out/report.html`` and prints where it is. ``quick``: the
    data summary only.
    """

    from papermill.exceptions import PapermillExecutionError

    # Teacher and students train 6 epochs in batches of 16 here (the synthetic training split has only
    # ~650 windows: batches of 64 leave a tiny KD student ~60 optimizer steps, too few to leave
    # "all normal"); the notebooks' stored defaults stay the 2-epoch smoke run.
    epochs, batch_size = 6, 16

    out.mkdir(parents=True, exist_ok=True)
    print("== 1. synthetic CAN traffic and its graphs", flush=True)
    print(format_info("synthetic", prepare("synthetic", PrepareConfig())), flush=True)
    if quick:
        return 0
    t0 = time.perf_counter()
    steps = [("teacher", {"epochs": epochs, "batch_size": batch_size}), ("student", {"epochs": epochs, "batch_size": batch_size}),
             ("benchmark", {"steps": 3, "repeats": 3, "batch_size": 16})]
    for i, (name, params) in enumerate(steps, start=2):
        print(f"== {i}. notebooks/{name}.ipynb -> {out / name / (name + '.ipynb')}", flush=True)
        try:
            m = execute_notebook(name, out / name, **params)
        except PapermillExecutionError as err:
            print(f"kdkit demo: {name} notebook failed in cell {err.exec_count}: {err.ename}: {err.evalue}\n"
                  f"  the executed notebook with the traceback: {out / name / (name + '.ipynb')}", file=sys.stderr)
            return 1
        if name == "teacher":  # the student notebook distills this teacher
            steps[1][1]["teacher_checkpoint"] = m["checkpoint"]
        if name == "student":  # the benchmark times this student's inference
            steps[2][1]["checkpoint"] = m["student_kd"]["checkpoint"]
        print(f"   {headline(m)} ({m['elapsed_seconds']:.0f} s)", flush=True)
    html = build_html(out)
    print(f"== done in {time.perf_counter() - t0:.0f} s. HTML report: {html}")
    return 0
