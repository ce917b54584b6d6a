"""The ``kdkit data`` and ``kdkit bench preprocess`` commands, called through ``kdkit.cli.main``
on the built-in synthetic dataset (simulated into a temp dir)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdkit.cli.main import main
from kdkit.data import graphs


@pytest.fixture
def env(tmp_path: Path, monkeypatch) -> Path:
    """Synthetic data root and graph cache in this test's temp dir."""
    monkeypatch.setenv("KDKIT_SYNTHETIC_ROOT", str(tmp_path / "synthetic-seed{seed}"))
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("KDKIT_DEBUG", raising=False)
    return tmp_path


def simulate(env: Path, capsys) -> Path:
    out = env / "synthetic-seed0"
    assert main(["data", "simulate", "--out", str(out), "--seed", "0"]) == 0  # what `prepare` expects: no resimulation
    assert f"to {out}" in capsys.readouterr().out
    return out


def test_simulate_prepare_info(env: Path, capsys):
    out = simulate(env, capsys)
    assert (out / "manifest.json").is_file() and (out / "train_02_with_attacks" / "DoS-alpha.csv").is_file()

    assert main(["data", "prepare", "--dataset", "synthetic"]) == 0
    text = capsys.readouterr().out
    assert "graphs built into" in text and str(env / "cache" / "synthetic") in text
    assert "skipped" not in text
    assert main(["data", "prepare", "--dataset", "synthetic"]) == 0
    assert "graphs loaded from" in capsys.readouterr().out

    assert main(["data", "info", "--dataset", "synthetic", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["dataset"] == "synthetic" and info["root"] == str(out)
    assert info["config"]["window"] == 100 and info["config"]["on_bad_rows"] == "error"
    splits = info["splits"]
    assert list(splits)[:2] == ["train", "val"] and len(splits) == 6
    for name, s in splits.items():
        assert s["windows"] > 0, name
        assert 0 <= s["attack_windows"] <= s["windows"]
        assert s["nodes_mean"] > 1 and s["edges_mean"] >= s["nodes_mean"] - 1
    assert splits["test_02_unknown_vehicle_known_attack"]["oov_nodes"] > 0  # the unknown vehicle
    assert len(info["duplicates_skipped"]) == 2 and info["vocab_size"] > 1

    assert main(["data", "info", "--dataset", "synthetic"]) == 0
    table = capsys.readouterr().out
    assert "read once:" in table and "OOV nodes" in table and "test_04_unknown_vehicle_unknown_attack" in table


def test_settings_reach_the_store(env: Path, capsys):
    simulate(env, capsys)
    assert main(["data", "info", "--dataset", "synthetic", "--json", "--window", "50", "--stride", "25",
                 "--val-fraction", "0.1", "--seed", "3", "--label-threshold", "0.1"]) == 0
    info = json.loads(capsys.readouterr().out)
    expected = {"window": 50, "stride": 25, "val_fraction": 0.1, "seed": 3, "label_threshold": 0.1}
    assert {k: info["config"][k] for k in expected} == expected
    assert main(["data", "info", "--dataset", "synthetic", "--json"]) == 0
    default = json.loads(capsys.readouterr().out)
    # stride 25 < window 50: about four times the windows of the default 100/100
    n_default, n_small = (sum(s["windows"] for s in d["splits"].values()) for d in (default, info))
    assert 3 * n_default < n_small < 5 * n_default


def test_bad_rows_error_and_skip(env: Path, capsys):
    out = simulate(env, capsys)
    path = out / "train_02_with_attacks" / "DoS-alpha.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3] + ["1513920000.5,0G1,00,0\n"] + lines[3:7] + ["1513920000.6,0C1,00\n"] + lines[7:]))

    assert main(["data", "prepare", "--dataset", "synthetic"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"kdkit: error: {path}:4: arbitration_id '0G1'")  # on its own line

    assert main(["data", "prepare", "--dataset", "synthetic", "--on-bad-rows", "skip"]) == 0
    text = capsys.readouterr().out
    assert f"skipped 2 malformed rows in {path}" in text
    assert text.count("skipped") == 1  # only the file that had them
    assert main(["data", "info", "--dataset", "synthetic", "--on-bad-rows", "skip", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["skipped_rows"] == {str(path): 2}
    assert info["skipped"][str(path)]["attack_rows"] == 0 and info["skipped"][str(path)]["unlabelled_rows"] == 1
    # the table names the file, the count and the labels of the skipped rows (the row with 3 fields has none)
    assert main(["data", "info", "--dataset", "synthetic", "--on-bad-rows", "skip"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert f"  skipped 2 malformed rows in {path} (0 attack, 1 normal, 1 with no readable label)" in table
    assert f"    first: {path}:4: arbitration_id '0G1': not a hex CAN ID of 1-8 digits" in table


def test_missing_data_root_is_a_clear_error(env: Path, capsys):
    assert main(["data", "info", "--dataset", "hcrl_sa", "--data-root", str(env / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kdkit: error: dataset 'hcrl_sa': folder")
    assert "train_01_attack_free" in err and "--data-root" in err and "KDKIT_DATA_ROOT" in err
    # not a key, folder, spec or declared name: the error lists the keys and points to the README
    assert main(["data", "info", "--dataset", "hcrl-sa"]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'hcrl-sa'" in err and "hcrl_sa" in err and "Bring your own data" in err


def test_bench_preprocess_file_and_baseline(env: Path, capsys, monkeypatch):
    out = simulate(env, capsys)
    path = out / "train_02_with_attacks" / "DoS-alpha.csv"
    assert main(["bench", "preprocess", "--file", str(path), "--repeats", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    n = len(path.read_text().splitlines()) - 1
    assert r["benchmark"] == "preprocess" and r["messages"] == n and r["windows"] == n // 100
    assert set(r["stage_seconds_median"]) == {"read", "graphs", "store"} and len(r["seconds_all"]) == 1
    assert r["messages_per_s"] > 0 and r["threads"] == 1 and "cpu" in r["machine"]
    monkeypatch.setenv("KDKIT_GRAPH_BUILDER", "auto")  # restored afterwards: --builder sets it for the cold runs
    monkeypatch.setattr(graphs, "BUILDER", "auto")
    assert main(["bench", "preprocess", "--file", str(path), "--repeats", "1", "--builder", "compiled", "--json"]) == 0
    c = json.loads(capsys.readouterr().out)
    assert c["builder"] == "compiled" and c["messages"] == n and c["windows"] == r["windows"]
    assert main(["bench", "preprocess", "--file", str(path), "--baseline", "pandas", "--limit", "300", "--repeats", "2",
                 "--json"]) == 0
    b = json.loads(capsys.readouterr().out)
    assert b["benchmark"] == "preprocess-pandas-baseline" and b["messages"] == 300 and b["windows"] == 3
    assert b["repeats"] == 2 and len(b["variants"]["kdkit"]["wall_s_all"]) == 2


def test_stride_follows_the_window_and_a_gap_between_windows_is_warned(env: Path, capsys, caplog, tmp_path):
    """A new user's `--window 50` kept the stride at 100: every other 50 messages (attacks among them)
    were in no window, silently. The stride now follows the window unless it is set (also over a
    spec's stride, which was meant for the spec's window); a stride above the window is warned."""
    import logging

    from kdkit.config import make_config

    simulate(env, capsys)
    assert main(["data", "info", "--dataset", "synthetic", "--json", "--window", "50"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["config"]["window"], info["config"]["stride"]) == (50, 50)
    assert make_config(dataset="synthetic", window=50).stride == 50
    assert make_config(dataset="synthetic").stride == 100
    spec = tmp_path / "spec.toml"
    spec.write_text(f'[dataset]\nname = "s"\nroot = "{env / "synthetic-seed0"}"\nwindow = 40\nstride = 20\n'
                    'description = "two drives; the tests reuse the training drive"\n'
                    'train_attack_free = ["train_01_attack_free/*.csv"]\n')
    assert (make_config(dataset=str(spec)).window, make_config(dataset=str(spec)).stride) == (40, 20)
    assert make_config(dataset=str(spec), window=60).stride == 60
    assert make_config(dataset=str(spec), window=60, stride=30).stride == 30
    assert main(["data", "info", "--dataset", str(spec)]) == 0  # a spec's description is shown under its name
    assert capsys.readouterr().out.splitlines()[1] == "  two drives; the tests reuse the training drive"
    with caplog.at_level(logging.WARNING, logger="kdkit.data"):
        assert main(["data", "info", "--dataset", "synthetic", "--window", "50", "--stride", "100"]) == 0
    assert "stride 100 > window 50: 50 of every 100 messages fall in no window" in caplog.text
    with pytest.raises(ValueError, match="no window's is at 1"):
        make_config(label_threshold=1.0)
    assert main(["data", "info", "--dataset", "synthetic", "--label-threshold", "1"]) == 2
    assert "no window's is at 1" in capsys.readouterr().err


def test_data_info_tells_the_attack_types_of_each_split_apart(env: Path, capsys):
    """A new user could not tell DoS from fuzzing windows in the training split: data info counts
    the attack windows of each split per attack type."""
    simulate(env, capsys)
    assert main(["data", "info", "--dataset", "synthetic"]) == 0
    out = capsys.readouterr().out
    assert "attack windows by type:" in out
    train = next(line for line in out.splitlines() if line.startswith("  train "))
    assert "DoS" in train and "fuzzing" in train
