"""DDP from a notebook or a script: the caller is rank zero and the workers are ``kdkit train``
processes with the same config (kdkit.training.spawn_ranks)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdkit.training import spawn_ranks
from kdkit.training.fork_ranks import threads_per_rank

TINY = dict(dataset="synthetic", epochs=1, hidden=8, layers=1, heads=1, embedding_dim=4, precision="32-true",
            accelerator="cpu", devices=2, strategy="ddp", num_workers=0, save_compat=False)
CLI_TINY = ["train", "--dataset", "synthetic", "--epochs", "1", "--hidden", "8", "--layers", "1", "--heads", "1",
            "--embedding-dim", "4", "--precision", "32-true", "--accelerator", "cpu", "--devices", "2", "--strategy",
            "ddp", "--num-workers", "0", "--no-save-compat"]


def _workers_left(cwd: Path) -> list[str]:
    """Processes still running a spawned worker's command line (its config file is kdkit-ranks-*.json)
    in ``cwd``, the folder its rank zero ran in (tests on other xdist workers spawn their own)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    left = []
    for line in out.splitlines():
        if "kdkit-ranks-" in line and "ps -eo" not in line:
            try:
                if Path(os.readlink(f"/proc/{line.split()[0]}/cwd")).resolve() == cwd.resolve():
                    left.append(line)
            except OSError:  # ended meanwhile
                pass
    return left


@pytest.mark.notebook
def test_a_notebook_trains_on_two_processes_with_its_callbacks(kdkit_env, tmp_path):
    """In a kernel Fabric would refuse (or re-run the kernel): rank zero is the kernel, its epoch
    callback runs there, the worker's output reaches the cell, and nothing is left behind."""
    import nbformat
    import papermill

    code = (f"import json\nfrom kdkit.config import make_config\nfrom kdkit.workflows.run import train\n"
            f"seen = []\ncfg = make_config(**{TINY!r}, runs_dir={str(tmp_path / 'runs')!r}, run_name='nb')\n"
            "s = train(cfg, progress=False, on_epoch_end=lambda r: seen.append(r['epoch']))\n"
            "print('RESULT', json.dumps({'world': s['world_size'], 'launcher': s['launcher'], 'epochs': seen, "
            "'f1': s['test']['overall']['f1']}))")
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                           "display_name": "Python 3"}})
    nb.cells = [nbformat.v4.new_code_cell(code)]
    nbformat.write(nb, tmp_path / "in.ipynb")
    out = papermill.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
                                     cwd=str(tmp_path), progress_bar=False, execution_timeout=300)
    text = "".join(o.get("text", "") for o in out.cells[0].outputs if o.get("output_type") == "stream")
    result = json.loads(text.split("RESULT ", 1)[1].splitlines()[0])
    assert result["world"] == 2 and result["launcher"] == "spawn" and result["epochs"] == [0]
    assert 0.0 <= result["f1"] <= 1.0
    assert "[rank 1] " in text  # the worker's output, in the cell
    summary = json.loads((tmp_path / "runs" / "nb" / "summary.json").read_text())
    assert summary["launcher"] == "spawn" and summary["world_size"] == 2
    assert not _workers_left(tmp_path)


def test_spawned_workers_train_what_forked_workers_train(kdkit_env, tmp_path):
    """A script's ``train(cfg)`` (workers spawned) and ``kdkit train`` (workers forked) end with the
    same weights: the same shards, seeds and threads per rank."""
    runs = tmp_path / "runs"
    kdkit = str(Path(sys.executable).parent / "kdkit")
    forked = subprocess.run([kdkit, *CLI_TINY, "--runs-dir", str(runs), "--run-name", "fork"], capture_output=True,
                            text=True, cwd=tmp_path, timeout=600)
    assert forked.returncode == 0, forked.stderr[-3000:]
    script = ("from kdkit.config import make_config\nfrom kdkit.workflows.run import train\n"
              f"s = train(make_config(**{TINY!r}, runs_dir={str(runs)!r}, run_name='spawn'), progress=False)\n"
              "print('LAUNCHER', s['launcher'], s['world_size'])\n")
    spawned = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert spawned.returncode == 0, spawned.stderr[-3000:]
    assert "LAUNCHER spawn 2" in spawned.stdout
    assert spawned.stdout.count("LAUNCHER") == 1  # the script ran once: its workers ran `kdkit train`, not the script
    a = torch.load(runs / "fork" / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)["model"]
    b = torch.load(runs / "spawn" / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    fs = json.loads((runs / "fork" / "summary.json").read_text())
    ss = json.loads((runs / "spawn" / "summary.json").read_text())
    assert ss["test"]["overall"]["confusion_matrix"] == fs["test"]["overall"]["confusion_matrix"]
    assert not _workers_left(tmp_path)


def test_a_worker_that_ends_before_training_is_named_at_once(kdkit_env, tmp_path, monkeypatch):
    """Rank zero does not wait 30 minutes for a worker that never joins: it raises, naming the worker
    and showing its output, and leaves no folder, config file or process behind."""
    from kdkit.config import make_config
    from kdkit.workflows.run import train

    made = []
    real = spawn_ranks.worker_command

    def failing(config_path, resume=None):
        made.append(Path(config_path))
        assert json.loads(Path(config_path).read_text())["devices"] == 2
        assert real(config_path, resume)[1:4] == ["-m", "kdkit.cli", "train"]
        return [sys.executable, "-c", "print('cannot read the data: boom'); raise SystemExit(3)"]

    monkeypatch.setattr(spawn_ranks, "worker_command", failing)
    cfg = make_config(**TINY, runs_dir=str(tmp_path / "runs"), run_name="bad")
    with pytest.raises(RuntimeError, match=r"DDP rank 1 \(pid \d+\) exited with status 3 before training started") as err:
        train(cfg, progress=False)
    assert "cannot read the data: boom" in str(err.value)
    assert not (tmp_path / "runs" / "bad").exists()
    assert made and not made[0].exists()
    assert os.environ.get("WORLD_SIZE") is None and os.environ.get("LOCAL_RANK") is None  # restored


def test_a_worker_that_dies_during_the_run_is_named(kdkit_env, tmp_path):
    from kdkit.config import make_config

    ranks = spawn_ranks.SpawnedRanks(make_config(**TINY), None, 0)
    proc = subprocess.Popen(["sleep", "30"])
    ranks.procs[1] = proc
    ranks.tails[1] = __import__("collections").deque(["loss 0.42"])
    assert ranks.worker_failure(wait=0.1) == ""  # running: nothing to report
    proc.kill()
    proc.wait()
    why = ranks.worker_failure()
    assert f"DDP rank 1 (pid {proc.pid}) was killed by signal 9 during the run" in why and "loss 0.42" in why
    ranks.abort()
    assert not ranks.config_path.exists()


def test_when_kdkit_starts_the_ranks(monkeypatch):
    for var in ("LOCAL_RANK", "RANK", "KDKIT_DDP_LAUNCHER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(spawn_ranks, "cluster_starts_ranks", lambda: "")
    assert spawn_ranks.can_spawn_ranks(2, 1) == (True, "")
    assert spawn_ranks.can_spawn_ranks(1, 1)[0] is False
    assert spawn_ranks.can_spawn_ranks(2, 2)[0] is False  # other nodes: their launcher's
    monkeypatch.setattr(spawn_ranks, "cluster_starts_ranks", lambda: "SLURMEnvironment starts the ranks")
    assert spawn_ranks.can_spawn_ranks(2, 1) == (False, "SLURMEnvironment starts the ranks")
    monkeypatch.setattr(spawn_ranks, "cluster_starts_ranks", lambda: "")
    monkeypatch.setenv("KDKIT_DDP_LAUNCHER", "lightning")
    assert spawn_ranks.can_spawn_ranks(2, 1)[0] is False
    monkeypatch.delenv("KDKIT_DDP_LAUNCHER")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert spawn_ranks.can_spawn_ranks(2, 1) == (False, "the ranks are started by a launcher already")


def test_threads_per_rank_share_the_cores_unless_told(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_per_rank(2) == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    cores = len(os.sched_getaffinity(0))
    assert threads_per_rank(1) == cores
    assert threads_per_rank(2) == max(1, cores // 2)
    assert threads_per_rank(10 * cores) == 1


def test_rank_zeros_own_error_is_not_replaced_by_the_workers_exit(kdkit_env, tmp_path, monkeypatch):
    """A config error rank zero hits itself (the worker hits it too and exits 2) is reported as it
    is, not as "DDP rank 1 exited with status 2"."""
    from kdkit.config import make_config
    from kdkit.workflows import run as run_module
    from kdkit.workflows.run import train

    worker = ("import os, sys, time; g, r = int(os.environ['KDKIT_RANK_GATE_FD']), int(os.environ['KDKIT_RANK_READY_FD']); "
              "os.read(g, 1); os.write(r, b'1'); time.sleep(0.5); print('worker: same error'); sys.exit(2)")
    monkeypatch.setattr(spawn_ranks, "worker_command", lambda config_path, resume=None: [sys.executable, "-c", worker])

    def refused(cfg, data):  # rank zero's own error after its data, as a model that cannot be built
        raise ValueError("this model cannot be built from the config")

    monkeypatch.setattr(run_module, "build_student_or_teacher", refused)
    cfg = make_config(**TINY, runs_dir=str(tmp_path / "runs"), run_name="cfg")
    with pytest.raises(ValueError, match="this model cannot be built from the config"):
        train(cfg, progress=False)


def test_model_sizes_are_checked_before_data_or_workers(kdkit_env, tmp_path, monkeypatch):
    """A hidden width the preset's ID embedding does not fit fails at once, naming whose size is whose."""
    from kdkit.config import make_config
    from kdkit.workflows import run as run_module
    from kdkit.workflows.run import train

    monkeypatch.setattr(run_module, "spawn_ranks", lambda *a, **k: pytest.fail("workers started"))
    monkeypatch.setattr(run_module, "load_data", lambda *a, **k: pytest.fail("data loaded"))
    cfg = make_config(**{**TINY, "hidden": 8, "embedding_dim": None}, type="student", runs_dir=str(tmp_path / "r"))
    with pytest.raises(ValueError, match=r"embedding_dim=8 \(the gat student preset's\) must be below hidden=8: "):
        train(cfg, progress=False)
    assert not (tmp_path / "r").exists()
