"""What a reproducibility and leakage audit found wrong without a word (2026-12-07): a stale store
after a label sidecar was edited, test recordings that are training ones, a recording in two test
scenarios counted twice overall, a checkpoint evaluated on its own training recordings, and a
synthetic-seed model evaluated on another seed's traffic."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from kdkit.config import make_config
from kdkit.data.datasets import PrepareConfig, format_info, prepare
from kdkit.reporting.metrics import evaluate_all_scores, repeated_tests
from kdkit.training.checkpoint import load_checkpoint
from kdkit.workflows import run as run_mod
from kdkit.workflows.run import evaluate_checkpoint, teacher_notes, train

TINY = {"hidden": 8, "layers": 1, "heads": 1, "embedding_dim": 4, "batch_size": 64, "epochs": 1, "patience": 100,
        "precision": "32-true", "warmup_steps": 2, "accelerator": "cpu", "num_workers": 0, "save_compat": False}


def _candump(path: Path, t0: float, n: int = 400) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"({t0 + k / 500:.6f}) can0 {0x100 + k % 5:03X}#{k % 256:02X}11\n" for k in range(n)))


def _ctt(path: Path, t0: float, attack: bool, n: int = 400) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("timestamp,arbitration_id,data_field,attack\n" + "".join(
        f"{t0 + k / 500!r},{0x100 + k % 5:03X},{k % 256:02X},{int(attack and 150 <= k < 190)}\n" for k in range(n)))


def test_editing_a_label_sidecar_rebuilds_the_store(tmp_path: Path, monkeypatch):
    """The cache key hashed the recordings only: new labels in a logger file's .labels.csv kept the
    old store (7 attack windows where 19), and kdkit train used the old labels without a word."""
    folder = tmp_path / "logcar"
    _candump(folder / "train_01_attack_free" / "clean.log", 1000.0)
    test = folder / "test_01_dos" / "dos.log"
    _candump(test, 2000.0)
    sidecar = test.with_name("dos.log.labels.csv")
    sidecar.write_text("start,end,attack_type\n2000.2,2000.3,DoS\n")
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    cfg = PrepareConfig(window=50, stride=50)
    before = prepare(str(folder), cfg)
    assert before.info["splits"]["test_01_dos"]["attack_windows"] == 2
    sidecar.write_text("start,end,attack_type\n2000.05,2000.75,DoS\n")
    after = prepare(str(folder), cfg)
    assert after.cache_dir != before.cache_dir and not after.loaded_from_cache
    assert after.info["splits"]["test_01_dos"]["attack_windows"] == 8
    # two identical logs with different labels are two recordings, not one read once
    shutil.copy(test, folder / "test_01_dos" / "dos2.log")
    (folder / "test_01_dos" / "dos2.log.labels.csv").write_text("start,end,attack_type\n2000.5,2000.6,DoS\n")
    both = prepare(str(folder), cfg)
    assert both.info["duplicates_skipped"] == [] and len(both.splits["test_01_dos"].files) == 2


def test_test_recordings_that_train_or_repeat_are_named_and_counted_once_overall(tmp_path: Path, monkeypatch):
    """A test recording identical to a training one (leakage) was accepted silently; one in two
    test folders was counted twice in "overall" (459 windows where 416); a copy within one test
    folder was scored twice there."""
    folder = tmp_path / "leak"
    _ctt(folder / "train_01_attack_free" / "clean.csv", 0.0, False)
    _ctt(folder / "train_02_with_attacks" / "DoS-a.csv", 10.0, True)
    _ctt(folder / "test_01_known" / "DoS-b.csv", 20.0, True)
    shutil.copy(folder / "train_02_with_attacks" / "DoS-a.csv", folder / "test_01_known" / "DoS-a-again.csv")
    shutil.copy(folder / "test_01_known" / "DoS-b.csv", folder / "test_01_known" / "DoS-b2.csv")
    _ctt(folder / "test_02_other" / "DoS-c.csv", 30.0, True)
    shutil.copy(folder / "test_01_known" / "DoS-b.csv", folder / "test_02_other" / "DoS-b-too.csv")
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    ds = prepare(str(folder), PrepareConfig(window=50, stride=50))
    t1, t2 = folder / "test_01_known", folder / "test_02_other"
    assert ds.info["tests_in_training"] == [[str(t1 / "DoS-a-again.csv"), str(folder / "train_02_with_attacks" / "DoS-a.csv")]]
    assert ds.info["test_repeats"] == [[str(t2 / "DoS-b-too.csv"), str(t1 / "DoS-b.csv")]]
    assert [str(t1 / "DoS-b2.csv"), str(t1 / "DoS-b.csv")] in ds.info["duplicates_skipped"]
    assert sorted(Path(f).name for f in ds.splits["test_01_known"].files) == ["DoS-a-again.csv", "DoS-b.csv"]
    text = format_info("leak", ds)
    assert f"test recording {t1 / 'DoS-a-again.csv'} is the training recording" in text and "in-sample" in text
    assert f"test recording {t2 / 'DoS-b-too.csv'} is also {t1 / 'DoS-b.csv'} of an earlier test scenario" in text
    scen = ["test_01_known", "test_02_other"]
    scores = {s: np.linspace(0, 1, len(ds.splits[s])) for s in scen}
    res = evaluate_all_scores({s: ds.splits[s] for s in scen}, scores, 0.5, repeated_tests(ds.info))
    assert res["scenarios"]["test_02_other"]["windows"] == 16  # each scenario scores all of its recordings
    assert res["overall"]["windows"] == 16 + 8  # DoS-b's 8 windows once
    assert evaluate_all_scores({s: ds.splits[s] for s in scen}, scores, 0.5)["overall"]["windows"] == 32


@pytest.fixture(scope="module")
def student(synthetic, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("audit")
    cfg = make_config(**TINY, model="gat", type="student", dataset="synthetic", runs_dir=str(base / "runs"), run_name="s")
    return Path(train(cfg, progress=False, data=synthetic)["best_checkpoint"])


def test_a_checkpoint_evaluated_on_its_own_training_recordings_is_told(student, synthetic, tmp_path):
    """evaluate --input flagged a training recording as in-sample, evaluate --dataset did not
    (F1 1.0 on a dataset whose test folder held a training file), nor did a teacher's data."""
    root = Path(synthetic.info["root"])
    copy = tmp_path / "synthetic-copy"
    shutil.copytree(root, copy)
    train_file = Path(synthetic.splits["train"].files[0])
    moved = copy / "test_01_known_vehicle_known_attack" / f"again-{train_file.name}"
    shutil.copy(train_file, moved)
    res = evaluate_checkpoint(student, str(copy), out_dir=tmp_path / "ev")
    assert res["in_sample"] == {"test_01_known_vehicle_known_attack": [str(moved)]}
    assert len(res["warnings"]) == 1 and "in-sample, not a test" in res["warnings"][0]
    clean = evaluate_checkpoint(student, "synthetic", out_dir=tmp_path / "ev2")
    assert clean["in_sample"] == {} and clean["warnings"] == []
    cfg = make_config(**TINY, model="gat", type="student", dataset=str(copy))
    data = prepare(str(copy), run_mod.prepare_config(cfg))
    notes = teacher_notes(load_checkpoint(student), cfg, data, student)
    assert len(notes) == 1 and str(moved) in notes[0] and "a training recording of the teacher" in notes[0]


def test_a_synthetic_seed_checkpoint_is_evaluated_on_its_own_seed(monkeypatch):
    """kdkit evaluate of a --synthetic-seed 1 model prepared seed 0's traffic."""
    seen = {}

    def fake_prepare(name, cfg, root, synthetic_seed=0, channel=None):
        seen["seed"] = synthetic_seed
        return "data"

    monkeypatch.setattr(run_mod, "prepare", fake_prepare)
    ck = {"train_config": {"dataset": "synthetic", "synthetic_seed": 1, "window": 100}}
    run_mod.checkpoint_data(ck)
    assert seen["seed"] == 1
    run_mod.checkpoint_data(ck, "synthetic", synthetic_seed=3)
    assert seen["seed"] == 3
    run_mod.checkpoint_data(ck, "other")  # another dataset: the seed is not the checkpoint's
    assert seen["seed"] == 0
