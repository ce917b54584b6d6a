"""kdkit.reporting: run records, tables, the HTML report and ``kdkit report``."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import nbformat
import pytest
from matplotlib import pyplot as plt

from kdkit.reporting import headline, html, sweep
from kdkit.reporting import records as report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _summary(run_dir, f1s=(0.5, 1.0), parameters=100):
    scen = {f"s{i}": {"f1": f, "windows": 10, "confusion_matrix": [[1, 0], [0, 1]]} for i, f in enumerate(f1s)}
    return {"model": "gat", "type": "teacher", "kd": False, "parameters": parameters, "size_bytes": 4 * parameters,
            "epochs_run": 2, "train_seconds": 1.5, "precision": "32-true", "threshold": 0.5,
            "best_checkpoint": str(run_dir / "best.pt"), "run_dir": str(run_dir),
            "test": {"scenarios": scen, "overall": {"f1": 0.75, "accuracy": 0.8, "windows": 20,
                                                    "confusion_matrix": [[2, 0], [0, 2]]}}}


def test_table_text_markdown_and_escaped_html():
    t = report.Table([{"name": "a<b", "n": 12345, "x": 0.123456, "none": None}], title="T")
    assert repr(t).splitlines()[0] == "T"
    assert "12,345" in repr(t) and "0.1235" in repr(t) and " -" in repr(t)
    assert t._repr_markdown_().splitlines()[2] == "| name | n | x | none |"
    assert "a&lt;b" in t._repr_html_() and "<caption>T</caption>" in t._repr_html_()


def test_run_record_writes_metrics_figures_and_tables(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"stale": 1}))
    rec = report.RunRecord(tmp_path, "teacher", dataset="synthetic")
    rec.record(f1={"s": 0.5})
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    assert rec.figure(fig, "curve") is fig
    plt.close(fig)
    table = rec.table("rows", [{"a": 1, "b": 2}])
    assert isinstance(table, report.Table)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert "stale" not in m  # a new run replaces the previous record
    assert m["notebook"] == "teacher" and m["dataset"] == "synthetic" and m["f1"] == {"s": 0.5}
    assert m["figures"] == ["curve.png"] and (tmp_path / "curve.png").read_bytes()[:8] == PNG_MAGIC
    assert m["tables"]["rows"] == {"columns": ["a", "b"], "rows": [{"a": 1, "b": 2}]}


def test_run_metrics_and_rows_from_a_summary(tmp_path):
    s = _summary(tmp_path)
    m = report.run_metrics(s)
    assert m["f1"] == {"s0": 0.5, "s1": 1.0} and m["overall"]["f1"] == 0.75 and m["parameters"] == 100
    assert report.run_metrics(s, prefix="t_")["t_parameters"] == 100
    rows = report.scenario_rows(s["test"])
    assert [r["scenario"] for r in rows] == ["s0", "s1", "overall"] and rows[1]["f1"] == 1.0
    assert report.headline({"notebook": "teacher", **m}) == "teacher: 100 parameters, overall F1 0.750"


def test_headline_with_an_undefined_f1():
    """An overall F1 is None when the test data hold no attack windows: shown as "-"."""
    m = {"notebook": "student", "student_kd": {"parameters": 10, "overall": {"f1": None}},
         "student_alone": {"parameters": 10, "overall": {"f1": 0.5}}, "teacher": {"overall": {"f1": None}}}
    assert report.headline(m) == "student: 10 parameters, overall F1 - with KD, 0.500 alone (teacher -)"
    assert report.headline({"notebook": "teacher", "parameters": 5, "overall": {"f1": None}}).endswith("F1 -")


def test_epoch_printer(capsys):
    report.epoch_printer(3)({"epoch": 0, "train_loss": 0.5, "val_loss": 0.25, "val_f1": 1.0, "epoch_seconds": 2.0})
    assert capsys.readouterr().out.strip() == "epoch 1/3  train_loss 0.5000  val_loss 0.2500  val_f1 1.0000  (2.0 s)"


def _run_dir(tmp_path):
    run = tmp_path / "runs" / "demo"
    rec = report.RunRecord(run / "teacher", "teacher", dataset="synthetic", overall={"f1": 0.875}, parameters=100)
    fig, ax = plt.subplots()
    ax.bar([0], [1])
    rec.figure(fig, "bars")
    plt.close(fig)
    rec.table("per_scenario", [{"scenario": "s0", "f1": 0.875}])
    (run / "teacher" / "gat_teacher").mkdir()
    (run / "teacher" / "gat_teacher" / "metrics.json").write_text(json.dumps({"f1": {"s0": 0.1}}))  # kdkit train's
    report.RunRecord(run / "student", "student", dataset="synthetic")
    return run


def test_html_report_of_a_run_dir_is_self_contained(tmp_path):
    run = _run_dir(tmp_path)
    out = html.build_html(run)
    assert out == run / "report.html"
    page = out.read_text()
    # the headline of the teacher record (the only one with a model), then the two records; the nested
    # train record is left to them
    assert page.count("<h2") == 3 and page.index("id='headline'") < page.index("<h2>Teacher training (teacher)</h2>")
    assert page.index("Teacher training (teacher)") < page.index("Student: distilled against trained alone (student)")
    assert "data:image/png;base64," in page and "0.875" in page and "Metrics per test scenario" in page
    assert page.count("<details class='raw'>") == 2  # the raw values folded away, one per record
    assert "src='http" not in page and 'src="http' not in page and "<link" not in page


def test_html_report_of_an_executed_notebook(tmp_path):
    import base64

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1", outputs=[nbformat.v4.new_output(
        "display_data", data={"image/png": base64.b64encode(b"\x89PNG fake").decode(), "text/plain": "<Figure>"})])])
    path = tmp_path / "run.ipynb"
    nbformat.write(nb, path)
    out = html.build_html(path)
    assert out == tmp_path / "run.html" and "data:image/png;base64," in out.read_text()


def test_report_errors_speak(tmp_path, capsys):
    from kdkit.cli.main import main

    with pytest.raises(FileNotFoundError, match="no metrics.json under"):
        html.build_html(tmp_path)
    assert main(["report", str(tmp_path / "nope")]) == 2  # (the text report said "no metrics.json under" it)
    assert f"{tmp_path / 'nope'} does not exist (kdkit report takes a run folder" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match=r"nope does not exist \(a run folder, a runs folder or an executed"):
        html.build_html(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="neither a run folder nor an .ipynb"):
        html.build_html(tmp_path / "file.txt")


def test_cli_report_prints_the_html_path_and_text(tmp_path, capsys):
    from kdkit.cli.main import main

    run = _run_dir(tmp_path)
    assert main(["report", str(run), "--html"]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.html")
    assert main(["report", str(run)]) == 0
    text = capsys.readouterr().out
    assert "overall.f1" in text and "0.875" in text and "figures: bars.png" in text
    assert main(["report", str(tmp_path / "empty")]) == 2


def test_html_report_of_a_kdkit_train_run_draws_from_its_summary(tmp_path):
    run = tmp_path / "hcrl_sa_gat_student"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"f1": {"s0": 0.5}, "parameters": 10}))
    summary = _summary(run)
    summary["history"] = [{"epoch": 0, "train_loss": 1.0, "val_loss": 0.5, "val_f1": 0.5}]
    summary["dataset"] = "hcrl_sa"
    (run / "summary.json").write_text(json.dumps(summary))
    page = html.build_html(run).read_text()
    assert page.count("data:image/png;base64,") == 2  # training curves and confusion matrices
    # the headline of its summary; without config.json no test labels, so no score figures (said so)
    assert "<h2 id='headline-title'>The teacher (gat on hcrl_sa)</h2>" in page and "id='headline'" in page
    assert "no score figures: no config.json in" in page
    assert "<h2>Training run: gat teacher on hcrl_sa (hcrl_sa_gat_student)</h2>" in page
    assert not list(run.glob("*.png"))  # nothing written beside
    assert "<h3>Training curves</h3>" in page and "<h3>Confusion matrices at the threshold</h3>" in page


# ----------------------------------------------------------------------------- headline table
def _model(f1s, mcc=0.5, det=0.75, parameters=100, history=None, types=None):
    """A model entry of a student notebook's metrics.json: ``f1s`` per scenario s0, s1 and overall."""
    scen = {f"s{i}": {"f1": f, "mcc": mcc, "detection_at_1pct_fpr": det, "false_positive_rate": 0.0,
                      "per_attack_type": (types or {}).get(f"s{i}", {})} for i, f in enumerate(f1s[:-1])}
    return {"parameters": parameters, "size_bytes": 4 * parameters, "threshold": 0.5, "scenarios": scen,
            "f1": {k: v["f1"] for k, v in scen.items()}, "history": history or [],
            "overall": {"f1": f1s[-1], "mcc": mcc, "detection_at_1pct_fpr": det}}


def _student_record(kd=(0.8, 0.6, 0.7), alone=(0.7, 0.4, 0.55), teacher=(0.9, 0.8, 0.85), **extra):
    rows = [{"name": "teacher", "latency_ms_p99": 3.0}, {"name": "student (KD)", "latency_ms_p99": 1.0},
            {"name": "student alone", "latency_ms_p99": 1.5}]
    return {"notebook": "student", "started": "2026-01-01T00:00:00", "teacher": _model(teacher, parameters=1000),
            "student_kd": _model(kd), "student_alone": _model(alone), **extra,
            "tables": {"comparison": {"columns": ["name", "latency_ms_p99"], "rows": rows}}, "figures": []}


def _row(h, metric, scenario):
    return next(r for r in h["rows"] if r["metric"] == metric and r["scenario"] == scenario)


def test_headline_puts_models_side_by_side_with_the_kd_gain():
    h = headline.headline([_student_record()])
    assert h["labels"] == ["teacher", "student (KD)", "student alone"] and h["records"] == 1
    assert [(r["metric"], r["scenario"]) for r in h["rows"]][:3] == [("f1", "s0"), ("f1", "s1"), ("f1", "overall")]
    f1 = _row(h, "f1", "s1")
    assert f1["values"] == {"teacher": [0.8], "student_kd": [0.6], "student_alone": [0.4]}
    assert f1["gain"] == [pytest.approx(0.2)]
    lat = _row(h, "latency_ms_p99", "")
    assert lat["values"] == {"teacher": [3.0], "student_kd": [1.0], "student_alone": [1.5]} and lat["gain"] is None
    assert _row(h, "parameters", "")["values"]["teacher"] == [1000]


def test_a_column_over_fewer_runs_than_the_table_says_how_many():
    """A review (2026-12-07): a seed whose student-alone (or teacher) run was missing was averaged
    over the other seeds under a header saying 3 seeds, with no word; a missing KD student changed
    the header. The column and the KD gain now say over how many runs and pairs."""
    full = [_student_record(alone=(0.7, 0.4, a)) for a in (0.5, 0.6, 0.7)]
    lacking = [dict(r) for r in full]
    del lacking[1]["student_alone"]
    h = headline.headline(lacking)
    assert h["labels"] == ["teacher", "student (KD)", "student alone (2 of 3 runs)"]
    assert h["gain_label"] == "KD gain (2 of 3 pairs)" and _row(h, "f1", "overall")["values"]["student_alone"] == [0.5, 0.7]
    text, page = headline.headline_text(h), headline.headline_html(h)
    assert "student alone (2 of 3 runs)" in text and "KD gain (2 of 3 pairs)" in text
    assert "<th>student alone (2 of 3 runs)</th>" in page and "<th>KD gain (2 of 3 pairs)</th>" in page
    whole = headline.headline(full)
    assert whole["labels"] == ["teacher", "student (KD)", "student alone"] and whole["gain_label"] == "KD gain"


def test_headline_over_seeds_is_mean_and_std_with_the_gain_paired_by_seed():
    recs = [_student_record(kd=(0.8, 0.6, 0.7), alone=(0.7, 0.4, 0.5)),
            _student_record(kd=(0.8, 1.0, 0.9), alone=(0.7, 0.4, 0.6))]
    row = _row(headline.headline(recs), "f1", "overall")
    assert row["values"]["student_kd"] == [0.7, 0.9] and row["gain"] == [pytest.approx(0.2), pytest.approx(0.3)]
    assert headline.fmt(row["values"]["student_kd"]) == "0.800 ± 0.141"
    assert headline.fmt(row["gain"], signed=True) == "+0.250 ± 0.071"
    assert headline.fmt([4546, 4546], "parameters") == "4,546" and headline.fmt([], "f1") == "-"
    page = headline.headline_html(headline.headline(recs))
    assert page.startswith("<table class='kdkit headline' id='headline'>")
    assert "<td class='gain up'>+0.250 ± 0.071</td>" in page and "<th>KD gain</th>" in page


def test_headline_takes_a_fused_model_and_an_older_record_with_f1_only():
    rec = _student_record(student_fused=_model((0.95, 0.9, 0.92)))
    old = {"notebook": "student", "teacher": {"parameters": 5, "overall": {"f1": 0.5}, "f1": {"s0": 0.25}},
           "student_kd": {"parameters": 2, "overall": {"f1": 0.2}, "f1": {"s0": 0.125}}}
    h = headline.headline([rec])
    assert h["labels"] == ["teacher", "student (KD)", "student alone", "student (fused)"]
    assert _row(h, "f1", "overall")["values"]["student_fused"] == [0.92]
    h_old = headline.headline([old])
    assert _row(h_old, "f1", "s0")["values"] == {"teacher": [0.25], "student_kd": [0.125]}
    assert _row(h_old, "mcc", "s0")["values"] == {"teacher": [], "student_kd": []}  # not recorded: "-"
    assert all(r["gain"] is None for r in h_old["rows"])  # no student alone: no KD gain column
    assert "KD gain" not in headline.headline_html(h_old)
    with pytest.raises(ValueError, match="no model entry"):
        headline.headline([{"notebook": "benchmark"}])


def test_run_metrics_records_per_scenario_metrics_attack_types_and_history(tmp_path):
    s = _summary(tmp_path)
    s["test"]["scenarios"]["s0"].update(mcc=0.25, detection_at_1pct_fpr=0.5, false_positive_rate=0.125,
                                        per_attack_type={"DoS": {"windows": 4, "recall": 0.75}})
    s["test"]["overall"]["detection_at_1pct_fpr"] = 0.625
    s["history"] = [{"epoch": 0, "train_loss": 1.0, "val_f1": 0.5, "lr": 0.1}]
    m = report.run_metrics(s)
    assert m["scenarios"]["s0"]["mcc"] == 0.25 and m["scenarios"]["s0"]["false_positive_rate"] == 0.125
    assert m["scenarios"]["s0"]["per_attack_type"] == {"DoS": 0.75} and m["scenarios"]["s1"]["mcc"] is None
    assert m["overall"]["detection_at_1pct_fpr"] == 0.625
    assert m["history"] == [{"epoch": 0, "train_loss": 1.0, "val_f1": 0.5}]  # the curve, not every logged key
    assert report.attack_recall({"notebook": "student", "student_kd": {**m, "parameters": 1}}) == {
        "student (KD)": {"s0": {"DoS": 0.75}, "s1": {}}}


def test_scores_saved_beside_metrics_and_loaded_back(tmp_path):
    import numpy as np
    import torch

    class Split:
        def __init__(self, y):
            self.y = torch.tensor(y)

    data = type("Data", (), {"splits": {"s0": Split([0, 1, 1]), "s1": Split([0, 0])}})()
    runs = {}
    for name, s0 in (("kd", [0.1, 0.9, 0.4]), ("alone", [0.2, 0.6, 0.7])):
        (tmp_path / name).mkdir()
        np.savez(tmp_path / name / "test_scores.npz", s0=np.array(s0), s1=np.array([0.3, 0.05]))
        runs[name] = {"run_dir": str(tmp_path / name), "test": {"scenarios": {"s0": {}, "s1": {}}}}
    path = report.save_scores(tmp_path, {"student_kd": runs["kd"], "student_alone": runs["alone"]}, data)
    assert path == tmp_path / "scores.npz"
    got = report.load_scores(tmp_path)
    assert set(got) == {"label", "student_kd", "student_alone"}
    assert got["label"]["s0"].tolist() == [0, 1, 1] and got["label"]["s0"].dtype == np.uint8
    assert got["student_alone"]["s0"].tolist() == pytest.approx([0.2, 0.6, 0.7])
    assert got["student_kd"]["s1"].dtype == np.float32
    assert report.load_scores(tmp_path / "kd") == {}
    with pytest.raises(ValueError, match="may not contain '/'"):
        report.save_scores(tmp_path, {"a/b": runs["kd"]}, data)


def test_smoke_label_below_the_measurement_settings():
    assert report.smoke_label(steps=2, repeats=2) == "smoke run: 2 steps, 2 repeats, not a measurement"
    assert report.smoke_label(steps=30, repeats=5) is None
    label = report.smoke_label(infer_seconds=3.0, infer_calls=200)
    assert label.startswith("smoke run: 3 infer seconds, 200 infer calls")
    with pytest.raises(ValueError, match="unknown setting"):
        report.smoke_label(epochs=1)


def test_run_report_opens_with_the_headline_and_draws_from_the_scores(tmp_path):
    import numpy as np

    run = tmp_path / "student"
    run.mkdir()
    types = {"s0": {"DoS": 0.5, "fuzzing": 1.0}}
    history = [{"epoch": 0, "val_loss": 0.5, "val_f1": 0.25}, {"epoch": 1, "val_loss": 0.4, "val_f1": 0.5}]
    rec = _student_record()
    rec["student_kd"] = _model((0.8, 0.6, 0.7), types=types, history=history)
    (run / "metrics.json").write_text(json.dumps(rec))
    y = np.array([0, 0, 1, 1], np.uint8)
    np.savez(run / "scores.npz", **{"label/s0": y, "label/s1": y, "teacher/s0": [0.1, 0.2, 0.8, 0.9],
                                    "teacher/s1": [0.1, 0.6, 0.4, 0.9], "student_kd/s0": [0.3, 0.2, 0.6, 0.9],
                                    "student_kd/s1": [0.1, 0.2, 0.3, 0.9], "student_alone/s0": [0.1, 0.2, 0.3, 0.4],
                                    "student_alone/s1": [0.5, 0.5, 0.5, 0.5]})
    page = html.build_html(tmp_path).read_text()
    assert page.index("id='headline'") < page.index("<figure") and page.count("id='headline'") == 1
    figures = [f.split("'")[0] for f in page.split("data-figure='")[1:]]
    assert figures == ["roc_pr_over_teacher", "score_histograms_kd", "attack_recall", "training_curves_overlay"]
    assert "<th>KD gain</th>" in page and "<td class='gain up'>+0.150</td>" in page  # overall F1 0.7 - 0.55
    assert "<h3>Recall per attack type</h3>" in page and "<figcaption>" in page


# ----------------------------------------------------------------------------- sweep report
def _sweep(tmp_path, rows, grid=None):
    d = tmp_path / "sweep"
    d.mkdir(exist_ok=True)
    (d / "results.json").write_text(json.dumps({"sweep": "kd", "notebook": "notebooks/student.ipynb",
                                                "grid": grid or {"kd_temperature": [2.0, 4.0], "kd_alpha": [0.5]},
                                                "seeds": [0, 1], "rows": rows}))
    return d


def _task(task, T, seed, kd_f1, alone_f1=0.5, state="COMPLETED", error=None):
    hist = [{"epoch": 0, "val_loss": 0.5, "val_f1": 0.25}]
    metrics = _student_record(kd=(kd_f1, kd_f1, kd_f1), alone=(alone_f1,) * 3) if state == "COMPLETED" else {}
    if metrics:
        metrics["student_kd"]["history"] = hist
    return {"task": task, "state": state, "seed": seed, "params": {"kd_temperature": T, "kd_alpha": 0.5},
            "run_dir": f"runs/{task}", "job_id": f"7_{task}", "error": error, "metrics": metrics}


def test_sweep_report_pools_seeds_lists_failures_and_draws_the_figures(tmp_path):
    rows = [_task(0, 2.0, 0, 0.6), _task(1, 2.0, 1, 0.8), _task(2, 4.0, 0, 0.9, alone_f1=0.95),
            _task(3, 4.0, 1, None, state="FAILED", error="cell 8: RuntimeError: boom"),
            {**_task(4, 4.0, 2, 0.1), "metrics": {}}]  # completed, but nothing collected
    d = _sweep(tmp_path, rows)
    table = sweep.sweep_rows(sweep.load_results(d))
    assert [(r["kd_temperature"], r["runs"]) for r in table] == [(4.0, 1), (2.0, 2)]  # best KD student first
    assert "kd_alpha" not in table[0]  # one value only: not a column
    assert table[1]["_values"]["student (KD) F1"] == ("f1", [0.6, 0.8])
    assert table[1]["_values"]["KD gain F1"][1] == [pytest.approx(0.1), pytest.approx(0.3)]
    assert table[0]["_values"]["student (KD) p99 ms"] == ("latency_ms_p99", [1.0])
    lost = sweep.unfinished(sweep.load_results(d))
    assert [(r["task"], r["state"]) for r in lost] == [(3, "FAILED"), (4, "COMPLETED")]
    assert lost[0]["error"] == "cell 8: RuntimeError: boom" and "no metrics.json" in lost[1]["error"]
    # a notebook's traceback: the cell shows its exception line, not 20 lines of it
    long = "Traceback (most recent call last):\n" + "  File x, line 1\n" * 20 + "\x1b[0;31mValueError\x1b[0m: bad value\n\n"
    assert sweep.error_line(long) == "ValueError: bad value" and sweep.error_line(None) == ""
    assert len(sweep.error_line("E: " + "x" * 500)) == 240
    page = sweep.build_sweep_report(d).read_text()
    assert (d / "report.html").is_file() and page.count("id='headline'") == 1 and "id='headline-best'" in page
    assert "<td>0.700 ± 0.141</td>" in page and "<td class='gain up'>+0.200 ± 0.141</td>" in page
    assert "<td class='gain down'>-0.050</td>" in page
    assert 'id="unfinished"' in page and "RuntimeError: boom" in page
    figures = [f.split("'")[0] for f in page.split("data-figure='")[1:]]
    assert figures == ["sweep_heatmap", "sweep_pareto", "sweep_training_curves"]
    assert "<summary>every task (5)</summary>" in page
    # the figures are files too, for a paper: a PNG and a vector PDF each, named in the page
    for name in figures:
        png, pdf = (d / "figures" / f"{name}.png").read_bytes(), (d / "figures" / f"{name}.pdf").read_bytes()
        assert png.startswith(b"\x89PNG") and pdf.startswith(b"%PDF") and f"figures/{name}.pdf" in page
    assert not list((d / "figures").glob(".*"))  # no temp file left


def test_sweep_with_nothing_finished_still_reports(tmp_path):
    d = _sweep(tmp_path, [_task(0, 2.0, 0, None, state="PENDING")])
    page = sweep.build_sweep_report(d, tmp_path / "r.html").read_text()
    assert "no task finished" in page and "PENDING" in page and "data-figure" not in page
    assert not (tmp_path / "figures").exists()  # nothing drawn: no empty folder


def test_sweep_results_errors_name_the_file_and_row(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.json does not exist"):
        sweep.load_results(tmp_path)
    d = _sweep(tmp_path, [{"task": 0, "state": "COMPLETED"}])
    with pytest.raises(sweep.SweepFormatError, match=r"results.json: rows\[0\] lacks params"):
        sweep.load_results(d)
    (d / "results.json").write_text("{")
    with pytest.raises(sweep.SweepFormatError, match="not JSON"):
        sweep.load_results(d)


def test_heatmap_axes_are_the_two_grid_parameters_with_most_values():
    grid = {"hidden": [8], "kd_alpha": [0.3, 0.7], "kd_temperature": [1.0, 2.0, 4.0], "seed": [0, 1, 2, 3]}
    assert sweep.heatmap_axes({"grid": grid}) == ("kd_temperature", [1.0, 2.0, 4.0], "kd_alpha", [0.3, 0.7])
    assert sweep.heatmap_axes({"grid": {"kd_alpha": [0.3, 0.7], "hidden": [8]}}) == ("kd_alpha", [0.3, 0.7], "", [None])
    assert sweep.heatmap_axes({"grid": {"hidden": [8]}}) is None


def test_cli_report_detects_a_sweep_folder(tmp_path, capsys):
    from kdkit.cli.main import main

    d = _sweep(tmp_path, [_task(0, 2.0, 0, 0.6)])
    assert main(["report", str(d), "--html"]) == 0
    assert capsys.readouterr().out.strip() == str(d / "report.html")
    assert "kdkit sweep report: kd" in (d / "report.html").read_text()
    assert main(["report", str(d)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "sweep kd: mean ± sample std over seeds"
    assert lines[1].split()[:3] == ["kd_temperature", "runs", "teacher"]
    assert lines[3].split()[:5] == ["2", "1", "0.850", "0.600", "0.500"]  # T, runs, teacher/KD/alone overall F1


def test_run_report_of_a_teacher_alone_has_no_kd_gain_and_no_over_teacher_curves(tmp_path):
    import numpy as np

    rec = {"notebook": "teacher", "started": "2026-01-01", **_model((0.5, 1.0, 0.75), types={"s0": {"DoS": 0.5}})}
    (tmp_path / "metrics.json").write_text(json.dumps(rec))
    y = np.array([0, 1], np.uint8)
    np.savez(tmp_path / "scores.npz", **{"label/s0": y, "label/s1": y, "teacher/s0": [0.2, 0.7],
                                        "teacher/s1": [0.1, 0.9]})
    page = html.build_html(tmp_path).read_text()
    assert "<h2 id='headline-title'>The teacher</h2>" in page and "KD gain" not in page
    figures = [f.split("'")[0] for f in page.split("data-figure='")[1:]]
    assert figures == ["score_histograms_teacher", "attack_recall"]


def test_an_empty_table_says_it_has_no_rows():
    from kdkit.reporting.records import Table

    t = Table([], title="first alarms (0 in all)")
    assert repr(t) == "first alarms (0 in all)\n(no rows)"
    assert "(no rows)" in t._repr_html_() and "<table" not in t._repr_html_()
    assert t._repr_markdown_() == "**first alarms (0 in all)**\n\n(no rows)"


def test_stop_note_says_why_a_run_ended_before_its_last_epoch():
    from kdkit.reporting.records import stop_note

    summary = {"epochs_run": 7, "best_checkpoint": "runs/x/checkpoints/best.pt"}
    assert stop_note(summary, 50, 5) == "stopped early after epoch 7/50: no better validation for 5 epochs"
    assert stop_note(summary, 50, 5, requested=True) == "stopped on request after epoch 7/50"
    assert stop_note({**summary, "epochs_run": 50}, 50, 5) == ""


def test_one_teacher_given_to_every_seed_is_one_value_not_a_zero_spread(tmp_path):
    """--teacher-checkpoint / --teacher-notebook: every seed's record holds the same teacher, and the
    table said "0.850 ± 0.000", a teacher without seed-to-seed spread."""
    rows = [_task(0, 2.0, 0, 0.6), _task(1, 2.0, 1, 0.8)]
    for r in rows:
        r["metrics"]["teacher"]["checkpoint"] = "runs/sweeps/s/teacher/checkpoints/best.pt"
        r["metrics"]["student_kd"]["checkpoint"] = f"runs/{r['task']}/kd/checkpoints/best.pt"
    table = sweep.sweep_rows(sweep.load_results(_sweep(tmp_path, rows, grid={"kd_temperature": [2.0]})))
    assert table[0]["_values"]["teacher F1"] == ("f1", [0.85]) and table[0]["runs"] == 2
    assert table[0]["_values"]["student (KD) F1"] == ("f1", [0.6, 0.8])  # distinct runs: both
    assert "0.850 ± " not in sweep.sweep_text(tmp_path / "sweep")
    for i, r in enumerate(rows):  # each seed trained its own teacher: pooled as before
        r["metrics"]["teacher"]["checkpoint"] = f"runs/{i}/teacher/checkpoints/best.pt"
    table = sweep.sweep_rows(sweep.load_results(_sweep(tmp_path, rows, grid={"kd_temperature": [2.0]})))
    assert table[0]["_values"]["teacher F1"] == ("f1", [0.85, 0.85])


def test_notebook_records_of_several_seeds_are_pooled_in_both_reports(tmp_path, capsys):
    """A sweep's tasks (or any folder of student notebook runs of one setting and several seeds): the
    reports opened with one task's table; they now open with mean ± std over the seeds, and a teacher
    given to every seed is one value."""
    from kdkit.cli.main import main

    for seed, kd in ((0, 0.6), (1, 0.8)):
        rec = _student_record(kd=(kd, kd, kd))
        rec["notebook_parameters"] = {"model": "gat", "epochs": 1, "seed": seed, "run_dir": f"runs/t{seed}"}
        rec["teacher"]["checkpoint"] = "runs/teacher/checkpoints/best.pt"
        (tmp_path / f"t{seed}").mkdir()
        (tmp_path / f"t{seed}" / "metrics.json").write_text(json.dumps(rec))
    other = _student_record()  # another setting (epochs 5): not pooled with them
    other["notebook_parameters"] = {"model": "gat", "epochs": 5, "seed": 0, "run_dir": "runs/x"}
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "metrics.json").write_text(json.dumps({**other, "started": "2025-01-01T00:00:00"}))
    assert main(["report", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    first = text.split("\n\n")[0]
    assert first.startswith("== over 2 seeds (0, 1): ") and "0.700 ± 0.141" in first  # KD overall F1 0.6 / 0.8
    assert "0.850 ±" not in first and "0.850" in first  # the one teacher: one value
    page = html.build_html(tmp_path).read_text()
    assert "Over 2 seeds (0, 1)</h2>" in page and page.index("headline-seeds") < page.index("id='headline'")


def test_a_grid_point_no_better_than_chance_is_said_though_f1_ranks_it(tmp_path):
    """A 1-epoch KD student that flags most windows ranked "best" by F1 with an MCC below 0."""
    rows = [_task(0, 2.0, 0, 0.6), _task(1, 4.0, 0, 0.5)]
    rows[0]["metrics"]["student_kd"]["overall"]["mcc"] = -0.08  # ranked first by F1 0.6
    d = _sweep(tmp_path, rows)
    text = sweep.sweep_text(d)
    assert ("note: kd_temperature = 2: student (KD) MCC -0.080, no better than chance, though its F1 ranks it"
            in text) and "kd_temperature = 4" not in text.split("note:")[1]
    page = sweep.build_sweep_report(d).read_text()
    assert "<p class='warning chance'>kd_temperature = 2: student (KD) MCC -0.080" in page
    rows = [_task(0, 2.0, 0, 0.0)]  # F1 0: it flags nothing (the note said "the F1 of flagging most windows")
    rows[0]["metrics"]["student_kd"]["overall"]["mcc"] = 0.0
    (tmp_path / "zero").mkdir()
    text = sweep.sweep_text(_sweep(tmp_path / "zero", rows))
    assert "student (KD) MCC +0.000 and F1 0: it flags no attack window" in text and "flagging most" not in text


def test_a_sweep_over_seeds_alone_reports_its_one_setting(tmp_path):
    """`kdkit sweep --notebook ... --seeds 0,1` without a grid was refused ("needs --grid"): a
    setting over seeds is the commonest sweep of all. Planned, and reported as one row over seeds."""
    rows = [_task(0, 2.0, 0, 0.6), _task(1, 2.0, 1, 0.8)]
    for r in rows:
        r["params"] = {}
    text = sweep.sweep_text(_sweep(tmp_path, rows, grid={}))
    assert "0.700 ± 0.141" in text


def test_kdkit_sweep_plans_seeds_without_a_grid(tmp_path, capsys, monkeypatch):
    from kdkit.cli.main import main

    monkeypatch.chdir(tmp_path)
    from test_notebook_findings import fake_checkpoint

    teacher = fake_checkpoint(tmp_path / "t.pt")  # the plan checks it against each task (family, data)
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "student.ipynb"
    assert main(["sweep", "--notebook", str(notebook), "--seeds", "0,1,2", "--dry-run",
                 "--teacher-checkpoint", str(teacher), "-p", "epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "3 task(s) of" in out and "     2 seed=2" in out
