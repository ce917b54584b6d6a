"""Tests of kdkit.models.distill: golden KD values, invariances, gradients, end-to-end losses.

Run: .venv/bin/python -m pytest tests/test_distill.py -q
"""
import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch, Data

from kdkit.models.distill import (DistillationLoss, FeatureKD, LatentKD, LogitKDLoss, augmented_kd, edge_structure_kd,
                                  layer_map, perturb_windows, soft_kl)
from kdkit.models.layers import VGAEOutput
from kdkit.models.registry import build_model

F_NODE, F_EDGE, NUM_IDS = 4, 3, 6
# Fixed logits of a 4-graph batch (drawn once with torch.manual_seed(0), stored as literals).
STUDENT = torch.tensor([[3.082, -0.5869], [-4.3576, 1.1369], [-2.169, -2.7972], [0.8067, 1.6761]])
TEACHER = torch.tensor([[-1.4385, -0.8067], [-1.1933, 0.3641], [-1.7133, 2.2012], [-2.1424, 0.2454]])
LABELS = torch.tensor([0, 1, 0, 1])


def make_batch(seed=0):
    """Four graphs of 3 or 4 nodes: a cycle over random IDs, features from the seed."""
    torch.manual_seed(seed)
    graphs = []
    for g, n in enumerate([3, 4, 3, 4]):
        ring = torch.arange(n)
        ei = torch.stack([ring, (ring + 1) % n])
        graphs.append(Data(x=torch.rand(n, F_NODE), node_id=torch.randint(0, NUM_IDS, (n,)),
                           edge_index=ei, edge_attr=torch.rand(n, F_EDGE), y=LABELS[g:g + 1]))
    return Batch.from_data_list(graphs)


def hand_kd(s, t, y, temperature, alpha):
    """The formula, written out with plain tensor ops in float64."""
    s, t = s.double(), t.double()
    p_t = torch.exp(t / temperature) / torch.exp(t / temperature).sum(1, keepdim=True)
    p_s = torch.exp(s / temperature) / torch.exp(s / temperature).sum(1, keepdim=True)
    kd = temperature**2 * (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    prob = torch.exp(s) / torch.exp(s).sum(1, keepdim=True)
    ce = -prob[torch.arange(len(y)), y].log().mean()
    return alpha * kd + (1 - alpha) * ce, kd, ce


@pytest.mark.parametrize("temperature,alpha,golden", [(4.0, 0.7, 1.2066357780), (1.0, 0.5, 0.5202110410)])
def test_logit_kd_golden_values(temperature, alpha, golden):
    total, parts = LogitKDLoss(temperature, alpha)(STUDENT, TEACHER, LABELS)
    ref_total, ref_kd, ref_ce = hand_kd(STUDENT, TEACHER, LABELS, temperature, alpha)
    assert total.item() == pytest.approx(ref_total.item(), abs=1e-5)
    assert parts["kd"].item() == pytest.approx(ref_kd.item(), abs=1e-5)
    assert parts["ce"].item() == pytest.approx(ref_ce.item(), abs=1e-5)
    assert total.item() == pytest.approx(golden, abs=1e-5)


def test_alpha_weighs_the_soft_term_and_maps_to_torchdistill():
    """kdkit: alpha * T^2 * KL + (1 - alpha) * CE; torchdistill's KDLoss: alpha_td * CE +
    (1 - alpha_td) * T^2 * KL, so kdkit alpha = 1 - torchdistill alpha."""
    temperature = 4.0
    _, parts = LogitKDLoss(temperature, 0.7)(STUDENT, TEACHER, LABELS)
    assert LogitKDLoss(temperature, 1.0)(STUDENT, TEACHER, LABELS)[0].item() == pytest.approx(parts["kd"].item())
    assert LogitKDLoss(temperature, 0.0)(STUDENT, TEACHER, LABELS)[0].item() == pytest.approx(parts["ce"].item())
    kl = torch.nn.KLDivLoss(reduction="batchmean")(torch.log_softmax(STUDENT / temperature, dim=1),
                                                   torch.softmax(TEACHER / temperature, dim=1))
    ce = torch.nn.functional.cross_entropy(STUDENT, LABELS)
    alpha_td = 0.3  # torchdistill's forward: alpha * hard_loss + beta * T^2 * soft_loss, beta = 1 - alpha
    torchdistill = alpha_td * ce + (1 - alpha_td) * temperature**2 * kl
    kdkit = LogitKDLoss(temperature, 0.7)(STUDENT, TEACHER, LABELS)[0]
    assert kdkit.item() == pytest.approx(torchdistill.item(), abs=1e-5)


def test_logit_kd_golden_components():
    _, parts = LogitKDLoss()(STUDENT, TEACHER, LABELS)
    assert parts["kd"].item() == pytest.approx(1.6373046250, abs=1e-5)
    assert parts["ce"].item() == pytest.approx(0.2017418015, abs=1e-5)


def test_kd_term_is_zero_for_equal_logits_and_follows_the_teacher():
    loss = LogitKDLoss()
    _, same = loss(STUDENT, STUDENT.clone(), LABELS)
    assert same["kd"].abs().item() < 1e-6
    _, a = loss(STUDENT, TEACHER, LABELS)
    _, b = loss(STUDENT, TEACHER + torch.tensor([0.0, 1.0]), LABELS)
    assert a["kd"].item() > 0.1 and abs(a["kd"].item() - b["kd"].item()) > 1e-3
    assert a["ce"].item() == b["ce"].item()  # the hard-label term ignores the teacher


def test_kd_softmax_runs_over_classes_not_over_the_batch():
    loss = LogitKDLoss()
    whole, _ = loss(STUDENT, TEACHER, LABELS)
    rows = [loss(STUDENT[i:i + 1], TEACHER[i:i + 1], LABELS[i:i + 1])[0] for i in range(4)]
    torch.testing.assert_close(whole, torch.stack(rows).mean())  # batchmean over graphs
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(whole, loss(STUDENT[perm], TEACHER[perm], LABELS[perm])[0])


def test_single_logit_is_rejected():
    with pytest.raises(ValueError, match="one logit"):
        soft_kl(torch.zeros(4, 1), torch.zeros(4, 1), 4.0)


def test_logit_kd_gradients_reach_student_only():
    s, t = STUDENT.clone().requires_grad_(), TEACHER.clone().requires_grad_()
    LogitKDLoss()(s, t, LABELS)[0].backward()
    assert s.grad.abs().sum() > 0 and t.grad is None


def test_layer_map():
    assert layer_map(3, 5) == [0, 2, 4]
    assert layer_map(2, 4) == [0, 3]
    assert layer_map(1, 5) == [4]
    assert layer_map(5, 5) == [0, 1, 2, 3, 4]


def test_feature_kd_projects_and_trains():
    torch.manual_seed(0)
    kd = FeatureKD([8, 8, 8], [16] * 5, beta=0.5)
    assert [tuple(p.weight.shape) for p in kd.projections] == [(16, 8)] * 3
    student = [torch.randn(7, 8, requires_grad=True) for _ in range(3)]
    teacher = [torch.randn(7, 16, requires_grad=True) for _ in range(5)]
    loss = kd(student, teacher)
    loss.backward()
    assert all(p.weight.grad.abs().sum() > 0 for p in kd.projections)
    assert student[0].grad.abs().sum() > 0 and all(t.grad is None for t in teacher)
    # hand value: beta * mean over pairs of the MSE between projection and matched teacher layer
    with torch.no_grad():
        ref = sum(((p(s) - teacher[j]) ** 2).mean() for p, s, j in zip(kd.projections, student, [0, 2, 4]))
    assert loss.item() == pytest.approx(0.5 * ref.item() / 3, abs=1e-6)


def test_feature_kd_zero_when_projection_reproduces_teacher():
    kd = FeatureKD([4], [4], beta=1.0, loss="cosine")
    with torch.no_grad():
        kd.projections[0].weight.copy_(torch.eye(4))
        kd.projections[0].bias.zero_()
    h = torch.randn(5, 4)
    assert kd([h], [h]).abs().item() < 1e-6


def fake_vgae_out(latent, seed):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(7, latent, generator=g, requires_grad=True)
    return VGAEOutput(mu, torch.zeros(7, latent), mu, torch.randn(7, F_NODE, generator=g),
                      torch.randn(7, NUM_IDS, generator=g), [])


def test_latent_kd_projects_never_truncates():
    kd = LatentKD(student_latent=16, teacher_latent=32, temperature=2.0)
    assert tuple(kd.projection.weight.shape) == (32, 16)
    s, t = fake_vgae_out(16, 0), fake_vgae_out(32, 1)
    total, parts = kd(s, t)
    assert set(parts) == {"latent", "recon", "id_kd"} and all(v > 0 for v in parts.values())
    total.backward()
    assert kd.projection.weight.grad.abs().sum() > 0 and s.mu.grad.abs().sum() > 0
    assert t.mu.grad is None
    expected = parts["latent"] + parts["recon"] + soft_kl(s.id_logits, t.id_logits, 2.0)
    assert total.item() == pytest.approx(expected.item(), abs=1e-6)


def test_latent_kd_zero_when_student_equals_teacher():
    kd = LatentKD(8, 8)
    with torch.no_grad():
        kd.projection.weight.copy_(torch.eye(8))
        kd.projection.bias.zero_()
    out = fake_vgae_out(8, 0)
    assert kd(out, out)[0].abs().item() < 1e-6


def models(kind, seed_teacher=0):
    small = {"gat": {"teacher": dict(hidden=16, num_layers=5, heads=2, embedding_dim=4),
                     "student": dict(hidden=8, num_layers=3, heads=2, embedding_dim=2)},
             "vgae": {"teacher": dict(hidden=16, latent_dim=8, encoder_layers=4, decoder_layers=2,
                                      encoder_heads=2, decoder_heads=2, embedding_dim=4),
                      "student": dict(hidden=8, latent_dim=4, encoder_layers=2, decoder_layers=1,
                                      encoder_heads=2, decoder_heads=1, embedding_dim=2)}}[kind]
    torch.manual_seed(seed_teacher)
    teacher = build_model(kind, "teacher", F_NODE, F_EDGE, NUM_IDS, **small["teacher"]).eval()
    torch.manual_seed(100)
    student = build_model(kind, "student", F_NODE, F_EDGE, NUM_IDS, **small["student"])
    return student, teacher


@pytest.mark.parametrize("kind", ["gat", "vgae"])
def test_distillation_loss_end_to_end(kind):
    student, teacher = models(kind)
    kd = DistillationLoss.from_models(student, teacher)
    batch = make_batch()
    call = (lambda m: m(batch, return_features=True)) if kind == "gat" else (lambda m: m(batch))
    with torch.no_grad():
        t_out = call(teacher)
    loss, parts = kd(student_out := call(student), t_out, batch)
    assert torch.isfinite(loss) and parts["total"].item() == loss.item()
    expected = {"gat": {"kd", "ce"}, "vgae": {"task", "feat", "id", "edge", "kl", "edge_kd"}}
    assert set(parts) == expected[kind] | {"feature", "total"}
    assert all(not v.requires_grad and v.dim() == 0 for v in parts.values())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in kd.parameters())
    assert sum(p.grad.abs().sum() for p in student.parameters() if p.grad is not None) > 0
    assert all(p.grad is None for p in teacher.parameters())
    # another teacher changes the KD term
    _, other = models(kind, seed_teacher=1)
    with torch.no_grad():
        t2 = call(other)
    key = "kd" if kind == "gat" else "edge_kd"
    student_out = call(student)
    assert kd(student_out, t2, batch)[1][key].item() != kd(student_out, t_out, batch)[1][key].item()


def test_distillation_loss_checks_its_inputs():
    student, teacher = models("gat")
    other = build_model("gat", "teacher", F_NODE, F_EDGE, NUM_IDS + 1, hidden=16, embedding_dim=4)
    with pytest.raises(ValueError, match="num_ids"):
        DistillationLoss.from_models(student, other)
    batch = make_batch()
    logits_only = DistillationLoss.from_models(student, teacher, beta=0.0)
    assert len(list(logits_only.parameters())) == 0
    loss, parts = logits_only(student(batch), teacher(batch), batch)
    assert set(parts) == {"kd", "ce", "total"}
    with pytest.raises(TypeError, match="return_features=True"):
        DistillationLoss.from_models(student, teacher)(student(batch), teacher(batch), batch)


def test_logit_kd_hard_label_term_uses_class_weights():
    """The student's CE term carries the teacher's class weights (imbalanced data)."""
    from kdkit.models.distill import LogitKDLoss

    torch.manual_seed(0)
    s, t = torch.randn(6, 2), torch.randn(6, 2)
    y = torch.tensor([0, 0, 0, 0, 0, 1])
    w = torch.tensor([0.6, 3.0])
    plain = LogitKDLoss(4.0, 0.7)(s, t, y)[1]["ce"]
    weighted = LogitKDLoss(4.0, 0.7, class_weight=w)(s, t, y)[1]["ce"]
    assert torch.allclose(weighted, F.cross_entropy(s, y, weight=w))
    assert not torch.allclose(plain, weighted)


def test_edge_structure_kd_golden_value():
    """One window of two nodes and one of a single node: the KL of the two ordered pairs' link
    probabilities, by hand; the lone node adds no pair."""
    import math

    zs = torch.tensor([[1.0, 0.0], [0.5, 2.0], [3.0, 3.0]], requires_grad=True)
    zt = torch.tensor([[1.0, 1.0, 0.0], [-1.0, 0.5, 2.0], [9.0, 9.0, 9.0]])
    batch = Data(batch=torch.tensor([0, 0, 1]), num_graphs=2, edge_index=torch.zeros(2, 0, dtype=torch.long))
    s_out = VGAEOutput(zs, torch.zeros(3, 2), zs, torch.zeros(3, F_NODE), torch.zeros(3, NUM_IDS), [])
    t_out = VGAEOutput(zt, torch.zeros(3, 3), zt, torch.zeros(3, F_NODE), torch.zeros(3, NUM_IDS), [])
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    p, q = sig(-1.0 + 0.5 + 0.0), sig(0.5)  # teacher t0 . t1 = -0.5, student z0 . z1 = 0.5
    kl = p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    value = edge_structure_kd(s_out, t_out, batch)
    assert value.item() == pytest.approx(kl, rel=1e-5)  # both ordered pairs give the same KL
    value.backward()
    assert zs.grad[:2].abs().sum() > 0 and zs.grad[2].abs().sum() == 0  # the lone node has no pair


def test_edge_structure_kd_zero_when_inner_products_agree():
    """Latents of other widths with the same inner products (a rotation padded with a zero column)
    give 0; another teacher gives more than 0."""
    batch = make_batch()
    torch.manual_seed(0)
    z = torch.randn(batch.num_nodes, 4)
    rot, _ = torch.linalg.qr(torch.randn(4, 4))
    zt = torch.cat([z @ rot, torch.zeros(batch.num_nodes, 1)], dim=1)
    out = lambda v: VGAEOutput(v, torch.zeros_like(v), v, torch.zeros(len(v), F_NODE),  # noqa: E731
                               torch.zeros(len(v), NUM_IDS), [])
    assert edge_structure_kd(out(z), out(zt), batch).abs().item() < 1e-5
    assert edge_structure_kd(out(z), out(torch.randn_like(zt)), batch).item() > 1e-3


def test_vgae_distillation_total_and_opt_in_latent_terms():
    """VGAE KD = the student's own loss at full weight + alpha * edge KD (+ feature KD); with
    latent_weight > 0 the latent matching joins the KD term."""
    from kdkit.models.vgae import vgae_loss

    student, teacher = models("vgae")
    batch = make_batch()
    with torch.no_grad():
        t_out = teacher(batch)
    kd = DistillationLoss.from_models(student, teacher, alpha=0.6, beta=0.0, edge_kd_weight=2.0)
    assert kd.latent is None
    torch.manual_seed(5)
    s_out = student(batch)
    loss, parts = kd(s_out, t_out, batch)
    own = vgae_loss(s_out, batch, **kd.vgae_weights)["loss"]
    expected = own + 0.6 * 2.0 * edge_structure_kd(s_out, t_out, batch)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    with_latent = DistillationLoss.from_models(student, teacher, alpha=0.6, beta=0.0, latent_weight=0.5)
    loss2, parts2 = with_latent(s_out, t_out, batch)
    latent, _ = with_latent.latent(s_out, t_out)
    assert {"latent", "recon", "id_kd", "edge_kd"} <= set(parts2)
    assert loss2.item() == pytest.approx((own + 0.6 * (edge_structure_kd(s_out, t_out, batch) + latent)).item(),
                                         rel=1e-6)
    with pytest.raises(ValueError, match="edge_kd_weight"):
        DistillationLoss.from_models(student, teacher, edge_kd_weight=-1.0)


def test_perturb_windows_corrupts_a_copy_within_each_window():
    """Node features are swapped for other nodes' (never invented), extra edges stay inside their
    window with an existing edge's features, edges stay grouped by window, the input is untouched."""
    batch = make_batch()
    before = {k: getattr(batch, k).clone() for k in ("x", "edge_index", "edge_attr", "node_id")}
    gen = torch.Generator().manual_seed(3)
    out = perturb_windows(batch, node_share=0.5, edge_share=1.0, generator=gen)
    for k, v in before.items():
        assert torch.equal(getattr(batch, k), v)  # the batch itself is not modified
    assert torch.equal(out.node_id, batch.node_id)
    changed = (out.x != batch.x).any(dim=1)
    assert changed.any()
    for row in out.x[changed]:  # every new row is another node's row
        assert (batch.x == row).all(dim=1).any()
    e = batch.edge_index.size(1)
    assert out.edge_index.size(1) == 2 * e and out.edge_attr.size(0) == 2 * e
    g = batch.batch
    assert torch.equal(g[out.edge_index[0]], g[out.edge_index[1]])  # no edge between windows
    assert (g[out.edge_index[0]].diff() >= 0).all()  # grouped by window, as PyG batches them
    for row in out.edge_attr:
        assert (batch.edge_attr == row).all(dim=1).any()
    same = perturb_windows(batch, 0.5, 1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(same.x, out.x) and torch.equal(same.edge_index, out.edge_index)
    untouched = perturb_windows(batch, 0.0, 0.0)
    assert torch.equal(untouched.x, batch.x) and torch.equal(untouched.edge_index, batch.edge_index)
    with pytest.raises(ValueError, match="node_share"):
        perturb_windows(batch, node_share=1.5)


def test_augmented_kd_is_zero_for_the_teacher_itself_and_trains_the_student():
    """On corrupted windows the term is the link-probability KL + the reconstructed features' MSE
    (+ the ID logits' KL on request): 0 when the student is the teacher, positive and with
    gradients for another student."""
    student, teacher = models("vgae")
    batch = perturb_windows(make_batch(), 0.3, 0.5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t_out = teacher(batch)
    assert augmented_kd(t_out, t_out, batch).abs().item() < 1e-5
    s_out = student(batch)
    value = augmented_kd(s_out, t_out, batch)
    expected = edge_structure_kd(s_out, t_out, batch) + F.mse_loss(s_out.x_recon, t_out.x_recon)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6) and value.item() > 0
    with_ids = augmented_kd(s_out, t_out, batch, terms=("edge", "feat", "id"))
    assert with_ids.item() == pytest.approx((expected + soft_kl(s_out.id_logits, t_out.id_logits, 2.0)).item(),
                                            rel=1e-6)
    value.backward()
    assert all(p.grad is not None for p in student.feat_out.parameters())


@pytest.mark.parametrize("mode", ["match", "rise"])
def test_task_adds_the_corrupted_window_kd_to_a_vgae_student(mode):
    """``kd_augment``: the training loss is the plain KD loss + weight x the corrupted-window term
    (same random draws for the clean part), reported as ``augment_kd``; a GAT student refuses it."""
    from kdkit.config import make_config
    from kdkit.training.task import Task

    student, teacher = models("vgae")
    batch = make_batch()
    torch.manual_seed(1)  # the feature KD's projections: the same in both
    plain = Task(student, make_config(model="vgae", vehicle_dropout=0.0), teacher)
    torch.manual_seed(1)
    task = Task(student, make_config(model="vgae", vehicle_dropout=0.0, kd_augment=mode, kd_augment_weight=0.5), teacher)
    torch.manual_seed(0)
    base, _ = plain.training_loss(batch)
    torch.manual_seed(0)
    loss, parts = task.training_loss(batch)
    assert parts["augment_kd"].item() > 0
    assert loss.item() == pytest.approx(base.item() + 0.5 * parts["augment_kd"].item(), rel=1e-5)
    assert parts["total"].item() == pytest.approx(loss.item())
    loss.backward()
    gat_student, gat_teacher = models("gat")
    with pytest.raises(ValueError, match="kd_augment"):
        Task(gat_student, make_config(model="gat", kd_augment=mode), gat_teacher)


def test_sensitivity_kd_matches_the_rise_of_each_part_not_its_level():
    """``rise``: 0 for the teacher itself; otherwise the mean over windows and parts of the squared
    difference of the log-error rises, written out by hand; ``parts`` picks the parts."""
    from kdkit.models.distill import sensitivity_kd
    from kdkit.models.vgae import reconstruction_errors

    student, teacher = models("vgae")
    clean = make_batch()
    corrupted = perturb_windows(clean, 0.5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t_clean, t_cor = teacher(clean), teacher(corrupted)
    assert sensitivity_kd(t_clean, t_cor, t_clean, t_cor, clean, corrupted).item() < 1e-10
    s_clean, s_cor = student(clean), student(corrupted)
    full = sensitivity_kd(s_clean, s_cor, t_clean, t_cor, clean, corrupted)
    edge = sensitivity_kd(s_clean, s_cor, t_clean, t_cor, clean, corrupted, parts=("edge",))
    rise = {k: [torch.log(reconstruction_errors(b, c)[k] + 1e-6) for b, c in ((s_clean, clean), (s_cor, corrupted),
                                                                               (t_clean, clean), (t_cor, corrupted))]
            for k in ("feat", "id", "edge")}
    by_part = {k: ((v[1] - v[0]) - (v[3] - v[2])).pow(2).mean() for k, v in rise.items()}
    assert edge.item() == pytest.approx(by_part["edge"].item(), rel=1e-4)
    assert full.item() == pytest.approx(sum(by_part.values()).item() / 3, rel=1e-4)
