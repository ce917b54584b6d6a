"""Tests of kdkit.models on hand-written 3-4 node graphs.

Run: .venv/bin/python -m pytest tests/test_models.py -q
"""
import json

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch, Data

from kdkit.models.layers import GATOutput, VGAEOutput
from kdkit.models.registry import build_model, count_parameters, model_from_config, model_size_bytes
from kdkit.models.thresholds import choose_threshold
from kdkit.models.vgae import edge_recon_error

F_NODE, F_EDGE, NUM_IDS = 4, 3, 6
SMALL = {"gat": {"hidden": 16, "num_layers": 3, "heads": 2, "embedding_dim": 4},
         "vgae": {"hidden": 16, "latent_dim": 8, "encoder_layers": 2, "decoder_layers": 2,
                  "encoder_heads": 2, "decoder_heads": 2, "embedding_dim": 4}}


def graph(node_id, edges, y, seed):
    g = torch.Generator().manual_seed(seed)
    ei = torch.tensor(edges, dtype=torch.long).t()
    return Data(x=torch.rand(len(node_id), F_NODE, generator=g),
                node_id=torch.tensor(node_id), edge_index=ei,
                edge_attr=torch.rand(ei.size(1), F_EDGE, generator=g), y=torch.tensor([y]))


def make_batch():
    """Graph 0: IDs 1->2->3->1 (3 nodes); graph 1: IDs 1->4, 4->4 (self-loop), 4->5->2 (4 nodes)."""
    return Batch.from_data_list([
        graph([1, 2, 3], [[0, 1], [1, 2], [2, 0]], 0, seed=0),
        graph([1, 4, 5, 2], [[0, 1], [1, 1], [1, 2], [2, 3]], 1, seed=1),
    ])


def small(kind, size="teacher", **kw):
    torch.manual_seed(0)
    return build_model(kind, size, F_NODE, F_EDGE, NUM_IDS, **{**SMALL[kind], **kw})


@pytest.mark.parametrize("jk", ["cat", "max"])
@pytest.mark.parametrize("concat_heads", [True, False])
def test_gat_shapes(jk, concat_heads):
    model = small("gat", jk=jk, concat_heads=concat_heads).eval()
    batch = make_batch()
    assert model(batch).shape == (2, 2)
    out = model(batch, return_features=True)
    assert isinstance(out, GATOutput)
    assert [tuple(h.shape) for h in out.node_embeddings] == [(7, 16)] * 3
    assert out.graph_embedding.shape == (2, 2 * (48 if jk == "cat" else 16))
    assert torch.equal(out.logits, model(batch))
    assert torch.equal(model.forward_with_features(batch).logits, out.logits)
    assert model.embedding_dims == [16, 16, 16]


def test_gat_single_graph_and_batchnorm():
    data = graph([1, 2, 3], [[0, 1], [1, 2]], 0, seed=3)  # a lone Data: no batch vector
    model = small("gat", norm="batch", add_self_loops=False)
    assert model(Batch.from_data_list([data])).shape == (1, 2)  # training step on one graph
    assert model.eval()(data).shape == (1, 2)


def test_vgae_shapes_and_loss():
    model = small("vgae")
    batch = make_batch()
    out = model(batch)
    assert isinstance(out, VGAEOutput)
    assert out.mu.shape == out.logvar.shape == out.z.shape == (7, 8)
    assert out.x_recon.shape == (7, F_NODE) and out.id_logits.shape == (7, NUM_IDS)
    assert len(out.node_embeddings) == 2
    losses = model.loss(batch, out=out)
    assert set(losses) == {"loss", "feat", "id", "edge", "kl"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    losses["loss"].backward()
    assert model.node_input.id_embedding.weight.grad.abs().sum() > 0
    assert model.anomaly_score(batch).shape == (2,)


def test_vgae_eval_is_deterministic_and_train_samples():
    model = small("vgae")
    batch = make_batch()
    model.eval()
    with torch.no_grad():
        out = model(batch)
        assert torch.equal(out.z, out.mu)
        assert torch.equal(model.anomaly_score(batch), model.anomaly_score(batch))
    model.train()
    torch.manual_seed(1)
    a = model(batch).z
    torch.manual_seed(2)
    assert not torch.equal(a, model(batch).z)


@pytest.mark.parametrize("kind", ["gat", "vgae"])
def test_id_dropout_only_in_training(kind):
    model = small(kind, id_dropout=1.0, dropout=0.0)
    batch, oov = make_batch(), make_batch()
    oov.node_id = torch.zeros_like(oov.node_id)
    first = (lambda o: o) if kind == "gat" else (lambda o: o.mu)
    # training: every ID is dropped to 0, so the real IDs and all-OOV IDs give one output
    assert torch.equal(first(model(batch)), first(model(oov)))
    model.eval()  # eval: the IDs are used
    assert not torch.allclose(first(model(batch)), first(model(oov)))
    # with id_dropout=0 and dropout=0, training mode equals eval mode (LayerNorm has no batch stats)
    model.node_input.id_dropout = 0.0
    ev = first(model(batch))
    assert torch.equal(first(model.train()(batch)), ev)


@pytest.mark.parametrize("kind", ["gat", "vgae"])
def test_all_oov_ids_work_and_out_of_range_raises(kind):
    model = small(kind).eval()
    batch = make_batch()
    batch.node_id = torch.zeros_like(batch.node_id)  # an unseen vehicle: every ID is OOV
    out = model(batch)
    assert torch.isfinite(out if kind == "gat" else out.x_recon).all()
    batch.node_id[0] = NUM_IDS
    with pytest.raises(ValueError, match="num_ids=6"):
        model(batch)
    batch.node_id[0] = 0
    batch.x = torch.zeros(7, F_NODE + 1)
    with pytest.raises(ValueError, match="num_node_features=4"):
        model(batch)


@pytest.mark.parametrize("kind", ["gat", "vgae"])
@pytest.mark.parametrize("num_ids,f_node,f_edge", [(61, 16, 6), (2049, 18, 7), (2101, 20, 8)])
def test_student_at_most_ten_percent_of_teacher(kind, num_ids, f_node, f_edge):
    teacher = build_model(kind, "teacher", f_node, f_edge, num_ids)
    student = build_model(kind, "student", f_node, f_edge, num_ids)
    assert count_parameters(student) <= 0.10 * count_parameters(teacher)


@pytest.mark.parametrize("kind", ["gat", "vgae"])
@pytest.mark.parametrize("size", ["teacher", "student"])
def test_model_from_config_round_trip(kind, size):
    model = build_model(kind, size, F_NODE, F_EDGE, NUM_IDS, dropout=0.0).eval()
    config = json.loads(json.dumps(model.config))  # plain JSON-able dict
    clone = model_from_config(config).eval()
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in clone.state_dict().items()} == shapes
    clone.load_state_dict(model.state_dict())
    batch = make_batch()
    a, b = model(batch), clone(batch)
    assert torch.equal(a if kind == "gat" else a.mu, b if kind == "gat" else b.mu)


def test_build_model_rejects_bad_overrides():
    with pytest.raises(ValueError, match="unknown GATClassifier option 'hiden'"):
        build_model("gat", "student", F_NODE, F_EDGE, NUM_IDS, hiden=8)
    with pytest.raises(TypeError, match="heads"):
        build_model("gat", "student", F_NODE, F_EDGE, NUM_IDS, heads=2.5)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("gcn", "student", F_NODE, F_EDGE, NUM_IDS)
    assert build_model("vgae", "student", F_NODE, F_EDGE, NUM_IDS, beta=1).config["beta"] == 1
    with pytest.raises(ValueError, match="kind"):
        model_from_config({"num_ids": 3})


def test_parameter_helpers_and_summary():
    assert count_parameters(nn.Linear(3, 2)) == 8
    assert model_size_bytes(nn.Linear(3, 2)) == 32
    assert model_size_bytes(nn.BatchNorm1d(2)) == 4 * 4 * 2 + 8  # weight, bias, 2 stats + counter
    model = small("vgae")
    text = model.summary()
    assert text.startswith(f"VGAE: {count_parameters(model):,} parameters")
    assert "encoder" in text and "'kind': 'vgae'" in text


def test_edge_recon_error_matches_naive_loop():
    torch.manual_seed(0)
    batch = make_batch()
    z = torch.randn(7, 3)
    got = edge_recon_error(z, batch.edge_index, batch.batch, 2)
    expected = []
    for g in range(2):
        nodes = (batch.batch == g).nonzero().flatten().tolist()
        linked = {(int(a), int(b)) for a, b in batch.edge_index.t()}
        linked |= {(b, a) for a, b in linked}
        pos, neg = [], []
        for i in nodes:
            for j in nodes:
                if i != j:
                    p = torch.sigmoid(z[i] @ z[j])
                    (pos if (i, j) in linked else neg).append(
                        -torch.log(p) if (i, j) in linked else -torch.log(1 - p))
        # graph 0 is a full triangle once symmetrised: no unlinked pair, that half counts 0
        mean = [torch.stack(t).mean() if t else torch.tensor(0.0) for t in (pos, neg)]
        expected.append(0.5 * (mean[0] + mean[1]))
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-5, atol=1e-6)


def test_choose_threshold():
    scores = [0.1, 0.2, 0.3, 0.35, 0.8, 0.9]
    labels = [0, 0, 0, 1, 1, 1]
    assert choose_threshold(scores, labels) == pytest.approx(0.35)  # J = 1 at score >= 0.35
    # at most floor(0.1 * 101) = 10 of 101 attack-free scores at or above the threshold (score >= t is an attack)
    assert choose_threshold(torch.arange(101.0), quantile=0.9) == pytest.approx(91.0)
    with pytest.raises(ValueError, match="one class"):
        choose_threshold(scores, [0] * 6)
