"""``kdkit export`` of the fusion student: :class:`kdkit.models.fusion_scorer.FusionScorer` (static
shapes) equals ``FusionModel.window_score`` for every combiner kind and layer shape (eager, on
hand-made graphs), and the AOT-compiled ``.pt2`` returns the fused score per window on the
synthetic data and on hand-made batches (OOV IDs, an unknown vehicle, a one-node window, no
edges, a wide graph); its metadata says ``output_kind: score``. The teacher pair and an unfitted
combiner are refused. One AOT compile (about a minute on a small CPU).

Run: .venv/bin/python -m pytest tests/test_fusion_export.py -q
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data

from kdkit.cli.main import main
from kdkit.data.loader import collate_indices
from kdkit.models.fusion import COMBINERS, PARTS, FusionModel, fit_combiner, hide_ids
from kdkit.models.fusion_scorer import FusionScorer
from kdkit.models.scorer import scorer_inputs

F_NODE, F_EDGE, NUM_IDS = 4, 3, 6
SMALL = {"hidden": 16, "num_layers": 2, "heads": 2, "embedding_dim": 4, "latent_dim": 8, "decoder_layers": 1,
         "decoder_heads": 2}
RUN_SMALL = {"hidden": 16, "layers": 2, "heads": 2, "embedding_dim": 4, "latent_dim": 8}


def graph(node_id, edges, seed, nf=F_NODE, ef=F_EDGE):
    g = torch.Generator().manual_seed(seed)
    ei = torch.tensor(edges, dtype=torch.long).t().reshape(2, -1)
    return Data(x=torch.rand(len(node_id), nf, generator=g), node_id=torch.tensor(node_id, dtype=torch.long),
                edge_index=ei, edge_attr=torch.rand(ei.size(1), ef, generator=g))


def hand_made(num_ids=NUM_IDS, nf=F_NODE, ef=F_EDGE):
    """Batches the synthetic windows never give: OOV IDs, an all-OOV (unknown vehicle) window, a
    one-node window (with and without its data self-loop), windows without edges, repeated edges,
    a wide graph next to a one-node one."""
    def g(ids, edges, seed):
        return graph([i % num_ids for i in ids], edges, seed, nf, ef)

    wide = g([1 + i % (num_ids - 1) for i in range(60)], [(i % 60, (7 * i + 1) % 60) for i in range(150)], 9)
    return [
        Batch.from_data_list([g([1, 2, 3], [(0, 1), (1, 2), (2, 0)], 0),
                              g([1, 0, 5, 2], [(0, 1), (1, 1), (1, 2), (2, 3), (2, 3)], 1),
                              g([0, 0, 4], [(0, 1), (1, 2)], 2)]),
        Batch.from_data_list([g([0, 0, 0, 0], [(0, 1), (1, 2), (2, 3), (3, 0)], 3), g([3, 4], [(0, 1)], 4)]),
        Batch.from_data_list([g([2], [(0, 0)], 5)]),
        Batch.from_data_list([g([2], [], 6), g([1, 3], [], 7)]),
        Batch.from_data_list([wide, g([0], [(0, 0)], 8)]),
    ]


def fitted_student(**kw) -> FusionModel:
    """A random-weight student with a profile of some IDs, whose combiner is fitted on (jittered)
    parts of the hand-made windows."""
    torch.manual_seed(0)
    model = FusionModel(F_NODE, F_EDGE, NUM_IDS, shared_encoder=True, **{**SMALL, **kw}).eval()
    profiled = torch.zeros(NUM_IDS, F_NODE)
    profiled[1:NUM_IDS - 1, :2] = 1.0  # IDs 1..4 profiled on two features; OOV 0 and ID 5 not
    model.profile.mean.copy_(torch.rand(NUM_IDS, F_NODE) * profiled)
    model.profile.inv_scale.copy_((1.0 + 4.0 * torch.rand(NUM_IDS, F_NODE)) * profiled)
    batch = hand_made()[0]
    with torch.no_grad():
        known, unknown = model.score_parts(batch).numpy(), model.score_parts(hide_ids(batch)).numpy()
    rng = np.random.default_rng(0)
    y = np.tile([0, 1, 0], 20)
    jitter = rng.uniform(0.5, 1.5, (2, 60, known.shape[1])).astype(np.float32)
    fit_combiner(model.combiner, (np.tile(known, (20, 1)) * jitter[0], y), (np.tile(unknown, (20, 1)) * jitter[1], y),
                 quantile=0.9)
    return model


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("combiner, shape", [(kind, {}) for kind in COMBINERS] + [
    ("max", {"concat_heads": True, "decoder_layers": 2}), ("logistic", {"decoder_layers": 0}),
    ("max", {"unknown_vehicle": "classifier"})])
def test_scorer_equals_window_score(combiner, shape):
    model = fitted_student(combiner=combiner, **shape)
    scorer = FusionScorer(model)
    batches = hand_made()
    batches += [hide_ids(batches[0])]  # every window an unknown vehicle
    for batch in batches:
        with torch.no_grad():
            ref_parts, ref = model.score_parts(batch), model.window_score(batch)
            parts, got = scorer.parts(*scorer_inputs(batch)), scorer(*scorer_inputs(batch))
        assert got.shape == (batch.num_graphs,)
        torch.testing.assert_close(parts, ref_parts, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    profile = model.score_parts(batches[0])[:, PARTS.index("profile")]
    assert (profile > 0).any() and float(model.score_parts(batches[-1])[:, PARTS.index("profile")].abs().sum()) == 0.0


def test_scorer_equals_window_score_on_the_per_node_max_branch(monkeypatch):
    """Attention scores far apart take PyG's per-node maximum (``torch.cond``'s other branch)."""
    import kdkit.models.scorer as scorer  # the GATv2 layer FusionScorer shares with GATScorer

    monkeypatch.setattr(scorer, "SAFE_SHIFT", -1.0)  # every layer takes the per-node max
    model = fitted_student()
    for batch in hand_made():
        with torch.no_grad():
            torch.testing.assert_close(FusionScorer(model)(*scorer_inputs(batch)), model.window_score(batch),
                                       rtol=1e-5, atol=1e-5)


def test_scorer_refuses_the_teacher_pair_an_unfitted_combiner_and_other_families():
    torch.manual_seed(0)
    pair = FusionModel(F_NODE, F_EDGE, NUM_IDS, shared_encoder=False, **SMALL, vgae_layers=1)
    with pytest.raises(ValueError, match="teacher pair"):
        FusionScorer(pair)
    with pytest.raises(RuntimeError, match="not fitted"):
        FusionScorer(FusionModel(F_NODE, F_EDGE, NUM_IDS, shared_encoder=True, **SMALL))
    from kdkit.models.registry import build_model

    with pytest.raises(ValueError, match="needs a fusion model"):
        FusionScorer(build_model("gat", "student", F_NODE, F_EDGE, NUM_IDS))


# ----------------------------------------------------------------------------- checkpoints and the .pt2
def _save(model, cfg, synthetic, path):
    from kdkit.data.graphs import EDGE_FEATURES, NODE_FEATURES
    from kdkit.training.checkpoint import CHECKPOINT_FORMAT

    torch.save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "model_config": model.config,
                "train_config": cfg.to_dict(), "vocab": synthetic.vocab.to_list(), "node_features": list(NODE_FEATURES),
                "edge_features": list(EDGE_FEATURES), "threshold": 0.0}, path)
    return path


@pytest.fixture(scope="module")
def fusion_checkpoints(synthetic, tmp_path_factory):
    """A (random-weight) fusion student whose combiner is fitted on the validation split, and a teacher
    pair, saved as kdkit train writes them (threshold 0.0)."""
    from kdkit.config import make_config
    from kdkit.models.fusion import fit_on_validation
    from kdkit.workflows.run import build_student_or_teacher

    folder = tmp_path_factory.mktemp("fusion_ckpt")
    out = {}
    for role in ("student", "teacher"):
        cfg = make_config(model="fusion", type=role, dataset="synthetic", precision="32-true", **RUN_SMALL)
        model = build_student_or_teacher(cfg, synthetic).eval()
        if role == "student":
            fit_on_validation(model, synthetic.splits["val"], quantile=0.99)
        out[role] = _save(model, cfg, synthetic, folder / f"{role}.pt")
    return out


def test_export_cli_fusion_student_scores_like_window_score(fusion_checkpoints, synthetic, tmp_path, capsys):
    from kdkit.deploy.export import load_exported
    from kdkit.training.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt_path = fusion_checkpoints["student"]
    out = tmp_path / "gateway" / "fusion.pt2"
    assert main(["export", "--checkpoint", str(ckpt_path), "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert out.is_file() and result["package"] == str(out) and result["output_kind"] == "score"
    assert not list(out.parent.glob(".*tmp*"))
    meta = json.loads(out.with_suffix(".json").read_text())
    ckpt = load_checkpoint(ckpt_path)
    gat_keys = {"checkpoint", "package", "inputs", "inputs_note", "output", "model_config", "vocab", "node_features",
                "edge_features", "threshold", "window", "stride", "label_threshold", "graph_format", "role",
                "calibration", "example", "threads"}
    assert gat_keys <= set(meta) and meta["output_kind"] == "score" and "no softmax" in meta["output"]
    assert meta["threshold"] == 0.0 and meta["threads"] == 1 and meta["model_config"] == ckpt["model_config"]
    assert meta["inputs"] == ["x", "node_id", "edge_index", "edge_attr", "batch", "ptr", "node_slots"]

    model = model_from_checkpoint(ckpt).eval()
    score = load_exported(out)
    assert score.output_kind == "score" and score.threshold == 0.0
    gs = synthetic.splits["test_01_known_vehicle_known_attack"]
    batches = [collate_indices(gs, idx) for idx in ([3], list(range(5, 22)), list(range(len(gs)))[:150])]
    batches.append(hide_ids(batches[-1]))  # an unknown vehicle: the other combiner mode
    nf, ef = gs.x.size(1), gs.edge_attr.size(1)
    batches += hand_made(meta["model_config"]["num_ids"], nf, ef)
    for batch in batches:
        with torch.no_grad():
            ref = model.window_score(batch)
        got = score(batch)
        assert got.shape == (batch.num_graphs,)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
        clear = (ref - meta["threshold"]).abs() > 1e-3  # the gateway's decision, away from the threshold
        assert torch.equal((got >= meta["threshold"])[clear], (ref >= meta["threshold"])[clear])
    with pytest.raises(ValueError, match=r"edge_index spans 0\.\.5, outside 0\.\.2"):  # not an abort
        score(Batch.from_data_list([graph([1, 2, 3], [(0, 5)], 0, nf, ef)]))

    # the detector round trip: a recording streamed through the package decides as the checkpoint does
    import numpy as np

    from kdkit.data.readers import read_messages
    from kdkit.stream.detector import Detector

    msgs = read_messages(gs.files[0]).slice(0, 3000)
    by_package = Detector.from_exported(out)
    by_checkpoint = Detector.from_checkpoint(ckpt_path)
    assert by_package.threshold == by_checkpoint.threshold == 0.0
    got, ref = by_package.feed_many(msgs), by_checkpoint.feed_many(msgs)
    assert len(got) == len(ref) == 30
    np.testing.assert_allclose([d.score for d in got], [d.score for d in ref], rtol=0, atol=1e-4)
    frames = [(float(msgs.timestamp[i]), int(msgs.can_id[i]), msgs.payload[i, :msgs.dlc[i]].tobytes(), False)
              for i in range(1000)]  # one by one: the live path's single-window graphs
    one_by_one = [d for d in map(by_package.clone().feed, frames) if d is not None]
    np.testing.assert_allclose([d.score for d in one_by_one], [d.score for d in ref[:10]], rtol=0, atol=1e-4)


def test_export_refuses_the_fusion_teacher_pair(fusion_checkpoints, synthetic, tmp_path, capsys):
    from kdkit.deploy.export import export_model
    from kdkit.training.checkpoint import load_checkpoint, model_from_checkpoint

    path = fusion_checkpoints["teacher"]
    assert main(["export", "--checkpoint", str(path), "--out", str(tmp_path / "t.pt2")]) == 2
    err = capsys.readouterr().err
    assert "fusion teacher pair" in err and "--type student" in err and str(path) in err
    pair = model_from_checkpoint(load_checkpoint(path))
    with pytest.raises(ValueError, match="fusion teacher pair"):
        export_model(pair, collate_indices(synthetic.splits["val"], [0, 1]), tmp_path / "t.pt2")
    assert not list(tmp_path.glob("*.pt2")) and not list(tmp_path.glob(".*tmp*"))


def test_gat_metadata_says_logits(student_checkpoint, tmp_path, monkeypatch):
    """The GAT's package keeps its metadata and adds ``output_kind: logits`` (compile skipped here:
    tests/test_export.py compiles it)."""
    import kdkit.deploy.export as export

    def fake_export(model, example, out, threads=1):
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"x")
        return out

    monkeypatch.setattr(export, "export_model", fake_export)
    out = tmp_path / "gat.pt2"
    result = export.export_checkpoint(student_checkpoint, out)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert result["output_kind"] == meta["output_kind"] == "logits"
    assert meta["output"] == "logits [graphs, 2]; attack probability = softmax(...)[:, 1]"
