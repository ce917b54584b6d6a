"""Options a command accepted and then did not read, and numbers it could not use (note 50's list):
each is refused, or said, before any work, naming the option."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdkit.cli.main import main
from kdkit.config import keys_without_effect, make_config


@pytest.mark.parametrize("argv, words", [
    (["bench", "preprocess", "--dataset", "synthetic", "--repeats", "3"], "--repeats does nothing with --dataset"),
    (["bench", "preprocess", "--dataset", "synthetic", "--channel", "can0", "--limit", "9"],
     "--channel, --limit do nothing with --dataset"),
    (["bench", "preprocess", "--file", "x.csv", "--limit", "100"], "--limit does nothing with --file"),
    (["bench", "preprocess", "--file", "x.csv", "--baseline", "pandas", "--channel", "can0"],
     "--channel does nothing with --baseline pandas, which reads --limit, --repeats"),
    (["bench", "preprocess", "--file", "x.log", "--baseline", "python-can", "--builder", "numpy"],
     "--builder does nothing with --baseline python-can"),
])
def test_bench_preprocess_refuses_options_its_mode_does_not_read(argv, words, capsys):
    assert main(argv) == 2
    assert words in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["bench", "infer", "--checkpoint", "x.pt", "--seconds", "0"], "argument --seconds: must be a finite number"),
    (["bench", "infer", "--checkpoint", "x.pt", "--seconds", "nan"], "argument --seconds: must be a finite number"),
    (["bench", "infer", "--checkpoint", "x.pt", "--rounds", "0"], "argument --rounds: must be >= 1, got 0"),
    (["bench", "train", "--threads", "-1"], "argument --threads: must be >= 1, got -1"),
    (["bench", "train", "--steps", "two"], "argument --steps: expected a whole number >= 1, got 'two'"),
    (["bench", "preprocess", "--file", "x.csv", "--repeats", "0"], "argument --repeats: must be >= 1"),
    (["export", "--checkpoint", "x.pt", "--threads", "0"], "argument --threads: must be >= 1"),
    (["slurm", "logs", "1", "--tail", "-1"], "argument --tail: must be >= 1"),
    (["slurm", "wait", "1", "--poll", "0"], "argument --poll: must be a finite number"),
    (["sweep", "wait", "runs/x", "--timeout", "inf"], "argument --timeout: must be a finite number"),
])
def test_numbers_a_command_cannot_use_are_refused_by_the_parser(argv, words, capsys):
    """bench infer --seconds 0 reported 0 messages/s, bench train --threads -1 was torch's traceback."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert words in capsys.readouterr().err


def test_a_cache_dir_or_a_runs_folder_under_a_file_is_one_clear_line(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["data", "info", "--dataset", "synthetic", "--cache-dir", "notes.txt"]) == 2
    assert "--cache-dir notes.txt is a file: give a folder" in capsys.readouterr().err
    assert main(["data", "simulate", "--out", "notes.txt/sim"]) == 2
    err = capsys.readouterr().err
    assert "a part of this path is a file, not a folder" in err and "Traceback" not in err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_channel_for_a_dataset_of_csv_recordings_is_refused(synthetic, capsys):
    """--channel on a CSV dataset selected nothing and only gave the run a store of its own."""
    for argv in (["data", "prepare", "--dataset", "synthetic", "--channel", "can0"],
                 ["data", "info", "--dataset", "synthetic", "--channel", "*"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "holds no logger file, only CSV/text recordings" in err and "attack-free-alpha.csv" in err


def test_config_keys_the_run_does_not_read_are_named():
    gat = make_config(model="gat", type="teacher", dataset="synthetic")
    assert keys_without_effect(gat, ["kd_alpha", "combiner", "latent_dim", "hidden", "epochs"]) == [
        "kd_alpha (distillation: --type student --teacher PATH)",
        "combiner (read by fusion runs; this run is gat)",
        "latent_dim (read by vgae and fusion runs; this run is gat)"]
    vgae = make_config(model="vgae", type="student", dataset="synthetic", teacher="t.pt", threshold_rule="youden")
    assert keys_without_effect(vgae, ["kd_alpha", "kd_edge_weight", "threshold_rule", "latent_dim"]) == []
    assert keys_without_effect(vgae, ["kd_score_weight", "threshold_quantile", "class_weighting"]) == [
        "kd_score_weight (read by fusion runs; this run is vgae)",
        "threshold_quantile (read by threshold_rule quantile; this run uses youden)",
        "class_weighting (read by gat and fusion runs; this run is vgae)"]
    fusion = make_config(model="fusion", type="student", dataset="synthetic", teacher="t.pt")
    assert keys_without_effect(fusion, ["kd_score_weight", "combiner", "unknown_vehicle", "class_weighting"]) == []


def test_kdkit_train_says_which_given_keys_it_will_not_read(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--model", "gat", "--type", "teacher", "--dataset", "synthetic", "--use-slurm", "--dry-run"]
    assert main([*argv, "--kd-alpha", "0.3"]) == 0
    err = capsys.readouterr().err
    assert "warning: this run does not read kd_alpha (distillation: --type student --teacher PATH)" in err
    assert main(argv) == 0
    assert "does not read" not in capsys.readouterr().err


def test_optimize_batch_size_without_type_says_it_trains_nothing(monkeypatch, capsys):
    import kdkit.cli.train as cli_train

    monkeypatch.setattr(cli_train, "report_batch_size", lambda args: 0)
    assert main(["train", "--dataset", "synthetic", "--optimize-batch-size"]) == 0
    assert "reports the batch sizes of teacher and student and trains nothing" in capsys.readouterr().err


def test_zipped_recordings_read_under_every_format_that_names_them(tmp_path: Path, monkeypatch):
    """A spec's format "can-train-and-test" read no zipped CSV (its fast reader opened the zip as text), and
    zipped HCRL/OTIDS text was refused even by format auto; each now reads as its unzipped copy."""
    import zipfile

    import numpy as np

    from kdkit.data.datasets import PrepareConfig, prepare
    from kdkit.data.readers import concat_messages, iter_ctt_csv, iter_hcrl_car_hacking, read_messages

    ctt = "timestamp,arbitration_id,data_field,attack\n" + "".join(
        f"{100 + k / 500!r},{0x100 + k % 5:03X},{k % 256:02X},{int(100 < k < 150)}\n" for k in range(300))
    text = "".join(f"Timestamp: {100 + k / 500:.6f}        ID: {0x100 + k % 5:04x}    000    DLC: 1    {k % 256:02x}\n"
                   for k in range(300))
    for name, body in (("ctt.csv", ctt), ("otids.txt", text)):
        (tmp_path / name).write_text(body)
        with zipfile.ZipFile(tmp_path / (name + ".zip"), "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(name, body)

    def same(a, b):
        return all(np.array_equal(getattr(a, n), getattr(b, n)) for n in ("timestamp", "can_id", "dlc", "payload", "label"))

    plain, zipped = read_messages(tmp_path / "ctt.csv"), tmp_path / "ctt.csv.zip"
    assert same(plain, concat_messages(list(iter_ctt_csv(zipped, chunk_rows=64)))) and plain.label.sum() == 49
    assert same(read_messages(tmp_path / "otids.txt"), read_messages(tmp_path / "otids.txt.zip"))
    assert same(read_messages(tmp_path / "otids.txt"),
                concat_messages(list(iter_hcrl_car_hacking(tmp_path / "otids.txt.zip", chunk_rows=50, block_bytes=999))))
    for folder in ("free", "dos"):
        (tmp_path / "data" / folder).mkdir(parents=True)
        (tmp_path / "data" / folder / "ctt.csv.zip").write_bytes(zipped.read_bytes())
    spec = tmp_path / "mine.toml"
    spec.write_text('[dataset]\nname = "mine"\nroot = "data"\nformat = "can-train-and-test"\n'
                    'train_with_attacks = ["free/*.zip"]\n[dataset.tests]\ndos = ["dos/*.zip"]\n')
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    ds = prepare(str(spec), PrepareConfig(window=30, stride=30))
    assert ds.info["splits"]["dos"]["messages"] == 300


def test_a_zero_length_can_fd_frame_is_a_frame_not_a_remote_one(tmp_path: Path):
    """python-can's .asc reader marks a CAN FD frame without data remote (FD has no remote frames): kdkit
    dropped it as one, and so did the live detector for such a Message."""
    import can

    from kdkit.data.readers import read_messages
    from kdkit.stream.detector import _frame_fields

    path = tmp_path / "fd.asc"
    with can.Logger(str(path)) as log:
        for k in range(40):
            log.on_message_received(can.Message(timestamp=100 + k / 100, arbitration_id=0x100 + k % 3,
                                                data=bytes([k]), is_extended_id=False, channel=0))
        log.on_message_received(can.Message(timestamp=100.405, arbitration_id=0x123, data=b"", is_fd=True,
                                            is_extended_id=False, channel=0))
    assert [(m.is_fd, m.is_remote_frame) for m in can.LogReader(str(path)) if m.arbitration_id == 0x123] == [(True, True)]
    m = read_messages(path)
    assert len(m) == 41 and m.dropped_frames == {"remote": 0, "error": 0}
    assert m.can_id[-1] == 0x123 and m.dlc[-1] == 0
    fd = next(m for m in can.LogReader(str(path)) if m.arbitration_id == 0x123)
    assert _frame_fields(fd)[1:3] == (0x123, b"")


def test_kdkit_train_names_a_test_folder_without_recordings(synthetic, tmp_path: Path, monkeypatch, capsys):
    """Only `data info` said it; a run's summary and output had no word of the empty test folder."""
    import shutil

    src = Path(synthetic.splits["train"].files[0]).parents[1]  # the synthetic dataset's folder
    mine = tmp_path / "mycar"
    shutil.copytree(src, mine)
    (mine / "test_09_empty").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--model", "gat", "--type", "student", "--dataset", str(mine), "--epochs", "1",
                 "--hidden", "8", "--layers", "1", "--heads", "1", "--embedding-dim", "4", "--precision", "32-true",
                 "--no-save-compat", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "missing test scenario test_09_empty:" in out
    summary = json.loads((tmp_path / "runs" / "mycar_gat_student" / "summary.json").read_text())
    assert "test_09_empty" in summary["missing_scenarios"]


def test_keys_a_run_does_not_read_include_the_vgae_students_temperature_and_other_schedules_warmup():
    """A review (2026-12-08): --kd-temperature 1 and 8 gave a VGAE student the same losses to every
    digit, as --warmup-steps 1 and 10 did under onecycle; both were recorded as if they had counted."""
    vgae = make_config(model="vgae", type="student", dataset="synthetic", teacher="t.pt")
    assert keys_without_effect(vgae, ["kd_temperature"]) == ["kd_temperature (read by gat and fusion runs; this run is vgae)"]
    assert keys_without_effect(make_config(model="gat", type="student", dataset="synthetic", teacher="t.pt"),
                               ["kd_temperature"]) == []
    for scheduler, unread in (("onecycle", True), ("none", True), ("cosine", False)):
        cfg = make_config(model="gat", type="teacher", dataset="synthetic", scheduler=scheduler)
        assert bool(keys_without_effect(cfg, ["warmup_steps"])) is unread


@pytest.mark.parametrize("extra, words", [
    (["--node-budget", "500"], "--optimize-batch-size and --node-budget 500: a node budget makes batches"),
    (["--batch-size", "32"], "--optimize-batch-size and --batch-size 32: the sizer picks the batch size"),
])
def test_the_batch_sizer_refuses_what_would_override_it_or_be_overridden(extra, words, capsys):
    assert main(["train", "--model", "gat", "--type", "student", "--dataset", "synthetic", "--no-teacher",
                 "--optimize-batch-size", *extra]) == 2
    assert words in capsys.readouterr().err
