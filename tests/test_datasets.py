"""Tests of the dataset layer (kdkit/datasets.py) on tiny can-train-and-test layouts written
in a temp dir: registry, data root, discovery, dedup, exclusions, split, vocabulary, cache."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import kdkit.data.datasets as ds
from kdkit.data.sources import DatasetSource
from kdkit.data.datasets import REGISTRY, PrepareConfig, discover, prepare, resolve_data_root, validation_block
from kdkit.data.graphs import GraphSet
from kdkit.data.readers import read_messages

HEADER = "timestamp,arbitration_id,data_field,attack\n"
W = 10
CFG = PrepareConfig(window=W, stride=W)
RARE_ID = 0x7AA  # appears in exactly one window of attack-free-alpha


def write_recording(path: Path, n: int, ids: list[int], seed: int, attack_id: int | None = None,
                    attack_every: int = 0, rare_at: int | None = None) -> Path:
    """A small CSV: IDs cycling through ``ids``; optionally attack rows and one rare-ID row."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        cid, label = ids[i % len(ids)], 0
        if attack_every and i % attack_every == attack_every - 1 and (i // 100) % 2 == 1:
            cid, label = attack_id, 1
        if rare_at is not None and i == rare_at:
            cid = RARE_ID
        payload = "".join(f"{b:02X}" for b in rng.integers(0, 256, 1 + i % 8))
        rows.append(f"{1_500_000_000 + seed * 1000 + i * 0.001:.6f},{cid:03X},{payload},{label}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + "".join(rows))
    return path


def make_layout(root: Path, folder: str = "hcrl-sa", extra_sets: bool = False) -> Path:
    base = root / folder
    alpha, bravo, charlie = [0x100, 0x101, 0x102, 0x103], [0x200, 0x201, 0x202], [0x300, 0x301, 0x100]
    write_recording(base / "train_01_attack_free" / "attack-free-alpha.csv", 500, alpha, 1, rare_at=255)
    write_recording(base / "train_01_attack_free" / "attack-free-bravo.csv", 400, bravo, 2)
    (base / "train_02_with_attacks").mkdir()
    for name in ("attack-free-alpha.csv", "attack-free-bravo.csv"):  # byte-identical copies, as in the release
        shutil.copy(base / "train_01_attack_free" / name, base / "train_02_with_attacks" / name)
    write_recording(base / "train_02_with_attacks" / "DoS-alpha.csv", 600, alpha, 3, attack_id=0x000, attack_every=3)
    write_recording(base / "test_01_known_vehicle_known_attack" / "DoS-bravo.csv", 300, bravo, 4, attack_id=0x000, attack_every=3)
    write_recording(base / "test_02_unknown_vehicle_known_attack" / "DoS-charlie.csv", 250, charlie, 5,
                    attack_id=0x000, attack_every=4)
    if extra_sets:  # set_0x style: suppress / masquerade recordings in training and as tests
        write_recording(base / "train_02_with_attacks" / "suppress-alpha.csv", 300, alpha, 6)
        write_recording(base / "train_02_with_attacks" / "masquerade-bravo.csv", 300, bravo, 7, attack_id=0x201, attack_every=5)
        write_recording(base / "test_05_suppress" / "suppress-bravo.csv", 200, bravo, 8)
        write_recording(base / "test_06_masquerade" / "masquerade-alpha.csv", 200, alpha, 9, attack_id=0x101, attack_every=5)
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_layout(tmp_path / "data")


# --------------------------------------------------------------------------------------
# registry, data root, discovery


def test_registry_keys_and_folders():
    assert set(REGISTRY) == {"hcrl_ch", "hcrl_sa", "set_01", "set_02", "set_03", "set_04", "synthetic"}
    assert REGISTRY["hcrl_sa"].folder == "hcrl-sa" and REGISTRY["hcrl_ch"].folder == "hcrl-ch"
    assert [REGISTRY[f"set_0{i}"].folder for i in range(1, 5)] == ["set_01", "set_02", "set_03", "set_04"]
    assert ds.dataset_dir("hcrl_sa", "/x/y") == Path("/x/y/hcrl-sa")
    with pytest.raises(KeyError, match="unknown dataset 'hcrl-sa'; known: hcrl_ch, hcrl_sa"):
        ds.dataset_dir("hcrl-sa")


def test_data_root_argument_env_and_default(root: Path, monkeypatch, tmp_path: Path):
    monkeypatch.setenv("KDKIT_DATA_ROOT", str(root))
    assert resolve_data_root() == root
    assert resolve_data_root(tmp_path / "other") == tmp_path / "other"  # the argument wins
    assert discover("hcrl_sa").root == root / "hcrl-sa"
    monkeypatch.delenv("KDKIT_DATA_ROOT")
    monkeypatch.chdir(tmp_path)  # no default folder exists here
    assert resolve_data_root() == Path("data/can-train-and-test")
    assert discover("hcrl_sa", data_root=root).root == root / "hcrl-sa"


def test_missing_folders_name_the_expected_layout(root: Path, tmp_path: Path):
    with pytest.raises(FileNotFoundError) as err:
        discover("hcrl_ch", data_root=root)
    msg = str(err.value)
    assert f"{root}/hcrl-ch does not exist" in msg
    assert "train_01_attack_free" in msg and "train_02_with_attacks" in msg and "test_*" in msg
    assert "--data-root" in msg and "KDKIT_DATA_ROOT" in msg and "'hcrl-ch'" in msg
    # a partial release: one training folder is enough, a missing test folder is reported, not fatal
    shutil.rmtree(root / "hcrl-sa" / "train_02_with_attacks")
    files = discover("hcrl_sa", data_root=root)
    assert files.train and all(p.parent.name == "train_01_attack_free" for p in files.train)
    empty = tmp_path / "empty" / "hcrl-sa"
    (empty / "train_01_attack_free").mkdir(parents=True)
    (empty / "train_02_with_attacks").mkdir()
    with pytest.raises(FileNotFoundError, match="no recordings .* in .*train_01_attack_free"):
        discover("hcrl_sa", data_root=empty.parent)
    shutil.rmtree(empty / "train_01_attack_free")
    shutil.rmtree(empty / "train_02_with_attacks")
    with pytest.raises(FileNotFoundError, match="no train_01_attack_free or train_02_with_attacks folder"):
        discover("hcrl_sa", data_root=empty.parent)
    (empty / "train_01_attack_free").mkdir()
    shutil.copy(next((root / "hcrl-sa" / "train_01_attack_free").iterdir()), empty / "train_01_attack_free")
    (empty / "test_01_x").mkdir()
    files = discover("hcrl_sa", data_root=empty.parent)
    assert files.tests == {} and "test_01_x" in files.missing_scenarios


def test_byte_identical_files_are_read_once(root: Path, tmp_path: Path, monkeypatch):
    files = discover("hcrl_sa", data_root=root)
    base = root / "hcrl-sa"
    assert [p.relative_to(base).as_posix() for p in files.train] == [
        "train_01_attack_free/attack-free-alpha.csv", "train_01_attack_free/attack-free-bravo.csv",
        "train_02_with_attacks/DoS-alpha.csv"]
    assert [(a.relative_to(base).as_posix(), b.relative_to(base).as_posix()) for a, b in files.duplicates] == [
        ("train_02_with_attacks/attack-free-alpha.csv", "train_01_attack_free/attack-free-alpha.csv"),
        ("train_02_with_attacks/attack-free-bravo.csv", "train_01_attack_free/attack-free-bravo.csv")]
    assert list(files.tests) == ["test_01_known_vehicle_known_attack", "test_02_unknown_vehicle_known_attack"]
    assert len(files.hashes) == 7

    reads: list[str] = []
    real = DatasetSource.chunks  # recordings are streamed in chunks
    monkeypatch.setattr(DatasetSource, "chunks", lambda self, p, **kw: reads.append(Path(p).name) or real(self, p, **kw))
    d = prepare("hcrl_sa", CFG, data_root=root, cache_dir=tmp_path / "cache")
    assert sorted(reads) == sorted(["attack-free-alpha.csv", "attack-free-bravo.csv", "DoS-alpha.csv",
                                    "DoS-bravo.csv", "DoS-charlie.csv"])  # each distinct file once
    assert len(d.splits["train"]) + len(d.splits["val"]) == (500 + 400 + 600) // W
    assert len(d.info["duplicates_skipped"]) == 2


def test_suppress_and_masquerade_left_out_of_training(tmp_path: Path):
    root = make_layout(tmp_path / "data", folder="set_01", extra_sets=True)
    files = discover("set_01", data_root=root)
    assert sorted(p.name for p in files.excluded) == ["masquerade-bravo.csv", "suppress-alpha.csv"]
    assert not any(k in p.name for p in files.train for k in ("suppress", "masquerade"))
    assert {"test_05_suppress", "test_06_masquerade"} <= set(files.tests)
    d = prepare("set_01", CFG, data_root=root, cache_dir=tmp_path / "cache")
    assert d.scenarios == ["test_01_known_vehicle_known_attack", "test_02_unknown_vehicle_known_attack",
                           "test_05_suppress", "test_06_masquerade", "train_excluded_masquerade_suppress"]
    excluded = d.splits["train_excluded_masquerade_suppress"]  # kept as a test scenario, never trained on
    assert {Path(f).name for f in excluded.files} == {"masquerade-bravo.csv", "suppress-alpha.csv"} and len(excluded) > 0
    assert len(d.splits["test_05_suppress"]) == 20 and len(d.splits["test_06_masquerade"]) == 20
    train_files = {Path(f).name for s in ("train", "val") for f in d.splits[s].files}
    assert train_files == {"attack-free-alpha.csv", "attack-free-bravo.csv", "DoS-alpha.csv"}
    assert sorted(Path(p).name for p in d.info["excluded_from_training"]) == ["masquerade-bravo.csv", "suppress-alpha.csv"]
    both = prepare("set_01", replace(CFG, include_excluded=True), data_root=root, cache_dir=tmp_path / "cache")
    assert not both.loaded_from_cache
    assert {"masquerade-bravo.csv", "suppress-alpha.csv"} <= {Path(f).name for f in both.splits["train"].files}


# --------------------------------------------------------------------------------------
# split


def test_validation_block():
    rng = np.random.default_rng(0)
    assert validation_block(0, 0.2, rng) == (0, 0)
    assert validation_block(1, 0.5, rng) == (0, 0)
    assert validation_block(10, 0.0, rng) == (0, 0)
    v0, v1 = validation_block(50, 0.2, rng)
    assert v1 - v0 == 10 and 0 <= v0 <= 40
    v0, v1 = validation_block(3, 0.9, rng)
    assert v1 - v0 == 2  # at least one window stays for training


def _per_file(gs: GraphSet) -> dict[str, np.ndarray]:
    fi, start = gs.file_index.numpy(), gs.start.numpy()
    return {Path(f).name: np.sort(start[fi == i]) for i, f in enumerate(gs.files)}


@pytest.mark.parametrize("window, stride", [(10, 10), (10, 4), (10, 1)])
def test_split_is_one_block_per_file_without_overlap(root: Path, tmp_path: Path, window: int, stride: int):
    cfg = PrepareConfig(window=window, stride=stride, val_fraction=0.25, seed=3)
    d = prepare("hcrl_sa", cfg, data_root=root, cache_dir=tmp_path / "cache")
    train, val = _per_file(d.splits["train"]), _per_file(d.splits["val"])
    lengths = {"attack-free-alpha.csv": 500, "attack-free-bravo.csv": 400, "DoS-alpha.csv": 600}
    assert set(train) == set(val) == set(lengths)
    for name, n in lengths.items():
        all_starts = np.arange(0, n - window + 1, stride)
        v = val[name]
        assert v.size == round(all_starts.size * 0.25)
        assert (np.diff(v) == stride).all()  # one contiguous block of windows
        lo, hi = v[0], v[-1] + window  # the validation messages
        t = train[name]
        assert ((t + window <= lo) | (t >= hi)).all()  # no training window touches them
        # and every window that does not touch them is used for training
        expected = all_starts[(all_starts + window <= lo) | (all_starts >= hi)]
        assert t.tolist() == expected.tolist()


def test_split_seeded_reproducible_and_seed_dependent(root: Path, tmp_path: Path):
    blocks = {}
    for seed in (0, 0, 1):
        d = prepare("hcrl_sa", replace(CFG, seed=seed), data_root=root, cache_dir=tmp_path / f"cache{len(blocks)}")
        blocks.setdefault(seed, []).append({k: v.tolist() for k, v in _per_file(d.splits["val"]).items()})
    assert blocks[0][0] == blocks[0][1]  # same seed, fresh build: same blocks
    assert blocks[0][0] != blocks[1][0]  # another seed moves them


# --------------------------------------------------------------------------------------
# vocabulary


def _window_of(d, msg_index: int, file_name: str) -> str | None:
    for split in ("train", "val"):
        gs = d.splits[split]
        for i, f in enumerate(gs.files):
            if Path(f).name == file_name:
                s = gs.start[gs.file_index == i].numpy()
                if ((s <= msg_index) & (msg_index < s + d.config.window)).any():
                    return split
    return None


def test_vocabulary_fitted_on_the_training_split_only(root: Path, tmp_path: Path):
    seen = set()
    for seed in range(8):
        d = prepare("hcrl_sa", replace(CFG, seed=seed, val_fraction=0.4), data_root=root, cache_dir=tmp_path / "c")
        vocab = set(d.vocab.to_list())
        where = _window_of(d, 255, "attack-free-alpha.csv")  # the one window holding RARE_ID
        seen.add(where)
        assert (RARE_ID in vocab) == (where == "train")
        # attack-only IDs (0x000) stay out with vocab_source="normal"; charlie's own IDs are unseen
        assert vocab == {0x100, 0x101, 0x102, 0x103, 0x200, 0x201, 0x202} | ({RARE_ID} if where == "train" else set())
        assert d.info["vocab_size"] == len(vocab) + 1
        for split, gs in d.splits.items():
            ids, node_id = gs.can_id.numpy(), gs.node_id.numpy()
            known = np.isin(ids, list(vocab))
            assert (node_id[~known] == 0).all(), split  # unseen IDs -> the OOV bucket
            assert (node_id[known] > 0).all(), split
        test2 = d.splits["test_02_unknown_vehicle_known_attack"]
        assert (test2.node_id[np.isin(test2.can_id.numpy(), [0x300, 0x301])] == 0).all()
        assert d.info["splits"]["test_02_unknown_vehicle_known_attack"]["oov_nodes"] > 0
        assert len(d.vocab) == len(vocab) + 1  # building the test graphs never grew it
    assert seen == {"train", "val"}  # both cases happened
    d = prepare("hcrl_sa", replace(CFG, vocab_source="all"), data_root=root, cache_dir=tmp_path / "c")
    assert 0x000 in d.vocab.to_list()


# --------------------------------------------------------------------------------------
# cache


def _assert_same_splits(a, b) -> None:
    assert list(a.splits) == list(b.splits)
    for name in a.splits:
        for t in GraphSet.TENSORS:
            assert torch.equal(getattr(a.splits[name], t), getattr(b.splits[name], t)), (name, t)
        assert a.splits[name].files == b.splits[name].files


def test_cache_hit_and_invalidation(root: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    first = prepare("hcrl_sa", CFG, data_root=root, cache_dir=cache)
    assert not first.loaded_from_cache
    again = prepare("hcrl_sa", CFG, data_root=root, cache_dir=cache)
    assert again.loaded_from_cache and again.cache_dir == first.cache_dir
    _assert_same_splits(first, again)
    assert again.vocab.to_list() == first.vocab.to_list() and again.info == json.loads(json.dumps(first.info))
    store = sorted(p.name for p in first.cache_dir.iterdir())
    assert store == sorted(["meta.json", "train.store", "val.store", "test_01_known_vehicle_known_attack.store",
                            "test_02_unknown_vehicle_known_attack.store"])  # nothing temporary left

    for change in (dict(window=12), dict(stride=5), dict(seed=1), dict(val_fraction=0.3), dict(label_threshold=0.1),
                   dict(include_excluded=True), dict(vocab_source="all"), dict(on_bad_rows="skip")):
        d = prepare("hcrl_sa", replace(CFG, **change), data_root=root, cache_dir=cache)
        assert not d.loaded_from_cache and d.cache_dir != first.cache_dir, change
    assert not prepare("hcrl_sa", CFG, data_root=root, cache_dir=cache, rebuild=True).loaded_from_cache

    # a changed input file (same size, one label flipped) rebuilds
    path = root / "hcrl-sa" / "test_01_known_vehicle_known_attack" / "DoS-bravo.csv"
    text = path.read_text()
    i = text.index(",0\n", 200)
    path.write_text(text[:i] + ",1\n" + text[i + 3:])
    assert path.stat().st_size == len(text)
    changed = prepare("hcrl_sa", CFG, data_root=root, cache_dir=cache)
    assert not changed.loaded_from_cache and changed.cache_dir != first.cache_dir
    assert changed.info["splits"]["test_01_known_vehicle_known_attack"]["attack_windows"] >= \
        first.info["splits"]["test_01_known_vehicle_known_attack"]["attack_windows"]
    assert prepare("hcrl_sa", CFG, data_root=root, cache_dir=cache).loaded_from_cache


def test_incomplete_store_is_rebuilt(root: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    first = prepare("hcrl_sa", CFG, data_root=root, cache_dir=cache)
    (first.cache_dir / "meta.json").unlink()  # a crash before meta.json: the store is not complete
    d = prepare("hcrl_sa", CFG, data_root=root, cache_dir=cache)
    assert not d.loaded_from_cache
    _assert_same_splits(first, d)


def test_skipped_rows_reported_per_file(root: Path, tmp_path: Path):
    path = root / "hcrl-sa" / "train_02_with_attacks" / "DoS-alpha.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:5] + ["1.0,XYZ,00,0\n", "2.0,100\n"] + lines[5:]))
    with pytest.raises(Exception, match=r"DoS-alpha\.csv:6: arbitration_id 'XYZ'"):
        prepare("hcrl_sa", CFG, data_root=root, cache_dir=tmp_path / "cache")
    d = prepare("hcrl_sa", replace(CFG, on_bad_rows="skip"), data_root=root, cache_dir=tmp_path / "cache")
    assert d.info["skipped_rows"] == {str(path): 2}
    assert len(read_messages(path, on_bad_rows="skip")) == 600


def test_prepare_config_validation():
    for bad, words in ((dict(window=1), "window must be >= 2"), (dict(stride=0), "stride >= 1"),
                       (dict(val_fraction=1.0), "val_fraction"), (dict(vocab_source="x"), "vocab_source"),
                       (dict(on_bad_rows="x"), "on_bad_rows")):
        with pytest.raises(ValueError, match=words):
            PrepareConfig(**bad)


def test_synthetic_dataset_prepares(kdkit_env):
    d = prepare("synthetic", PrepareConfig())
    assert d.scenarios and len(d.splits["train"]) > 0 and len(d.splits["val"]) > 0
    assert Path(os.environ["KDKIT_CACHE_DIR"]) in d.cache_dir.parents


def test_split_messages_count_the_messages_in_its_windows_the_same_way_for_every_split():
    """`kdkit data info`'s messages column: the messages in a split's windows, each once, for train,
    validation and test scenarios alike (it was windows x W for train/val and every message read for
    the tests, so a stride above the window showed 245,756 test messages for 492 windows)."""
    from kdkit.data.datasets import covered_messages

    assert covered_messages([(0, 10)], 100, 100) == 1000
    assert covered_messages([(0, 10)], 100, 50) == 550  # overlapping windows share messages
    assert covered_messages([(0, 10)], 100, 500) == 1000  # the 400 between windows are in none
    assert covered_messages([(0, 3), (5, 9)], 100, 100) == 700 and covered_messages([(4, 4)], 100, 100) == 0


def test_same_named_recordings_are_told_apart_in_a_splits_files():
    from kdkit.data.prep import _shown_names

    assert _shown_names(["/d/clean/a.zip", "/d/x/b.zip"]) == ["a.zip", "b.zip"]
    assert _shown_names(["/d/clean/V.zip", "/d/inf/DoS/V.zip"]) == ["clean/V.zip", "inf/DoS/V.zip"]
