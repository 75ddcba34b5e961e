"""Hugging Face models in the workers and in the sandboxed inspector (torch and ``transformers``).

The model is built from its ``config.json`` object by ``gif.models.huggingface.build`` (never
remote code). :func:`inspect_request` answers the API's question at submit (jobs/huggingface.py
``inspection_request``) on a model built on the ``meta`` device: no weights are allocated, so a
config of any size is checked in milliseconds. The worker checks the same again on the real model
(:func:`check_dataset`) before the job computes.

Checkpoint names: ``save_pretrained`` of ``transformers`` 5 writes some models' weights under
their historical names (a ViT's ``vit.layers.0.attention.q_proj`` is saved as
``vit.encoder.layer.0.attention.attention.query``), and ``from_pretrained`` renames them back.
:func:`saved_names` asks the installed ``transformers`` which name each ``state_dict`` entry is
saved under, so :func:`load_checkpoint` loads either spelling with strict names and shapes; the
job's weights come back under the ``state_dict`` names (``load_state_dict`` + ``save_pretrained``).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_module_registration_hook

from gif.errors import CheckpointError, DatasetError
from gif.inputs import Inputs
from gif.models import huggingface
from jobs.huggingface import Problem, dataset_problems, problem

#: Keyword arguments of Hugging Face ``forward`` methods that are flags or targets, not inputs.
NOT_INPUTS = frozenset(
    {"labels", "return_dict", "output_attentions", "output_hidden_states", "use_cache", "return_loss",
     "interpolate_pos_encoding", "kwargs", "args"}
)  # fmt: skip


def accepted_inputs(model: nn.Module) -> list[str]:
    """The tensors ``model.forward`` takes by name (its named parameters, flags and ``labels`` left
    out; a ``**kwargs`` catch-all accepts nothing more)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = inspect.signature(model.forward).parameters.values()
    return [p.name for p in params if p.kind in kinds and p.name not in NOT_INPUTS]


def unexpected_inputs(model: nn.Module, names: list[str]) -> str | None:
    """Why a dataset with tensors ``names`` cannot be passed to ``model`` (None when it can)."""
    if names == ["inputs"]:
        return None  # one tensor, passed positionally (input_ids / pixel_values)
    accepted = accepted_inputs(model)
    unknown = [n for n in names if n not in accepted]
    if not unknown:
        return None
    return (
        f"{type(model).__name__}.forward takes no argument named {', '.join(map(repr, unknown))}; "
        f"it takes {', '.join(accepted)}"
    )


def build(config: Mapping[str, Any]) -> nn.Module:
    """``gif.models.huggingface.build``, with whatever ``transformers`` raises while building (a
    config it refuses, an attention implementation the class does not support) as
    ``unsupported_model``."""
    try:
        return huggingface.build(config)
    except huggingface.UnsupportedModelError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise huggingface.UnsupportedModelError(
            f"transformers cannot build this config: {type(exc).__name__}: {str(exc)[:300]}"
        ) from None


def saved_names(model: nn.Module) -> dict[str, str]:
    """``state_dict`` name -> the name ``save_pretrained`` writes it under (the same for most models).

    Raises:
        UnsupportedModelError: the model's weights are saved by a conversion that is not a renaming
            (tensors merged or split), which the service does not undo.
    """
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # a transformers without weight conversions saves the state_dict's names
        return {name: name for name in model.state_dict()}
    names = list(model.state_dict())
    tagged = {name: torch.tensor([float(i)]) for i, name in enumerate(names)}
    reverted = revert_weight_conversion(model, dict(tagged))  # type: ignore[arg-type]  # (a PreTrainedModel)
    mapping = {names[int(t.item())]: saved for saved, t in reverted.items() if t.shape == (1,)}
    if len(mapping) != len(names) or len(set(mapping.values())) != len(names):
        raise huggingface.UnsupportedModelError(
            f"{type(model).__name__}'s checkpoints are saved with merged or split tensors, which the service "
            "does not convert"
        )
    return mapping


def load_checkpoint(path: Path, model: nn.Module) -> None:
    """Load a ``save_pretrained`` safetensors file into ``model``, names as saved or as in the
    ``state_dict``, strictly (names, shapes, dtypes and finite values: gif/io/checkpoints.py).

    Raises:
        CheckpointError: names or shapes that do not fit (``checkpoint_incompatible``).
    """
    from gif.io import load_checkpoint as read_checkpoint
    from gif.io import load_state

    state = read_checkpoint(path)
    renamed = _module_names(state, saved_names(model))
    load_state(renamed, model)


def _module_names(state: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """``state`` under ``state_dict`` names (``names``: module name -> saved name).

    Raises:
        CheckpointError: one tensor under both its names.
    """
    to_module = {saved: name for name, saved in names.items()}
    renamed = {to_module.get(key, key): value for key, value in state.items()}
    if len(renamed) != len(state):
        raise CheckpointError(
            "the checkpoint holds some tensors under both their saved and their module names"
        )
    return renamed


#: A config may build this many modules per tensor of its checkpoint, plus :data:`MODULE_ALLOWANCE`
#: (a transformer registers one or two modules per weight tensor): more means layer counts the
#: checkpoint cannot fill, and building them, even on the meta device, only costs time and memory.
MODULES_PER_TENSOR = 16
MODULE_ALLOWANCE = 4096


class _TooManyModules(Exception):
    pass


@contextmanager
def _module_budget(limit: int) -> Iterator[None]:
    """Raise :class:`_TooManyModules` from inside the build once it registers ``limit`` modules
    (PyTorch's global module-registration hook sees every submodule as it is attached)."""
    registered = 0

    def count(module: nn.Module, name: str, submodule: nn.Module) -> None:
        nonlocal registered
        registered += 1
        if registered > limit:
            raise _TooManyModules

    handle = register_module_module_registration_hook(count)
    try:
        yield
    finally:
        handle.remove()


def inspect_request(request: Mapping[str, Any]) -> list[Problem]:
    """Every problem with a Hugging Face job that needs ``transformers`` to see: the model type
    and head, a config that builds far more modules than its checkpoint holds tensors (e.g.
    ``num_hidden_layers: 1000000``, refused after :func:`_module_budget`'s count, not after
    building it), the checkpoint's tensor names and shapes, the datasets' tensor names."""
    tensors = request.get("checkpoint") or []
    limit = MODULE_ALLOWANCE + MODULES_PER_TENSOR * len(tensors)
    try:
        with torch.device("meta"), _module_budget(limit):
            model = build(request["config"])
        saved_names(model)
    except huggingface.UnsupportedModelError as exc:
        return [problem(["model", "config"], exc.message, "unsupported_model")]
    except _TooManyModules:
        message = (
            f"the config builds more than {limit:,} modules, more than a checkpoint of {len(tensors)} "
            "tensors can fill: check its layer counts"
        )
        return [problem(["model", "config"], message, "checkpoint_incompatible")]
    found = _checkpoint_problems(model, tensors)
    for role, names in (request.get("datasets") or {}).items():
        why = unexpected_inputs(model, list(names))
        if why is not None:
            found.append(problem([role], why, "unexpected_inputs"))
    return found


def _checkpoint_problems(model: nn.Module, tensors: list[Mapping[str, Any]]) -> list[Problem]:
    expected = {name: list(t.shape) for name, t in model.state_dict().items()}
    try:
        given = _module_names({str(t.get("name")): t.get("shape") for t in tensors}, saved_names(model))
    except CheckpointError as exc:
        return [problem(["model", "checkpoint"], exc.message, "checkpoint_incompatible")]
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = [f"{n} {given[n]} (model {expected[n]})" for n in sorted(set(given) & set(expected))
              if given[n] != expected[n]]  # fmt: skip
    parts = [
        f"{label}: {', '.join(names[:5])}{f' and {len(names) - 5} more' if len(names) > 5 else ''}"
        for label, names in (("missing", missing), ("unexpected", unexpected), ("other shapes", shapes))
        if names
    ]
    if not parts:
        return []
    return [
        problem(
            ["model", "checkpoint"],
            f"the checkpoint does not fit {type(model).__name__} built from the config ({'; '.join(parts)})",
            "checkpoint_incompatible",
        )
    ]


def check_dataset(
    model: nn.Module, config: Mapping[str, Any], data: tuple[Inputs, torch.Tensor], role: str
) -> None:
    """The worker's checks of a dataset against a Hugging Face model, as at submit.

    Raises:
        DatasetError: tensor names ``forward`` does not take, token ids beyond the vocabulary,
            sequences longer than the position embeddings, labels beyond ``num_labels``.
    """
    from gif.io import describe_dataset

    inputs, labels = data
    names = ["inputs"] if isinstance(inputs, torch.Tensor) else sorted(inputs)
    why = unexpected_inputs(model, names)
    if why is not None:
        raise DatasetError(f"{role} dataset: {why}")
    meta = describe_dataset(inputs, labels)
    meta["label_max"] = int(labels.max())
    found = dataset_problems(config, role, meta)
    if found:
        raise DatasetError(f"{role} dataset: {found[0]['msg']}")
