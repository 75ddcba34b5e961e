"""The leave-one-out head (gif/loo_head.py): its closed form against refitting the ridge head
without each sample, where ``auto`` picks it, and that it finds fitted wrong labels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gif
from gif.errors import InvalidArgumentError
from gif.loo_head import RIDGE, head_of, loo_margins
from gif.scoring import self_influence_measure

from .conftest import BUILDERS, make_data

N_TRAIN = 24


def penultimate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input of the model's last module (all three tiny models end in a Linear layer)."""
    seen = []
    last = model.head if hasattr(model, "head") else model[-1]
    handle = last.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0].double()


def refitted_without_each(features: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
    """max_{k≠y_i} ŷ_{−i,k} − ŷ_{−i,y_i} by solving the ridge problem n times, each time without
    sample i (λ from the full data, as the closed form defines it)."""
    f = torch.cat([features, torch.ones(len(features), 1, dtype=torch.float64)], dim=1)
    onehot = nn.functional.one_hot(y, classes).double()
    eye = torch.eye(f.shape[1], dtype=torch.float64)
    lam = RIDGE * float(torch.linalg.eigvalsh(f.T @ f)[-1])
    out = []
    for i in range(len(y)):
        keep = torch.arange(len(y)) != i
        w = torch.linalg.solve(f[keep].T @ f[keep] + lam * eye, f[keep].T @ onehot[keep])
        pred = f[i] @ w
        others = pred.clone()
        others[y[i]] = float("-inf")
        out.append(others.max() - pred[y[i]])
    return torch.stack(out)


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_closed_form_equals_refitting_without_each_sample(kind):
    model = BUILDERS[kind]()
    x, y = make_data(kind, N_TRAIN, 10)
    expected = refitted_without_each(penultimate(model, x), y, 3)
    for chunk in (N_TRAIN, 5):
        actual = loo_margins(model, (x, y), chunk_size=chunk)
        assert actual.dtype == torch.float64
        torch.testing.assert_close(actual, expected, rtol=1e-8, atol=1e-10)
    assert bool((expected > 0).any()) and bool((expected < 0).any())


def test_auto_picks_the_head_unless_a_curvature_is_asked_for():
    model = BUILDERS["mlp"]()
    train = make_data("mlp", N_TRAIN, 10)
    assert self_influence_measure(model, train) == "head"
    assert self_influence_measure(model, train, curvature=True) == "margin"
    head = loo_margins(model, train).to(torch.float64)
    torch.testing.assert_close(gif.self_influence(model, train), head)
    torch.testing.assert_close(gif.self_influence(model, train, measure="head", rank=5), head)
    margin = gif.self_influence(model, train, rank=10_000)  # a curvature option: the margin
    torch.testing.assert_close(margin, gif.self_influence(model, train, rank=10_000, measure="margin"))
    assert not torch.allclose(margin, head)


class Scaled(nn.Module):
    """Logits that are not a Linear layer's output (a temperature after the last layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = BUILDERS["mlp"]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) / 2.0


def test_without_a_linear_head_auto_measures_the_margin_and_head_is_refused():
    model = Scaled()
    x, y = make_data("mlp", N_TRAIN, 10)
    assert head_of(model, x[:1]) is None
    assert self_influence_measure(model, (x, y)) == "margin"
    for call in (
        lambda: gif.self_influence(model, (x, y), measure="head"),
        lambda: gif.self_influence(BUILDERS["mlp"](), (x, y.double()), measure="head"),
    ):
        with pytest.raises(InvalidArgumentError, match="head"):
            call()


def test_labels_beyond_the_logits_are_refused():
    model = BUILDERS["mlp"]()
    x, y = make_data("mlp", N_TRAIN, 10)
    with pytest.raises(InvalidArgumentError, match=r"\[0, 3\)"):
        loo_margins(model, (x, torch.full_like(y, 3)))


def test_finds_labels_a_network_memorised():
    """Two well-separated blobs per class, 3 classes, 30 of 300 labels moved to another class, an
    MLP trained until it fits every label: the loss no longer gives the wrong labels away (it
    ranks half of them in its top 30), the left-out head ranks all of them first and only them
    positive."""
    gen = torch.Generator().manual_seed(0)
    centres = 4 * torch.randn(3, 2, 8, generator=gen, dtype=torch.float64)
    y_true = torch.arange(300) % 3
    x = centres[y_true, torch.randint(0, 2, (300,), generator=gen)] + 0.5 * torch.randn(
        300, 8, generator=gen, dtype=torch.float64
    )
    flipped = torch.arange(0, 300, 10)
    y = y_true.clone()
    y[flipped] = (y[flipped] + 1) % 3
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 3)).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(1000):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert bool((model(x).argmax(1) == y).all())  # every wrong label fitted
        loss = nn.functional.cross_entropy(model(x), y, reduction="none")

    def found(scores: torch.Tensor) -> float:
        top = torch.topk(scores, len(flipped)).indices
        return float(torch.isin(flipped, top).double().mean())

    scores = gif.self_influence(model, (x, y))
    assert found(loss) <= 0.6
    assert found(scores) == 1.0
    assert bool((scores[flipped] > 0).all()) and int((scores > 0).sum()) == len(flipped)
