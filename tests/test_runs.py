"""Runs that are never silently wrong (issue 14): a run owns its folder (reuse refused, one process
at a time), saved_models/ copies are only replaced by an equal or better run, splits without
windows are errors before any model is built, checkpoints say what they are (teacher/student,
dataset, vocabulary, graph settings), resume keeps the whole metrics history, and evaluation
results go beside the run.

Run: .venv/bin/python -m pytest tests/test_runs.py -q
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from kdkit.cli.main import main
from kdkit.config import make_config
from kdkit.training.checkpoint import load_checkpoint
from kdkit.workflows.run import evaluate_checkpoint, train
from kdkit.workflows.run_dir import RunDirError, RunLock
from kdkit.workflows.saved_models import compat_path, compat_record, save_compat_copy

TINY = dict(hidden=8, layers=1, heads=1, embedding_dim=4, batch_size=64, epochs=1, patience=100, precision="32-true",
            warmup_steps=2, accelerator="cpu", num_workers=0, save_compat=False)
KDKIT = str(Path(sys.executable).parent / "kdkit")


def tiny(base: Path, **kw):
    return make_config(**{**TINY, "runs_dir": str(base / "runs"), **kw})


def cli_tiny(runs: Path, name: str, epochs: int = 1, *extra: str) -> list[str]:
    return [KDKIT, "train", "--dataset", "synthetic", "--epochs", str(epochs), "--hidden", "8", "--layers", "1",
            "--heads", "1", "--embedding-dim", "4", "--precision", "32-true", "--accelerator", "cpu",
            "--num-workers", "0", "--no-save-compat", "--runs-dir", str(runs), "--run-name", name, *extra]


def csv_epochs(run: Path) -> list[int]:
    with open(run / "logs" / "metrics.csv", newline="") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def teacher_run(synthetic, tmp_path_factory):
    """A finished tiny GAT teacher run (2 epochs): (its base folder, its summary)."""
    base = tmp_path_factory.mktemp("teacher")
    return base, train(tiny(base, run_name="t", epochs=2), progress=False, data=synthetic)


# ----------------------------------------------------------------------------- one run per folder
def test_reused_run_name_is_refused_unless_overwrite(synthetic, tmp_path):
    first = train(tiny(tmp_path, run_name="s1"), progress=False, data=synthetic)
    run = Path(first["run_dir"])
    (run / "job.sbatch").write_text("#!/bin/bash\n")  # a SLURM job's script: not the run's output
    (run / "evaluation_synthetic.json").write_text("{}")
    best = (run / "checkpoints" / "best.pt").read_bytes()
    with pytest.raises(RunDirError, match=r"run dir .*s1 already holds a run \(config.json, summary.json, "
                                          r"checkpoints/best.pt, checkpoints/last.pt\).*Pass --overwrite to replace "
                                          r"it, --resume .*s1/checkpoints/last.pt to continue it, or choose another "
                                          r"--run-name"):
        train(tiny(tmp_path, run_name="s1", seed=1), progress=False, data=synthetic)
    assert (run / "checkpoints" / "best.pt").read_bytes() == best  # nothing replaced
    assert json.loads((run / "config.json").read_text())["seed"] == 0

    again = train(tiny(tmp_path, run_name="s1", seed=1, overwrite=True), progress=False, data=synthetic)
    assert again["run_dir"] == first["run_dir"] and json.loads((run / "config.json").read_text())["seed"] == 1
    assert load_checkpoint(run / "checkpoints" / "best.pt")["train_config"]["seed"] == 1
    assert (run / "job.sbatch").is_file()  # only what train writes is replaced
    assert not (run / "evaluation_synthetic.json").exists()  # the old model's evaluation went with it


HOLD = textwrap.dedent('''
    import sys
    from kdkit.workflows.run_dir import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    sys.stdin.read()
''')


def test_a_second_process_fails_at_once_while_a_run_holds_the_folder(kdkit_env, tmp_path):
    run = tmp_path / "runs" / "s1"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = subprocess.run(cli_tiny(tmp_path / "runs", "s1"), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"run dir {run} is in use by another kdkit process (pid {holder.pid})" in proc.stderr
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # refused before it prepared or wrote anything
    finally:
        holder.kill()  # SIGKILL: the kernel releases the lock with the process
        holder.wait()
    with RunLock(run) as lock:  # a lock left by a killed process never blocks a later run
        assert lock.path.read_text().strip() == str(os.getpid())


def test_two_runs_started_at_once_with_the_same_name(kdkit_env, tmp_path):
    runs = tmp_path / "runs"
    procs = [subprocess.Popen(cli_tiny(runs, "same", 1, "--seed", str(seed)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], [err[-2000:] for _, err in outs]
    winner, loser = (1, 2) if codes[0] == 0 else (2, 1)
    assert "kdkit: error: run dir" in outs[loser - 1][1]
    refused = outs[loser - 1][1]
    assert "is in use by another kdkit process (pid" in refused or "already holds a run" in refused
    run = runs / "same"
    assert json.loads((run / "config.json").read_text())["seed"] == winner  # one run's files only
    for name in ("best.pt", "last.pt"):
        assert load_checkpoint(run / "checkpoints" / name)["train_config"]["seed"] == winner
    assert json.loads((run / "summary.json").read_text())["run_name"] == "same"


# ----------------------------------------------------------------------------- resume
def test_kill_9_then_resume_keeps_every_epoch_once(kdkit_env, synthetic, tmp_path):
    runs = tmp_path / "runs"
    run = runs / "cut"
    last = run / "checkpoints" / "last.pt"
    with open(tmp_path / "killed.err", "w") as err:
        # --compile false: 200 planned epochs would switch compile "auto" on (a 30-90 s first epoch)
        proc = subprocess.Popen(cli_tiny(runs, "cut", 200, "--patience", "1000", "--compile", "false"),
                                stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 500
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, (tmp_path / "killed.err").read_text()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = torch.load(last, weights_only=True)["epoch"]  # the last epoch it finished

    # the killed run's settings (cli_tiny leaves warmup_steps at its default; a resume with another is refused)
    cfg = tiny(tmp_path, run_name="cut", epochs=done + 3, patience=1000, warmup_steps=make_config().warmup_steps)
    summary = train(cfg, resume=last, progress=False, data=synthetic)
    assert summary["resumed_from"] == str(last) and summary["resumed_at_epoch"] == done + 1
    assert [h["epoch"] for h in summary["history"]] == list(range(done + 3))
    assert csv_epochs(run) == list(range(done + 3))  # every epoch once: before and after the kill
    assert f"resumed from {last} at epoch {done + 1}" in (run / "fabric_training.log").read_text()
    assert not list((run / "checkpoints").glob(".*tmp*")) and not list((run / "logs").glob("metrics_*.csv"))


def test_resume_refuses_a_checkpoint_of_another_run(teacher_run, synthetic, tmp_path):
    base, summary = teacher_run
    last = Path(summary["last_checkpoint"])
    cases = [({"window": 50}, r"window 100 vs 50"),
             ({"type": "student"}, r"role teacher vs student"),
             ({"label_threshold": 0.5}, r"label_threshold 0.0 vs 0.5"),
             # the optimizer, schedule and batches go on from the checkpoint: a new value was recorded, not used
             ({"learning_rate": 0.05}, r"learning_rate [0-9.e-]+ vs 0.05"),
             ({"batch_size": 7}, r"batch_size \d+ vs 7")]
    for overrides, match in cases:
        with pytest.raises(ValueError, match=rf"--resume {last} comes from another run than this one \(.*{match}"):
            own = {"window", "label_threshold"} & set(overrides)  # data prepared otherwise: train prepares its own
            train(tiny(tmp_path, run_name="r", epochs=4, **overrides), resume=last, progress=False,
                  data=None if own else synthetic)
    with pytest.raises(ValueError, match=r"checkpoint's model differs from this run's \(hidden 8 vs 16"):
        train(tiny(tmp_path, run_name="r", epochs=4, hidden=16), resume=last, progress=False, data=synthetic)
    ck = torch.load(last, weights_only=True)
    other = dict(ck, provenance={**ck["provenance"], "dataset": "hcrl_sa", "vocab_hash": "0" * 16})
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"dataset hcrl_sa vs synthetic; ID vocabulary"):
        train(tiny(tmp_path, run_name="r", epochs=4), resume=tmp_path / "other.pt", progress=False, data=synthetic)
    legacy = {k: v for k, v in ck.items() if k not in ("optimizer", "scheduler", "rng")}
    torch.save(legacy, tmp_path / "legacy.pt")
    with pytest.raises(ValueError, match=r"lacks the training state \['optimizer', 'scheduler', 'rng'\]"):
        train(tiny(tmp_path, run_name="r", epochs=4), resume=tmp_path / "legacy.pt", progress=False, data=synthetic)
    # the same settings, another run folder: it trained, then found no best.pt in the new folder (exit 2)
    with pytest.raises(ValueError, match=r"is a checkpoint of another run folder .*resume with that run's --run-name"):
        train(tiny(tmp_path, run_name="r", epochs=4), resume=last, progress=False, data=synthetic)
    assert not (tmp_path / "runs" / "r").exists()  # refused before anything was trained or written


# ----------------------------------------------------------------------------- teachers and provenance
def test_checkpoints_record_their_provenance(teacher_run, synthetic):
    _, summary = teacher_run
    prov = load_checkpoint(summary["best_checkpoint"])["provenance"]
    assert prov["role"] == "teacher" and prov["family"] == "gat" and prov["dataset"] == "synthetic"
    assert prov["graph"] == {"window": 100, "stride": 100, "label_threshold": 0.0, "val_fraction": 0.2,
                             "graph_format": prov["graph"]["graph_format"]} and prov["graph"]["graph_format"] >= 1
    assert len(prov["vocab_hash"]) == 16 and prov["vocab_size"] == len(synthetic.vocab) and prov["kd"] is False


def test_teacher_must_be_a_teacher_of_the_same_family_vocabulary_and_window(teacher_run, synthetic, student_checkpoint,
                                                                         tmp_path):
    _, summary = teacher_run
    best = Path(summary["best_checkpoint"])
    ck = torch.load(best, weights_only=True)

    def student(teacher, **kw):
        return train(tiny(tmp_path, type="student", teacher=str(teacher), **kw), progress=False,
                     data=None if "window" in kw else synthetic)  # (data prepared otherwise are refused)

    # an older student checkpoint (no provenance: its role comes from its train_config)
    with pytest.raises(ValueError, match=rf"--teacher {student_checkpoint} is a student checkpoint .*not a teacher"):
        student(student_checkpoint)
    torch.save(dict(ck, vocab=ck["vocab"][:-3]), tmp_path / "other_vocab.pt")
    with pytest.raises(ValueError, match=r"the --teacher checkpoint \(\d+ IDs\) and dataset 'synthetic' \(\d+ IDs\) "
                                         r"have different ID vocabularies \(3 IDs in one only\): train the student on"):
        student(tmp_path / "other_vocab.pt")
    with pytest.raises(ValueError, match=r"was trained on windows of 100 messages, this student on 50"):
        student(best, window=50)
    with pytest.raises(ValueError, match=r"is a gat model, the student is vgae"):
        student(best, model="vgae")
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_kd_and_plain_students_do_not_share_folders_or_saved_models(teacher_run, synthetic, tmp_path, caplog):
    _, summary = teacher_run
    with caplog.at_level("WARNING", logger="kdkit.workflows.run"):
        kd = train(tiny(tmp_path, type="student", teacher=summary["best_checkpoint"], save_compat=True),
                   progress=False, data=synthetic)
    alone = train(tiny(tmp_path, type="student", save_compat=True), progress=False, data=synthetic)
    assert Path(kd["run_dir"]).name == "synthetic_gat_student_kd"
    assert Path(alone["run_dir"]).name == "synthetic_gat_student"
    # the tiny test sizes give the student its teacher's size: said, as a new user's fusion student of the
    # preset (42,646 parameters) was twice its small teacher's size without a word
    assert kd["parameters"] >= summary["parameters"] and "is not smaller than its teacher" in caplog.text
    # the teacher file's hash: the report pairs the student with this very teacher (not a later copy)
    assert kd["teacher"]["sha256"] == hashlib.sha256(Path(summary["best_checkpoint"]).read_bytes()).hexdigest()
    saved = tmp_path / "saved_models"  # beside the runs folder, not in the working directory
    assert kd["compat_copy"] == str(saved / "best_student_model_synthetic.pth")
    assert alone["compat_copy"] == str(saved / "best_student_nokd_model_synthetic.pth")
    assert load_checkpoint(kd["compat_copy"])["provenance"]["kd"] is True
    assert load_checkpoint(alone["compat_copy"])["provenance"]["kd"] is False
    assert compat_path(make_config(type="teacher", model="vgae", dataset="hcrl_sa")) == \
        Path("saved_models/autoencoder_hcrl_sa.pth")  # the default runs dir "runs": ./saved_models as before


INFLATE = textwrap.dedent('''
    import resource, sys
    from kdkit.training.checkpoint import load_checkpoint, model_from_checkpoint
    ck = load_checkpoint(sys.argv[1])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        model_from_checkpoint(ck, sys.argv[1])
    except ValueError as err:
        print(err)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, "MiB")
''')


def test_inflated_model_config_is_refused_before_anything_is_allocated(teacher_run, tmp_path):
    _, summary = teacher_run
    ck = torch.load(summary["best_checkpoint"], weights_only=True)
    torch.save(dict(ck, model_config={**ck["model_config"], "hidden": 100_000}), tmp_path / "huge.pt")
    with pytest.raises(ValueError, match=r"huge.pt: its model_config cannot be built .*hidden=100,000 is outside "
                                         r"1..4,096"):
        evaluate_checkpoint(tmp_path / "huge.pt", "synthetic")
    # within the bounds, but not the stored weights' shapes: ~0.8 GiB if it were built
    path = tmp_path / "inflated.pt"
    torch.save(dict(ck, model_config={**ck["model_config"], "hidden": 2048, "heads": 16}), path)
    proc = subprocess.run([sys.executable, "-c", INFLATE, str(path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    message, grown = proc.stdout.strip().splitlines()
    assert f"{path}: its model_config does not match its stored weights" in message
    assert int(grown.split()[0]) < 200, grown


# ----------------------------------------------------------------------------- windows per split
def test_zero_training_or_validation_windows_is_an_error_before_any_model(kdkit_env, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["train", "--dataset", "synthetic", "--epochs", "1", "--hidden", "8", "--layers", "1", "--heads", "1",
            "--embedding-dim", "4", "--run-name", "z"]
    for config, expected in (('{"window": 10000, "stride": 100}', "no training windows in dataset 'synthetic': with window 10,000 and "
                                                    "stride 100, every window of the longest training recording ("),
                             ('{"window": 10000}', "no validation windows in dataset 'synthetic': val_fraction 0.2 "
                                                   "of the windows of the longest training recording"),
                             ('{"window": 30000}', "window 30,000 > the longest training recording ("),
                             ('{"val_fraction": 0}', "no validation windows in dataset 'synthetic': val_fraction 0")):
        assert main([*base, "--config", config]) == 2
        err = capsys.readouterr().err
        assert expected in err and ("--window" in err or "--val-fraction" in err), err
        assert not (tmp_path / "runs" / "z").exists()  # no model built, no checkpoint, no folder left


def _layout(root: Path, source: Path, short_scenarios: list[str], rows: int = 50) -> Path:
    """A can-train-and-test copy of ``source`` as set_01; ``short_scenarios`` hold one ``rows``-message recording."""
    dest = root / "set_01"
    for folder in ("train_01_attack_free", "train_02_with_attacks", "test_01_known_vehicle_known_attack"):
        shutil.copytree(source / folder, dest / folder)
    for name in short_scenarios:
        lines = (source / "test_01_known_vehicle_known_attack" / "DoS-bravo.csv").read_text().splitlines()
        folder = dest / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.csv"):
            old.unlink()
        (folder / "DoS-short.csv").write_text("\n".join(lines[:rows + 1]) + "\n")
    return root


def test_an_empty_test_scenario_is_skipped_and_named(kdkit_env, synthetic, tmp_path):
    source = Path(synthetic.info["root"])
    root = _layout(tmp_path / "data", source, ["test_05_short_recordings"])
    s = train(tiny(tmp_path, dataset="set_01", data_root=str(root), run_name="e"), progress=False)
    why = "no windows: its 1 recording(s) hold at most 50 messages, fewer than the window of 100"
    assert s["skipped_scenarios"]["test_05_short_recordings"].startswith(why)
    assert "test_05_short_recordings" not in s["test"]["scenarios"] and s["test"]["scenarios"]
    assert json.loads((Path(s["run_dir"]) / "metrics.json").read_text())["skipped_scenarios"] == s["skipped_scenarios"]
    out = evaluate_checkpoint(s["best_checkpoint"], "set_01", data_root=str(root))
    assert out["skipped_scenarios"]["test_05_short_recordings"].startswith(why)
    assert set(out["scenarios"]) == {"test_01_known_vehicle_known_attack"}

    nothing = _layout(tmp_path / "data2", source, ["test_01_known_vehicle_known_attack"])
    with pytest.raises(ValueError, match=r"dataset 'set_01' has no test windows in any scenario \(window 100\): "
                                         r"test_01_known_vehicle_known_attack: no windows"):
        train(tiny(tmp_path, dataset="set_01", data_root=str(nothing), run_name="none"), progress=False)
    assert not (tmp_path / "runs" / "none").exists()


# ----------------------------------------------------------------------------- evaluation output
def test_evaluation_json_goes_to_the_run_folder_or_beside_the_checkpoint(teacher_run, tmp_path, capsys):
    base, summary = teacher_run
    run = Path(summary["run_dir"])
    assert main(["evaluate", "--checkpoint", summary["best_checkpoint"], "--dataset", "synthetic"]) == 0
    assert "test_01_known_vehicle_known_attack" in capsys.readouterr().out
    assert json.loads((run / "evaluation_synthetic.json").read_text())["graph"]["window"] == 100
    # another model in the run's checkpoints/ (last.pt, a calibrated copy) is named: it replaced the run's own
    assert main(["evaluate", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--dataset", "synthetic"]) == 0
    assert (run / "evaluation_synthetic_last.json").is_file()
    capsys.readouterr()
    assert json.loads((run / "evaluation_synthetic.json").read_text())["checkpoint"] == summary["best_checkpoint"]
    elsewhere = tmp_path / "x" / "y" / "good.pt"
    elsewhere.parent.mkdir(parents=True)
    shutil.copyfile(summary["best_checkpoint"], elsewhere)
    assert main(["evaluate", "--checkpoint", str(elsewhere), "--dataset", "synthetic", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == str(elsewhere)
    assert (elsewhere.parent / "evaluation_synthetic_good.json").is_file()
    assert not (tmp_path / "x" / "evaluation_synthetic.json").exists()
    # a folder of several models (saved_models/): each one's evaluation is its own, none replaces another
    other = elsewhere.with_name("other.pt")
    shutil.copyfile(summary["best_checkpoint"], other)
    assert main(["evaluate", "--checkpoint", str(other), "--dataset", "synthetic"]) == 0
    assert sorted(p.name for p in elsewhere.parent.glob("evaluation_*.json")) == [
        "evaluation_synthetic_good.json", "evaluation_synthetic_other.json"]


# ----------------------------------------------------------------------------- saved_models
def test_saved_models_copy_is_only_replaced_by_an_equal_or_better_run(synthetic, tmp_path):
    a = train(tiny(tmp_path, run_name="a", save_compat=True), progress=False, data=synthetic)
    copy = tmp_path / "saved_models" / "best_teacher_model_synthetic.pth"
    assert a["compat_copy"] == str(copy) and copy.read_bytes() == Path(a["best_checkpoint"]).read_bytes()
    sidecar = copy.with_suffix(".json")
    record = json.loads(sidecar.read_text())
    assert record["metric"] == "val_f1" and record["value"] == a["best_val_metric"]
    assert record["run_dir"] == a["run_dir"]

    sidecar.write_text(json.dumps({**record, "value": 0.99}))  # as if run a had reached 0.99
    b = train(tiny(tmp_path, run_name="b", save_compat=True, seed=1), progress=False, data=synthetic)
    assert b["compat_copy"] is None and copy.read_bytes() == Path(a["best_checkpoint"]).read_bytes()
    # the copy named as it can be passed on (--teacher): absolute here, the working folder is elsewhere
    assert b["compat_note"] == (f"{copy} kept (val_f1 0.99 from run "
                                f"{a['run_dir']}) over this run's {b['best_val_metric']:.4g}; the run's own best.pt "
                                f"is in {b['run_dir']}")
    assert json.loads((Path(b["run_dir"]) / "summary.json").read_text())["compat_note"] == b["compat_note"]

    # an equal metric replaces it; the sidecar then describes the new copy
    copied, note = save_compat_copy(Path(b["best_checkpoint"]), copy, {"metric": "val_f1", "mode": "max", "value": 0.99,
                                                                       "run_dir": b["run_dir"], "run_name": "b",
                                                                       "checkpoint": b["best_checkpoint"]})
    assert copied and note.startswith(f"{copy} replaced (val_f1 0.99 >= 0.99")
    assert copy.read_bytes() == Path(b["best_checkpoint"]).read_bytes()
    assert json.loads(sidecar.read_text())["run_dir"] == b["run_dir"]
    # a copy without its record (written before kdkit kept one): its own history tells its metric
    sidecar.unlink()
    inferred = compat_record(copy)
    assert inferred["inferred"] and inferred["value"] == max(h["val_f1"] for h in b["history"])
    assert inferred["run_dir"] == b["run_dir"]


def test_evaluate_on_bad_rows_overrides_the_checkpoints(teacher_run, kdkit_env, tmp_path, monkeypatch, capsys):
    """A recording with a malformed row: `kdkit evaluate` stops at file:line as the checkpoint was
    trained (on_bad_rows error), and with --on-bad-rows skip it evaluates, the row counted."""
    _base, summary = teacher_run
    src = Path(str(kdkit_env / "synthetic-seed{seed}").replace("{seed}", "0"))
    copy = tmp_path / "synthetic-seed0"
    shutil.copytree(src, copy)
    victim = sorted((copy / "test_01_known_vehicle_known_attack").glob("*.csv*"))[0]
    lines = victim.read_text().splitlines(keepends=True)
    lines[5] = "not,a,can,row\n"
    victim.write_text("".join(lines))
    monkeypatch.setenv("KDKIT_SYNTHETIC_ROOT", str(tmp_path / "synthetic-seed{seed}"))
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    argv = ["evaluate", "--checkpoint", summary["best_checkpoint"], "--dataset", "synthetic", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert f"{victim.name}:6" in capsys.readouterr().err
    assert main([*argv, "--on-bad-rows", "skip", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["overall"]["windows"] > 0


def test_threads_apply_to_the_run_only(synthetic, tmp_path, monkeypatch):
    """``--threads N`` (run-schema ``threads``): the run trains on N torch threads, the summary says
    so, and the caller's threads and ``$OMP_NUM_THREADS`` are back afterwards (a notebook goes on)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    target = 2 if before == 1 else 1
    seen = []
    summary = train(tiny(tmp_path, run_name="th", threads=target), progress=False, data=synthetic,
                    on_epoch_end=lambda row: seen.append((torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"))))
    assert seen and set(seen) == {(target, str(target))}
    assert summary["threads"] == target
    assert torch.get_num_threads() == before and "OMP_NUM_THREADS" not in os.environ
    default = train(tiny(tmp_path, run_name="th0"), progress=False, data=synthetic)
    assert default["threads"] == before  # None: the process's own setting, untouched
    with pytest.raises(ValueError, match="threads"):
        tiny(tmp_path, threads=0)


def test_notebook_threads_none_is_the_run_schemas_none():
    """The notebooks' ``threads None`` (torch's default; the README's papermill command) is the run
    schema's ``threads`` None: a sweep plan or the first cell accepts it."""
    from kdkit.workflows.notebooks import NOTEBOOK_DIR, check_parameters

    for name in ("teacher", "student", "gateway", "benchmark"):
        assert check_parameters(NOTEBOOK_DIR / f"{name}.ipynb", {"threads": None}) == {"threads": None}
    with pytest.raises(ValueError, match="threads"):
        check_parameters(NOTEBOOK_DIR / "teacher.ipynb", {"threads": 0})


def test_a_saved_models_note_names_the_copy_as_it_can_be_passed_on(tmp_path, monkeypatch):
    """Run from another folder with --runs-dir elsewhere, the note said `saved_models/x.pth`, which
    `--teacher` could not find from there."""
    from kdkit.workflows.saved_models import _shown

    target = tmp_path / "work" / "saved_models" / "best_teacher_model_d.pth"
    target.parent.mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    assert _shown(target) == "saved_models/best_teacher_model_d.pth"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert _shown(target) == str(target)


def test_a_replaced_saved_models_copy_says_lower_is_better_for_a_loss(tmp_path):
    """"replaced (val_loss 5.105 >= 6.234 ...)": a VGAE's copy is ranked by its loss, lower is better."""
    best = tmp_path / "best.pt"
    best.write_bytes(b"weights")
    copy = tmp_path / "saved_models" / "student_nokd_autoencoder_x.pth"
    rec = {"metric": "val_loss", "mode": "min", "run_dir": "runs/a", "run_name": "a", "checkpoint": str(best)}
    assert save_compat_copy(best, copy, {**rec, "value": 6.234})[0]
    copied, note = save_compat_copy(best, copy, {**rec, "value": 5.105, "run_dir": "runs/b"})
    assert copied and "replaced (val_loss 5.105 <= 6.234 from run runs/a)" in note
    assert not save_compat_copy(best, copy, {**rec, "value": 7.0})[0]
