"""Job inputs → a model and tensors, through ``gif.io`` only (safetensors / npz).

The architecture always comes from the registry (``gif.models.build``); user code is never
imported or unpickled. Problems map to the engine's error codes: a bad configuration is
``invalid_input``, a checkpoint that does not fit is ``checkpoint_incompatible``, a dataset
that does not fit the model is ``dataset_incompatible``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import gif
from gif.errors import DatasetError
from jobs.blobs import BlobStore
from jobs.specs import ModelSpec

Pair = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Loaded:
    """Everything a job computes on."""

    model: nn.Module
    num_classes: int
    train: Pair
    validation: Pair | None = None
    queries: Pair | None = None
    digests: dict[str, str] = field(default_factory=dict)


def load_inputs(
    spec: ModelSpec, inputs: dict[str, Any], blobs: BlobStore, device: torch.device | str = "cpu"
) -> Loaded:
    """Build the job's model (``spec``: its ``model``), load its checkpoint and the datasets
    named in the job's ``inputs``.

    The model goes to ``device``; datasets stay in host memory (the engine moves chunks).
    """
    model = gif.models.build(spec.arch, **spec.config)
    gif.io.load_checkpoint(blobs.fetch(inputs["checkpoint"]["sha256"]), model)
    model.eval().to(device)
    train = _dataset(blobs, inputs["train"], "train")
    num_classes = _fit(model, train, "train")
    loaded = Loaded(model=model, num_classes=num_classes, train=train)
    for role in ("validation", "queries"):
        if role in inputs:
            data = _dataset(blobs, inputs[role], role)
            _fit(model, data, role)
            setattr(loaded, role, data)
    loaded.digests = {
        role: inputs[role]["sha256"]
        for role in ("checkpoint", "train", "validation", "queries")
        if role in inputs
    }
    return loaded


def _dataset(blobs: BlobStore, ref: dict[str, str], role: str) -> Pair:
    try:
        return gif.io.load_dataset(blobs.fetch(ref["sha256"]))
    except DatasetError as exc:
        raise DatasetError(f"{role} dataset {ref['artifact_id']}: {exc.message}", **exc.details) from None


def _fit(model: nn.Module, data: Pair, role: str) -> int:
    """Check that the samples go through the model and the labels are its classes; returns the class count."""
    x, y = data
    try:
        num_classes = gif.io.infer_num_classes(model, x[:1])
    except RuntimeError as exc:
        raise DatasetError(
            f"{role} samples of shape {list(x.shape[1:])} do not fit the model: {str(exc)[:300]}"
        ) from None
    try:
        gif.io.check_labels(y, num_classes)
    except DatasetError as exc:
        raise DatasetError(f"{role} dataset: {exc.message}", **exc.details) from None
    return num_classes
