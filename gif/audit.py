"""The forgetting audit of an edit: membership inference, accuracies and the gap to retraining.

Sets (``AuditSets``, each capped at ``AUDIT_CAP`` samples by a seeded draw): the *forget* set F
(the removed samples; for a relabel, the relabelled samples under their **old** labels, which
the model should no longer fit), a sample R of the *retained* training samples, and a *holdout*
set D of samples from the training distribution that the model never saw. Per sample the model's
softmax p = softmax(f(x)) gives

    loss        ℓ = −log p_y                       (cross-entropy of the given label y)
    confidence  c = p_y
    entropy     h = −Σ_k p_k log p_k

Figures (``FIGURES``; docs/audit.md says how to read them):

* ``mia_auc`` — ROC AUC of the loss-threshold membership attack "member iff ℓ < τ", F the
  members and D the non-members: AUC = P(ℓ_F < ℓ_D) + ½ P(ℓ_F = ℓ_D) over independent draws,
  computed exactly from average ranks (:func:`mia_auc`). 0.5: F looks like unseen data.
* ``mia_efficacy`` — a logistic-regression attack on the features (c, h), fitted on R
  (members) against D (non-members) with balanced class weights, applied to F: the fraction of
  F predicted non-member (:func:`mia_efficacy`). Higher: more of F looks unseen.
* ``forget_accuracy``, ``retained_accuracy``, ``holdout_accuracy`` — accuracies (fractions).

With a reference model (retrained without F), ``gap`` holds |figure(model) − figure(reference)|
for every figure computed and their mean, ``avg_gap``. Every function here is pure except that
:func:`run_audit` counts its model evaluations in a :class:`gif.hessian.Work`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .data import Batch
from .errors import InvalidArgumentError
from .hessian import Work
from .inputs import count, take
from .metrics import predict

__all__ = [
    "AUDIT_CAP",
    "FIGURES",
    "AuditSets",
    "accuracy",
    "attack_features",
    "audit_sets",
    "fit_attack",
    "loss_histograms",
    "mia_auc",
    "mia_efficacy",
    "run_audit",
]

#: Most samples of each audit set (forget, retained, holdout): a seeded draw above it.
AUDIT_CAP = 2000
#: Bins of the loss histograms.
HISTOGRAM_BINS = 30
FIGURES = ("mia_auc", "mia_efficacy", "forget_accuracy", "retained_accuracy", "holdout_accuracy")
#: The figures that need a holdout set.
NEEDS_HOLDOUT = ("mia_auc", "mia_efficacy", "holdout_accuracy")
#: The per-sample features of the ``mia_efficacy`` attack, in column order.
ATTACK_FEATURES = ("true_label_confidence", "entropy")


# -- the figures -------------------------------------------------------------------------------------


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of ``values`` in increasing order, tied values sharing their average rank."""
    v = values.detach().to("cpu", torch.float64).flatten()
    order = torch.argsort(v, stable=True)
    _, counts = torch.unique_consecutive(v[order], return_counts=True)
    ends = torch.cumsum(counts, 0).double()  # the last rank of each group of equal values
    group_rank = ends - (counts.double() - 1) / 2  # the mean of ranks ends−c+1 .. ends
    ranks = torch.empty_like(v)
    ranks[order] = torch.repeat_interleave(group_rank, counts)
    return ranks


def mia_auc(member_losses: torch.Tensor, non_member_losses: torch.Tensor) -> float:
    """ROC AUC of the attack "member iff loss < τ" over every threshold τ.

    AUC = P(ℓ_m < ℓ_n) + ½ P(ℓ_m = ℓ_n) for a member m and a non-member n drawn independently,
    which is the Mann–Whitney statistic: with s = −ℓ ranked in increasing order (ties averaged)
    over both sets and R_m the sum of the members' ranks,
    AUC = (R_m − n_m(n_m + 1)/2) / (n_m n_n). 0.5: indistinguishable; 1: every member has a lower
    loss than every non-member. NaN when a set is empty.
    """
    m, n = member_losses.numel(), non_member_losses.numel()
    if m == 0 or n == 0:
        return float("nan")
    scores = -torch.cat([member_losses.flatten(), non_member_losses.flatten()]).to("cpu", torch.float64)
    rank_sum = float(average_ranks(scores)[:m].sum())
    return (rank_sum - m * (m + 1) / 2) / (m * n)


def attack_features(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[n, 2] float64: the confidence p_y of the given label and the entropy −Σ p log p."""
    log_p = torch.log_softmax(logits.detach().to("cpu", torch.float64), dim=1)
    p = log_p.exp()
    confidence = p.gather(1, labels.to("cpu").long().view(-1, 1)).flatten()
    entropy = -(p * log_p).nan_to_num(0.0).sum(dim=1)
    return torch.stack([confidence, entropy], dim=1)


@dataclass(frozen=True)
class Attack:
    """A fitted logistic regression: P(member | f) = σ(wᵀ (f − μ)/σ_f + b)."""

    weight: torch.Tensor
    bias: float
    mean: torch.Tensor
    scale: torch.Tensor

    def member_probability(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(((features.double() - self.mean) / self.scale) @ self.weight + self.bias)


def fit_attack(
    members: torch.Tensor, non_members: torch.Tensor, *, ridge: float = 1e-3, iterations: int = 50
) -> Attack:
    """Balanced, ridge-regularised logistic regression by Newton's method (deterministic).

    Features are standardised by the mean μ and standard deviation σ_f of both sets together.
    With a = (w, b), targets t_i = 1 for members and 0 for non-members and class weights
    ω_i = 1 / (2 n_class(i)) (each class weighs ½ whatever its size), it minimises

        L(a) = Σ_i ω_i [log(1 + e^{z_i}) − t_i z_i] + (ridge/2)‖w‖²,   z_i = wᵀ x_i + b,

    whose Newton step solves (Xᵀ Ω S X + ridge·I_w) Δ = −∇L with S = diag(σ(z)(1 − σ(z))).
    """
    if members.shape[0] == 0 or non_members.shape[0] == 0:
        raise InvalidArgumentError("the attack needs members and non-members")
    features = torch.cat([members, non_members]).double()
    mean, scale = features.mean(0), features.std(0, unbiased=False).clamp_min(1e-12)
    x = torch.cat([(features - mean) / scale, torch.ones(len(features), 1, dtype=torch.float64)], dim=1)
    t = torch.cat([torch.ones(len(members)), torch.zeros(len(non_members))]).double()
    omega = torch.cat([torch.full((len(members),), 0.5 / len(members)),
                       torch.full((len(non_members),), 0.5 / len(non_members))]).double()  # fmt: skip
    penalty = torch.full((x.shape[1],), ridge, dtype=torch.float64)
    penalty[-1] = 0.0  # the intercept is not penalised
    a = torch.zeros(x.shape[1], dtype=torch.float64)
    for _ in range(iterations):
        s = torch.sigmoid(x @ a)
        grad = x.T @ (omega * (s - t)) + penalty * a
        hess = x.T @ (x * (omega * s * (1 - s)).unsqueeze(1)) + torch.diag(penalty + 1e-12)
        step = torch.linalg.solve(hess, grad)
        a = a - step
        if float(step.norm()) < 1e-10:
            break
    return Attack(a[:-1], float(a[-1]), mean, scale)


def mia_efficacy(retained: torch.Tensor, holdout: torch.Tensor, forget: torch.Tensor) -> float:
    """The fraction of the forget set an attack fitted on retained (members) vs holdout
    (non-members) features predicts non-member (P(member) < ½): :func:`fit_attack`."""
    if forget.shape[0] == 0:
        return float("nan")
    return float((fit_attack(retained, holdout).member_probability(forget) < 0.5).double().mean())


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of samples whose largest logit is at their label (NaN for none)."""
    if len(labels) == 0:
        return float("nan")
    return float((logits.argmax(dim=1).cpu() == labels.cpu()).double().mean())


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy −log p_y of each sample (float64, CPU)."""
    return nn.functional.cross_entropy(
        logits.detach().to("cpu", torch.float64), labels.to("cpu").long(), reduction="none"
    )


def loss_histograms(losses: dict[str, dict[str, torch.Tensor]], bins: int = HISTOGRAM_BINS) -> dict:
    """Counts of per-sample losses in ``bins`` equal bins shared by every series.

    ``losses`` maps a stage (``before`` / ``after``) to series (``forget`` / ``holdout``). The
    bins span [0, q] with q the 99th percentile of all the losses together; larger losses are
    counted in the last bin (``clipped``: how many were). Returns ``{"edges": [bins + 1],
    "clipped": {stage: {series: n}}, stage: {series: [counts]}}``.
    """
    every = torch.cat([v.flatten() for series in losses.values() for v in series.values()]).double()
    top = max(float(torch.quantile(every, 0.99)) if every.numel() else 1.0, 1e-6)
    edges = torch.linspace(0.0, top, bins + 1, dtype=torch.float64)
    out: dict = {"edges": edges.tolist(), "clipped": {}}
    for stage, series in losses.items():
        out["clipped"][stage] = {name: int((v > top).sum()) for name, v in series.items()}
        out[stage] = {
            name: torch.histc(v.double().clamp(0.0, top), bins=bins, min=0.0, max=top).long().tolist()
            for name, v in series.items()
        }
    return out


# -- the sets and the audit --------------------------------------------------------------------------


@dataclass
class AuditSets:
    """The labelled sets the audit evaluates (see the module docstring)."""

    forget: Batch
    retained: Batch
    holdout: Batch | None

    def sizes(self) -> dict[str, int]:
        return {name: 0 if s is None else len(s[1]) for name, s in vars(self).items()}


def _draw(rows: torch.Tensor, cap: int, gen: torch.Generator) -> torch.Tensor:
    """All of ``rows``, or a seeded sample of ``cap`` of them, in their order."""
    if rows.numel() <= cap:
        return rows
    return rows[torch.sort(torch.randperm(rows.numel(), generator=gen)[:cap]).values]


def audit_sets(
    train: Batch, edited: torch.Tensor, holdout: Batch | None, *, seed: int, cap: int = AUDIT_CAP
) -> AuditSets:
    """F = the edited samples under their training labels, R = the other training samples,
    D = ``holdout``: each a seeded sample of at most ``cap`` (its own generator, seeded ``seed``)."""
    x, y = train
    gen = torch.Generator().manual_seed(seed)
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[edited.cpu()] = False
    forget = _draw(edited.cpu(), cap, gen)
    retained = _draw(torch.nonzero(keep).flatten(), cap, gen)
    d = None
    if holdout is not None:
        hx, hy = holdout
        pick = _draw(torch.arange(count(hx)), cap, gen)
        d = (take(hx, pick), hy[pick])
    return AuditSets((take(x, forget), y[forget]), (take(x, retained), y[retained]), d)


def _evaluate(
    model: nn.Module, sets: AuditSets, work: Work, chunk_size: int
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Every figure of one model, and the per-sample losses of ``forget`` and ``holdout`` (one
    forward evaluation per set, counted in ``work``; ``chunk_size`` samples per forward pass)."""
    present: dict[str, Batch] = {name: data for name, data in vars(sets).items() if data is not None}
    logits = {
        name: predict(model, x, chunk_size=chunk_size).detach().cpu() for name, (x, _) in present.items()
    }
    work.forward_evaluations += len(logits)
    labels = {name: y.cpu() for name, (_, y) in present.items()}
    figures = {f"{name}_accuracy": accuracy(logits[name], labels[name]) for name in logits}
    losses: dict[str, torch.Tensor] = {
        name: per_sample_loss(logits[name], labels[name]) for name in ("forget", "holdout") if name in logits
    }
    if "holdout" in logits:
        figures["mia_auc"] = mia_auc(losses["forget"], losses["holdout"])
        features = {name: attack_features(logits[name], labels[name]) for name in logits}
        figures["mia_efficacy"] = mia_efficacy(features["retained"], features["holdout"], features["forget"])
    return {k: figures[k] for k in FIGURES if k in figures}, losses


def _gap(figures: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
    """|figure − reference figure| for each figure both have, and their mean ``avg_gap``."""
    gaps = {k: abs(figures[k] - reference[k]) for k in figures if k in reference}
    finite = [v for v in gaps.values() if v == v]
    return {**gaps, "avg_gap": sum(finite) / len(finite) if finite else float("nan")}


def not_computed(holdout: bool, reference: bool) -> dict[str, str]:
    """Why each figure that the audit will not compute is missing."""
    if not holdout and not reference:
        why = "no holdout given: the audit runs when the edit gets `holdout` (samples the model never saw)"
        return {**dict.fromkeys(FIGURES, why), "gap": why, "histograms": why}
    out: dict[str, str] = {}
    if not holdout:
        why = "needs a holdout set (samples from the training distribution the model never saw)"
        out = {**dict.fromkeys(NEEDS_HOLDOUT, why), "histograms": why}
    if not reference:
        out["gap"] = "needs a reference model (retrained without the forget set)"
    return out


def run_audit(
    before: nn.Module,
    after: nn.Module,
    sets: AuditSets,
    reference: nn.Module | None,
    work: Work,
    chunk_size: int = 1024,
) -> dict:
    """The audit of one edit (module docstring), JSON-ready: ``before`` / ``after`` figures,
    with a reference its figures and the ``gap`` of each stage to them, the loss histograms of the
    forget and holdout sets, set sizes, and ``not_computed`` (figure → why); ``chunk_size``
    samples per forward pass."""
    stages = {
        name: _evaluate(model, sets, work, chunk_size)
        for name, model in (("before", before), ("after", after))
    }
    out: dict = {
        "samples": sets.sizes(),
        "features": list(ATTACK_FEATURES),
        **{stage: figures for stage, (figures, _) in stages.items()},
        "not_computed": not_computed(sets.holdout is not None, reference is not None),
    }
    if reference is not None:
        out["reference"] = ref = _evaluate(reference, sets, work, chunk_size)[0]
        out["gap"] = {stage: _gap(figures, ref) for stage, (figures, _) in stages.items()}
    if sets.holdout is not None:
        out["histograms"] = loss_histograms({stage: losses for stage, (_, losses) in stages.items()})
    return out


def skipped() -> dict:
    """The audit of an edit given neither a holdout nor a reference: what is missing and why."""
    return {"not_computed": not_computed(False, False)}
