"""Rebuild the bundled quick-start files: a digits MLP checkpoint and its data splits.

    python examples/quickstart/make_bundle.py

Writes ``model.safetensors`` (gif.models "mlp", input_shape [1, 8, 8], hidden_sizes [64],
num_classes 10), ``train.safetensors`` and ``test.safetensors`` (tensors ``inputs``, ``labels``)
next to this file. Deterministic: the committed files are what this script produces.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import gif

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from digits import MLP, load_digits, train  # noqa: E402

ARCH = {k: v for k, v in MLP.items() if k != "name"}


def main() -> None:
    torch.set_num_threads(1)
    split = load_digits(0)
    model = train(MLP, split.x_train, split.y_train, seed=0, epochs=40)
    gif.io.save_checkpoint(model, HERE / "model.safetensors", metadata={"arch": "mlp", "config": str(ARCH)})
    gif.io.save_dataset(split.x_train, split.y_train, HERE / "train.safetensors")
    gif.io.save_dataset(split.x_test, split.y_test, HERE / "test.safetensors")
    print(f"wrote model/train/test under {HERE}")


if __name__ == "__main__":
    main()
