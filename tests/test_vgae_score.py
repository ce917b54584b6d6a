"""The VGAE's standardised anomaly score (``vgae_score: standardised``): each reconstruction error
on a log scale, centred and scaled on attack-free validation windows, the largest. Golden values
on a tiny batch, the fit on validation only, checkpoints that keep it, and a run end to end.

Run: .venv/bin/python -m pytest tests/test_vgae_score.py -q
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kdkit.data.loader import collate_indices
from kdkit.models.registry import build_model
from kdkit.models.vgae import ERROR_PARTS, fit_score_standardisation, log_errors, reconstruction_errors


def _vgae(gs, score: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model("vgae", "student", gs.x.size(1), gs.edge_attr.size(1), int(gs.node_id.max()) + 1,
                       score=score).eval()


def test_sum_score_is_unchanged_and_standardised_is_the_largest_standardised_log_error(synthetic):
    gs = synthetic.splits["val"]
    batch = collate_indices(gs, list(range(12)))
    summed = _vgae(gs, "sum")
    std = _vgae(gs, "standardised")
    std.load_state_dict({**summed.state_dict(), "score_center": torch.tensor([-3.0, 0.5, -1.0]),
                         "score_scale": torch.tensor([2.0, 0.25, 1.0])})
    with torch.no_grad():
        err = reconstruction_errors(summed(batch), batch)
        torch.testing.assert_close(summed.anomaly_score(batch), err["feat"] + err["id"] + err["edge"])
        t = torch.stack([err[k].clamp(min=1e-6).log() for k in ERROR_PARTS], dim=-1)
        expected = torch.stack([(t[:, 0] + 3.0) / 2.0, (t[:, 1] - 0.5) / 0.25, t[:, 2] + 1.0], -1).amax(-1)
        torch.testing.assert_close(std.anomaly_score(batch), expected)
    # golden: one window whose errors are known exactly
    e = {"feat": torch.tensor([0.01]), "id": torch.tensor([2.0]), "edge": torch.tensor([0.0])}
    torch.testing.assert_close(log_errors(e), torch.tensor([[np.log(0.01), np.log(2.0), np.log(1e-6)]],
                                                           dtype=torch.float32))


def test_fit_uses_the_attack_free_windows_only(synthetic):
    gs = synthetic.splits["val"]
    model = _vgae(gs, "standardised")
    fitted = fit_score_standardisation(model, gs)
    normal = torch.nonzero(gs.y == 0).flatten()
    assert fitted["windows"] == normal.numel() < len(gs)  # the attack windows were left out
    with torch.no_grad():
        batch = collate_indices(gs, normal)
        t = log_errors(reconstruction_errors(model(batch), batch))
    z = (t - model.score_center) / model.score_scale
    assert torch.allclose(z.median(dim=0).values, torch.zeros(3), atol=1e-4)  # centred on the normal windows
    assert (model.score_scale >= 0.05).all()
    # the labels of the attack windows do not move the fit
    shuffled = gs.subset(np.flatnonzero(gs.y.numpy() == 0))
    again = _vgae(gs, "standardised")
    fit_score_standardisation(again, shuffled)
    torch.testing.assert_close(again.score_center, model.score_center)
    with pytest.raises(ValueError, match="scores by 'sum'"):
        fit_score_standardisation(_vgae(gs, "sum"), gs)
    with pytest.raises(ValueError, match="score='median'"):
        _vgae(gs, "median")


def test_a_standardised_run_fits_on_validation_and_its_checkpoint_scores_the_same(synthetic, tmp_path):
    from kdkit.config import make_config
    from kdkit.reporting.metrics import predict_scores
    from kdkit.training.checkpoint import load_checkpoint, model_from_checkpoint
    from kdkit.workflows.run import train

    cfg = make_config(model="vgae", type="student", dataset="synthetic", epochs=1, batch_size=64, hidden=16,
                      layers=1, heads=2, embedding_dim=4, latent_dim=8, precision="32-true", save_compat=False,
                      runs_dir=str(tmp_path / "runs"), run_name="std", vgae_score="standardised")
    s = train(cfg, progress=False, data=synthetic)
    assert s["combiner"]["vgae_score"] == "standardised" and s["combiner"]["windows"] > 0
    assert s["threshold_rule"].startswith("q0.99_of_attack_free_validation")
    ck = load_checkpoint(s["best_checkpoint"])
    model = model_from_checkpoint(ck, s["best_checkpoint"]).eval()
    assert model.config["score"] == "standardised" and not torch.equal(model.score_scale, torch.ones(3))
    val = predict_scores(model, synthetic.splits["val"])
    normal = synthetic.splits["val"].y.numpy() == 0
    assert np.mean(val[normal] >= ck["threshold"]) <= 0.011 + 1.0 / normal.sum()  # the 1 % budget on validation
    scores = np.load(tmp_path / "runs" / "std" / "test_scores.npz")
    for name in scores.files:
        np.testing.assert_allclose(scores[name], predict_scores(model, synthetic.splits[name]), atol=1e-6)
