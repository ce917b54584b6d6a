"""SLURM edges (issue 14, "nothing silently wrong"): job IDs that are not job IDs, a Slurm
controller that is down or hangs, a corrupted job registry, and ``kdkit train --use-slurm``
with a bad ``--config``. No cluster needed: fake runners, and stub Slurm commands on PATH.

    .venv/bin/python -m pytest tests/test_slurm_edges.py -q
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from kdkit.cli.main import main
from kdkit.cluster import orchestrator as slurm
from kdkit.cluster.orchestrator import (
    QUERY_TIMEOUT,
    FabricSlurmTrainingOrchestrator,
    JobRegistry,
    RegistryError,
    SlurmUnavailable,
    check_job_id,
)

DOWN = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"


class Cluster:
    """A fake runner: a tiny cluster (``states``) that can go ``down`` (commands fail with
    ``DOWN``) or ``hang`` (commands raise TimeoutExpired). Records every call."""

    def __init__(self, states=None):
        self.states, self.calls, self.down, self.hang = dict(states or {}), [], False, False

    def __call__(self, argv):
        self.calls.append(list(argv))
        if self.hang:
            raise subprocess.TimeoutExpired(argv, 10)
        if self.down:
            return subprocess.CompletedProcess(argv, 1, "", DOWN)
        ok = lambda out="": subprocess.CompletedProcess(argv, 0, out, "")  # noqa: E731
        invalid = subprocess.CompletedProcess(argv, 1, "", "slurm_load_jobs error: Invalid job id specified")
        if argv[0] == "squeue":
            ids = argv[-1].removeprefix("--jobs=").split(",")
            return ok("".join(f"{j}|{self.states[j]}|None|n1\n" for j in ids if j in self.states))
        if argv[0] == "scontrol":
            job = argv[-1]
            return ok(f"JobId={job} JobState={self.states[job]} ExitCode=0:0\n") if job in self.states else invalid
        if argv[0] == "sacct":
            return subprocess.CompletedProcess(argv, 1, "", "Slurm accounting storage is disabled")
        if argv[0] == "scancel":
            return ok()
        raise AssertionError(argv)

    def commands(self) -> list[str]:
        return [c[0] for c in self.calls]


def _registry(runs: Path, ids=("11", "12", "13"), state="PENDING") -> JobRegistry:
    reg = JobRegistry(runs / "slurm_jobs.json")
    for job in ids:
        reg.update(job, state=state, name=f"run{job}", run_dir=str(runs / f"run{job}"),
                   log=str(runs / f"run{job}" / f"slurm-{job}.out"))
    return reg


def _orch(runs: Path, runner) -> FabricSlurmTrainingOrchestrator:
    return FabricSlurmTrainingOrchestrator(runs, runner=runner, venv=None, workdir=runs.parent)


def _stubs(tmp_path: Path, body: str, names=("squeue", "scontrol", "sacct", "scancel", "sbatch")) -> Path:
    """Executable stand-ins for Slurm commands: each appends its name and arguments
    (tab-separated) to ``<tmp_path>/calls.tsv``, then runs ``body`` (bash)."""
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    for name in names:
        path = stubs / name
        path.write_text("#!/bin/bash\n"
                        f"{{ printf '%s' {name}; printf '\\t%s' \"$@\"; printf '\\n'; }} >> {tmp_path / 'calls.tsv'}\n"
                        + body + "\n")
        path.chmod(0o755)
    return stubs


def _calls(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "calls.tsv"
    return [line.split("\t") for line in log.read_text().splitlines()] if log.exists() else []


# ------------------------------------------------------------------------- job IDs
BAD_IDS = ["--name=victim1", "-1", "--", "12;id", "12 13", "", "1_", "_1", "1.2", "12\n", "\u0661\u0662", "123_[1-3]"]


@pytest.mark.parametrize("job_id", BAD_IDS)
@pytest.mark.parametrize("method", ["cancel", "wait", "status", "logs"])
def test_orchestrator_refuses_what_is_not_a_job_id(tmp_path, method, job_id):
    cluster = Cluster({"12": "RUNNING"})
    orch = _orch(tmp_path / "runs", cluster)
    with pytest.raises(ValueError, match="is not a SLURM job ID") as err:
        getattr(orch, method)(job_id)
    assert repr(job_id) in str(err.value)
    assert cluster.calls == []


def test_job_ids_and_array_tasks_are_accepted():
    assert [check_job_id(j) for j in ("123", "123_4", 7)] == ["123", "123_4", "7"]
    with pytest.raises(ValueError, match="True"):
        check_job_id(True)


def test_ids_can_never_be_read_as_options(tmp_path):
    cluster = Cluster({"12": "COMPLETED"})
    orch = _orch(tmp_path / "runs", cluster)
    _registry(tmp_path / "runs", ["12", "13"])
    orch.cancel("12")
    orch.check_all_jobs()
    assert ["scancel", "--", "12"] in cluster.calls
    assert ["squeue", "-h", "-t", "all", "-o", "%i|%T|%r|%N", "--jobs=12,13"] in cluster.calls
    assert ["scontrol", "-o", "--", "show", "job", "13"] in cluster.calls
    assert [c[-1] for c in cluster.calls if c[0] == "sacct"] == ["--jobs=13", "--jobs=13"]


@pytest.mark.parametrize("command", ["cancel", "wait", "logs"])
def test_cli_refuses_an_option_passed_as_job_id(tmp_path, monkeypatch, capsys, command):
    """`kdkit slurm cancel -- --name=victim1` used to reach scancel and cancel jobs by name."""
    monkeypatch.setenv("PATH", f"{_stubs(tmp_path, 'exit 0')}:{os.environ['PATH']}")
    assert main(["slurm", "--runs-dir", str(tmp_path / "runs"), command, "--", "--name=victim1"]) == 2
    err = capsys.readouterr().err
    assert "'--name=victim1' is not a SLURM job ID" in err and "kdkit slurm status" in err
    assert _calls(tmp_path) == []                                    # no Slurm command ran


def test_cli_cancel_passes_the_id_after_double_dash(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", f"{_stubs(tmp_path, 'exit 0')}:{os.environ['PATH']}")
    assert main(["slurm", "--runs-dir", str(tmp_path / "runs"), "cancel", "123_4"]) == 0
    assert _calls(tmp_path) == [["scancel", "--", "123_4"]]
    assert "cancelled job 123_4" in capsys.readouterr().out


# ----------------------------------------------------------------- controller down
@pytest.mark.parametrize("failure", ["down", "hang"])
def test_check_all_jobs_fails_fast_and_keeps_known_states(tmp_path, failure):
    runs = tmp_path / "runs"
    reg = _registry(runs)
    reg.update("10", state="COMPLETED", name="done")
    cluster = Cluster()
    setattr(cluster, failure, True)
    with pytest.raises(SlurmUnavailable, match="the Slurm controller did not answer") as err:
        _orch(runs, cluster).check_all_jobs()
    assert (DOWN if failure == "down" else "got no answer in 10 s") in str(err.value)
    assert cluster.commands() == ["squeue"]                       # one query for all jobs, not one per job
    jobs = reg.load()
    assert {j: r["state"] for j, r in jobs.items()} == {"10": "COMPLETED", "11": "PENDING", "12": "PENDING",
                                                        "13": "PENDING"}
    assert all(jobs[j]["stale"] and "did not answer" in jobs[j]["last_error"] for j in ("11", "12", "13"))
    assert "stale" not in jobs["10"]
    assert [(j["job_id"], j["state"], j.get("stale")) for j in err.value.jobs] == [
        ("10", "COMPLETED", None), ("11", "PENDING", True), ("12", "PENDING", True), ("13", "PENDING", True)]


def test_a_controller_that_answers_again_clears_the_stale_mark(tmp_path):
    runs = tmp_path / "runs"
    reg = _registry(runs)
    cluster = Cluster({"11": "RUNNING", "12": "PENDING", "13": "COMPLETED"})
    cluster.down = True
    with pytest.raises(SlurmUnavailable):
        _orch(runs, cluster).check_all_jobs()
    cluster.down = False
    got = {j["job_id"]: j for j in _orch(runs, cluster).check_all_jobs()}
    assert {j: r["state"] for j, r in got.items()} == {"11": "RUNNING", "12": "PENDING", "13": "COMPLETED"}
    assert not any("stale" in r or "last_error" in r for r in reg.load().values())


@pytest.mark.parametrize("failure", ["down", "hang"])
def test_status_of_one_job_fails_fast_and_keeps_its_state(tmp_path, failure):
    runs = tmp_path / "runs"
    reg = _registry(runs, ["11"], state="RUNNING")
    cluster = Cluster()
    setattr(cluster, failure, True)
    with pytest.raises(SlurmUnavailable, match="the Slurm controller did not answer"):
        _orch(runs, cluster).status("11")
    assert cluster.commands() == ["scontrol"]                     # no sacct fallbacks on a dead controller
    assert reg.load()["11"]["state"] == "RUNNING" and reg.load()["11"]["stale"] is True


def test_a_job_slurm_forgot_keeps_its_last_known_state(tmp_path):
    """Used to be written as UNKNOWN over PENDING in runs/slurm_jobs.json."""
    runs = tmp_path / "runs"
    reg = _registry(runs, ["11", "12"])
    cluster = Cluster({"12": "RUNNING"})                          # 11: not in squeue/scontrol, no accounting
    info = {j["job_id"]: j for j in _orch(runs, cluster).check_all_jobs()}
    assert info["11"]["state"] == "PENDING" and info["11"]["stale"] is True
    assert "does not know this job" in info["11"]["last_error"]
    assert reg.load()["11"]["state"] == "PENDING" and reg.load()["12"]["state"] == "RUNNING"
    assert _orch(runs, cluster).status("11")["state"] == "PENDING"
    assert reg.load()["11"]["state"] == "PENDING"
    assert _orch(runs, cluster).status("999")["state"] == "UNKNOWN"     # never known: UNKNOWN, not recorded
    assert "999" not in reg.load()


@pytest.fixture
def clock(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(slurm.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(slurm.time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
    return now


def test_wait_fails_at_once_when_the_controller_never_answered(tmp_path, clock):
    _registry(tmp_path / "runs", ["11"])
    cluster = Cluster({"11": "PENDING"})
    cluster.down = True
    with pytest.raises(SlurmUnavailable, match="did not answer"):
        _orch(tmp_path / "runs", cluster).wait("11", poll=10)
    assert clock[0] == 0 and len(cluster.calls) == 1


def test_wait_rides_out_a_short_outage_but_not_a_long_one(tmp_path, clock):
    _registry(tmp_path / "runs", ["11", "12"])
    cluster = Cluster({"11": "RUNNING", "12": "RUNNING"})
    orch = _orch(tmp_path / "runs", cluster)
    real = cluster.__call__

    def flaky(argv):                                              # down from t=10 to t=40, then COMPLETED
        cluster.down = 10 <= clock[0] < 40
        cluster.states["11"] = "COMPLETED" if clock[0] >= 40 else "RUNNING"
        return real(argv)
    orch._runner = flaky
    assert orch.wait("11", poll=10)["state"] == "COMPLETED" and clock[0] == 40

    def dies(argv):                                               # down for good from t=clock+10
        cluster.down = clock[0] >= start + 10
        return real(argv)
    start = clock[0]
    orch._runner = dies
    with pytest.raises(SlurmUnavailable):
        orch.wait("12", poll=10)
    assert clock[0] - start == 10 + 70                            # grace max(3 * poll, 60) = 60 s, then one poll


def test_wait_gives_up_on_a_registered_job_slurm_forgot(tmp_path, clock):
    _registry(tmp_path / "runs", ["11"])
    info = _orch(tmp_path / "runs", Cluster()).wait("11", poll=30)
    assert info["state"] == "PENDING" and info["stale"] is True and clock[0] <= 150


def test_default_runner_times_out_a_hanging_squeue(tmp_path, monkeypatch):
    """A real hanging process (exec sleep) under the default runner: bounded by query_timeout."""
    monkeypatch.setenv("PATH", f"{_stubs(tmp_path, 'exec sleep 60')}:{os.environ['PATH']}")
    _registry(tmp_path / "runs")
    orch = FabricSlurmTrainingOrchestrator(tmp_path / "runs", query_timeout=1)
    start = time.monotonic()
    with pytest.raises(SlurmUnavailable, match=r"`squeue .*--jobs=11,12,13` got no answer in 1 s"):
        orch.check_all_jobs()
    assert time.monotonic() - start < 5
    assert [c[0] for c in _calls(tmp_path)] == ["squeue"]
    assert FabricSlurmTrainingOrchestrator(tmp_path / "runs").query_timeout == QUERY_TIMEOUT == 10


@pytest.mark.parametrize("value", ["0", "-1", "ten", "inf", "nan"])
def test_query_timeout_setting_is_checked(tmp_path, monkeypatch, value):
    monkeypatch.setenv("KDKIT_SLURM_QUERY_TIMEOUT", value)
    with pytest.raises(ValueError, match=f"environment variable KDKIT_SLURM_QUERY_TIMEOUT={value!r}: expected"):
        FabricSlurmTrainingOrchestrator(tmp_path)
    monkeypatch.setenv("KDKIT_SLURM_QUERY_TIMEOUT", "2.5")
    assert FabricSlurmTrainingOrchestrator(tmp_path).query_timeout == 2.5
    with pytest.raises(ValueError, match="query_timeout=0: expected"):
        FabricSlurmTrainingOrchestrator(tmp_path, query_timeout=0)


@pytest.mark.parametrize("body, timeout", [(f"echo '{DOWN}' >&2; exit 1", None), ("exec sleep 60", "2")])
def test_cli_status_with_the_controller_down(tmp_path, monkeypatch, capsys, body, timeout):
    """Used to take ~44 s per job, print UNKNOWN, exit 0 and overwrite PENDING in the registry."""
    monkeypatch.setenv("PATH", f"{_stubs(tmp_path, body)}:{os.environ['PATH']}")
    if timeout:
        monkeypatch.setenv("KDKIT_SLURM_QUERY_TIMEOUT", timeout)
    reg = _registry(tmp_path / "runs")
    start = time.monotonic()
    code = main(["slurm", "--runs-dir", str(tmp_path / "runs"), "status"])
    elapsed = time.monotonic() - start
    out, err = capsys.readouterr()
    assert code == 1 and elapsed < 15, (code, elapsed)
    assert "kdkit slurm: the Slurm controller did not answer: " in err
    assert (DOWN in err) if not timeout else ("got no answer in 2 s" in err)
    assert [c[0] for c in _calls(tmp_path)] == ["squeue"]
    assert {j: r["state"] for j, r in reg.load().items()} == {"11": "PENDING", "12": "PENDING", "13": "PENDING"}
    assert "UNKNOWN" not in out and out.count("PENDING") == 3 and out.count("[stale: last known state]") == 3


def test_cli_wait_with_the_controller_down(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", f"{_stubs(tmp_path, f'echo {DOWN!r} >&2; exit 1')}:{os.environ['PATH']}")
    reg = _registry(tmp_path / "runs", ["11"])
    assert main(["slurm", "--runs-dir", str(tmp_path / "runs"), "wait", "11", "--poll", "1"]) == 1
    assert "the Slurm controller did not answer: " + DOWN in capsys.readouterr().err
    assert reg.load()["11"]["state"] == "PENDING"


# ----------------------------------------------------------------- broken registry
@pytest.mark.parametrize("content, what", [
    ("{\"jobs\": {\"1\": ", "it is not JSON"),
    ("[]", "found a JSON array"),
    ('{"version": 1}', "it has no 'jobs' (keys: version)"),
    ('{"version": 1, "jobs": []}', "'jobs' is a JSON array, not an object of jobs"),
    ('{"version": 1, "jobs": {"abc": {"state": "PENDING"}}}', "entry 'abc' is not a job"),
    ('{"version": 1, "jobs": {"12": "PENDING"}}', "entry '12' is not a job"),
])
@pytest.mark.parametrize("command", [["status"], ["wait", "12"], ["cancel", "12"]])
def test_cli_names_a_corrupted_registry(tmp_path, monkeypatch, capsys, content, what, command):
    """Used to print 'kdkit: error: jobs'."""
    monkeypatch.setenv("PATH", f"{_stubs(tmp_path, 'exit 0')}:{os.environ['PATH']}")
    path = tmp_path / "runs" / "slurm_jobs.json"
    path.parent.mkdir()
    path.write_text(content)
    assert main(["slurm", "--runs-dir", str(tmp_path / "runs"), *command]) == 2
    err = capsys.readouterr().err
    assert f"kdkit: error: {path} is not a kdkit job registry: " in err and what in err
    assert f"mv {path} {path}.bad" in err
    assert path.read_text() == content and _calls(tmp_path) == []


def test_submission_is_refused_before_sbatch_with_a_corrupted_registry(tmp_path):
    cluster = Cluster()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "slurm_jobs.json").write_text("not json")
    with pytest.raises(RegistryError, match="slurm_jobs.json is not a kdkit job registry"):
        _orch(tmp_path / "runs", cluster).submit_gat_training("synthetic", "teacher", run_name="r1")
    assert cluster.calls == [] and not (tmp_path / "runs" / "r1").exists()


# ------------------------------------------------ kdkit train --use-slurm, bad --config
@pytest.mark.parametrize("config, message", [
    ('{"bogus": 1}', "unknown config key 'bogus'"),
    ('{"epochs": 0}', "config key 'epochs': must be >= 1, got 0"),
])
@pytest.mark.parametrize("dry_run", [True, False])
def test_use_slurm_refuses_a_bad_config_before_submission(tmp_path, monkeypatch, capsys, config, message, dry_run):
    monkeypatch.setenv("PATH", f"{_stubs(tmp_path, 'echo 77')}:{os.environ['PATH']}")
    runs = tmp_path / "runs"
    code = main(["train", "--model", "gat", "--dataset", "synthetic", "--type", "teacher", "--use-slurm",
                 *(["--dry-run"] if dry_run else []), "--runs-dir", str(runs), "--config", config])
    out, err = capsys.readouterr()
    assert code == 2 and f"kdkit: error: {message}" in err, err
    assert "#SBATCH" not in out and "submitted" not in out
    assert not runs.exists() and _calls(tmp_path) == []               # nothing written, sbatch never ran
