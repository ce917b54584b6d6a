"""The Fabric trainer, the legacy baseline, checkpoints, resume, config validation, CLI."""
from __future__ import annotations

import csv
import json
import pickle

import pytest
import torch

from kdkit.config import TrainConfig, make_config, parse_config_json, validate_overrides

TINY = dict(hidden=16, layers=2, heads=2, embedding_dim=4, batch_size=64, epochs=2, patience=100,
            precision="32-true", save_compat=False, warmup_steps=2)


def tiny_cfg(tmp_path, **kw) -> TrainConfig:
    return make_config(**{**TINY, "runs_dir": str(tmp_path / "runs"), **kw})


# ----------------------------------------------------------------------------- config
def test_unknown_config_key_lists_valid_keys():
    with pytest.raises(ValueError, match=r"unknown config key 'learnin_rate'; did you mean 'learning_rate'\?; "
                                         r"valid keys: .*learning_rate"):
        validate_overrides({"learnin_rate": 0.1})
    # --list-configs shows the presets with the model's own option names: the config key that sets them is named
    with pytest.raises(ValueError, match=r"unknown config key 'num_layers'; the model option num_layers is set by "
                                         r"the config key 'layers'"):
        validate_overrides({"num_layers": 3})


def test_list_configs_shows_what_a_run_uses():
    """The GAT teacher preset listed dropout 0.2, but the run schema's dropout (0.1) always applied."""
    from kdkit.config import list_configs

    text = list_configs()
    presets = text.split("Hardware presets")[0]
    assert '"dropout"' not in presets and "dropout and id_dropout are the config keys below" in presets
    assert "dropout                default 0.1" in text


@pytest.mark.parametrize("overrides,match", [
    ({"epochs": "ten"}, r"'epochs': expected int, got str"),
    ({"epochs": True}, r"'epochs': expected int, got bool"),
    ({"epochs": 0}, r"'epochs': must be >= 1"),
    ({"kd_alpha": 1.5}, r"'kd_alpha': must be in \[0, 1\]"),
    ({"model": "gcn"}, r"'model': 'gcn' is not one of gat, vgae"),
    ({"precision": "8-bit"}, r"'precision'"),
])
def test_config_type_and_range_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        validate_overrides(overrides)


def test_config_json_parsing():
    assert parse_config_json('{"learning_rate": 1, "epochs": 3}') == {"learning_rate": 1.0, "epochs": 3}
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_config_json("{epochs: 3}")
    with pytest.raises(ValueError, match="must be a JSON object"):
        parse_config_json("[1, 2]")


def test_config_file_errors_name_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"--config @nofile.json: cannot read the file \(No such file or directory\)"):
        parse_config_json("@nofile.json")
    (tmp_path / "cfg.json").write_text('{"epochs": -3}')
    with pytest.raises(ValueError, match=r"--config @cfg.json: .*epochs"):
        parse_config_json("@cfg.json")
    (tmp_path / "bad.json").write_text('{"epochs": 3,}')
    with pytest.raises(ValueError, match=r"--config @bad.json is not valid JSON"):
        parse_config_json("@bad.json")
    (tmp_path / "ok.json").write_text('{"epochs": 3}')
    assert parse_config_json("@ok.json") == {"epochs": 3}


def test_preset_fills_only_unset_keys():
    cfg = make_config(preset="v100", batch_size=7)
    assert cfg.batch_size == 7 and cfg.num_workers == 4 and cfg.preset == "v100"


# ----------------------------------------------------------------------------- precision policy
def test_precision_policy(monkeypatch, caplog):
    from kdkit.training import precision as trainer

    assert trainer.choose_precision("bf16", "cpu") == "bf16-mixed"
    # fp16 autocast does not run on a CPU: Fabric ran bf16 while the run recorded 16-mixed
    with caplog.at_level("WARNING", logger="kdkit.training.precision"):
        assert trainer.choose_precision("16-mixed", "cpu") == trainer.choose_precision("16", "cpu") == "bf16-mixed"
    assert "precision 16-mixed: fp16 autocast does not run on a CPU; the run uses bf16-mixed" in caplog.text
    assert trainer.choose_precision("16-mixed", "cuda") == "16-mixed"
    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: False)
    assert trainer.choose_precision("auto", "cpu") == "32-true"
    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(trainer, "measure_cpu_bf16_speedup", lambda: 0.8)
    assert trainer.choose_precision("auto", "cpu") == "32-true"
    monkeypatch.setattr(trainer, "measure_cpu_bf16_speedup", lambda: 2.0)
    assert trainer.choose_precision("auto", "cpu") == "bf16-mixed"


# ----------------------------------------------------------------------------- legacy == fabric
def test_one_step_same_loss_legacy_and_fabric_batches(synthetic, tmp_path):
    """Same model, same graphs: the legacy PyG collate and the fast batches give the same fp32 loss."""
    from kdkit.data.loader import graph_loader
    from kdkit.training.legacy import legacy_loader
    from kdkit.training.task import Task
    from kdkit.workflows.run import build_student_or_teacher, class_weights

    cfg = tiny_cfg(tmp_path)
    gs = synthetic.splits["train"]
    model = build_student_or_teacher(cfg, synthetic)
    task = Task(model, cfg, None, class_weights(gs)).eval()  # eval: dropout and id_dropout off
    fast = next(iter(graph_loader(gs, 32, shuffle=False, num_workers=0)))
    legacy = next(iter(legacy_loader(gs, 32, shuffle=False)))
    with torch.no_grad():
        a, _ = task.training_loss(fast)
        b, _ = task.training_loss(legacy)
    assert torch.allclose(a, b, atol=1e-6), (float(a), float(b))


# ----------------------------------------------------------------------------- fit, checkpoints, resume
def _weights(path):
    from kdkit.training.checkpoint import load_checkpoint

    return load_checkpoint(path)["model"]


def test_fabric_fit_writes_run_and_checkpoints(synthetic, tmp_path):
    from kdkit.training.checkpoint import load_checkpoint
    from kdkit.workflows.run import train

    s = train(tiny_cfg(tmp_path, run_name="gat_t"), progress=False, data=synthetic)
    run = tmp_path / "runs" / "gat_t"
    for name in ("config.json", "summary.json", "metrics.json", "fabric_training.log", "checkpoints/best.pt",
                 "checkpoints/last.pt", "logs/metrics.csv"):
        assert (run / name).is_file(), name
    assert not list((run / "checkpoints").glob("*.tmp*")), "temporary checkpoint left behind"
    ck = load_checkpoint(run / "checkpoints" / "best.pt")
    assert ck["vocab"] == synthetic.vocab.to_list() and ck["model_config"]["kind"] == "gat"
    assert {"optimizer", "scheduler", "rng", "epoch", "step"} <= set(ck)
    assert len(s["history"]) == 2 and all(torch.isfinite(torch.tensor(h["train_loss"])) for h in s["history"])
    assert set(s["test"]["scenarios"]) == set(synthetic.scenarios)
    f1 = json.loads((run / "metrics.json").read_text())["f1"]
    assert all(0.0 <= v <= 1.0 for v in f1.values())
    from kdkit.training.trainer import convergence_note
    assert s["still_learning"] == convergence_note(s["history"], 2)  # the run's own verdict, in its summary
    if s["still_learning"]:  # and in the run's log, as the README says (it reached the console only)
        assert s["still_learning"] in (run / "fabric_training.log").read_text()


def test_convergence_note_says_when_the_epochs_ran_out_while_learning():
    """A note when the epoch limit ended a run whose validation loss was still falling (> 1 % in
    the last epoch, the lowest of the run); none when it flattened, rose, or early stopping ended it."""
    from kdkit.training.trainer import convergence_note

    hist = lambda *losses: [{"epoch": i, "val_loss": v} for i, v in enumerate(losses)]  # noqa: E731
    note = convergence_note(hist(3.27, 1.58, 1.07), epochs=3)
    assert note is not None and "32.3 %" in note and "1.58 -> 1.07" in note and "--epochs" in note
    assert convergence_note(hist(1.0, 0.995), epochs=2) is None      # fell 0.5 %: converged enough
    assert convergence_note(hist(1.0, 0.8, 0.9), epochs=3) is None   # rose in the last epoch
    assert convergence_note(hist(1.0, 0.5, 0.4), epochs=5) is None   # early stopping ended it, not the limit
    assert convergence_note(hist(1.0), epochs=1) is None             # one epoch: nothing to compare
    assert convergence_note([{"epoch": 0}, {"epoch": 1}], epochs=2) is None  # no validation loss
    assert convergence_note(hist(float("nan"), 0.5), epochs=2) is None


def test_best_checkpoint_breaks_f1_ties_by_validation_loss(synthetic, tmp_path, monkeypatch):
    """Validation F1 saturates (1.0 from an early epoch on): among tied epochs the best checkpoint
    is the one with the lowest validation loss, not the earliest; a full tie keeps the earliest."""
    from kdkit.training.checkpoint import load_checkpoint
    from kdkit.training.task import Task
    from kdkit.workflows.run import train

    scripted = iter([(0.5, 0.50), (1.0, 0.30), (1.0, 0.10), (1.0, 0.20), (1.0, 0.10)])
    real = Task.validate

    def validate(self, loader):
        out = real(self, loader)
        out["val_f1"], out["val_loss"] = next(scripted)
        return out

    monkeypatch.setattr(Task, "validate", validate)
    s = train(tiny_cfg(tmp_path, run_name="ties", epochs=5, patience=10), progress=False,
              data=synthetic)
    assert [h["val_f1"] for h in s["history"]] == [0.5, 1.0, 1.0, 1.0, 1.0]
    ck = load_checkpoint(tmp_path / "runs" / "ties" / "checkpoints" / "best.pt")
    assert ck["epoch"] == 2 and ck["best_tiebreak"] == 0.10  # epoch 4 ties on both: the earlier one stays


def test_resume_reaches_same_weights(synthetic, tmp_path):
    """An interrupted run resumed from last.pt ends with the same weights as an uninterrupted one."""
    from kdkit.workflows.run import train

    full = train(tiny_cfg(tmp_path, run_name="full", epochs=3), progress=False, data=synthetic)

    class Interrupt(Exception):
        pass

    def stop_after_first(record):
        if record["epoch"] == 0:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(tiny_cfg(tmp_path, run_name="cut", epochs=3), progress=False, data=synthetic, on_epoch_end=stop_after_first)
    last = tmp_path / "runs" / "cut" / "checkpoints" / "last.pt"
    assert torch.load(last, weights_only=True)["epoch"] == 0
    resumed = train(tiny_cfg(tmp_path, run_name="cut", epochs=3), resume=last, progress=False, data=synthetic)
    logs = tmp_path / "runs" / "cut" / "logs"
    with open(logs / "metrics.csv", newline="") as handle:  # the history continues: every epoch once
        assert [int(row["step"]) for row in csv.DictReader(handle)] == [0, 1, 2]
    assert [p.name for p in logs.iterdir()] == ["metrics.csv"]
    assert f"resumed from {last} at epoch 1" in (tmp_path / "runs" / "cut" / "fabric_training.log").read_text()
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2] and resumed["resumed_at_epoch"] == 1
    a, b = _weights(full["last_checkpoint"]), _weights(resumed["last_checkpoint"])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_train_seconds_add_up_over_resumed_attempts(synthetic, tmp_path):
    """summary.json's train_seconds is the training time of every attempt (last.pt's provenance
    carries the seconds so far, a resumed fit adds its own), train_seconds_this_attempt the last
    attempt's; a checkpoint written before they were carried resumes as before, counting its attempt only."""
    from kdkit.training.trainer import TRAIN_SECONDS, train_seconds_so_far
    from kdkit.workflows.run import train

    class Interrupt(Exception):
        pass

    def stop_at(epoch):
        def check(record):
            if record["epoch"] == epoch:
                raise Interrupt
        return check

    cfg = tiny_cfg(tmp_path, run_name="cut", epochs=3)
    last = tmp_path / "runs" / "cut" / "checkpoints" / "last.pt"
    with pytest.raises(Interrupt):
        train(cfg, progress=False, data=synthetic, on_epoch_end=stop_at(0))
    first = train_seconds_so_far(torch.load(last, weights_only=True))
    assert first > 0
    with pytest.raises(Interrupt):  # the second attempt trains epoch 1 and stops again
        train(cfg, resume=last, progress=False, data=synthetic, on_epoch_end=stop_at(1))
    ck = torch.load(last, weights_only=True)
    so_far = train_seconds_so_far(ck)
    assert ck["epoch"] == 1 and so_far > first  # the first attempt's seconds plus the second's
    resumed = train(cfg, resume=last, progress=False, data=synthetic)
    assert resumed["resumed_at_epoch"] == 2 and 0 < resumed["train_seconds_this_attempt"] < resumed["train_seconds"]
    assert resumed["train_seconds"] == pytest.approx(so_far + resumed["train_seconds_this_attempt"], abs=0.02)
    assert json.loads((tmp_path / "runs" / "cut" / "metrics.json").read_text())["train_seconds"] == \
        resumed["train_seconds"]
    # a checkpoint without the key (written before it existed): resumed as before, its attempt counted alone
    cfg = tiny_cfg(tmp_path, run_name="old", epochs=2)
    last = tmp_path / "runs" / "old" / "checkpoints" / "last.pt"
    with pytest.raises(Interrupt):
        train(cfg, progress=False, data=synthetic, on_epoch_end=stop_at(0))
    ck = torch.load(last, weights_only=True)
    del ck["provenance"][TRAIN_SECONDS]
    torch.save(ck, last)
    resumed = train(cfg, resume=last, progress=False, data=synthetic)
    assert resumed["resumed_at_epoch"] == 1 and resumed["train_seconds"] == resumed["train_seconds_this_attempt"] > 0


def test_bf16_smoke_on_cpu(synthetic, tmp_path):
    from kdkit.workflows.run import train

    s = train(tiny_cfg(tmp_path, run_name="bf16", precision="bf16-mixed", epochs=1), progress=False, data=synthetic)
    assert s["precision"] == "bf16-mixed"
    assert torch.isfinite(torch.tensor(s["history"][0]["train_loss"]))


def test_legacy_trainer_runs(synthetic, tmp_path):
    from kdkit.workflows.run import train

    s = train(tiny_cfg(tmp_path, run_name="leg", trainer="legacy", epochs=1), progress=False, data=synthetic)
    assert s["trainer"] == "legacy" and s["epochs_run"] == 1


def test_vgae_teacher_and_student_with_threshold(synthetic, tmp_path):
    from kdkit.training.checkpoint import load_checkpoint
    from kdkit.workflows.run import train

    t = train(tiny_cfg(tmp_path, model="vgae", run_name="vt", latent_dim=8, epochs=1), progress=False, data=synthetic)
    ck = load_checkpoint(t["best_checkpoint"])
    assert ck["threshold"] == t["threshold"] and ck["threshold"] > 0
    s = train(tiny_cfg(tmp_path, model="vgae", type="student", teacher=t["best_checkpoint"], run_name="vs",
                       hidden=8, latent_dim=4, epochs=1), progress=False, data=synthetic)
    assert s["kd"] and s["teacher"]["parameters"] > s["parameters"]


# ----------------------------------------------------------------------------- bad checkpoints
def test_checkpoint_errors(synthetic, tmp_path):
    from kdkit.training.checkpoint import load_checkpoint
    from kdkit.workflows.run import check_compatible, train

    s = train(tiny_cfg(tmp_path, run_name="ck", epochs=1), progress=False, data=synthetic)
    ck = torch.load(s["best_checkpoint"], weights_only=True)
    bad = dict(ck, surprise=1)
    torch.save(bad, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match=r"unexpected checkpoint keys \['surprise'\]"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a kdkit checkpoint"):
        torch.save({"state_dict": {}}, tmp_path / "other.pt")
        load_checkpoint(tmp_path / "other.pt")
    # a pickle that would run code is refused by weights_only loading
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Exception("x")))
    with pytest.raises(ValueError, match="not a loadable kdkit checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    mismatched = dict(ck, vocab=ck["vocab"][:-3])
    with pytest.raises(ValueError, match="the --teacher checkpoint .* and dataset 'synthetic' .* have different ID "
                                         "vocabularies"):
        check_compatible(mismatched, synthetic)
    other = dict(mismatched, provenance={"dataset": "docs/datasets/daga-volvo-v40.toml"})
    with pytest.raises(ValueError, match=r"the checkpoint \(trained on dataset 'docs/datasets/daga-volvo-v40.toml', "
                                         r"\d+ IDs\) and dataset 'synthetic' .*--input FILE"):
        check_compatible(other, synthetic, "evaluated")


# ----------------------------------------------------------------------------- CLI end to end
def test_cli_teacher_student_evaluate(kdkit_env, tmp_path, capsys, monkeypatch):
    from kdkit.cli.main import main

    monkeypatch.chdir(tmp_path)
    cfg = json.dumps({k: v for k, v in TINY.items() if k not in ("epochs",)})
    assert main(["train", "--model", "gat", "--dataset", "synthetic", "--type", "teacher", "--epochs", "1",
                 "--config", cfg, "--run-name", "t"]) == 0
    teacher = tmp_path / "runs" / "t" / "checkpoints" / "best.pt"
    assert teacher.is_file()
    student_cfg = json.dumps({**{k: v for k, v in TINY.items() if k != "epochs"}, "hidden": 8, "heads": 1})
    assert main(["train", "--model", "gat", "--dataset", "synthetic", "--type", "student", "--teacher", str(teacher),
                 "--epochs", "1", "--config", student_cfg, "--run-name", "s"]) == 0
    out = capsys.readouterr().out
    assert "student (KD)" in out and "test_01_known_vehicle_known_attack" in out
    assert main(["evaluate", "--checkpoint", str(tmp_path / "runs" / "s" / "checkpoints" / "best.pt"),
                 "--dataset", "synthetic", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["scenarios"]) >= {"test_01_known_vehicle_known_attack", "test_04_unknown_vehicle_unknown_attack"}
    assert (tmp_path / "runs" / "s" / "evaluation_synthetic.json").is_file()
    # a bad --config key is a clear error with exit code 2
    assert main(["train", "--model", "gat", "--dataset", "synthetic", "--config", '{"lr": 1}']) == 2
    assert "unknown config key 'lr'" in capsys.readouterr().err


def test_list_configs(capsys):
    from kdkit.cli.main import main

    assert main(["train", "--list-configs"]) == 0
    out = capsys.readouterr().out
    for word in ("teacher", "student", "v100", "a100", "kd_temperature", "learning_rate"):
        assert word in out


def test_training_step_goes_through_the_fabric_module(synthetic, tmp_path, monkeypatch):
    """The loss must come from the wrapped module's forward: that is where Fabric applies autocast
    and where DDP hooks in its gradient synchronisation."""
    from lightning_fabric.wrappers import _FabricModule

    from kdkit.workflows.run import train

    calls = []
    real = _FabricModule.forward

    def spy(self, *args, **kwargs):
        calls.append(type(self._original_module).__name__)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(_FabricModule, "forward", spy)
    s = train(tiny_cfg(tmp_path, run_name="spy", epochs=1), progress=False, data=synthetic)
    n_batches = -(-len(synthetic.splits["train"]) // TINY["batch_size"])
    assert calls.count("Task") == n_batches and s["epochs_run"] == 1


def test_compiled_forward_trains_and_saves_plain_keys(synthetic, tmp_path):
    from kdkit.training.checkpoint import load_checkpoint
    from kdkit.workflows.run import train

    s = train(tiny_cfg(tmp_path, run_name="comp", epochs=1, compile=True), progress=False, data=synthetic)
    keys = load_checkpoint(s["best_checkpoint"])["model"].keys()
    assert not any("_orig_mod" in k for k in keys) and torch.isfinite(torch.tensor(s["history"][0]["train_loss"]))


def test_kdkit_train_prints_the_still_learning_note_once(caplog):
    """`kdkit train` prints the note after its table; the run's log record of it is held back
    meanwhile (other warnings of the run are not), and a library caller still gets the record."""
    import logging

    from kdkit.cli.train import _end_notes_held
    from kdkit.workflows.run import END_NOTE

    run_log = logging.getLogger("kdkit.workflows.run")
    with caplog.at_level(logging.WARNING, logger="kdkit.workflows.run"):
        with _end_notes_held():
            run_log.warning("still learning when training stopped: ...", extra={END_NOTE: True})
            run_log.warning("another warning")
        run_log.warning("still learning (library caller)", extra={END_NOTE: True})
    assert [r.getMessage() for r in caplog.records] == ["another warning", "still learning (library caller)"]
    assert not run_log.filters  # the filter goes with the command
