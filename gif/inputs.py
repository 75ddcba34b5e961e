"""Model inputs: one tensor, or named tensors passed as keyword arguments.

A dataset's inputs are either one tensor, passed positionally (``model(x)``), or a mapping of
named tensors passed as keyword arguments (``model(input_ids=…, attention_mask=…)``, the way
Hugging Face models take them). Every tensor's first dimension indexes the samples. A model may
return its logits, an object with ``.logits`` (a Hugging Face ``ModelOutput``) or a mapping with a
``"logits"`` entry; :func:`logits` turns each into the tensor.

The engine differentiates models twice (Hessian-vector products). PyTorch's fused CPU attention
kernels have no forward-mode or double-backward derivative, so every functional evaluation runs
scaled-dot-product attention on its ``MATH`` kernel (plain differentiable operations; the same
function): :func:`differentiable_attention`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .errors import InvalidArgumentError, NumericalError

Inputs = torch.Tensor | Mapping[str, torch.Tensor]
Index = slice | torch.Tensor


def is_inputs(value: Any) -> bool:
    """A tensor, or a non-empty mapping of names to tensors."""
    return isinstance(value, torch.Tensor) or (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def named(inputs: Inputs) -> dict[str, torch.Tensor]:
    """The tensors of ``inputs`` by name (a single tensor is ``{"inputs": x}``)."""
    return {"inputs": inputs} if isinstance(inputs, torch.Tensor) else dict(inputs)


def count(inputs: Inputs) -> int:
    """Number of samples (the first dimension)."""
    return int(next(iter(named(inputs).values())).shape[0])


def _each(inputs: Inputs, fn: Callable[[torch.Tensor], torch.Tensor]) -> Inputs:
    """``fn`` applied to the tensor, or to each named tensor."""
    return fn(inputs) if isinstance(inputs, torch.Tensor) else {k: fn(v) for k, v in inputs.items()}


def take(inputs: Inputs, index: Index) -> Inputs:
    """The samples at ``index`` (a slice, or an index / boolean tensor)."""
    return _each(inputs, lambda t: t[index])


def concat(parts: Sequence[Inputs]) -> Inputs:
    """The samples of every part, in order (parts share their kind and names)."""
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(list(parts))  # type: ignore[arg-type]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}  # type: ignore[index]


def to(inputs: Inputs, device: torch.device | str | None = None) -> Inputs:
    """``inputs`` on ``device``."""
    return _each(inputs, lambda t: t.to(device=device))


def one_sample(inputs: Inputs) -> Inputs:
    """A single sample's inputs (no batch dimension) as a batch of one, for ``vmap``."""
    return _each(inputs, lambda t: t.unsqueeze(0))


def check(inputs: Any, samples: int, what: str) -> None:
    """Raise :class:`InvalidArgumentError` unless ``inputs`` holds ``samples`` samples in every
    tensor, and :class:`NumericalError` if a floating-point tensor has NaN or Inf."""
    if not is_inputs(inputs):
        raise InvalidArgumentError(
            f"`{what}`: inputs must be a tensor or a mapping of names to tensors, got {type(inputs).__name__}"
        )
    for name, t in named(inputs).items():
        label = what if isinstance(inputs, torch.Tensor) else f"{what}[{name!r}]"
        if t.ndim == 0 or t.shape[0] != samples:
            raise InvalidArgumentError(
                f"`{label}`: inputs and targets must have the same first dimension, got {tuple(t.shape)} "
                f"for {samples} targets"
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise NumericalError(f"`{label}`: inputs contain NaN or Inf")


def logits(output: Any) -> torch.Tensor:
    """The logits tensor of a model's output: the tensor itself, ``.logits`` or ``["logits"]``."""
    if isinstance(output, torch.Tensor):
        return output
    value = getattr(output, "logits", None)
    if value is None and isinstance(output, Mapping):
        value = output.get("logits")
    if not isinstance(value, torch.Tensor):
        raise InvalidArgumentError(
            f"the model returned {type(output).__name__}; expected logits, or an object with `.logits`"
        )
    return value


def call(model: nn.Module, inputs: Inputs) -> torch.Tensor:
    """``model``'s logits on ``inputs`` (keyword arguments for named inputs)."""
    return logits(model(inputs) if isinstance(inputs, torch.Tensor) else model(**inputs))


def call_on(model: nn.Module, inputs: Inputs, what: str) -> torch.Tensor:
    """:func:`call`, where the model failing on ``inputs`` (another feature size, dtype or input
    names than it takes) is an :class:`InvalidArgumentError` naming the argument ``what``."""
    try:
        return call(model, inputs)
    except InvalidArgumentError:
        raise
    except (RuntimeError, TypeError, ValueError, IndexError, KeyError) as exc:
        raise InvalidArgumentError(
            f"the model cannot run on `{what}`: {type(exc).__name__}: {str(exc)[:300]}"
        ) from exc


def call_functional(
    model: nn.Module, tensors: tuple[dict[str, torch.Tensor], ...], inputs: Inputs
) -> torch.Tensor:
    """``model``'s logits with its parameters and buffers replaced by ``tensors``
    (``torch.func.functional_call``), attention on a differentiable kernel."""
    args, kwargs = ((inputs,), {}) if isinstance(inputs, torch.Tensor) else ((), dict(inputs))
    with differentiable_attention():
        return logits(torch.func.functional_call(model, tensors, args, kwargs, strict=False))


def differentiable_attention() -> AbstractContextManager[None]:
    """Scaled-dot-product attention on its MATH kernel, which forward-mode AD and double backward
    go through (the fused CPU kernels implement neither)."""
    return sdpa_kernel(SDPBackend.MATH)
