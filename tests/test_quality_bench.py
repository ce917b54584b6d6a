"""benchmarks/quality.py: seeds aggregated into mean ± std from the per-seed runs (no hard-coded
figure), the KD gain paired by seed, and a Markdown table, on tiny synthetic runs.

Run: .venv/bin/python -m pytest tests/test_quality_bench.py -q
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from conftest import load_benchmark


def _quality():
    return load_benchmark("quality")


def test_spread_of_defined_values():
    q = _quality()
    s = q.spread([0.5, None, 0.7])
    assert s["n"] == 2 and s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(statistics.stdev([0.5, 0.7]), abs=1e-4)
    assert q.spread([None, None]) is None and q.spread([0.3])["std"] == 0.0
    # rounded once, by the table: 0.83648 ± 0.06648 was 0.837 ± 0.067 (rounded to 4 places first)
    s = q.spread([0.83648 - 0.06648 / 2 ** 0.5, 0.83648 + 0.06648 / 2 ** 0.5])
    assert q._cell(s) == "0.836 ± 0.066" and q._cell({"mean": 0.244, "std": 0.0, "n": 1}, signed=True) == "+0.244"


def test_quality_over_two_seeds_on_synthetic(synthetic, tmp_path, capsys):
    q = _quality()
    out = tmp_path / "q.json"
    record = q.main(["--dataset", "synthetic", "--models", "gat", "--seeds", "0,1", "--epochs", "1",
                     "--runs-dir", str(tmp_path / "runs"), "--set", "batch_size=32", "--set", "hidden=24",
                     "--out", str(out)])
    assert out.is_file() and record["seeds"] == [0, 1]
    runs, agg = record["runs"]["gat"], record["families"]["gat"]
    assert [len(runs[r]) for r in q.ROLES] == [2, 2, 2]
    # two seeds really are two runs: different weights
    assert runs["teacher"][0]["checkpoint"] != runs["teacher"][1]["checkpoint"]
    scenario = next(iter(agg["teacher"]["scenarios"]))
    for role in q.ROLES:
        for metric in q.METRICS:
            vals = [r["scenarios"][scenario][metric] for r in runs[role]]
            s = agg[role]["scenarios"][scenario][metric]
            if all(v is None for v in vals):
                assert s is None
                continue
            defined = [v for v in vals if v is not None]
            assert s["mean"] == pytest.approx(statistics.fmean(defined), abs=1e-4) and s["n"] == len(defined)
    kd, alone = runs["student_kd"], runs["student_alone"]
    gain = [a["scenarios"][scenario]["f1"] - b["scenarios"][scenario]["f1"] for a, b in zip(kd, alone)
            if a["scenarios"][scenario]["f1"] is not None and b["scenarios"][scenario]["f1"] is not None]
    if gain:
        assert agg["kd_gain"][scenario]["f1"]["mean"] == pytest.approx(statistics.fmean(gain), abs=1e-4)
    assert 0 < agg["student_share_of_teacher_parameters"] < 1
    table = record["markdown"]
    assert "| teacher |" in table and "| student kd |" in table and "KD gain" in table and scenario in table
    # one epoch cannot tell whether a run still learns; a run that did is named under the table
    assert all("still_learning" in b and b["still_learning"] is None for r in q.ROLES for b in runs[r])
    assert "Still learning" not in table
    flagged = {**record, "runs": {"gat": {r: [dict(b) for b in runs[r]] for r in q.ROLES}}}
    flagged["runs"]["gat"]["teacher"][1]["still_learning"] = "still learning when training stopped: ..."
    assert "Still learning when their epochs ran out" in q.markdown(flagged) and "teacher 1 of 2" in q.markdown(flagged)
    # seeds run apart (two processes, two SLURM jobs) merge into the same table
    import copy
    halves = []
    for i, seed in enumerate(record["seeds"]):
        half = copy.deepcopy({k: v for k, v in record.items() if k not in ("families", "markdown")})
        half["seeds"] = [seed]
        half["runs"] = {"gat": {r: [runs[r][i]] for r in q.ROLES}}
        path = tmp_path / f"half{seed}.json"
        path.write_text(json.dumps(half))
        halves.append(str(path))
    merged = q.main(["--merge", *halves])
    assert merged["seeds"] == [0, 1] and merged["families"] == json.loads(json.dumps(agg_of(record)))
    with pytest.raises(SystemExit) as stop:  # an error naming what differs, not a traceback (a review, 2026-12-07)
        q.main(["--merge", halves[0], halves[0]])
    assert stop.value.code == 2 and "more than one record" in capsys.readouterr().err


def test_student_variants_reuse_the_same_teachers(synthetic, tmp_path):
    """--student-set changes the students only; --teachers reuses an earlier record's teachers
    (the same checkpoints, not trained again) and refuses a record that cannot serve."""
    from kdkit.training.checkpoint import load_checkpoint

    q = _quality()
    common = ["--dataset", "synthetic", "--models", "gat", "--seeds", "0", "--epochs", "1", "--set", "batch_size=32"]
    first = tmp_path / "first.json"
    base = q.main([*common, "--runs-dir", str(tmp_path / "a"), "--out", str(first)])
    variant = q.main([*common, "--runs-dir", str(tmp_path / "b"), "--teachers", str(first), "--student-set", "hidden=12",
                      "--student-set", "batch_size=16"])  # --student-set wins over --set for the students
    t0, t1 = base["runs"]["gat"]["teacher"][0], variant["runs"]["gat"]["teacher"][0]
    assert t1 == t0 and variant["teachers_from"] == str(first) and variant["student_set"] == {"hidden": 12, "batch_size": 16}
    kd = variant["runs"]["gat"]["student_kd"][0]
    assert load_checkpoint(kd["checkpoint"])["train_config"]["teacher"] == t0["checkpoint"]
    for role in ("student_kd", "student_alone"):
        cfg = load_checkpoint(variant["runs"]["gat"][role][0]["checkpoint"])["train_config"]
        assert cfg["hidden"] == 12 and cfg["batch_size"] == 16
        assert variant["runs"]["gat"][role][0]["parameters"] < base["runs"]["gat"][role][0]["parameters"]
    assert load_checkpoint(t0["checkpoint"])["train_config"]["hidden"] is None
    assert '{"hidden": 12, "batch_size": 16}' in variant["markdown"]
    with pytest.raises(SystemExit):
        q.main([*common, "--student-set", "teacher=x.pt", "--teachers", str(first)])
    with pytest.raises(SystemExit):
        q.main([*common, "--seeds", "5", "--runs-dir", str(tmp_path / "c"), "--teachers", str(first)])
    with pytest.raises(SystemExit):
        q.main([*common[:-4], "--epochs", "2", "--runs-dir", str(tmp_path / "c"), "--teachers", str(first)])
    gone = json.loads(first.read_text())
    gone["runs"]["gat"]["teacher"][0]["checkpoint"] = str(tmp_path / "missing.pt")
    (tmp_path / "gone.json").write_text(json.dumps(gone))
    with pytest.raises(SystemExit):
        q.main([*common, "--runs-dir", str(tmp_path / "c"), "--teachers", str(tmp_path / "gone.json")])
    # student variants of one setting merge; a record of other students does not merge with them
    with pytest.raises(ValueError, match="student_set"):
        q.merge([base, json.loads(json.dumps(variant))])
    # --set is recorded and shown: records of other settings do not merge, nor reuse each other's teachers
    assert base["set"] == {"batch_size": 32} and '; every run with {"batch_size": 32}' in base["markdown"]
    other = {**json.loads(json.dumps(base)), "seeds": [1], "set": {"window": 50}}
    with pytest.raises(ValueError, match=r"--merge: the records differ in set"):
        q.merge([base, other])
    with pytest.raises(SystemExit):  # the teachers of batch_size=32 for runs without it
        q.main([*common[:-2], "--runs-dir", str(tmp_path / "d"), "--teachers", str(first)])


def agg_of(record):
    return {"gat": record["families"]["gat"]}


def test_fusion_ablation_refits_combiners_on_validation_and_reproduces_the_run(synthetic, tmp_path):
    q = _quality()
    small = ["--set", "hidden=16", "--set", "layers=2", "--set", "heads=2", "--set", "embedding_dim=4",
             "--set", "latent_dim=8", "--set", "batch_size=64", "--set", "compile=false", "--set", "window=50"]
    record = q.main(["--dataset", "synthetic", "--models", "fusion", "--seeds", "0", "--epochs", "1",
                     "--runs-dir", str(tmp_path / "runs"), *small])
    teacher = record["runs"]["fusion"]["teacher"][0]
    assert set(teacher["ablation"]) == set(q.ABLATION)
    for variant, per in teacher["ablation"].items():
        assert set(per) == set(teacher["scenarios"])
        for m in per.values():
            assert m["false_positive_rate"] is None or 0.0 <= m["false_positive_rate"] <= 1.0
    # the run's own combiner is the max rule at the same quantile: the ablation refits it identically
    for name, m in teacher["scenarios"].items():
        assert teacher["ablation"]["fused_max"][name]["f1"] == pytest.approx(m["f1"])
    table = record["markdown"]
    assert "fused_logistic" in table and "classifier_at_0.5" in table
    # a record from before a variant existed merges with a current one: the variants both have
    older = json.loads(json.dumps(record))
    older["seeds"] = [1]
    for per_seed in older["runs"]["fusion"].values():
        for run in per_seed:
            run["ablation"].pop("id_profile_at_val_fpr")
    merged = q.merge([record, older])["families"]["fusion"]["teacher"]["ablation"]
    assert set(merged) == set(q.ABLATION) - {"id_profile_at_val_fpr"}
    # a re-fit with unchanged code changes nothing, on the graphs the runs were trained on (a --set window
    # was re-fitted on the default windows), and the run folders then hold the record's numbers
    again = q.refit(json.loads(json.dumps(record)))
    for role, per_seed in again["runs"]["fusion"].items():
        run = per_seed[0]
        assert run["scenarios"] == record["runs"]["fusion"][role][0]["scenarios"]
        summary = json.loads((Path(run["checkpoint"]).parent.parent / "summary.json").read_text())
        assert {k: v["f1"] for k, v in summary["test"]["scenarios"].items()} == \
            {k: v["f1"] for k, v in run["scenarios"].items()}
    # another rule rewrites the teacher's file: its KD student's summary names the new file (the report
    # left the teacher out as replaced), and records of other rules do not merge
    other = q.refit(json.loads(json.dumps(record)), unknown_vehicle="fused")
    kd = json.loads((Path(other["runs"]["fusion"]["student_kd"][0]["checkpoint"]).parent.parent
                     / "summary.json").read_text())
    from kdkit.data.datasets import file_sha256
    assert kd["teacher"]["sha256"] == file_sha256(Path(teacher["checkpoint"])) != kd["teacher"]["refitted_from"]
    with pytest.raises(ValueError, match="differ in refit_unknown_vehicle"):
        q.merge([other, {**again, "seeds": [1]}])
