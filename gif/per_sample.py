"""Per-sample gradients: ∇θ f(z_i) for every sample z_i of a chunk, as a [len(chunk), p] tensor,
with f the sample's loss ℓ or its label log-odds m (:meth:`gif.hessian.FlatModel.margin`).

Two ways, the same numbers:

* **by layer**, when every trainable parameter sits in a Linear / Conv1d / Conv2d layer
  (ungrouped, zero padding given explicitly) that runs once per forward pass: one forward and one
  backward pass of Σ_i f(z_i) give each layer's inputs a and output gradients s, and sample i's
  gradient of the layer's W is Σ_l s_{i,l} a_{i,l}ᵀ (gif/layers.py). Samples do not mix in an
  eval-mode network, so s_i is the gradient of f(z_i) alone. One backward pass for the chunk
  instead of a vmapped gradient per sample: 2–5× faster (digits TinyNet 3.1 against 9.7 ms per
  sample, MNIST TinyNet 1.4 against 5.5, an MLP 0.15 against 0.75; docs/benchmarks.md, "Scores:
  LDS against retraining");
* **vmapped**: ``torch.func.vmap`` of ``grad`` per sample, :data:`GRADIENT_PASS_BYTES` of
  gradients per pass (larger passes cost more per sample, not less), for every other model; one
  gradient at a time for a model whose forward branches on its data (``if mask.all()`` in Hugging
  Face's attention-mask code), which vmap cannot batch.

Which way a model takes is decided on its first chunk and remembered on its
:class:`~gif.hessian.FlatModel`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import grad, vmap

from .hessian import FlatModel
from .inputs import Inputs, take
from .layers import Call, LayerBlock, layer_blocks, layer_inputs, layer_outputs, recorded_calls

#: Bytes of per-sample gradients one vmapped pass produces at most. Larger passes cost more per
#: sample, not less (digits TinyNet, 390k parameters: 5 ms per sample in passes of 4, 27 ms in
#: passes of 256; a 85k-parameter MLP: 0.39 ms in passes of 32, 2.1 ms in passes of 256).
GRADIENT_PASS_BYTES = 16 << 20


def gradient_rows(params: int, element_size: int) -> int:
    """Samples per vmapped per-sample-gradient pass: :data:`GRADIENT_PASS_BYTES` of gradients."""
    return max(1, GRADIENT_PASS_BYTES // max(1, params * element_size))


def per_sample_gradients(
    flat: FlatModel, inputs: Inputs, targets: torch.Tensor, *, of: str = "loss"
) -> torch.Tensor:
    """∇θ ℓ(z) (``of="loss"``) or ∇θ m(z) (``of="margin"``) for every sample of a chunk,
    [len(chunk), p] (module docstring)."""
    if flat.by_layer is not False:
        blocks = _covering_blocks(flat) if flat.by_layer is None else layer_blocks(flat)
        flat.by_layer = blocks is not None
        if blocks is not None:
            out = _by_layer(flat, blocks, inputs, targets, of)
            if out is not None:
                return out
            flat.by_layer = False  # a layer ran twice (shared weights): vmapped from now on
    return _vmapped(flat, inputs, targets, of)


def weight_reuse(flat: FlatModel, inputs: Inputs) -> float | None:
    """How many times a weight is applied per sample, averaged over the weights: the Linear / Conv
    layers' multiply-adds on the first sample of ``inputs`` over their weight count (1 for an MLP
    on vectors; a convolution's output positions). None where per-sample gradients are not taken
    by layer (module docstring)."""
    blocks = _covering_blocks(flat) if flat.by_layer is not False else None
    if blocks is None:
        return None
    with recorded_calls(blocks) as seen, torch.no_grad():
        flat.outputs(flat.theta, take(inputs, slice(0, 1)))
    if not _each_called_once(seen):
        return None
    sizes = [_size(block) for block in blocks]
    positions = [
        layer_outputs(block, calls[0][1]).shape[1] for block, calls in zip(blocks, seen, strict=True)
    ]
    return sum(n * k for n, k in zip(sizes, positions, strict=True)) / max(1, sum(sizes))


def _each_called_once(seen: list[list[Call]]) -> bool:
    """Every layer ran exactly once with its input passed positionally (not shared, skipped or
    called with its input by keyword): then its recorded input and output are the sample's."""
    return all(len(calls) == 1 and calls[0][0] is not None for calls in seen)


def _size(block: LayerBlock) -> int:
    return (
        block.weight.stop
        - block.weight.start
        + (0 if block.bias is None else block.bias.stop - block.bias.start)
    )


def per_row(flat: FlatModel, of: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(outputs [B, k], targets [B]) ↦ [B]: each sample's loss (``loss_fn`` on a batch of one) or
    label log-odds."""
    if of == "margin":
        return flat.label_log_odds
    return vmap(lambda o, t: flat.loss_fn(o.unsqueeze(0), t.unsqueeze(0)))


def _covering_blocks(flat: FlatModel) -> list[LayerBlock] | None:
    """The layer blocks when they hold every trainable parameter and unfold exactly, else None."""
    blocks = layer_blocks(flat)
    covered = sum(_size(b) for b in blocks)
    convs = [b.module for b in blocks if isinstance(b.module, (nn.Conv1d, nn.Conv2d))]
    unfolds = all(not isinstance(m.padding, str) and m.padding_mode == "zeros" for m in convs)
    return blocks if covered == flat.space.size and unfolds else None


def _by_layer(
    flat: FlatModel, blocks: list[LayerBlock], inputs: Inputs, targets: torch.Tensor, of: str
) -> torch.Tensor | None:
    """One forward and backward pass of Σ_i f(z_i) (module docstring); None when a layer ran
    more or less than once."""
    with recorded_calls(blocks) as seen, torch.enable_grad():
        theta = flat.theta.detach().requires_grad_(True)
        total = per_row(flat, of)(flat.outputs(theta, inputs), targets).sum()
    if not _each_called_once(seen):
        return None
    grads = torch.autograd.grad(total, [calls[0][1] for calls in seen], allow_unused=True)
    out = torch.zeros(int(targets.shape[0]), flat.space.size, dtype=flat.dtype, device=flat.device)
    for block, calls, g in zip(blocks, seen, grads, strict=True):
        x = calls[0][0]
        assert x is not None  # checked above
        if g is not None:  # else the layer does not reach f: a zero gradient
            a, s = layer_inputs(block, x), layer_outputs(block, g)
            block.scatter(torch.einsum("bpo,bpi->boi", s, a), out)
    return out


def _vmapped(flat: FlatModel, inputs: Inputs, targets: torch.Tensor, of: str) -> torch.Tensor:
    per_sample = flat.per_sample_loss if of == "loss" else flat.per_sample_margin
    if not flat.unbatchable:
        try:
            batched = vmap(grad(per_sample), in_dims=(None, 0, 0))
            step = gradient_rows(flat.space.size, flat.theta.element_size())
            pieces = [
                batched(flat.theta, take(inputs, slice(i, i + step)), targets[i : i + step])
                for i in range(0, len(targets), step)
            ]
            return pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        except RuntimeError as exc:
            if "vmap" not in str(exc):
                raise
            flat.unbatchable = True
    one = grad(flat.loss if of == "loss" else flat.margin)
    return torch.stack(
        [one(flat.theta, take(inputs, slice(i, i + 1)), targets[i : i + 1]) for i in range(len(targets))]
    )
