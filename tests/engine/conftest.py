from __future__ import annotations

import os

import pytest
import torch
from torch import nn


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def tiny_cnn() -> nn.Module:
    """Conv2d + BatchNorm (eval) + Dropout + Conv1d-free head: 2-channel 5x5 images, 3 classes."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Tanh(), nn.Dropout(0.5), nn.Flatten(), nn.Linear(27, 3)
    ).double()
    with torch.no_grad():  # non-trivial running statistics
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


class Embedder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 3)
        self.conv = nn.Conv1d(3, 2, 2)
        self.head = nn.Linear(2, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens).transpose(1, 2)  # [B, 3, L]
        return self.head(torch.tanh(self.conv(h)).mean(dim=2))


def tiny_embedder() -> nn.Module:
    torch.manual_seed(2)
    return Embedder().double()


def make_data(kind: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    if kind == "mlp":
        x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    elif kind == "cnn":
        x = torch.randn(n, 2, 5, 5, generator=gen, dtype=torch.float64)
    else:
        x = torch.randint(0, 7, (n, 6), generator=gen)
    return x, torch.randint(0, 3, (n,), generator=gen)


BUILDERS = {"mlp": tiny_mlp, "cnn": tiny_cnn, "embed": tiny_embedder}


#: Where the ``tiny`` models and data live: ``GIF_TEST_DEVICE=cuda pytest tests/engine`` runs the
#: dense-reference checks on a GPU (the engine's work follows the model's device).
DEVICE = torch.device(os.environ.get("GIF_TEST_DEVICE", "cpu"))


def _to(data: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return data[0].to(DEVICE), data[1].to(DEVICE)


@pytest.fixture(params=sorted(BUILDERS))
def tiny(request):
    """(name, model, hessian_data, target_data) for each tiny architecture, on ``DEVICE``."""
    kind = request.param
    return kind, BUILDERS[kind]().to(DEVICE), _to(make_data(kind, 24, 10)), _to(make_data(kind, 5, 11))
