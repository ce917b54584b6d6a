"""What the notes of 2026-12-07 left for later, fixed: where a command writes its caches."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import stop_at

from kdkit.cli.main import build_parser, main


def test_cache_dir_moves_the_graph_stores_and_the_synthetic_data(tmp_path: Path, monkeypatch, capsys):
    """`kdkit train --runs-dir X` still wrote ./runs/cache and ./runs/data, and train had no --cache-dir:
    one flag moves both, for that command only (a notebook's environment is left as it was)."""
    monkeypatch.delenv("KDKIT_CACHE_DIR", raising=False)
    monkeypatch.delenv("KDKIT_SYNTHETIC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "scratch" / "cache"
    assert main(["data", "info", "--dataset", "synthetic", "--cache-dir", "scratch/cache", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["dataset"] == "synthetic" and Path(info["root"]) == cache / "synthetic-seed0"
    assert (cache / "synthetic-seed0" / "manifest.json").is_file()
    assert [p.name for p in (cache / "synthetic").iterdir()]  # the store
    assert not (tmp_path / "runs").exists()
    assert "KDKIT_CACHE_DIR" not in os.environ and "KDKIT_SYNTHETIC_ROOT" not in os.environ
    # a synthetic root of the user's own is kept; the cache still moves
    monkeypatch.setenv("KDKIT_SYNTHETIC_ROOT", str(cache / "synthetic-seed{seed}"))
    assert main(["data", "prepare", "--dataset", "synthetic", "--cache-dir", "other"]) == 0
    assert (tmp_path / "other" / "synthetic").is_dir() and not (tmp_path / "other" / "synthetic-seed0").exists()
    assert os.environ["KDKIT_SYNTHETIC_ROOT"] == str(cache / "synthetic-seed{seed}")


@pytest.mark.parametrize("command", [["train", "--dataset", "synthetic"], ["evaluate", "--checkpoint", "x.pt"],
                                     ["batch-size", "--dataset", "synthetic"]])
def test_every_command_that_prepares_data_takes_cache_dir(command):
    args = build_parser(command[0]).parse_args([*command, "--cache-dir", "/scratch/c"])
    assert args.cache_dir == "/scratch/c"


def _ctt(path: Path, t0: float, attack: bool, n: int = 400) -> bytes:
    text = "timestamp,arbitration_id,data_field,attack\n" + "".join(
        f"{t0 + k / 500!r},{0x100 + k % 5:03X},{k % 256:02X},{int(attack and 150 <= k < 190)}\n" for k in range(n))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text.encode()


def test_an_uncompressed_copy_of_a_compressed_recording_is_the_same_recording(tmp_path: Path, monkeypatch):
    """Identity was the file's bytes: `gunzip -k` in a test folder counted the recording twice, and a
    .csv copy of a training .csv.gz in a test folder was not named in-sample."""
    import gzip
    import zipfile

    from kdkit.data.datasets import PrepareConfig, prepare

    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "car"
    clean = _ctt(root / "train_01_attack_free" / "clean.csv", 1000.0, False)
    (root / "train_01_attack_free" / "clean.csv").unlink()
    (root / "train_01_attack_free" / "clean.csv.gz").write_bytes(gzip.compress(clean, mtime=0))
    _ctt(root / "train_02_with_attacks" / "dos.csv", 2000.0, True)
    (root / "test_01_known").mkdir()
    (root / "test_01_known" / "clean.csv").write_bytes(clean)  # the training recording, unzipped
    dos2 = _ctt(root / "test_01_known" / "dos2.csv", 3000.0, True)
    (root / "test_01_known" / "dos2.csv.gz").write_bytes(gzip.compress(dos2, mtime=0))  # gunzip -k
    with zipfile.ZipFile(root / "test_01_known" / "dos3.zip", "w") as zf:
        zf.writestr("dos3.csv", _ctt(tmp_path / "dos3.csv", 4000.0, True))
    (root / "test_01_known" / "dos3.csv").write_bytes((tmp_path / "dos3.csv").read_bytes())  # unzipped beside
    (root / "test_01_known" / "other.csv.gz").write_bytes(gzip.compress(dos2.replace(b",1\n", b",0\n"), mtime=0))
    ds = prepare(str(root), PrepareConfig(window=50, stride=50))
    info = ds.info
    assert [Path(t).name for t, _ in info["tests_in_training"]] == ["clean.csv"]
    read_once = sorted((Path(a).name, Path(b).name) for a, b in info["duplicates_skipped"])
    assert read_once == [("dos2.csv.gz", "dos2.csv"), ("dos3.zip", "dos3.csv")]
    assert sorted(Path(p).name for p in ds.splits["test_01_known"].files) == ["clean.csv", "dos2.csv", "dos3.csv",
                                                                         "other.csv.gz"]


# ----------------------------------------------------------------------------- a review of the training code
TINY_GAT = dict(model="gat", type="teacher", dataset="synthetic", hidden=8, layers=1, heads=1, embedding_dim=4,
                batch_size=64, patience=100, save_compat=False, compile=False, threads=1, warmup_steps=2,
                accelerator="cpu", num_workers=0)


@pytest.fixture()
def fp16_on_cpu(monkeypatch):
    """Fabric's own 16-mixed plugin (a GradScaler) on the CPU: the path a V100 or T4 takes
    (``--preset v100``, ``precision auto`` on compute capability 7.x), testable without a GPU. The
    scaler grows every 3 steps so that its state changes within a short run. Yields the scales after
    each step."""
    import torch
    from lightning_fabric.plugins.precision.amp import MixedPrecision

    import kdkit.training.trainer as trainer_mod

    real = trainer_mod.Fabric

    def fabric(*args, precision=None, **kw):
        return real(*args, plugins=[MixedPrecision("16-mixed", "cpu",
                                                   scaler=torch.amp.GradScaler("cpu", growth_interval=3))], **kw)

    monkeypatch.setattr(trainer_mod, "Fabric", fabric)
    scales: list[float] = []
    step = trainer_mod.FabricTrainer._step

    def recorded(self, *args):
        out = step(self, *args)
        scales.append(self.fabric.strategy.precision.scaler.get_scale())
        return out

    monkeypatch.setattr(trainer_mod.FabricTrainer, "_step", recorded)
    return scales


def test_16_mixed_with_gradient_clipping_trains_and_resumes_its_loss_scale(synthetic, tmp_path, fp16_on_cpu):
    """A fused AdamW unscales its own gradients, and Fabric refused to clip them: every 16-mixed run
    with the default grad_clip 1.0 died on its first step. And a resume restarted the loss scale at
    its initial value: the checkpoint did not hold the GradScaler's state."""
    import torch

    from kdkit.config import make_config
    from kdkit.training.preemption import Preempted
    from kdkit.workflows.run import train

    base = dict(TINY_GAT, epochs=2, grad_clip=1.0, runs_dir=str(tmp_path))
    full = train(make_config(**base, run_name="full"), progress=False, data=synthetic)
    uninterrupted = list(fp16_on_cpu)
    assert len(uninterrupted) > 8 and len(set(uninterrupted)) > 1  # trained, and the scale moved
    fp16_on_cpu.clear()
    with pytest.raises(Preempted):
        train(make_config(**base, run_name="cut"), progress=False, data=synthetic, stop=stop_at(7))
    cut = len(fp16_on_cpu)
    ck = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert ck["loss_scaler"]["scale"] == uninterrupted[cut - 1]
    resumed = train(make_config(**base, run_name="cut"), resume="auto", progress=False, data=synthetic,
                    stop=stop_at(-1))
    assert fp16_on_cpu == uninterrupted  # the same scale after every step, across the resume
    a = torch.load(full["last_checkpoint"], weights_only=True)["model"]
    b = torch.load(resumed["last_checkpoint"], weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_fused_optimizer_only_where_nothing_unscales_before_it():
    from types import SimpleNamespace

    import torch

    from kdkit.training.cpu_speedups import make_optimizer

    params = list(torch.nn.Linear(3, 2).parameters())
    fused = {(scaler, clip): make_optimizer(params, SimpleNamespace(weight_decay=0.0, learning_rate=1e-3, grad_clip=clip),
                                            torch.device("cpu"), grad_scaler=scaler).defaults["fused"]
             for scaler in (False, True) for clip in (0.0, 1.0)}
    assert fused == {(False, 0.0): True, (False, 1.0): True, (True, 0.0): True, (True, 1.0): None}


@pytest.mark.parametrize("trainer", ["fabric", "legacy"])
def test_an_early_stop_counts_the_epochs_it_trained(synthetic, tmp_path, trainer):
    """The loop left at the top of an epoch it did not train, and epochs_run counted it: "stopped
    early after epoch 3/10" after two epochs, and no note at all when that was the last epoch."""
    from kdkit.config import make_config
    from kdkit.reporting.records import stop_note
    from kdkit.workflows.run import train

    for epochs in (10, 3):
        cfg = make_config(**{**TINY_GAT, "patience": 1}, epochs=epochs, learning_rate=0.0, trainer=trainer,
                          runs_dir=str(tmp_path), run_name=f"{trainer}{epochs}")
        s = train(cfg, progress=False, data=synthetic)
        assert s["epochs_run"] == len(s["history"]) == 2
        assert stop_note(s, epochs, 1).startswith(f"stopped early after epoch 2/{epochs}")


def test_youden_never_returns_a_threshold_that_alarms_on_nothing(caplog):
    """roc_curve's first threshold is +inf (J = 0): when no threshold separated the classes it was the
    VGAE's threshold, a model that never alarms, without a word."""
    import numpy as np

    from kdkit.models.thresholds import choose_threshold, youden_threshold

    assert youden_threshold([0, 1, 2, 3, 2.5], [0, 0, 1, 1, 0]) == 2.0
    for scores in ([1.0, 1.0, 1.0, 1.0], [3.0, 2.0, 1.0, 0.0]):  # constant; attacks score lower
        y = np.array([0, 0, 1, 1]) if scores[0] == 3.0 else np.array([0, 1, 0, 1])
        assert youden_threshold(scores, y) is None
        with caplog.at_level("WARNING", logger="kdkit.models.thresholds"):
            t = choose_threshold(scores, y, quantile=0.5)
        assert np.isfinite(t) and t == choose_threshold(np.asarray(scores)[y == 0], None, 0.5)
        assert "no threshold separates" in caplog.text


# ----------------------------------------------------------------------------- a review of the data path
def test_a_sampler_that_must_not_pad_hands_out_each_graph_once_with_a_node_budget():
    """pad=False (evaluation: metrics summed over the ranks) repeated graphs when a node budget packed
    the batches: that branch always wrapped around."""
    import numpy as np

    from kdkit.data.loader import GraphBatchSampler

    nodes = np.random.default_rng(1).integers(5, 30, 50)
    for budget in (0, 40):
        for pad, want in ((False, 50), (True, None)):
            seen = [i for rank in range(3)
                    for b in GraphBatchSampler(50, 10, True, 0, False, budget, nodes, rank, 3, pad=pad) for i in b]
            assert set(seen) == set(range(50))
            if want is not None:
                assert len(seen) == want


def test_a_realtime_replay_keeps_the_readers_new_timeline(tmp_path: Path):
    """Frame by frame at the recorded pace, the reader's restart mark was lost: the detector's live-bus
    rule dropped 7 frames as behind the old clock, and every later window held other messages than
    the replay without pacing (and kdkit evaluate)."""
    import numpy as np

    from kdkit.data.graphs import IdVocab
    from kdkit.data.readers import read_messages
    from kdkit.stream.detector import Detector
    from kdkit.stream.run import replay_file

    rng = np.random.default_rng(0)
    path = tmp_path / "restart.csv"
    rows = [f"{100 + k / 1000:.6f}" for k in range(1, 451)] + [f"{10 + k / 1000:.6f}" for k in range(1, 651)]
    path.write_text("timestamp,arbitration_id,data_field,attack\n" + "".join(
        f"{t},{int(rng.integers(0x100, 0x120)):03X},00,0\n" for t in rows))
    msgs = read_messages(path)
    assert np.flatnonzero(msgs.restart).tolist() == [450]
    runs = {}
    for realtime in (False, True):
        det = Detector(lambda gs: np.zeros(len(gs)), IdVocab.fit([msgs.can_id]), 100, 100,
                       score_batch=lambda b: np.zeros(1), score_graph=lambda g: 0.0)
        s = replay_file(det, path, realtime=realtime, keep=True)
        runs[realtime] = ([(d.first_message, d.start_time) for d in s.decisions], dict(det.dropped),
                          det.timeline_restarts, det.undecided)
    assert runs[True] == runs[False]
    assert runs[True][1] == {} and runs[True][2] == 1 and runs[True][0][4][1] == pytest.approx(10.001)


# ----------------------------------------------------------------------------- a review of the deployment path
def _detector(msgs, window=50):
    import numpy as np

    from kdkit.data.graphs import IdVocab
    from kdkit.stream.detector import Detector

    return Detector(lambda gs: np.zeros(len(gs)), IdVocab.fit([msgs.can_id]), window, window,
                    score_batch=lambda b: np.zeros(1), score_graph=lambda g: 0.0)


def test_a_realtime_replay_of_a_labelled_recording_keeps_its_labels(tmp_path: Path):
    """python-can frames carry no label: a real-time replay of a labelled CSV reported no recall and
    no false-alarm rate (labels None, no attack_share), without a word."""
    from kdkit.data.readers import read_messages
    from kdkit.stream.run import replay_file

    path = tmp_path / "dos.csv"
    _ctt(path, 100.0, attack=True, n=400)
    msgs = read_messages(path)
    runs = {}
    for realtime in (False, True):
        s = replay_file(_detector(msgs), path, realtime=realtime, keep=True)
        runs[realtime] = ([d.attack_share for d in s.decisions], s.to_dict()["labels"])
    assert runs[True] == runs[False]
    assert runs[True][1]["attack_windows"] == 1 and max(runs[True][0]) == pytest.approx(0.8)


def test_a_replays_frame_count_holds_the_frames_the_reader_left_out(tmp_path: Path):
    """On a live bus frames = messages + dropped + other channels; a file replay counted the remote and
    error frames the reader dropped, and the other channels' frames, but not among its frames."""
    from kdkit.data.readers import read_messages
    from kdkit.stream.run import replay_file

    lines = [f"({100 + k / 500:.6f}) can0 {0x100 + k % 5:03X}#{k % 256:02X}11\n" for k in range(300)]
    lines[100:100] = ["(100.2000005) can0 123#R\n", "(100.2000006) can0 123#R\n"]
    lines += [f"({101 + k / 500:.6f}) can1 200#00\n" for k in range(7)]
    path = tmp_path / "bus.log"
    path.write_text("".join(sorted(lines, key=lambda line: float(line[1:line.index(")")]))))
    msgs = read_messages(path, channel="can0")
    for realtime in (False, True):
        det = _detector(msgs)
        s = replay_file(det, path, channel="can0", realtime=realtime).to_dict()
        assert s["messages"] == 300 and dict(det.dropped) == {"remote_frame": 2} and dict(det.other_channels) == {"can1": 7}
        assert det.frames == 300 + 2 + 7


# ----------------------------------------------------------------------------- a review of the batch sizer
def test_the_batch_sizer_probes_the_attention_the_run_uses_and_shares_a_cpus_ram(synthetic):
    """The probe kept the default attention (PyG's path peaks ~2.5x higher on CPU) and its cache key did
    not name it; and each of N processes on one CPU was given the whole RAM target."""
    from kdkit.config import make_config
    from kdkit.models.layers import GATv2Layer
    from kdkit.workflows.batch_size import sizer_for_config

    base = dict(model="gat", type="teacher", dataset="synthetic", accelerator="cpu", target_memory_usage=0.4)
    sizers = {a: sizer_for_config(make_config(**base, attention=a), synthetic) for a in ("auto", "stock")}
    assert {m.attention for m in sizers["stock"].model.modules() if isinstance(m, GATv2Layer)} == {"stock"}
    assert sizers["stock"].cache_key() != sizers["auto"].cache_key()
    two = sizer_for_config(make_config(**base, devices=2, strategy="ddp"), synthetic)
    assert two.target == pytest.approx(0.2) and sizers["auto"].target == pytest.approx(0.4)


def test_processes_deciding_the_cpu_precision_at_once_agree(tmp_path, monkeypatch):
    """Each rank of a DDP run timed bf16 against fp32 itself, side by side on shared cores: 2 runs of 6
    put one rank in bf16 and the other in fp32. One process measures; the others read its verdict."""
    import multiprocessing

    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path))
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_measure_verdict, args=(out, i)) for i in range(3)]
    for p in procs:
        p.start()
    got = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert len({v for _, v in got}) == 1 and sum(measured for measured, _ in got) == 1


def _measure_verdict(out, i: int) -> None:
    import time

    from kdkit.training import precision

    calls = []

    def measure():
        calls.append(1)
        time.sleep(0.5)  # long enough for the others to ask meanwhile
        return 1.0 + 0.1 * i  # each process would measure another value

    precision._BF16_CPU_SPEEDUP = None
    precision._measure_bf16_speedup = measure
    value = precision.measure_cpu_bf16_speedup()
    out.put((len(calls), value))


# ----------------------------------------------------------------------------- a review of dataset specs
def _spec_data(root: Path) -> None:
    for folder, attack in (("free", False), ("att", True), ("tst", True)):
        _ctt(root / "data" / folder / f"{'DoS' if attack else 'clean'}-{folder}.csv", 100.0, attack)


@pytest.mark.parametrize("scenario, words", [("train", "is a split of its own"), ("val", "is a split of its own"),
                                             ("../../escaped", "must be letters, digits")])
def test_a_test_scenario_cannot_replace_a_split_or_write_outside_the_cache(tmp_path, monkeypatch, scenario, words):
    """A scenario named "train" replaced the training split (the model trained on the test recordings,
    exit 0, no word); "../../escaped" wrote its store above the cache folder."""
    from kdkit.data.datasets import prepare
    from kdkit.data.sources import DatasetSpecError

    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    _spec_data(tmp_path)
    spec = tmp_path / "spec.toml"
    spec.write_text(f'[dataset]\nname = "clash"\nroot = "data"\ntrain_attack_free = ["free/*.csv"]\n'
                    f'train_with_attacks = ["att/*.csv"]\n[dataset.tests]\n"{scenario}" = ["tst/*.csv"]\n')
    with pytest.raises(DatasetSpecError, match=f"test scenario name '{scenario}' {words}"):
        prepare(str(spec))


def test_spec_files_refuse_two_datasets_of_one_name_absolute_globs_and_string_booleans(tmp_path):
    from kdkit.data.datasets import prepare
    from kdkit.data.sources import DatasetSpecError

    _spec_data(tmp_path)
    body = 'root = "data"\ntrain_attack_free = ["free/*.csv"]\n'
    cases = {
        "two.toml": (f'[dataset]\nname = "x"\n{body}[datasets.x]\n{body}', "declared twice"),  # one replaced the other
        "renamed.toml": (f'[datasets.y]\nname = "x"\n{body}', "named by its key"),  # y ran as x
        "abs.toml": (f'[dataset]\nname = "a"\nroot = "data"\ntrain_attack_free = ["{tmp_path}/data/free/*.csv"]\n',
                     "is absolute"),  # a NotImplementedError traceback
        "bool.json": ('{"dataset": {"name": "b", "root": "data", "train_attack_free": ["free/*.csv"], "columns": '
                      '{"timestamp": "t", "can_id": "i", "payload": "p", "float_ids": "false"}}}',
                      "float_ids must be true or false"),  # "false" was true
    }
    for name, (text, words) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DatasetSpecError, match=words):
            prepare(str(tmp_path / name))


def test_a_declared_name_shadowed_by_the_registry_or_a_folder_is_said(tmp_path, monkeypatch, caplog):
    from kdkit.data.datasets import resolve_source
    from kdkit.data.sources import _WARNED

    _spec_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    body = 'root = "data"\ntrain_attack_free = ["free/*.csv"]\n'
    (tmp_path / "datasets.toml").write_text(f"[datasets.hcrl_sa]\n{body}[datasets.data]\n{body}")
    _WARNED.clear()
    with caplog.at_level("WARNING", logger="kdkit.data"):
        resolve_source("hcrl_sa", data_root=str(tmp_path))
        resolve_source("data")
    assert "the built-in registry's hcrl_sa is used, not the dataset 'hcrl_sa' that datasets.toml declares" in caplog.text
    assert f"the folder {tmp_path / 'data'} is used, not the dataset 'data'" in caplog.text


def test_daga_files_in_split_folders_and_masquerade_folders(tmp_path, monkeypatch):
    """DAGA's preset types a recording by its folder (infected/DoS/): in the can-train-and-test layout that
    typed attacks "train_02_with_attacks"; and a recording in a Masquerade/ folder was trained on (only
    file names were looked at)."""
    from conftest import DAGA_HEADER, daga_rows, write_zip

    from kdkit.data.datasets import PrepareConfig, discover, prepare

    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    car = tmp_path / "car"
    write_zip(car / "train_01_attack_free" / "clean-v40.can.zip", DAGA_HEADER, daga_rows(400))
    write_zip(car / "train_02_with_attacks" / "DoS-v40.can.zip", DAGA_HEADER, daga_rows(400, attack_every=5))
    write_zip(car / "test_01_replay" / "replay-v40.can.zip", DAGA_HEADER, daga_rows(400, attack_every=5, t0=5.0))
    ds = prepare(str(car), PrepareConfig(window=50, stride=50))
    types = {t for split in ds.splits.values() for t in split.attack_types}
    assert {"DoS", "replay"} <= types and not {t for t in types if t.startswith(("train_", "test_"))}
    write_zip(car / "train_02_with_attacks" / "Masquerade" / "V40_03.can.zip", DAGA_HEADER, daga_rows(400, 5))
    spec = tmp_path / "daga.toml"
    spec.write_text(f'[dataset]\nname = "d"\nroot = "{car}"\nformat = "daga"\n'
                    'train_attack_free = ["train_01_attack_free/*"]\ntrain_with_attacks = ["train_02_with_attacks/**/*.zip"]\n')
    files = discover(str(spec))
    assert [p.name for p in files.excluded] == ["V40_03.can.zip"]


def test_recordings_without_labels_in_attack_or_test_folders_are_named(tmp_path, monkeypatch):
    """A logger file without a sidecar (or OTIDS text) in train_02_with_attacks or a test folder: every
    window counted as normal, its attacks trained and tested as normal, without a word."""
    from kdkit.data.datasets import PrepareConfig, format_info, prepare

    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    car = tmp_path / "car"

    def log(path: Path, t0: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"({t0 + k / 500:.6f}) can0 {0x100 + k % 5:03X}#{k % 256:02X}11\n" for k in range(400)))

    log(car / "train_01_attack_free" / "clean.log", 1000.0)
    log(car / "train_02_with_attacks" / "dos.log", 2000.0)
    log(car / "test_01_dos" / "dos2.log", 3000.0)
    log(car / "test_01_dos" / "dos3.log", 4000.0)
    (car / "test_01_dos" / "dos3.log.labels.csv").write_text("start,end,attack_type\n4000.2,4000.3,DoS\n")
    ds = prepare(str(car), PrepareConfig(window=50, stride=50))
    assert sorted(Path(p).name for p in ds.info["unlabelled"]) == ["dos.log", "dos2.log"]
    assert "dos2.log carries no attack labels" in format_info("car", ds)


# ----------------------------------------------------------------------------- a review of the command line
def test_an_output_that_is_one_of_the_commands_inputs_is_refused(tmp_path, capsys):
    """detect --alarms REC emptied the recording it was to read; export --out best.pt replaced the
    checkpoint; calibrate --out onto a --clean recording; report --html --out metrics.json (exit 0 all)."""
    rec = tmp_path / "rec.csv"
    data = _ctt(rec, 100.0, False)
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"checkpoint")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    cases = [(["detect", "--checkpoint", str(ckpt), "--input", str(rec), "--alarms", str(rec)], "--alarms"),
             (["detect", "--checkpoint", str(ckpt), "--input", str(rec), "--summary", str(ckpt)], "--summary"),
             (["export", "--checkpoint", str(ckpt), "--out", str(ckpt)], "--out"),
             (["calibrate", "--checkpoint", str(ckpt), "--clean", str(rec), "--out", str(rec)], "--out"),
             (["report", str(run), "--html", "--out", str(run / "metrics.json")], "--out")]
    for argv, flag in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"kdkit: error: {flag} " in err and ("this command reads" in err or "not a report page" in err)
    assert rec.read_bytes() == data and ckpt.read_bytes() == b"checkpoint"
    assert (run / "metrics.json").read_text() == "{}"


def test_run_names_seeds_and_nodes_that_would_lose_or_hang_are_refused_first(tmp_path, monkeypatch, capsys):
    """--run-name ../x wrote outside --runs-dir (and --overwrite would clear it); --overwrite removed the
    old run, then --seed -1 failed in numpy; --num-nodes 2 outside SLURM waited for ever."""
    for key in ("SLURM_JOB_ID", "MASTER_ADDR", "NODE_RANK"):
        monkeypatch.delenv(key, raising=False)
    run = tmp_path / "runs" / "keep"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    base = ["train", "--dataset", "synthetic", "--runs-dir", str(tmp_path / "runs"), "--epochs", "1"]
    for extra, words in ((["--run-name", "../escape"], "a run name is one folder name"),
                         (["--run-name", "keep", "--overwrite", "--seed", "-1"], "config key 'seed': must be >= 0"),
                         (["--num-nodes", "2"], "here it would wait for them for ever")):
        assert main([*base, *extra]) == 2
        assert words in capsys.readouterr().err
    assert (run / "config.json").read_text() == "{}" and not (tmp_path / "escape").exists()


def test_outputs_and_option_pairs_that_failed_late_or_were_ignored_are_refused_first(tmp_path, capsys):
    """detect --summary into a missing folder failed after the run (a live bus: hours, then a traceback);
    a folder as report --out was a traceback; --resume with --overwrite resumed and ignored --overwrite;
    min_batch_size above max_batch_size was the sizer's answer."""
    rec = tmp_path / "rec.csv"
    _ctt(rec, 100.0, False)
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"checkpoint")
    (tmp_path / "run").mkdir()
    cases = [(["detect", "--checkpoint", str(ckpt), "--input", str(rec), "--summary", str(tmp_path / "no" / "s.json")],
              "--summary " + str(tmp_path / "no" / "s.json") + ": its folder"),
             (["detect", "--checkpoint", str(ckpt), "--input", str(rec), "--alarms", str(tmp_path)], "is a folder"),
             (["report", str(tmp_path / "run"), "--html", "--out", str(tmp_path)], "is a folder"),
             (["train", "--dataset", "synthetic", "--resume", "auto", "--overwrite"], "give one of them"),
             (["batch-size", "--dataset", "synthetic", "--min-batch-size", "100", "--max-batch-size", "10"],
              "the wrong way round")]
    for argv, words in cases:
        assert main(argv) == 2
        assert words in capsys.readouterr().err


def test_empty_paths_odd_scales_and_probability_thresholds_are_refused(tmp_path, monkeypatch, capsys):
    """An empty string was the current folder (evaluate --input '' read it recursively, report '' summarised
    every run under it, --dataset '' took it as a dataset); simulate --scale inf/nan was a traceback;
    evaluate --input --threshold -1 of a GAT alarmed on every window (kdkit detect refused it)."""
    monkeypatch.chdir(tmp_path)
    cases = [(["evaluate", "--checkpoint", "x.pt", "--input", ""], "--input '': an empty path"),
             (["report", ""], "an empty path"),
             (["data", "info", "--dataset", ""], "an empty name"),
             (["data", "simulate", "--out", str(tmp_path / "s"), "--scale", "inf"], "positive finite numbers"),
             (["data", "simulate", "--out", str(tmp_path / "s"), "--scale", "nan"], "positive finite numbers")]
    for argv, words in cases:
        assert main(argv) == 2
        assert words in capsys.readouterr().err


def test_a_gat_threshold_outside_zero_one_is_refused_by_evaluate_input(student_checkpoint, tmp_path):
    from kdkit.workflows.scoring import load_scoring_model

    for bad in (-1.0, 5.0):
        with pytest.raises(ValueError, match="is outside \\[0, 1\\]"):
            load_scoring_model(student_checkpoint, threshold=bad)
    assert load_scoring_model(student_checkpoint, threshold=0.3).threshold == 0.3
