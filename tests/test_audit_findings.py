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
    # DoS-b's 8 windows once, and the in-sample DoS-a-again's left out (its scenario reports it, with the warning)
    assert res["overall"]["windows"] == 8 + 8
    per_type = res["overall"]["per_attack_type"]  # DoS: 1 attack window in each of DoS-a-again, DoS-b, DoS-c
    assert per_type["DoS"]["windows"] == sum(res["scenarios"][s]["per_attack_type"]["DoS"]["windows"] for s in scen) - 2
    from kdkit.workflows.scoring import format_attack_type_recall
    table = format_attack_type_recall(res["scenarios"], res["overall"])
    assert [line.split()[-2] for line in table.splitlines() if line.startswith("all scenarios")] == \
        [str(per_type["DoS"]["windows"])]
    assert evaluate_all_scores({s: ds.splits[s] for s in scen}, scores, 0.5)["overall"]["windows"] == 32
    # every test recording a training one: overall pools them all and says so (it raised sklearn's empty-input error)
    every = {f for s in scen for f in ds.splits[s].files}
    res = evaluate_all_scores({s: ds.splits[s] for s in scen}, scores, 0.5, every)
    assert res["overall"]["windows"] == 32 and res["overall"]["in_sample"] is True
    assert "in_sample" not in evaluate_all_scores({s: ds.splits[s] for s in scen}, scores, 0.5)["overall"]


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
    scen = "test_01_known_vehicle_known_attack"  # the scenario reports the copy; overall leaves it out
    assert res["scenarios"][scen]["windows"] > clean["scenarios"][scen]["windows"]
    assert res["overall"]["windows"] == clean["overall"]["windows"] and "overall leaves it out" in res["warnings"][0]
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


# ----------------------------------------------------------------------------- interruption and shared folders
def test_a_vgae_checkpoint_whose_threshold_was_never_fitted_is_refused(synthetic, tmp_path):
    """A VGAE run killed before its validation fit left a best.pt with the placeholder threshold 0.5:
    evaluated at it, every window was an attack (accuracy 0.39), without a word."""
    from kdkit.cli.main import main
    from kdkit.workflows.calibrate import calibrate_checkpoint
    from kdkit.workflows.scoring import evaluate_inputs

    cfg = make_config(**{**TINY, "latent_dim": 4}, model="vgae", type="teacher", dataset="synthetic",
                      runs_dir=str(tmp_path / "runs"), run_name="v")
    best = Path(train(cfg, progress=False, data=synthetic)["best_checkpoint"])
    assert load_checkpoint(best)["threshold_fitted"] is True
    last = best.with_name("last.pt")  # saved during training, as a killed run's best.pt is
    assert load_checkpoint(last)["threshold_fitted"] is False
    with pytest.raises(ValueError, match=r"last\.pt: its threshold was never fitted .* --resume auto and use its best"):
        evaluate_checkpoint(last, "synthetic", out_dir=tmp_path / "ev")
    recording = Path(synthetic.splits["test_01_known_vehicle_known_attack"].files[0])
    with pytest.raises(ValueError, match="never fitted"):
        evaluate_inputs(last, [recording], out_dir=tmp_path / "ev")
    assert evaluate_inputs(last, [recording], threshold=1.0, out_dir=tmp_path / "ev")["files"]  # a given one is fine
    assert main(["export", "--checkpoint", str(last), "--out", str(tmp_path / "x.pt2")]) == 2
    fixed = tmp_path / "fixed.pt"
    clean = [Path(f) for f in synthetic.splits["train"].files if "attack-free" in Path(f).parent.name
             or "attack_free" in Path(f).parent.name][:1]
    calibrate_checkpoint(last, clean, out=fixed)
    assert load_checkpoint(fixed)["threshold_fitted"] is True
    assert evaluate_checkpoint(fixed, "synthetic", out_dir=tmp_path / "ev")["scenarios"]


def test_resume_auto_starts_afresh_a_run_killed_before_its_first_checkpoint(synthetic, tmp_path):
    """config.json is written before the first epoch: a SIGKILL then (an OOM kill, NODE_FAIL) made every
    requeue with --resume auto refuse the folder ("already holds a run ... Pass --overwrite")."""
    cfg = make_config(**TINY, model="gat", type="student", dataset="synthetic", runs_dir=str(tmp_path / "runs"),
                      run_name="k")
    run_dir = tmp_path / "runs" / "k"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    (run_dir / "fabric_training.log").write_text("epoch 1 ...\n")
    summary = train(cfg, resume="auto", progress=False, data=synthetic)
    assert Path(summary["best_checkpoint"]).is_file() and (run_dir / "checkpoints" / "last.pt").is_file()
    # a finished run is still not trained over by auto: it resumes from its last.pt
    again = train(cfg, resume="auto", progress=False, data=synthetic)
    assert again["resumed_from"] == str(run_dir / "checkpoints" / "last.pt")


def test_a_killed_preparations_scratch_is_removed_and_names_are_unique(tmp_path, monkeypatch):
    """Scratch was named by pid alone: SIGKILLed preparations left parts.<pid>/ and *.tmp to pile up
    (183 MB beside a 48 MB store), and two builders with one pid (two nodes sharing a cache, two
    containers) crashed on each other's folder."""
    import os
    import socket
    import time

    from kdkit.data import store

    tag = store.scratch_tag()
    assert tag.startswith(f"{socket.gethostname()}.{os.getpid()}.") and tag != store.scratch_tag()
    folder = tmp_path / "key"
    folder.mkdir()
    host = socket.gethostname()
    dead = 2 ** 22 + 12345  # beyond any pid this machine hands out
    old = time.time() - 2 * store.STALE_SCRATCH_S
    ancient = time.time() - 2 * store.STALE_SCRATCH_ANY_S
    made = {
        f"parts.{host}.{dead}.aa": (old, True),                  # this host's, its writer gone: removed
        f"train.store.{host}.{dead}.bb.tmp": (old, True),
        f"parts.{host}.{os.getpid()}.cc": (old, False),           # its writer runs (this process): kept
        f"parts.{host}.{dead}.dd": (time.time(), False),          # just written: kept
        f"parts.othernode.{dead}.ee": (old, False),               # another node's: kept until a day old
        "parts.4242": (ancient, True),                            # named before the tag, a day old: removed
        "train.store": (ancient, False),                          # not scratch
    }
    for name, (mtime, _) in made.items():
        path = folder / name
        if name.startswith("parts."):
            (path / "0").mkdir(parents=True)
            (path / "0" / "x.bin").write_bytes(b"1")
            for p in (path / "0" / "x.bin", path / "0", path):
                os.utime(p, (mtime, mtime))
        else:
            path.write_bytes(b"1")
            os.utime(path, (mtime, mtime))
    removed = store.remove_stale_scratch(folder)
    assert sorted(removed) == sorted(n for n, (_, gone) in made.items() if gone)
    assert sorted(p.name for p in folder.iterdir()) == sorted(n for n, (_, gone) in made.items() if not gone)


def test_dataset_folders_whose_names_lose_characters_stay_apart(tmp_path, monkeypatch):
    """`Müller` and `Möller` were both `M_ller`: the second dataset's saved_models/ copy replaced the
    first's (and its run folder's refusal suggested resuming the other dataset's run)."""
    from kdkit.data.sources import folder_name

    assert folder_name("hcrl-sa") == "hcrl-sa" and folder_name("my_car") == "my_car"
    names = {folder_name(n) for n in ("Müller", "Möller", "my car", "my_car", "小车", "大车")}
    assert len(names) == 6 and all(n.replace("-", "").replace("_", "").isalnum() for n in names)
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("Müller", "Möller"):
        _ctt(tmp_path / name / "train_01_attack_free" / "clean.csv", 0.0, False)
    a, b = (prepare(str(tmp_path / n), PrepareConfig(window=50, stride=50)).name for n in ("Müller", "Möller"))
    assert a != b and a.startswith("M_ller-") and b.startswith("M_ller-")


def test_a_folder_kdkit_may_not_write_is_one_clear_line(monkeypatch, capsys):
    """A cache or runs folder without write permission (a shared lab folder) ended in a 40-line
    traceback (PermissionError was not among the errors the CLI reports)."""
    from kdkit.cli import data as data_cli
    from kdkit.cli.main import main

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/shared/cache/hcrl_sa")

    monkeypatch.setattr(data_cli, "prepare", denied)
    assert main(["data", "info", "--dataset", "synthetic"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kdkit: error: Permission denied: /shared/cache/hcrl_sa.") and "--cache-dir" in err
    assert "Traceback" not in err


def test_a_preparation_worker_exits_when_its_starter_is_gone(tmp_path):
    """A SIGKILLed `kdkit data prepare --workers 2` left its fork server's workers running, idle
    (re-parented to pid 1): a worker now watches the process that started it."""
    import subprocess
    import sys
    import time

    starter = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    worker = subprocess.Popen([sys.executable, "-c", f"from kdkit.data import prep; prep.PARENT_CHECK_S = 0.1; "
                                                     f"prep._watch_parent({starter.pid}); import time; time.sleep(60)"])
    try:
        time.sleep(1.0)
        assert worker.poll() is None  # the starter runs: the worker stays
        starter.kill()
        starter.wait()
        assert worker.wait(timeout=20) == 1
    finally:
        for proc in (starter, worker):
            if proc.poll() is None:
                proc.kill()


def test_data_info_shows_another_synthetic_seed(kdkit_env, capsys):
    """A model of --synthetic-seed 1 could be trained and evaluated, but its data not inspected."""
    import json

    from kdkit.cli.main import main

    roots = []
    for seed in ("0", "1"):
        assert main(["data", "info", "--dataset", "synthetic", "--synthetic-seed", seed, "--json"]) == 0
        roots.append(json.loads(capsys.readouterr().out)["root"])
    assert roots[0] != roots[1] and roots[1].endswith("synthetic-seed1")


def test_evaluate_takes_threads_and_a_refused_folder_names_resume_auto(student, synthetic, tmp_path, capsys):
    """kdkit evaluate had no --threads (a shared node's users set OMP_NUM_THREADS by hand); a rerun
    into a folder whose run died before its first checkpoint suggested only --overwrite."""
    import torch

    from kdkit.cli.main import main
    from kdkit.workflows.run_dir import RunDirError

    before = torch.get_num_threads()
    assert main(["evaluate", "--checkpoint", str(student), "--threads", "1", "--out", str(tmp_path / "ev")]) == 0
    assert "overall" in capsys.readouterr().out and torch.get_num_threads() == before
    assert main(["evaluate", "--checkpoint", str(student), "--threads", "0"]) == 2
    run_dir = tmp_path / "runs" / "dead"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    cfg = make_config(**TINY, model="gat", type="student", dataset="synthetic", runs_dir=str(tmp_path / "runs"),
                      run_name="dead")
    with pytest.raises(RunDirError, match="--resume auto to start it afresh if it stopped before its first checkpoint"):
        train(cfg, progress=False, data=synthetic)
