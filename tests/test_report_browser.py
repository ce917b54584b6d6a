"""The HTML reports really render: headless Chromium (Debian's, driven by Playwright) opens the
run report of a student-notebook run folder and the report of a sweep of such runs, and the DOM
holds the headline table and every figure, decoded.

The runs are real: the student notebook through papermill with tiny settings (synthetic data,
1 epoch, the teacher trained once and reused), three times for a 2 x 2 grid (kd_alpha x seed)
whose fourth task failed; ``results.json`` is written here in the sweep schema.

Screenshots: runs/screenshots/report_run.png and runs/screenshots/report_sweep.png (full pages).
Outside CI the test skips without Chromium or Playwright; under CI=true it runs
.ci/system-deps.sh for Chromium and fails when something is still missing.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, REPO, SCREENSHOTS, require, sync_playwright_or_require

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.notebook]

TINY = {"epochs": 1, "teacher_epochs": 1, "latency_calls": 20}


def _student(out: Path, env: dict, **params) -> dict:
    """The student notebook through papermill into ``out``; its metrics.json."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "papermill", str(REPO / "notebooks" / "student.ipynb"), str(out / "student.ipynb"),
           "-k", "kdkit", "--no-progress-bar", "-p", "run_dir", str(out)]
    for k, v in {**TINY, **params}.items():
        cmd += ["-p", k, str(v)]
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"papermill student failed:\n{proc.stderr[-4000:]}"
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A student run folder and a sweep folder (results.json) over three real student runs."""
    from jupyter_client.kernelspec import find_kernel_specs

    require("kdkit" in find_kernel_specs(),
            f"no Jupyter kernel 'kdkit': run `{sys.executable} -m ipykernel install --sys-prefix --name kdkit`")
    base = tmp_path_factory.mktemp("report_browser")
    env = dict(os.environ, KDKIT_SYNTHETIC_ROOT=str(base / "synthetic-seed{seed}"), KDKIT_CACHE_DIR=str(base / "cache"),
               OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    sweep = base / "sweep"
    first = _student(sweep / "tasks" / "task0", env, kd_alpha=0.5, seed=0)
    teacher = first["teacher"]["checkpoint"]
    rows = [{"task": 0, "state": "COMPLETED", "seed": 0, "params": {"kd_alpha": 0.5}, "run_dir": "tasks/task0",
             "job_id": None, "error": None, "metrics": first}]
    for task, (alpha, seed) in enumerate([(0.5, 1), (0.9, 0)], start=1):
        m = _student(sweep / "tasks" / f"task{task}", env, kd_alpha=alpha, seed=seed, teacher_checkpoint=teacher)
        rows.append({"task": task, "state": "COMPLETED", "seed": seed, "params": {"kd_alpha": alpha},
                     "run_dir": f"tasks/task{task}", "job_id": None, "error": None, "metrics": m})
    rows.append({"task": 3, "state": "FAILED", "seed": 1, "params": {"kd_alpha": 0.9}, "run_dir": "tasks/task3",
                 "job_id": None, "error": "PapermillExecutionError: cell 8: RuntimeError: out of memory", "metrics": {}})
    (sweep / "results.json").write_text(json.dumps({"sweep": "kd_alpha", "notebook": "notebooks/student.ipynb",
                                                    "grid": {"kd_alpha": [0.5, 0.9]}, "seeds": [0, 1], "rows": rows}))
    return sweep / "tasks" / "task0", sweep


def _render(report: Path, screenshot: str) -> dict:
    """Open ``report`` in headless Chromium; the DOM facts the tests check; a full-page screenshot."""
    sync_playwright = sync_playwright_or_require()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        page = browser.new_page(viewport={"width": 1250, "height": 1000})
        try:
            page.goto(report.resolve().as_uri(), wait_until="load")
            facts = page.evaluate("""() => {
                const first = document.querySelector('h2');
                const table = document.querySelector('table#headline');
                const text = el => el ? el.textContent.trim() : null;
                return {
                  first_h2: text(first),
                  headline_after_first_h2: !!(table && first && (first.compareDocumentPosition(table) & 4)),
                  head: table ? [...table.querySelectorAll('thead th')].map(th => text(th)) : [],
                  rows: table ? [...table.querySelectorAll('tbody tr')].map(tr =>
                      [...tr.children].map(td => text(td))) : [],
                  figures: [...document.querySelectorAll('figure')].map(f => ({
                      name: f.dataset.figure, title: text(f.querySelector('h3')),
                      caption: text(f.querySelector('figcaption')),
                      width: f.querySelector('img').naturalWidth})),
                  raw_open: [...document.querySelectorAll('details.raw')].map(d => d.open),
                  unfinished: [...document.querySelectorAll('table#unfinished tbody tr')].map(tr => text(tr)),
                  best: !!document.querySelector('table#headline-best'),
                };
            }""")
            page.screenshot(path=str(SCREENSHOTS / screenshot), full_page=True)
        finally:
            browser.close()
    return facts


def test_run_report_renders_the_headline_and_figures(runs):
    from kdkit.reporting.html import build_html

    run, _ = runs
    facts = _render(build_html(run), "report_run.png")
    assert facts["first_h2"] == "Teacher, KD student and student alone" and facts["headline_after_first_h2"]
    assert facts["head"] == ["metric", "scenario", "teacher", "student (KD)", "student alone", "KD gain"]
    metrics = [r[0] for r in facts["rows"] if r[0]]
    assert metrics == ["F1", "MCC", "detection at 1 % FPR", "parameters", "bytes", "p99 latency (ms / window)"]
    scenarios = [r[1] for r in facts["rows"][:5]]
    assert scenarios[-1] == "overall" and all(s.startswith("test 0") for s in scenarios[:-1])
    params = next(r for r in facts["rows"] if r[0] == "parameters")
    assert int(params[2].replace(",", "")) > int(params[3].replace(",", "")) > 0  # teacher larger than the student
    assert all(cell != "-" for r in facts["rows"] for cell in r[2:5])  # every model has every value
    drawn = [f["name"] for f in facts["figures"]]
    assert drawn[:4] == ["roc_pr_over_teacher", "score_histograms_kd", "attack_recall", "training_curves_overlay"]
    assert {"f1_per_scenario", "size_and_latency"} <= set(drawn)
    assert all(f["width"] > 100 and f["title"] and f["caption"] for f in facts["figures"])  # decoded, titled, explained
    assert facts["raw_open"] == [False]  # raw values folded away
    assert (SCREENSHOTS / "report_run.png").stat().st_size > 10_000


def test_sweep_report_renders_the_grid_table_and_figures(runs):
    from kdkit.reporting.sweep import build_sweep_report

    _, sweep = runs
    facts = _render(build_sweep_report(sweep), "report_sweep.png")
    assert facts["first_h2"] == "Which setting works best" and facts["headline_after_first_h2"]
    assert facts["head"][:6] == ["kd_alpha", "runs", "teacher F1", "student (KD) F1", "student alone F1", "KD gain F1"]
    assert sorted((r[0], r[1]) for r in facts["rows"]) == [("0.5", "2"), ("0.9", "1")]
    two_seeds = next(r for r in facts["rows"] if r[0] == "0.5")
    assert " ± " in two_seeds[3] and " ± " in two_seeds[5]  # mean ± std over the two seeds, KD gain too
    assert facts["best"] and len(facts["unfinished"]) == 1 and "out of memory" in facts["unfinished"][0]
    assert [f["name"] for f in facts["figures"]] == ["sweep_heatmap", "sweep_pareto", "sweep_training_curves"]
    assert all(f["width"] > 100 and f["caption"] for f in facts["figures"])
    assert facts["raw_open"] == [False]
    assert (SCREENSHOTS / "report_sweep.png").stat().st_size > 10_000
