"""Bring your own recordings: column mappings and presets (each public layout's quirks in a small
fixture written here), datasets by folder, by spec file and by declared name, and the real DAGA
Volvo V40 traces in ../shared through the spec in docs/datasets/.

Run: .venv/bin/python -m pytest tests/test_own_data.py -q
"""
from __future__ import annotations

import gzip
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import DAGA_HEADER, ROAD_HEADER, daga_rows, write_zip

from kdkit.cli.main import main
from kdkit.config import make_config, validate_overrides
from kdkit.data.columns import PRESETS, ColumnMapping, read_mapped
from kdkit.data.datasets import PrepareConfig, dataset_name, discover, prepare
from kdkit.data.graphs import IdVocab, build_graphs
from kdkit.data.readers import EXTENDED_ID_FLAG, DataFormatError, read_messages
from kdkit.data.simulate import simulate
from kdkit.data.sources import DatasetSpecError

REPO = Path(__file__).resolve().parent.parent
DAGA_SPEC = REPO / "docs" / "datasets" / "daga-volvo-v40.toml"
DAGA_ROOT = REPO.parent / "shared" / "data" / "daga-volvo-v40"
IN_CI = os.environ.get("CI", "").lower() == "true"

def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


# ------------------------------------------------------------------ presets and their quirks
def test_daga_preset_reads_the_published_quirks(tmp_path: Path):
    path = write_zip(tmp_path / "infected" / "DenialOfService" / "x.can.zip", DAGA_HEADER, daga_rows(40, attack_every=10))
    m = read_mapped(path, PRESETS["daga"])
    assert len(m) == 40 and m.skipped_rows == 0
    assert m.timestamp[1] == pytest.approx(9e-06)
    attack = m.label == 1
    assert attack.sum() == 4 and (m.can_id[attack] == 0x290).all()  # '290.0' is hex 290, as the clean trace's '290'
    assert (m.payload[attack] == 0).all() and (m.dlc == 8).all()  # '0' with DLC 64 bits: eight zero bytes
    assert m.payload[0].tolist() == [0] * 8 and m.payload[5].tolist() == [0, 0, 0, 0, 0, 0, 0, 5]
    assert m.attack_type == "DenialOfService"  # DAGA names the attack by its folder
    assert set(m.message_attack_type[attack]) == {"DenialOfService"}
    # read_messages knows the published header: the same messages without naming the preset
    same = read_messages(path)
    assert np.array_equal(same.can_id, m.can_id) and np.array_equal(same.payload, m.payload)
    # the clean trace writes FALSE in capitals: declared in the preset, read as normal
    clean = write_zip(tmp_path / "clean" / "c.can.zip", DAGA_HEADER, [r.replace(",False", ",FALSE") for r in daga_rows(8)])
    assert read_messages(clean).label.sum() == 0


def test_float_ids_only_when_the_mapping_says_so(tmp_path: Path):
    path = write_zip(tmp_path / "DoS" / "x.can.zip", DAGA_HEADER, daga_rows(20, attack_every=10))
    strict = ColumnMapping(**{**PRESETS["daga"].to_dict(), "float_ids": False})
    with pytest.raises(DataFormatError, match=r"x\.can\.zip:11: CAN_ID '290\.0': not a hex CAN ID .*float_ids = true"):
        read_mapped(path, strict)
    m = read_mapped(path, strict, on_bad_rows="skip")
    # skipping is visible: both skipped rows were attack rows, and counted as such
    assert len(m) == 18 and m.skipped_rows == 2 and m.skipped_attack_rows == 2


def test_road_preset_byte_columns_and_named_labels(tmp_path: Path):
    rows = ["0.000,0C1,10,20,30,40,50,60,70,80,Benign",
            "0.001, 1A0 ,1,2,,,,,,,Benign",  # a 2-byte payload: empty cells end it; spaces are stripped
            "0.002,0C1,ff,00,00,00,00,00,00,00,Fuzzing",
            "0.003,00000123,00,00,00,00,00,00,00,00,Masquerade"]  # 8 hex digits: an extended ID
    path = write_text(tmp_path / "road" / "fuzzing_attack_1.csv", "\n".join([ROAD_HEADER, *rows]) + "\n")
    m = read_messages(path)  # known by its header
    assert m.dlc.tolist() == [8, 2, 8, 8]
    assert m.payload[0].tolist() == [0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80]
    assert m.payload[1].tolist() == [1, 2, 0, 0, 0, 0, 0, 0]
    assert m.can_id.tolist() == [0x0C1, 0x1A0, 0x0C1, 0x123 | EXTENDED_ID_FLAG]
    assert m.label.tolist() == [0, 0, 1, 1]
    assert m.message_attack_type.tolist() == ["normal", "normal", "fuzzing", "masquerade"]
    assert m.attack_type == "mixed"
    gap = write_text(tmp_path / "road" / "gap.csv", ROAD_HEADER + "\n0.0,0C1,10,,30,,,,,,Benign\n")
    with pytest.raises(DataFormatError, match=r"gap\.csv:2: Byte3 '30' after an empty byte column: payload must be byte values .* no gap"):
        read_messages(gap)


def test_label_values_outside_the_map_are_errors_naming_the_line(tmp_path: Path):
    rows = ["0.0,0C1,10,20,30,40,50,60,70,80,Benign", "0.1,0C1,10,20,30,40,50,60,70,80,Spoofed"]
    path = write_text(tmp_path / "x.csv", "\n".join([ROAD_HEADER, *rows]) + "\n")
    with pytest.raises(DataFormatError, match=r"x\.csv:3: Label 'Spoofed': not a value of the mapping's label_map"):
        read_messages(path)


def test_otids_text_through_a_spec_format(tmp_path: Path, monkeypatch):
    """OTIDS / HCRL text lines (`Timestamp: ... ID: ... 000 DLC: n bytes`), whitespace-separated, as a spec's format."""
    lines = [f"Timestamp: {1479121434.850202 + i * 0.001:.6f}        ID: {['0316', '018f', '0260'][i % 3]}    000    "
             f"DLC: 8    05 28 84 66 6d 00 00 a2" for i in range(300)]
    for folder in ("free", "dos"):
        write_text(tmp_path / "data" / folder / "Attack_free_dataset.txt", "\n".join(lines) + "\n")
    spec = write_text(tmp_path / "otids.toml", '[dataset]\nname = "otids"\nroot = "data"\nformat = "otids"\n'
                      'train_attack_free = ["free/*.txt"]\n[dataset.tests]\ndos = ["dos/*.txt"]\n')
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    ds = prepare(str(spec), PrepareConfig(window=30, stride=30))
    assert ds.info["splits"]["dos"]["messages"] == 300 and ds.vocab and len(ds.vocab) == 4  # 3 IDs + OOV


def test_mapping_without_header_decimal_ids_and_millisecond_times(tmp_path: Path):
    mapping = ColumnMapping(timestamp=0, can_id=1, payload=2, time_unit="ms", id_base=10, header=False,
                            delimiter="whitespace", label=3, label_map={"R": "normal", "T": "attack"})
    path = write_text(tmp_path / "gear" / "Gear_capture.txt.gz", "1000  193  0011  R\n1001\t 416 FF T\n")
    m = read_mapped(path, mapping)
    assert m.timestamp.tolist() == [1.0, 1.001] and m.can_id.tolist() == [193, 416]
    assert m.label.tolist() == [0, 1] and m.attack_type == "gear" and m.dlc.tolist() == [2, 1]


def test_payload_as_bits(tmp_path: Path):
    mapping = ColumnMapping(timestamp="t", can_id="id", payload="bits", payload_format="bits")
    path = write_text(tmp_path / "b.csv", "t,id,bits\n0.5,7FF,0000000111111111\n0.6,001,\n")
    m = read_mapped(path, mapping)
    assert m.payload[0, :2].tolist() == [1, 255] and m.dlc.tolist() == [2, 0]


def test_ctt_payload_with_a_trailing_tab_loads(tmp_path: Path):
    """The real set_03 release has `614008F208E870DE\\t` on line 19 of one file; CRLF line ends too."""
    text = "timestamp,arbitration_id,data_field,attack\r\n1.0,0C1,00,0\r\n2.0,0C1,614008F208E870DE\t,0\r\n3.0, 1A0 ,01,1\r\n"
    m = read_messages(write_text(tmp_path / "DoS-x.csv", text))
    assert m.payload[1].tolist() == [0x61, 0x40, 0x08, 0xF2, 0x08, 0xE8, 0x70, 0xDE]
    assert m.can_id.tolist() == [0x0C1, 0x0C1, 0x1A0] and m.label.tolist() == [0, 0, 1]


def test_column_mapping_errors_name_the_key():
    with pytest.raises(ValueError, match="time_unit = 'min'"):
        ColumnMapping(timestamp="t", can_id="i", payload="p", time_unit="min")
    with pytest.raises(ValueError, match="needs a label_map"):
        ColumnMapping(timestamp="t", can_id="i", payload="p", label="l")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour'\]"):
        ColumnMapping.from_dict({"timestamp": "t", "can_id": "i", "payload": "p", "colour": 1})
    with pytest.raises(ValueError, match="pad_payload needs a dlc column"):
        ColumnMapping(timestamp="t", can_id="i", payload="p", pad_payload=True)


def test_a_missing_column_names_the_header(tmp_path: Path):
    mapping = ColumnMapping(timestamp="time", can_id="id", payload="data")
    with pytest.raises(DataFormatError, match=r"x\.csv:1: column 'data' not in the header \['time', 'id', 'payload'\]"):
        read_mapped(write_text(tmp_path / "x.csv", "time,id,payload\n1,0C1,00\n"), mapping)


def test_per_message_attack_types_reach_the_windows(tmp_path: Path):
    rows = [f"{i * 0.001:.3f},0C1,00,00,00,00,00,00,00,00,{'Fuzzing' if 10 <= i < 14 else 'Masquerade' if 25 <= i < 30 else 'Benign'}"
            for i in range(40)]
    m = read_messages(write_text(tmp_path / "r.csv", "\n".join([ROAD_HEADER, *rows]) + "\n"))
    gs = build_graphs(m, IdVocab.fit([m.can_id]), window=10, stride=10)
    names = [gs.attack_types[t] for t in gs.attack_type.tolist()]
    assert names == ["normal", "fuzzing", "masquerade", "normal"]


# ------------------------------------------------------------------ datasets by folder, spec and name
def _daga_like_dataset(root: Path) -> None:
    write_zip(root / "clean" / "drive.can.zip", DAGA_HEADER, daga_rows(3000))
    write_zip(root / "infected" / "DenialOfService" / "drive.can.zip", DAGA_HEADER, daga_rows(3000, attack_every=7))
    write_zip(root / "infected" / "SingleIDReplay" / "drive.can.zip", DAGA_HEADER, daga_rows(2000, attack_every=5))


SPEC = """
[dataset]
name = "my-car"
root = "data"
format = "daga"
train_attack_free = ["clean/*.zip"]
train_with_attacks = ["infected/DenialOfService/*.zip"]
window = 50
stride = 50

[dataset.tests]
replay = ["infected/SingleIDReplay/*.zip"]
not_released_yet = ["infected/Masquerade/*.zip"]
"""


def test_a_spec_file_is_a_dataset_everywhere(tmp_path: Path, monkeypatch, capsys):
    _daga_like_dataset(tmp_path / "data")
    spec = write_text(tmp_path / "my-car.toml", SPEC)
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    ds = prepare(str(spec), PrepareConfig(window=50, stride=50))
    assert ds.name == "my-car" and ds.cache_dir.parent.name == "my-car"
    assert set(ds.scenarios) == {"replay"}
    assert "not_released_yet" in ds.info["missing_scenarios"]  # reported, not fatal
    assert ds.splits["replay"].attack_types[1] == "SingleIDReplay" and int(ds.splits["replay"].y.sum()) > 0
    # the run schema accepts it, takes the spec's window, and names the run by the dataset's name
    cfg = make_config(dataset=str(spec), model="gat", type="student")
    assert cfg.window == 50 and cfg.stride == 50 and cfg.resolved_run_name == "my-car_gat_student"
    assert make_config(dataset=str(spec), window=20).window == 20  # the user's setting wins
    # kdkit data info prints the missing scenario
    assert main(["data", "info", "--dataset", str(spec)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dataset my-car") and "missing test scenario not_released_yet" in out
    # declared names: ./datasets.toml or $KDKIT_DATASETS
    monkeypatch.setenv("KDKIT_DATASETS", str(spec))
    assert dataset_name("my-car") == "my-car" and discover("my-car").name == "my-car"
    validate_overrides({"dataset": "my-car"})


def test_spec_errors_name_the_file_and_key(tmp_path: Path):
    (tmp_path / "data").mkdir()
    cases = {
        'name = "x"\ncolour = "red"': r"unknown key\(s\) \['colour'\]",
        'name = "x"\ntests = {}': "declares no training data",
        'name = "x"\ntrain_attack_free = 3': "expected a glob or a list of globs, got 3",
        'name = "x y"\ntrain_attack_free = ["a"]': "must be letters, digits",
        'name = "x"\ntrain_attack_free = ["a"]\nformat = "pcap"': "format 'pcap' is not a preset",
        'name = "x"\ntrain_attack_free = ["a"]\nwindow = "big"': "window must be of type int",
        'name = "x"\ntrain_attack_free = ["a"]\n[dataset.columns]\ntimestamp = "t"': r"columns: missing key\(s\)",
    }
    for body, message in cases.items():
        spec = write_text(tmp_path / "s.toml", "[dataset]\n" + body + "\n")
        with pytest.raises(DatasetSpecError, match=message) as err:
            prepare(str(spec))
        assert str(spec) in str(err.value)
    broken = write_text(tmp_path / "b.toml", "[dataset\n")
    with pytest.raises(DatasetSpecError, match="not valid TOML"):
        prepare(str(broken))
    two = write_text(tmp_path / "two.json", json.dumps({"datasets": {
        "a": {"train_attack_free": ["x/*"]}, "b": {"train_attack_free": ["y/*"]}}}))
    with pytest.raises(DatasetSpecError, match=r"declares 2 datasets \['a', 'b'\]: name one as .*two\.json:<name>"):
        prepare(str(two))
    with pytest.raises(FileNotFoundError, match=r"training glob 'x/\*' matches no recording"):
        prepare(f"{two}:a")
    with pytest.raises(ValueError, match="config key 'dataset': unknown dataset 'nowhere'"):
        make_config(dataset="nowhere")


def test_a_folder_is_a_dataset_named_after_it(tmp_path: Path, monkeypatch):
    folder = tmp_path / "rav4-2024"
    simulate(folder, seed=0, scale=0.2)
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    ds = prepare(str(folder), PrepareConfig(window=50, stride=50))
    assert ds.name == "rav4-2024" and ds.scenarios
    assert make_config(dataset=str(folder)).resolved_run_name == "rav4-2024_gat_teacher"


def test_zero_training_windows_is_an_error_never_a_run(tmp_path: Path, monkeypatch, capsys):
    root = tmp_path / "data"
    write_zip(root / "clean" / "d.can.zip", DAGA_HEADER, daga_rows(30))
    spec = write_text(tmp_path / "s.toml", '[dataset]\nname = "tiny"\nroot = "data"\ntrain_attack_free = ["clean/*"]\n')
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--model", "gat", "--type", "student", "--dataset", str(spec), "--epochs", "1",
                 "--runs-dir", str(tmp_path / "runs")])
    assert code != 0
    assert "no training windows in dataset 'tiny'" in capsys.readouterr().err
    assert not list((tmp_path / "runs").glob("*/checkpoints/*.pt"))


def test_a_classifier_without_attack_windows_is_refused_before_training(tmp_path: Path, monkeypatch, capsys):
    """A capture of one's own car (attack-free) is training data for an autoencoder, not for a
    classifier: a GAT would learn one class and report F1 0 as if it had trained."""
    import shutil

    folder = tmp_path / "mycar"
    simulate(folder, seed=0, scale=0.2)
    shutil.rmtree(folder / "train_02_with_attacks")
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    common = ["--dataset", str(folder), "--epochs", "1", "--runs-dir", str(tmp_path / "runs"), "--hidden", "16",
              "--precision", "32-true", "--no-save-compat"]
    code = main(["train", "--model", "gat", "--type", "student", "--no-teacher", *common])
    err = capsys.readouterr().err
    assert code == 2
    assert "no attack windows in the training split of dataset 'mycar' (all " in err and "--model vgae" in err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.pt"))
    assert main(["train", "--model", "vgae", "--type", "student", "--no-teacher", *common]) == 0
    assert list((tmp_path / "runs").rglob("best.pt"))


def _last_json(capsys) -> str:
    out = capsys.readouterr().out
    return out[out.index("{"):]


def test_train_evaluate_calibrate_export_on_a_spec_dataset(tmp_path: Path, monkeypatch, capsys):
    _daga_like_dataset(tmp_path / "data")
    spec = write_text(tmp_path / "my-car.toml", SPEC)
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--model", "gat", "--type", "student", "--dataset", str(spec), "--epochs", "1",
                 "--runs-dir", str(tmp_path / "runs"), "--compile", "false", "--batch-size", "32"]) == 0
    run = tmp_path / "runs" / "my-car_gat_student"
    assert (run / "checkpoints" / "best.pt").is_file()
    assert list((tmp_path / "saved_models").glob("*my-car*"))
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--dataset", str(spec)]) == 0
    assert (run / "evaluation_my-car.json").is_file()
    ev = json.loads((run / "evaluation_my-car.json").read_text())
    assert "replay" in json.dumps(ev)
    # ... -> calibrate on a clean recording of "another car" -> export from the checkpoint alone
    other = write_zip(tmp_path / "other-car" / "clean.can.zip", DAGA_HEADER, daga_rows(3000, t0=5.0))
    calibrated = tmp_path / "calibrated.pt"
    assert main(["calibrate", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--clean", str(other),
                 "--fpr", "0.05", "--out", str(calibrated), "--json"]) == 0
    cal = json.loads(_last_json(capsys))
    assert cal["alarm_rate_after"] <= 0.05
    monkeypatch.setenv("KDKIT_DATA_ROOT", str(tmp_path / "nothing"))
    assert main(["export", "--checkpoint", str(calibrated), "--out", str(tmp_path / "my-car.pt2")]) == 0
    meta = json.loads((tmp_path / "my-car.json").read_text())
    assert meta["threshold"] == cal["new_threshold"] and meta["window"] == 50


# ------------------------------------------------------------------ the real DAGA traces
@pytest.fixture(scope="module")
def daga_available() -> None:
    if not DAGA_ROOT.is_dir():
        if IN_CI:
            pytest.fail(f"{DAGA_ROOT} is missing (CI=true: the shared real data must be there)")
        pytest.skip(f"{DAGA_ROOT} not here")


def test_real_daga_traces_as_published(daga_available, tmp_path: Path, monkeypatch, capsys):
    """The shared Volvo V40 traces, zipped as published, through the spec in docs/datasets/."""
    expected = {"clean": (245_144, 0), "DenialOfService": (254_164, 13_860), "MessageIDFuzzing": (245_297, 153),
                "PayloadFuzzing": (245_756, 612), "SingleIDReplay": (245_756, 612),
                "OrderedSequenceReplay": (245_914, 770), "ArbitrarySequenceReplay": (245_914, 770)}
    for z in sorted(DAGA_ROOT.rglob("*.zip")):
        m = read_messages(z)  # by its header: no spec needed to read one file
        assert (len(m), int(m.label.sum())) == expected[z.parent.name], z
        assert m.skipped_rows == 0
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["data", "info", "--dataset", str(DAGA_SPEC), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["dataset"] == "daga-volvo-v40" and info["missing_scenarios"] == {}
    assert set(info["splits"]) == {"train", "val", "payload_fuzzing", "single_id_replay", "ordered_sequence_replay",
                                   "arbitrary_sequence_replay"}
    assert info["splits"]["single_id_replay"]["attack_windows"] > 0


@pytest.mark.notebook
@pytest.mark.slow
def test_teacher_notebook_takes_a_dataset_path(tmp_path: Path):
    """papermill notebooks/teacher.ipynb -p dataset <spec>: the notebook front end accepts own data."""
    from conftest import require
    from jupyter_client.kernelspec import find_kernel_specs
    from test_notebooks import _execute, nb_env  # noqa: F401  (the notebook runner of test_notebooks)
    require("kdkit" in find_kernel_specs(), "no Jupyter kernel 'kdkit' (make venv installs it)")
    _daga_like_dataset(tmp_path / "data")
    spec = write_text(tmp_path / "my-car.toml", SPEC)
    env = dict(os.environ, KDKIT_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    m = _execute("teacher", tmp_path / "nb", env, dataset=str(spec), model="gat", epochs=1, hidden=32, layers=2,
                 heads=2)
    assert m["dataset"] in ("my-car", str(spec)) and set(m["f1"]) == {"replay"}
    assert Path(m["checkpoint"]).is_file()


def test_slurm_jobs_and_the_panel_take_a_dataset_path(tmp_path: Path, monkeypatch):
    from kdkit.cluster.orchestrator import FabricSlurmTrainingOrchestrator
    from kdkit.config import schema
    from kdkit.ui.widgets import control_for

    _daga_like_dataset(tmp_path / "data")
    write_text(tmp_path / "my-car.toml", SPEC)
    monkeypatch.chdir(tmp_path)
    orch = FabricSlurmTrainingOrchestrator(tmp_path / "runs", preset="cpu", venv=None)
    script = orch.submit_gat_training("my-car.toml", "teacher", dry_run=True)
    assert f"--dataset {tmp_path / 'my-car.toml'}" in script  # absolute: the job may start in another folder
    assert "my-car_gat_teacher_" in script  # the run is named by the dataset's name, as a local run: <dataset>_<model>_<type>_<time>
    with pytest.raises(ValueError, match="unknown dataset 'nope.toml' .*nope.toml does not exist: a relative path is "
                                         "taken from the current directory"):
        orch.submit_gat_training("nope.toml", "teacher", dry_run=True)
    spec = next(s for s in schema() if s.name == "dataset")
    control = control_for(spec, "my-car.toml", {})
    assert type(control).__name__ == "Combobox" and "synthetic" in control.options and control.value == "my-car.toml"


def test_a_candump_capture_in_a_folder_dataset_with_dropped_frames_reported(tmp_path: Path, monkeypatch, capsys):
    """A capture of one's own car dropped into train_01_attack_free/: attack-free training data;
    its remote frames are left out and said so by data info."""
    folder = tmp_path / "mycar"
    simulate(folder, seed=0, scale=0.2)
    lines = [f"({i * 0.001:.6f}) can0 {['0C1', '1A0', '2B0'][i % 3]}#{i % 256:02X}00000000000000" for i in range(400)]
    lines.insert(10, "(0.009500) can0 123#R")
    lines.insert(20, "(0.019500) can1 7FF#00")  # another bus: not this dataset's channel
    write_text(folder / "train_01_attack_free" / "capture.log", "\n".join(lines) + "\n")
    spec = write_text(folder / "kdkit-dataset.toml", """
[dataset]
name = "mycar"
channel = "can0"
train_attack_free = ["train_01_attack_free/*"]
train_with_attacks = ["train_02_with_attacks/*"]
[dataset.tests]
dos = ["test_01_known_vehicle_known_attack/*"]
""")
    assert spec.is_file()
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["data", "info", "--dataset", str(folder), "--window", "50", "--stride", "50"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dataset mycar") and "capture.log: 1 remote frames" in out
    ds = prepare(str(folder), PrepareConfig(window=50, stride=50))
    assert any(f.endswith("capture.log") for f in ds.splits["train"].files + ds.splits["val"].files)


def test_a_zip_must_hold_one_recording(tmp_path: Path):
    path = tmp_path / "two.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.csv", DAGA_HEADER + "\n")
        zf.writestr("b.csv", DAGA_HEADER + "\n")
    with pytest.raises(DataFormatError, match=r"two\.zip: a zip must hold exactly one recording, found \['a.csv', 'b.csv'\]"):
        read_messages(path)
    with pytest.raises(DataFormatError, match="exactly one recording"):
        read_mapped(path, PRESETS["daga"])


def test_globs_take_recordings_not_documents_or_sidecars(tmp_path: Path):
    from kdkit.data.datasets import _glob

    for name in ("a.csv", "b.dat", "README.md", "notes.txt", "a.csv.labels.csv", ".hidden.csv", "meta.json"):
        write_text(tmp_path / "d" / name, "x\n")
    write_text(tmp_path / "d" / "sub" / "c.log", "x\n")
    assert [p.name for p in _glob(tmp_path, ["d/*"])] == ["a.csv", "b.dat", "c.log"]  # a matched folder: its recordings
    assert [p.name for p in _glob(tmp_path, ["d/sub"])] == ["c.log"]
    assert [p.name for p in _glob(tmp_path, ["d/*.csv", "d/a.csv"])] == ["a.csv"]  # once each


def test_a_copied_spec_whose_relative_root_is_gone_says_where_it_looked(tmp_path):
    """A spec's root is relative to the spec file: a copy elsewhere named a nonexistent folder and told
    the user to check the globs. The error gives the resolved folder and says what root is relative to."""
    from kdkit.data.datasets import discover

    spec = tmp_path / "copied.toml"
    spec.write_text('[dataset]\nname = "c"\nroot = "../../nowhere/daga"\ntrain_attack_free = ["clean/*.zip"]\n')
    with pytest.raises(FileNotFoundError) as err:
        discover(str(spec))
    text = str(err.value)
    assert f"its root {(tmp_path / '../../nowhere/daga').resolve()} does not exist" in text
    assert f"root is relative to the spec file's folder, {tmp_path.resolve()}" in text
