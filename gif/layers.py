"""Linear and convolution layers seen as weight matrices W [out, in (+1 for the bias)].

For such a layer, the gradient of a sample's loss with respect to W is Σ_l s_l a_lᵀ over the
layer's positions l (one for a Linear layer on vectors, every output pixel of a convolution),
with a_l the layer's input at l (a convolution's receptive field unfolded, a 1 appended for the
bias) and s_l the gradient of the loss with respect to the layer's output there. K-FAC builds its
factors from these a and s (gif/inverse/kfac.py); per-sample gradients contract them per sample
(gif/per_sample.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._util import ForwardHook, forward_hooks
from .errors import InvalidArgumentError
from .hessian import FlatModel

#: The layer types seen as weight matrices.
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass
class LayerBlock:
    """One layer's slice of θ (and, for K-FAC, its factors)."""

    name: str
    module: nn.Module
    weight: slice
    bias: slice | None
    out: int
    q_in: torch.Tensor | None = None  # Q_A
    q_out: torch.Tensor | None = None  # Q_S
    eigen: torch.Tensor | None = None  # Λ (or σ αᵀ), [out, in]

    def matrix(self, v: torch.Tensor) -> torch.Tensor:
        """The layer's block of a flat vector as [out, in (+1 for the bias)]; of a batch of
        vectors [m, p] as [m, out, in (+1)]."""
        lead = v.shape[:-1]
        w = v[..., self.weight].reshape(*lead, self.out, -1)
        return w if self.bias is None else torch.cat([w, v[..., self.bias].unsqueeze(-1)], dim=-1)

    def scatter(self, m: torch.Tensor, into: torch.Tensor) -> None:
        """Write [out, in (+1)] (or [m, out, in (+1)]) into the layer's slice of ``into``."""
        lead = into.shape[:-1]
        if self.bias is None:
            into[..., self.weight] = m.reshape(*lead, -1)
        else:
            into[..., self.weight] = m[..., :-1].reshape(*lead, -1)
            into[..., self.bias] = m[..., -1]


def layer_blocks(flat: FlatModel) -> list[LayerBlock]:
    """The model's ungrouped Linear / Conv layers whose weight is trainable, in module order."""
    slots = {s.name: slice(s.offset, s.stop) for s in flat.space.slots}
    blocks = []
    for prefix, module in flat.model.named_modules():
        if not isinstance(module, LAYERS) or getattr(module, "groups", 1) != 1:
            continue
        weight = slots.get(f"{prefix}.weight" if prefix else "weight")
        if weight is None:
            continue
        bias = slots.get(f"{prefix}.bias" if prefix else "bias")
        blocks.append(LayerBlock(prefix, module, weight, bias, int(module.weight.shape[0])))
    return blocks


def layer_inputs(block: LayerBlock, x: torch.Tensor) -> torch.Tensor:
    """The layer's inputs as [batch, positions, in (+1)] (convolutions unfolded)."""
    m = block.module
    if isinstance(m, nn.Linear):
        a = x.reshape(x.shape[0], -1, x.shape[-1])
    else:
        assert isinstance(m, (nn.Conv1d, nn.Conv2d))
        if isinstance(m.padding, str):
            raise InvalidArgumentError("K-FAC does not support string padding ('same'); use explicit padding")
        kernel, stride, padding, dilation = m.kernel_size, m.stride, m.padding, m.dilation
        if isinstance(m, nn.Conv1d):  # as a 2-D convolution over a height of 1
            x = x.unsqueeze(2)
            kernel, stride, padding, dilation = (1, *kernel), (1, *stride), (0, *padding), (1, *dilation)
        a = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride).transpose(1, 2)
    if block.bias is not None:
        a = torch.cat([a, torch.ones(*a.shape[:2], 1, dtype=a.dtype, device=a.device)], dim=2)
    return a


def layer_outputs(block: LayerBlock, grad: torch.Tensor) -> torch.Tensor:
    """Output gradients as [batch, positions, out]."""
    if isinstance(block.module, nn.Linear):
        return grad.reshape(grad.shape[0], -1, grad.shape[-1])
    return grad.flatten(2).transpose(1, 2)  # conv: [batch, out, *spatial]


#: One layer call: its (detached) input, None when it came by keyword, and its output.
Call = tuple[torch.Tensor | None, torch.Tensor]


@contextmanager
def recorded_calls(blocks: list[LayerBlock]) -> Iterator[list[list[Call]]]:
    """While open, every forward call of block i's module appends (input, output) to list i."""
    calls: list[list[Call]] = [[] for _ in blocks]

    def hook(seen: list[Call]) -> ForwardHook:
        return lambda module, args, output: seen.append((args[0].detach() if args else None, output))

    with forward_hooks((b.module, hook(seen)) for b, seen in zip(blocks, calls, strict=True)):
        yield calls
