"""Tiny models and files built in code for the service tests (digits ship with scikit-learn)."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import torch
from torch import nn

import gif

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import digits as _examples_digits

MLP_CONFIG = {"input_shape": [1, 8, 8], "hidden_sizes": [32], "num_classes": 10}
# The digits split is the examples' one, so tests and examples see the same data.
N_TRAIN = _examples_digits.N_TRAIN
Digits = _examples_digits.Split
digits = _examples_digits.load_digits


def train_mlp(data: Digits, *, epochs: int = 30, seed: int = 0) -> nn.Module:
    """SGD with momentum, batch 64: ~95% test accuracy in about a second on one thread."""
    torch.manual_seed(seed)
    model = gif.models.build("mlp", **MLP_CONFIG)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(data.y_train), generator=gen)
        for i in range(0, len(perm), 64):
            batch = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(data.x_train[batch]), data.y_train[batch]).backward()
            opt.step()
    return model.eval()


def write_files(folder: Path, data: Digits, model: nn.Module) -> dict[str, Path]:
    """checkpoint.safetensors, train.safetensors, test.safetensors, queries.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "checkpoint": folder / "checkpoint.safetensors",
        "train": folder / "train.safetensors",
        "test": folder / "test.safetensors",
        "queries": folder / "queries.safetensors",
    }
    gif.io.save_checkpoint(model, paths["checkpoint"])
    gif.io.save_dataset(data.x_train, data.y_train, paths["train"])
    gif.io.save_dataset(data.x_test, data.y_test, paths["test"])
    gif.io.save_dataset(data.x_test[:4], data.y_test[:4], paths["queries"])
    return paths


class _Canary:
    """Unpickling this would create ``path`` (it must never happen)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def canary_pickle(path: Path, canary: Path) -> Path:
    """A ``.pt``-looking pickle whose ``__reduce__`` would write ``canary``."""
    with open(path, "wb") as f:
        pickle.dump({"weight": _Canary(canary)}, f, protocol=2)
    return path


def truncated(source: Path, path: Path, keep: float = 0.5) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def accuracy_by_class(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    return gif.metrics.per_class_accuracy(model, x, y, 10)
