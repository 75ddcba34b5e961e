"""Parameter selection: which entries of θ an edit is allowed to change.

:func:`select` returns sorted flat indices into θ (see :mod:`gif.params`), the set T of the
Generalized Influence Function, by the per-layer, whole-neuron rule of the paper's official
selection code (Lyu et al., arXiv 2312.05586, ``src/selection/``), as docs/method.md, "Parameter
selection" describes it, with the official code's bugs fixed (its section 7.6). Precisely:

* Layers: leaf Conv1d / Conv2d / Linear / Embedding modules with a trainable weight, in
  ``model.named_modules()`` order. Per layer ``n = int(ratio * (weight.numel() +
  bias.numel()))``, and ``n_full, leftover = divmod(n, w + 1)`` (``divmod(n, w)`` without a
  bias): every weight and the bias of ``n_full`` ranked neurons, plus ``leftover`` random
  weights of the next one.
* Neuron j: the weights ``[j*w, (j+1)*w)`` of the flattened weight, ``w = weight.numel() //
  out_features`` (so grouped and depthwise convolutions work), plus ``bias[j]``; of an
  Embedding, column j of its [num_embeddings, dim] weight (rows of tokens absent from the data
  get no gradient, so an edit leaves them as they are).
* Scores: ``|mean over samples and spatial positions|`` of the module's own output or of
  ``d loss / d output`` (the mean loss over all of ``data``), in eval mode. A layer that never
  runs as a module in the forward pass (an unused head, ``nn.MultiheadAttention``'s
  ``out_proj``) gets no score: only ``random`` and ``all`` select it.
* ``random`` takes ``int(ratio * weight.numel())`` weights and ``int(ratio * bias.numel())``
  biases per layer; ``threshold`` lowers its threshold in steps of 0.01 from ``threshold`` in
  every layer; ``head`` takes the whole Linear layer computing the logits, whatever the ratio
  (with ``method="fif"`` the edit then runs on its features alone, gif/tail_edit.py).
* Batches are summed and divided once, so any batching of the same samples gives the same
  selection; all randomness comes from one generator seeded with ``seed``, ties broken by neuron
  index. Gradients come from tensor hooks and ``torch.autograd.grad`` (module full-backward
  hooks break on in-place ops).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._util import check_callables, forward_hooks
from .config import SEED_LIMIT, STRATEGIES
from .data import Chunks, DataLike, as_pair, check_class_labels
from .errors import InvalidArgumentError, NumericalError
from .inputs import call
from .loo_head import head_parameter_names, named_head
from .params import ParamSlot, ParamSpace

__all__ = ["STRATEGIES", "select", "selection_summary"]


_LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.Embedding)
_THRESHOLD_STEP = 0.01


@dataclass(frozen=True)
class _Layer:
    name: str
    module: nn.Module
    weight: ParamSlot
    bias: ParamSlot | None
    neurons: int  # output channels / units
    width: int  # weights per neuron

    @property
    def per_neuron(self) -> int:
        return self.width + (1 if self.bias is not None else 0)

    @property
    def numel(self) -> int:
        return self.weight.numel + (self.bias.numel if self.bias is not None else 0)

    def weights_of(self, neurons: torch.Tensor, local: torch.Tensor | None = None) -> torch.Tensor:
        """Flat θ indices of the weights of ``neurons`` (all of them, or the ``local`` k-th weight
        of each): a contiguous block of ``width`` (Conv / Linear), or a strided column (Embedding)."""
        k = torch.arange(self.width) if local is None else local
        if isinstance(self.module, nn.Embedding):
            flat = neurons[:, None] + self.neurons * k[None, :]
        else:
            flat = neurons[:, None] * self.width + k[None, :]
        return flat.reshape(-1) + self.weight.offset

    def channel_dim(self, out: torch.Tensor) -> int:
        if isinstance(self.module, (nn.Linear, nn.Embedding)):
            return out.ndim - 1
        batched_ndim = 3 if isinstance(self.module, nn.Conv1d) else 4
        return 1 if out.ndim == batched_ndim else 0


def select(
    model: nn.Module,
    data: DataLike | None,
    *,
    strategy: str = "highest_outputs",
    ratio: float = 0.05,
    seed: int = 0,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    threshold: float = 1.0,
    names: Sequence[str] | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Choose the parameters an influence edit may change.

    Args:
        model: the trained model (any device). Its training flags are restored afterwards.
        data: ``(inputs, targets)`` or an iterable of such batches: the samples being edited.
            Not used (may be ``None``) by ``random``, ``all`` and ``all_params``.
        strategy: one of :data:`STRATEGIES`.
        ratio: fraction of each Conv / Linear / Embedding layer to select, in (0, 1].
        seed: seed of the generator behind every random choice.
        loss_fn: ``loss_fn(model(inputs), targets) -> scalar`` (a mean over the batch) for the
            ``*_gradients`` strategies; default cross-entropy.
        threshold: starting threshold of the ``threshold`` strategy.
        names: shell-style patterns (``fnmatch``: ``*``, ``?``, ``[...]``) on parameter names,
            e.g. ``["classifier.*"]`` (a head) or ``["*lora_*"]`` (an adapter): T holds only
            parameters matching one of them. The strategy and ratio then apply to the layers
            whose weight matches (``all_params``: every matching parameter, whatever its layer).
        chunk_size: samples per forward pass while scoring (``*_gradients``: differentiated).

    Returns:
        Sorted, unique flat indices into θ (int64, CPU).

    Example:
        >>> idx = select(model, (x_forget, y_forget), strategy="highest_gradients", ratio=0.05)
    """
    strategy, ratio, seed, threshold = _check_args(strategy, ratio, seed, threshold)
    check_callables(loss_fn=loss_fn)
    space = ParamSpace(model)
    wanted = None if names is None else _matching(space, names)
    allowed = None if wanted is None else _indices([space.slot(n) for n in wanted])
    if strategy == "all_params":
        return torch.arange(space.size, dtype=torch.long) if allowed is None else allowed
    if strategy == "head":
        chosen = _head(model, space, data)
        return chosen if allowed is None else chosen[torch.isin(chosen, allowed)]

    layers = [layer for layer in _layers(model, space) if wanted is None or layer.weight.name in wanted]
    if not layers:
        where = "" if names is None else f" among the parameters matching {list(names)}"
        raise InvalidArgumentError(
            f"the model has no Conv1d/Conv2d/Linear/Embedding layer with a trainable weight to select from{where}"
        )
    gen = torch.Generator(device="cpu").manual_seed(seed)

    kind = "gradients" if strategy.endswith("_gradients") else "outputs"
    unscored = strategy in ("all", "random")
    scores = [None] * len(layers) if unscored else _scores(model, layers, data, kind, loss_fn, chunk_size)

    pieces: list[torch.Tensor] = []
    for layer, score in zip(layers, scores, strict=True):
        n = int(ratio * layer.numel)
        if strategy == "all":
            pieces.append(_neuron_block(layer, torch.arange(layer.neurons)))
        elif strategy == "random":
            pieces.append(_random(layer, ratio, gen))
        elif score is None or n == 0:
            continue  # the layer never ran on the data (no signal), or nothing to take
        elif strategy == "threshold":
            pieces.append(_threshold(layer, score, n, threshold, gen))
        else:  # descending for highest_ and exclusive_, ascending for lowest_
            order = torch.sort(score if strategy.startswith("lowest_") else -score, stable=True).indices
            if strategy.startswith("exclusive_"):
                rest = order[n // layer.per_neuron :]  # all but the top n_full neurons
                order = rest[torch.randperm(rest.numel(), generator=gen)]
            pieces.append(_take_ranked(layer, order, n, gen))

    pieces = [p for p in pieces if p.numel() > 0]
    if not pieces:
        raise InvalidArgumentError(
            f"`ratio`={ratio} selects no parameter in any layer with strategy {strategy!r}: raise the ratio"
        )
    chosen = torch.sort(torch.cat(pieces)).values
    return chosen if allowed is None else chosen[torch.isin(chosen, allowed)]


def _head(model: nn.Module, space: ParamSpace, data: DataLike | None) -> torch.Tensor:
    """Sorted flat indices of the trainable parameters of the Linear layer computing the logits."""
    if data is None:
        raise InvalidArgumentError("`strategy='head'` needs the edited samples to find the model's head")
    found = named_head(model, as_pair(data, what="data")[0])
    if found is None:
        raise InvalidArgumentError(
            "`strategy='head'` needs logits computed by a last Linear layer run once per forward pass"
        )
    path, head = found
    own = head_parameter_names(path, head)
    slots = [space.slot(n) for n in space.names if n in own]
    if not slots:
        raise InvalidArgumentError(f"the head `{path}` has no trainable parameter")
    return _indices(slots)


def _matching(space: ParamSpace, patterns: Sequence[str]) -> list[str]:
    """Names of the trainable parameters that match one of ``patterns`` (at least one)."""
    if isinstance(patterns, str) or not all(isinstance(p, str) and p for p in patterns) or not patterns:
        raise InvalidArgumentError(f"`names` must be a non-empty list of name patterns, got {patterns!r}")
    matched = [n for n in space.names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not matched:
        raise InvalidArgumentError(
            f"no trainable parameter matches {list(patterns)}; names look like {space.names[:3]}"
        )
    return matched


def _indices(slots: list[ParamSlot]) -> torch.Tensor:
    """Sorted flat indices of every entry of ``slots``."""
    return torch.sort(torch.cat([torch.arange(s.offset, s.stop) for s in slots])).values


def selection_summary(model: nn.Module, indices: torch.Tensor) -> dict:
    """Where a selection lies in θ, for reports.

    Returns:
        ``{"counts": {param_name: n_selected}, "total": int, "size": int, "fraction": float}``;
        ``counts`` lists every parameter with at least one selected entry, in θ order, and
        ``size`` is the length of θ.
    """
    space = ParamSpace(model)
    idx = space.check_indices(indices, what="indices")
    offsets = torch.tensor([s.offset for s in space.slots], dtype=torch.long)
    owner = torch.bucketize(idx, offsets, right=True) - 1
    per_slot = torch.bincount(owner, minlength=len(space.slots)).tolist()
    counts = {s.name: c for s, c in zip(space.slots, per_slot, strict=True) if c > 0}
    total = int(idx.numel())
    return {"counts": counts, "total": total, "size": space.size, "fraction": total / space.size}


# --------------------------------------------------------------------------------------- checks


def _check_args(
    strategy: object, ratio: object, seed: object, threshold: object
) -> tuple[str, float, int, float]:
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise InvalidArgumentError(
            f"unknown selection `strategy` {strategy!r}; valid strategies: {', '.join(STRATEGIES)}"
        )
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
        raise InvalidArgumentError(f"`ratio` must be a number in (0, 1], got {ratio!r}")
    ratio = float(ratio)
    if not 0.0 < ratio <= 1.0:
        raise InvalidArgumentError(f"`ratio` must be in (0, 1], got {ratio}")
    if strategy.startswith("exclusive_") and ratio > 0.5:
        raise InvalidArgumentError(f"strategy {strategy!r} needs `ratio` <= 0.5, got {ratio}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise InvalidArgumentError(f"`seed` must be an integer in [0, {SEED_LIMIT - 1}], got {seed!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise InvalidArgumentError(f"`threshold` must be a finite number, got {threshold!r}")
    return strategy, ratio, seed, float(threshold)


def _layers(model: nn.Module, space: ParamSpace) -> list[_Layer]:
    names = set(space.names)
    layers: list[_Layer] = []
    for mname, module in model.named_modules():
        if not isinstance(module, _LAYER_TYPES) or next(module.children(), None) is not None:
            continue
        weight = getattr(module, "weight", None)
        prefix = f"{mname}." if mname else ""
        wname, bname = f"{prefix}weight", f"{prefix}bias"
        # Frozen weights are not in θ; a weight tied to an earlier layer is θ'd under that name.
        if not isinstance(weight, nn.Parameter) or not weight.requires_grad or wname not in names:
            continue
        bias = getattr(module, "bias", None)
        bslot = space.slot(bname) if isinstance(bias, nn.Parameter) and bname in names else None
        out = int(weight.shape[1] if isinstance(module, nn.Embedding) else weight.shape[0])
        if out == 0 or weight.numel() == 0:
            continue
        layers.append(_Layer(mname, module, space.slot(wname), bslot, out, weight.numel() // out))
    return layers


# --------------------------------------------------------------------------------------- scores


def _scores(
    model: nn.Module,
    layers: list[_Layer],
    data: DataLike | None,
    kind: str,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    chunk_size: int,
) -> list[torch.Tensor | None]:
    """|mean| per neuron of each layer's output (or of d loss / d output); None if it never ran."""
    if data is None:
        raise InvalidArgumentError("`data` is required to score neurons: pass (inputs, targets)")
    default_loss = loss_fn is None
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    device = next(p.device for p in model.parameters())
    chunks = Chunks(data, chunk_size=chunk_size, device=device)

    sums = [torch.zeros(layer.neurons, dtype=torch.float64, device=device) for layer in layers]
    counts = [0] * len(layers)
    fired = [0] * len(layers)

    def channel_sum(t: torch.Tensor, cdim: int) -> torch.Tensor:
        dims = [d for d in range(t.ndim) if d != cdim]
        return t.sum(dim=dims, dtype=torch.float64) if dims else t.to(torch.float64)

    def make_hook(i: int, layer: _Layer) -> Callable:
        def forward_hook(module: nn.Module, args: object, out: object) -> None:
            fired[i] += 1
            if fired[i] > 1:
                raise InvalidArgumentError(
                    f"layer {layer.name!r} ran more than once in one forward pass (shared module); "
                    "neuron scores would be ambiguous: use a model without module reuse or another strategy"
                )
            if not isinstance(out, torch.Tensor):
                raise InvalidArgumentError(
                    f"layer {layer.name!r} returned a {type(out).__name__}, not a tensor"
                )
            cdim = layer.channel_dim(out)
            if out.ndim == 0 or out.shape[cdim] != layer.neurons:
                raise InvalidArgumentError(
                    f"layer {layer.name!r}: output shape {tuple(out.shape)} has no channel dimension of "
                    f"size {layer.neurons}"
                )
            counts[i] += out.numel() // layer.neurons
            if kind == "outputs":
                sums[i].add_(channel_sum(out.detach(), cdim))
            elif out.requires_grad:
                # Registered now, the hook sees the gradient w.r.t. this value even if a later op
                # (e.g. ReLU(inplace=True)) overwrites the tensor.
                def grad_hook(g: torch.Tensor) -> None:
                    sums[i].add_(channel_sum(g.detach(), cdim))

                out.register_hook(grad_hook)

        return forward_hook

    named = dict(model.named_parameters())
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with forward_hooks((layer.module, make_hook(i, layer)) for i, layer in enumerate(layers)):
            for chunk in chunks:
                fired[:] = [0] * len(layers)
                if kind == "outputs":
                    with torch.no_grad():
                        call(model, chunk.inputs)
                    continue
                with torch.enable_grad():
                    out = call(model, chunk.inputs)
                    if default_loss:
                        check_class_labels(chunk.targets, int(out.shape[-1]), "data")
                    loss = loss_fn(out, chunk.targets)
                    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                        raise InvalidArgumentError(
                            "`loss_fn` must return a scalar tensor (a mean over the batch)"
                        )
                    if not loss.requires_grad:
                        raise InvalidArgumentError("the loss does not depend on any trainable parameter")
                    ran = [named[layer.weight.name] for layer, f in zip(layers, fired, strict=True) if f]
                    if ran:
                        # Weighting each chunk's mean loss by its share makes the gradients those of
                        # the mean loss over all samples, independent of the batching.
                        torch.autograd.grad(loss.reshape(()) * chunk.weight, ran, allow_unused=True)
    finally:
        for m, flag in flags:
            m.training = flag

    scores = [None if c == 0 else (s / c).abs().cpu() for s, c in zip(sums, counts, strict=True)]
    for layer, score in zip(layers, scores, strict=True):
        if score is not None and not bool(torch.isfinite(score).all()):
            raise NumericalError(f"layer {layer.name!r}: NaN or Inf in the neuron {kind}")
    return scores


# ------------------------------------------------------------------------------------ choosers


def _neuron_block(layer: _Layer, neurons: torch.Tensor) -> torch.Tensor:
    """Flat θ indices of all weights and the bias of the given neurons."""
    weights = layer.weights_of(neurons)
    if layer.bias is None:
        return weights
    return torch.cat([weights, neurons + layer.bias.offset])


def _take_ranked(layer: _Layer, order: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """The first n_full neurons of ``order`` whole, plus ``leftover`` random weights of the next."""
    n_full, leftover = divmod(n, layer.per_neuron)
    parts = [_neuron_block(layer, order[:n_full])]
    if leftover and n_full < order.numel():
        j = int(order[n_full])
        local = torch.randperm(layer.width, generator=gen)[:leftover]
        parts.append(layer.weights_of(torch.tensor([j]), local))
    return torch.cat(parts)


def _random(layer: _Layer, ratio: float, gen: torch.Generator) -> torch.Tensor:
    """``int(ratio * numel)`` random entries of the weight, then of the bias (in that order)."""
    slots = [layer.weight] if layer.bias is None else [layer.weight, layer.bias]
    return torch.cat(
        [s.offset + torch.randperm(s.numel, generator=gen)[: int(ratio * s.numel)] for s in slots]
    )


def _threshold(
    layer: _Layer, score: torch.Tensor, n: int, start: float, gen: torch.Generator
) -> torch.Tensor:
    """Pool = neurons scoring above the threshold, lowered by 0.01 (from ``start``, per layer)."""
    need = -(-n // layer.per_neuron)  # neurons the pool must hold to contain n parameters
    kth = float(torch.sort(score.double(), descending=True).values[need - 1])
    # The official loop lowers the threshold by 0.01 until the pool is big enough, i.e. stops at
    # the smallest k >= 0 with start - k*step < kth, so the final level lies in [kth - step, kth).
    # Closed form, nudged against rounding, then clamped into that interval (a huge start, where
    # 0.01 steps no longer register in floating point, would otherwise overshoot or never stop).
    level = start
    if start >= kth:
        k = math.floor((start - kth) / _THRESHOLD_STEP) + 1
        for _ in range(3):
            if start - k * _THRESHOLD_STEP < kth:
                break
            k += 1
        for _ in range(3):
            if k <= 1 or start - (k - 1) * _THRESHOLD_STEP >= kth:
                break
            k -= 1
        level = start - k * _THRESHOLD_STEP
        if level >= kth:
            level = math.nextafter(kth, -math.inf)
        level = max(level, kth - _THRESHOLD_STEP)
    pool = _neuron_block(layer, torch.nonzero(score.double() > level).reshape(-1))
    return pool[torch.randperm(pool.numel(), generator=gen)[:n]]
