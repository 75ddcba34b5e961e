"""Checkpoints: save, load (safetensors or weights-only PyTorch pickles) and describe state dicts."""

from __future__ import annotations

import os
import pickle
import re
from typing import Any, TypeGuard

import safetensors.torch
import torch
from torch import nn

from ..errors import CheckpointError, InvalidArgumentError, NumericalError, UnsafeCheckpointError
from ._files import (
    MAX_NAMES,
    ZIP_MAGIC,
    PathLike,
    atomic_write,
    dtype_kind,
    dtype_name,
    format_names,
    read_head,
)
from ._pickles import PickleBomb, PickleTooLarge, check_torch_file
from ._safetensors import read_safetensors

MIN_TORCH_VERSION = (2, 10)  # older weights_only loaders have known code-execution bypasses

_PICKLE_PROTO = b"\x80"
_WRAPPER_KEYS = ("state_dict", "model")


def save_checkpoint(
    model_or_state_dict: nn.Module | dict[str, torch.Tensor],
    path: PathLike,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a model's (or a state dict's) tensors to a safetensors file.

    Tensors are moved to the CPU and made contiguous; tensors sharing storage (tied weights) are
    cloned, because safetensors refuses to store aliases. The file is written atomically.

    Args:
        model_or_state_dict: A module (its ``state_dict()`` is saved) or a ``str -> Tensor`` dict.
        path: Destination file.
        metadata: Optional ``str -> str`` pairs stored in the header.
    """
    sd = model_or_state_dict
    if isinstance(sd, nn.Module):
        sd = sd.state_dict()
    if not _is_flat_state_dict(sd):
        raise InvalidArgumentError("`model_or_state_dict` must be an nn.Module or a dict of str -> Tensor")
    if metadata is not None and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise InvalidArgumentError("`metadata` must map str to str")
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in sd.items():
        t = t.detach().to("cpu").contiguous()
        storage = t.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != t.nbytes:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        tensors[name] = t
    atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata=metadata))


def load_checkpoint(
    path: PathLike, model: nn.Module | None = None, *, strict: bool = True
) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors, a PyTorch zip file or a legacy PyTorch pickle.

    Args:
        path: The checkpoint file; its format is detected from its content.
        model: If given, the state dict is checked against it and loaded into it (:func:`load_state`).
        strict: Require exactly the model's keys (otherwise missing/extra keys are tolerated).

    Returns:
        The state dict, with CPU tensors.

    Raises:
        CheckpointError: Unreadable, malformed or incompatible file (the message says why).
        UnsafeCheckpointError: A pickle that would execute code when loaded.
        NumericalError: NaN or Inf in a weight (only checked when ``model`` is given).
    """
    head = read_head(path, CheckpointError)
    if head.startswith(ZIP_MAGIC) or (head.startswith(_PICKLE_PROTO) and head[8:9] != b"{"):
        state = _unwrap(_torch_load(path))
    else:
        state = read_safetensors(path, CheckpointError)
    if not state:
        raise CheckpointError(f"checkpoint {os.fspath(path)!r} holds no tensors")
    if model is not None:
        load_state(state, model, strict=strict)
    return state


def load_state(state: dict[str, torch.Tensor], model: nn.Module, *, strict: bool = True) -> None:
    """Check ``state`` against ``model.state_dict()`` (keys, shapes, dtypes, finite values) as
    :func:`load_checkpoint` does, then load it into ``model``.

    Raises:
        CheckpointError: Keys or shapes that do not fit.
        NumericalError: NaN or Inf in a weight.
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    _check_against(state, model, strict=strict)
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint does not fit the model: {exc}") from None


def describe_checkpoint(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Summary of a state dict: tensor names, shapes and dtypes, and the total element count."""
    tensors = [
        {"name": k, "shape": list(t.shape), "dtype": dtype_name(t.dtype)} for k, t in state_dict.items()
    ]
    return {
        "n_tensors": len(tensors),
        "n_params": sum(t.numel() for t in state_dict.values()),
        "tensors": tensors,
    }


def _torch_load(path: PathLike) -> object:
    version = _torch_version()
    # TorchVersion compares with tuples at runtime (methods set with setattr its stubs don't show).
    if version < MIN_TORCH_VERSION:  # type: ignore[operator]
        raise UnsafeCheckpointError(
            f"refusing to load a pickle-based checkpoint with torch {version}: versions before 2.10 have "
            "known weights_only bypasses; convert the checkpoint to safetensors"
        )
    try:
        check_torch_file(path)
    except PickleBomb as exc:
        raise UnsafeCheckpointError(f"refusing to load {os.fspath(path)!r}: {exc}") from None
    except PickleTooLarge as exc:
        raise CheckpointError(f"cannot read PyTorch checkpoint {os.fspath(path)!r}: {exc}") from None
    try:
        # A file object, not the path: torch.load dispatches on a ".safetensors" suffix otherwise.
        with open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"refusing to load {os.fspath(path)!r}: its pickle uses objects or opcodes outside torch's "
            f"weights-only allowlist and would execute code on load ({_unpickling_reason(exc)})"
        ) from None
    except Exception as exc:  # noqa: BLE001 (corrupt zip, truncated pickle, ...: torch raises many types)
        raise CheckpointError(f"cannot read PyTorch checkpoint {os.fspath(path)!r}: {exc}") from None


def _unpickling_reason(exc: Exception) -> str:
    """The useful part of torch's long weights-only error, e.g. ``Unsupported global: GLOBAL io.open``."""
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. Please use|\n\n|$)", str(exc), re.DOTALL)
    return (match.group(1) if match else str(exc) or type(exc).__name__).strip()[:300]


def _torch_version() -> torch.torch_version.TorchVersion:
    return torch.torch_version.TorchVersion(torch.__version__)


def _unwrap(obj: object) -> dict[str, torch.Tensor]:
    """Accept a flat state dict, or one wrapped as ``{"state_dict": ...}`` / ``{"model": ...}``."""
    if _is_flat_state_dict(obj):
        return dict(obj)
    kind = type(obj).__name__
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if _is_flat_state_dict(obj.get(key)):
                return dict(obj[key])
        kind = f"dict with keys {sorted(map(str, obj))[:MAX_NAMES]}"
    raise CheckpointError(f"expected a state dict (str -> Tensor), got a {kind}")


def _is_flat_state_dict(obj: object) -> TypeGuard[dict[str, torch.Tensor]]:
    return isinstance(obj, dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _check_against(state: dict[str, torch.Tensor], model: nn.Module, *, strict: bool) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if strict and (missing or unexpected):
        parts = [
            f"{label} key(s) {format_names(keys)}"
            for label, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        raise CheckpointError(f"checkpoint does not match the architecture: {'; '.join(parts)}")
    common = [k for k in state if k in expected]
    bad_shapes = [
        f"{k!r} expected {tuple(expected[k].shape)}, got {tuple(state[k].shape)}"
        for k in common
        if state[k].shape != expected[k].shape
    ]
    if bad_shapes:
        raise CheckpointError(
            f"checkpoint shapes do not match the architecture: {format_names(bad_shapes, quote=False)}"
        )
    for k in common:
        want, got = expected[k].dtype, state[k].dtype
        if dtype_kind(want) != dtype_kind(got):
            raise CheckpointError(f"tensor {k!r} has dtype {dtype_name(got)}, expected {dtype_name(want)}")
        if got.is_floating_point:
            bad = int((~torch.isfinite(state[k])).sum())
            if bad:
                raise NumericalError(f"tensor {k!r} holds {bad} NaN/Inf value(s)", tensor=k)
