"""The training panel (kdkit/widgets.py): config from controls, a real tiny training run
through the panel, the Optimize and Submit-to-SLURM buttons (sizer and orchestrator faked)."""
from __future__ import annotations

import json
import types

import pytest

import kdkit.ui.widgets
from kdkit.ui.widgets import TrainPanel, panel
from kdkit.workflows.run_dir import RunDirError

TINY = {"hidden": 8, "layers": 1, "heads": 1, "embedding_dim": 4, "patience": 100, "save_compat": False,
        "warmup_steps": 1}


def test_config_from_controls():
    p = panel(dataset="synthetic", epochs=3, hidden=8)
    assert isinstance(p, TrainPanel)
    assert json.loads(p.extra.value) == {"hidden": 8}
    p.dataset.value = "hcrl_sa"
    p.model.value = "vgae"
    p.precision.value = "bf16-mixed"
    p.epochs.value = 7
    p.batch_size.value = 33
    p.kd_alpha.value = 0.5
    cfg = p.config()
    assert (cfg.dataset, cfg.model, cfg.type, cfg.precision, cfg.epochs, cfg.batch_size, cfg.hidden) == (
        "hcrl_sa", "vgae", "teacher", "bf16-mixed", 7, 33, 8)
    assert cfg.kd_alpha == 0.7 and cfg.teacher is None  # KD controls are ignored (and disabled) for a teacher
    assert p.kd_alpha.disabled and p.teacher.disabled

    p.type.value = "student"
    p.teacher.value = " runs/t/checkpoints/best.pt "
    p.kd_temperature.value = 2.0
    cfg = p.config()
    assert (cfg.type, cfg.teacher, cfg.kd_temperature, cfg.kd_alpha) == ("student", "runs/t/checkpoints/best.pt", 2.0, 0.5)
    assert not p.kd_alpha.disabled


def test_panel_from_a_whole_config_rebuilds_it():
    """The notebooks call panel(**cfg.to_dict()): the same config comes back, the box shows only what differs."""
    from kdkit.config import make_config

    cfg = make_config(model="vgae", dataset="synthetic", epochs=2, precision="bf16", learning_rate=0.003,
                      runs_dir="runs/nb", preset="v100", hidden=8)
    p = panel(**cfg.to_dict())
    assert json.loads(p.extra.value) == {"hidden": 8, "learning_rate": 0.003, "runs_dir": "runs/nb", "preset": "v100"}
    assert p.precision.value == "bf16-mixed"
    assert p.config() == cfg.__class__(**{**cfg.to_dict(), "precision": "bf16-mixed"})


def test_config_errors_speak_to_the_user():
    with pytest.raises(ValueError, match="unknown config key 'hiden'"):
        panel(hiden=8)
    p = panel()
    p.extra.value = '{"epochs": 3}'
    with pytest.raises(ValueError, match="Extra config sets epochs: use the panel's control"):
        p.config()
    p.extra.value = "{learning_rate: 1}"
    with pytest.raises(ValueError, match="not valid JSON"):
        p.config()
    p.train_button.click()  # a click reports the error in the status area and starts nothing
    assert "not valid JSON" in p.status.value and p._thread is None


def test_train_runs_the_pipeline_in_the_background(kdkit_env, tmp_path):
    p = panel(dataset="synthetic", precision="32-true", batch_size=64, runs_dir=str(tmp_path / "runs"), **TINY)
    p.epochs.value = 2
    thread = p.train(blocking=False)
    assert thread.is_alive() or p.summary is not None
    p.wait(timeout=600)
    assert p.error is None, p.status.value
    summary = p.summary
    assert summary["epochs_run"] == 2 and summary["dataset"] == "synthetic"
    assert (p.progress.value, p.progress.max, p.progress.bar_style) == (2, 2, "success")
    lines = {ln.get_label(): ln for ln in p.figure.axes[0].get_lines()}
    assert list(lines["train loss"].get_xdata()) == [1, 2] and len(lines["val loss"].get_ydata()) == 2
    assert p.plot.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert [h["epoch"] for h in p.history] == [0, 1]
    for scenario, metrics in summary["test"]["scenarios"].items():
        assert scenario in p.results.value and f"{metrics['f1']:.4f}" in p.results.value
    assert "F1 per scenario" in p.results.value and "done in" in p.status.value
    assert not p.train_button.disabled
    # the same run name again is refused (a run is never overwritten silently) ...
    p.epochs.value = 1
    with pytest.raises(ValueError, match="overwrite"):
        p.train(blocking=True)
    assert "error:" in p.status.value and "overwrite" in p.status.value
    # ... and blocking=True returns the summary of a second run that says overwrite
    p.extra.value = json.dumps({**json.loads(p.extra.value or "{}"), "overwrite": True})
    assert p.train(blocking=True)["epochs_run"] == 1 and p.progress.value == 1


def test_training_error_is_shown_and_reraised(kdkit_env, tmp_path):
    p = panel(dataset="synthetic", type="student", runs_dir=str(tmp_path / "runs"), **TINY)
    p.teacher.value = str(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        p.train(blocking=True)
    assert "error:" in p.status.value and p.progress.bar_style == "danger"
    assert isinstance(p.error, FileNotFoundError)


def test_optimize_button_sets_batch_size(monkeypatch):
    seen = []

    def fake_optimize(cfg, echo=print):
        seen.append(cfg)
        echo("sizer report")
        return cfg.__class__(**{**cfg.to_dict(), "batch_size": 321})

    monkeypatch.setattr(kdkit.ui.widgets, "optimize_config_batch_size", fake_optimize)
    p = panel(dataset="synthetic", model="vgae", hidden=8)
    p.optimize_button.click()
    p.wait(timeout=60)
    assert p.batch_size.value == 321 and p.config().batch_size == 321
    assert (seen[0].model, seen[0].dataset, seen[0].hidden) == ("vgae", "synthetic", 8)
    assert "sizer report" in p.status.value and "batch size set to 321" in p.status.value


class FakeOrchestrator:
    calls: list = []

    def __init__(self, runs_dir="runs", preset="cpu", **defaults):
        self.init = {"runs_dir": str(runs_dir), "preset": preset, **defaults}
        self.registry = types.SimpleNamespace(load=lambda: {"4242": {"run_dir": f"{runs_dir}/job"}})

    def submit_run(self, run, **resources):
        FakeOrchestrator.calls.append((self.init, dict(run), resources))
        return "4242" if run["model"] == "gat" else "4243"


def test_slurm_button_submits_with_the_panels_config(monkeypatch, tmp_path):
    FakeOrchestrator.calls = []
    monkeypatch.setattr(kdkit.ui.widgets, "FabricSlurmTrainingOrchestrator", FakeOrchestrator)
    teacher = tmp_path / "best.pt"
    p = panel(dataset="hcrl_sa", epochs=4, learning_rate=0.001, run_name="mine", runs_dir=str(tmp_path / "r"))
    p.type.value = "student"
    p.teacher.value = str(teacher)
    p.kd_alpha.value = 0.25
    p.batch_size.value = 48
    p.slurm_preset.value = "a100"
    p.slurm_partition.value = "gpu2"
    p.slurm_button.click()
    assert p.job_id == "4242" and "submitted SLURM job 4242" in p.status.value
    init, run, resources = FakeOrchestrator.calls[0]
    assert init["runs_dir"] == str(tmp_path / "r") and init["preset"] == "a100"
    assert run == {"model": "gat", "type": "student", "dataset": "hcrl_sa", "teacher": str(teacher), "epochs": 4,
                   "batch_size": 48, "kd_temperature": 4.0, "kd_alpha": 0.25, "precision": "auto",
                   "learning_rate": 0.001, "run_name": "mine", "runs_dir": str(tmp_path / "r")}
    assert resources == {"partition": "gpu2"}
    p.model.value = "vgae"
    p.type.value = "teacher"
    assert p.submit_slurm() == "4243" and FakeOrchestrator.calls[1][1]["model"] == "vgae"
    assert "teacher" not in FakeOrchestrator.calls[1][1]  # a teacher gets no teacher checkpoint


@pytest.mark.notebook
def test_headless_notebook_shows_the_panel_and_runs_on(tmp_path):
    """papermill (as in CI and SLURM jobs): the panel displays, no cell waits for a click."""
    import nbformat
    import papermill

    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                           "display_name": "Python 3"}})
    nb.cells = [nbformat.v4.new_code_cell("from kdkit.ui.widgets import panel\npanel(dataset='synthetic', epochs=1)"),
                nbformat.v4.new_code_cell("print('ran on')")]
    nbformat.write(nb, tmp_path / "in.ipynb")
    out = papermill.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"),
                                     kernel_name="python3", cwd=str(tmp_path), progress_bar=False,
                                     execution_timeout=120)
    shown = out.cells[0].outputs[0]["data"]
    assert "application/vnd.jupyter.widget-view+json" in shown
    assert out.cells[1].outputs[0]["text"] == "ran on\n"


def test_stop_button_ends_training_after_the_current_epoch(kdkit_env, tmp_path):
    p = panel(dataset="synthetic", precision="32-true", batch_size=64, runs_dir=str(tmp_path / "runs"), **TINY)
    p.epochs.value = 5
    on_epoch = p._on_epoch_end

    def press_stop_after_first(record):
        on_epoch(record)
        if record["epoch"] == 0:
            p.stop_button.click()

    p._on_epoch_end = press_stop_after_first
    summary = p.train(blocking=True)
    assert summary["epochs_run"] == 1 and "stop requested" in p.status.value
    assert p.stop_button.disabled and not p.train_button.disabled


def test_panel_errors_speak_of_its_own_boxes(kdkit_env, tmp_path):
    """Training twice into one run folder, and bad Extra config JSON: advice in the panel's terms,
    not the command line's (--overwrite, --config)."""
    p = panel(dataset="synthetic", precision="32-true", runs_dir=str(tmp_path / "runs"), **TINY)
    p.epochs.value = 1
    p.train(blocking=True)
    with pytest.raises(RunDirError, match=r'already holds a run .*: put \{"overwrite": true\} in Extra config to '
                                          r'replace it, or \{"run_name": "another name"\}'):
        p.train(blocking=True)
    p.extra.value = '{"overwrite": true}'
    assert p.train(blocking=True)["epochs_run"] == 1
    p.extra.value = "{overwrite: true}"
    with pytest.raises(ValueError, match=r"^Extra config is not valid JSON"):
        p.config()
    p.extra.value = "[1]"
    with pytest.raises(ValueError, match=r"^Extra config must be a JSON object"):
        p.config()


def test_a_teacher_panels_sizes_go_to_the_student_notebooks_quick_teacher():
    """A sweep of the student notebook from a panel set to a teacher: the panel's sizes and epochs
    describe the quick teacher (teacher_hidden, ...), not the students the sweep compares."""
    from kdkit.ui.widgets import panel
    from kdkit.workflows.notebooks import NOTEBOOK_DIR

    p = panel(dataset="synthetic", epochs=1, hidden=32, layers=3, heads=4)
    params = p.sweep_parameters(NOTEBOOK_DIR / "student.ipynb", {"kd_alpha": [0.5, 0.9]})
    assert {params.get(k) for k in ("teacher_hidden", "teacher_layers", "teacher_heads", "teacher_epochs")} == {32, 3, 4, 1}
    assert not {"hidden", "layers", "heads", "epochs"} & set(params)
    p.type.value = "student"  # a student panel describes the students
    params = p.sweep_parameters(NOTEBOOK_DIR / "student.ipynb", {"kd_alpha": [0.5, 0.9]})
    assert params.get("hidden") == 32 and "teacher_hidden" not in params
    # an explicit null is a setting (threads: torch's default, all cores), not "unset": the tasks ran the
    # notebook's default (threads=1) while the panel showed None
    p.extra.value = '{"threads": null}'
    params = p.sweep_parameters(NOTEBOOK_DIR / "student.ipynb", {"kd_alpha": [0.5, 0.9]})
    assert "threads" in params and params["threads"] is None


def test_a_student_without_a_teacher_is_said_to_train_alone(kdkit_env, tmp_path, monkeypatch):
    import kdkit.ui.widgets

    def fake_train(cfg, **kw):
        raise RuntimeError("stand-in: not trained here")

    monkeypatch.setattr(kdkit.ui.widgets, "train", fake_train)
    p = panel(dataset="synthetic", type="student", runs_dir=str(tmp_path / "runs"), **TINY)
    p.teacher.value = ""  # (the panel offers a teacher it finds under ./runs)
    with pytest.raises(RuntimeError, match="stand-in"):
        p.train(blocking=True)
    assert "student alone (no Teacher checkpoint: no distillation)" in p.status.value


def test_stop_without_a_running_training_says_so():
    p = panel(dataset="synthetic")
    p.stop()
    assert "nothing to stop: no training is running" in p.status.value and not p._stop.is_set()
