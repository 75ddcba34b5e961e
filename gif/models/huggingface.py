"""Hugging Face classifiers built from their ``config.json`` alone: no code from the model's author.

A model is described by the object ``save_pretrained`` writes to ``config.json`` and its weights by
the ``model.safetensors`` beside it. :func:`build` makes the classifier with ``transformers``'
``AutoModelFor{SequenceClassification,ImageClassification}.from_config`` — never with remote code:
a config that points at code (``auto_map``) or names a ``model_type`` the installed ``transformers``
does not ship is refused, as is a head that is not a classifier. :func:`loss_for` gives the
training loss the config's ``problem_type`` implies, as the model's own ``forward`` computes it.

Attention: the engine differentiates through scaled-dot-product attention on its MATH kernel
(gif/inputs.py), so the ``sdpa`` and ``eager`` implementations give the same influence; other
implementations (flash attention, which needs a GPU build) are replaced by ``sdpa``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import InvalidArgumentError
from ..hessian import LossFn, cross_entropy

#: Problem types of a Hugging Face classification config and what they mean for the loss.
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")
#: Attention implementations kept as the config names them; any other becomes ``sdpa``.
ATTENTION = ("eager", "sdpa")


class UnsupportedModelError(InvalidArgumentError):
    """A Hugging Face config the service cannot build safely (unknown type, remote code, not a
    classifier)."""

    code = "unsupported_model"


def available() -> bool:
    """Whether ``transformers`` is installed."""
    return importlib.util.find_spec("transformers") is not None


def build(config: Mapping[str, Any]) -> nn.Module:
    """The classifier that ``config`` (a ``config.json`` object) describes, randomly initialised
    and in eval mode; load its weights with ``load_state_dict`` (``save_pretrained`` may write some
    models' tensors under older names, e.g. a ViT's: the service maps them, docs/models.md).

    Raises:
        UnsupportedModelError: no ``transformers``, remote code, an unknown ``model_type``, a head
            that is not a sequence or image classifier, or an unknown ``problem_type``.
    """
    if not available():
        raise UnsupportedModelError("Hugging Face models need `transformers` (pip install transformers)")
    import transformers
    from transformers.models.auto import modeling_auto

    if "auto_map" in config or config.get("trust_remote_code"):
        raise UnsupportedModelError(
            "the config points at custom code (`auto_map`); models are built only from the classes "
            "transformers ships (trust_remote_code is never enabled)"
        )
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in transformers.CONFIG_MAPPING:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not one that transformers {transformers.__version__} ships"
        )
    loss_for(config)  # refuses an unknown problem_type
    head = _head(model_type, config.get("architectures"), modeling_auto)
    settings = {k: v for k, v in config.items() if k not in ("model_type", "_attn_implementation")}
    try:
        hf_config = transformers.CONFIG_MAPPING[model_type].from_dict(settings)
    except (TypeError, ValueError, KeyError) as exc:
        raise UnsupportedModelError(f"the {model_type} config is invalid: {exc}") from exc
    if not isinstance(hf_config, head.config_class):
        raise UnsupportedModelError(f"{head.__name__} is not a head for model_type {model_type!r}")
    attention = config.get("_attn_implementation") or config.get("attn_implementation")
    hf_config._attn_implementation = attention if attention in ATTENTION else "sdpa"
    try:
        try:
            model = head(hf_config)
        except ValueError:  # a model without SDPA support (ConvNeXt, ResNet, …): its own eager code
            hf_config._attn_implementation = "eager"
            model = head(hf_config)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise UnsupportedModelError(
            f"transformers cannot build this {head.__name__} config: {type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    return model.eval()


def loss_for(config: Mapping[str, Any]) -> LossFn:
    """The batch-mean training loss of ``config``'s ``problem_type``, as Hugging Face's classifiers
    compute it: cross-entropy (single-label, the default), mean squared error (``regression``;
    one output squeezed against float targets), binary cross-entropy on logits (multi-label,
    float targets of shape [n, num_labels])."""
    problem = config.get("problem_type") or PROBLEM_TYPES[0]
    if problem == "regression":
        return mean_squared_error
    if problem == "multi_label_classification":
        return binary_cross_entropy
    if problem == PROBLEM_TYPES[0]:
        return cross_entropy
    raise UnsupportedModelError(f"problem_type {problem!r} is not one of {', '.join(PROBLEM_TYPES)}")


def mean_squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error; a single output column is compared with 1-D targets."""
    if outputs.ndim == 2 and outputs.shape[1] == 1 and targets.ndim == 1:
        outputs = outputs.squeeze(1)
    # written out: F.mse_loss's forward-mode derivative of its backward writes into a zero tangent
    # ("ZeroTensors are immutable") when a Hessian-vector product's direction is sparse
    return ((outputs - targets.to(outputs.dtype)) ** 2).mean()


def binary_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of logits against 0/1 (or soft) targets of the same shape."""
    return nn.functional.binary_cross_entropy_with_logits(outputs, targets.to(outputs.dtype))


mean_squared_error.cache_key = "hf.mse"  # type: ignore[attr-defined]
binary_cross_entropy.cache_key = "hf.bce_with_logits"  # type: ignore[attr-defined]


def _head(model_type: str, architectures: Any, modeling_auto: Any) -> Any:
    """The classifier class: the one ``architectures`` names when it is a sequence or image
    classifier, else the task's class for ``model_type`` (sequence classification first)."""
    import transformers

    image = modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
    sequence = modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    heads = {**image, **sequence}
    if architectures:
        if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
            raise UnsupportedModelError("`architectures` must be a list of class names")
        name = architectures[0]
        if name not in {*sequence.values(), *image.values()}:
            raise UnsupportedModelError(
                f"{name} is not a sequence or image classifier; supported heads are "
                "*ForSequenceClassification and *ForImageClassification"
            )
        return getattr(transformers, name)
    if model_type not in heads:
        raise UnsupportedModelError(f"transformers has no sequence or image classifier for {model_type!r}")
    return getattr(transformers, heads[model_type])
