"""The forgetting audit (gif/audit.py): its figures against independent computations, and the
audit in edit reports on scikit-learn digits with a model trained to memorise."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import gif
from gif.audit import (
    FIGURES,
    attack_features,
    average_ranks,
    fit_attack,
    loss_histograms,
    mia_auc,
    mia_efficacy,
)
from gif.edit_sets import ACCURACY_PENALTY, ACCURACY_TOLERANCE
from gif.errors import InvalidArgumentError, UnknownClassError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from digits import Split, load_digits
from sample_removal_audit import memorise

# -- the figures ------------------------------------------------------------------------------------


def brute_force_auc(members: list[float], non_members: list[float]) -> float:
    """P(loss_m < loss_n) + ½ P(loss_m = loss_n), by counting every pair."""
    wins = sum(1.0 if m < n else 0.5 if m == n else 0.0 for m, n in itertools.product(members, non_members))
    return wins / (len(members) * len(non_members))


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_the_pairwise_count_with_ties(seed):
    gen = torch.Generator().manual_seed(seed)
    members = torch.randint(0, 6, (int(torch.randint(1, 12, (1,), generator=gen)),), generator=gen).double()
    non_members = torch.randint(
        2, 8, (int(torch.randint(1, 12, (1,), generator=gen)),), generator=gen
    ).double()
    expected = brute_force_auc(members.tolist(), non_members.tolist())
    assert mia_auc(members, non_members) == pytest.approx(expected, abs=1e-12)


def test_average_ranks_share_ties():
    assert average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0, 3.0])).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]


def test_auc_is_one_half_for_identical_and_one_for_separated_losses():
    losses = torch.rand(200, generator=torch.Generator().manual_seed(0))
    assert mia_auc(losses, losses.clone()) == pytest.approx(0.5)
    assert mia_auc(losses * 0.1, 1.0 + losses) == 1.0  # every member has the lower loss
    assert mia_auc(1.0 + losses, losses * 0.1) == 0.0
    assert mia_auc(torch.tensor([]), losses) != mia_auc(torch.tensor([]), losses)  # NaN when empty


def _cloud(center: tuple[float, float], n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.tensor(center, dtype=torch.float64) + 0.1 * torch.randn(
        n, 2, generator=gen, dtype=torch.float64
    )


def test_efficacy_on_synthetic_features():
    members, non_members = _cloud((0.95, 0.1), 300, 0), _cloud((0.5, 1.2), 40, 1)  # unbalanced on purpose
    assert mia_efficacy(members, non_members, _cloud((0.5, 1.2), 50, 2)) >= 0.95  # looks unseen
    assert mia_efficacy(members, non_members, _cloud((0.95, 0.1), 50, 3)) <= 0.05  # looks trained on
    a, b = fit_attack(members, non_members), fit_attack(members, non_members)
    assert torch.equal(a.weight, b.weight) and a.bias == b.bias  # deterministic


def test_attack_classes_are_balanced():
    """Identical distributions, 10 members per non-member: a balanced attack still calls about
    half of fresh samples non-members (an unweighted one would call nearly all of them members)."""
    members, non_members = _cloud((0.5, 0.5), 1000, 0), _cloud((0.5, 0.5), 100, 1)
    assert 0.2 <= mia_efficacy(members, non_members, _cloud((0.5, 0.5), 500, 2)) <= 0.8


def test_attack_features_are_confidence_and_entropy():
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    f = attack_features(logits, torch.tensor([1, 0]))
    assert f[0].tolist() == pytest.approx([0.5, float(torch.log(torch.tensor(2.0)))])
    assert f[1, 0] == pytest.approx(1.0) and f[1, 1] == pytest.approx(0.0, abs=1e-6)


def test_histograms_share_edges_and_count_every_sample():
    losses = {
        "before": {"forget": torch.linspace(0, 1, 50), "holdout": torch.linspace(0, 5, 80)},
        "after": {"forget": torch.linspace(0, 3, 50), "holdout": torch.linspace(0, 5, 80)},
    }
    h = loss_histograms(losses, bins=10)
    assert len(h["edges"]) == 11 and h["edges"][0] == 0.0
    assert sum(h["before"]["forget"]) == 50 and sum(h["after"]["holdout"]) == 80
    assert h["clipped"]["before"]["holdout"] >= 1  # above the 99th percentile, counted in the last bin


# -- the audit in edit reports ------------------------------------------------------------------------


N_MEMORISED = 100


@pytest.fixture(scope="module")
def memorised():
    """The first 100 digits training samples, the test split as holdout, and a model that
    memorised the 100 (its held-out accuracy is ~87%: unseen samples have larger losses)."""
    pytest.importorskip("sklearn")
    s = load_digits(0)
    s = Split(s.x_train[:N_MEMORISED], s.y_train[:N_MEMORISED], s.x_test, s.y_test)
    return s, memorise(s.x_train, s.y_train, seed=0)  # examples/sample_removal_audit.py's recipe


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def _losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return nn.functional.cross_entropy(model(x).double(), y, reduction="none")


def test_sample_removal_audit_sees_membership_before_the_edit(memorised):
    s, model = memorised
    forget = torch.randperm(len(s.y_train), generator=torch.Generator().manual_seed(1))[:30]
    edit = gif.remove(model, (s.x_train, s.y_train), forget, newton_steps=1, holdout=(s.x_test, s.y_test))
    audit = edit.report["audit"]
    before = audit["before"]
    expected_auc = mia_auc(
        _losses(model, s.x_train[forget], s.y_train[forget]), _losses(model, s.x_test, s.y_test)
    )
    assert before["mia_auc"] == pytest.approx(expected_auc)
    assert before["mia_auc"] > 0.65  # the memorised samples have lower losses than unseen ones
    assert before["forget_accuracy"] == pytest.approx(_accuracy(model, s.x_train[forget], s.y_train[forget]))
    assert before["holdout_accuracy"] == pytest.approx(_accuracy(model, s.x_test, s.y_test))
    assert audit["after"]["holdout_accuracy"] == pytest.approx(_accuracy(edit.model, s.x_test, s.y_test))
    assert 0.0 <= audit["after"]["mia_efficacy"] <= 1.0
    assert audit["samples"] == {"forget": 30, "retained": 70, "holdout": len(s.y_test)}
    assert set(audit["before"]) == set(FIGURES) and "gap" in audit["not_computed"]
    assert sum(audit["histograms"]["before"]["forget"]) == 30
    assert edit.report["work"]["forward_evaluations"] >= 6  # 3 sets × before / after


def test_with_a_holdout_sample_removal_is_judged_against_unseen_data(memorised):
    """On a memorising model, carved validation data was seen in training: judged against it the
    removed samples already look unseen and no step is taken. Judged against the holdout, the
    edit raises their loss towards unseen samples' (the attack's AUC falls towards 0.5) while
    the validation and holdout accuracies stay within ACCURACY_TOLERANCE of their start or are
    penalised; the removed samples' loss is compared with the holdout's before the edit, so raising
    every loss does not make them look unseen."""
    s, model = memorised
    forget = torch.randperm(len(s.y_train), generator=torch.Generator().manual_seed(0))[:30]
    data, holdout = (s.x_train, s.y_train), (s.x_test, s.y_test)
    blind = gif.remove(model, data, forget, newton_steps=1)
    assert blind.report["newton_steps"][0]["step"]["scale"] == 0.0  # no step improves the objective
    edit = gif.remove(model, data, forget, newton_steps=1, holdout=holdout)
    step = edit.report["newton_steps"][0]["step"]
    assert step["scale"] > 0.0
    audit = edit.report["audit"]
    assert audit["after"]["mia_auc"] < audit["before"]["mia_auc"] - 0.05
    removed, unseen = _losses(edit.model, s.x_train[forget], s.y_train[forget]), _losses(edit.model, *holdout)
    before = _losses(model, s.x_train[forget], s.y_train[forget]).mean() / _losses(model, *holdout).mean()
    assert float(removed.mean() / unseen.mean()) > 5 * float(before)
    metrics = edit.report["metrics"]
    ratio = min(1.0, float(removed.mean() / _losses(model, *holdout).mean()))  # unseen loss before the edit
    expected = ratio
    for on in ("validation", "unseen"):  # each accuracy within ACCURACY_TOLERANCE, or penalised
        floor = metrics["before"][on]["accuracy"] - ACCURACY_TOLERANCE
        after = metrics["after"][on]["accuracy"]
        expected *= 1.0 if after >= floor else (after / floor) ** ACCURACY_PENALTY
    # float32 losses, summed over other chunks than the engine's: agreement to a few ulps of the mean
    assert step["objective"] == pytest.approx(expected, rel=1e-5)


def test_class_removal_audit_with_a_reference(memorised):
    s, model = memorised
    cls, keep = 3, s.y_train != 3
    retrained = memorise(s.x_train[keep], s.y_train[keep], seed=0)
    edit = gif.remove(
        model, (s.x_train, s.y_train), {"class": cls}, holdout=(s.x_test, s.y_test), reference=retrained
    )
    audit = edit.report["audit"]
    assert audit["before"]["forget_accuracy"] > 0.9
    assert audit["after"]["forget_accuracy"] < 0.1
    assert audit["reference"]["forget_accuracy"] == pytest.approx(
        _accuracy(retrained, s.x_train[~keep], s.y_train[~keep])
    )
    gap = audit["gap"]["after"]
    for figure in FIGURES:
        assert gap[figure] == pytest.approx(abs(audit["after"][figure] - audit["reference"][figure]))
    assert gap["avg_gap"] == pytest.approx(sum(gap[f] for f in FIGURES) / len(FIGURES))
    assert gap["avg_gap"] < audit["gap"]["before"]["avg_gap"]  # the edit moves towards retraining
    assert audit["not_computed"] == {}


def _tiny_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def test_without_holdout_the_audit_says_what_is_missing_and_costs_nothing():
    x, y = _tiny_data(60, 0)
    edit = gif.remove(_tiny(), (x, y), torch.arange(5), newton_steps=1)
    missing = edit.report["audit"]["not_computed"]
    assert set(missing) == {*FIGURES, "gap", "histograms"}
    assert "no holdout" in missing["mia_auc"]
    assert set(edit.report["audit"]) == {"not_computed"}


def test_with_a_reference_but_no_holdout_the_accuracies_and_their_gaps_are_computed():
    x, y = _tiny_data(60, 0)
    edit = gif.relabel(_tiny(), (x, y), torch.arange(4), (y[:4] + 1) % 3, newton_steps=1, reference=_tiny())
    audit = edit.report["audit"]
    assert set(audit["after"]) == {"forget_accuracy", "retained_accuracy"}
    assert set(audit["not_computed"]) == {"mia_auc", "mia_efficacy", "holdout_accuracy", "histograms"}
    assert "holdout" in audit["not_computed"]["mia_auc"]
    assert audit["gap"]["after"]["avg_gap"] == pytest.approx(
        (audit["gap"]["after"]["forget_accuracy"] + audit["gap"]["after"]["retained_accuracy"]) / 2
    )


class TwoInputs(nn.Module):
    """A classifier of named inputs (keyword arguments), like a Hugging Face model."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(2, 3)

    def forward(self, pixels: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        return self.a(pixels) + self.b(extra)


def test_named_input_holdout():
    torch.manual_seed(0)
    (x, y), (hx, hy) = _tiny_data(60, 0), _tiny_data(30, 1)
    train = ({"pixels": x, "extra": x[:, :2] ** 2}, y)
    holdout = ({"pixels": hx, "extra": hx[:, :2] ** 2}, hy)
    edit = gif.remove(TwoInputs(), train, torch.arange(6), method="if", newton_steps=1, holdout=holdout)
    audit = edit.report["audit"]
    assert audit["samples"] == {"forget": 6, "retained": 54, "holdout": 30}
    assert 0.0 <= audit["after"]["mia_auc"] <= 1.0


def test_bad_audit_inputs_are_refused():
    x, y = _tiny_data(60, 0)
    with pytest.raises(UnknownClassError):
        gif.remove(_tiny(), (x, y), torch.arange(5), holdout=(x[:10], y[:10] + 3))
    with pytest.raises(InvalidArgumentError, match="classes"):
        gif.remove(_tiny(), (x, y), torch.arange(5), reference=nn.Linear(4, 5))
