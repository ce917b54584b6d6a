"""Knowledge-distillation losses for kdkit students (GAT classifier and VGAE).

Usage inside a trainer (the teacher runs in eval mode under ``torch.no_grad``; the
projection layers of the loss are trainable and belong in the optimizer)::

    from kdkit.distill import DistillationLoss
    kd = DistillationLoss.from_models(student, teacher)          # GAT or VGAE pair
    optimizer = torch.optim.AdamW([*student.parameters(), *kd.parameters()], lr=1e-3)
    teacher.eval()
    with torch.no_grad():
        t_out = teacher(batch, return_features=True)             # VGAE: teacher(batch)
    s_out = student(batch, return_features=True)                 # VGAE: student(batch)
    loss, parts = kd(s_out, t_out, batch)                        # parts: detached 0-dim tensors
    loss.backward()
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdkit.models.fusion import LOG_EPS, FusionOutput, masked_vgae_loss
from kdkit.models.layers import GATOutput, VGAEOutput, graph_index
from kdkit.models.vgae import reconstruction_errors, vgae_loss, window_pairs


def soft_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, summed over classes, averaged over rows.

    Args:
        student_logits: ``[R, C]`` logits (rows are graphs or nodes, C >= 2 classes).
        teacher_logits: ``[R, C]`` logits; detached here.
        temperature: softmax temperature T.
    """
    if student_logits.dim() != 2 or student_logits.size(1) < 2:
        raise ValueError(f"KD needs logits of shape [rows, classes >= 2], got {tuple(student_logits.shape)}:"
                         " a softmax over one logit is constant, so the KD term would be zero")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} != student logits "
                         f"{tuple(student_logits.shape)}")
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * temperature**2


class LogitKDLoss(nn.Module):
    r"""Logit distillation for graph classification (Hinton, Vinyals and Dean 2015, "Distilling
    the Knowledge in a Neural Network").

    kdkit's convention, as implemented in :meth:`forward` (``alpha`` weighs the soft term):

    .. math::
        L = \alpha T^2 \frac{1}{G}\sum_g \sum_c p^t_{gc} (\log p^t_{gc} - \log p^s_{gc})
            + (1 - \alpha)\, \mathrm{CE}(s, y),
        \quad p^t = \mathrm{softmax}(t / T),\; p^s = \mathrm{softmax}(s / T)

    i.e. ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``, the KL
    summed over classes and averaged over the G graphs, the CE on the unscaled student logits
    (class-weighted mean when ``class_weight`` is given). The softmax runs over the class
    dimension (2 logits per graph), never over the batch.

    Mapping to torchdistill's ``KDLoss`` (``torchdistill.losses.mid_level``): it computes
    ``alpha * CE + beta * T^2 * KL`` with ``beta = 1 - alpha`` by default, so its ``alpha``
    weighs the *hard-label* term. kdkit's ``alpha`` is torchdistill's ``beta`` (``1 -`` its
    ``alpha``): kdkit ``alpha=0.7`` is torchdistill ``alpha=0.3``. (torchdistill returns the bare
    KL, without ``T^2``, when its ``alpha`` is 0 or None.)

    Args:
        temperature: softmax temperature T. Default 4.0.
        alpha: weight of the soft (KD) term; ``1 - alpha`` weighs the hard-label CE. Default 0.7.
        class_weight: per-class weights of the hard-label CE (the same inverse-frequency weights
            a teacher trains with; without them a small student on imbalanced data can collapse
            to "normal"). Default None (unweighted).
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.7, class_weight: Tensor | None = None):
        super().__init__()
        if temperature <= 0 or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"need temperature > 0 and 0 <= alpha <= 1, got {temperature}, {alpha}")
        self.temperature, self.alpha = temperature, alpha
        self.register_buffer("class_weight", None if class_weight is None else torch.as_tensor(class_weight, dtype=torch.float32))

    def forward(self, student_logits: Tensor, teacher_logits: Tensor,
                targets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Return ``(total, {"kd": T^2 * KL, "ce": CE})``; components are detached."""
        kd = soft_kl(student_logits, teacher_logits, self.temperature)
        ce = F.cross_entropy(student_logits.float(), targets, weight=self.class_weight)
        total = self.alpha * kd + (1 - self.alpha) * ce
        return total, {"kd": kd.detach(), "ce": ce.detach()}


def layer_map(num_student: int, num_teacher: int) -> list[int]:
    """Teacher layer matched to each student layer, spread evenly, first and last aligned.

    ``layer_map(3, 5) == [0, 2, 4]``, ``layer_map(2, 4) == [0, 3]``, ``layer_map(1, 5) == [4]``.
    """
    if num_student < 1 or num_teacher < 1:
        raise ValueError(f"need at least one layer on each side, got {num_student}, {num_teacher}")
    if num_student == 1:
        return [num_teacher - 1]
    step = (num_teacher - 1) / (num_student - 1)
    return [int(i * step + 0.5) for i in range(num_student)]


class FeatureKD(nn.Module):
    """Multi-level feature distillation between matched GNN layers.

    ``L = beta * mean_i d(P_i s_i, t_{m(i)})`` where ``m = layer_map``, ``P_i`` is a learned
    ``Linear(student_dims[i], teacher_dims[m(i)])``, ``t`` is detached and ``d`` is the
    MSE or ``1 - cosine`` per node.

    Args:
        student_dims: width of each student layer embedding.
        teacher_dims: width of each teacher layer embedding.
        beta: weight of the term. Default 0.5.
        loss: "mse" or "cosine". Default "mse".
    """

    def __init__(self, student_dims: Sequence[int], teacher_dims: Sequence[int],
                 beta: float = 0.5, loss: str = "mse"):
        super().__init__()
        if loss not in ("mse", "cosine"):
            raise ValueError(f"loss={loss!r}: choose 'mse' or 'cosine'")
        self.beta, self.loss = beta, loss
        self.num_teacher_layers = len(teacher_dims)
        self.layer_map = layer_map(len(student_dims), len(teacher_dims))
        self.projections = nn.ModuleList(nn.Linear(s, teacher_dims[j])
                                         for s, j in zip(student_dims, self.layer_map))

    def forward(self, student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
        """Return the weighted loss (``beta`` included)."""
        if len(student_feats) != len(self.projections) or len(teacher_feats) != self.num_teacher_layers:
            raise ValueError(f"FeatureKD built for {len(self.projections)} student / "
                             f"{self.num_teacher_layers} teacher layers, got "
                             f"{len(student_feats)} / {len(teacher_feats)}")
        terms = []
        for proj, s, j in zip(self.projections, student_feats, self.layer_map):
            p, t = proj(s).float(), teacher_feats[j].detach().float()
            if self.loss == "mse":
                terms.append(F.mse_loss(p, t))
            else:
                terms.append((1 - F.cosine_similarity(p, t, dim=-1)).mean())
        return self.beta * torch.stack(terms).mean()


class LatentKD(nn.Module):
    """VGAE distillation: latent projection plus matching of the teacher's reconstructions.

    ``L = latent_weight * MSE(P mu_s, mu_t) + recon_weight * MSE(xhat_s, xhat_t)
    + id_weight * T^2 * KL(softmax(id_t / T) || softmax(id_s / T))`` (KL per node, averaged
    over nodes). ``P`` is a learned ``Linear(student_latent, teacher_latent)``: the
    teacher latent is projected to, never truncated. Teacher tensors are detached.

    Args:
        student_latent: student ``latent_dim``.
        teacher_latent: teacher ``latent_dim``.
        latent_weight: weight of the latent MSE. Default 1.0.
        recon_weight: weight of the node-feature reconstruction MSE. Default 1.0.
        id_weight: weight of the ID-logit KL. Default 1.0.
        temperature: temperature of the ID-logit KL. Default 2.0.
    """

    def __init__(self, student_latent: int, teacher_latent: int, latent_weight: float = 1.0,
                 recon_weight: float = 1.0, id_weight: float = 1.0, temperature: float = 2.0):
        super().__init__()
        self.projection = nn.Linear(student_latent, teacher_latent)
        self.latent_weight, self.recon_weight = latent_weight, recon_weight
        self.id_weight, self.temperature = id_weight, temperature

    def forward(self, student_out: VGAEOutput,
                teacher_out: VGAEOutput) -> tuple[Tensor, dict[str, Tensor]]:
        """Return ``(weighted total, {"latent", "recon", "id_kd"})``; components detached."""
        latent = F.mse_loss(self.projection(student_out.mu).float(), teacher_out.mu.detach().float())
        recon = F.mse_loss(student_out.x_recon.float(), teacher_out.x_recon.detach().float())
        id_kd = soft_kl(student_out.id_logits, teacher_out.id_logits, self.temperature)
        total = self.latent_weight * latent + self.recon_weight * recon + self.id_weight * id_kd
        return total, {"latent": latent.detach(), "recon": recon.detach(), "id_kd": id_kd.detach()}


class DistillationLoss(nn.Module):
    """The loss a trainer minimises for a student, given the teacher's outputs.

    GAT: ``LogitKDLoss(s.logits, t.logits, y) + FeatureKD(s.node_embeddings, t.node_embeddings)``.
    VGAE: ``vgae_loss(s) + alpha * (edge_kd_weight * edge_structure_kd(s, t) + LatentKD(s, t))
    + FeatureKD(encoder layers)``; ``LatentKD`` only when ``latent_weight > 0``.
    ``FeatureKD`` is skipped when ``beta == 0``.

    The VGAE student's own reconstruction loss keeps its full weight and the default KD is the
    teacher's link probabilities alone: on hcrl_sa, scaling the own loss by ``1 - alpha`` and
    matching the projected latent, the reconstructed features and the ID logits each slowed the
    student's edge reconstruction, the part that carries most of the anomaly signal, and left the
    KD student below the same student trained alone (docs/QUALITY.md, "VGAE students").

    Args:
        kind: the student's objective, "classify" (alias "gat") or "reconstruct" (alias "vgae").
        student_dims: student layer widths (``model.embedding_dims``).
        teacher_dims: teacher layer widths.
        student_latent: student ``latent_dim`` (VGAE only). Default None.
        teacher_latent: teacher ``latent_dim`` (VGAE only). Default None.
        temperature: logit KD temperature (GAT). Default 4.0.
        alpha: KD weight versus the student's own task loss. Default 0.7.
        beta: feature KD weight. Default 0.5.
        feature_loss: "mse" or "cosine". Default "mse".
        latent_weight: LatentKD latent MSE weight; 0 leaves ``LatentKD`` out. Default 0.0.
        recon_weight: LatentKD node-feature MSE weight. Default 1.0.
        id_weight: LatentKD ID-logit KL weight. Default 1.0.
        id_temperature: LatentKD ID-logit temperature. Default 2.0.
        class_weight: GAT only: class weights of the hard-label CE. Default None.
        edge_kd_weight: VGAE only: weight of :func:`edge_structure_kd`. Default 1.0.
        extra_terms: more KD terms, by name: modules called as ``term(student_out, teacher_out,
            batch)`` returning a scalar loss that is added to the total (and reported under its
            name). Default None.
        vgae_weights: the student's own VGAE loss weights ``{"beta", "id_weight",
            "edge_weight"}`` (``from_models`` takes them from ``student.config``). Default None
            (``vgae_loss`` defaults).
    """

    def __init__(self, kind: str, student_dims: Sequence[int], teacher_dims: Sequence[int],
                 student_latent: int | None = None, teacher_latent: int | None = None,
                 temperature: float = 4.0, alpha: float = 0.7, beta: float = 0.5,
                 feature_loss: str = "mse", latent_weight: float = 0.0, recon_weight: float = 1.0,
                 id_weight: float = 1.0, id_temperature: float = 2.0,
                 vgae_weights: dict[str, float] | None = None, class_weight: Tensor | None = None,
                 extra_terms: dict[str, nn.Module] | None = None, edge_kd_weight: float = 1.0):
        super().__init__()
        # a model's objective decides the KD form: "classify" (the GAT's) or "reconstruct" (the VGAE's)
        kind = {"classify": "gat", "reconstruct": "vgae"}.get(kind, kind)
        if kind not in ("gat", "vgae"):
            raise ValueError(f"kind={kind!r}: choose 'gat'/'classify' or 'vgae'/'reconstruct'")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha={alpha} must be in [0, 1]")
        self.kind, self.alpha = kind, alpha
        self.features = FeatureKD(student_dims, teacher_dims, beta, feature_loss) if beta > 0 else None
        self.extra_terms = nn.ModuleDict(extra_terms or {})
        if kind == "gat":
            self.logits = LogitKDLoss(temperature, alpha, class_weight)
        else:
            if student_latent is None or teacher_latent is None:
                raise ValueError("kind='vgae' needs student_latent and teacher_latent")
            if latent_weight < 0 or edge_kd_weight < 0:
                raise ValueError(f"latent_weight={latent_weight}, edge_kd_weight={edge_kd_weight}: weights are >= 0")
            self.latent = (LatentKD(student_latent, teacher_latent, latent_weight, recon_weight, id_weight,
                                    id_temperature) if latent_weight > 0 else None)
            self.edge_kd_weight = edge_kd_weight
            self.vgae_weights = dict(vgae_weights or {})

    @classmethod
    def from_models(cls, student: nn.Module, teacher: nn.Module, **kwargs: Any) -> DistillationLoss:
        """Build the loss for a student/teacher pair from their configs.

        Args:
            student: a kdkit ``GATClassifier`` or ``VGAE``.
            teacher: a model of the same kind, on the same ID vocabulary and features.
            **kwargs: any other ``DistillationLoss`` argument (temperature, alpha, beta, ...).
        """
        s, t = student.config, teacher.config
        for key in ("kind", "num_node_features", "num_edge_features", "num_ids"):
            if s[key] != t[key]:
                raise ValueError(f"student {key}={s[key]!r} but teacher {key}={t[key]!r}: "
                                 "distil between models of one kind built on the same graphs")
        if student.objective == "reconstruct":
            kwargs.setdefault("student_latent", s["latent_dim"])
            kwargs.setdefault("teacher_latent", t["latent_dim"])
            kwargs.setdefault("vgae_weights", {k: s[k] for k in ("beta", "id_weight", "edge_weight")})
        return cls(student.objective, student.embedding_dims, teacher.embedding_dims, **kwargs)

    def forward(self, student_out, teacher_out, batch) -> tuple[Tensor, dict[str, Tensor]]:
        """Return ``(loss, components)``; components are detached 0-dim tensors incl. "total".

        Args:
            student_out: GAT: ``GATOutput`` (or plain logits when ``beta == 0``); VGAE: ``VGAEOutput``.
            teacher_out: the teacher's output of the same type, computed under ``torch.no_grad``.
            batch: the PyG batch both outputs came from (``y`` is used for GAT).
        """
        parts: dict[str, Tensor] = {}
        if self.kind == "gat":
            s_logits = student_out.logits if isinstance(student_out, GATOutput) else student_out
            t_logits = teacher_out.logits if isinstance(teacher_out, GATOutput) else teacher_out
            loss, parts = self.logits(s_logits, t_logits, batch.y)
        else:
            own = vgae_loss(student_out, batch, **self.vgae_weights)
            edge = edge_structure_kd(student_out, teacher_out, batch)
            kd, parts = self.edge_kd_weight * edge, {"edge_kd": edge.detach()}
            if self.latent is not None:
                latent, more = self.latent(student_out, teacher_out)
                kd, parts = kd + latent, {**parts, **more}
            loss = own["loss"] + self.alpha * kd
            parts = {"task": own["loss"].detach(), **{k: v.detach() for k, v in own.items() if k != "loss"},
                     **parts}
        if self.features is not None:
            if not (isinstance(student_out, (GATOutput, VGAEOutput))
                    and isinstance(teacher_out, (GATOutput, VGAEOutput))):
                raise TypeError("feature KD (beta > 0) needs GATOutput/VGAEOutput from both models: "
                                "call model(batch, return_features=True) for GAT")
            feat = self.features(student_out.node_embeddings, teacher_out.node_embeddings)
            loss = loss + feat
            parts["feature"] = feat.detach()
        for name, term in self.extra_terms.items():
            value = term(student_out, teacher_out, batch)
            loss = loss + value
            parts[name] = value.detach()
        parts["total"] = loss.detach()
        return loss, parts


def edge_structure_kd(student: VGAEOutput, teacher: VGAEOutput, batch) -> Tensor:
    """Relational KD of the inner-product edge decoder: the KL divergence from the teacher's link
    probabilities ``sigmoid(t_i . t_j)`` (detached) to the student's ``sigmoid(z_i . z_j)``, per
    node pair (Bernoulli), averaged over the ordered pairs ``i != j`` of every window, the pairs the
    edge error scores. The latents may differ in width: only their inner products are compared.
    0 when the inner products agree, and when no window has two nodes."""
    batch_vec, num_graphs = graph_index(batch)
    zs, pairs = window_pairs(student.z, batch_vec, num_graphs)  # [G, M, Ds], [G, M, M]
    zt, _ = window_pairs(teacher.z.detach(), batch_vec, num_graphs)  # [G, M, Dt]
    t_logits = zt @ zt.transpose(1, 2)
    target = torch.sigmoid(t_logits)
    # cross-entropy minus the target's own entropy: the KL, with the cross-entropy's gradient
    kl = (F.binary_cross_entropy_with_logits(zs @ zs.transpose(1, 2), target, reduction="none")
          - F.binary_cross_entropy_with_logits(t_logits, target, reduction="none"))
    return (kl * pairs).sum() / pairs.sum().clamp(min=1.0)


def perturb_windows(batch, node_share: float = 0.2, edge_share: float = 0.0,
                    generator: torch.Generator | None = None):
    """A corrupted copy of a batch of windows, for distilling how the teacher reacts off the
    training distribution (the student's own loss never sees it).

    Generic corruptions, not modelled on any attack:
    - each node, with probability ``node_share``, takes the node features of a node drawn at
      random from the whole batch: its ID, edges and timing edges stay, so the ID no longer
      matches how it behaves (rate, payload, position);
    - ``edge_share`` x E extra directed edges, each between two random nodes of the window of a
      random existing edge, with that edge's features: transitions the window did not have.

    The tensors of ``batch`` are not modified (a shallow copy with new ``x`` / edges).

    Args:
        batch: a PyG Batch of windows (``x``, ``node_id``, ``edge_index``, ``edge_attr``, ``batch``).
        node_share: probability that a node's features are replaced. Default 0.2.
        edge_share: extra edges as a share of the batch's edges. Default 0.0.
        generator: a torch generator for reproducible corruption (on the batch's device).
    """
    if not 0.0 <= node_share <= 1.0 or edge_share < 0:
        raise ValueError(f"node_share={node_share} must be in [0, 1] and edge_share={edge_share} >= 0")
    out = copy.copy(batch)
    x = batch.x
    n = x.size(0)
    dev = x.device
    if node_share > 0 and n > 1:
        hit = torch.rand(n, device=dev, generator=generator) < node_share
        src = torch.randint(0, n, (n,), device=dev, generator=generator)
        out.x = torch.where(hit[:, None], x[src], x)
    e = batch.edge_index.size(1)
    extra = int(round(edge_share * e))
    if extra > 0 and e > 0:
        batch_vec, _ = graph_index(batch)
        ptr = getattr(batch, "ptr", None)  # a PyG Batch's node offsets; a lone window: [0, n]
        if ptr is None:
            ptr = torch.tensor([0, n], device=dev)
        pick = torch.randint(0, e, (extra,), device=dev, generator=generator)
        g = batch_vec[batch.edge_index[0, pick]]
        size = (ptr[g + 1] - ptr[g]).to(x.dtype)
        ends = [ptr[g] + (torch.rand(extra, device=dev, generator=generator) * size).long().clamp(max=n - 1)
                for _ in range(2)]
        edge_index = torch.cat([batch.edge_index, torch.stack(ends)], dim=1)
        # keep the edges grouped by window, as in a PyG batch
        order = torch.sort(batch_vec[edge_index[0]], stable=True).indices
        out.edge_index = edge_index[:, order]
        if getattr(batch, "edge_attr", None) is not None:
            out.edge_attr = torch.cat([batch.edge_attr, batch.edge_attr[pick]])[order]
    return out


def augmented_kd(student: VGAEOutput, teacher: VGAEOutput, batch, terms: Sequence[str] = ("edge", "feat"),
                 temperature: float = 2.0) -> Tensor:
    """VGAE KD on corrupted windows (:func:`perturb_windows`): the student matches what the
    teacher's anomaly score is made of there: the link probabilities (``"edge"``,
    :func:`edge_structure_kd`) and the reconstructed node features (``"feat"``, MSE); ``"id"``
    adds the ID logits' KL at ``temperature``."""
    term = {"edge": lambda: edge_structure_kd(student, teacher, batch),
            "feat": lambda: F.mse_loss(student.x_recon.float(), teacher.x_recon.detach().float()),
            "id": lambda: soft_kl(student.id_logits, teacher.id_logits, temperature)}
    return sum(term[name]() for name in terms)


def sensitivity_kd(student_clean: VGAEOutput, student: VGAEOutput, teacher_clean: VGAEOutput, teacher: VGAEOutput,
                   clean, corrupted, parts: Sequence[str] = ("feat", "id", "edge")) -> Tensor:
    """Anomaly-sensitivity KD: per window and reconstruction part (``parts``), how much the
    corruption raises the log error, student against teacher (MSE). Only the rise is matched, not
    the level a smaller student cannot reach."""
    def rise(a, b):
        ea, eb = reconstruction_errors(a, clean), reconstruction_errors(b, corrupted)
        return torch.stack([torch.log(eb[k] + LOG_EPS) - torch.log(ea[k] + LOG_EPS) for k in parts], dim=-1)
    return (rise(student_clean, student) - rise(teacher_clean, teacher).detach()).pow(2).mean()


def score_matching(student: VGAEOutput, teacher: VGAEOutput, batch) -> Tensor:
    """Anomaly-score KD: the mean squared difference of the log reconstruction errors per part
    (node features, IDs, edges) of every window, student against teacher (detached)."""
    s_err, t_err = reconstruction_errors(student, batch), reconstruction_errors(teacher, batch)
    terms = [(torch.log(s_err[k] + LOG_EPS) - torch.log(t_err[k].detach() + LOG_EPS)).pow(2).mean() for k in s_err]
    return torch.stack(terms).mean()


class FusionKD(nn.Module):
    """Distillation of the fusion teacher pair into the two-headed student.

    ``L = LogitKD(s.logits, t.logits, y)
    + recon_weight * ((1 - alpha) * VGAE loss on attack-free windows + alpha * score_weight * score matching)
    + FeatureKD(student encoder layers, teacher classifier layers)``.

    The score matching (:func:`score_matching`) runs over every window, attacks included: it is
    what teaches the student's reconstruction head which windows the teacher's autoencoder finds
    anomalous (the student's own loss sees attack-free windows only).

    Args:
        student_dims, teacher_dims: layer widths for the feature term.
        temperature, alpha: logit KD (``alpha`` also weighs score matching against the own loss).
        beta: feature KD weight (0: off).
        score_weight: weight of the score matching. Default 1.0.
        recon_weight: weight of the reconstruction terms beside the classification ones. Default 1.0.
        vgae_weights: the student's ``{"beta", "id_weight", "edge_weight"}``.
        class_weight: class weights of the hard-label CE.
    """

    def __init__(self, student_dims: Sequence[int], teacher_dims: Sequence[int], temperature: float = 4.0,
                 alpha: float = 0.7, beta: float = 0.1, score_weight: float = 1.0, recon_weight: float = 1.0,
                 vgae_weights: dict[str, float] | None = None, class_weight: Tensor | None = None):
        super().__init__()
        self.alpha, self.score_weight, self.recon_weight = alpha, score_weight, recon_weight
        self.logits = LogitKDLoss(temperature, alpha, class_weight)
        self.features = FeatureKD(student_dims, teacher_dims, beta) if beta > 0 else None
        self.vgae_weights = dict(vgae_weights or {"beta": 0.01, "id_weight": 1.0, "edge_weight": 1.0})

    @classmethod
    def from_models(cls, student: nn.Module, teacher: nn.Module, **kwargs: Any) -> FusionKD:
        s, t = student.config, teacher.config
        for key in ("kind", "num_node_features", "num_edge_features", "num_ids"):
            if s[key] != t[key]:
                raise ValueError(f"student {key}={s[key]!r} but teacher {key}={t[key]!r}: "
                                 "distil between models of one kind built on the same graphs")
        kwargs.setdefault("vgae_weights", {k: s[k] for k in ("beta", "id_weight", "edge_weight")})
        kwargs.setdefault("recon_weight", s["recon_weight"])
        return cls(student.embedding_dims, teacher.embedding_dims, **kwargs)

    def forward(self, student_out: FusionOutput, teacher_out: FusionOutput, batch) -> tuple[Tensor, dict[str, Tensor]]:
        loss, parts = self.logits(student_out.logits, teacher_out.logits, batch.y)
        own = masked_vgae_loss(student_out.recon, batch, batch.y == 0, **self.vgae_weights)
        match = score_matching(student_out.recon, teacher_out.recon, batch)
        recon = (1 - self.alpha) * own["loss"] + self.alpha * self.score_weight * match
        loss = loss + self.recon_weight * recon
        parts = {**parts, "recon": own["loss"].detach(), "score_match": match.detach()}
        if self.features is not None:
            feat = self.features(student_out.node_embeddings, teacher_out.node_embeddings)
            loss = loss + feat
            parts["feature"] = feat.detach()
        parts["total"] = loss.detach()
        return loss, parts
