"""What the notes of 2026-12-07 left for later, fixed: where a command writes its caches."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

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
