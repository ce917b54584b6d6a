"""The recipes of docs/DESIGN.md, run as written there: each extension point works end to end.

Run: .venv/bin/python -m pytest tests/test_recipes.py -q
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from kdkit.data.loader import collate_indices

REPO = Path(__file__).resolve().parent.parent
DESIGN = (REPO / "docs" / "DESIGN.md").read_text()


def recipe(title: str, lang: str = "python") -> str:
    """The first ``lang`` code block under the ``### title`` heading of docs/DESIGN.md."""
    section = DESIGN.split(f"### {title}\n", 1)[1].split("\n### ", 1)[0]
    return re.search(rf"```{lang}\n(.*?)```", section, re.S).group(1)


def test_recipe_dataset_reader(tmp_path, monkeypatch):
    from kdkit.data import readers

    monkeypatch.setattr(readers, "_EXTRA_READERS", {})
    namespace: dict = {}
    exec(recipe("Add a dataset reader"), namespace)
    path = tmp_path / "drive.kvlog"
    path.write_text("t=0.001 id=1A0 data=0102 label=0\nt=0.002 id=7FF data=0102030405060708 label=1\n")
    msgs = readers.read_messages(path)
    assert msgs.can_id.tolist() == [0x1A0, 0x7FF] and msgs.dlc.tolist() == [2, 8] and msgs.label.tolist() == [0, 1]
    assert msgs.payload[0, :3].tolist() == [1, 2, 0]
    assert ".kvlog" in readers.data_suffixes() and ".kvlog.gz" in readers.data_suffixes()
    path.write_text("t=0.001 id=1A0 data=0102 label=0\nnonsense\n")
    with pytest.raises(readers.DataFormatError, match="drive.kvlog:2: not a kvlog line"):
        readers.read_messages(path)
    assert readers.read_messages(path, on_bad_rows="skip").skipped_rows == 1


def test_recipe_model_trains_end_to_end(synthetic, tmp_path):
    from kdkit.models import registry

    namespace: dict = {}
    exec(recipe("Add a model"), namespace)
    try:
        _train_the_new_model(synthetic, tmp_path)
    finally:  # unregister: the registries are process-wide
        registry.MODEL_CLASSES.pop("meanpool", None)
        registry.PRESETS.pop("meanpool", None)


def _train_the_new_model(synthetic, tmp_path):
    from kdkit.config import make_config
    from kdkit.workflows import evaluate_checkpoint, train

    cfg = make_config(model="meanpool", type="teacher", dataset="synthetic", epochs=1, batch_size=32,
                      runs_dir=str(tmp_path), save_compat=False, accelerator="cpu", precision="32-true")
    summary = train(cfg, progress=False, data=synthetic)
    assert summary["model"] == "meanpool" and summary["epochs_run"] == 1 and summary["parameters"] > 0
    assert set(summary["test"]["scenarios"]) == set(synthetic.info["splits"]) - {"train", "val"}
    student = make_config(model="meanpool", type="student", dataset="synthetic", epochs=1, batch_size=32,
                          runs_dir=str(tmp_path), save_compat=False, teacher=summary["best_checkpoint"],
                          accelerator="cpu", precision="32-true")
    kd = train(student, progress=False, data=synthetic)
    assert kd["kd"] and kd["parameters"] < summary["parameters"]
    res = evaluate_checkpoint(kd["best_checkpoint"], "synthetic", out_dir=tmp_path)
    assert 0.0 <= res["overall"]["f1"] <= 1.0


def test_recipe_kd_loss(synthetic):
    from kdkit.models import build_model

    gs = synthetic.splits["train"]
    dims = dict(num_node_features=gs.x.size(1), num_edge_features=gs.edge_attr.size(1), num_ids=int(gs.node_id.max()) + 1)
    torch.manual_seed(0)
    namespace = {"student": build_model("gat", "student", **dims), "teacher": build_model("gat", "teacher", **dims)}
    exec(recipe("Add a KD loss"), namespace)
    kd, student, teacher = namespace["kd"], namespace["student"], namespace["teacher"]
    batch = collate_indices(gs, list(range(16)))
    with torch.no_grad():
        t_out = teacher(batch, return_features=True)
    s_out = student(batch, return_features=True)
    loss, parts = kd(s_out, t_out, batch)
    expected = 0.5 * torch.nn.functional.mse_loss(s_out.logits.softmax(-1), t_out.logits.softmax(-1))
    torch.testing.assert_close(parts["prob_mse"], expected.detach())
    terms, kd.extra_terms = kd.extra_terms, torch.nn.ModuleDict()
    without = kd(s_out, t_out, batch)[0]  # the same loss without the new term
    kd.extra_terms = terms
    torch.testing.assert_close(loss.detach(), without.detach() + expected.detach())
    loss.backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)


def test_recipe_precision_rule(monkeypatch):
    from kdkit.training import precision

    monkeypatch.setattr(precision, "PRECISION_RULES", list(precision.PRECISION_RULES))
    exec(recipe("Add a precision rule"), {})
    assert precision.choose_precision("auto", "xpu") == "bf16-mixed"
    assert precision.choose_precision("32-true", "xpu") == "32-true"  # an explicit request still wins
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.choose_precision("auto", "cpu") == "32-true"  # the other rules still answer


def test_recipe_slurm_preset(tmp_path, monkeypatch, capsys):
    from kdkit.cli.main import main

    templates = tmp_path / "my_templates"
    templates.mkdir()
    shutil.copy(REPO / "slurm_templates" / "presets.ini", templates / "presets.ini")
    with open(templates / "presets.ini", "a") as handle:
        handle.write("\n" + recipe("Add a SLURM preset", "ini"))
    monkeypatch.setenv("KDKIT_SLURM_TEMPLATES", str(templates))
    command = recipe("Add a SLURM preset", "bash").split("kdkit ", 1)[1].split()
    assert main([*command, "--runs-dir", str(tmp_path / "runs"), "--dry-run"]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --partition=gpu-l40s\n" in script and "#SBATCH --gres=gpu:l40s:1\n" in script
    assert "#SBATCH --mem=48G\n" in script and "--model gat" in script
