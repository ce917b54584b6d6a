"""Surviving the cluster without a cluster: a stop request mid-fit writes last.pt atomically and
exits with status 85; resuming from it ends with the same weights as an uninterrupted run; the
requeue wrapper forwards signals, touches the stop file and calls a fake ``scontrol``.

    .venv/bin/python -m pytest tests/test_preemption.py -q
"""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import stop_at

from kdkit.cluster import requeue
from kdkit.config import make_config
from kdkit.training import preemption
from kdkit.training.checkpoint import load_checkpoint
from kdkit.training.preemption import Preempted, StopRequest
from kdkit.workflows.run import train
from kdkit.workflows.run_dir import resolve_resume

# dropout and ID dropout on: the resumed run must restore the generators exactly, not only the weights
TINY = dict(type="student", dataset="synthetic", hidden=16, layers=2, heads=2, embedding_dim=4, batch_size=64, epochs=2,
            patience=100, precision="32-true", save_compat=False, warmup_steps=2, dropout=0.2, id_dropout=0.1,
            compile=False)


def tiny(tmp_path, model, name, **kw):
    return make_config(**{**TINY, "model": model, "runs_dir": str(tmp_path / "runs"), "run_name": name, **kw})


@pytest.fixture(scope="module")
def uninterrupted(synthetic, tmp_path_factory):
    """The reference runs: each model trained without a stop."""
    root = tmp_path_factory.mktemp("full")
    return {m: train(tiny(root, m, f"full_{m}"), progress=False, data=synthetic) for m in ("gat", "vgae")}


def _batches(synthetic, model) -> int:
    n = len(synthetic.splits["train"]) if model == "gat" else int((synthetic.splits["train"].y == 0).sum())
    return -(-n // TINY["batch_size"])


def _cases():
    """Where the stop lands: the ask before batch k of epoch e is e * (n + 2) + k (n batches an
    epoch); k = n is the ask after the epoch's last batch, before validation. (A stop after an
    epoch's checkpoints resumes from that epoch's own last.pt, as tests/test_trainer.py checks.)"""
    return {  # name: (model, ask index as a function of n)
        "gat-first-step-of-epoch-1": ("gat", lambda n: n + 2),
        "gat-mid-epoch-1": ("gat", lambda n: n + 2 + n // 2),
        "gat-last-step-of-epoch-0": ("gat", lambda n: n - 1),
        "gat-after-last-step-before-validation": ("gat", lambda n: n),
        "vgae-first-step": ("vgae", lambda n: 0),
        "vgae-mid-epoch-1": ("vgae", lambda n: n + 2 + n // 2),
        "vgae-last-step-of-epoch-1": ("vgae", lambda n: 2 * n + 1),
    }


@pytest.mark.parametrize("case", sorted(_cases()))
def test_resume_after_stop_gives_identical_weights(case, synthetic, uninterrupted, tmp_path):
    model, where = _cases()[case]
    n = _batches(synthetic, model)
    at = where(n)
    with pytest.raises(Preempted) as stopped:
        train(tiny(tmp_path, model, "cut"), progress=False, data=synthetic, stop=stop_at(at))
    last = tmp_path / "runs" / "cut" / "checkpoints" / "last.pt"
    assert stopped.value.checkpoint == last
    ck = load_checkpoint(last)
    epoch, done = divmod(at, n + 2)
    assert ck["position"]["epoch"] == epoch and ck["position"]["batches_done"] == done and ck["epoch"] == epoch - 1
    assert len(ck["position"]["losses"]) == done
    assert not list(last.parent.glob(".*tmp*"))  # no temp file left behind
    resumed = train(tiny(tmp_path, model, "cut"), resume="auto", progress=False, data=synthetic,
                    stop=stop_at(-1))
    assert resumed["resumed_from"] == str(last)
    full = uninterrupted[model]
    for name in ("last_checkpoint", "best_checkpoint"):
        a, b = torch.load(full[name], weights_only=True), torch.load(resumed[name], weights_only=True)
        assert a["model"].keys() == b["model"].keys()
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k]), (name, k)
        assert a["epoch"] == b["epoch"] and a["step"] == b["step"]
    drop = ("epoch_seconds", "train_peak_mib", "val_peak_mib")  # measured, not computed
    assert [{k: v for k, v in h.items() if k not in drop} for h in resumed["history"]] == \
        [{k: v for k, v in h.items() if k not in drop} for h in full["history"]]
    with open(tmp_path / "runs" / "cut" / "logs" / "metrics.csv", newline="") as handle:  # every epoch once
        assert [int(row["step"]) for row in csv.DictReader(handle)] == [0, 1]
    assert resumed["test"]["overall"] == full["test"]["overall"]


def test_stop_file_makes_kdkit_train_exit_85_with_a_checkpoint(kdkit_env, tmp_path, monkeypatch, capsys):
    from kdkit.cli.main import main

    stop = tmp_path / "stop"
    stop.touch()
    monkeypatch.setenv("KDKIT_STOP_FILE", str(stop))
    args = ["train", "--model", "gat", "--type", "teacher", "--dataset", "synthetic", "--epochs", "2", "--hidden", "8",
            "--embedding-dim", "4",
            "--runs-dir", str(tmp_path / "runs"), "--run-name", "r", "--no-save-compat", "--resume", "auto"]
    assert main(args) == preemption.REQUEUE_EXIT_CODE
    assert "stopped on request (stop file" in capsys.readouterr().err
    last = tmp_path / "runs" / "r" / "checkpoints" / "last.pt"
    assert load_checkpoint(last)["position"]["batches_done"] == 0
    assert Path(preemption.saved_marker(stop)).read_text().strip() == str(last)  # for a notebook's wrapper
    stop.unlink()
    assert main(args) == 0  # --resume auto: continues from last.pt
    out = capsys.readouterr().out
    assert f"resumed from {last} at epoch 0" in out
    assert (tmp_path / "runs" / "r" / "summary.json").is_file()


def test_last_pt_is_never_partial(synthetic, tmp_path, monkeypatch):
    """A write killed half-way leaves the previous last.pt whole and no temp file."""
    from kdkit.training.trainer import FabricTrainer

    cfg = tiny(tmp_path, "gat", "atomic")
    trainer = FabricTrainer(cfg, tmp_path, progress=False, stop=stop_at(-1))
    path = tmp_path / "last.pt"
    trainer._save({"format": 1, "epoch": 0}, path)

    def killed(tmp, state):
        Path(tmp).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt  # what a signal arriving mid-write raises

    monkeypatch.setattr(trainer.fabric, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        trainer._save({"format": 1, "epoch": 1}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith("pt") or "tmp" in p.name) == ["last.pt"]


def test_stop_request_signal_handlers_installed_only_under_the_wrapper(tmp_path):
    plain = StopRequest(stop_file=None)
    with plain:
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    wrapped = StopRequest(stop_file=tmp_path / "stop")
    with wrapped:
        assert not wrapped.requested()
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)
        assert wrapped.requested() and wrapped.reason() == "signal SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # restored
    other = StopRequest(stop_file=tmp_path / "stop")
    (tmp_path / "stop").touch()
    assert other.requested() and other.reason() == f"stop file {tmp_path / 'stop'}"


def test_resume_auto(tmp_path):
    run = tmp_path / "run"
    assert resolve_resume("auto", run) is None  # nothing to resume: a fresh start
    assert resolve_resume(None, run, "auto") is None
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    assert resolve_resume("auto", run) == run / "checkpoints" / "last.pt"
    assert resolve_resume(None, run, "auto") == run / "checkpoints" / "last.pt"
    assert resolve_resume("other.pt", run, "auto") == Path("other.pt")  # an explicit checkpoint wins
    assert resolve_resume(None, run, None) is None
    with pytest.raises(ValueError, match=r"KDKIT_RESUME='yes': the only value is 'auto'"):
        resolve_resume(None, run, "yes")


def test_wrapper_agrees_with_the_trainer():
    """The wrapper repeats the trainer's constants instead of importing torch."""
    assert requeue.STOP_FILE_ENV == preemption.STOP_FILE_ENV and requeue.RESUME_ENV == preemption.RESUME_ENV
    assert requeue.REQUEUE_EXIT_CODE == preemption.REQUEUE_EXIT_CODE == 85
    assert requeue.STOP_SIGNALS == preemption.STOP_SIGNALS
    assert requeue.saved_marker("/x/stop") == preemption.saved_marker("/x/stop")


# ----------------------------------------------------------------------------- the wrapper
# A stand-in for the job's command. argv[1] = what it does on a stop:
#   handler: catches USR1/TERM (as kdkit train does), exits 85 once the stop file exists
#   marker:  catches nothing (as papermill), writes <stop>.saved when the stop file appears, exits 1
#   fail:    catches USR1, exits 1 without a checkpoint
#   done:    exits 0 at once
#   late_marker: dies of TERM at once; a forked process writes <stop>.saved a second later
#   empty_marker: as late_marker, but the forked process creates <stop>.saved empty first, fills it later
CHILD = r'''
import os, signal, sys, time
from pathlib import Path
mode, out = sys.argv[1], Path(sys.argv[2])
stop = os.environ["KDKIT_STOP_FILE"]
got = []
if mode in ("handler", "fail"):
    for s in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(s, lambda n, f: got.append(n))
(out / "env").write_text(os.environ.get("KDKIT_RESUME", "-"))
(out / "ready").touch()
if mode == "done":
    sys.exit(0)
if mode in ("late_marker", "empty_marker"):  # papermill under TERM: dies at once; its kernel (a forked child) saves later
    if os.fork() == 0:
        while not os.path.exists(stop):
            time.sleep(0.02)
        if mode == "empty_marker":  # the wrapper sees the file between its creation and its text
            Path(stop + ".saved").touch()
        time.sleep(1.0)
        Path(stop + ".saved").write_text("/runs/x/checkpoints/late.pt\n")
        os._exit(0)
    while not os.path.exists(stop):
        time.sleep(0.02)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)  # as papermill dies of the job's TERM
deadline = time.time() + 60
while not os.path.exists(stop) and time.time() < deadline:
    time.sleep(0.02)
time.sleep(0.2)
(out / "signals").write_text(",".join(signal.Signals(n).name for n in got))
if mode == "marker":
    Path(stop + ".saved").write_text("/runs/x/checkpoints/last.pt\n")
sys.exit(85 if mode == "handler" else 1)
'''

# `scontrol -o show job J` answers with the job's output file (where slurmstepd says how a job was
# ended); every other call is logged and exits with {status}
FAKE_SCONTROL = ('#!/bin/sh\nif [ "$2" = show ]; then echo "JobId=$4 JobState=COMPLETING StdErr={stderr}"; exit 0; fi\n'
                 'echo "$@" >> "{log}"\nexit {status}\n')


def _wrap(tmp_path, mode, *, restarts=0, max_requeues=2, scontrol_status=0, job="4242", signal_to_send=signal.SIGUSR1,
          job_output=""):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "bin").mkdir()
    (tmp_path / "job.out").write_text(job_output)
    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.write_text(FAKE_SCONTROL.format(log=tmp_path / "scontrol.log", status=scontrol_status,
                                             stderr=tmp_path / "job.out"))
    scontrol.chmod(0o755)
    (tmp_path / "child.py").write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "KDKIT_RESUME", "KDKIT_STOP"))}
    env.update(PATH=f"{tmp_path / 'bin'}:{env['PATH']}", SLURM_RESTART_COUNT=str(restarts))
    if job:
        env["SLURM_JOB_ID"] = job
    proc = subprocess.Popen([sys.executable, "-m", "kdkit.cluster.requeue", "--max-requeues", str(max_requeues), "--",
                             sys.executable, str(tmp_path / "child.py"), mode, str(out)],
                            env=env, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    deadline = time.time() + 60
    while not (out / "ready").exists() and time.time() < deadline:
        time.sleep(0.02)
    if mode != "done":
        proc.send_signal(signal_to_send)
    _, err = proc.communicate(timeout=60)
    log = tmp_path / "scontrol.log"
    return proc.returncode, err, log.read_text() if log.exists() else "", out


def test_wrapper_forwards_the_signal_and_requeues(tmp_path):
    rc, err, calls, out = _wrap(tmp_path, "handler")
    assert rc == 0 and calls == "requeue 4242\n"
    assert (out / "signals").read_text() == "SIGUSR1"  # forwarded: the child catches it
    assert (out / "env").read_text() == "-"             # first run: no KDKIT_RESUME
    assert "job 4242 saved its last.pt and was requeued (restart 1 of at most 2)" in err


def test_wrapper_forwards_term_and_sets_resume_when_requeued(tmp_path):
    rc, _err, calls, out = _wrap(tmp_path, "handler", restarts=1, signal_to_send=signal.SIGTERM)
    assert rc == 0 and calls == "requeue 4242\n"
    assert (out / "signals").read_text() == "SIGTERM" and (out / "env").read_text() == "auto"


def test_wrapper_does_not_requeue_a_job_cancelled_by_scancel(tmp_path):
    """scancel's TERM looks like preemption's to the job; slurmstepd's line in the job's output tells
    them apart. Cancelled: the checkpoint is kept, nothing is requeued (it would run on to its end)."""
    line = "slurmstepd-vm: error: *** JOB 4242 ON vm CANCELLED AT 2026-12-06T23:49:54 ***\n"
    rc, err, calls, _ = _wrap(tmp_path, "handler", signal_to_send=signal.SIGTERM, job_output="epoch 3\n" + line)
    assert rc == 143 and calls == ""
    assert ("job 4242 was cancelled (JOB 4242 ON vm CANCELLED AT 2026-12-06T23:49:54): not requeued; it saved its "
            "last.pt, from which `kdkit slurm resubmit 4242` or `kdkit train ... --resume auto` continues it") in err


@pytest.mark.parametrize("why", ["DUE TO PREEMPTION", "DUE TO TIME LIMIT"])
def test_wrapper_requeues_after_a_preemption_or_time_limit_term(tmp_path, why):
    line = f"slurmstepd-vm: error: *** JOB 4242 ON vm CANCELLED AT 2026-12-06T23:49:54 {why} ***\n"
    rc, err, calls, _ = _wrap(tmp_path, "handler", signal_to_send=signal.SIGTERM, job_output=line)
    assert rc == 0 and calls == "requeue 4242\n" and "was requeued" in err


def test_wrapper_waits_for_a_kernel_that_reports_its_checkpoint_after_papermill_died(tmp_path):
    """Under TERM papermill ends at once (status 143); the kernel it ran, signalled too, writes the
    saved-marker a moment later: the wrapper waits for it and requeues."""
    rc, err, calls, _ = _wrap(tmp_path, "late_marker", signal_to_send=signal.SIGTERM)
    assert rc == 0 and calls == "requeue 4242\n"
    assert "saved /runs/x/checkpoints/late.pt and was requeued" in err


def test_wrapper_reads_a_marker_only_once_its_path_is_written(tmp_path):
    """A marker seen empty (created, not yet written) was read as "no path": the report named last.pt."""
    rc, err, calls, _ = _wrap(tmp_path, "empty_marker", signal_to_send=signal.SIGTERM)
    assert rc == 0 and calls == "requeue 4242\n"
    assert "saved /runs/x/checkpoints/late.pt and was requeued" in err


def test_acknowledge_writes_the_marker_whole(tmp_path):
    stop = tmp_path / "stop"
    StopRequest(stop_file=str(stop)).acknowledge("/runs/x/checkpoints/last.pt")
    assert Path(preemption.saved_marker(stop)).read_text() == "/runs/x/checkpoints/last.pt\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stop.saved"]  # no .partial left behind


def test_wrapper_uses_only_the_stop_file_for_a_child_that_does_not_catch(tmp_path):
    """papermill would die of USR1: it is not sent; the kernel's trainer sees the file and leaves a marker."""
    rc, err, calls, out = _wrap(tmp_path, "marker")
    assert rc == 0 and calls == "requeue 4242\n"
    assert (out / "signals").read_text() == ""  # alive, no signal reached it
    assert "saved /runs/x/checkpoints/last.pt and was requeued" in err


def test_wrapper_stops_requeueing_after_max_requeues(tmp_path):
    rc, err, calls, _ = _wrap(tmp_path, "handler", restarts=2, max_requeues=2)
    assert rc == 85 and calls == ""
    assert "requeued 2 time(s) already (--max-requeues 2): not requeued; `kdkit slurm resubmit 4242`" in err


def test_wrapper_reports_a_child_that_failed_without_checkpoint(tmp_path):
    rc, err, calls, _ = _wrap(tmp_path, "fail")
    assert rc == 1 and calls == ""
    assert "SIGUSR1 received, and" in err and "exited with status 1 without saving a checkpoint" in err


def test_wrapper_when_scontrol_fails(tmp_path):
    rc, err, calls, _ = _wrap(tmp_path, "handler", scontrol_status=1)
    assert rc == 85 and calls == "requeue 4242\n"
    assert "`scontrol requeue 4242` failed" in err


def test_wrapper_outside_slurm(tmp_path):
    rc, err, calls, _ = _wrap(tmp_path, "handler", job=None)
    assert rc == 85 and calls == "" and "not a SLURM job" in err


def test_wrapper_passes_a_normal_exit_on(tmp_path):
    rc, err, calls, _ = _wrap(tmp_path, "done")
    assert rc == 0 and calls == "" and err == ""


def test_wrapper_needs_a_command():
    with pytest.raises(SystemExit):
        requeue.main(["--max-requeues", "1"])


def test_signals_go_on_only_to_a_direct_command_that_catches_them():
    """srun would pass USR1 to tasks still importing torch (no handler yet: they would die)."""
    me = os.getpid()
    with StopRequest(stop_file="/nonexistent/stop"):  # this process now catches USR1 and TERM
        assert requeue.catches(me, signal.SIGUSR1) and requeue.catches(me, signal.SIGTERM)
        assert requeue.forwards_to([sys.executable, "-m", "kdkit"], me, signal.SIGUSR1)
        assert not requeue.forwards_to(["/usr/bin/srun", "kdkit", "train"], me, signal.SIGUSR1)
    assert not requeue.catches(me, signal.SIGUSR1)
    assert not requeue.forwards_to(["papermill"], me, signal.SIGUSR1)


def test_a_plain_kdkit_train_saves_last_pt_on_sigterm(tmp_path):
    """Outside SLURM, `kill` (or `timeout`) ended a training without a word and lost the epoch in
    progress; it now saves last.pt where it stopped and says how to resume."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "KDKIT_RESUME", "KDKIT_STOP"))}
    env.update(OMP_NUM_THREADS="1", KDKIT_SYNTHETIC_ROOT=str(tmp_path / "synthetic-seed{seed}"),
               KDKIT_CACHE_DIR=str(tmp_path / "cache"))
    kdkit = str(Path(sys.executable).parent / "kdkit")
    proc = subprocess.Popen([kdkit, "train", "--dataset", "synthetic", "--type", "student", "--no-teacher",
                             "--epochs", "200", "--precision", "32-true", "--accelerator", "cpu", "--num-workers", "0",
                             "--no-save-compat", "--runs-dir", str(tmp_path / "runs"), "--run-name", "long"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "runs" / "long" / "logs" / "metrics.csv"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # training: an epoch has been logged
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == preemption.REQUEUE_EXIT_CODE, err[-2000:]
    last = tmp_path / "runs" / "long" / "checkpoints" / "last.pt"
    assert "kdkit train: stopped on request (signal SIGTERM) in epoch" in err and str(last) in err
    assert "--resume auto" in err and last.is_file()
