"""One run schema (kdkit.config.TrainConfig): a field added in one place appears in the CLI
flags and --list-configs, the widget panel, a rendered SLURM script and the notebook parameter
check; flags, JSON and argv round-trip.

Run: .venv/bin/python -m pytest tests/test_run_schema.py -q
"""
from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import make_dataclass

import nbformat
import pytest

from kdkit.cli.train import add_train_arguments, overrides_from_cli
from kdkit.cluster.orchestrator import FabricSlurmTrainingOrchestrator
from kdkit.config import (
    OPTIM,
    TrainConfig,
    list_configs,
    make_config,
    overrides_from_args,
    param,
    schema,
    to_argv,
    validate_overrides,
)
from kdkit.ui.widgets import TrainPanel
from kdkit.workflows.notebooks import check_parameters

# The one edit a new parameter needs (plus the code that uses it): a field in the schema.
Extended = make_dataclass("Extended", [("dummy_knob", int, param(3, "a dummy knob for the schema test", group=OPTIM,
                                                                  low=1, high=9, panel=True))],
                          bases=(TrainConfig,), frozen=True)


def _parser(cls=TrainConfig) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdkit train")
    add_train_arguments(parser, cls)
    return parser


def test_a_new_field_appears_in_the_cli_and_list_configs():
    parser = _parser(Extended)
    assert "--dummy-knob" in parser.format_help() and "a dummy knob for the schema test (default 3)" in \
        " ".join(parser.format_help().split())
    args = parser.parse_args(["--dataset", "synthetic", "--dummy-knob", "5"])
    assert overrides_from_args(args, Extended) == {"dataset": "synthetic", "dummy_knob": 5}
    assert make_config(Extended, **overrides_from_args(args, Extended)).dummy_knob == 5
    with pytest.raises(ValueError, match="'dummy_knob': must be in \\[1, 9\\], got 10"):
        validate_overrides({"dummy_knob": 10}, Extended)
    assert "dummy_knob" in list_configs(Extended) and "dummy_knob" not in list_configs()
    assert "--dummy-knob" not in _parser().format_help()  # the stock schema is untouched


def test_a_new_field_appears_in_the_panel():
    p = TrainPanel(schema=Extended, dataset="synthetic")
    control = p.controls["dummy_knob"]
    assert (control.min, control.max, control.value) == (1, 9, 3) and control.description == "Dummy knob"
    control.value = 7
    cfg = p.config()
    assert isinstance(cfg, Extended) and cfg.dummy_knob == 7


def test_a_new_field_appears_in_a_rendered_sbatch_script(tmp_path):
    orch = FabricSlurmTrainingOrchestrator(tmp_path / "runs", schema=Extended, venv=None)
    script = orch.submit_run({"model": "gat", "dataset": "synthetic", "type": "teacher", "dummy_knob": 5,
                              "run_name": "r"}, dry_run=True)
    words = shlex.split(script.split("kdkit train", 1)[1].replace("\\\n", " "))
    assert words[words.index("--dummy-knob") + 1] == "5"
    with pytest.raises(ValueError, match="'dummy_knob'"):  # refused before anything is submitted
        orch.submit_run({"dataset": "synthetic", "dummy_knob": 0, "run_name": "r2"}, dry_run=True)
    assert not (tmp_path / "runs" / "r2").exists()


def test_a_new_field_is_checked_as_a_notebook_parameter(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("dummy_knob: int = 3  # the knob\nrun_dir: str = 'x'  # output")
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    assert check_parameters(path, {"dummy_knob": 4}, Extended) == {"dummy_knob": 4}
    with pytest.raises(ValueError, match="nb.ipynb parameter dummy_knob=0: config key 'dummy_knob': must be in"):
        check_parameters(path, {"dummy_knob": 0}, Extended)


@pytest.mark.parametrize("overrides", [
    {"dataset": "hcrl_sa", "model": "vgae", "type": "student", "hidden": None, "learning_rate": 0.0005,
     "compile": "auto", "class_weighting": False, "save_compat": True, "teacher": "/x y/best.pt"},
    {"dataset": "synthetic", "compile": True, "num_workers": -1, "kd_alpha": 0.25, "precision": "bf16"},
    {"dataset": "synthetic", "compile": False, "data_root": "a b"},
])
def test_argv_round_trips_through_the_parser(overrides):
    argv = to_argv(overrides)
    assert overrides_from_args(_parser().parse_args(argv)) == validate_overrides(overrides)


def test_config_json_and_flags_combine_flags_win():
    args = _parser().parse_args(["--dataset", "synthetic", "--config", json.dumps({"epochs": 3, "seed": 4}),
                                 "--epochs", "5"])
    assert overrides_from_cli(args) == {"epochs": 5, "seed": 4, "dataset": "synthetic"}


def test_every_field_has_help_and_a_valid_default():
    for spec in schema():
        assert spec.help and spec.group, spec.name
        assert validate_overrides({spec.name: spec.default}) == {spec.name: spec.default}


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "'epochs': must be >= 1"),
    (["--kd-alpha", "1.5"], "'kd_alpha': must be in \\[0, 1\\]"),
    (["--learning-rate", "nan"], "'learning_rate': must be a finite number"),
    (["--hidden", "none", "--layers", "none"], None),
])
def test_cli_values_are_checked_by_the_schema(argv, message):
    args = _parser().parse_args(argv)
    if message is None:
        assert overrides_from_cli(args) == {"hidden": None, "layers": None}
        return
    with pytest.raises(ValueError, match=message):
        overrides_from_cli(args)


def test_a_teacher_checkpoint_for_a_teacher_run_is_refused_everywhere(tmp_path, capsys):
    """A teacher trains alone: a --teacher path given to a run of type teacher would be ignored (and
    recorded in config.json as if used). The schema refuses it for the CLI, --config JSON, make_config
    (notebooks, the panel), SLURM job arguments; a student takes one."""
    from kdkit.cli.main import main

    message = r"config key 'teacher': 'x\.pth' is given for a run of type 'teacher'.*--type student"
    with pytest.raises(ValueError, match=message):
        make_config(dataset="synthetic", teacher="x.pth")  # type teacher by default
    with pytest.raises(ValueError, match=message):
        make_config(dataset="synthetic", type="teacher", teacher="x.pth")
    with pytest.raises(ValueError, match=message):
        validate_overrides({"type": "teacher", "teacher": "x.pth"})
    with pytest.raises(ValueError, match=message):
        overrides_from_cli(_parser().parse_args(["--dataset", "synthetic", "--config",
                                                 json.dumps({"type": "teacher", "teacher": "x.pth"})]))
    with pytest.raises(ValueError, match=message):
        to_argv({"dataset": "synthetic", "type": "teacher", "teacher": "x.pth"})
    teacher = tmp_path / "x.pth"
    teacher.write_bytes(b"")
    orch = FabricSlurmTrainingOrchestrator(tmp_path / "runs", venv=None)
    with pytest.raises(ValueError, match="config key 'teacher': .* is given for a run of type 'teacher'"):
        orch.submit_run({"dataset": "synthetic", "type": "teacher", "teacher": str(teacher), "run_name": "r"},
                        dry_run=True)
    assert main(["train", "--model", "gat", "--type", "teacher", "--teacher", "x.pth", "--dataset", "synthetic",
                 "--runs-dir", str(tmp_path / "runs")]) != 0
    assert "is given for a run of type 'teacher'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())
    # a student distils from it; a teacher without one is the plain teacher run
    assert make_config(dataset="synthetic", type="student", teacher="x.pth").teacher == "x.pth"
    assert make_config(dataset="synthetic", type="teacher", teacher=None).teacher is None
