"""Job inputs → a model and tensors, through ``gif.io`` only (safetensors / npz).

A registry model's architecture comes from the registry (``gif.models.build``); an exported
program is checked again by ``gif.io.programs`` (no pickle, no code) and built from its raw
tensors and JSON graph; a Hugging Face classifier is built from its config by
``gif.models.huggingface.build`` (never remote code: ``unsupported_model`` otherwise) and its
``model.safetensors`` loaded with strict names and shapes. User code is never imported or unpickled.
Datasets hold one ``inputs`` tensor or named tensors (a dict, passed as keyword arguments). Problems map to the engine's
error codes: a bad configuration is ``invalid_input``, a checkpoint or program that does not fit
is ``checkpoint_incompatible`` (``checkpoint_unsafe`` for one that could run code), a dataset
that does not fit the model is ``dataset_incompatible``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import gif
from gif.errors import CheckpointError, DatasetError
from gif.hessian import LossFn
from gif.inputs import Inputs, take
from gif.io import programs
from gif.models import huggingface as hf_models
from jobs.blobs import BlobStore
from jobs.specs import AnyModel, HuggingFaceModel, ProgramModel, RegistryModel

from . import huggingface

Pair = tuple[Inputs, torch.Tensor]


@dataclass
class Loaded:
    """Everything a job computes on."""

    model: nn.Module
    num_classes: int
    train: Pair
    validation: Pair | None = None
    queries: Pair | None = None
    #: the forgetting audit's inputs (docs/audit.md): unseen samples, a model retrained without
    #: the edited samples (the job's own architecture with the ``reference`` checkpoint)
    holdout: Pair | None = None
    reference: nn.Module | None = None
    digests: dict[str, str] = field(default_factory=dict)
    #: the exported program the model was built from (its format is ``torch.export``)
    program: torch.export.ExportedProgram | None = None
    #: the engine's loss (None: cross-entropy); a Hugging Face config's ``problem_type`` names it
    loss_fn: LossFn | None = None
    #: the training samples' own ids (the train dataset's ``sample_ids``), which rankings name
    train_ids: torch.Tensor | None = None


def load_inputs(
    spec: AnyModel, inputs: dict[str, Any], blobs: BlobStore, device: torch.device | str = "cpu"
) -> Loaded:
    """Build the job's model (``spec``: its ``model``) from its checkpoint or program, and load
    the datasets named in the job's ``inputs``.

    The model goes to ``device``; datasets stay in host memory (the engine moves chunks).
    """
    program, loss_fn = None, None
    if isinstance(spec, ProgramModel):
        program = programs.load_program(blobs.fetch(inputs["program"]["sha256"]))
        model = programs.program_module(program)
    else:
        model = _from_checkpoint(spec, blobs, inputs["checkpoint"])
        if isinstance(spec, HuggingFaceModel):
            loss_fn = hf_models.loss_for(spec.config)
    model.eval().to(device)
    train = _dataset(blobs, inputs["train"], "train")
    num_classes = _fit(model, spec, train, "train")
    loaded = Loaded(model=model, num_classes=num_classes, train=train, program=program, loss_fn=loss_fn)
    loaded.train_ids = _sample_ids(blobs, inputs["train"], len(train[1]))
    for role in ("validation", "queries", "holdout"):
        if role in inputs:
            data = _dataset(blobs, inputs[role], role)
            _fit(model, spec, data, role)
            setattr(loaded, role, data)
    loaded.digests = {
        role: inputs[role]["sha256"]
        for role in ("checkpoint", "program", "train", "validation", "queries", "holdout", "reference")
        if role in inputs
    }
    if "reference" in inputs and not isinstance(spec, ProgramModel):
        loaded.reference = _from_checkpoint(spec, blobs, inputs["reference"], "reference").eval().to(device)
    return loaded


def _from_checkpoint(
    spec: RegistryModel | HuggingFaceModel, blobs: BlobStore, ref: dict[str, str], role: str = "checkpoint"
) -> nn.Module:
    """The job's architecture with the weights of the checkpoint ``ref`` (strict names and shapes);
    a checkpoint that does not fit is ``checkpoint_incompatible``, its message naming ``role``."""
    try:
        if isinstance(spec, HuggingFaceModel):
            model = huggingface.build(spec.config)
            huggingface.load_checkpoint(blobs.fetch(ref["sha256"]), model)
        else:
            model = gif.models.build(spec.arch, **spec.config)
            gif.io.load_checkpoint(blobs.fetch(ref["sha256"]), model)
    except CheckpointError as exc:
        if role == "checkpoint":
            raise
        raise type(exc)(f"{role} checkpoint {ref['artifact_id']}: {exc.message}", **exc.details) from None
    return model


@contextmanager
def _naming(role: str, ref: dict[str, str]) -> Iterator[None]:
    """A dataset error raised inside names the dataset's role and artifact."""
    try:
        yield
    except DatasetError as exc:
        raise DatasetError(f"{role} dataset {ref['artifact_id']}: {exc.message}", **exc.details) from None


def _dataset(blobs: BlobStore, ref: dict[str, str], role: str) -> Pair:
    with _naming(role, ref):
        return gif.io.load_dataset(blobs.fetch(ref["sha256"]))


def _sample_ids(blobs: BlobStore, ref: dict[str, str], num_samples: int) -> torch.Tensor | None:
    with _naming("train", ref):
        return gif.io.load_sample_ids(blobs.fetch(ref["sha256"]), num_samples)


def _fit(model: nn.Module, spec: AnyModel, data: Pair, role: str) -> int:
    """Check that the samples go through the model and the labels are its classes; returns the class count."""
    x, y = data
    if isinstance(spec, HuggingFaceModel):
        huggingface.check_dataset(model, spec.config, data, role)
    elif not isinstance(x, torch.Tensor):
        raise DatasetError(
            f"{role} dataset holds named tensors ({', '.join(sorted(x))}); this model takes one `inputs` tensor"
        )
    try:
        num_classes = gif.io.infer_num_classes(model, take(x, slice(0, 1)))
    except (RuntimeError, IndexError, TypeError) as exc:
        raise DatasetError(f"{role} samples {_shapes(x)} do not fit the model: {str(exc)[:300]}") from None
    try:
        gif.io.check_labels(y, num_classes)
    except DatasetError as exc:
        raise DatasetError(f"{role} dataset: {exc.message}", **exc.details) from None
    return num_classes


def _shapes(x: Inputs) -> str:
    """Per-sample shapes, for messages: ``of shape [..]`` or ``with input_ids [..], ...``."""
    if isinstance(x, torch.Tensor):
        return f"of shape {list(x.shape[1:])}"
    return "with " + ", ".join(f"{k} {list(v.shape[1:])}" for k, v in x.items())
