"""Two-process DDP on CPU (gloo) through the real FabricTrainer: gradients are synchronised,
so both ranks end with identical weights, and every rank saw only its own shard."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent('''
    import json, sys, torch
    from kdkit.config import make_config
    from kdkit.workflows.run import build_student_or_teacher, class_weights, load_data
    from kdkit.training.trainer import FabricTrainer
    from kdkit.training.task import Task

    out = sys.argv[1]
    cfg = make_config(dataset="synthetic", hidden=16, layers=2, heads=2, embedding_dim=4, epochs=1,
                      precision="32-true", devices=2, strategy="ddp", runs_dir=out, run_name="ddp")
    data = load_data(cfg)
    model = build_student_or_teacher(cfg, data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    task = Task(model, cfg, None, class_weights(data.splits["train"]))
    trainer = FabricTrainer(cfg, f"{out}/ddp", progress=False)
    seen = []
    real = Task.training_loss
    def spy(self, batch):
        seen.extend(batch.graph_idx.tolist())
        return real(self, batch)
    Task.training_loss = spy
    trainer.fit(task, data.splits["train"], data.splits["val"])
    rank = trainer.fabric.global_rank
    after = model.state_dict()
    result = {"rank": rank, "world": trainer.fabric.world_size, "seen": seen,
              "changed": any(not torch.equal(before[k], after[k]) for k in after),
              "weights": {k: after[k].double().sum().item() for k in after}}
    with open(f"{out}/rank{rank}.json", "w") as fh:
        json.dump(result, fh)
''')


def test_two_process_ddp_keeps_ranks_in_sync(kdkit_env, tmp_path):
    from kdkit.data.datasets import prepare

    n_train = len(prepare("synthetic").splits["train"])
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2
    assert r0["changed"] and r1["changed"]
    assert r0["weights"] == r1["weights"], "ranks diverged: gradients were not synchronised"
    assert not set(r0["seen"]) & set(r1["seen"]) or len(r0["seen"]) + len(r1["seen"]) > n_train  # disjoint shards (up to padding)
    assert set(r0["seen"]) | set(r1["seen"]) == set(range(n_train))


def test_ddp_run_of_kdkit_train_shares_rank_zeros_run_folder(kdkit_env, tmp_path):
    """``kdkit train --devices 2``: Fabric starts the worker as the same command (LOCAL_RANK=1); rank
    zero owns the run folder's lock and the worker shares the folder instead of being refused as a
    second run of the same name."""
    from kdkit.workflows.run_dir import RunLock

    run = tmp_path / "runs" / "ddp"
    kdkit = str(Path(sys.executable).parent / "kdkit")
    proc = subprocess.Popen([kdkit, "train", "--dataset", "synthetic", "--epochs", "1", "--hidden", "8", "--layers",
                             "1", "--heads", "1", "--embedding-dim", "4", "--precision", "32-true", "--accelerator", "cpu",
                             "--devices", "2", "--strategy", "ddp", "--num-workers", "0", "--no-save-compat",
                             "--runs-dir", str(tmp_path / "runs"), "--run-name", "ddp"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 1 and summary["test"]["scenarios"] and "run folder:" in out
    assert (run / ".lock").read_text().strip() == str(proc.pid)  # rank zero (the command started) held it
    with RunLock(run):  # and released it at the end
        pass
