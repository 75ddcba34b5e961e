"""Batched data: the one place that turns user data into size-bounded chunks.

A batch is ``(inputs, targets)``, inputs being one tensor or named tensors (gif/inputs.py).

Every loss in the engine is a *mean over samples*. When data arrives in batches of different
sizes, each batch's mean is weighted by ``len(batch) / N`` so that any batching of the same
samples gives the same loss, gradient and Hessian-vector product.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from . import inputs as inputs_
from .errors import InvalidArgumentError, UnknownClassError
from .inputs import Inputs

Batch = tuple[Inputs, torch.Tensor]
DataLike = Batch | Iterable[Batch]


@dataclass(frozen=True)
class Chunk:
    inputs: Inputs
    targets: torch.Tensor
    weight: float  # len(chunk) / total samples

    def __len__(self) -> int:
        return int(self.targets.shape[0])


class Chunks:
    """Materialised data split into chunks of at most ``chunk_size`` samples.

    Args:
        data: ``(inputs, targets)`` or an iterable of such batches (a DataLoader works).
        chunk_size: upper bound on samples per forward pass, which bounds activation memory.
        device: where the chunks live (the model's device).
        what: the argument name, for error messages.
    """

    def __init__(
        self,
        data: DataLike,
        *,
        chunk_size: int = 1024,
        device: torch.device | str | None = None,
        what: str = "data",
    ) -> None:
        if chunk_size < 1:
            raise InvalidArgumentError(f"`chunk_size` must be >= 1, got {chunk_size}")
        pieces: list[Batch] = []
        for x, y in _as_batches(data, what):
            for start in range(0, int(y.shape[0]), chunk_size):
                part = slice(start, start + chunk_size)
                pieces.append((inputs_.to(inputs_.take(x, part), device), y[part].to(device)))
        self.total = sum(int(y.shape[0]) for _, y in pieces)
        if self.total == 0:
            raise InvalidArgumentError(f"`{what}` is empty")
        self.chunks = [Chunk(x, y, int(y.shape[0]) / self.total) for x, y in pieces]

    def __iter__(self) -> Iterator[Chunk]:
        return iter(self.chunks)


def is_pair(data: object) -> bool:
    """Whether ``data`` is one ``(inputs, targets)`` pair (rather than an iterable of batches)."""
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and inputs_.is_inputs(data[0])
        and isinstance(data[1], torch.Tensor)
    )


def _as_batches(data: DataLike, what: str) -> list[Batch]:
    if is_pair(data):
        batches: list[tuple[Any, ...]] = [tuple(data)]
    else:
        try:
            batches = [tuple(b) for b in data]
        except TypeError as exc:
            raise InvalidArgumentError(
                f"`{what}` must be (inputs, targets) tensors or an iterable of such batches"
            ) from exc
    for i, batch in enumerate(batches):
        name = f"{what}[{i}]" if len(batches) > 1 else what
        if len(batch) != 2 or not isinstance(batch[1], torch.Tensor):
            raise InvalidArgumentError(f"`{name}` must be a pair (inputs, targets) of tensors")
        if batch[1].ndim == 0:
            raise InvalidArgumentError(f"`{name}`: targets must have a first (sample) dimension")
        inputs_.check(batch[0], int(batch[1].shape[0]), name)
    return batches


def as_pair(data: DataLike, *, what: str = "data") -> Batch:
    """Concatenate data given as a pair or as batches into one ``(inputs, targets)`` pair."""
    batches = _as_batches(data, what)
    if len(batches) == 1:
        return batches[0]
    return inputs_.concat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


#: Label dtypes the default cross-entropy takes (torch's ``nll_loss``: Long or Byte).
LABEL_DTYPES = (torch.int64, torch.uint8)


def check_class_labels(labels: torch.Tensor, num_classes: int | None, what: str) -> None:
    """Raise unless ``labels`` are what the default cross-entropy takes: a 1-D int64 (or uint8)
    tensor of classes in [0, ``num_classes``) (:class:`UnknownClassError` for the range; None:
    the class count is not known, the range is not checked)."""
    if labels.dtype not in LABEL_DTYPES or labels.ndim != 1:
        raise InvalidArgumentError(
            f"`{what}`: labels must be a 1-D int64 tensor of classes for the default cross-entropy loss, "
            f"got {str(labels.dtype).removeprefix('torch.')} of shape {tuple(labels.shape)}"
        )
    if num_classes is not None and labels.numel() and bool(((labels < 0) | (labels >= num_classes)).any()):
        low, high = int(labels.min()), int(labels.max())
        raise UnknownClassError(
            f"`{what}` has labels in [{low}, {high}], outside the model's [0, {num_classes})"
        )
