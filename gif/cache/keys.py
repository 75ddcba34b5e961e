"""Cache keys and content digests: ``"<kind>:<sha256>"`` of canonical JSON, tensors by bytes."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import is_pair
from ..hessian import cross_entropy

CACHE_VERSION = 2

#: Kinds of entries (the curvature fits are named by their solver; ``features``: a head's input
#: features, gif/tail_edit.py), and ``named``: the digest of named inputs (their names and
#: tensors), a key part rather than an entry.
KINDS = ("selection", "gradient", "lowrank", "kfac", "ekfac", "ihvp", "evaluation", "features", "named")

_KEY = re.compile(r"^([a-z]+):([0-9a-f]{64})$")


def check_key(key: str) -> tuple[str, str]:
    """Split ``"<kind>:<64 hex>"`` into (kind, hex); ValueError for anything else."""
    m = _KEY.match(key) if isinstance(key, str) else None
    if m is None:
        raise ValueError(f"not a cache key (want '<kind>:<sha256 hex>'): {key!r}")
    return m.group(1), m.group(2)


def make_key(kind: str, parts: Mapping[str, Any]) -> str:
    """``"<kind>:<sha256>"`` of the canonical JSON of ``parts`` (tensors in it are digested)."""
    if kind not in KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; known: {', '.join(KINDS)}")
    return f"{kind}:{options_digest({'kind': kind, 'version': CACHE_VERSION, 'parts': dict(parts)})}"


def options_digest(obj: Any) -> str:
    """SHA-256 of canonical JSON: sorted keys, no spaces, floats as their shortest repr."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_canonical)
    return hashlib.sha256(text.encode()).hexdigest()


def _canonical(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return {"tensor": tensor_digest(value)}
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot put a {type(value).__name__} in a cache key")


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 over each tensor's dtype, shape and raw bytes (CPU, C order)."""
    h = hashlib.sha256()
    for t in tensors:
        _hash_tensor(h, t)
    return h.hexdigest()


def data_digest(data: Any) -> str:
    """Digest of ``(inputs, targets)`` or an iterable of such batches (batch boundaries count,
    because chunking changes the round-off of a gradient)."""
    batches = [tuple(data)] if is_pair(data) else [tuple(b) for b in data]
    h = hashlib.sha256(b"gif.data\0")
    for batch in batches:
        h.update(f"batch:{len(batch)}\0".encode())
        for part in batch:
            if isinstance(part, Mapping):  # named inputs: names count, in sorted order
                for name in sorted(part):
                    h.update(f"input:{name}\0".encode())
                    _hash_tensor(h, part[name])
            else:
                _hash_tensor(h, part)
    return h.hexdigest()


def model_digest(model: nn.Module) -> str:
    """Digest of everything that decides a model's outputs as a function of its input.

    Covers ``repr(model)`` (module types and their configurations), every parameter (name,
    shape, dtype, ``requires_grad``, values) and every buffer (e.g. BatchNorm running
    statistics). Custom modules whose ``forward`` depends on attributes missing from their
    ``repr`` should show them in ``extra_repr``.
    """
    h = hashlib.sha256(b"gif.model\0")
    h.update(repr(model).encode())
    for name, p in model.named_parameters():
        h.update(f"\0param:{name}:{int(p.requires_grad)}\0".encode())
        _hash_tensor(h, p)
    for name, b in model.named_buffers():
        h.update(f"\0buffer:{name}\0".encode())
        _hash_tensor(h, b)
    return h.hexdigest()


def _hash_tensor(h: Any, t: torch.Tensor) -> None:
    t = t.detach()
    h.update(f"{t.dtype}:{tuple(t.shape)}\0".encode())
    if t.numel():
        flat = t.to("cpu").contiguous().reshape(-1)
        h.update(flat.view(torch.uint8).numpy().data)


def loss_id(loss_fn: Callable | None) -> str | None:
    """A stable name for a loss function, or None when it cannot be named safely.

    The default cross-entropy is ``"cross_entropy"``; any other callable must carry a
    ``cache_key`` attribute (a string that changes whenever the loss does), else caching is
    bypassed for the edit: a function's name says nothing about what it computes.
    """
    if loss_fn is None or loss_fn is cross_entropy or loss_fn is torch.nn.functional.cross_entropy:
        return "cross_entropy"
    key = getattr(loss_fn, "cache_key", None)
    return str(key) if key is not None else None
