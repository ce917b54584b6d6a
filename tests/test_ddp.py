"""Two-process DDP on CPU (gloo) through the real FabricTrainer: gradients are synchronised,
so both ranks end with identical weights, and every rank saw only its own shard."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from kdkit.data.loader import shard_bounds

SCRIPT = textwrap.dedent('''
    import faulthandler, json, os, signal, sys, torch
    out = sys.argv[1]
    # a stuck rank shows where it is: its stacks on SIGUSR1 (sent by the test), and on its own after
    # HANG_SECONDS (then it exits, so no rank outlives the test)
    hang_log = open(f"{out}/stacks-{os.getpid()}.txt", "w")
    faulthandler.register(signal.SIGUSR1, file=hang_log, all_threads=True)
    faulthandler.dump_traceback_later(float(os.environ["HANG_SECONDS"]), exit=True, file=hang_log)
    with open(f"{out}/pid-rank{os.environ.get('LOCAL_RANK', '0')}", "w") as fh:
        fh.write(str(os.getpid()))
    from kdkit.config import make_config
    from kdkit.workflows.run import build_student_or_teacher, class_weights, load_data
    from kdkit.training.trainer import FabricTrainer
    from kdkit.training.task import Task

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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def run_script_ranks(script: Path, out: Path, hang_seconds: int, grace: float = 60.0) -> None:
    """Run a two-rank script started by Lightning's subprocess launcher; fail naming the stuck rank.

    Output goes to files, not pipes: rank one is the launcher's child and inherits rank zero's
    output, so a rank one that outlived rank zero kept ``subprocess.run``'s pipes open and the test
    waited its whole timeout with rank zero long finished (CI, 2026-12-07). Each rank dumps its
    stacks when it hangs; a rank one still alive ``grace`` seconds after rank zero exited is sent
    SIGUSR1 (its stacks), then killed, and the test fails with what it printed.
    """
    log = out / "ranks.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, str(script), str(out)], stdout=fh, stderr=subprocess.STDOUT,
                                cwd=out, env={**os.environ, "HANG_SECONDS": str(hang_seconds)})
        try:
            proc.wait(timeout=hang_seconds + grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stacks() -> str:
        return "\n".join(f.read_text()[-4000:] for f in sorted(out.glob("stacks-*.txt")) if f.read_text().strip())

    worker = out / "pid-rank1"
    deadline = time.monotonic() + grace
    pid = int(worker.read_text()) if worker.exists() else None
    while pid is not None and _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if pid is not None and _alive(pid):
        os.kill(pid, signal.SIGUSR1)
        time.sleep(2)
        os.kill(pid, signal.SIGKILL)
        pytest.fail(f"rank 1 (pid {pid}) was still running {grace:.0f} s after rank 0 exited "
                    f"({proc.returncode}); its stacks:\n{stacks()}\n{log.read_text()[-3000:]}")
    assert proc.returncode == 0, f"{log.read_text()[-3000:]}\n{stacks()}"


def test_two_process_ddp_keeps_ranks_in_sync(kdkit_env, tmp_path):
    from kdkit.data.datasets import prepare

    n_train = len(prepare("synthetic").splits["train"])
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    run_script_ranks(script, tmp_path, hang_seconds=300)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2
    assert r0["changed"] and r1["changed"]
    assert r0["weights"] == r1["weights"], "ranks diverged: gradients were not synchronised"
    assert not set(r0["seen"]) & set(r1["seen"]) or len(r0["seen"]) + len(r1["seen"]) > n_train  # disjoint shards (up to padding)
    assert set(r0["seen"]) | set(r1["seen"]) == set(range(n_train))


DDP_TRAIN = ["train", "--dataset", "synthetic", "--epochs", "1", "--hidden", "8", "--layers", "1", "--heads", "1",
             "--embedding-dim", "4", "--precision", "32-true", "--accelerator", "cpu", "--devices", "2", "--strategy",
             "ddp", "--num-workers", "0", "--no-save-compat"]


def test_ddp_run_of_kdkit_train_shares_rank_zeros_run_folder(kdkit_env, tmp_path):
    """``kdkit train --devices 2``: Fabric starts the worker as the same command (LOCAL_RANK=1); rank
    zero owns the run folder's lock and the worker shares the folder instead of being refused as a
    second run of the same name."""
    from kdkit.workflows.run_dir import RunLock

    run = tmp_path / "runs" / "ddp"
    kdkit = str(Path(sys.executable).parent / "kdkit")
    proc = subprocess.Popen([kdkit, *DDP_TRAIN, "--runs-dir", str(tmp_path / "runs"), "--run-name", "ddp"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 1 and summary["test"]["scenarios"] and "run folder:" in out
    assert summary["world_size"] == 2
    assert summary["launcher"] == "fork"  # the worker was forked from the command, not started as a second one
    assert re.search(r"32-true, 2 processes x \d+ threads? \(forked\)\]", out)  # and the threads each rank used
    assert (run / ".lock").read_text().strip() == str(proc.pid)  # rank zero (the command started) held it
    with RunLock(run):  # and released it at the end
        pass
    # the test pass was split over the two ranks and gathered: the same scores, in window order, as
    # one process scoring the best checkpoint, and the same metrics as kdkit evaluate
    from kdkit.data.datasets import prepare
    from kdkit.reporting.metrics import predict_scores
    from kdkit.workflows.run import evaluate_checkpoint, load_checkpoint, model_from_checkpoint

    best = run / "checkpoints" / "best.pt"
    model = model_from_checkpoint(load_checkpoint(best), best).eval()
    data = prepare("synthetic")
    gathered = np.load(run / "test_scores.npz")
    assert set(gathered.files) == set(summary["test"]["scenarios"])
    for name in gathered.files:
        np.testing.assert_allclose(gathered[name], predict_scores(model, data.splits[name]), rtol=0, atol=1e-6)
    alone = evaluate_checkpoint(best, "synthetic", out_dir=tmp_path / "eval")
    for name, metrics in summary["test"]["scenarios"].items():
        assert metrics["confusion_matrix"] == alone["scenarios"][name]["confusion_matrix"], name
    assert "time:" in out and "test pass" in out
    assert {"data_s", "train_s", "evaluate_s", "total_s"} <= set(summary["timings"])


@pytest.mark.parametrize("n", [0, 1, 5, 64, 65])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_are_contiguous_blocks_covering_every_window_once(n, world):
    bounds = [shard_bounds(n, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # contiguous, in rank order
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="rank 3 outside"):
        shard_bounds(n, 3, world)


def test_scores_of_the_shards_joined_equal_the_whole(synthetic):
    from kdkit.models.registry import build_model
    from kdkit.reporting.metrics import predict_scores

    torch.manual_seed(0)
    gs = synthetic.splits["val"]
    model = build_model("gat", "student", gs.x.size(1), gs.edge_attr.size(1), int(gs.node_id.max()) + 1).eval()
    whole = predict_scores(model, gs, batch_size=7)
    parts = [predict_scores(model, gs, batch_size=7, part=(r, 3)) for r in range(3)]
    assert [len(p) for p in parts] == [hi - lo for lo, hi in (shard_bounds(len(gs), r, 3) for r in range(3))]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=0, atol=1e-6)
    np.testing.assert_allclose(predict_scores(model, gs), whole, rtol=0, atol=1e-6)  # the default batch (64 on CPU)


def test_timings_line_names_each_phase():
    from kdkit.cli.train import format_timings

    t = {"data_s": 0.5, "train_s": 20.0, "calibrate_s": 0.1, "evaluate_s": 5.0, "total_s": 25.6}
    line = format_timings(t, 36.0)
    assert line.startswith("time: 36.0 s in all: start-up and imports 10.4 s")
    assert "training 20.0 s" in line and "test pass 5.0 s" in line and "threshold/combiner 0.1 s" in line
    assert format_timings(t, None).startswith("time: data 0.5 s") and format_timings(None) == ""


@pytest.mark.parametrize("rule, world, factor", [("sqrt", 1, 1.0), ("sqrt", 4, 2.0), ("linear", 4, 4.0),
                                                 ("none", 4, 1.0), ("linear", 1, 1.0)])
def test_peak_learning_rate_scales_with_the_processes(rule, world, factor):
    from kdkit.config import make_config
    from kdkit.training.cpu_speedups import make_optimizer
    from kdkit.training.optim import make_scheduler, scaled_learning_rate

    cfg = make_config(learning_rate=1e-3, lr_scaling=rule, warmup_steps=0)
    lr = scaled_learning_rate(cfg, world)
    assert lr == pytest.approx(1e-3 * factor)
    for schedule in ("cosine", "onecycle"):  # every schedule peaks at the scaled rate
        cfg_s = make_config(learning_rate=1e-3, lr_scaling=rule, scheduler=schedule, warmup_steps=0)
        opt = make_optimizer(torch.nn.Linear(3, 2).parameters(), cfg_s, torch.device("cpu"), lr=lr)
        sched = make_scheduler(opt, cfg_s, total_steps=100)
        peak = 0.0
        for _ in range(100):
            peak = max(peak, opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert peak == pytest.approx(lr, rel=0.05), schedule


# ---------------------------------------------------------------- forked workers (kdkit.training.fork_ranks)
def test_forked_workers_train_exactly_as_lightnings_launcher(kdkit_env, tmp_path):
    """The same run with the worker forked (default) and started by Lightning as a second command
    (``$KDKIT_DDP_LAUNCHER=lightning``): bit-identical weights and test scores."""
    import os

    kdkit = str(Path(sys.executable).parent / "kdkit")
    for name, launcher in (("forked", None), ("lightning", "lightning")):
        env = dict(os.environ)
        env.pop("KDKIT_DDP_LAUNCHER", None)
        if launcher:
            env["KDKIT_DDP_LAUNCHER"] = launcher
        proc = subprocess.run([kdkit, *DDP_TRAIN, "--runs-dir", str(tmp_path / "runs"), "--run-name", name],
                              capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    forked, lightning = (tmp_path / "runs" / "forked"), (tmp_path / "runs" / "lightning")
    assert json.loads((forked / "summary.json").read_text())["launcher"] == "fork"
    assert json.loads((lightning / "summary.json").read_text())["launcher"] == "lightning"
    a = torch.load(forked / "checkpoints" / "best.pt", weights_only=False)["model"]
    b = torch.load(lightning / "checkpoints" / "best.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = np.load(forked / "test_scores.npz"), np.load(lightning / "test_scores.npz")
    assert set(sa.files) == set(sb.files) and all(np.array_equal(sa[k], sb[k]) for k in sa.files)


FAILING = textwrap.dedent('''
    import json, os, sys
    import kdkit.workflows.run as run
    from kdkit.cli.main import main

    fail_rank, out = sys.argv[1], sys.argv[2]
    real_train, real_fork = run._train, run.fork_ranks
    def failing(*args, **kwargs):
        if os.environ.get("LOCAL_RANK") == fail_rank:
            raise RuntimeError(f"injected failure on rank {fail_rank}")
        return real_train(*args, **kwargs)
    def fork_and_record(devices):
        ranks = real_fork(devices)
        if ranks.rank == 0:
            with open(f"{out}/pids.json", "w") as fh:
                json.dump({"rank0": os.getpid(), **{str(r): p for r, p in ranks.pids.items()}}, fh)
        return ranks
    run._train, run.fork_ranks = failing, fork_and_record
    sys.exit(main(sys.argv[3:]))
''')


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) is not running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("fail_rank", ["1", "0"])
def test_a_failing_rank_stops_the_forked_run_at_once(kdkit_env, tmp_path, fail_rank):
    """A worker that fails before the process group forms would leave rank zero waiting for it for
    up to 30 minutes; a rank zero that fails would leave its worker waiting. Either way the run
    stops at once, non-zero, naming the failure, with no process left and the run folder unlocked."""
    import time

    from kdkit.workflows.run_dir import RunLock

    script = tmp_path / "failing.py"
    script.write_text(FAILING)
    t = time.monotonic()
    proc = subprocess.run([sys.executable, str(script), fail_rank, str(tmp_path), *DDP_TRAIN,
                           "--runs-dir", str(tmp_path / "runs"), "--run-name", "ddp"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0
    assert time.monotonic() - t < 120
    assert f"injected failure on rank {fail_rank}" in proc.stderr
    if fail_rank == "1":
        assert "DDP rank 1 (pid" in proc.stderr and "stopping rank 0" in proc.stderr
    pids = json.loads((tmp_path / "pids.json").read_text())
    deadline = time.monotonic() + 10
    while _alive(pids["1"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pids["1"]), "the forked worker outlived the run"
    assert not (tmp_path / "runs" / "ddp" / "checkpoints" / "best.pt").exists()
    with RunLock(tmp_path / "runs" / "ddp"):  # released: a new run of that name can start
        pass


def test_workers_are_forked_only_where_lightning_would_start_them(monkeypatch):
    from kdkit.training.fork_ranks import can_fork_ranks

    for var in ("LOCAL_RANK", "RANK", "SLURM_NTASKS", "SLURM_JOB_NAME", "TORCHELASTIC_RUN_ID", "KDKIT_DDP_LAUNCHER",
                "LSB_JOBID", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert can_fork_ranks(2, 1, "cpu") == (True, "")
    assert not can_fork_ranks(1, 1, "cpu")[0]
    assert "one node" in can_fork_ranks(2, 2, "cpu")[1]
    assert "CUDA" in can_fork_ranks(2, 1, "cuda")[1]
    with monkeypatch.context() as m:
        m.setenv("KDKIT_DDP_LAUNCHER", "lightning")
        assert not can_fork_ranks(2, 1, "cpu")[0]
    with monkeypatch.context() as m:
        m.setenv("LOCAL_RANK", "0")  # torchrun or another launcher started this process
        assert "launcher" in can_fork_ranks(2, 1, "cpu")[1]
    with monkeypatch.context() as m:  # a SLURM job step: srun starts the ranks
        m.setenv("SLURM_NTASKS", "2")
        m.setenv("SLURM_JOB_NAME", "train")
        assert "SLURM" in can_fork_ranks(2, 1, "cpu")[1]


REVIEW = textwrap.dedent('''
    import json, os, sys, torch
    from kdkit.config import make_config
    from kdkit.training import task as task_mod
    from kdkit.training.preemption import Preempted, StopRequest
    from kdkit.workflows.run import train

    mode, out = sys.argv[1], sys.argv[2]

    class StopAt(StopRequest):
        def __init__(self, k):
            super().__init__(None, False)
            self.k, self.n = k, 0
        def requested(self):
            self.n += 1
            return self.n == self.k

    if mode == "oom":  # one out-of-memory error on rank 1's first large batch
        real = task_mod.Task.training_loss
        fired = []
        def loss(self, batch):
            if os.environ.get("LOCAL_RANK") == "1" and not fired and batch.num_graphs > 4:
                fired.append(1)
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
            return real(self, batch)
        task_mod.Task.training_loss = loss
    name = {"full": "full", "stopped": "cut", "resume": "cut"}.get(mode, mode)
    cfg = make_config(dataset="synthetic", model="gat", type="student", hidden=8, embedding_dim=2, layers=1,
                      heads=1, epochs=2, batch_size=8, threads=1, devices=2, strategy="ddp", dropout=0.2,
                      precision="32-true", accelerator="cpu", num_workers=0, runs_dir=f"{out}/runs", run_name=name,
                      save_compat=False)
    kw = dict(progress=False, fork_workers=True)
    if mode == "stop_button":
        kw["should_stop"] = lambda: True
    if mode == "stopped":
        kw["stop"] = StopAt(3)  # asked every 20 loader batches: a stop in epoch 0's third check
    if mode == "resume":
        kw["resume"] = "auto"
    try:
        s = train(cfg, **kw)
    except Preempted:
        sys.exit(0)
    if s.get("rank", 0) == 0:
        ck = torch.load(f"{out}/runs/{name}/checkpoints/last.pt", weights_only=True)
        json.dump({"epochs_run": s["epochs_run"], "test": s["test"]["overall"]["f1"],
                   "history": [[h["step"], h["train_loss"], h["val_loss"]] for h in s["history"]],
                   "weights": {k: v.double().sum().item() for k, v in ck["model"].items()}},
                  open(f"{out}/{mode}.json", "w"))
''')


def _review_run(tmp_path, mode) -> subprocess.CompletedProcess:
    script = tmp_path / "review.py"
    script.write_text(REVIEW)
    return subprocess.run([sys.executable, str(script), mode, str(tmp_path)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)


def test_a_stopped_ddp_run_resumes_to_the_uninterrupted_one_and_the_stop_button_stops_every_rank(kdkit_env, tmp_path):
    """Only rank zero's generators and losses were saved and every rank restored them (a resumed
    2-process run differed from the uninterrupted one: train loss, then weights); and the panel's
    Stop button reached rank zero only, whose worker then failed ("connection reset")."""
    for mode in ("full", "stopped", "resume", "stop_button"):
        proc = _review_run(tmp_path, mode)
        assert proc.returncode == 0, proc.stderr[-3000:]
    full, resumed = (json.loads((tmp_path / f"{m}.json").read_text()) for m in ("full", "resume"))
    assert resumed["history"] == full["history"] and resumed["weights"] == full["weights"]
    stopped = json.loads((tmp_path / "stop_button.json").read_text())
    assert stopped["epochs_run"] == 1 and stopped["test"] is not None


def test_out_of_memory_in_a_ddp_run_is_an_error_naming_a_batch_size_not_a_hang(kdkit_env, tmp_path):
    """The back-off halved one rank's batches: its steps no longer paired with the other rank's
    all-reduces, and both waited for ever (killed by a timeout, no step done)."""
    proc = _review_run(tmp_path, "oom")
    assert proc.returncode != 0
    assert "out of memory at batch size 8 on rank 1 of a 2-process run" in proc.stderr
    assert "--batch-size 4" in proc.stderr
