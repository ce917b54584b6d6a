"""Data settings users reached for and did not find: suppress/masquerade recordings in training
(``include_excluded``) and a bus channel (``channel``) as run-schema fields, a JSON spec of the
wrong shape, a near-miss dataset key, and the fallback data roots named when none holds the data.

Run: .venv/bin/python -m pytest tests/test_user_findings_data.py -q
"""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
from test_datasets import make_layout

from kdkit.cli.main import main
from kdkit.cli.train import add_train_arguments
from kdkit.config import make_config, overrides_from_args, to_argv
from kdkit.data.datasets import PrepareConfig, check_dataset, discover, prepare
from kdkit.data.loggers import MixedChannelsError
from kdkit.data.sources import DatasetSpecError
from kdkit.workflows.run import checkpoint_data, load_data

SMALL = dict(window=10, stride=10)


def _train_parser():
    import argparse

    parser = argparse.ArgumentParser(prog="kdkit train")
    add_train_arguments(parser)
    return parser


# ------------------------------------------------------------------ include_excluded
def test_include_excluded_is_a_run_setting_that_trains_on_the_excluded_recordings(tmp_path: Path, monkeypatch):
    root = make_layout(tmp_path / "data", folder="set_01", extra_sets=True)
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    default = load_data(make_config(dataset="set_01", data_root=str(root), **SMALL))
    trained = {Path(f).name for s in ("train", "val") for f in default.splits[s].files}
    assert "suppress-alpha.csv" not in trained and "train_excluded_masquerade_suppress" in default.scenarios

    cfg = make_config(dataset="set_01", data_root=str(root), include_excluded=True, **SMALL)
    both = load_data(cfg)
    trained = {Path(f).name for s in ("train", "val") for f in both.splits[s].files}
    assert {"suppress-alpha.csv", "masquerade-bravo.csv"} <= trained
    assert "train_excluded_masquerade_suppress" not in both.scenarios and both.info["excluded_from_training"] == []
    assert both.cache_dir != default.cache_dir  # another set of training recordings: another store
    # kdkit evaluate rebuilds the graphs the checkpoint was trained on: the same store, the same vocabulary
    again = checkpoint_data({"train_config": cfg.to_dict()})
    assert again.loaded_from_cache and again.cache_dir == both.cache_dir and again.vocab.to_list() == both.vocab.to_list()
    # a kdkit train flag (and so a --config key, a SLURM job argument, a notebook parameter)
    args = _train_parser().parse_args(["--dataset", "synthetic", "--include-excluded"])
    assert overrides_from_args(args) == {"dataset": "synthetic", "include_excluded": True}
    assert to_argv({"include_excluded": True}) == ["--include-excluded"]


# ------------------------------------------------------------------ channel
def _two_bus_folder(folder: Path) -> Path:
    """A folder dataset whose recordings are candump logs of two buses: can0 carries 3 of every 4
    frames (IDs 0C1, 1A0, 2B0), can1 the rest (ID 7FF)."""
    def log(n: int, attack: bool = False) -> str:
        lines = []
        for i in range(n):
            bus, can_id = ("can1", "7FF") if i % 4 == 3 else ("can0", ["0C1", "1A0", "2B0"][i % 3])
            lines.append(f"({i * 0.001:.6f}) {bus} {can_id}#{i % 256:02X}{'FF' if attack else '00'}0000")
        return "\n".join(lines) + "\n"

    for rel, n in (("train_01_attack_free/capture.log", 400), ("test_01_replay/capture-2.log", 120)):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(log(n))
    return folder


def test_a_channel_picks_the_bus_of_a_folder_datasets_logger_files(tmp_path: Path, monkeypatch, capsys):
    folder = _two_bus_folder(tmp_path / "mycar")
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(MixedChannelsError) as err:
        prepare(str(folder), PrepareConfig(**SMALL))
    message = str(err.value)
    assert "frames of 2 bus channels" in message and "can0 (300), can1 (100)" in message
    assert "--channel NAME on kdkit train and kdkit data prepare|info" in message and "--channel '*'" in message
    assert str(pickle.loads(pickle.dumps(err.value))) == message  # as a preparation worker process re-raises it

    can0 = prepare(str(folder), PrepareConfig(**SMALL), channel="can0")
    assert can0.info["messages_read"] == 300 + 90 and can0.info["source"]["channel"] == "can0"
    can1 = prepare(str(folder), PrepareConfig(**SMALL), channel="can1")
    merged = prepare(str(folder), PrepareConfig(**SMALL), channel="*")
    assert can1.info["messages_read"] == 100 + 30 and merged.info["messages_read"] == 400 + 120
    assert len({can0.cache_dir, can1.cache_dir, merged.cache_dir}) == 3  # the channel is part of the store's key
    assert prepare(str(folder), PrepareConfig(**SMALL), channel="can0").loaded_from_cache

    # the run schema: kdkit train --channel, make_config(channel=...), kdkit evaluate's rebuild
    cfg = make_config(dataset=str(folder), channel="can0", model="vgae", **SMALL)
    assert load_data(cfg).cache_dir == can0.cache_dir
    assert checkpoint_data({"train_config": cfg.to_dict()}).cache_dir == can0.cache_dir
    args = _train_parser().parse_args(["--dataset", str(folder), "--channel", "can0"])
    assert overrides_from_args(args) == {"dataset": str(folder), "channel": "can0"}
    # kdkit data info/prepare
    assert main(["data", "info", "--dataset", str(folder), "--window", "10", "--stride", "10"]) != 0
    assert "--channel NAME on kdkit train" in capsys.readouterr().err
    assert main(["data", "info", "--dataset", str(folder), "--window", "10", "--stride", "10", "--channel", "can1",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["messages_read"] == 130


def test_a_given_channel_replaces_the_spec_ones(tmp_path: Path, monkeypatch):
    folder = _two_bus_folder(tmp_path / "mycar")
    (folder / "kdkit-dataset.toml").write_text('[dataset]\nname = "mycar"\nchannel = "can1"\n'
                                               'train_attack_free = ["train_01_attack_free/*"]\n'
                                               '[dataset.tests]\nreplay = ["test_01_replay/*"]\n')
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    assert prepare(str(folder), PrepareConfig(**SMALL)).info["messages_read"] == 130  # the spec's can1
    assert prepare(str(folder), PrepareConfig(**SMALL), channel="can0").info["messages_read"] == 390
    spec = folder / "kdkit-dataset.toml"
    spec.write_text(spec.read_text().replace('channel = "can1"\n', ""))
    with pytest.raises(MixedChannelsError) as err:  # a spec without a channel: the error names the spec too
        prepare(str(folder), PrepareConfig(**SMALL))
    assert f"channel = \"NAME\" in its spec {spec}" in str(err.value)


# ------------------------------------------------------------------ spec shapes
def test_a_json_spec_with_a_list_of_datasets_says_which_shape_is_expected(tmp_path: Path):
    spec = tmp_path / "cars.json"
    spec.write_text(json.dumps({"datasets": [{"name": "volvo", "root": ".", "train_attack_free": ["clean/*"]}]}))
    with pytest.raises(DatasetSpecError) as err:
        prepare(str(spec))
    message = str(err.value)
    assert message.startswith(f"{spec}: \"datasets\" must be an object of name -> dataset")
    assert '{"datasets": {"volvo": {' in message and "got a list of 1" in message
    with pytest.raises(ValueError, match=r"config key 'dataset': .*cars\.json: \"datasets\" must be an object"):
        make_config(dataset=str(spec))
    spec.write_text(json.dumps({"dataset": [{"name": "volvo"}]}))
    with pytest.raises(DatasetSpecError, match=r"\"dataset\" must be one object, .*got a list of 1"):
        prepare(str(spec))
    toml = tmp_path / "cars.toml"
    toml.write_text('[[datasets]]\nname = "volvo"\ntrain_attack_free = ["clean/*"]\n')
    with pytest.raises(DatasetSpecError, match=r"cars\.toml: datasets must be \[datasets\.<name>\] tables.*\[\[\.\.\.\]\]"):
        prepare(str(toml))


# ------------------------------------------------------------------ dataset names and data roots
def test_a_near_miss_of_a_dataset_key_is_suggested(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for typed, meant in (("hcrl-sa", "hcrl_sa"), ("HCRL_CH", "hcrl_ch"), ("set-02", "set_02"), ("sythetic", "synthetic")):
        with pytest.raises(ValueError, match=rf"unknown dataset '{typed}' \(did you mean '{meant}'\?\): not a registry"):
            check_dataset(typed)
    with pytest.raises(ValueError) as err:
        check_dataset("banana")
    assert "did you mean" not in str(err.value)
    assert main(["train", "--dataset", "hcrl-sa", "--epochs", "1"]) != 0
    assert "did you mean 'hcrl_sa'?" in capsys.readouterr().err


def test_without_a_data_root_every_fallback_folder_is_named_and_searched(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("KDKIT_DATA_ROOT", raising=False)
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    with pytest.raises(FileNotFoundError) as err:
        discover("hcrl_sa")
    message = str(err.value)
    assert ("none of the folders looked in exists: data/can-train-and-test/hcrl-sa, "
            "../shared/data/can-train-and-test/hcrl-sa, ../../shared/data/can-train-and-test/hcrl-sa "
            f"(relative to the current directory, {cwd})") in message
    assert "--data-root" in message and "KDKIT_DATA_ROOT" in message
    # a fallback root without the dataset does not hide a later one that holds it
    (cwd / "data" / "can-train-and-test").mkdir(parents=True)
    make_layout(tmp_path / "shared" / "data" / "can-train-and-test")
    assert discover("hcrl_sa").root == Path("../../shared/data/can-train-and-test/hcrl-sa")
    # a data root that is given is the one place looked in
    shutil.rmtree(tmp_path / "shared")
    with pytest.raises(FileNotFoundError, match=rf"folder {tmp_path}/x/hcrl-sa does not exist"):
        discover("hcrl_sa", data_root=tmp_path / "x")
