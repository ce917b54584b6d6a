"""hcrl-sa on the shared real copy: window counts equal the published ones (FIELD_NOTES),
duplicates are read once, out-of-vocabulary IDs where they must be.

The data root is ``$KDKIT_DATA_ROOT`` or ``../shared/data/can-train-and-test``; when it is
missing these tests skip, except under ``CI=true`` where they fail (conftest.require).
hcrl-sa is prepared once per session (about 2 s) into a temp cache.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kdkit.data.datasets import PrepareConfig, discover, prepare
from kdkit.data.readers import read_messages

pytestmark = pytest.mark.realdata

# published test windows with W = 100 (FIELD_NOTES section 2): (windows, attack windows)
PUBLISHED_TESTS = {
    "test_01_known_vehicle_known_attack": (3994, 1928),
    "test_02_unknown_vehicle_known_attack": (1861, 752),
    "test_03_known_vehicle_unknown_attack": (3060, 1159),
    "test_04_unknown_vehicle_unknown_attack": (797, 311),
}


@pytest.fixture(scope="session")
def hcrl_sa(shared_data_root: Path, tmp_path_factory):
    return prepare("hcrl_sa", PrepareConfig(), data_root=shared_data_root, cache_dir=tmp_path_factory.mktemp("realcache"))


@pytest.mark.parametrize("scenario", list(PUBLISHED_TESTS))
def test_test_window_counts_match_published(hcrl_sa, scenario: str):
    gs = hcrl_sa.splits[scenario]
    windows, attacks = PUBLISHED_TESTS[scenario]
    assert len(gs) == windows
    assert int(gs.y.sum()) == attacks
    assert hcrl_sa.info["splits"][scenario]["windows"] == windows
    assert hcrl_sa.info["splits"][scenario]["attack_windows"] == attacks


def test_training_windows_unique_and_split(hcrl_sa):
    train, val = hcrl_sa.splits["train"], hcrl_sa.splits["val"]
    assert (len(train), len(val)) == (5017, 1254)
    assert len(train) + len(val) == 6271
    # the published 9,367 training windows count the two duplicated attack-free files twice
    dup_windows = (192_516 // 100) + (117_173 // 100)
    assert len(train) + len(val) + dup_windows == 9367
    assert hcrl_sa.scenarios == list(PUBLISHED_TESTS)


def test_duplicates_read_once(shared_data_root: Path, hcrl_sa):
    files = discover("hcrl_sa", data_root=shared_data_root)
    dups = sorted((a.name, a.parent.name, b.parent.name) for a, b in files.duplicates)
    assert dups == [("attack-free-kia.csv.gz", "train_02_with_attacks", "train_01_attack_free"),
                    ("attack-free-sonata.csv.gz", "train_02_with_attacks", "train_01_attack_free")]
    assert len(files.train) == 4 and len(files.hashes) == 13
    used = {Path(f).relative_to(files.root).as_posix() for f in hcrl_sa.splits["train"].files + hcrl_sa.splits["val"].files}
    assert used == {"train_01_attack_free/attack-free-kia.csv.gz", "train_01_attack_free/attack-free-sonata.csv.gz",
                    "train_02_with_attacks/DoS-kia.csv.gz", "train_02_with_attacks/fuzzing-sonata.csv.gz"}
    assert len(hcrl_sa.info["duplicates_skipped"]) == 2


def test_out_of_vocabulary_ids(hcrl_sa):
    # the unknown vehicle (Spark) brings IDs never seen in training; test_03 is Kia/Sonata only
    assert hcrl_sa.info["splits"]["test_02_unknown_vehicle_known_attack"]["oov_nodes"] > 0
    assert hcrl_sa.info["splits"]["test_03_known_vehicle_unknown_attack"]["oov_nodes"] == 0
    test2 = hcrl_sa.splits["test_02_unknown_vehicle_known_attack"]
    vocab = set(hcrl_sa.vocab.to_list())
    unseen = ~np.isin(test2.can_id.numpy(), list(vocab))
    assert unseen.any() and (test2.node_id.numpy()[unseen] == 0).all()
    assert len(hcrl_sa.vocab) == len(vocab) + 1 <= 2049


def test_message_total_and_reader_sanity(shared_data_root: Path, hcrl_sa):
    files = discover("hcrl_sa", data_root=shared_data_root)
    paths = [files.root / p for p in files.hashes]
    total = 0
    for p in paths:
        m = read_messages(p)
        total += len(m)
        assert np.isfinite(m.timestamp).all() and m.timestamp.min() > 1e9
        assert m.dlc.max() <= 8 and set(np.unique(m.label).tolist()) <= {0, 1}
        if "attack-free" in p.name:
            assert m.label.sum() == 0
    assert total == 1_908_595  # FIELD_NOTES: 13 files, 1,908,595 messages


def test_cache_reload_is_identical(shared_data_root: Path, hcrl_sa):
    again = prepare("hcrl_sa", PrepareConfig(), data_root=shared_data_root, cache_dir=hcrl_sa.cache_dir.parent.parent)
    assert again.loaded_from_cache
    assert again.info["splits"] == hcrl_sa.info["splits"]
