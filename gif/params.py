"""The flat parameter vector θ and its index space.

θ is every trainable parameter of a model (``requires_grad=True``), flattened and concatenated
in ``model.parameters()`` order. Selections, influence vectors and updates are all expressed as
flat indices into θ, so this module is the single place that knows how names, shapes and
offsets line up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .errors import IndexOutOfRangeError, InvalidArgumentError


@dataclass(frozen=True)
class ParamSlot:
    """Where one parameter tensor lives inside θ."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def stop(self) -> int:
        return self.offset + self.numel


class ParamSpace:
    """Names, shapes and flat offsets of a model's trainable parameters.

    Example:
        >>> space = ParamSpace(nn.Linear(3, 2))
        >>> space.size, [s.name for s in space.slots]
        (8, ['weight', 'bias'])
    """

    def __init__(self, model: nn.Module) -> None:
        slots: list[ParamSlot] = []
        offset = 0
        for name, p in model.named_parameters():  # each shared (tied) parameter once, by its first name
            if p.requires_grad:
                slots.append(ParamSlot(name, tuple(p.shape), offset))
                offset += p.numel()
        if offset == 0:
            raise InvalidArgumentError("model has no trainable parameters")
        self.slots: tuple[ParamSlot, ...] = tuple(slots)
        self.size = offset
        self._by_name = {s.name: s for s in slots}

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.slots]

    def slot(self, name: str) -> ParamSlot:
        return self._by_name[name]

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a θ-shaped vector into per-parameter views, keyed by name."""
        if flat.ndim != 1 or flat.numel() != self.size:
            raise InvalidArgumentError(
                f"expected a flat vector of length {self.size}, got shape {tuple(flat.shape)}"
            )
        return {s.name: flat[s.offset : s.stop].view(s.shape) for s in self.slots}

    def check_indices(self, indices: object, *, what: str = "params") -> torch.Tensor:
        """Validate flat indices (1-D, integer, unique, in range) and return them as int64 on CPU."""
        try:
            idx = torch.as_tensor(indices)
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:  # strings, None, past int64
            raise InvalidArgumentError(f"`{what}` must be integer flat indices, got {indices!r:.80}") from exc
        if idx.dtype.is_floating_point or idx.dtype == torch.bool:
            raise InvalidArgumentError(f"`{what}` must be integer flat indices, got dtype {idx.dtype}")
        idx = idx.to(dtype=torch.long, device="cpu").reshape(-1)
        if idx.numel() == 0:
            raise IndexOutOfRangeError(f"`{what}` is empty: select at least one parameter")
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.size:
            raise IndexOutOfRangeError(f"`{what}` has indices in [{lo}, {hi}], outside [0, {self.size})")
        if torch.unique(idx).numel() != idx.numel():
            raise IndexOutOfRangeError(f"`{what}` contains duplicated indices")
        return idx

    def vector(self, model: nn.Module) -> torch.Tensor:
        """θ of ``model`` as one detached flat vector."""
        named = dict(model.named_parameters())
        return torch.cat([named[s.name].detach().reshape(-1) for s in self.slots])

    def add_(self, model: nn.Module, indices: torch.Tensor, values: torch.Tensor) -> None:
        """In place: θ[indices] += values (values on any device/dtype; cast to each parameter)."""
        self._scatter(model, indices, values, accumulate=True)

    def set_(self, model: nn.Module, indices: torch.Tensor, values: torch.Tensor) -> None:
        """In place: θ[indices] = values."""
        self._scatter(model, indices, values, accumulate=False)

    def gather(self, model: nn.Module, indices: torch.Tensor) -> torch.Tensor:
        """θ[indices] as a detached copy."""
        theta = self.vector(model)
        return theta[indices.to(theta.device)].clone()

    @torch.no_grad()
    def _scatter(
        self, model: nn.Module, indices: torch.Tensor, values: torch.Tensor, *, accumulate: bool
    ) -> None:
        named = dict(model.named_parameters())
        indices, values = indices.to("cpu"), values.reshape(-1)
        if indices.numel() > 1 and not bool((indices[1:] > indices[:-1]).all()):
            # for callers' own orders only: a selection is kept sorted (docs/benchmarks.md,
            # "A further edit is its gradients, its solve and a short step search")
            order = torch.argsort(indices)
            indices, values = indices[order], values[order.to(values.device)]
        for s in self.slots:
            lo = int(torch.searchsorted(indices, s.offset))
            hi = int(torch.searchsorted(indices, s.stop))
            if lo == hi:
                continue
            p = named[s.name]
            local = (indices[lo:hi] - s.offset).to(p.device)
            chunk = values[lo:hi].to(device=p.device, dtype=p.dtype)
            if accumulate:
                p.view(-1).index_add_(0, local, chunk)
            else:
                p.view(-1)[local] = chunk
