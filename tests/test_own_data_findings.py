"""Findings of two reviews (2026-12-07, late night) that used kdkit on their own data, from Python
and from the command line: ``train(data=...)`` took data of another simulator seed or bus channel
and the checkpoint recorded the config's; a Messages table held what the readers never give (a
NaN or negative timestamp, payload bytes past the dlc), so ``write_ctt_csv`` wrote files kdkit's
own reader refused, or changed; an OTIDS text file (no label column) was scored as a labelled
recording whose every window is normal; a bad byte column was blamed on the first one; ``detect
--input FOLDER`` said "no such file"; the messages a stride longer than the window passes over were
counted once at the end only."""
from __future__ import annotations

import numpy as np
import pytest

from kdkit.cli.main import main
from kdkit.data import read_messages, write_ctt_csv
from kdkit.data.datasets import PrepareConfig, PreparedDataset, _unlabelled, discover
from kdkit.data.graphs import IdVocab
from kdkit.data.loggers import carries_labels
from kdkit.data.readers import DataFormatError, Messages
from kdkit.stream import Detector
from kdkit.stream.run import replay_file
from kdkit.workflows.scoring import evaluate_inputs


def _table(n: int = 300, **cols) -> dict:
    rng = np.random.default_rng(0)
    base = dict(timestamp=np.arange(n) * 1e-3, can_id=rng.choice([0x100, 0x1A0, 0x316], n), dlc=np.full(n, 8),
                payload=rng.integers(0, 256, (n, 8)), label=np.zeros(n, int))
    return {**base, **cols}


# ---- train(data=...) ------------------------------------------------------------------------------
def test_train_refuses_data_of_another_simulator_seed_or_bus_channel(kdkit_env, tmp_path):
    from kdkit.config import make_config
    from kdkit.workflows.run import load_data, train

    cfg0 = make_config(model="gat", type="student", dataset="synthetic", synthetic_seed=0, epochs=1,
                       runs_dir=str(tmp_path))
    data = load_data(cfg0)
    assert data.synthetic_seed == 0 and data.channel is None
    cfg1 = make_config(model="gat", type="student", dataset="synthetic", synthetic_seed=1, epochs=1,
                       runs_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"synthetic_seed=0 \(the config: 1\)"):
        train(cfg1, data=data)
    splits = {"train": None, "val": None}
    on_can0 = PreparedDataset("synthetic", PrepareConfig(), IdVocab.fit([np.array([1])]), splits, {}, channel="can0")
    cfg = make_config(model="gat", type="student", dataset="synthetic", channel="can1", epochs=1, runs_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"channel='can0' \(the config: 'can1'\)"):
        train(cfg, data=on_can0)
    with pytest.raises(ValueError, match=r"channel='can0' \(the config: None, the dataset spec's None\)"):
        train(cfg0, data=on_can0)
    assert not any(tmp_path.iterdir())  # refused before a run folder was made


# ---- Messages: what the readers give, or a row named -------------------------------------------
@pytest.mark.parametrize("value, words", [(np.nan, "nan"), (np.inf, "inf"), (-5.0, "-5.0.*shift the clock")])
def test_a_table_refuses_timestamps_no_reader_gives(value, words):
    t = np.arange(300) * 1e-3
    t[151] = value
    with pytest.raises(ValueError, match=rf"Messages.timestamp\[151\] is {words}"):
        Messages(**_table(timestamp=t))


def test_a_table_refuses_payload_bytes_past_the_dlc_and_its_file_reads_back_the_same(tmp_path):
    """write_ctt_csv writes the first dlc bytes: a table with bytes past them came back changed."""
    cols = _table(dlc=np.where(np.arange(300) % 3 == 0, 2, 8))
    with pytest.raises(ValueError, match=r"Messages.payload\[0, 2\] is \d+ past the row's dlc 2.*zero them"):
        Messages(**cols)
    cols["payload"][np.arange(8) >= cols["dlc"][:, None]] = 0  # as the message says
    m = Messages(**cols)
    write_ctt_csv(m, tmp_path / "mine.csv")
    back = read_messages(tmp_path / "mine.csv")
    assert np.array_equal(back.payload, m.payload) and np.array_equal(back.dlc, m.dlc)
    assert np.array_equal(back.timestamp, m.timestamp)


# ---- a format without labels ------------------------------------------------------------------
def _otids(path, n: int = 1000):
    ids = ["0165", "0316", "043f", "0018"]
    path.write_text("".join(f"Timestamp: {1478198376 + i * 0.001:.6f}        ID: {ids[i % 4]}    000    DLC: 8    "
                            f"84 fa 61 04 36 a0 22 7f\n" for i in range(n)))
    return path


def test_an_otids_text_file_is_unlabelled_not_every_window_normal(student_checkpoint, tmp_path):
    txt = _otids(tmp_path / "DoS_attack_dataset.txt")
    csv = tmp_path / "mine.csv"
    write_ctt_csv(Messages(**_table(1000)), csv)
    assert not carries_labels(txt) and carries_labels(csv)
    res = evaluate_inputs(student_checkpoint, [txt, csv], out_dir=tmp_path / "ev")
    by_name = {e["file"].rsplit("/", 1)[-1]: e for e in res["files"]}
    assert by_name["DoS_attack_dataset.txt"]["labelled"] is False and by_name["mine.csv"]["labelled"] is True
    o = res["overall"]  # the text file's windows in the alarm counts, out of the metrics
    assert (o["labelled_files"], o["unlabelled_files"], o["windows"]) == (1, 1, 20)
    assert int(np.sum(o["metrics"]["confusion_matrix"])) == by_name["mine.csv"]["windows"] == 10
    assert replay_file(Detector.from_checkpoint(student_checkpoint), txt).to_dict()["labels"] is None


def test_data_info_says_an_otids_text_file_in_a_test_folder_carries_no_labels(tmp_path):
    root = tmp_path / "mycar"
    (root / "train_01_attack_free").mkdir(parents=True)
    (root / "test_01_dos").mkdir()
    write_ctt_csv(Messages(**_table(1000)), root / "train_01_attack_free" / "normal.csv")
    _otids(root / "test_01_dos" / "DoS_attack_dataset.txt")
    assert _unlabelled(discover(str(root))) == [str(root / "test_01_dos" / "DoS_attack_dataset.txt")]
    from kdkit.data.datasets import format_info, prepare

    text = format_info("mycar", prepare(str(root), PrepareConfig(), cache_dir=tmp_path / "cache"))
    assert "DoS_attack_dataset.txt carries no attack labels (a format without a label column" in text
    assert "sidecar" not in text  # (a sidecar labels logger files only)


# ---- a bad byte column named --------------------------------------------------------------------
def _road_like(path, bad_row: str):
    rows = ["Time,Id,Byte1,Byte2,Byte3,Byte4,Byte5,Byte6,Byte7,Byte8,Label"]
    rows += [f"{i * 0.001:.6f},081,11,22,33,44,55,66,77,88,0" for i in range(300)]
    rows[102] = bad_row
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("row, words", [
    ("0.100000,081,11,22,33,44,ZZ,66,77,88,0", r":103: Byte5 'ZZ': payload must be byte values in base 16"),
    ("0.100000,081,11,22,33,44,55,66,77,1FF,0", r":103: Byte8 '1FF': payload must be"),
    ("0.100000,081,11,22,,44,,,,,0", r":103: Byte4 '44' after an empty byte column.*an empty cell ends the payload"),
])
def test_a_bad_byte_column_is_named_with_its_value(tmp_path, row, words):
    with pytest.raises(DataFormatError, match=words):
        read_messages(_road_like(tmp_path / "road.csv", row))


# ---- detect ---------------------------------------------------------------------------------------
def test_detect_says_a_folder_is_a_folder(student_checkpoint, tmp_path, capsys):
    assert main(["detect", "--checkpoint", str(student_checkpoint), "--input", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a folder: kdkit detect replays one recording" in err and "no such file" not in err
    assert main(["detect", "--checkpoint", str(student_checkpoint), "--input", str(tmp_path / "gone.log")]) == 2
    assert f"{tmp_path / 'gone.log'}: no such file" in capsys.readouterr().err  # (not Python's [Errno 2])


def _log(path, n: int = 1000):
    path.write_text("".join(f"({100 + i * 0.001:.6f}) can0 {0x100 + i % 7:03X}#0011223344556677\n" for i in range(n)))
    return path


@pytest.mark.parametrize("n, undecided, between", [(1000, 0, 800), (1050, 50, 800), (950, 0, 750), (560, 60, 400)])
def test_the_messages_a_long_stride_passes_over_are_counted_in_every_gap(student_checkpoint, tmp_path, n, undecided,
                                                                       between):
    """Window 100, stride 500: windows at 0 and 500. The gap after the first window was not counted,
    the one after the last was, as undecided."""
    path = _log(tmp_path / "drive.log", n)
    s = replay_file(Detector.from_checkpoint(student_checkpoint, stride=500), path).to_dict()
    assert (s["undecided_messages"], s["between_windows"]) == (undecided, between)
    assert s["windows"] * 100 + undecided + between == n  # every message accounted for
    one = Detector.from_checkpoint(student_checkpoint, stride=500)  # frame by frame: the same counts
    for i in range(n):
        one.feed((100 + i * 0.001, 0x100 + i % 7, bytes.fromhex("0011223344556677"), False))
    assert (one.windows, one.undecided + one.open_messages, one.between_windows) == (s["windows"], undecided, between)
