"""A review running the notebooks headlessly on the DAGA spec and a local sweep (2026-12-08): the
benchmark notebook crashed in section 4 on any dataset whose recordings are no can-train-and-test
CSVs (the pandas baseline read a DAGA zip as one), after the whole training benchmark; a misspelt
model, type or precision of its grid failed in section 3; `kdkit sweep status --sweeps-dir D`
was refused after the sub-command; a second notebook in one run_dir replaced the first's record
without a word."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kdkit.bench import compare
from kdkit.cli.main import main
from kdkit.reporting.records import RunRecord


def test_the_preprocessing_section_measures_kdkit_alone_on_a_recording_the_baseline_cannot_read(tmp_path):
    log = tmp_path / "drive.log"
    log.write_text("".join(f"({100 + i * 0.001:.6f}) can0 {0x100 + i % 7:03X}#0011223344556677\n" for i in range(3000)))
    r = compare.bench_preprocess(log, repeats=2, baseline_limit=1000)
    assert r["speedup"] is None and r["messages"] == 3000 and len(r["rows"]) == 1
    assert len(r["rows"][0]["messages_per_s"]) == 2 and min(r["rows"][0]["messages_per_s"]) > 0
    line = compare.preprocess_headline(r)
    assert "the pandas baseline reads can-train-and-test CSVs only" in line and "messages/s (median)" in line


def test_sample_file_prefers_the_baselines_layout(synthetic):
    f = compare.sample_file("synthetic")
    assert f.suffix == ".csv" and f.resolve() in {Path(p).resolve() for p in synthetic.splits["train"].files}


@pytest.mark.parametrize("grid, words", [
    (dict(models=["gat", "vgea"], types=["student"], precisions=["32-true"]), "models: 'vgea' unknown; choose from gat, vgae"),
    (dict(models=["gat"], types=["studnet"], precisions=["32-true"]), "types: 'studnet' unknown"),
    (dict(models=["gat"], types=["student"], precisions=["fp32"]), "precisions: 'fp32' unknown"),
    (dict(models=[], types=["student"], precisions=["32-true"]), "models: empty"),
])
def test_the_benchmark_grid_is_checked_before_anything_is_measured(grid, words):
    with pytest.raises(ValueError, match=words):
        compare.check_grid(**grid)
    compare.check_grid(models=["gat", "vgae"], types=["teacher", "student"], precisions=["32-true", "bf16-mixed"])


def test_sweeps_dir_is_taken_after_the_sub_command_too(tmp_path, capsys):
    assert main(["sweep", "status", "--sweeps-dir", str(tmp_path)]) == 0
    assert main(["sweep", "--sweeps-dir", str(tmp_path), "status"]) == 0
    out = capsys.readouterr().out
    assert out.count(f"no sweeps in {tmp_path}") == 2


def test_a_second_notebook_in_one_run_dir_says_it_replaces_the_first_record(tmp_path, caplog):
    RunRecord(tmp_path, "teacher", dataset="synthetic").write()
    with caplog.at_level(logging.WARNING):
        RunRecord(tmp_path, "teacher", dataset="synthetic")  # the same notebook again: a rerun, no word
        assert not caplog.records
        RunRecord(tmp_path, "student", dataset="synthetic")
    assert "holds the teacher notebook's record (metrics.json): this student run replaces it" in caplog.text
