"""kdkit.reporting: run records, tables, the HTML report and ``kdkit report``."""
from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import nbformat
import pytest
from matplotlib import pyplot as plt

from kdkit.reporting import html
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
    rec = report.RunRecord(run / "teacher", "teacher", dataset="synthetic", overall={"f1": 0.875})
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
    assert page.count("<h2>") == 2  # the two notebook records; the nested train record is left to them
    assert page.index("teacher: teacher") < page.index("student: student")
    assert "data:image/png;base64," in page and "0.875" in page and "per scenario" in page
    assert "src='http" not in page and 'src="http' not in page and "<link" not in page


def test_html_report_of_an_executed_notebook(tmp_path):
    import base64

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1", outputs=[nbformat.v4.new_output(
        "display_data", data={"image/png": base64.b64encode(b"\x89PNG fake").decode(), "text/plain": "<Figure>"})])])
    path = tmp_path / "run.ipynb"
    nbformat.write(nb, path)
    out = html.build_html(path)
    assert out == tmp_path / "run.html" and "data:image/png;base64," in out.read_text()


def test_report_errors_speak(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.json under"):
        html.build_html(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a run folder nor an .ipynb"):
        html.build_html(tmp_path / "nope")


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
    (run / "summary.json").write_text(json.dumps(summary))
    page = html.build_html(run).read_text()
    assert page.count("data:image/png;base64,") == 2  # training curves and confusion matrices
    assert "<h2>run: hcrl_sa_gat_student</h2>" in page and not list(run.glob("*.png"))  # nothing written beside
