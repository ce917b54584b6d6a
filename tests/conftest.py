"""Shared fixtures. Tests that need a prerequisite (real data, SLURM, a browser) may skip
outside CI when it is missing, but under ``CI=true`` a missing prerequisite is a failure."""
from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
import torch
import torch_geometric  # noqa: F401  (imported once here, for the freeze below)

import kdkit.workflows.run  # noqa: F401

# The imports of torch, PyG and kdkit leave ~430,000 objects that live as long as the test process.
# Frozen out of the garbage collector's reach, the full collections that tests and the trainer's
# phases run skip them (as the kdkit command does): tests/test_{models,distill,fused_attention,
# trainer}.py in one process spent 12.5-14.0 s in full collections, 6.0 s frozen (32-40 -> 21-23 s).
gc.collect()
gc.freeze()

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip outside CI, fail under CI=true, when a prerequisite is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"prerequisite missing under CI=true: {reason}")
    pytest.skip(reason)


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOTS = REPO / "runs" / "screenshots"


def write_text_file(path: Path, text: str) -> Path:
    """``text`` written to ``path``, gzip-compressed when the name ends in ``.gz``."""
    import gzip

    path.write_bytes(gzip.compress(text.encode()) if path.name.endswith(".gz") else text.encode())
    return path


# The public layouts as small fixtures (tests of the readers, column mappings and streamed reading).

HCRL_ROWS = [
    "1478198376.389427,0316,8,05,21,68,09,21,21,00,6f,R",
    "1478198376.389636,018f,8,fe,5b,00,00,00,3c,00,00,T",
    "1478198376.389864,0260,2,19,21,R",          # DLC 2: the flag sits in column 5
    "1478198376.390000,02a0,0,T",                # DLC 0
    "1478198376.390200,0000,8,00,00,00,00,00,00,00,00,T",
]
"""HCRL Car-Hacking CSV rows (no header; ``Timestamp,CAN ID,DLC,DATA...,Flag``)."""

HCRL_BAD = {
    "flag not R/T": ("1478198376.4,0316,2,05,21,X", "flag must be R or T"),
    "DLC mismatch": ("1478198376.4,0316,3,05,21,R", "DLC does not match the number of data bytes"),
    "extra field": ("1478198376.4,0316,8,00,00,00,00,00,00,00,00,R,R", "expected 4 + DLC fields"),
    "missing fields": ("1478198376.4,0316,R", "expected 4 + DLC fields"),
    "bad hex byte": ("1478198376.4,0316,2,05,2G,R", "data bytes are not 2-digit hex"),
    "bad hex ID": ("1478198376.4,03X6,2,05,21,R", "CAN ID is not 1-8 hex digits"),
    "na ID": ("1478198376.4,na,2,05,21,R", "CAN ID is not 1-8 hex digits"),
    "text timestamp": ("abc,0316,2,05,21,R", "timestamp is not a number"),
    "ID above 0x7FF without 8 digits": ("1478198376.4,0800,2,05,21,R", "CAN ID '0800': 0x800 is above 0x7FF"),
    "timestamp going backwards": ("1478198376.3,0316,2,05,21,T", "timestamp '1478198376.3' goes backwards: earlier "
                                                                 "than '1478198376.389864' on line 3"),
    "negative timestamp": ("-1478198376.3,0316,2,05,21,R", "timestamp '-1478198376.3' is negative"),
}
"""Bad HCRL CSV rows: kind -> (row, the words of its error when it is line 4 after ``HCRL_ROWS[:3]``)."""

DAGA_HEADER = "timestamp,CAN_ID,DLC,PAYLOAD_HEX,PAYLOAD_BIN,ANOMALY"
ROAD_HEADER = "Time,Id,Byte1,Byte2,Byte3,Byte4,Byte5,Byte6,Byte7,Byte8,Label"


def _bits(hex_payload: str) -> str:
    return "".join(f"{int(hex_payload[i:i + 2], 16):08b}" for i in range(0, len(hex_payload), 2)) or "0"


def daga_rows(n: int = 40, attack_every: int = 0, t0: float = 0.0) -> list[str]:
    """DAGA-like rows: relative timestamps (one in scientific notation), unpadded hex IDs, DLC in
    bits, FALSE/True labels mixed as in the published files."""
    rows = []
    for i in range(n):
        cid = ["10", "1D0", "291", "390"][i % 4]
        payload = f"{i:016X}"
        attack = attack_every and i % attack_every == attack_every - 1
        ts = "9e-06" if i == 1 and t0 == 0 else repr(round(t0 + i * 0.001, 6))
        if attack:
            cid, payload = "290.0", "0"  # the injected rows' quirks: a float ID, an all-zero payload as '0'
        rows.append(f"{ts},{cid},64,{payload},{_bits(payload)},{'True' if attack else 'False'}")
    return rows


def write_zip(path: Path, header: str, rows: list[str]) -> Path:
    """A zip holding one recording (as DAGA publishes its traces), deflated."""
    import zipfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(path.name.removesuffix(".zip") + ".txt", "\n".join([header, *rows]) + "\n")
    return path


def read_outcome(read) -> tuple | str:
    """What ``read()`` gives, comparable across readers: the frames and counts of its Messages,
    or the text of the DataFormatError it raised."""
    from kdkit.data.readers import DataFormatError

    try:
        m = read()
    except DataFormatError as err:
        return str(err)
    return (m.timestamp.tolist(), m.can_id.tolist(), m.dlc.tolist(), m.payload.tolist(), m.skipped_rows,
            m.skipped_examples, m.dropped_frames)


def sync_playwright_or_require():
    """playwright's ``sync_playwright`` for the headless-Chromium tests; under CI the Debian
    Chromium is installed first if missing (``.ci/system-deps.sh``)."""
    import subprocess

    if IN_CI and not Path(CHROMIUM).exists():
        subprocess.run(["bash", str(REPO / ".ci" / "system-deps.sh")], check=False, timeout=900)
    require(Path(CHROMIUM).exists(), f"{CHROMIUM} missing: apt-get install chromium (or bash .ci/system-deps.sh)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "playwright (python) not installed: pip install -e '.[test]'")
    return sync_playwright


SLURM_TEST_FILES = ("test_requeue_cluster.py", "test_slurm_cluster.py", "test_sweep_cluster.py")
"""The test files that use the real SLURM cluster (the ``slurm_cluster`` fixture)."""

DDP_TEST_FILES = ("test_ddp.py", "test_spawn_ranks.py")
"""The test files that start several processes of one DDP run on this machine: one work unit, so that
two runs never rendezvous at once (a port taken by one run between another's choosing it and binding
it would join the wrong group; a CI run once hung for 600 s in test_ddp)."""

SHARED_FIXTURE_FILES = ("test_notebooks.py", "test_report_browser.py", "test_fusion.py", "test_stream.py",
                        "test_realdata.py", "test_preemption.py", "test_runs.py", "test_calibrate.py",
                        "test_evaluate_input.py", "test_gateway_notebook.py", "test_simulate.py")
"""Test files whose module-scoped fixtures are expensive (notebook runs through papermill, trained
runs, an exported package, the real dataset prepared): each file's tests go to one pytest-xdist
worker, so that the fixture is built once, not once on every worker that draws one of its tests."""

ALONE = ("tests/test_notebooks.py::test_nbval_runs_every_notebook_with_its_stored_defaults",)
"""Tests of :data:`SHARED_FIXTURE_FILES` that use none of the file's expensive fixtures: units of
their own (the nbval run alone takes ~3 min)."""

HEAVY_FIRST = (
    "slurm-cluster", "test_notebooks.py", "tests/test_notebooks.py::test_nbval_runs_every_notebook_with_its_stored_defaults",
    "test_report_browser.py", "tests/test_sweep.py::test_local_pool_runs_collects_and_retries_only_the_failed_task",
    "tests/test_trainer.py::test_compiled_forward_trains_and_saves_plain_keys", "test_fusion.py",
    "tests/test_speedups.py::test_compiled_gat_fit_keeps_the_module_and_matches_checkpoint",
    "tests/test_sweep.py::test_local_sweep_of_the_student_notebook",
    "tests/test_fusion_export.py::test_export_cli_fusion_student_scores_like_window_score", "test_stream.py",
    "test_gateway_notebook.py", "tests/test_quality_bench.py::test_quality_over_two_seeds_on_synthetic", "test_runs.py",
    "exported-student", "tests/test_scaling_bench.py::test_one_round_of_real_runs_on_synthetic",
    "tests/test_own_data.py::test_train_evaluate_calibrate_export_on_a_spec_dataset",
    "tests/test_export_standalone.py::test_export_with_only_a_calibrated_checkpoint",
    "tests/test_quality_bench.py::test_fusion_ablation_refits_combiners_on_validation_and_reproduces_the_run",
)
"""Work units handed out before the others, longest first (durations of the CI runs on the 2-core
VM): the longest units start early and the short tests fill the end, instead of a 3-minute test
drawn last by one worker while the other idles."""


_WARM_KERNELS = """
import os, sys, tempfile
with tempfile.TemporaryDirectory() as tmp:
    os.environ["KDKIT_SYNTHETIC_ROOT"] = os.path.join(tmp, "synthetic-seed{seed}")
    os.environ["KDKIT_CACHE_DIR"] = os.path.join(tmp, "cache")
    from kdkit.config import make_config
    from kdkit.workflows.run import train
    for model in ("gat", "vgae"):
        train(make_config(model=model, type="student", dataset="synthetic", hidden=16, layers=2, heads=2,
                          embedding_dim=4, batch_size=64, epochs=1, precision="32-true", save_compat=False,
                          compile=False, runs_dir=os.path.join(tmp, "runs"), run_name=model), progress=False)
"""


def pytest_configure(config):
    """Before pytest-xdist starts its workers: load kdkit's numba kernels into their on-disk cache
    once, in a subprocess (a short GAT and VGAE run on synthetic data; ~10-30 s on a fresh clone,
    which the workers then do not spend compiling).

    It was added when ``test_preemption``'s bit-for-bit resume test failed in 3 of 12 runs with the
    kernels compiled during the session (a fresh clone, as in CI) and in none with them cached. The
    cause turned out to be the heap, not the compile: the layer-tail kernel's row sums took another
    path when a row buffer landed just after its input. That was fixed on 2026-12-06 (kdkit/models/norm_act.py,
    docs/PREEMPTION.md "Limits"). The warm-up stays because it saves each worker a compile. Skipped
    without workers (``-n 0``) and when only collecting."""
    if hasattr(config, "workerinput") or not config.getoption("numprocesses", None) or config.getoption("collectonly"):
        return
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _WARM_KERNELS], capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:  # the tests will show what is wrong; say it here too
        print(f"conftest: loading the numba kernels failed:\n{proc.stderr[-2000:]}", file=sys.stderr)


def pytest_collection_modifyitems(config, items):
    """A test on the real SLURM cluster must sit in one of :data:`SLURM_TEST_FILES`."""
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()) and item.path.name not in SLURM_TEST_FILES:
            raise pytest.UsageError(f"{item.nodeid} uses the SLURM cluster: add {item.path.name} to SLURM_TEST_FILES in "
                                    f"tests/conftest.py, so that pytest-xdist runs it on the cluster's worker")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``make test`` runs one pytest-xdist worker per core. Every test on the real SLURM cluster
    goes to one worker: the cluster is this machine's only one, some tests restart its
    controller, and the worker that started it stops it when its session ends. (The
    ``xdist_group`` mark does the same but is ignored with pytest 9.2 and xdist 3.8:
    pytest-dev/pytest-xdist#1386.) The cluster's tests are one work unit, and so are the tests of
    each of :data:`SHARED_FIXTURE_FILES` (but those in :data:`ALONE`), and the
    :data:`EXPORTED_STUDENT_TESTS`; every other test is a unit
    of its own, as with ``--dist load``. Units go out in the order of :data:`HEAVY_FIRST`, then
    the rest in collection order."""
    if config.getvalue("dist") not in ("load", "loadgroup"):
        return None
    from xdist.scheduler import LoadGroupScheduling

    rank = {scope: i for i, scope in enumerate(HEAVY_FIRST)}

    class ClusterTestsOnOneWorker(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
            if file in SLURM_TEST_FILES:
                return "slurm-cluster"
            if file in DDP_TEST_FILES:
                return "ddp"
            if file in SHARED_FIXTURE_FILES and nodeid not in ALONE:
                return file
            if nodeid.split("[", 1)[0] in EXPORTED_STUDENT_TESTS:
                return "exported-student"
            return nodeid

        def _assign_work_unit(self, node) -> None:
            heaviest = min(self.workqueue, key=lambda scope: rank.get(scope, len(rank)))
            self.workqueue.move_to_end(heaviest, last=False)  # min() keeps collection order among the rest
            super()._assign_work_unit(node)

    return ClusterTestsOnOneWorker(config, log)


@pytest.fixture(scope="session")
def kdkit_env(tmp_path_factory):
    """Session-wide synthetic data and graph cache in a temp dir (env vars kdkit reads)."""
    base = tmp_path_factory.mktemp("kdkit_env")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDKIT_SYNTHETIC_ROOT", str(base / "synthetic-seed{seed}"))
        mp.setenv("KDKIT_CACHE_DIR", str(base / "cache"))
        yield base


@pytest.fixture(scope="session")
def synthetic(kdkit_env):
    """The prepared built-in synthetic dataset (simulated once per session)."""
    from kdkit.data.datasets import prepare

    return prepare("synthetic")


def _shared_root() -> Path | None:
    for cand in (os.environ.get("KDKIT_DATA_ROOT"), REPO.parent / "shared" / "data" / "can-train-and-test"):
        if cand and (Path(cand) / "hcrl-sa").is_dir():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def shared_data_root() -> Path:
    """``../shared/data/can-train-and-test`` (or $KDKIT_DATA_ROOT) holding the real hcrl-sa copy."""
    root = _shared_root()
    require(root is not None, "real data ../shared/data/can-train-and-test/hcrl-sa not found")
    return root


# ---- SLURM (kdkit/slurm.py, tests/test_slurm_cluster.py) ---------------------------------
@pytest.fixture(scope="session")
def slurm_cluster():
    """A running one-node SLURM cluster on this machine (``.ci/slurm-cluster.sh start``).

    Uses the cluster if it already runs. Otherwise starts it (installing the Debian
    packages under CI), and stops it after the session unless ``KDKIT_SLURM_KEEP=1``.
    Outside CI it skips when Slurm is not installed or we are not root.
    """
    import shutil
    import subprocess

    script = REPO / ".ci" / "slurm-cluster.sh"
    if subprocess.run(["bash", str(script), "status"], capture_output=True).returncode == 0:
        yield script
        return
    require(IN_CI or (shutil.which("slurmctld") is not None and os.geteuid() == 0),
            "no local SLURM: needs root and `apt-get install slurmctld slurmd slurm-client munge`")
    proc = subprocess.run(["bash", str(script), "start"], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"{script} start failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    yield script
    if not os.environ.get("KDKIT_SLURM_KEEP"):
        subprocess.run(["bash", str(script), "stop"], capture_output=True, timeout=120)


def _save_student_checkpoint(synthetic, path: Path) -> Path:
    from kdkit.config import make_config
    from kdkit.data.graphs import EDGE_FEATURES, NODE_FEATURES
    from kdkit.training.checkpoint import CHECKPOINT_FORMAT
    from kdkit.workflows.run import build_student_or_teacher

    cfg = make_config(model="gat", type="student", dataset="synthetic", precision="32-true")
    model = build_student_or_teacher(cfg, synthetic)
    torch.save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "model_config": model.config,
                "train_config": cfg.to_dict(), "vocab": synthetic.vocab.to_list(), "node_features": list(NODE_FEATURES),
                "edge_features": list(EDGE_FEATURES), "threshold": 0.5}, path)
    return path


@pytest.fixture()
def student_checkpoint(synthetic, tmp_path):
    """A (random-weight) student checkpoint for the synthetic dataset, as FabricTrainer writes it."""
    return _save_student_checkpoint(synthetic, tmp_path / "student.pt")


EXPORTED_STUDENT_TESTS = ("tests/test_export.py::test_export_cli_package_matches_model",
                          "tests/test_bench_train.py::test_bench_infer_smoke",
                          "tests/test_native.py::test_export_writes_native_weights_the_detector_uses",
                          "tests/test_native.py::test_native_weights_of_another_export_are_never_used",
                          "tests/test_native.py::test_a_package_beside_another_exports_metadata_is_refused",
                          "tests/test_native.py::test_an_export_stopped_midway_leaves_the_previous_export_whole")
"""The tests of the ``exported_student`` fixture (each of its parameters): one xdist unit, so that the
package is compiled once."""


@pytest.fixture(scope="session")
def exported_student(synthetic, tmp_path_factory):
    """The :func:`student_checkpoint` (seeded: the same weights) exported by ``kdkit export
    --json`` once per session (the AOT compile is ~1 min on a small CPU): (the checkpoint, the
    ``.pt2`` package, the command's JSON output)."""
    import contextlib
    import io
    import json

    from kdkit.cli.main import main

    base = tmp_path_factory.mktemp("exported_student")
    checkpoint = _save_student_checkpoint(synthetic, base / "student.pt")
    out = base / "gateway" / "student.pt2"
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--json"]) == 0
    return checkpoint, out, json.loads(stdout.getvalue())


def load_benchmark(name: str):
    """A script of ``benchmarks/`` imported as a module (they are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"kdkit_bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stop_at(at: int):
    """A :class:`kdkit.training.preemption.StopRequest` that says "stop" at its ``at``-th question
    (0-based; -1: never). The trainer asks before every loader batch, after an epoch's last batch and
    after an epoch's checkpoints (except the last epoch's)."""
    from kdkit.training.preemption import StopRequest

    class StopAt(StopRequest):
        def __init__(self):
            super().__init__(stop_file=None, signals=False)
            self.at, self.asked = at, 0

        def requested(self) -> bool:
            self.asked += 1
            return self.asked - 1 == self.at

    return StopAt()
