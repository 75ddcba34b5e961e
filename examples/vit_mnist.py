"""A small Hugging Face ViT on MNIST-5k with a class removed, against retraining.

No hub access is needed: the ViT is built from a config made here (28×28 grey images, 7×7
patches, 2 layers of width 32), trained on MNIST-5k (examples/mnist.py), and edited through the
engine with its inputs as named tensors (``{"pixel_values": x}``) and its outputs' ``.logits``
(docs/engine.md, "Inputs that are not one tensor"). The reference is the same recipe retrained
without the class, timed in the same run.

Columns: test accuracy on the retained classes and on the removed class, seconds, edit ÷
retraining.

    python examples/vit_mnist.py [--seeds 1] [--cls 3] [--epochs 8] [--methods "default,hessian 1024"]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import transformers
from digits import report
from mnist import load_mnist
from torch import nn

import gif
from gif.models import huggingface

CONFIG = transformers.ViTConfig(
    image_size=28, patch_size=7, num_channels=1, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=64, num_labels=10, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
).to_dict()  # fmt: skip

#: name -> gif.remove options ({} = the engine's defaults)
METHODS: dict[str, dict] = {
    "default": {},
    "GIF 5%": {"method": "gif"},
    "hessian 1024": {"method": "gif", "hessian_samples": 1024},
    "IF + K-FAC": {"method": "if", "solver": "kfac"},
    "IF": {"method": "if"},
    "FIF": {"method": "fif"},
    "GIF 20%": {"ratio": 0.2},
    "IF classifier only": {"method": "if", "param_names": ("classifier.*",)},
    "FIF classifier only": {"method": "fif", "ratio": 1.0, "param_names": ("classifier.*",)},
}


def train(x: torch.Tensor, y: torch.Tensor, *, seed: int, epochs: int) -> nn.Module:
    """Adam, batch 64, cosine schedule; the model comes back in eval mode."""
    torch.manual_seed(seed)
    model = huggingface.build(CONFIG).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 64):
            b = perm[i : i + 64]
            opt.zero_grad()
            model(pixel_values=x[b], labels=y[b]).loss.backward()
            opt.step()
        sched.step()
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * gif.metrics.evaluate(model, {"pixel_values": x}, y).accuracy


def run(seed: int, cls: int, epochs: int) -> dict[str, list[float]]:
    s = load_mnist(seed)
    model = train(s.x_train, s.y_train, seed=seed, epochs=epochs)
    keep_train = s.y_train != cls
    start = time.perf_counter()
    retrained = train(s.x_train[keep_train], s.y_train[keep_train], seed=seed, epochs=epochs)
    retrain_seconds = time.perf_counter() - start
    keep = s.y_test != cls
    rows: dict[str, list[float]] = {}

    def record(name: str, m: nn.Module, seconds: float) -> None:
        retained, removed = (
            accuracy(m, s.x_test[keep], s.y_test[keep]),
            accuracy(m, s.x_test[~keep], s.y_test[~keep]),
        )
        rows[name] = [retained, removed, seconds, seconds / retrain_seconds]
        print(f"  seed {seed} {name:24s} retained {retained:6.2f} removed {removed:6.2f} ({seconds:.1f}s, "
              f"{seconds / retrain_seconds:.2f}× retraining)", flush=True)  # fmt: skip

    record("original", model, 0.0)
    record("retrained from scratch", retrained, retrain_seconds)
    for name, options in METHODS.items():
        start = time.perf_counter()
        result = gif.remove(
            model, ({"pixel_values": s.x_train}, s.y_train), {"class": cls}, seed=seed, **options
        )
        record(name, result.model, time.perf_counter() - start)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--cls", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "output")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"a subset of {', '.join(METHODS)}")
    args = parser.parse_args()
    for name in set(METHODS) - set(args.methods.split(",")):
        del METHODS[name]
    torch.set_num_threads(args.threads)
    runs = [run(seed, args.cls, args.epochs) for seed in range(args.seeds)]
    report(runs, title=f"Class {args.cls} removal, MNIST-5k, ViT (Hugging Face, 2 layers)",
           columns=["retained acc", "removed-class acc", "seconds", "÷ retraining"], out=args.out, stem="vit_mnist",
           plotted=2)  # fmt: skip


if __name__ == "__main__":
    main()
