"""Chunk sizes from a memory budget and the model's measured activation footprint.

Differentiating a chunk of c samples holds, at its peak, about ``FACTOR`` × c × a bytes, a being
the bytes every leaf module outputs for one sample (measured with forward hooks on one sample):
the forward activations, their tangents (forward-over-reverse) or first-order gradients, and the
intermediates of the second pass. A configuration's ``chunk_size`` is a cap; the chunk actually
used is the largest one whose estimate fits ``memory_budget`` (never below one sample), so a large
model gets small chunks and a small model keeps the cap (and its results, bit for bit).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

#: Peak bytes while differentiating ≈ FACTOR × activation bytes (bench/memory.py measures 3–6×).
FACTOR = 6


def activation_bytes(model: nn.Module, forward: Callable[[], object], element_size: int) -> int:
    """Bytes every leaf module of ``model`` outputs during ``forward()`` (run without gradients)."""
    counted = [0]

    def count(_module: nn.Module, _inputs: object, output: object) -> None:
        for t in output if isinstance(output, tuple) else (output,):
            if isinstance(t, torch.Tensor):
                counted[0] += t.numel()

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            forward()
    finally:
        for h in handles:
            h.remove()
    return counted[0] * element_size


def per_sample_gradient_chunk(
    cap: int, per_sample_bytes: int, params: int, element_size: int, budget: int | None
) -> int:
    """The largest chunk ≤ ``cap`` of per-sample gradients ([chunk, p] entries, plus the vmapped
    pass's activations) that fits ``budget``; at least 1."""
    if budget is None:
        return cap
    return max(1, min(cap, budget // (params * element_size + FACTOR * per_sample_bytes)))


def fitting_chunk(cap: int, per_sample_bytes: int, budget: int | None) -> int:
    """The largest chunk ≤ ``cap`` whose estimated peak, FACTOR × chunk × per-sample bytes, fits
    ``budget`` (None: no budget); at least 1."""
    if budget is None or per_sample_bytes <= 0:
        return cap
    return max(1, min(cap, budget // (FACTOR * per_sample_bytes)))
