"""Evaluation of classifiers: accuracy, mean loss, per-class accuracy, and the paper's F1.

F1 (docs/method.md, "F1") is the harmonic mean of two accuracies given as fractions, e.g.
forgetting (1 − accuracy on the removed class) and utility (accuracy on the rest):

    F1 = 2·a·b / (a + b)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._util import eval_mode
from .hessian import LossFn, cross_entropy
from .inputs import Inputs, call, count, take, to


@dataclass(frozen=True)
class Scores:
    """Accuracy and mean loss of a model on one labelled set."""

    accuracy: float
    loss: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "loss": self.loss, "n": self.n}


@torch.no_grad()
def predict(model: nn.Module, inputs: Inputs, *, chunk_size: int = 1024) -> torch.Tensor:
    """Logits of ``model`` (eval mode) on ``inputs``, computed in chunks on the model's device."""
    device = next(model.parameters()).device
    n = count(inputs)
    with eval_mode(model):
        outs = [
            call(model, to(take(inputs, slice(i, i + chunk_size)), device)) for i in range(0, n, chunk_size)
        ]
    return torch.cat(outs) if outs else torch.empty(0)


def evaluate(
    model: nn.Module,
    inputs: Inputs,
    labels: torch.Tensor,
    *,
    loss_fn: LossFn | None = None,
    logits: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> Scores:
    """Accuracy and mean loss of ``model`` on ``(inputs, labels)`` (pass ``logits`` to reuse them),
    ``chunk_size`` samples per forward pass."""
    if len(labels) == 0:
        return Scores(float("nan"), float("nan"), 0)
    logits = predict(model, inputs, chunk_size=chunk_size) if logits is None else logits
    labels = labels.to(logits.device)
    loss = (loss_fn or cross_entropy)(logits, labels)
    accuracy = (logits.argmax(dim=1) == labels).double().mean()
    return Scores(float(accuracy), float(loss), len(labels))


def per_class_accuracy(
    model: nn.Module, inputs: Inputs, labels: torch.Tensor, num_classes: int
) -> list[float]:
    """Accuracy on each class (NaN for a class with no samples)."""
    pred = predict(model, inputs).argmax(dim=1).cpu()
    masks = [labels.cpu() == c for c in range(num_classes)]
    return [
        float((pred[m] == c).double().mean()) if bool(m.any()) else float("nan") for c, m in enumerate(masks)
    ]


def f1(a: float, b: float) -> float:
    """Harmonic mean of two fractions in [0, 1] (0 when both are 0)."""
    return 0.0 if a + b <= 0 else 2.0 * a * b / (a + b)
