"""A notebook review's findings (2026-12-07, evening): a panel or a quick teacher replaced a trained
teacher, a fusion model's VGAE half was said to follow `layers`, and keys a model family does not
read trained to the same loss without a word."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import REPO

from kdkit.config import family_keys_set_unread, make_config
from kdkit.ui.widgets import panel
from kdkit.workflows.run import train
from kdkit.workflows.run_dir import RunDirError, check_run_dir

TINY = {"hidden": 8, "layers": 1, "heads": 1, "embedding_dim": 4, "batch_size": 64, "epochs": 1, "patience": 100,
        "precision": "32-true", "warmup_steps": 2, "accelerator": "cpu", "num_workers": 0, "save_compat": False}


def _cell(notebook: str, needle: str) -> str:
    cells = json.loads((REPO / "notebooks" / f"{notebook}.ipynb").read_text())["cells"]
    return next("".join(c["source"]) for c in cells if needle in "".join(c["source"]))


def test_a_student_is_never_trained_into_the_folder_of_its_teacher(tmp_path: Path):
    """The teacher notebook's panel kept the notebook's run_name and --overwrite: switched to a student of
    that teacher, it removed the teacher's checkpoints and trained the student in their place."""
    run = tmp_path / "runs" / "gat_teacher_panel"
    (run / "checkpoints").mkdir(parents=True)
    teacher = run / "checkpoints" / "best.pt"
    teacher.write_bytes(b"the teacher")
    (run / "summary.json").write_text("{}")
    for overwrite in (True, False):
        cfg = make_config(model="gat", type="student", dataset="synthetic", teacher=str(teacher),
                          runs_dir=str(tmp_path / "runs"), run_name="gat_teacher_panel", overwrite=overwrite)
        with pytest.raises(RunDirError, match="holds the --teacher checkpoint .* this student distils from; training "
                                              "the student there would remove it.*synthetic_gat_student_kd"):
            check_run_dir(run, cfg, None)
    assert teacher.read_bytes() == b"the teacher"
    elsewhere = make_config(model="gat", type="student", dataset="synthetic", teacher=str(teacher),
                            runs_dir=str(tmp_path / "runs"), overwrite=True)
    check_run_dir(tmp_path / "runs" / elsewhere.resolved_run_name, elsewhere, None)  # its own folder: fine


def test_the_teacher_notebooks_panel_starts_from_its_settings_not_its_run_or_sizes():
    source = _cell("teacher", "panel(")
    cfg = make_config(model="gat", type="teacher", dataset="synthetic", epochs=2, learning_rate=0.003, runs_dir="runs/nb",
                      run_name="gat_teacher", save_compat=False, overwrite=True, hidden=32, layers=3, heads=4)
    p = eval(source.strip().splitlines()[-1], {"panel": panel, "cfg": cfg, "sizes": {"hidden": 32, "layers": 3, "heads": 4}})
    p.type.value = "student"
    p.teacher.value = "runs/nb/gat_teacher/checkpoints/best.pt"
    got = p.config()
    assert (got.run_name, got.overwrite, got.hidden, got.layers, got.heads) == (None, False, None, None, None)
    assert (got.learning_rate, got.runs_dir, got.epochs) == (0.003, "runs/nb", 2)
    assert got.resolved_run_name == "synthetic_gat_student_kd"


def test_the_student_notebooks_quick_teacher_has_a_folder_of_its_own():
    """Its quick teacher was `{model}_teacher`, the teacher notebook's run: both notebooks with one run_dir
    replaced the trained teacher (seed, precision and sizes changed; one stdout line said it)."""
    assert 'run_name=f"{model}_teacher"' in _cell("teacher", "make_config(")
    quick = _cell("student", "teacher_cfg = make_config(")
    assert 'run_name=f"{model}_quick_teacher"' in quick and 'run_name=f"{model}_teacher"' not in quick


def test_a_fusion_models_vgae_options_are_not_said_to_follow_layers():
    with pytest.raises(ValueError, match="vgae_layers is the depth of a fusion teacher's VGAE encoder, which keeps "
                                         "its preset's"):
        make_config(model="fusion", vgae_layers=2)
    with pytest.raises(ValueError, match="decoder_heads is set by the config key 'heads' for a vgae model .*a fusion "
                                         "model keeps its preset's"):
        make_config(model="vgae", decoder_heads=2)


def test_keys_a_family_does_not_read_are_said_by_every_front_end(synthetic, tmp_path, caplog):
    """A fusion student with kd_edge_weight 50 trained to the loss of 1 (notebooks pass every parameter,
    so only values away from the default are said)."""
    fusion = make_config(model="fusion", type="student", dataset="synthetic", teacher="t.pt", kd_edge_weight=50.0,
                         kd_latent_weight=0.0, threshold_quantile=0.9, combiner="mlp")
    assert family_keys_set_unread(fusion) == ["threshold_quantile (read by vgae runs; this run is fusion)",
                                              "kd_edge_weight (read by vgae runs; this run is fusion)"]
    gat = make_config(**TINY, model="gat", type="teacher", dataset="synthetic", combiner="mlp", vgae_score="sum",
                      runs_dir=str(tmp_path / "runs"), run_name="g")
    with caplog.at_level(logging.WARNING, logger="kdkit.workflows.run"):
        train(gat, progress=False, data=synthetic)
    said = [r.getMessage() for r in caplog.records if "does not read" in r.getMessage()]
    assert said == ["g: this gat run does not read combiner (read by fusion runs; this run is gat); recorded in "
                    "config.json as set"]
