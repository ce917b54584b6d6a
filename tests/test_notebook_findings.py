"""Findings of the notebook review (2026-12-07): stale figures and unfinished runs in reports, the
benchmark's and gateway's parameters checked in the first cell, the gateway's in-sample warning, the
sweep plan's teacher check per task, the teacher's data against the student notebook's, and a
report headline per model family of notebook records.

Most tests call the check and report functions on hand-made checkpoints and record folders (no
training); two run a notebook with papermill where the notebook itself is what changed.

Run: .venv/bin/python -m pytest tests/test_notebook_findings.py -q
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdkit.cluster import sweep as sw
from kdkit.data.datasets import file_sha256
from kdkit.reporting import html as report_html
from kdkit.reporting import records
from kdkit.training.checkpoint import CHECKPOINT_FORMAT
from kdkit.workflows import notebooks as nbs

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
STUDENT = NOTEBOOKS / "student.ipynb"


def fake_checkpoint(path: Path, role: str = "teacher", kind: str = "gat", dataset: str = "synthetic",
                    synthetic_seed: int | None = 0, training_files: dict | None = None) -> Path:
    """A checkpoint file with what the checks read (role, family, data), and no weights."""
    tc = {"type": role, "model": kind, "dataset": dataset, "synthetic_seed": synthetic_seed}
    prov = {"role": role, "family": kind, "dataset": dataset, "synthetic_seed": synthetic_seed, "vocab_hash": None,
            "vocab_size": 4, "graph": {}, "kd": False, "teacher": None, "training_files": training_files or {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": CHECKPOINT_FORMAT, "model": {}, "model_config": {"kind": kind}, "train_config": tc,
                "vocab": [1, 2, 3], "threshold": 0.5, "provenance": prov}, path)
    return path


def entry(f1: float, parameters: int = 1000) -> dict:
    return {"overall": {"f1": f1}, "parameters": parameters, "size_bytes": 4 * parameters,
            "scenarios": {"test_01": {"f1": f1}}, "f1": {"test_01": f1}}


def student_record(folder: Path, model: str, started: str, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    m = {"notebook": "student", "started": started, "model": model, "dataset": "synthetic",
         "teacher": entry(0.9, 5000), "student_kd": entry(0.8), "student_alone": entry(0.7), "figures": [],
         "tables": {}, **extra}
    (folder / "metrics.json").write_text(json.dumps(m))
    return folder / "metrics.json"


def png(path: Path) -> None:
    """A tiny PNG file (the report embeds bytes; it does not decode them)."""
    path.write_bytes(b"\x89PNG\r\n\x1a\nstale")


# ----------------------------------------------------------------------------- A: unfinished runs, stale PNGs
def test_run_record_is_complete_only_after_its_final_write(tmp_path):
    rec = records.RunRecord(tmp_path, "teacher", dataset="synthetic")
    saved = json.loads(rec.path.read_text())
    assert saved["record_version"] == records.RECORD_VERSION and saved["completed"] is None
    assert records.unfinished(saved)
    rec.record(parameters=3)  # a step on the way does not complete it
    assert records.unfinished(json.loads(rec.path.read_text()))
    rec.write()  # the notebooks' last cell: print("recorded:", rec.write())
    done = json.loads(rec.path.read_text())
    assert done["completed"] and not records.unfinished(done)
    assert not records.unfinished({"notebook": "teacher", "figures": []})  # an older record: not flagged


def test_every_notebook_ends_with_the_completing_write():
    for name in ("teacher", "student", "benchmark", "gateway"):
        cells = [c for c in json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())["cells"] if c["cell_type"] == "code"]
        last = [c for c in cells if "rec." in "".join(c["source"])][-1]  # (a panel may follow, recording nothing)
        assert "rec.write()" in "".join(last["source"]), name


def test_failed_rerun_shows_no_stale_figures_and_says_it_did_not_finish(tmp_path):
    run = tmp_path / "bench"
    run.mkdir()
    png(run / "train_graphs_per_s.png")  # the previous run's figure
    records.RunRecord(run, "benchmark", dataset="synthetic")  # the re-run failed before its first figure
    page = report_html.run_dir_html(tmp_path).read_text()
    assert "data-figure='train_graphs_per_s'" not in page
    assert "this run did not finish" in page.lower()
    text = report_html.text_summary(tmp_path)
    assert "this run did not finish" in text


def test_an_older_record_without_the_figure_list_still_shows_its_pngs_and_is_not_flagged(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    png(run / "preprocess.png")
    (run / "metrics.json").write_text(json.dumps({"notebook": "benchmark", "started": "2026-01-01", "tables": {}}))
    page = report_html.run_dir_html(tmp_path).read_text()
    assert "data-figure='preprocess'" in page
    assert "did not finish" not in page and "did not finish" not in report_html.text_summary(tmp_path)


def test_a_student_run_that_stopped_after_its_teacher_is_reported_not_a_key_error(tmp_path):
    rec = records.RunRecord(tmp_path / "s", "student", dataset="synthetic", model="gat")
    rec.record(teacher=entry(0.9, 5000))
    text = report_html.text_summary(tmp_path)
    assert "partial record" in text and "this run did not finish" in text
    assert "did not finish" in report_html.run_dir_html(tmp_path).read_text()


# ----------------------------------------------------------------------------- B: the benchmark's checkpoint
def test_benchmark_checkpoint_is_checked_as_a_student(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"benchmark.ipynb parameter checkpoint='nope/best.pt'"):
        nbs.check_student_checkpoint("benchmark.ipynb", {"checkpoint": "nope/best.pt"})
    teacher = fake_checkpoint(tmp_path / "t.pt", "teacher")
    with pytest.raises(ValueError, match=r"parameter checkpoint=.*a teacher checkpoint \(gat\), not a student"):
        nbs.check_student_checkpoint("benchmark.ipynb", {"checkpoint": str(teacher)})
    student = fake_checkpoint(tmp_path / "s.pt", "student")
    assert nbs.check_student_checkpoint("benchmark.ipynb", {"checkpoint": str(student)}) == "student"
    assert nbs.check_student_checkpoint("benchmark.ipynb", {"checkpoint": ""}) == "student"


def test_benchmark_checks_its_checkpoint_in_the_first_cell():
    cells = [c for c in json.loads((NOTEBOOKS / "benchmark.ipynb").read_text())["cells"] if c["cell_type"] == "code"]
    first = "".join(cells[1]["source"])  # after the parameters cell
    assert "check_student_checkpoint(" in first and first.index("check_student_checkpoint(") < first.index("RunRecord(")
    inference = next("".join(c["source"]) for c in cells if "bench_infer(" in "".join(c["source"]))
    assert "{student_role}" in inference and "} student, " not in inference


def test_benchmark_notebook_with_a_missing_checkpoint_fails_before_its_record(tmp_path):
    pm = pytest.importorskip("papermill")
    run = tmp_path / "bm"
    with pytest.raises(pm.PapermillExecutionError, match="parameter checkpoint="):
        pm.execute_notebook(str(NOTEBOOKS / "benchmark.ipynb"), str(tmp_path / "bm.ipynb"), kernel_name=nbs.KERNEL,
                            parameters={"checkpoint": str(tmp_path / "nope.pt"), "run_dir": str(run)},
                            progress_bar=False, cwd=str(tmp_path))
    assert not (run / "metrics.json").exists()


# ----------------------------------------------------------------------------- C: the gateway's parameters
@pytest.mark.parametrize("values, error, pattern", [
    ({"recording": "nope.log"}, FileNotFoundError, r"gateway.ipynb parameter recording='nope.log'"),
    ({"model_path": "nope.pt"}, FileNotFoundError, r"gateway.ipynb parameter model_path='nope.pt'"),
    ({"threshold": -5}, ValueError, r"gateway.ipynb parameter threshold=-5: outside \[0, 1\]"),
    ({"bus": "foo"}, ValueError, r"gateway.ipynb parameter bus='foo': expected INTERFACE:CHANNEL"),
    ({"bus": "sockecan:can0"}, ValueError, r"parameter bus='sockecan:can0': python-can has no interface.*socketcan"),
])
def test_gateway_parameters_are_checked_by_check_notebook(tmp_path, monkeypatch, values, error, pattern):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=pattern):
        nbs.check_notebook("gateway", values)


def test_gateway_accepts_good_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cap.log").write_text("(0.0) can0 123#00\n")
    ck = fake_checkpoint(tmp_path / "s.pt", "student")
    nbs.check_notebook("gateway", {"recording": "cap.log", "model_path": str(ck), "threshold": 0.3})
    nbs.check_notebook("gateway", {"bus": "virtual:demo", "recording": "absent.log"})  # a bus: no file replayed
    vgae = fake_checkpoint(tmp_path / "v.pt", "student", kind="vgae")  # an anomaly score: any finite threshold
    nbs.check_notebook("gateway", {"model_path": str(vgae), "threshold": 7.5})


def test_gateway_notebook_with_a_missing_recording_fails_before_its_record(tmp_path):
    pm = pytest.importorskip("papermill")
    run = tmp_path / "gw"
    with pytest.raises(pm.PapermillExecutionError, match="parameter recording="):
        pm.execute_notebook(str(NOTEBOOKS / "gateway.ipynb"), str(tmp_path / "gw.ipynb"), kernel_name=nbs.KERNEL,
                            parameters={"recording": "nope.log", "run_dir": str(run)}, progress_bar=False,
                            cwd=str(tmp_path))
    assert not (run / "metrics.json").exists()


# ----------------------------------------------------------------------------- D: in-sample recording
def test_in_sample_warning_names_a_training_recording(tmp_path, capsys):
    rec = tmp_path / "DoS-alpha.csv"
    rec.write_text("Timestamp,ID,DLC,Data,label\n0.0,123,1,00,0\n")
    other = tmp_path / "other.csv"
    other.write_text("Timestamp,ID,DLC,Data,label\n0.0,124,1,00,0\n")
    ck = fake_checkpoint(tmp_path / "s.pt", "student",
                         training_files={"train_02_with_attacks/DoS-alpha.csv": file_sha256(rec)})
    text = nbs.in_sample_warning(ck, rec)
    assert text and "train_02_with_attacks/DoS-alpha.csv" in text and "in-sample" in text
    assert "Warning: " in capsys.readouterr().out
    assert nbs.in_sample_warning(ck, other) is None
    line = records.gateway_line({"counts": {"windows": 10, "alarms": 2}, "in_sample_warning": text})
    assert "in-sample" in line


def test_gateway_notebook_records_the_in_sample_warning():
    cells = [c for c in json.loads((NOTEBOOKS / "gateway.ipynb").read_text())["cells"] if c["cell_type"] == "code"]
    model_cell = next("".join(c["source"]) for c in cells if "Detector.load(" in "".join(c["source"]))
    assert "in_sample_warning(model, source)" in model_cell and "in_sample_warning=seen" in model_cell


# ----------------------------------------------------------------------------- E: the sweep plan's teacher check
def test_sweep_plan_checks_the_teacher_checkpoint_against_each_task(tmp_path):
    teacher = fake_checkpoint(tmp_path / "t.pt", "teacher", kind="gat")
    with pytest.raises(sw.SweepError, match=r"task 1 .*gat teacher and model='vgae'"):
        sw.plan(STUDENT, {"model": ["gat", "vgae"]}, parameters={"epochs": 1}, teacher_checkpoint=teacher,
                sweeps_dir=tmp_path)
    spec = sw.plan(STUDENT, {"kd_alpha": [0.5, 0.7]}, parameters={"epochs": 1}, teacher_checkpoint=teacher,
                   sweeps_dir=tmp_path)
    assert len(spec["tasks"]) == 2


def test_sweep_plan_checks_the_teacher_notebooks_family_against_each_task(tmp_path):
    with pytest.raises(sw.SweepError, match=r"task 1 .*gat teacher .*model='vgae'"):
        sw.plan(STUDENT, {"model": ["gat", "vgae"]}, parameters={"epochs": 1},
                teacher_notebook=NOTEBOOKS / "teacher.ipynb", teacher_parameters={"model": "gat"}, sweeps_dir=tmp_path)


# ----------------------------------------------------------------------------- F: the teacher's data
def test_teacher_of_another_synthetic_seed_is_refused_in_the_first_cell(tmp_path):
    teacher = fake_checkpoint(tmp_path / "t.pt", "teacher", synthetic_seed=1)
    with pytest.raises(ValueError, match=r"teacher_checkpoint=.*synthetic_seed=1 and synthetic_seed=0"):
        nbs.check_teacher_checkpoint(STUDENT, {"teacher_checkpoint": str(teacher), "synthetic_seed": 0})
    nbs.check_teacher_checkpoint(STUDENT, {"teacher_checkpoint": str(teacher), "synthetic_seed": 1})


def test_teacher_of_another_dataset_is_refused_in_the_first_cell(tmp_path):
    teacher = fake_checkpoint(tmp_path / "t.pt", "teacher", dataset="hcrl_sa", synthetic_seed=None)
    with pytest.raises(ValueError, match=r"trained on dataset 'hcrl_sa' and dataset='synthetic'"):
        nbs.check_teacher_checkpoint(STUDENT, {"teacher_checkpoint": str(teacher)})


# ----------------------------------------------------------------------------- G: a headline per family
def test_notebook_report_has_a_headline_per_model_family_and_names_the_others(tmp_path):
    student_record(tmp_path / "gat_a", "gat", "2026-12-07T10:00")
    student_record(tmp_path / "gat_b", "gat", "2026-12-07T11:00")
    student_record(tmp_path / "vgae_a", "vgae", "2026-12-07T12:00")
    page = report_html.run_dir_html(tmp_path).read_text()
    assert "id='headline'" in page and "id='headline-2'" in page
    assert "(vgae on synthetic)" in page and "(gat on synthetic)" in page
    assert "1 other gat student notebook run(s) in this folder, not in this table: gat_a" in page
    text = report_html.text_summary(tmp_path)
    heads = [line for line in text.splitlines() if line.startswith("== Teacher, KD student and student alone")]
    assert len(heads) == 2 and "vgae on synthetic" in heads[0] and "gat on synthetic" in heads[1]
    assert "not in this table: gat_a" in text


def test_one_family_keeps_its_single_headline(tmp_path):
    student_record(tmp_path / "only", "gat", "2026-12-07T10:00")
    page = report_html.run_dir_html(tmp_path).read_text()
    assert "id='headline-2'" not in page and "not in this table" not in page

