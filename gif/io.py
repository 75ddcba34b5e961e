"""Safe loading and saving of checkpoints and datasets.

Formats are recognised by content, never by file extension. Safetensors headers are validated
by hand before the library reads them, so that a malformed file fails with a precise message.
Pickle-based PyTorch files are only ever opened with ``torch.load(weights_only=True)``: a file
that would need arbitrary code to load is refused, not executed.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from .errors import CheckpointError, DatasetError, InvalidArgumentError, NumericalError, UnsafeCheckpointError

PathLike = str | os.PathLike

MAX_HEADER_BYTES = 100 * 1024 * 1024
MIN_TORCH_VERSION = (2, 10)  # older weights_only loaders have known code-execution bypasses

_ZIP_MAGIC = b"PK\x03\x04"
_NPY_MAGIC = b"\x93NUMPY"
_PICKLE_PROTO = b"\x80"
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip
_WRAPPER_KEYS = ("state_dict", "model")
_DATASET_KEYS = ("inputs", "labels")
_MAX_NAMES = 10


# ---------------------------------------------------------------------------------------------
# checkpoints


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
    sd = (
        model_or_state_dict.state_dict()
        if isinstance(model_or_state_dict, nn.Module)
        else model_or_state_dict
    )
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
    _atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata=metadata))


def load_checkpoint(
    path: PathLike, model: nn.Module | None = None, *, strict: bool = True
) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors, a PyTorch zip file or a legacy PyTorch pickle.

    Args:
        path: The checkpoint file; its format is detected from its content.
        model: If given, the state dict is checked against ``model.state_dict()`` (keys, shapes,
            dtypes, finite values) and then loaded into it.
        strict: Require exactly the model's keys (otherwise missing/extra keys are tolerated).

    Returns:
        The state dict, with CPU tensors.

    Raises:
        CheckpointError: Unreadable, malformed or incompatible file (the message says why).
        UnsafeCheckpointError: A pickle that would execute code when loaded.
        NumericalError: NaN or Inf in a weight (only checked when ``model`` is given).
    """
    head = _read_head(path, CheckpointError)
    if head.startswith(_ZIP_MAGIC) or (head.startswith(_PICKLE_PROTO) and head[8:9] != b"{"):
        state = _unwrap(_torch_load(path))
    else:
        state = _read_safetensors(path, CheckpointError)
    if not state:
        raise CheckpointError(f"checkpoint {os.fspath(path)!r} holds no tensors")
    if model is not None:
        _check_against(state, model, strict=strict)
        try:
            model.load_state_dict(state, strict=strict)
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint does not fit the model: {exc}") from None
    return state


def describe_checkpoint(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Summary of a state dict: tensor names, shapes and dtypes, and the total element count."""
    tensors = [
        {"name": k, "shape": list(t.shape), "dtype": _dtype_name(t.dtype)} for k, t in state_dict.items()
    ]
    return {
        "n_tensors": len(tensors),
        "n_params": sum(t.numel() for t in state_dict.values()),
        "tensors": tensors,
    }


def _torch_load(path: PathLike) -> object:
    version = _torch_version()
    if version < MIN_TORCH_VERSION:
        raise UnsafeCheckpointError(
            f"refusing to load a pickle-based checkpoint with torch {version}: versions before 2.10 have "
            "known weights_only bypasses; convert the checkpoint to safetensors"
        )
    try:
        # A file object, not the path: torch.load dispatches on a ".safetensors" suffix otherwise.
        with open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"refusing to load {os.fspath(path)!r}: its pickle uses objects or opcodes outside torch's "
            f"weights-only allowlist and would execute code on load ({_unpickling_reason(exc)})"
        ) from None
    except Exception as exc:  # corrupt zip, truncated pickle, ...: torch raises many types
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
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if _is_flat_state_dict(obj.get(key)):
                return dict(obj[key])
    kind = (
        f"dict with keys {sorted(map(str, obj))[:_MAX_NAMES]}"
        if isinstance(obj, dict)
        else type(obj).__name__
    )
    raise CheckpointError(f"expected a state dict (str -> Tensor), got a {kind}")


def _is_flat_state_dict(obj: object) -> bool:
    return isinstance(obj, dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _check_against(state: dict[str, torch.Tensor], model: nn.Module, *, strict: bool) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if strict and (missing or unexpected):
        parts = [
            f"{label} key(s) {_names(keys)}"
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
            f"checkpoint shapes do not match the architecture: {_names(bad_shapes, quote=False)}"
        )
    for k in common:
        want, got = expected[k].dtype, state[k].dtype
        if _kind(want) != _kind(got):
            raise CheckpointError(f"tensor {k!r} has dtype {_dtype_name(got)}, expected {_dtype_name(want)}")
        if got.is_floating_point:
            bad = int((~torch.isfinite(state[k])).sum())
            if bad:
                raise NumericalError(f"tensor {k!r} holds {bad} NaN/Inf value(s)", tensor=k)


# ---------------------------------------------------------------------------------------------
# safetensors header validation


def _read_safetensors(path: PathLike, error: type[Exception]) -> dict[str, torch.Tensor]:
    _validate_safetensors_header(path, error)
    try:
        return safetensors.torch.load_file(os.fspath(path), device="cpu")
    except Exception as exc:  # the library's own checks, in case ours missed something
        raise error(f"cannot read safetensors file {os.fspath(path)!r}: {exc}") from None


def _validate_safetensors_header(path: PathLike, error: type[Exception]) -> list[str]:
    """Check the length prefix, JSON header and data offsets without reading the tensor data.

    Returns:
        The tensor names in the header.
    """
    size = os.path.getsize(path)
    if size < 8:
        raise error(f"truncated file: {size} bytes, too short for a safetensors header length")
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > MAX_HEADER_BYTES:
            raise error(
                f"not a valid safetensors file: header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit"
            )
        if 8 + n > size:
            raise error(f"not a valid safetensors file: header length {n} goes beyond the end of the file")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"not a recognised file (safetensors header is not JSON: {exc})") from None
    if not isinstance(header, dict):
        raise error("malformed safetensors header: expected a JSON object")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise error("malformed safetensors header: __metadata__ must map str to str")
    _validate_offsets(header, size - 8 - n, error)
    return list(header)


def _validate_offsets(header: dict[str, Any], data_len: int, error: type[Exception]) -> None:
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise error(f"malformed safetensors header: entry {name!r} needs dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _DTYPE_BYTES:
            raise error(f"tensor {name!r} has unsupported dtype {dtype!r}")
        if not (isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)):
            raise error(f"tensor {name!r} has an invalid shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise error(f"tensor {name!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end:
            raise error(f"tensor {name!r} has invalid data_offsets [{begin}, {end}]")
        if end > data_len:
            raise error(
                f"truncated file: tensor {name!r} needs bytes up to {end} but the data section has {data_len}"
            )
        nbytes = _DTYPE_BYTES[dtype] * math.prod(shape)
        if end - begin != nbytes:
            raise error(
                f"tensor {name!r}: data_offsets span {end - begin} bytes but {dtype}{shape} needs {nbytes}"
            )
        spans.append((begin, end, name))
    spans.sort()
    cursor, previous = 0, None
    for begin, end, name in spans:
        if begin < cursor:
            raise error(
                f"corrupt safetensors file: tensors {previous!r} and {name!r} have overlapping data_offsets"
            )
        if begin > cursor:
            raise error(f"corrupt safetensors file: gap in the data section before tensor {name!r}")
        cursor, previous = end, name
    if cursor != data_len:
        raise error(f"corrupt safetensors file: data section is {data_len} bytes but tensors cover {cursor}")


# ---------------------------------------------------------------------------------------------
# datasets


def load_dataset(path: PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``(inputs, labels)`` from a safetensors or ``.npz`` file (format detected by content).

    The file must contain the keys ``inputs`` and ``labels``; other keys are ignored. Inputs are
    floating (float16/bfloat16 become float32, float64 is kept) or integer token ids (int64);
    labels are a non-empty 1-D integer array with one non-negative label per input.

    Raises:
        DatasetError: Unreadable file, missing key, wrong dtype/shape, or bad labels.
        NumericalError: NaN or Inf in floating inputs.
    """
    head = _read_head(path, DatasetError)
    if head.startswith(_NPY_MAGIC):
        raise DatasetError("this is a single .npy array; save inputs and labels together with np.savez")
    reader = _read_npz if head.startswith(_ZIP_MAGIC) else _read_safetensors_arrays
    arrays = reader(path, _DATASET_KEYS)
    return _check_dataset(arrays["inputs"], arrays["labels"])


def save_dataset(inputs: torch.Tensor, labels: torch.Tensor, path: PathLike) -> None:
    """Validate ``inputs`` and ``labels`` (as :func:`load_dataset` would) and write them to safetensors."""
    x, y = _check_dataset(torch.as_tensor(inputs), torch.as_tensor(labels))
    tensors = {"inputs": x.detach().cpu().contiguous(), "labels": y.detach().cpu().contiguous()}
    _atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, tmp))


def describe_dataset(inputs: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Summary of a dataset: size, per-sample shape and dtype, classes seen and per-class counts."""
    counts = torch.bincount(labels.reshape(-1).long()).tolist() if labels.numel() else []
    return {
        "n_samples": int(inputs.shape[0]),
        "input_shape": list(inputs.shape[1:]),
        "input_dtype": _dtype_name(inputs.dtype),
        "num_classes_seen": len(counts),
        "label_counts": counts,
    }


def check_labels(labels: torch.Tensor, num_classes: int) -> None:
    """Raise :class:`DatasetError` if any label lies outside ``[0, num_classes)``."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise InvalidArgumentError(f"`num_classes` must be a positive integer, got {num_classes!r}")
    labels = torch.as_tensor(labels).reshape(-1)
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.numel():
        values, counts = torch.unique(bad, return_counts=True)
        pairs = zip(values[:_MAX_NAMES].tolist(), counts[:_MAX_NAMES].tolist(), strict=True)
        found = ", ".join(f"{v} (x{c})" for v, c in pairs)
        raise DatasetError(
            f"{bad.numel()} label(s) outside [0, {num_classes}): {found}",
            count=int(bad.numel()),
            values=values.tolist(),
        )


@torch.no_grad()
def infer_num_classes(model: nn.Module, sample_input: torch.Tensor) -> int:
    """Number of classes a model predicts: the last dimension of its output on ``sample_input``.

    The forward runs in eval mode (the model's mode is restored afterwards) without gradients.
    """
    was_training = model.training
    model.eval()
    try:
        out = model(sample_input)
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim < 1:
        raise InvalidArgumentError(
            f"model output must be a logits tensor [batch, classes], got {type(out).__name__}"
        )
    return int(out.shape[-1])


def _read_npz(path: PathLike, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Load only ``keys`` from an npz archive (extra arrays are never unpacked)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            _require_keys(keys, npz.files)
            arrays = {k: npz[k] for k in keys}
    except DatasetError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DatasetError(
                f"npz dataset holds object (pickled) arrays, which are not allowed: {exc}"
            ) from None
        raise DatasetError(f"cannot read npz dataset {os.fspath(path)!r}: {exc}") from None
    except Exception as exc:  # bad zip, bad .npy header, ...
        raise DatasetError(f"cannot read npz dataset {os.fspath(path)!r}: {exc}") from None
    out = {}
    for key, arr in arrays.items():
        if arr.dtype.kind not in "biuf":
            raise DatasetError(f"array {key!r} has unsupported dtype {arr.dtype}")
        out[key] = torch.from_numpy(np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("="), copy=False)))
    return out


def _read_safetensors_arrays(path: PathLike, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Load only ``keys`` from a safetensors file, after validating its header."""
    _require_keys(keys, _validate_safetensors_header(path, DatasetError))
    try:
        with safetensors.safe_open(os.fspath(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in keys}
    except Exception as exc:
        raise DatasetError(f"cannot read safetensors dataset {os.fspath(path)!r}: {exc}") from None


def _require_keys(keys: tuple[str, ...], found: list[str]) -> None:
    for key in keys:
        if key not in found:
            raise DatasetError(
                f"dataset has no {key!r} array (found: {_names(sorted(found)) or 'none'})", key=key
            )


def _check_dataset(inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if inputs.dtype.is_floating_point:
        inputs = inputs if inputs.dtype == torch.float64 else inputs.float()
    elif _kind(inputs.dtype) != "integer":
        raise DatasetError(f"inputs must be floating or integer token ids, got {_dtype_name(inputs.dtype)}")
    else:
        inputs = inputs.long()
    if inputs.ndim < 1 or inputs.shape[0] == 0:
        raise DatasetError(f"inputs must be a non-empty batch [n, ...], got shape {tuple(inputs.shape)}")
    if labels.ndim != 1:
        raise DatasetError(f"labels must be 1-D [n], got shape {tuple(labels.shape)}")
    if _kind(labels.dtype) != "integer":
        raise DatasetError(
            f"labels must be integers (int32/int64), got {_dtype_name(labels.dtype)}; cast them first"
        )
    labels = labels.long()
    if labels.shape[0] != inputs.shape[0]:
        raise DatasetError(f"inputs have {inputs.shape[0]} samples but labels have {labels.shape[0]}")
    if inputs.dtype.is_floating_point:
        bad = int((~torch.isfinite(inputs)).sum())
        if bad:
            raise NumericalError(f"inputs hold {bad} NaN/Inf value(s)")
    negative = labels[labels < 0]
    if negative.numel():
        raise DatasetError(f"{negative.numel()} label(s) are negative, e.g. {int(negative[0])}")
    return inputs, labels


# ---------------------------------------------------------------------------------------------
# helpers


def _read_head(path: PathLike, error: type[Exception]) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(16)
    except OSError as exc:
        raise error(f"cannot open {os.fspath(path)!r}: {exc.strerror or exc}") from None


def _atomic_write(path: PathLike, write: Callable[[str], object]) -> None:
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(os.fspath(tmp))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _names(items: list[str], *, quote: bool = True) -> str:
    shown = [repr(s) if quote else s for s in items[:_MAX_NAMES]]
    more = f" and {len(items) - _MAX_NAMES} more" if len(items) > _MAX_NAMES else ""
    return ", ".join(shown) + more


def _kind(dtype: torch.dtype) -> str:
    if dtype.is_floating_point:
        return "floating"
    if dtype.is_complex:
        return "complex"
    return "bool" if dtype == torch.bool else "integer"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
