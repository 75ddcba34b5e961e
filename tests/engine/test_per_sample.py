"""Per-sample gradients by layer (one backward pass, Linear / Conv layers) and vmapped, against
autograd's gradient of each sample alone in float64 (tests/engine/reference.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gif import per_sample
from gif.hessian import FlatModel
from gif.per_sample import per_sample_gradients

from .conftest import tiny_cnn, tiny_mlp
from .reference import dense_gradient, label_log_odds


class _ConvNet(nn.Module):
    """Conv2d (bias, stride, padding, dilation), Conv1d without bias, a Linear over positions."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, stride=2, padding=1, dilation=1)
        self.conv1d = nn.Conv1d(4, 3, 2, padding=1, bias=False)
        self.per_position = nn.Linear(3, 5)
        self.head = nn.Linear(5 * 10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv(x)).flatten(2)  # [B, 4, 9]
        h = torch.tanh(self.conv1d(h))  # [B, 3, 10]
        h = torch.tanh(self.per_position(h.transpose(1, 2)))  # [B, 10, 5]: a Linear on sequences
        return self.head(h.flatten(1))


class _Shared(nn.Module):
    """One Linear applied twice: its gradient is not one layer call's."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.layer(torch.tanh(self.layer(x)))))


def _conv_net() -> nn.Module:
    torch.manual_seed(3)
    return _ConvNet().double().eval()


def _shared() -> nn.Module:
    torch.manual_seed(4)
    return _Shared().double().eval()


def _reflect_pad() -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), nn.Flatten(), nn.Linear(75, 3)
    ).double()


def _data(shape: tuple[int, ...], n: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, *shape, dtype=torch.float64, generator=gen), torch.randint(
        0, 3, (n,), generator=gen
    )


def _expected(model: nn.Module, x: torch.Tensor, y: torch.Tensor, of: str) -> torch.Tensor:
    loss = None if of == "loss" else (lambda out, t: label_log_odds(out, t))
    return torch.stack(
        [dense_gradient(model, x[i : i + 1], y[i : i + 1], loss_fn=loss) for i in range(len(y))]
    )


CASES = [
    (tiny_mlp, (4,), True),
    (_conv_net, (2, 5, 5), True),
    (tiny_cnn, (2, 5, 5), False),  # BatchNorm's affine parameters sit outside Linear / Conv
    (_shared, (4,), False),
    (_reflect_pad, (2, 5, 5), False),  # unfolding pads with zeros only
]


@pytest.mark.parametrize(("build", "shape", "by_layer"), CASES)
@pytest.mark.parametrize("of", ["loss", "margin"])
def test_per_sample_gradients_are_each_samples_own(build, shape, by_layer, of):
    model = build()
    x, y = _data(shape)
    flat = FlatModel(model)
    out = per_sample_gradients(flat, x, y, of=of)
    assert flat.by_layer is by_layer
    expected = _expected(model, x, y, of)
    assert float((out - expected).abs().max()) <= 1e-12 * float(expected.abs().max())
    again = per_sample_gradients(flat, x, y, of=of)  # the decision is remembered
    assert flat.by_layer is by_layer and torch.equal(again, out)


def test_by_layer_and_vmapped_agree_in_float32(monkeypatch):
    torch.manual_seed(6)
    model = _ConvNet().eval()
    x, y = _data((2, 5, 5), n=40)
    x = x.float()
    by_layer = per_sample_gradients(FlatModel(model), x, y)
    monkeypatch.setattr(per_sample, "_covering_blocks", lambda flat: None)
    vmapped_flat = FlatModel(model)
    vmapped = per_sample_gradients(vmapped_flat, x, y)
    assert vmapped_flat.by_layer is False
    assert torch.allclose(by_layer, vmapped, rtol=1e-4, atol=1e-6)
