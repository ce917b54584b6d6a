"""kdkit.cluster without a cluster: rendering (golden files), parsing Slurm output, the job
registry, wait(), input validation and shell-injection safety.

    .venv/bin/python -m pytest tests/test_slurm_unit.py -q
    KDKIT_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_slurm_unit.py -k golden   # rewrite goldens
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from kdkit.cli.slurm import add_slurm_arguments, submit_train_from_args
from kdkit.cli.slurm import register as register_cli
from kdkit.cluster import orchestrator as slurm
from kdkit.cluster.orchestrator import (
    TERMINAL_STATES,
    FabricSlurmTrainingOrchestrator,
    JobRegistry,
    SlurmError,
    check_parameters,
    load_presets,
    normalize_state,
    parse_sacct,
    parse_sbatch,
    parse_scontrol,
    parse_squeue,
    to_yaml,
)

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden" / "slurm"
NOTEBOOK = GOLDEN / "params.ipynb"

# `scontrol show job -o` of a failed job, as Slurm 22.05 prints it (node list edited).
SCONTROL_FAILED = (
    "JobId=3 JobName=wrap UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901757 Nice=0 "
    "Account=(null) QOS=(null) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) Requeue=1 "
    "Restarts=0 BatchFlag=1 Reboot=0 ExitCode=1:0 RunTime=00:00:00 TimeLimit=UNLIMITED TimeMin=N/A "
    "SubmitTime=2026-11-28T13:51:54 Partition=cpu AllocNode:Sid=localhost:3016 ReqNodeList=(null) "
    "NodeList=node[01-03,05] BatchHost=node01 NumNodes=4 NumCPUs=4 TRES=cpu=4,node=4,billing=4 "
    "Features=(null) Command=(null) WorkDir=/tmp/sl StdErr=/tmp/sl/slurm-3.out StdIn=/dev/null "
    "StdOut=/tmp/sl/slurm-3.out Power= ")


class FakeSlurm:
    """Stands in for sbatch/squeue/scontrol/sacct/scancel; ``states[job]`` is a list of
    states returned one per query (the last one repeats)."""

    def __init__(self, accounting=False):
        self.calls, self.states, self.exit_codes = [], {}, {}
        self.next_id, self.accounting, self.scripts = 100, accounting, {}

    def __call__(self, argv):
        self.calls.append(argv)
        ok = lambda out="": subprocess.CompletedProcess(argv, 0, out, "")  # noqa: E731
        err = lambda msg: subprocess.CompletedProcess(argv, 1, "", msg)  # noqa: E731
        cmd = argv[0]
        if cmd == "sbatch":
            self.next_id += 1
            job = str(self.next_id)
            self.states[job] = ["PENDING"]
            self.scripts[job] = Path(argv[-1]).read_text()
            return ok(f"{job};kdkit\n")
        if cmd == "scancel":
            self.states[argv[-1]] = ["CANCELLED"]
            return ok()
        job = argv[-1]
        if cmd == "squeue":
            ids = argv[-1].removeprefix("--jobs=").split(",")
            rows = [f"{j}|{self._peek(j)}|None|node[01-03,05]" for j in ids if j in self.states]
            return ok("\n".join(rows) + "\n") if rows else err("slurm_load_jobs error: Invalid job id specified")
        if cmd == "scontrol":
            if job not in self.states:
                return err("slurm_load_jobs error: Invalid job id specified")
            state = self._pop(job)
            return ok(SCONTROL_FAILED.replace("JobId=3", f"JobId={job}").replace("JobState=FAILED", f"JobState={state}")
                      .replace("ExitCode=1:0", f"ExitCode={self.exit_codes.get(job, '0:0')}")
                      .replace("StdOut=/tmp/sl/slurm-3.out", "StdOut=/elsewhere.out"))
        if cmd == "sacct":
            if "-c" not in argv and not self.accounting:
                return err("Slurm accounting storage is disabled")
            return ok("7|CANCELLED by 0|0:15|node[01-03,05]\n")
        raise AssertionError(argv)

    def _peek(self, job):
        return self.states[job][0]

    def _pop(self, job):
        return self.states[job].pop(0) if len(self.states[job]) > 1 else self.states[job][0]


@pytest.fixture
def fake():
    return FakeSlurm()


@pytest.fixture
def orch(tmp_path, fake):
    return FabricSlurmTrainingOrchestrator(tmp_path / "runs", runner=fake, venv=None, workdir=tmp_path)


# ---------------------------------------------------------------------- golden scripts
def _golden_cases():
    full = FabricSlurmTrainingOrchestrator(
        "/scratch/kdkit/runs", preset="a100", account="proj42", qos="high", constraint="a100&ib",
        modules=["cuda/12.1", "gcc/12.2"], conda_env="kdkit", mail_user="me@uni.edu",
        mail_type="END,FAIL", workdir="/home/me/kdkit", separate_stderr=True)
    cpu = FabricSlurmTrainingOrchestrator("/scratch/kdkit/runs", preset="cpu", venv="/opt/venvs/kdkit",
                                          workdir="/home/me/kdkit")
    return {
        "train_a100_full": lambda: full.submit_gat_training(
            "hcrl_ch", "student", teacher="/scratch/kdkit/runs/t1/checkpoints/best.pt", epochs=50,
            config={"learning_rate": 0.001, "batch_size": 64}, devices=2, num_nodes=2,
            dependency="afterok:41", run_name="gat_hcrl_ch_student", dry_run=True),
        "train_cpu_minimal": lambda: cpu.submit_vgae_training("synthetic", "teacher", run_name="vgae_t", dry_run=True),
        "notebook_cpu": lambda: cpu.submit_notebook(
            NOTEBOOK, {"dataset": "hcrl_sa", "epochs": 3, "learning_rate": 1e-05, "tags": ["a", "b c"]},
            run_name="params_nb", time="00:30:00", dry_run=True),
    }


@pytest.mark.parametrize("case", sorted(_golden_cases()))
def test_rendered_scripts_match_golden(case):
    script = _golden_cases()[case]().replace(str(REPO), "<REPO>")
    path = GOLDEN / f"{case}.sbatch"
    if os.environ.get("KDKIT_UPDATE_GOLDEN"):
        path.write_text(script)
    assert script == path.read_text(), f"rendered {case} differs from {path} (KDKIT_UPDATE_GOLDEN=1 rewrites)"


def test_dry_run_touches_nothing(orch, fake, tmp_path):
    script = orch.submit_gat_training("synthetic", "teacher", dry_run=True)
    assert script.startswith("#!/bin/bash\n") and "srun --kill-on-bad-exit=1 kdkit train" in script
    assert not (tmp_path / "runs").exists() and fake.calls == []


def test_optional_lines_are_omitted_and_gpu_line_follows_devices(tmp_path):
    orch = FabricSlurmTrainingOrchestrator(tmp_path, preset="v100", venv=None, gpu_type=None)
    script = orch.submit_gat_training("hcrl_sa", "teacher", devices=4, dry_run=True)
    assert "--gres=gpu:4\n" in script and "--ntasks-per-node=4\n" in script and "--devices 4 \\\n    --num-nodes 1" in script
    for absent in ("--account", "--qos", "--constraint", "--mail", "--dependency", "module load", "activate", "--teacher"):
        assert absent not in script


def test_presets_and_template_override(tmp_path, monkeypatch):
    presets = load_presets()
    assert {"cpu", "v100", "a100", "h100"} <= set(presets)
    assert presets["a100"]["gpus"] == 1 and presets["cpu"]["gpus"] == 0
    for name, p in presets.items():
        assert p["time"] and p["mem"] and p["cpus_per_task"] >= 1
        assert p["partition"] == (None if name == "cpu" else "gpu")         # cpu: the cluster's default
    (tmp_path / "presets.ini").write_text("[mycluster]\npartition = ampere\ntime = 10\ncpus_per_task = 2\nmem = 1G\ngpus = 0\n")
    monkeypatch.setenv("KDKIT_SLURM_TEMPLATES", str(tmp_path))
    assert list(load_presets()) == ["mycluster"]
    script = FabricSlurmTrainingOrchestrator(tmp_path / "r", preset="mycluster").submit_gat_training(
        "synthetic", "teacher", dry_run=True)          # template itself still from the repo
    assert "#SBATCH --partition=ampere\n" in script and "#SBATCH --time=10\n" in script
    with pytest.raises(ValueError, match="preset='a100' unknown"):
        FabricSlurmTrainingOrchestrator(tmp_path / "r", preset="a100")


# ---------------------------------------------------------------------------- parsing
def test_parse_sbatch():
    assert parse_sbatch("123\n") == ("123", None)
    assert parse_sbatch("123;cluster-a\n") == ("123", "cluster-a")
    assert parse_sbatch("sbatch: warning: x\n456\n") == ("456", None)
    with pytest.raises(SlurmError, match="cannot read a job ID"):
        parse_sbatch("Submitted batch job 12")


@pytest.mark.parametrize("raw, state", [
    ("CANCELLED by 0", "CANCELLED"), ("CANCELLED by 1000", "CANCELLED"), ("OUT_OF_ME+", "OUT_OF_MEMORY"),
    ("NODE_FAIL", "NODE_FAIL"), ("PREEMPTED", "PREEMPTED"), ("BOOT_FAIL", "BOOT_FAIL"), ("DEADLINE", "DEADLINE"),
    ("TIMEOUT", "TIMEOUT"), ("COMPLETED", "COMPLETED"), ("FAILED", "FAILED"), ("running", "RUNNING"),
    ("COMPLETI+", "COMPLETING"), ("", "UNKNOWN")])
def test_normalize_state(raw, state):
    assert normalize_state(raw) == state


def test_parse_scontrol_with_comma_node_list():
    info = parse_scontrol(SCONTROL_FAILED)
    assert info == {"job_id": "3", "state": "FAILED", "exit_code": "1:0", "reason": "NonZeroExitCode",
                    "nodes": "node[01-03,05]", "log": "/tmp/sl/slurm-3.out"}


def test_parse_squeue_and_sacct_keep_node_lists_whole():
    sq = parse_squeue("CLUSTER: kdkit\n12|RUNNING|None|node[01-03,05]\n13|PENDING|Dependency|\n")
    assert sq["12"] == {"job_id": "12", "state": "RUNNING", "reason": None, "nodes": "node[01-03,05]"}
    assert sq["13"]["reason"] == "Dependency" and sq["13"]["nodes"] is None
    states = sorted(TERMINAL_STATES - {"CANCELLED"}) + ["CANCELLED by 0"]
    text = "".join(f"{i}|{s}|{i}:0|gpu[1,3-4],cpu7\n" for i, s in enumerate(states, start=1))
    text += "1.batch|FAILED|1:0|gpu1\n"                         # step rows are ignored
    rows = parse_sacct(text)
    assert [rows[str(i)]["state"] for i in range(1, len(states) + 1)] == sorted(TERMINAL_STATES - {"CANCELLED"}) + ["CANCELLED"]
    assert rows["1"]["nodes"] == "gpu[1,3-4],cpu7" and rows["2"]["exit_code"] == "2:0" and "1.batch" not in rows


# ---------------------------------------------------------------- registry & monitoring
def test_registry_survives_a_new_orchestrator(orch, fake, tmp_path):
    job = orch.submit_gat_training("synthetic", "teacher", run_name="t1")
    run_dir = tmp_path / "runs" / "t1"
    assert job == "101" and (run_dir / "job.sbatch").read_text() == fake.scripts[job]
    assert json.loads((run_dir / "parameters.json").read_text())["dataset"] == "synthetic"
    fake.states[job] = ["RUNNING"]
    fresh = FabricSlurmTrainingOrchestrator(tmp_path / "runs", runner=fake)
    [info] = fresh.check_all_jobs()
    assert info["job_id"] == "101" and info["state"] == "RUNNING" and info["cluster"] == "kdkit"
    assert info["nodes"] == "node[01-03,05]" and info["run_dir"] == str(run_dir)
    assert ["squeue", "-h", "-t", "all", "-o", "%i|%T|%r|%N", "--jobs=101"] in fake.calls
    data = json.loads((tmp_path / "runs" / "slurm_jobs.json").read_text())
    assert data["jobs"]["101"]["state"] == "RUNNING"
    assert [p.name for p in (tmp_path / "runs").iterdir() if p.name.startswith(".slurm_jobs")] == []


def test_final_states_are_not_queried_again(orch, fake):
    job = orch.submit_gat_training("synthetic", "teacher")
    fake.states[job] = ["COMPLETED"]
    assert orch.status(job)["state"] == "COMPLETED"
    n = len(fake.calls)
    assert orch.check_all_jobs()[0]["state"] == "COMPLETED" and len(fake.calls) == n


@pytest.mark.parametrize("final", sorted(TERMINAL_STATES))
def test_wait_stops_on_every_final_state(orch, fake, final):
    job = orch.submit_gat_training("synthetic", "teacher")
    fake.states[job] = ["PENDING", "RUNNING", "COMPLETING", final]
    assert orch.wait(job, poll=0)["state"] == final


def test_failed_job_reports_exit_code_and_log_tail(orch, fake, tmp_path):
    job = orch.submit_gat_training("synthetic", "teacher", run_name="bad")
    (tmp_path / "runs" / "bad" / f"slurm-{job}.out").write_text("".join(f"line {i}\n" for i in range(30)) + "Error: boom\n")
    fake.states[job], fake.exit_codes[job] = ["FAILED"], "1:0"
    info = orch.wait(job, poll=0)
    assert info["state"] == "FAILED" and info["exit_code"] == "1:0" and info["reason"] == "NonZeroExitCode"
    assert info["log_tail"].splitlines()[-1] == "Error: boom" and len(info["log_tail"].splitlines()) == 20
    assert orch.logs(job, tail=2) == "line 29\nError: boom"
    from kdkit.cli.slurm import format_job
    assert "exit_code=1:0" in format_job(info) and "Error: boom" in format_job(info)


def test_wait_gives_up_on_a_job_slurm_forgot_and_times_out(orch, fake, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(slurm.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(slurm.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    assert orch.wait("999", poll=30)["state"] == "UNKNOWN"     # never submitted, no sacct row
    assert clock[0] <= 150
    job = orch.submit_gat_training("synthetic", "teacher")
    fake.states[job] = ["PENDING"]
    with pytest.raises(TimeoutError, match=f"job {job} still PENDING after 60"):
        orch.wait(job, timeout=60, poll=10)


def test_old_jobs_come_from_sacct_then_jobcomp(orch, fake):
    info = orch.status("7")
    assert info["state"] == "CANCELLED" and info["exit_code"] == "0:15" and info["nodes"] == "node[01-03,05]"
    assert fake.calls[0] == ["scontrol", "-o", "--", "show", "job", "7"]
    assert [c[:2] for c in fake.calls[1:]] == [["sacct", "-n"], ["sacct", "-c"]]
    assert all(c[-1] == "--jobs=7" for c in fake.calls[1:])


def test_cancel_and_cluster_flag(orch, fake):
    job = orch.submit_gat_training("synthetic", "teacher")
    orch.cancel(job)
    assert fake.calls[-1] == ["scancel", "-M", "kdkit", "--", job]
    assert orch.status(job)["state"] == "CANCELLED"


def test_sbatch_refusal_and_missing_slurm(tmp_path):
    refuse = lambda argv: subprocess.CompletedProcess(argv, 1, "", "sbatch: error: Invalid partition name specified")  # noqa: E731
    orch = FabricSlurmTrainingOrchestrator(tmp_path, runner=refuse)
    with pytest.raises(SlurmError, match="Invalid partition name"):
        orch.submit_gat_training("synthetic", "teacher")

    def missing(argv):
        raise FileNotFoundError(argv[0])
    with pytest.raises(SlurmError, match="sbatch not found.*slurm-cluster.sh start"):
        FabricSlurmTrainingOrchestrator(tmp_path, runner=missing).submit_gat_training("synthetic", "teacher")

    def hangs(argv):
        raise subprocess.TimeoutExpired(argv, 120)
    with pytest.raises(SlurmError, match="no answer in 120 s: is slurmctld up"):
        FabricSlurmTrainingOrchestrator(tmp_path, runner=hangs).status("5")


def test_run_dir_is_never_reused(orch, monkeypatch):
    import datetime as real

    import kdkit.cluster.orchestrator as orchestrator

    class Frozen(real.datetime):  # one second for the whole test: a second boundary between calls made it flaky
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 12, 7, 20, 15, 13)

    monkeypatch.setattr(orchestrator, "datetime", Frozen)
    orch.submit_gat_training("synthetic", "teacher", run_name="same")
    with pytest.raises(FileExistsError, match=r"choose another run name \(--run-name\)"):
        orch.submit_gat_training("synthetic", "teacher", run_name="same")
    a, b = orch._new_run_name("x"), orch._new_run_name("x")
    assert a == b                                                     # free until used
    (orch.runs_dir / a).mkdir()
    assert orch._new_run_name("x") == a + "-2"


@pytest.mark.parametrize("family", ["vgae", "fusion"])
def test_pipeline_chains_student_after_teacher(orch, fake, tmp_path, family):
    teacher, student = orch.submit_pipeline("hcrl_ch", model=family, epochs=2,
                                            student_overrides={"time": "00:10:00"})
    t_run = json.loads((tmp_path / "runs" / "slurm_jobs.json").read_text())["jobs"][teacher]["run_dir"]
    script = fake.scripts[student]
    assert f"#SBATCH --dependency=afterok:{teacher}\n" in script and "#SBATCH --kill-on-invalid-dep=yes\n" in script
    assert f"--teacher {t_run}/checkpoints/best.pt" in script and f"--model {family}" in script
    assert "#SBATCH --time=00:10:00" in script and "#SBATCH --time=00:10:00" not in fake.scripts[teacher]


# ------------------------------------------------------------ validation and injection
@pytest.mark.parametrize("kwargs, field", [
    ({"dataset": "x; rm -rf /"}, "dataset"),
    ({"dataset": "$(touch /tmp/pwned)"}, "dataset"),
    ({"partition": "gpu\n#SBATCH --wrap=id"}, "partition"),
    ({"partition": "gpu;id"}, "partition"),
    ({"account": "a b"}, "account"),
    ({"time": "1; reboot"}, "time"),
    ({"mem": "4G\n"}, "mem"),
    ({"modules": ["cuda; rm -rf ~"]}, "modules"),
    ({"mail_user": "me@x.org`id`"}, "mail_user"),
    ({"mail_type": "END,EVERYTHING"}, "mail_type"),
    ({"constraint": "a100 && id"}, "constraint"),
    ({"run_name": "../../etc"}, "run_name"),
    ({"model_type": "teacher\n"}, "model_type"),
    ({"model_type": "pupil"}, "model_type"),
    ({"config": {"learning_rate": -1}}, "'learning_rate'"),
    ({"config": {"lerning_rate": 0.1}}, "unknown config key 'lerning_rate'"),
    ({"venv": "/opt/venv\nid"}, "venv"),
    ({"conda_env": "base; id"}, "conda_env"),
    ({"teacher": "/x/best.pt\nid", "dependency": "afterok:1"}, "teacher"),
    ({"dependency": "afterok:1;id"}, "dependency"),
    ({"epochs": "5; id"}, "epochs"),
    ({"cpus_per_task": True}, "cpus_per_task"),
    ({"workdir": "/home/me/my dir"}, "workdir"),
])
def test_injection_attempts_are_rejected(orch, fake, kwargs, field):
    kwargs = {"dataset": "synthetic", "model_type": "teacher", **kwargs}
    with pytest.raises(ValueError, match=field):
        orch.submit_gat_training(kwargs.pop("dataset"), kwargs.pop("model_type"), **kwargs)
    assert fake.calls == []


def test_unknown_options_are_named(orch):
    with pytest.raises(TypeError, match="unknown option.*partiton"):
        orch.submit_gat_training("synthetic", "teacher", partiton="gpu")


def _run_script_with_stubs(script: str, cwd: Path) -> list[list[str]]:
    """Runs a rendered job script in bash with srun/papermill/module/source/conda replaced
    by stubs that record their arguments; returns the recorded argument lists."""
    stubs = ('rec() { python3 -c \'import json,sys; print(json.dumps(sys.argv[1:]))\' "$@" >> calls.jsonl; }\n'
             'srun() { rec srun "$@"; }; papermill() { rec papermill "$@"; }; module() { rec module "$@"; }\n'
             'source() { rec source "$@"; }; conda() { echo /nonexistent; }\n'
             'requeue_stub() { rec requeue "$1"; shift; "$@"; }\n')
    # the last line execs the requeue wrapper (a program: shell stubs cannot stand in for it)
    body = re.sub(r"exec python -m kdkit\.cluster\.requeue --max-requeues (\d+) --", r"requeue_stub \1",
                  script.split("\n", 1)[1])
    (cwd / "job.sh").write_text("#!/bin/bash\n" + stubs + body)
    proc = subprocess.run(["bash", "job.sh"], cwd=cwd, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(ln) for ln in (cwd / "calls.jsonl").read_text().splitlines()]


EVIL = ["$(touch PWNED)", "`touch PWNED`", "'; touch PWNED; '", '"; touch PWNED; "', "a\nb\\n$HOME", "ünïcode ✓"]


def test_notebook_parameters_reach_papermill_verbatim(tmp_path):
    orch = FabricSlurmTrainingOrchestrator(tmp_path / "runs", venv=str(tmp_path / "my venv $(touch PWNED)"))
    script = orch.submit_notebook(NOTEBOOK, {"note": EVIL[0], "tags": EVIL, "learning_rate": 1e-05},
                                  run_name="evil", dry_run=True)
    calls = _run_script_with_stubs(script, tmp_path)
    assert not (tmp_path / "PWNED").exists()
    assert calls[0] == ["source", str(tmp_path / "my venv $(touch PWNED)" / "bin" / "activate")]
    assert calls[1] == ["requeue", "3"]  # the command runs under kdkit.cluster.requeue --max-requeues 3
    argv = calls[2]
    assert argv[:3] == ["papermill", str(NOTEBOOK), str(tmp_path / "runs" / "evil" / "params.ipynb")]
    params = yaml.safe_load(argv[argv.index("--parameters_yaml") + 1])     # what papermill will read
    assert params == {"note": EVIL[0], "tags": EVIL, "learning_rate": 1e-05,
                      "run_dir": str(tmp_path / "runs" / "evil")}


def test_training_config_reaches_kdkit_train_verbatim(tmp_path):
    config = {"data_root": "/d/" + "|".join(e for e in EVIL if "\n" not in e), "learning_rate": 0.5}
    orch = FabricSlurmTrainingOrchestrator(tmp_path / "runs", venv=None, modules=["cuda/12.1"])
    script = orch.submit_gat_training("hcrl_sa", "student", teacher=tmp_path / "t $(x)/best.pt",
                                      dependency="afterok:5", config=config, epochs=3, run_name="r1", dry_run=True)
    calls = _run_script_with_stubs(script, tmp_path)
    assert not (tmp_path / "PWNED").exists()
    assert calls[0] == ["module", "load", "cuda/12.1"]
    assert calls[1] == ["requeue", "3"]
    assert calls[2] == ["srun", "--kill-on-bad-exit=1", "kdkit", "train", "--model", "gat", "--dataset", "hcrl_sa",
                        "--type", "student", "--teacher", str(tmp_path / "t $(x)/best.pt"), "--epochs", "3",
                        "--data-root", config["data_root"], "--learning-rate", "0.5", "--run-name", "r1",
                        "--runs-dir", str(tmp_path / "runs"), "--devices", "1", "--num-nodes", "1"]


@pytest.mark.parametrize("params, message", [
    ({"$(touch x)": 1}, "not in .*parameters cell"),
    ({"epocs": 1}, "known: dataset, epochs, input_path"),
    ({"epochs": "ten"}, "config key 'epochs': expected int"),   # run-schema keys: checked as the schema says
    ({"epochs": True}, "config key 'epochs': expected int"),
    ({"epochs": 0}, "config key 'epochs': must be >= 1"),
    ({"dataset": 3}, "config key 'dataset': expected str"),
    ({"dataset": "nope"}, "config key 'dataset': unknown dataset 'nope'"),
    ({"tags": "a"}, "default is list"),
    ({"learning_rate": float("nan")}, "only JSON data"),
    ({"note": object()}, "only JSON data"),
])
def test_notebook_parameters_are_checked(params, message):
    with pytest.raises(ValueError, match=message):
        check_parameters(NOTEBOOK, params)


def test_notebook_parameters_accept_matching_types():
    ok = {"epochs": 2, "learning_rate": 1, "input_path": "/x", "tags": ["a"], "dataset": "hcrl_sa"}
    assert check_parameters(NOTEBOOK, ok) == ok


def test_notebook_without_parameters_cell(tmp_path, orch):
    nb = json.loads(NOTEBOOK.read_text())
    nb["cells"][1]["metadata"]["tags"] = []
    (tmp_path / "plain.ipynb").write_text(json.dumps(nb))
    with pytest.raises(ValueError, match="no code cell tagged 'parameters'"):
        orch.submit_notebook(tmp_path / "plain.ipynb", {})
    with pytest.raises(FileNotFoundError, match="missing.ipynb does not exist"):
        orch.submit_notebook(tmp_path / "missing.ipynb", {})


@pytest.mark.parametrize("value", [1e-05, 1e20, -2.5e-300, 0.1, 3.0, 12345678901234567890, True, None, "1e-05",
                                   "yes", "null", "", "a: b", "#x", {"k": [1, 2.5e-7, {"z": None}]}, ["x", 1],
                                   "Ärger 😀 $HOME", "\\ud83d", "\x85\u2028\U0010FFFF", {"k😀": "小车"}])
def test_yaml_round_trip(value):
    assert yaml.safe_load(to_yaml({"v": value})) == {"v": value}


# ------------------------------------------------------------------------------- CLI
def _parser():
    parser = argparse.ArgumentParser(prog="kdkit")
    register_cli(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_submit_notebook_dry_run(capsys, tmp_path):
    args = _parser().parse_args(["slurm", "--runs-dir", str(tmp_path), "submit-notebook", str(NOTEBOOK),
                                 "-p", "epochs", "3", "-p", "dataset", "hcrl_sa", "-p", "learning_rate", "0.5",
                                 "--partition", "short", "--time", "5", "--dry-run"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --partition=short\n" in out and "#SBATCH --time=5\n" in out
    params = yaml.safe_load(shlex_arg(out, "--parameters_yaml", after="papermill"))
    assert params["epochs"] == 3 and params["dataset"] == "hcrl_sa" and params["learning_rate"] == 0.5
    assert not list(tmp_path.iterdir())


def test_cli_wait_reports_slurm_errors_as_status(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))                     # no Slurm commands at all
    args = _parser().parse_args(["slurm", "--runs-dir", str(tmp_path), "cancel", "12"])
    assert args.func(args) == 1
    assert "scancel not found" in capsys.readouterr().err


def test_train_flags_and_submit_from_args(capsys, tmp_path):
    parser = argparse.ArgumentParser()
    parser.add_argument("--use-slurm", action="store_true")            # the train parser has it already
    add_slurm_arguments(parser)
    args = parser.parse_args(["--use-slurm", "--slurm-preset", "v100", "--partition", "gpu", "--account", "X",
                              "--time", "04:00:00", "--dry-run"])
    run = {"model": "gat", "dataset": "hcrl_ch", "type": "teacher", "epochs": 2, "run_name": "cli_run", "devices": 2,
           "runs_dir": str(tmp_path), "batch_size": 64, "data_root": "data"}
    assert submit_train_from_args(args, run) is None
    out = capsys.readouterr().out
    assert "#SBATCH --gres=gpu:v100:2\n" in out and "#SBATCH --account=X\n" in out and "--devices 2" in out
    assert shlex_arg(out, "--epochs") == "2" and shlex_arg(out, "--batch-size") == "64"
    assert shlex_arg(out, "--data-root") == str(Path("data").resolve()) and shlex_arg(out, "--strategy") == "ddp"


def shlex_arg(script: str, flag: str, after: str = "kdkit train") -> str:
    """The shell word after ``flag`` in the command that starts with ``after``."""
    words = shlex.split(script.split(after, 1)[1].replace("\\\n", " "))
    return words[words.index(flag) + 1]


def test_registry_file_is_replaced_atomically(tmp_path):
    reg = JobRegistry(tmp_path / "jobs.json")
    reg.update("1", state="PENDING")
    reg.update("1", exit_code="0:0")
    reg.update("2", state="RUNNING")
    assert reg.load() == {"1": {"job_id": "1", "state": "PENDING", "exit_code": "0:0"},
                          "2": {"job_id": "2", "state": "RUNNING"}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.json", "jobs.json.lock"]


def test_pipeline_run_name_names_both_runs(orch, fake, tmp_path):
    orch.submit_pipeline("synthetic", run_name="exp1")
    assert sorted(r["name"] for r in orch.registry.load().values()) == ["exp1_student", "exp1_teacher"]
    assert f"--teacher {tmp_path}/runs/exp1_teacher/checkpoints/best.pt" in fake.scripts["102"]


# ---------------------------------------------------------------------- surviving the cluster
def test_jobs_ask_for_the_time_limit_warning_and_requeue(orch):
    script = orch.submit_gat_training("synthetic", "teacher", run_name="g", dry_run=True)
    assert "#SBATCH --signal=B:USR1@120\n#SBATCH --requeue\n" in script
    assert "exec python -m kdkit.cluster.requeue --max-requeues 3 -- \\\n    srun" in script
    assert "--resume" not in script  # a requeued attempt resumes through KDKIT_RESUME=auto (the wrapper's)
    script = orch.submit_gat_training("synthetic", "teacher", run_name="g", dry_run=True, signal_grace=300,
                                      max_requeues=0)
    assert "#SBATCH --signal=B:USR1@300\n" in script and "--max-requeues 0 --" in script
    script = orch.submit_notebook(NOTEBOOK, {}, run_name="nb", dry_run=True, signal_grace=0)
    assert "--signal" not in script and "#SBATCH --requeue\n" in script  # 0: no warning signal
    assert "exec python -m kdkit.cluster.requeue --max-requeues 3 -- \\\n    papermill" in script
    for bad in ({"signal_grace": -1}, {"max_requeues": "3; id"}, {"signal_grace": True}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            orch.submit_gat_training("synthetic", "teacher", run_name="g", dry_run=True, **bad)


def test_presets_set_signal_grace_and_max_requeues(tmp_path, monkeypatch):
    (tmp_path / "presets.ini").write_text("[long]\ntime = 2-00:00:00\nsignal_grace = 900\nmax_requeues = 10\n"
                                          "[bad]\nsignal_grace = soon\n")
    monkeypatch.setenv("KDKIT_SLURM_TEMPLATES", str(tmp_path))
    with pytest.raises(ValueError, match=r"presets.ini \[bad\]: .*signal_grace"):
        load_presets()
    (tmp_path / "presets.ini").write_text("[long]\ntime = 2-00:00:00\nsignal_grace = 900\nmax_requeues = 10\n")
    script = FabricSlurmTrainingOrchestrator(tmp_path / "runs", preset="long", venv=None).submit_gat_training(
        "synthetic", "teacher", run_name="g", dry_run=True)
    assert "#SBATCH --signal=B:USR1@900\n" in script and "--max-requeues 10 --" in script


@pytest.mark.parametrize("state, exit_code, ok", [
    ("TIMEOUT", "0:15", True), ("PREEMPTED", "0:0", True), ("NODE_FAIL", "0:0", True),
    ("FAILED", "85:0", True),   # stopped with a checkpoint after its last requeue
    ("FAILED", "1:0", False), ("COMPLETED", "0:0", False), ("CANCELLED", "0:15", False),
    ("CANCELLED", "last.pt", True)])  # cancelled by hand after it saved a checkpoint: continued on request
def test_resubmit_resumes_only_stopped_jobs(orch, fake, state, exit_code, ok):
    job = orch.submit_gat_training("synthetic", "teacher", run_name="r")
    if exit_code == "last.pt":
        (orch.runs_dir / "r" / "checkpoints").mkdir(parents=True)
        (orch.runs_dir / "r" / "checkpoints" / "last.pt").write_bytes(b"x")
        exit_code = "0:15"
    fake.states[job], fake.exit_codes[job] = [state], exit_code
    if not ok:
        with pytest.raises(ValueError, match=rf"job {job} is {state} \(exit code {exit_code}\): only a job that ended "
                                             r"NODE_FAIL, PREEMPTED, TIMEOUT, FAILED with exit code 85:0 .*, or "
                                             r"CANCELLED with a last.pt in its run folder"):
            orch.resubmit(job)
        assert [c[0] for c in fake.calls].count("sbatch") == 1
        return
    new = orch.resubmit(job, time="08:00:00")  # more time than the script's own limit
    assert fake.calls[-1] == ["sbatch", "--parsable", "--time=08:00:00", "--export=ALL,KDKIT_RESUME=auto",
                              str(orch.runs_dir / "r" / "job.sbatch")]
    jobs = orch.registry.load()
    assert jobs[new]["resubmitted_from"] == job and jobs[job]["resubmitted_as"] == new
    assert jobs[new]["run_dir"] == jobs[job]["run_dir"] and jobs[new]["log"].endswith(f"slurm-{new}.out")
    assert jobs[new]["state"] == "PENDING"


def test_resubmit_refuses_array_tasks_and_foreign_jobs(orch, fake):
    with pytest.raises(ValueError, match="array task: `kdkit sweep retry-failed"):
        orch.resubmit("12_3")
    fake.states["77"], fake.exit_codes["77"] = ["TIMEOUT"], "0:0"
    with pytest.raises(FileNotFoundError, match="job 77: no job.sbatch in its run folder"):
        orch.resubmit("77")


@pytest.mark.parametrize("limit, seconds", [("5", 300), ("05:30", 330), ("02:00:00", 7200), ("1-00", 86400),
                                            ("1-02:03", 93780), ("1-02:03:04", 93784), ("INFINITE", None), (None, None)])
def test_slurm_time_limits_in_seconds(limit, seconds):
    assert slurm.slurm_seconds(limit) == seconds


def test_warning_is_at_most_half_the_time_limit(orch):
    assert slurm.signal_grace_for(120, "1") == 30            # else the run would stop at its first step
    assert slurm.signal_grace_for(120, "02:00:00") == 120 and slurm.signal_grace_for(0, "5") is None
    script = orch.submit_gat_training("synthetic", "teacher", run_name="g", dry_run=True, time="1")
    assert "#SBATCH --signal=B:USR1@30\n" in script


def test_a_student_given_a_queued_teachers_checkpoint_waits_for_that_job(orch, fake, tmp_path):
    """`kdkit train --type student --teacher runs/<teacher>/checkpoints/best.pt --use-slurm` while the
    teacher's job is still queued: the student is chained on it (afterok), not refused."""
    teacher = orch.submit_gat_training("synthetic", "teacher", run_name="t")
    ckpt = orch.runs_dir / "t" / "checkpoints" / "best.pt"
    student = orch.submit_run({"dataset": "synthetic", "type": "student", "teacher": str(ckpt), "run_name": "s"})
    assert f"#SBATCH --dependency=afterok:{teacher}\n" in fake.scripts[student]
    assert orch.registry.load()[student]["dependency"] == f"afterok:{teacher}"
    # the teacher's first epoch wrote a best.pt while its job still runs: the student still waits (a new user's
    # student started beside its running teacher and distilled whatever best.pt was there)
    fake.states[teacher] = ["RUNNING"]
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(b"epoch 1")
    running = orch.submit_run({"dataset": "synthetic", "type": "student", "teacher": str(ckpt), "run_name": "s1"})
    assert f"#SBATCH --dependency=afterok:{teacher}\n" in fake.scripts[running]
    fake.states[teacher] = ["COMPLETED"]  # done: the checkpoint is final, no dependency
    done = orch.submit_run({"dataset": "synthetic", "type": "student", "teacher": str(ckpt), "run_name": "s3"})
    assert "--dependency" not in fake.scripts[done]
    ckpt.unlink()
    fake.states[teacher] = ["FAILED"]  # a teacher job that ended without the checkpoint: refused, named
    with pytest.raises(FileNotFoundError, match=r"teacher checkpoint .*t/checkpoints/best.pt does not exist \(nor is "
                                                r"it the checkpoint of a queued or running job"):
        orch.submit_run({"dataset": "synthetic", "type": "student", "teacher": str(ckpt), "run_name": "s2"})


def test_sizes_that_only_fail_together_are_refused_before_sbatch(orch, fake):
    with pytest.raises(ValueError, match=r"embedding_dim=16 \(the gat teacher preset's\) must be below hidden=16"):
        orch.submit_run({"dataset": "synthetic", "hidden": 16, "layers": 2, "run_name": "bad"})
    assert not [c for c in fake.calls if c[0] == "sbatch"] and not (orch.runs_dir / "bad").exists()


def test_default_slurm_run_name_reads_like_a_local_one(orch, fake):
    job = orch.submit_gat_training("synthetic", "student")
    assert orch.registry.load()[job]["name"].startswith("synthetic_gat_student_")


def test_a_finished_job_does_not_keep_the_reason_of_its_pending_state(orch, fake):
    job = orch.submit_gat_training("synthetic", "teacher", run_name="why")
    orch._refresh(job, orch.registry.load()[job], {"job_id": job, "state": "PENDING", "reason": "Dependency"})
    assert orch.registry.load()[job]["reason"] == "Dependency"
    orch._refresh(job, orch.registry.load()[job], {"job_id": job, "state": "COMPLETED", "reason": None})
    assert "reason" not in orch.registry.load()[job]


def test_train_resume_with_use_slurm_points_to_resubmit(capsys):
    from kdkit.cli.main import main

    assert main(["train", "--dataset", "synthetic", "--use-slurm", "--resume", "auto", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "a SLURM job resumes its run folder's last.pt by itself" in err and "`kdkit slurm resubmit JOB`" in err


def test_submission_warns_of_a_stride_gap_and_asks_the_cpus_its_threads_use(capsys, tmp_path):
    """A stride above the window was said only in the job's log, after the queue: now at submission (a
    dry run here)."""
    from kdkit.cli.main import main

    assert main(["train", "--dataset", "synthetic", "--use-slurm", "--window", "50", "--stride", "100", "--dry-run",
                 "--runs-dir", str(tmp_path / "runs")]) == 0
    err = capsys.readouterr().err
    assert "kdkit train: warning: stride 100 > window 50: 50 of every 100 messages fall in no window" in err
    assert main(["train", "--dataset", "synthetic", "--use-slurm", "--window", "50", "--dry-run",
                 "--runs-dir", str(tmp_path / "runs")]) == 0
    assert "stride" not in capsys.readouterr().err  # the stride follows the window
    # --threads N: the job asks N CPUs a task (the cpu preset's 4 stood idle and held up other jobs)
    assert main(["train", "--dataset", "synthetic", "--use-slurm", "--threads", "1", "--dry-run",
                 "--runs-dir", str(tmp_path / "runs")]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --cpus-per-task=1\n" in script and "--threads 1" in script
    assert main(["train", "--dataset", "synthetic", "--use-slurm", "--dry-run", "--runs-dir", str(tmp_path / "runs")]) == 0
    assert "#SBATCH --cpus-per-task=4\n" in capsys.readouterr().out  # the preset's without --threads


def test_cli_status_points_to_the_sweeps_beside_the_jobs(capsys, tmp_path, monkeypatch):
    """A sweep's job arrays are in its own folder, not in slurm_jobs.json: `kdkit slurm status` says where."""
    for name in ("a", "b"):
        (tmp_path / "sweeps" / name).mkdir(parents=True)
        (tmp_path / "sweeps" / name / "sweep.json").write_text("{}")
    args = _parser().parse_args(["slurm", "--runs-dir", str(tmp_path), "status"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"no jobs in {tmp_path}/slurm_jobs.json" in out
    assert "sweeps (2, job arrays not listed here): kdkit sweep status [a, b]" in out


def test_cli_status_of_named_jobs(capsys, tmp_path, monkeypatch, fake):
    """`kdkit slurm status JOB` took no job ID: now the jobs named, with the run folder and log of each;
    a job neither registered nor known to Slurm is said so (exit 1)."""
    import kdkit.cli.slurm as cli_slurm

    orch = FabricSlurmTrainingOrchestrator(tmp_path / "runs", runner=fake, venv=None, workdir=tmp_path)
    job = orch.submit_vgae_training("synthetic", "teacher", run_name="vgae_t")
    other = orch.submit_vgae_training("synthetic", "teacher", run_name="vgae_u")
    fake.states[job] = ["RUNNING"]
    monkeypatch.setattr(cli_slurm, "_orchestrator", lambda args: orch)
    args = _parser().parse_args(["slurm", "--runs-dir", str(tmp_path / "runs"), "status", job])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == [job, "RUNNING", "vgae_t"] and other not in out
    assert f"run dir: {tmp_path / 'runs' / 'vgae_t'}" in out and "log: " in out
    args = _parser().parse_args(["slurm", "--runs-dir", str(tmp_path / "runs"), "status", job, "999", "--json"])
    assert args.func(args) == 1
    infos = json.loads(capsys.readouterr().out)
    assert [i["job_id"] for i in infos] == [job, "999"] and infos[1]["state"] == "UNKNOWN"
    args = _parser().parse_args(["slurm", "--runs-dir", str(tmp_path / "runs"), "status", "999"])
    assert args.func(args) == 1
    assert "not in " in capsys.readouterr().out


def test_a_refused_submission_leaves_no_run_folder(tmp_path, fake):
    """sbatch refused (no controller): the run folder held a job.sbatch of a job that does not exist."""
    def refusing(argv):
        if argv[0] == "sbatch":
            return subprocess.CompletedProcess(argv, 1, "", "sbatch: error: Unable to contact slurm controller")
        return fake(argv)

    orch = FabricSlurmTrainingOrchestrator(tmp_path / "runs", runner=refusing, venv=None, workdir=tmp_path)
    with pytest.raises(SlurmError, match=r"sbatch rejected the job \(sbatch: error: Unable to contact slurm "
                                         r"controller\); nothing was submitted"):
        orch.submit_vgae_training("synthetic", "teacher", run_name="v")
    assert not (tmp_path / "runs" / "v").exists()
    (tmp_path / "runs" / "w").mkdir(parents=True)
    (tmp_path / "runs" / "w" / "notes.txt").write_text("mine")  # a folder the user made: kept, with their file
    with pytest.raises(SlurmError):
        orch.submit_vgae_training("synthetic", "teacher", run_name="w")
    assert [p.name for p in (tmp_path / "runs" / "w").iterdir()] == ["notes.txt"]


def test_cli_train_slurm_options_without_use_slurm_and_a_failed_submission(capsys, tmp_path, monkeypatch):
    """`--dry-run` without --use-slurm trained for real; a refused submission ended in a traceback."""
    from kdkit.cli.main import main

    runs = str(tmp_path / "runs")
    assert main(["train", "--dataset", "synthetic", "--epochs", "1", "--dry-run", "--runs-dir", runs]) == 2
    err = capsys.readouterr().err
    assert "--dry-run applies to a SLURM job only: add --use-slurm" in err and not (tmp_path / "runs").exists()
    assert main(["train", "--dataset", "synthetic", "--time", "01:00:00", "--partition", "gpu", "--runs-dir", runs]) == 2
    assert "--partition, --time apply to a SLURM job only" in capsys.readouterr().err
    # the batch sizer's settings without the batch sizer: said, not silently without effect
    assert main(["train", "--dataset", "synthetic", "--config", '{"target_memory_usage": 0.7, "max_batch_size": 256}',
                 "--use-slurm", "--dry-run", "--runs-dir", runs]) == 0
    assert ("kdkit train: warning: target_memory_usage, max_batch_size only steer the batch sizer: add "
            "--optimize-batch-size (now batch_size 64 is used as it is)") in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert main(["train", "--dataset", "synthetic", "--use-slurm", "--runs-dir", runs]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("kdkit train: sbatch not found") and "Traceback" not in err
    left = sorted(p.name for p in (tmp_path / "runs").rglob("*")) if (tmp_path / "runs").exists() else []
    assert left == []  # no run folder of a job that was never submitted


def test_a_job_into_a_folder_holding_a_run_is_refused_or_replaces_it(orch, fake, tmp_path):
    """Every job passed --resume auto: with --overwrite it continued the local run it was to replace
    (that run's last.pt, optimizer and epochs), and without it a reused run name was continued where
    a local kdkit train refuses the folder."""
    run = tmp_path / "runs" / "ow1"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "checkpoints" / "last.pt").write_bytes(b"old")
    with pytest.raises(FileExistsError, match=r"ow1 already holds a run \(config.json, checkpoints/last.pt\).*"
                                              r"--overwrite"):
        orch.submit_gat_training("synthetic", "teacher", run_name="ow1")
    assert not [c for c in fake.calls if c[0] == "sbatch"] and (run / "checkpoints" / "last.pt").is_file()
    job = orch.submit_gat_training("synthetic", "teacher", run_name="ow1", config={"overwrite": True})
    script = fake.scripts[job]
    assert "--overwrite" in script and "--resume" not in script
    assert not (run / "checkpoints" / "last.pt").exists() and not (run / "config.json").exists()


def test_the_teachers_newest_job_is_found_when_job_ids_gain_a_digit(tmp_path):
    """The registry is saved with its job IDs sorted as text: a teacher timed out as job 99 and
    resubmitted as 100 (pending) was looked up as 99, ended, so its student got no afterok and
    started on the partial best.pt."""
    import json
    import subprocess

    runs = tmp_path / "runs"
    teacher = runs / "t1"
    (teacher / "checkpoints").mkdir(parents=True)
    (teacher / "checkpoints" / "best.pt").write_bytes(b"partial")
    jobs = {"99": {"kind": "train", "run_dir": str(teacher), "state": "TIMEOUT", "resubmitted_as": "100"},
            "100": {"kind": "train", "run_dir": str(teacher), "state": "PENDING", "resubmitted_from": "99"}}
    (runs / "slurm_jobs.json").write_text(json.dumps({"version": 1, "jobs": jobs}, sort_keys=True))

    def runner(argv):
        state = "PENDING" if argv[-1] == "100" else "TIMEOUT"
        return subprocess.CompletedProcess(argv, 0, f"JobId={argv[-1]} JobState={state} Reason=None ExitCode=0:0", "")

    orch = FabricSlurmTrainingOrchestrator(runs_dir=runs, runner=runner, venv=None, workdir=tmp_path)
    assert orch.teacher_job(teacher / "checkpoints" / "best.pt") == "100"
    script = orch.submit_gat_training("synthetic", "student", teacher=teacher / "checkpoints" / "best.pt",
                                      run_name="s1", dry_run=True)
    assert "#SBATCH --dependency=afterok:100\n" in script


def test_a_tilde_in_data_root_or_teacher_is_the_home_folder(orch, tmp_path, monkeypatch):
    """Local runs read ~ as the home folder; the job got '<cwd>/~/can-data' and failed in the queue."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "t").mkdir(parents=True)
    (tmp_path / "home" / "t" / "best.pt").write_bytes(b"x")
    script = orch.submit_gat_training("synthetic", "student", teacher="~/t/best.pt", run_name="s",
                                      config={"data_root": "~/can-data"}, dry_run=True)
    assert f"--data-root {tmp_path}/home/can-data" in script and f"--teacher {tmp_path}/home/t/best.pt" in script


def _submit_unnamed(runs: str, barrier, out) -> None:
    import os
    import subprocess

    def runner(argv):
        if argv[0] == "sbatch":
            return subprocess.CompletedProcess(argv, 0, f"{os.getpid()}\n", "")
        return subprocess.CompletedProcess(argv, 1, "", "no")

    orch = FabricSlurmTrainingOrchestrator(runs, runner=runner, venv=None, workdir=runs)
    barrier.wait()
    try:
        orch.submit_gat_training("synthetic", "teacher")
        out.put("ok")
    except Exception as err:  # noqa: BLE001 (the test names it)
        out.put(f"{type(err).__name__}: {err}")


def test_submissions_started_in_the_same_second_get_names_of_their_own(tmp_path):
    """Default run names are the time to the second: four submissions at once got one name, and all
    but one were refused ("already holds a job") though none had chosen a name."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_submit_unnamed, args=(str(tmp_path / "runs"), barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results == ["ok"] * 4
    names = sorted(p.name for p in (tmp_path / "runs").iterdir() if p.is_dir())
    assert len(names) == 4 and all((tmp_path / "runs" / n / "job.sbatch").is_file() for n in names)
