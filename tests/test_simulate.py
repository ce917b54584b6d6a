"""Tests of the synthetic CAN traffic simulator (kdkit/simulate.py)."""
from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest

from kdkit.data import simulate as sim

FOLDERS = {
    "train_01_attack_free": {"attack-free-alpha.csv", "attack-free-bravo.csv"},
    "train_02_with_attacks": {"attack-free-alpha.csv", "attack-free-bravo.csv",
                              "DoS-alpha.csv", "fuzzing-bravo.csv"},
    "test_01_known_vehicle_known_attack": {"DoS-bravo.csv", "fuzzing-alpha.csv"},
    "test_02_unknown_vehicle_known_attack": {"DoS-charlie.csv", "fuzzing-charlie.csv"},
    "test_03_known_vehicle_unknown_attack": {"malfunction-alpha.csv", "malfunction-bravo.csv",
                                             "rpm-alpha.csv"},
    "test_04_unknown_vehicle_unknown_attack": {"malfunction-charlie.csv", "gear-charlie.csv"},
}
ROW = re.compile(rb"^\d{10}\.\d{6},[0-9A-F]{3},(?:[0-9A-F]{2}){0,8},[01]$")


def read(path: Path) -> dict[str, np.ndarray]:
    lines = path.read_bytes().decode().splitlines()
    assert lines[0] == "timestamp,arbitration_id,data_field,attack"
    ts, ids, data, lab = zip(*(line.split(",") for line in lines[1:]))
    return {"t": np.array(ts, dtype=float), "id": np.array([int(i, 16) for i in ids]),
            "data": np.array(data), "label": np.array(lab, dtype=int)}


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return sim.simulate(tmp_path_factory.mktemp("syn") / "data", seed=0, scale=0.3)


@pytest.fixture(scope="module")
def manifest(root) -> dict:
    return json.loads((root / "manifest.json").read_text())


def test_layout_header_and_duplicates(root, manifest):
    folders = {p.name for p in root.iterdir() if p.is_dir()}
    assert folders == set(FOLDERS)
    for folder, names in FOLDERS.items():
        assert {p.name for p in (root / folder).iterdir()} == names
        for name in names:
            assert (root / folder / name).read_bytes().startswith(sim.HEADER)
    assert (root / "README.txt").is_file()
    assert manifest["complete"] is True and manifest["seed"] == 0
    assert set(manifest["files"]) == {f"{f}/{n}" for f, names in FOLDERS.items() for n in names}
    for name in FOLDERS["train_01_attack_free"]:  # the real release's duplicate quirk
        a = (root / "train_01_attack_free" / name).read_bytes()
        assert a == (root / "train_02_with_attacks" / name).read_bytes()
        assert manifest["files"][f"train_02_with_attacks/{name}"]["duplicate_of"] == \
            f"train_01_attack_free/{name}"


def test_rows_valid_sorted_and_counted(root, manifest):
    for rel, info in manifest["files"].items():
        raw = (root / rel).read_bytes().splitlines()[1:]
        assert all(ROW.match(line) for line in raw), rel
        f = read(root / rel)
        assert len(f["t"]) == info["messages"] and f["label"].sum() == info["attacks"]
        assert np.all(np.diff(f["t"]) >= 0), rel
        dlc = np.char.str_len(f["data"]) // 2
        assert dlc.min() >= 0 and dlc.max() <= 8
        assert np.all(f["id"] <= 0x7FF)


def test_attack_semantics(root, manifest):
    vehicles = {k: {int(i, 16) for i in v["ids"]} for k, v in manifest["vehicles"].items()}
    for rel, info in manifest["files"].items():
        f = read(root / rel)
        att = f["label"] == 1
        normal_ids = set(f["id"][~att].tolist())
        assert normal_ids == vehicles[info["vehicle"]], rel
        kind = info["attack_type"]
        if kind == "attack-free":
            assert not att.any(), rel
            continue
        assert 0.01 < att.mean() < 0.4, rel
        aid, adata = f["id"][att], f["data"][att]
        if kind == "DoS":
            assert set(aid.tolist()) == {0} and set(adata.tolist()) == {"0" * 16}
            assert np.median(np.diff(f["t"][att])) == pytest.approx(0.3e-3, rel=0.3)
        elif kind == "fuzzing":
            assert len(set(aid.tolist())) > 200 and aid.min() < 0x100 and aid.max() > 0x700
            assert len(set(adata.tolist())) > 0.9 * att.sum()
            assert len(set(aid.tolist()) - vehicles[info["vehicle"]]) > 150
        elif kind == "malfunction":
            targets = {int(t, 16) for t in info["target_ids"]}
            assert set(aid.tolist()) == targets and targets <= vehicles[info["vehicle"]]
            assert targets <= normal_ids  # the ID keeps sending its normal frames too
            assert len(set(adata.tolist())) > 0.9 * att.sum()  # random payloads
        else:  # gear / rpm spoofing: one legitimate ID, one fixed payload
            assert kind in ("gear", "rpm")
            assert len(set(aid.tolist())) == 1 and len(set(adata.tolist())) == 1
            assert int(info["target_ids"][0], 16) in vehicles[info["vehicle"]]
            assert np.median(np.diff(f["t"][att])) == pytest.approx(1e-3, rel=0.3)


def test_known_attacks_only_in_training_and_known_tests(manifest):
    for rel, info in manifest["files"].items():
        if rel.startswith(("train_", "test_01", "test_02")):
            assert info["attack_type"] in ("attack-free", "DoS", "fuzzing")
        else:
            assert info["attack_type"] in ("malfunction", "gear", "rpm")
        assert info["known_vehicle"] == (not rel.startswith(("test_02", "test_04")))


def test_unknown_vehicle_shares_few_ids(root):
    known = set(read(root / "train_01_attack_free/attack-free-alpha.csv")["id"].tolist())
    known |= set(read(root / "train_01_attack_free/attack-free-bravo.csv")["id"].tolist())
    f = read(root / "test_04_unknown_vehicle_unknown_attack/malfunction-charlie.csv")
    unknown = set(f["id"][f["label"] == 0].tolist())
    assert 30 <= len(unknown) <= 60 and 30 <= len(known) <= 120
    assert len(unknown & known) <= 0.1 * len(unknown)


def test_periods_and_payload_structure(root, manifest):
    prof = manifest["vehicles"]["alpha"]
    periods = {int(i, 16): p / 1000 for i, p in zip(prof["ids"], prof["periods_ms"])}
    dlcs = {int(i, 16): d for i, d in zip(prof["ids"], prof["dlc"])}
    f = read(root / "train_01_attack_free/attack-free-alpha.csv")
    assert len(set(periods.values())) >= 3
    for can_id, period in periods.items():
        sel = f["id"] == can_id
        if sel.sum() >= 3:
            assert np.median(np.diff(f["t"][sel])) == pytest.approx(period, rel=0.05)
        assert set(np.char.str_len(f["data"][sel]).tolist()) <= {2 * dlcs[can_id]}
    assert np.mean(list(dlcs.values())) > 6  # mostly DLC 8
    # some IDs carry changing signals / counters, others constant payloads
    n_distinct = [len(set(f["data"][f["id"] == i].tolist())) for i in periods
                  if (f["id"] == i).sum() >= 20]
    assert max(n_distinct) > 10 and min(n_distinct) <= 2


def test_deterministic_and_seed_dependent(tmp_path):
    a = all_files(sim.simulate(tmp_path / "a", seed=7, scale=0.05))
    b = all_files(sim.simulate(tmp_path / "b", seed=7, scale=0.05))
    c = all_files(sim.simulate(tmp_path / "c", seed=8, scale=0.05))
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if k.endswith(".csv"))


def test_gzip_option_same_content(tmp_path):
    plain = sim.simulate(tmp_path / "p", seed=2, scale=0.05)
    gz = sim.simulate(tmp_path / "g", seed=2, scale=0.05, gzip=True)
    p = gz / "test_01_known_vehicle_known_attack/DoS-bravo.csv.gz"
    assert gzip.decompress(p.read_bytes()) == \
        (plain / "test_01_known_vehicle_known_attack/DoS-bravo.csv").read_bytes()
    again = sim.simulate(tmp_path / "g2", seed=2, scale=0.05, gzip=True)
    assert p.read_bytes() == (again / p.relative_to(gz)).read_bytes()


def test_default_sizes(tmp_path):
    m = json.loads((sim.simulate(tmp_path / "d", seed=0) / "manifest.json").read_text())
    assert 60_000 <= m["unique_training_messages"] <= 120_000
    for rel, info in m["files"].items():
        if rel.startswith("test_"):
            assert 10_000 <= info["messages"] <= 30_000, rel


def test_resimulate_removes_previous_files(tmp_path):
    sim.simulate(tmp_path, seed=0, scale=0.05, gzip=True)
    sim.simulate(tmp_path, seed=0, scale=0.05)
    assert not list(tmp_path.rglob("*.csv.gz"))
    assert len(list(tmp_path.rglob("*.csv"))) == sum(len(v) for v in FOLDERS.values())


def test_default_root_and_ensure_synthetic(tmp_path, monkeypatch):
    monkeypatch.delenv("KDKIT_SYNTHETIC_ROOT", raising=False)
    assert sim.default_synthetic_root(3) == Path("runs/data/synthetic-seed3")
    monkeypatch.setenv("KDKIT_SYNTHETIC_ROOT", str(tmp_path / "syn-{seed}"))
    assert sim.default_synthetic_root(3) == tmp_path / "syn-3"
    root = sim.ensure_synthetic(seed=3, scale=0.05)
    assert root == tmp_path / "syn-3" and (root / "manifest.json").is_file()
    stamp = (root / "manifest.json").stat().st_mtime_ns
    assert sim.ensure_synthetic(seed=3, scale=0.05) == root
    assert (root / "manifest.json").stat().st_mtime_ns == stamp  # cached, not rewritten
    (root / "train_01_attack_free/attack-free-alpha.csv").unlink()  # incomplete -> redo
    sim.ensure_synthetic(seed=3, scale=0.05)
    assert (root / "train_01_attack_free/attack-free-alpha.csv").is_file()
