"""The notebooks: committed stripped, a flat parameters cell, nbval over the stored defaults,
and papermill runs with other parameters whose ``metrics.json`` is checked.

    python -m pytest tests/test_notebooks.py               # all of it (a few minutes on 2 cores)
    python -m pytest --nbval-lax --nbval-current-env notebooks/   # what test_nbval runs
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import REPO, require

from kdkit.reporting import records as report

NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = ("teacher", "student", "benchmark", "gateway")
KERNEL = "kdkit"


def _nb(name: str):
    return nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)


def hygiene_problems(nb) -> list[str]:
    """What keeps a notebook from being committed: outputs, counts, run metadata, a bad parameters cell."""
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"cell {i} has outputs")
        if cell.get("execution_count") is not None:
            problems.append(f"cell {i} has execution_count {cell.execution_count}")
        if "papermill" in cell.metadata or "execution" in cell.metadata:
            problems.append(f"cell {i} has run metadata")
    if "papermill" in nb.metadata or "widgets" in nb.metadata:
        problems.append("notebook metadata has papermill/widget state")
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    if len(tagged) != 1:
        problems.append(f"{len(tagged)} cells tagged 'parameters' (need exactly one)")
    if any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells):
        problems.append("an injected-parameters cell (an executed copy, not the source)")
    if nb.metadata.get("kernelspec", {}).get("name") != KERNEL:
        problems.append(f"kernelspec is not {KERNEL!r}")
    return problems


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_stripped(name):
    assert hygiene_problems(_nb(name)) == []


def test_hygiene_check_catches_an_executed_notebook():
    nb = _nb("teacher")
    cell = next(c for c in nb.cells if c.cell_type == "code")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="x")]
    cell.execution_count = 3
    nb.metadata["papermill"] = {}
    assert hygiene_problems(nb) == ["cell 1 has outputs", "cell 1 has execution_count 3",
                                    "notebook metadata has papermill/widget state"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_cell_is_flat_literals_with_a_comment_each(name):
    from papermill.inspection import inspect_notebook

    nb = _nb(name)
    idx = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    src = nb.cells[idx].source
    names = []
    for node in ast.parse(src).body:
        assert isinstance(node, ast.AnnAssign), f"{name}: line {node.lineno} is not `name: type = literal`"
        value = ast.literal_eval(node.value)  # raises on anything but a literal
        ann = node.annotation.value if isinstance(node.annotation, ast.Constant) else node.annotation.id
        allowed = [ann.removeprefix("Optional[").removesuffix("]"), "NoneType"] if ann.startswith("Optional[") else [ann]
        assert type(value).__name__ in allowed, f"{name}: {node.target.id} is not a {ast.unparse(node.annotation)}"
        names.append(node.target.id)
    inferred = inspect_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"))
    assert list(inferred) == names  # papermill --help-notebook sees every parameter
    assert all(p["help"] for p in inferred.values()), "every parameter needs a comment (its --help-notebook text)"
    assert "run_dir" in names and "dataset" in names
    assert "parameters" not in nb.cells[idx + 1].metadata.get("tags", [])


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_story_is_numbered_and_cells_are_short(name):
    nb = _nb(name)
    heads = [line for c in nb.cells if c.cell_type == "markdown" for line in c.source.splitlines() if line.startswith("## ")]
    assert heads and [h.split(".")[0] for h in heads] == [f"## {i}" for i in range(1, len(heads) + 1)]
    tagged = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    for i, c in enumerate(nb.cells):
        if c.cell_type == "code" and i > tagged + 1:  # the derived-values cell may be longer
            assert len(c.source.splitlines()) <= 6, f"{name} cell {i} is long: move the logic into kdkit"


# ----------------------------------------------------------------------------- execution
@pytest.fixture(scope="module")
def nb_env(tmp_path_factory):
    """Environment of notebook kernels: synthetic data and graph cache in a temp dir."""
    from jupyter_client.kernelspec import find_kernel_specs

    require(KERNEL in find_kernel_specs(),
            f"no Jupyter kernel {KERNEL!r}: run `{sys.executable} -m ipykernel install --sys-prefix --name {KERNEL}`")
    base = tmp_path_factory.mktemp("nb_env")
    env = dict(os.environ, KDKIT_SYNTHETIC_ROOT=str(base / "synthetic-seed{seed}"), KDKIT_CACHE_DIR=str(base / "cache"),
               OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return base, env


def _execute(name: str, out_dir: Path, env: dict, **parameters) -> dict:
    """Run one notebook through papermill (kernel ``kdkit``) in a subprocess; return its metrics.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "papermill", str(NOTEBOOK_DIR / f"{name}.ipynb"), str(out_dir / f"{name}.ipynb"),
           "-k", KERNEL, "--no-progress-bar", "-p", "run_dir", str(out_dir)]
    for k, v in parameters.items():
        cmd += ["-p", k, str(v)]
    proc = subprocess.run(cmd, cwd=out_dir, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"papermill {name} failed:\n{proc.stderr[-4000:]}"
    return json.loads((out_dir / "metrics.json").read_text())


def _check_figures(out_dir: Path, metrics: dict, expected: set[str]) -> None:
    assert expected <= set(metrics["figures"])
    for fig in metrics["figures"]:
        assert (out_dir / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _check_f1(f1: dict) -> None:
    assert f1 and all(0.0 <= v <= 1.0 for v in f1.values())


@pytest.fixture(scope="module")
def vgae_teacher(nb_env):
    base, env = nb_env
    out = base / "teacher_vgae"
    return out, _execute("teacher", out, env, model="vgae", epochs=1, seed=1, hidden=32, layers=2, heads=2)


@pytest.mark.notebook
@pytest.mark.slow
def test_teacher_notebook_with_other_parameters(vgae_teacher):
    out, m = vgae_teacher
    assert m["notebook"] == "teacher" and m["model"] == "vgae" and m["type"] == "teacher"
    assert m["epochs_run"] == 1 and m["sizes"] == {"hidden": 32, "layers": 2, "heads": 2}
    # every value of the parameters cell as the run had it (injected or default): a table over runs reads them
    assert m["notebook_parameters"]["model"] == "vgae" and m["notebook_parameters"]["seed"] == 1
    assert m["notebook_parameters"]["run_dir"] == str(out) and m["notebook_parameters"]["threads"] == 1
    assert 1_000 < m["parameters"] < 200_000 and m["size_bytes"] >= 4 * m["parameters"]
    _check_f1(m["f1"])
    assert set(m["f1"]) == {r["scenario"] for r in m["tables"]["per_scenario"]["rows"]} - {"overall"}
    assert Path(m["checkpoint"]).is_file() and Path(m["checkpoint"]).is_relative_to(out)
    _check_figures(out, m, {"training_curves.png", "roc_pr.png", "confusion_matrices.png"})
    assert (out / "teacher.ipynb").is_file()


@pytest.fixture(scope="module")
def vgae_student(vgae_teacher, nb_env):
    base, env = nb_env
    out = base / "student_vgae"
    return out, _execute("student", out, env, model="vgae", teacher_checkpoint=vgae_teacher[1]["checkpoint"], epochs=1,
                         kd_alpha=0.5, kd_latent_weight=0.5, seed=2, latency_calls=50)


@pytest.mark.notebook
@pytest.mark.slow
def test_student_notebook_distills_a_given_teacher(vgae_teacher, vgae_student):
    _, tm = vgae_teacher
    out, m = vgae_student
    assert m["notebook"] == "student" and m["kd_alpha"] == 0.5 and m["notebook_parameters"]["kd_latent_weight"] == 0.5
    assert m["teacher"]["checkpoint"] == tm["checkpoint"]  # loaded, not retrained
    assert m["teacher"]["f1"] == pytest.approx(tm["f1"])  # same checkpoint, same data, same scores
    assert m["student_kd"]["kd"] is True and m["student_alone"]["kd"] is False
    assert m["student_kd"]["parameters"] == m["student_alone"]["parameters"] < m["teacher"]["parameters"]
    rows = {r["name"]: r for r in m["tables"]["comparison"]["rows"]}
    assert list(rows) == ["teacher", "student (KD)", "student alone"]
    for r in rows.values():
        assert 0 < r["latency_ms_p50"] <= r["latency_ms_p99"] and r["windows_per_s"] > 0
    assert rows["teacher"]["param_share"] == 1.0 and rows["student (KD)"]["param_share"] < 1.0
    for key in ("teacher", "student_kd", "student_alone"):
        _check_f1(m[key]["f1"])
        assert set(m[key]["scenarios"]) == set(m[key]["f1"])  # per scenario: what the report's headline reads
        for sc in m[key]["scenarios"].values():
            assert {"f1", "mcc", "detection_at_1pct_fpr", "false_positive_rate", "per_attack_type"} <= set(sc)
            assert 0.0 <= sc["detection_at_1pct_fpr"] <= 1.0
            assert all(0 <= r <= 1 for r in sc["per_attack_type"].values())
        assert m[key]["overall"]["detection_at_1pct_fpr"] is not None
    assert len(m["student_kd"]["history"]) == m["student_kd"]["epochs_run"] == 1
    assert m["scores"] == "scores.npz"
    scores = report.load_scores(out)
    assert set(scores) == {"label", "teacher", "student_kd", "student_alone"}
    for key in ("teacher", "student_kd", "student_alone"):  # the loaded teacher's scores are computed, the others saved
        assert set(scores[key]) == set(m[key]["f1"])
        for sc, s in scores[key].items():
            assert s.shape == scores["label"][sc].shape == (m[key]["scenarios"][sc]["windows"],)
    _check_figures(out, m, {"f1_per_scenario.png", "size_and_latency.png", "roc_pr_over_teacher.png",
                            "score_histograms_kd.png", "attack_recall.png"})


@pytest.mark.notebook
@pytest.mark.slow
def test_benchmark_notebook_with_other_parameters(vgae_student, nb_env):
    base, env = nb_env
    student_ckpt = vgae_student[1]["student_kd"]["checkpoint"]
    out = base / "benchmark"
    m = _execute("benchmark", out, env, models="gat", types="student", precisions="32-true", repeats=3, steps=2,
                 batch_size=4, preprocess_repeats=2, baseline_limit=1000, checkpoint=student_ckpt,
                 infer_variants="fp32-eager", infer_calls=50)
    assert m["notebook"] == "benchmark" and m["machine"]["cores"] >= 1 and m["machine"]["cpu"]
    (r,) = m["train"]  # one grid point: gat student, fabric at 32-true
    assert (r["model"], r["type"], r["fabric"]["precision"], r["repeats"]) == ("gat", "student", "32-true", 3)
    for side in ("plain", "fabric"):
        g = r[side]["graphs_per_s"]
        assert 0 < g["min"] <= g["median"] <= g["max"] and r[side]["peak_mib"]["median"] >= 0
    (row,) = m["tables"]["speedup"]["rows"]
    assert row["model"] == "GAT Student" and row["plain_epoch_s"] > 0 and row["fabric_epoch_s"] > 0
    assert row["speedup"] == pytest.approx(r["fabric"]["graphs_per_s"]["median"] / r["plain"]["graphs_per_s"]["median"], rel=0.02)
    pre = m["preprocess"]  # a 1,000-message smoke run: its figures, not its speed, are checked here
    assert pre["speedup"] == pytest.approx(pre["seconds"]["pandas loop"]["wall_s"]["median"]
                                           / pre["seconds"]["kdkit"]["wall_s"]["median"], rel=0.05)
    assert all(len(row["messages_per_s"]) == 2 for row in pre["rows"]) and min(pre["first_run_wall_s"].values()) > 0
    assert m["infer"]["checkpoint"] == student_ckpt and m["infer"]["model"] == "vgae"
    assert list(m["infer"]["variants"]) == ["fp32-eager"]
    v = m["infer"]["variants"]["fp32-eager"]
    assert 0 < v["latency_ms_p50"] <= v["latency_ms_p99"] and v["messages_per_s"] > 0
    _check_figures(out, m, {"train_graphs_per_s.png", "train_peak_memory.png", "preprocess.png", "inference.png"})
    assert m["smoke"] == "smoke run: 2 steps, 3 repeats, not a measurement"  # stamped on the figures too


@pytest.mark.notebook
@pytest.mark.slow
def test_nbval_runs_every_notebook_with_its_stored_defaults(nb_env):
    """The README's single test command also validates notebooks/ with nbval."""
    base, env = nb_env
    proc = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider",
                           "-v", "--nbval-cell-timeout", "600", str(NOTEBOOK_DIR)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    passed = [line for line in proc.stdout.splitlines() if "::Cell " in line and " PASSED" in line]
    for name in NOTEBOOKS:  # every notebook was collected and its cells ran
        assert any(f"notebooks/{name}" in line for line in passed), proc.stdout[-3000:]


@pytest.fixture(scope="module")
def fusion_teacher(nb_env):
    base, env = nb_env
    out = base / "teacher_fusion"
    return out, _execute("teacher", out, env, model="fusion", epochs=1, seed=0, hidden=32, layers=2, heads=2)


@pytest.mark.notebook
@pytest.mark.slow
def test_teacher_notebook_trains_the_fusion_pair_and_student_notebook_distils_it(fusion_teacher, nb_env):
    base, env = nb_env
    out, tm = fusion_teacher
    assert tm["model"] == "fusion" and tm["type"] == "teacher" and tm["threshold"] == 0.0
    _check_f1(tm["f1"])
    _check_figures(out, tm, {"training_curves.png", "roc_pr.png", "confusion_matrices.png"})
    out = base / "student_fusion"
    m = _execute("student", out, env, model="fusion", teacher_checkpoint=tm["checkpoint"], epochs=1, hidden=16,
                 layers=2, heads=2, seed=1, latency_calls=30)
    assert m["teacher"]["checkpoint"] == tm["checkpoint"] and m["student_kd"]["kd"] is True
    assert m["student_kd"]["parameters"] < m["teacher"]["parameters"]
    for key in ("teacher", "student_kd", "student_alone"):
        _check_f1(m[key]["f1"])
    _check_figures(out, m, {"f1_per_scenario.png", "roc_pr_over_teacher.png", "score_histograms_kd.png"})


def test_check_notebook_refuses_a_papermill_parameter_the_notebook_does_not_have():
    """papermill assigns `-p epoch 1` beside the real `epochs` with only a warning on its stderr; the
    first cell finds the injected names in the kernel's input history and refuses the unknown one."""
    from kdkit.workflows.notebooks import check_notebook, injected_names

    ns = {"epochs": 1, "In": ["", "epochs = 1  # epochs", '# Parameters\nepoch = 1\nmodel = "gat"\n'], "epoch": 1,
          "model": "gat"}
    assert injected_names(ns) == ["epoch", "model"]
    with pytest.raises(ValueError, match=r"parameter 'epoch' is not in teacher.ipynb's parameters cell; "
                                         r"did you mean 'epochs'\?"):
        check_notebook("teacher", ns)
    # interactive use: no injected cell, other variables of the kernel are not parameters
    assert injected_names({"In": ["x = 3", "epochs = 2"], "x": 3}) == []
    assert check_notebook("teacher", {"In": ["x = 3"], "x": 3, "epochs": 2})["epochs"] == 2
    # a notebook-only number below its smallest value
    with pytest.raises(ValueError, match=r"gateway.ipynb parameter paced_seconds=-1: must be > 0"):
        check_notebook("gateway", {"paced_seconds": -1})


def test_a_copy_of_a_notebook_is_checked_against_its_own_parameters_cell():
    """A user's copy of teacher.ipynb with a parameter of its own (``note``) and without kdkit's
    ``threads``: the first cell checks the parameters cell the kernel ran (its annotations), so
    ``-p note x`` is accepted and typed, a misspelt name is still refused with the copy's names."""
    from kdkit.workflows.notebooks import check_notebook

    ran = {"dataset": str, "epochs": int, "note": "Optional[str]", "accelerator": str}
    ns = {"__annotations__": ran, "dataset": "synthetic", "epochs": 1, "note": "x", "accelerator": "cpu",
          "In": ["", '# Parameters\nnote = "x"\n']}
    assert check_notebook("teacher", ns)["note"] == "x"  # kdkit's file has no `note`: refused before
    with pytest.raises(ValueError, match=r"your copy of teacher.ipynb parameter note=3: expected Optional\[str\]"):
        check_notebook("teacher", {**ns, "note": 3, "In": ["", "# Parameters\nnote = 3\n"]})
    with pytest.raises(ValueError, match=r"parameter 'threads' is not in your copy of teacher.ipynb's parameters cell "
                                         r"\(known: accelerator, dataset, epochs, note\)"):
        check_notebook("teacher", {**ns, "threads": 2, "In": ["", "# Parameters\nthreads = 2\n"]})
    with pytest.raises(ValueError, match=r"epochs"):  # a run-schema name is checked as the run schema says
        check_notebook("teacher", {**ns, "epochs": 0})


def test_kdkit_notebooks_opened_in_their_folder_run_from_the_checkout_root(monkeypatch, tmp_path, capsys):
    """JupyterLab and nbval start a notebook's kernel in the notebook's folder: kdkit's own notebooks
    then move to the checkout's root, so `run_dir runs/x` is the same folder as for `kdkit train`."""
    from kdkit.workflows.notebooks import NOTEBOOK_DIR, check_notebook, move_to_project_folder

    monkeypatch.chdir(NOTEBOOK_DIR)
    check_notebook("teacher", {"epochs": 2})
    assert Path.cwd() == NOTEBOOK_DIR.parent.resolve()
    assert f"working folder: {NOTEBOOK_DIR.parent}" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)  # papermill from elsewhere, a copy in the user's project: left where it is
    assert move_to_project_folder() is None and Path.cwd() == tmp_path.resolve()
    # papermill in notebooks/ (a SLURM job submitted from there): its run stays with the job's files
    monkeypatch.chdir(NOTEBOOK_DIR)
    check_notebook("teacher", {"epochs": 2, "In": ["", "# Parameters\nepochs = 2\n"]})
    assert Path.cwd() == NOTEBOOK_DIR.resolve()


@pytest.mark.notebook
def test_papermill_run_with_a_misspelt_parameter_fails_in_the_first_cell(nb_env, tmp_path):
    base, env = nb_env
    out = tmp_path / "typo"
    out.mkdir()
    cmd = [sys.executable, "-m", "papermill", str(NOTEBOOK_DIR / "teacher.ipynb"), str(out / "teacher.ipynb"),
           "-k", KERNEL, "--no-progress-bar", "-p", "run_dir", str(out), "-p", "epoch", "1"]
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "parameter 'epoch' is not in teacher.ipynb's parameters cell; did you mean 'epochs'?" in proc.stderr
    assert not (out / "metrics.json").exists()  # nothing trained


def test_kd_verdict_says_per_scenario_whether_distillation_helped():
    from kdkit.bench.compare import kd_verdict

    def run(f1s, overall):
        return {"test": {"scenarios": {k: {"f1": v} for k, v in f1s.items()}, "overall": {"f1": overall}}}

    text = kd_verdict(run({"test_01": 0.9, "test_03": 0.5}, 0.8), run({"test_01": 0.8, "test_03": 0.6}, 0.75))
    assert "  test_01: +0.100\n  test_03: -0.100\n  overall: +0.050\n" in text
    assert "distillation helped on 1 of 2 scenarios, on this one seed" in text
    assert "helped on none of the 1 scenarios" in kd_verdict(run({"a": 0.1}, 0.1), run({"a": 0.2}, 0.2))


def test_a_teacher_checkpoint_of_another_family_is_refused_in_the_first_cell(tmp_path):
    """student.ipynb with a GAT teacher and model='vgae' failed only in the KD cell, after the data and
    the teacher's evaluation; now the first cell names both parameters."""
    from kdkit.config import make_config
    from kdkit.workflows.notebooks import check_notebook
    from kdkit.workflows.run import train

    cfg = make_config(dataset="synthetic", model="gat", type="teacher", epochs=1, hidden=8, layers=1, heads=1,
                      embedding_dim=4, runs_dir=str(tmp_path / "runs"), save_compat=False, precision="32-true")
    teacher = train(cfg, progress=False)["best_checkpoint"]
    with pytest.raises(ValueError, match=r"student.ipynb parameters: teacher_checkpoint=.* is a gat teacher and "
                                         r"model='vgae'; set model='gat' to distil it"):
        check_notebook("student", {"model": "vgae", "teacher_checkpoint": teacher})
    assert check_notebook("student", {"model": "gat", "teacher_checkpoint": teacher})["model"] == "gat"
    with pytest.raises(FileNotFoundError, match=r"teacher_checkpoint='nope.pt': .*nope.pt does not exist"):
        check_notebook("student", {"teacher_checkpoint": "nope.pt"})


def test_benchmark_notebook_checks_its_inference_variants_in_the_first_cell():
    """A misspelt variant failed in section 5, after the whole training benchmark: the setup cell
    calls the same check bench infer uses."""
    import json as _json

    from kdkit.bench.infer import VARIANTS, check_variants

    setup = "".join(_json.loads((NOTEBOOK_DIR / "benchmark.ipynb").read_text())["cells"][2]["source"])
    assert "check_variants(infer_variants)" in setup
    with pytest.raises(ValueError, match=r"--variants: unknown \['fp32-foo'\]; choose from .*'default' or 'all'"):
        check_variants("fp32-foo,fp32-eager")
    assert check_variants("fp32-eager, bf16-eager") == ["fp32-eager", "bf16-eager"]
    assert check_variants("all") == list(VARIANTS)


def test_a_cuda_accelerator_on_a_machine_without_cuda_is_refused_in_the_first_cell(monkeypatch):
    import torch

    from kdkit.workflows.notebooks import check_notebook

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"teacher.ipynb parameter accelerator 'cuda': torch sees no CUDA device"):
        check_notebook("teacher", {"accelerator": "cuda"})
    assert check_notebook("teacher", {"accelerator": "cpu"})["accelerator"] == "cpu"
