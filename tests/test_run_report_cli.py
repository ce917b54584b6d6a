"""``kdkit report RUN --html`` of real ``kdkit train`` runs (tiny models, built-in synthetic data): the
page opens with the headline table of the run's recorded test metrics (the teacher and a student
alone beside a KD student where found), then ROC/PR curves and score histograms drawn with the
test labels of the data the scores belong to, and the recall per attack type."""
from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from kdkit.cli.main import main
from kdkit.reporting.headline import fmt
from kdkit.reporting.records import _cell
from kdkit.reporting.train_run import train_run_record

TINY = ["--dataset", "synthetic", "--hidden", "8", "--layers", "1", "--heads", "1", "--embedding-dim", "4",
        "--epochs", "1", "--precision", "32-true", "--compile", "false", "--no-save-compat"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(kdkit_env):
    """A GAT teacher, a KD student of it, the same student alone and a VGAE student, by ``kdkit train``."""
    runs_dir = kdkit_env / "report_runs"
    teacher = runs_dir / "synthetic_gat_teacher"
    for args in (["--model", "gat", "--type", "teacher"],
                 ["--model", "gat", "--type", "student", "--teacher", str(teacher / "checkpoints" / "best.pt")],
                 ["--model", "gat", "--type", "student"],
                 ["--model", "vgae", "--type", "student"]):
        assert main(["train", *args, *TINY, "--runs-dir", str(runs_dir)]) == 0
    return runs_dir


def _report(path, capsys) -> str:
    assert main(["report", str(path), "--html"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out == str(path / "report.html")
    return (path / "report.html").read_text()


def _summary(run) -> dict:
    return json.loads((run / "summary.json").read_text())


def _text(cell: str) -> str:
    return re.sub(r"<[^>]+>", "", cell).strip()


def _headline(page: str) -> tuple[list[str], list[list[str]]]:
    """Header cells and body rows (cell texts) of the headline table."""
    table = re.search(r"<table class='kdkit headline' id='headline'>(.*?)</table>", page, re.S).group(1)
    head = [_text(c) for c in re.findall(r"<th>(.*?)</th>", table.split("</thead>")[0])]
    rows = [[_text(c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r)]
            for r in re.findall(r"<tr[^>]*>(.*?)</tr>", table.split("<tbody>")[1], re.S)]
    return head, rows


def _f1_rows(rows: list[list[str]]) -> dict[str, list[str]]:
    """``{scenario: [cells per model]}`` of the F1 block (the first five rows)."""
    assert rows[0][0] == "F1"
    return {r[1]: r[2:] for r in rows[:5]}


def _figures(page: str) -> dict[str, bytes]:
    """``{data-figure name: decoded PNG}``, each checked to be a real, non-trivial image."""
    out = {}
    for name, data in re.findall(r"<figure data-figure='([^']+)'><h3>[^<]+</h3><img alt='[^']+' "
                                 r"src='data:image/png;base64,([^']+)'>", page):
        png = base64.b64decode(data)
        assert png.startswith(PNG_MAGIC) and len(png) > 5_000, name
        out[name] = png
    assert len(out) == page.count("<figure"), "every figure holds an embedded PNG"
    return out


def _recall_rows(page: str) -> list[list[str]]:
    table = re.search(r"<div id='attack-recall'>(.*?)</div>", page, re.S).group(1)
    assert "<caption>Recall per attack type</caption>" in table
    return [[_text(c) for c in re.findall(r"<td>(.*?)</td>", r)]
            for r in re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1], re.S)]


def _expected_recall(summary: dict) -> list[list[str]]:
    return [[sc.replace("_", " "), t, _cell(v["recall"])]
            for sc, m in summary["test"]["scenarios"].items() for t, v in m["per_attack_type"].items()]


def _scenario(name: str) -> str:
    return name.replace("_", " ")


def test_report_of_a_kd_student_run_puts_its_teacher_beside_it(runs, capsys):
    kd_dir, teacher_dir = runs / "synthetic_gat_student_kd", runs / "synthetic_gat_teacher"
    kd, teacher = _summary(kd_dir), _summary(teacher_dir)
    page = _report(kd_dir, capsys)
    assert page.index("<h2 id='headline-title'>Teacher and KD student (gat on synthetic)</h2>") < page.index("<figure")
    head, rows = _headline(page)
    assert head == ["metric", "scenario", "teacher", "student (KD)"]  # no student alone in this folder: no KD gain
    f1 = _f1_rows(rows)
    for name, m in kd["test"]["scenarios"].items():
        assert f1[_scenario(name)] == [fmt([teacher["test"]["scenarios"][name]["f1"]]), fmt([m["f1"]])]
    assert f1["overall"] == [fmt([teacher["test"]["overall"]["f1"]]), fmt([kd["test"]["overall"]["f1"]])]
    params = next(r for r in rows if r[0] == "parameters")
    assert params[2:] == [f"{teacher['parameters']:,}", f"{kd['parameters']:,}"]
    assert [r[0] for r in rows if r[0]] == ["F1", "MCC", "detection at 1 % FPR", "parameters", "bytes",
                                            "p99 latency (ms / window)"]
    assert f"teacher: the run {teacher_dir}" in page
    figures = _figures(page)
    assert list(figures) == ["roc_pr_over_teacher", "score_histograms_kd", "attack_recall", "training_curves",
                             "confusion_matrices"]
    # recall per attack type: one row per (scenario, type), the teacher's and the KD student's recorded values
    expected = [[sc, t, _cell(teacher["test"]["scenarios"][name]["per_attack_type"][t]["recall"]), r]
                for (sc, t, r), name in zip(_expected_recall(kd), [n for n, m in kd["test"]["scenarios"].items()
                                                                  for _ in m["per_attack_type"]])]
    assert _recall_rows(page) == expected and len(expected) >= 4
    assert "Metrics per test scenario" in page and "<details class='raw'>" in page


def test_report_of_a_teacher_run(runs, capsys):
    run = runs / "synthetic_gat_teacher"
    summary = _summary(run)
    page = _report(run, capsys)
    assert "<h2 id='headline-title'>The teacher (gat on synthetic)</h2>" in page
    head, rows = _headline(page)
    assert head == ["metric", "scenario", "teacher"]
    f1 = _f1_rows(rows)
    assert {k: v[0] for k, v in f1.items()} == {
        **{_scenario(k): fmt([m["f1"]]) for k, m in summary["test"]["scenarios"].items()},
        "overall": fmt([summary["test"]["overall"]["f1"]])}
    figures = _figures(page)
    assert list(figures) == ["score_histograms_teacher", "attack_recall", "training_curves", "roc_pr",
                             "confusion_matrices"]
    assert _recall_rows(page) == _expected_recall(summary)


def test_report_of_a_vgae_student_alone(runs, capsys):
    run = runs / "synthetic_vgae_student"
    summary = _summary(run)
    page = _report(run, capsys)
    assert "<h2 id='headline-title'>The student alone (vgae on synthetic)</h2>" in page
    head, rows = _headline(page)
    assert head == ["metric", "scenario", "student alone"]
    assert _f1_rows(rows)["overall"] == [fmt([summary["test"]["overall"]["f1"]])]
    figures = _figures(page)
    assert list(figures) == ["score_histograms", "attack_recall", "training_curves", "roc_pr", "confusion_matrices"]
    assert "<h3>Scores of the student alone against its threshold</h3>" in page
    assert _recall_rows(page) == _expected_recall(summary)


def test_report_of_the_runs_folder_has_the_kd_gain(runs, capsys):
    kd, alone, teacher = (_summary(runs / f"synthetic_gat_{r}") for r in ("student_kd", "student", "teacher"))
    page = _report(runs, capsys)
    assert "<h2 id='headline-title'>Teacher, KD student and student alone (gat on synthetic)</h2>" in page
    head, rows = _headline(page)
    assert head == ["metric", "scenario", "teacher", "student (KD)", "student alone", "KD gain"]
    for name, m in kd["test"]["scenarios"].items():
        a = alone["test"]["scenarios"][name]["f1"]
        assert _f1_rows(rows)[_scenario(name)] == [fmt([teacher["test"]["scenarios"][name]["f1"]]), fmt([m["f1"]]),
                                                  fmt([a]), fmt([m["f1"] - a], signed=True)]
    assert f"student alone: the run {runs / 'synthetic_gat_student'}" in page
    assert page.count("<h2>Training run: ") == 4  # one section per run folder


def test_score_figures_use_the_labels_of_the_scored_data(runs, synthetic, tmp_path, capsys):
    run = runs / "synthetic_gat_student"
    rec = train_run_record(run)
    summary = _summary(run)
    assert set(rec.scores["label"]) == set(summary["test"]["scenarios"])
    for name, m in summary["test"]["scenarios"].items():
        y = rec.scores["label"][name]
        assert len(y) == m["windows"] and int(y.sum()) == m["attack_windows"]
        assert np.array_equal(y, synthetic.splits[name].y.numpy())  # the run's settings are the defaults here
    with np.load(run / "test_labels.npz") as npz:  # written at training: the report reads them, no data needed
        assert {k: npz[k].tolist() for k in npz.files} == {k: v.tolist() for k, v in rec.scores["label"].items()}
    older = tmp_path / "older"  # a run from before test_labels.npz: the labels are rebuilt from the data
    shutil.copytree(run, older, ignore=shutil.ignore_patterns("checkpoints", "report.html", "test_labels.npz"))
    rebuilt = train_run_record(older).scores["label"]
    assert {k: v.tolist() for k, v in rebuilt.items()} == {k: v.tolist() for k, v in rec.scores["label"].items()}
    # scores that do not belong to the data: no score figures, and the page says why
    copy = tmp_path / "tampered"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints", "report.html", "test_labels.npz"))
    with np.load(copy / "test_scores.npz") as npz:
        scores = {k: npz[k][::-1].copy() for k in npz.files}
    np.savez(copy / "test_scores.npz", **scores)
    page = _report(copy, capsys)
    assert "does not reproduce the recorded results" in page
    figures = _figures(page)
    assert "score_histograms" not in figures and "roc_pr" not in figures and "attack_recall" in figures
    assert _f1_rows(_headline(page)[1])["overall"] == [fmt([summary["test"]["overall"]["f1"]])]


def _synthetic_test_files() -> list[Path]:
    from kdkit.data.simulate import default_synthetic_root

    return sorted(default_synthetic_root(0).glob("test_*/*.csv"))


def test_report_shows_a_kdkit_evaluate_result(runs, tmp_path, capsys):
    run = tmp_path / "evaluated"
    shutil.copytree(runs / "synthetic_gat_teacher", run)
    assert main(["evaluate", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--dataset", "synthetic"]) == 0
    capsys.readouterr()
    evaluation = json.loads((run / "evaluation_synthetic.json").read_text())
    page = _report(run, capsys)
    table = re.search(r"<caption>kdkit evaluate of best.pt at threshold 0.5 on synthetic \(evaluation_synthetic.json\)"
                      r"</caption>(.*?)</table>", page, re.S).group(1)
    overall = next(r for r in re.findall(r"<tr>(.*?)</tr>", table, re.S) if "<td>overall</td>" in r)
    assert f"<td>{_cell(evaluation['overall']['f1'])}</td>" in overall
    # kdkit evaluate --input into the run folder: its recordings were left out of the page
    recording = _synthetic_test_files()[0]
    assert main(["evaluate", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--input", str(recording)]) == 0
    capsys.readouterr()
    inputs = json.loads(next(run.glob("evaluation_inputs_*.json")).read_text())
    page = _report(run, capsys)
    table = re.search(r"<caption>kdkit evaluate --input of best.pt, threshold [^<]*\((evaluation_inputs_[^)]*)\)</caption>(.*?)"
                      r"</table>", page, re.S).group(2)
    row = next(r for r in re.findall(r"<tr>(.*?)</tr>", table, re.S) if f"<td>{recording.name}</td>" in r)
    assert f"<td>{_cell(inputs['files'][0]['metrics']['f1'])}</td>" in row


def test_an_in_sample_input_is_flagged_in_the_report_and_evaluate_json_is_json(runs, tmp_path, capsys, synthetic):
    """evaluate --input of a training recording warned, the report showed it as any other row; evaluate --json
    without --dataset printed a note line above the JSON."""
    run = tmp_path / "in_sample"
    shutil.copytree(runs / "synthetic_gat_teacher", run)
    trained_on = next(f for f in synthetic.splits["train"].files if "DoS" in f)
    assert main(["evaluate", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--input", trained_on]) == 0
    capsys.readouterr()
    page = _report(run, capsys)
    assert f"<td>{Path(trained_on).name} (in-sample)</td>" in page
    assert "so these metrics are in-sample, not a test" in page
    assert main(["evaluate", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["dataset"] == "synthetic" and "the checkpoint's training data" in out.err


def test_a_notebook_run_beside_train_runs_hides_none_of_them(runs, tmp_path, capsys):
    """`kdkit report runs` of a folder holding train runs and one notebook run reported the notebook alone."""
    folder = tmp_path / "mixed"
    shutil.copytree(runs, folder)
    nb = folder / "nb_student"
    shutil.copytree(runs / "synthetic_gat_teacher", nb / "gat_quick_teacher")  # a run the notebook trained
    entry = {"overall": {"f1": 0.5}, "parameters": 10, "size_bytes": 40, "scenarios": {"t": {"f1": 0.5}},
             "f1": {"t": 0.5}}
    (nb / "metrics.json").write_text(json.dumps({"notebook": "student", "started": "2026-12-07 19:00", "model": "gat",
                                                 "dataset": "synthetic", "teacher": entry, "student_kd": entry,
                                                 "student_alone": entry, "figures": [], "tables": {},
                                                 "completed": "2026-12-07 19:01", "record_version": 2}))
    from kdkit.reporting.html import find_records

    found = {p.parent.name for p in find_records(folder)}
    assert {"nb_student", "synthetic_gat_teacher", "synthetic_gat_student_kd"} <= found and "gat_quick_teacher" not in found
    assert main(["report", str(folder)]) == 0
    text = capsys.readouterr().out
    assert f"== {folder / 'synthetic_gat_student_kd'}" in text and f"== {nb}" in text
    assert "KD gain" in text or "kd gain" in text.lower()


def test_a_teacher_given_as_its_saved_models_copy_is_found_through_the_copys_record(tmp_path, monkeypatch):
    """The Quick tour distils from saved_models/best_teacher_model_<dataset>.pth: the copy's sidecar
    names the run it came from, so the report finds the teacher's run folder (not when the copy was
    replaced since: the sidecar then describes another file)."""
    import hashlib
    from pathlib import Path

    from kdkit.reporting.train_run import teacher_folder

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "hcrl_sa_gat_teacher"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.pt").write_bytes(b"weights")
    (run / "summary.json").write_text(json.dumps({"type": "teacher", "parameters": 10, "size_bytes": 40}))
    copy = tmp_path / "saved_models" / "best_teacher_model_hcrl_sa.pth"
    copy.parent.mkdir()
    copy.write_bytes(b"weights")
    sidecar = {"metric": "val_f1", "value": 1.0, "run_dir": "runs/hcrl_sa_gat_teacher",
               "checkpoint": "runs/hcrl_sa_gat_teacher/checkpoints/best.pt",
               "sha256": hashlib.sha256(b"weights").hexdigest()}
    copy.with_suffix(".json").write_text(json.dumps(sidecar))
    student = tmp_path / "runs" / "hcrl_sa_gat_student_kd"
    student.mkdir()
    summary = {"run_dir": "runs/hcrl_sa_gat_student_kd",
               "teacher": {"path": "saved_models/best_teacher_model_hcrl_sa.pth", "parameters": 10, "size_bytes": 40}}
    found, note = teacher_folder(summary, student)
    assert (Path(found).resolve(), note) == (run.resolve(), "")
    copy.write_bytes(b"other weights")  # replaced by a later run: the record is not this file's
    found, note = teacher_folder(summary, student)
    assert found is None and note.startswith("teacher left out: no run folder with summary.json")


def test_a_kd_student_keeps_its_own_teacher_after_the_saved_models_copy_is_replaced(tmp_path, monkeypatch):
    """A new user distilled from saved_models/best_teacher_model_<dataset>.pth, then trained a better
    teacher that replaced the copy: the student's report showed the new teacher as its own. The
    student records its teacher file's sha256; the report pairs it with the run that holds that file
    (found beside the student), or leaves the teacher out and says why."""
    import hashlib
    from pathlib import Path

    from kdkit.reporting.train_run import teacher_folder

    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"

    def teacher_run(name: str, weights: bytes) -> Path:
        run = runs / name
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "best.pt").write_bytes(weights)
        (run / "summary.json").write_text(json.dumps({"type": "teacher", "parameters": 10, "size_bytes": 40,
                                                      "best_checkpoint": str(run / "checkpoints" / "best.pt")}))
        return run

    first, second = teacher_run("t1", b"first weights"), teacher_run("t2", b"better weights")
    copy = tmp_path / "saved_models" / "best_teacher_model_d.pth"
    copy.parent.mkdir()
    copy.write_bytes(b"better weights")  # replaced by t2 after the student was distilled from t1's copy
    copy.with_suffix(".json").write_text(json.dumps({"checkpoint": "runs/t2/checkpoints/best.pt",
                                                     "sha256": hashlib.sha256(b"better weights").hexdigest()}))
    student = runs / "student_kd"
    student.mkdir()
    summary = {"run_dir": "runs/student_kd",
               "teacher": {"path": "saved_models/best_teacher_model_d.pth", "parameters": 10, "size_bytes": 40,
                           "sha256": hashlib.sha256(b"first weights").hexdigest()}}
    found, note = teacher_folder(summary, student)
    assert (Path(found).resolve(), note) == (first.resolve(), "")  # t1, found by its hash; not t2
    (first / "checkpoints" / "best.pt").unlink()
    found, note = teacher_folder(summary, student)
    assert found is None and "is no longer the teacher this student was distilled from" in note
    assert str(second) in note or "runs/t2" in note
    summary["teacher"]["sha256"] = hashlib.sha256(b"better weights").hexdigest()  # distilled from t2 itself
    assert Path(teacher_folder(summary, student)[0]).resolve() == second.resolve()


def test_the_kd_gain_pairs_a_kd_student_with_the_student_alone_of_its_own_seed(runs, tmp_path):
    """A runs folder of several seeds: the KD student's gain is over the student alone of the same
    seed, never another seed's (found by a user: seed 1's KD student against seed 0's student alone)."""
    alone = runs / "synthetic_gat_student"
    other_seed = tmp_path / "synthetic_gat_student_seed1"
    shutil.copytree(alone, other_seed)
    cfg = json.loads((other_seed / "config.json").read_text())
    (other_seed / "config.json").write_text(json.dumps({**cfg, "seed": cfg["seed"] + 1}))
    kd = runs / "synthetic_gat_student_kd"
    assert "student_alone" not in train_run_record(kd, [other_seed]).folders
    assert train_run_record(kd, [other_seed, alone]).folders["student_alone"] == alone


def test_a_runs_folder_of_several_seeds_gets_a_headline_over_the_seeds(runs, tmp_path, capsys):
    """benchmarks/quality.py's runs folder (teacher, KD student, student alone per seed): the report
    opens with the mean ± std over the seeds, each KD student paired with its own seed's runs."""
    root = tmp_path / "seeds"
    for seed in (0, 1):
        for role in ("teacher", "student_kd", "student"):
            dst = root / f"synthetic_gat_{role}_seed{seed}"
            shutil.copytree(runs / f"synthetic_gat_{role}", dst)
            cfg = json.loads((dst / "config.json").read_text())
            (dst / "config.json").write_text(json.dumps({**cfg, "seed": seed}))
    # a KD student of another setting (kd_alpha) is no third seed: it was pooled "over 3 seeds" with them
    other = root / "synthetic_gat_student_kd_alpha"
    shutil.copytree(runs / "synthetic_gat_student_kd", other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "seed": 2, "kd_alpha": cfg["kd_alpha"] / 2}))
    page = _report(root, capsys)
    assert "<h2 id='headline-seeds-title'>Over 2 seeds (0, 1)</h2>" in page
    table = re.search(r"<table class='kdkit headline' id='headline-seeds'>(.*?)</table>", page, re.S).group(1)
    assert "±" in table  # mean ± std cells
    assert page.index("headline-seeds-title") < page.index("id='headline-title'")
    # the text report opens the same way (it showed one seed's table and "1 other KD student run")
    assert main(["report", str(root)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("== over 2 seeds (0, 1): Teacher, KD student and student alone (gat on synthetic), mean ± sample std")
    assert "±" in text.split("\n\n")[0]


def _seed_runs(runs: Path, root: Path, seeds, roles=("teacher", "student_kd", "student")) -> None:
    for seed in seeds:
        for role in roles:
            dst = root / f"synthetic_gat_{role}_seed{seed}"
            shutil.copytree(runs / f"synthetic_gat_{role}", dst)
            cfg = json.loads((dst / "config.json").read_text())
            (dst / "config.json").write_text(json.dumps({**cfg, "seed": seed}))


def test_a_seed_without_its_kd_student_keeps_its_student_alone_in_the_table(runs, tmp_path, capsys):
    """A review (2026-12-08): with seed 1's KD student deleted, the report said "over 2 seeds (0, 2)"
    and left seed 1's student alone out, with no "(k of n runs)" on the KD student's column."""
    root = tmp_path / "seeds"
    _seed_runs(runs, root, (0, 2))
    _seed_runs(runs, root, (1,), roles=("teacher", "student"))
    assert main(["report", str(root)]) == 0
    first = capsys.readouterr().out.split("\n\n")[0]
    assert first.startswith("== over 3 seeds (0, 1, 2): ")
    assert "student (KD) (2 of 3 runs)" in first and "KD gain (2 of 3 pairs)" in first
    assert "student alone (" not in first.splitlines()[1]  # its column is over every seed


def test_two_invocations_of_the_same_seeds_side_by_side_pool_the_lead_s_own(runs, tmp_path, capsys):
    """A review (2026-12-08): two quality.py folders of seeds 0, 1 beside each other: any seed twice
    and nothing was pooled; the note named runs without their folders."""
    root = tmp_path / "runs"
    _seed_runs(runs, root / "q01", (0, 1))
    _seed_runs(runs, root / "q3", (0, 1, 2))
    assert main(["report", str(root)]) == 0
    text = capsys.readouterr().out
    assert re.match(r"== over (2|3) seeds \((0, 1|0, 1, 2)\): ", text)
    from kdkit.reporting.html import find_records, others_note

    records = find_records(root)
    note = others_note(root / "q3" / "synthetic_gat_student_kd_seed0", records)
    assert "q01/synthetic_gat_student_kd_seed0" in note and "q3/synthetic_gat_student_kd_seed1" in note


def test_each_model_family_gets_its_headline_in_the_html_and_the_text_report(runs, capsys):
    """A new user's runs folder of GAT and fusion runs: only one family got the headline table, and
    the text report (`kdkit report runs`, no --html) listed raw keys without the teacher / KD
    student / student alone comparison. Both now open with a headline per family."""
    page = _report(runs, capsys)
    assert "id='headline'" in page and "id='headline-2'" in page and "id='headline-title-2'" in page
    assert "(gat on synthetic)" in page and "(vgae on synthetic)" in page
    assert main(["report", str(runs)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("== Teacher, KD student and student alone (gat on synthetic")
    assert "KD gain" in text.splitlines()[1] and "== The student alone (vgae on synthetic" in text
    first_table = text.split("\n\n")[0].splitlines()
    assert any(line.startswith("F1 ") for line in first_table)


def test_the_headline_names_the_runs_of_its_kind_it_leaves_out(tmp_path):
    """A folder of three KD students (one teacher each) showed one in the headline and said nothing
    of the others: the note names them."""
    from kdkit.reporting.html import others_note

    def run(name: str, **summary) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps({"model": "gat", "test": {"scenarios": {"s": {}}}, **summary}))
        (folder / "metrics.json").write_text("{}")
        return folder / "metrics.json"

    records = [run("s1", type="student", kd=True), run("s2", type="student", kd=True), run("s3", type="student", kd=True),
               run("t1", type="teacher"), run("v1", type="student", kd=True, model="vgae")]
    note = others_note(tmp_path / "s3", records)
    assert note.startswith("2 other gat KD student run(s) in this folder, not in this table: s1, s2")
    assert others_note(tmp_path / "t1", records) is None  # the only gat teacher
