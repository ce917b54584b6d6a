"""A new user's findings from using kdkit as a library (no CLI): a Messages table built by hand
from pandas columns, in-memory data given to train()."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kdkit.data.datasets import PrepareConfig, PreparedDataset
from kdkit.data.graphs import IdVocab, build_graphs
from kdkit.data.readers import EXTENDED_ID_FLAG, Messages


def _frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"t": np.arange(n) * 1e-3, "id": rng.choice([0x100, 0x1A0, 0x316, 0x7DF], n),
                       "dlc": np.full(n, 8), "label": (np.arange(n) % 7 == 0).astype(int)})
    for i in range(8):
        df[f"b{i}"] = rng.integers(0, 256, n)
    return df


def _messages(df: pd.DataFrame, **cols) -> Messages:
    args = dict(timestamp=df.t, can_id=df.id, dlc=df.dlc, payload=df[[f"b{i}" for i in range(8)]].to_numpy(),
                label=df.label)
    return Messages(**{**args, **cols})


def test_pandas_columns_become_the_table_s_types_and_the_same_graphs():
    """pandas gives int64 payload bytes; build_graphs read them as uint64 words (other messages'
    bytes: every payload feature wrong, silently) while the live detector cast them right. The
    table casts exactly representable columns to its types, so both see the same bytes."""
    df = _frame()
    m = _messages(df)
    assert (m.timestamp.dtype, m.can_id.dtype, m.dlc.dtype, m.payload.dtype, m.label.dtype) == \
        (np.float64, np.uint32, np.uint8, np.uint8, np.uint8)
    exact = Messages(df.t.to_numpy(float), df.id.to_numpy(np.uint32), df.dlc.to_numpy(np.uint8),
                     df[[f"b{i}" for i in range(8)]].to_numpy(np.uint8), df.label.to_numpy(np.uint8))
    vocab = IdVocab.fit([exact.can_id])
    a, b = build_graphs(m, vocab), build_graphs(exact, vocab)
    assert len(a) == 3
    np.testing.assert_array_equal(a.x.numpy(), b.x.numpy())
    floats = _messages(df, payload=df[[f"b{i}" for i in range(8)]].to_numpy(float))  # whole floats: fine too
    np.testing.assert_array_equal(floats.payload, exact.payload)


@pytest.mark.parametrize("column, value, message", [
    ("label", [-1] * 300, r"Messages.label\[0\] is -1, outside 0..255; expected 1 for an attack message, 0 for a normal"),
    ("label", [np.nan] * 300, r"Messages.label\[0\] is nan, not a whole number"),
    ("label", [2] * 300, r"Messages.label\[0\] is 2; expected 1 for an attack message"),
    ("label", ["normal"] * 300, r"Messages.label holds <U6 values \(e.g. 'normal'\)"),
    ("dlc", [12] * 300, r"Messages.dlc\[0\] is 12; expected data length codes 0..8"),
    ("can_id", [-1] * 300, r"Messages.can_id\[0\] is -1, outside 0..4294967295"),
    ("can_id", ["0x81"] * 300, r"Messages.can_id holds <U4 values .*int\(text, 16\)"),
    ("can_id", [0x18FEF100] * 300, r"Messages.can_id\[0\] is 0x18FEF100: above 0x7FF.*not flagged extended.*"
                                   r"can_id \| kdkit.data.readers.EXTENDED_ID_FLAG"),
    ("can_id", [0x3FFFFFFF | EXTENDED_ID_FLAG] * 300, r"an extended ID has at most 29 bits"),
    ("timestamp", pd.to_datetime(["2024-01-01"] * 300), r"Messages.timestamp holds datetime64.*timedelta64"),
    ("payload", np.full((300, 8), 256), r"Messages.payload\[0, 0\] is 256, outside 0..255"),
])
def test_a_hand_made_table_with_values_kdkit_cannot_read_is_refused_naming_column_row_and_value(column, value,
                                                                                                 message):
    """-1 labels made every attack window normal, NaN labels were cast to 0 with a numpy warning, DLC
    12 and ID -1 went in, an unflagged 29-bit ID trained fine and then the detector dropped every
    frame; strings and datetimes failed deep inside with "invalid literal for int()" or "ufunc log1p"."""
    with pytest.raises(ValueError, match=message):
        _messages(_frame(), **{column: value})


def test_extended_ids_flagged_are_kept_apart_from_standard_ones():
    df = _frame()
    m = _messages(df, can_id=np.where(df.id > 0x300, 0x18FEF100 | EXTENDED_ID_FLAG, df.id))
    assert int(m.can_id.max()) == 0x18FEF100 | EXTENDED_ID_FLAG


def test_build_graphs_refuses_a_label_threshold_that_leaves_no_attack_window():
    m = _messages(_frame())
    with pytest.raises(ValueError, match=r"label_threshold must be in \[0, 1\).*got 1.0"):
        build_graphs(m, IdVocab.fit([m.can_id]), label_threshold=1.0)


def test_train_refuses_data_prepared_with_other_settings_than_its_config(kdkit_env, tmp_path):
    """train(make_config(window=50), data=<prepared with window 100>) trained on 100-message windows
    and wrote window 50 into the checkpoint: evaluation rebuilt 50-message windows (1,200 windows
    where the run's own test had 600; F1 0.998 vs 0.918) and the detector decided every 50 messages."""
    from kdkit.config import make_config
    from kdkit.workflows.run import train

    with pytest.raises(ValueError, match=r"the data have no split 'train' or 'val' \(splits: \['Train'\]\)"):
        train(make_config(model="gat", type="student", dataset="synthetic", epochs=1, runs_dir=str(tmp_path)),
              data=PreparedDataset("synthetic", PrepareConfig(), IdVocab.fit([np.array([1])]), {"Train": None}, {}))
    splits = {"train": None, "val": None}
    data = PreparedDataset("synthetic", PrepareConfig(window=100, stride=100), IdVocab.fit([np.array([1])]), splits, {})
    cfg = make_config(model="gat", type="student", dataset="synthetic", window=50, epochs=1, runs_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"window=100 \(the config: 50\), stride=100 \(the config: 50\).*load_data"):
        train(cfg, data=data)
    other = PreparedDataset("mycar", PrepareConfig(window=50, stride=50), IdVocab.fit([np.array([1])]), splits, {})
    with pytest.raises(ValueError, match=r"dataset 'mycar' \(the config: 'synthetic'\)"):
        train(cfg, data=other)
    assert not any(tmp_path.iterdir())  # refused before a run folder was made


def test_a_table_built_in_python_becomes_a_recording_of_a_folder_dataset(kdkit_env, tmp_path, monkeypatch):
    """There was no way from a DataFrame to training but a hand-made PreparedDataset (its missing
    info broke data info, a split named 'Train' gave KeyError 'train'). write_ctt_csv writes the
    table as a recording every kdkit command reads, exactly."""
    from kdkit.data import read_messages, write_ctt_csv
    from kdkit.data.datasets import prepare

    df = _frame(2000)
    ids = np.where(df.id > 0x300, 0x18FEF100 | EXTENDED_ID_FLAG, df.id)
    dlc = np.arange(2000) % 9
    payload = df[[f"b{i}" for i in range(8)]].to_numpy() * (np.arange(8) < dlc[:, None])  # zero past the dlc
    m = _messages(df, timestamp=1.7e9 + df.t + 1e-7 * np.arange(2000), can_id=ids, dlc=dlc, payload=payload)
    for name in ("drive.csv", "drive.csv.gz"):
        back = read_messages(write_ctt_csv(m, tmp_path / name))
        for col in ("timestamp", "can_id", "dlc", "label", "payload"):
            np.testing.assert_array_equal(getattr(back, col), getattr(m, col))
    folder = tmp_path / "mycar"  # its folders are made (the README's example wrote into none: FileNotFoundError)
    write_ctt_csv(m, folder / "train_02_with_attacks" / "DoS-drive.csv")
    write_ctt_csv(m.slice(0, 1000), folder / "test_01_drive" / "DoS-other.csv")
    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    ds = prepare(str(folder), PrepareConfig(window=100, stride=100))
    assert ds.name == "mycar" and ds.info["splits"]["test_01_drive"]["windows"] == 10
