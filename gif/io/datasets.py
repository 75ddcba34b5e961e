"""Datasets: load, save, describe and check ``(inputs, labels)`` pairs in safetensors or ``.npz`` files."""

from __future__ import annotations

import itertools
import math
import os
import zipfile
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from ..errors import DatasetError, InvalidArgumentError, NumericalError
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
from ._safetensors import validate_header

_NPY_MAGIC = b"\x93NUMPY"
_DATASET_KEYS = ("inputs", "labels")
_ZIP_METHODS = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}


def load_dataset(path: PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``(inputs, labels)`` from a safetensors or ``.npz`` file (format detected by content).

    The file must contain the keys ``inputs`` and ``labels``; other keys are ignored. Inputs are
    floating (float16/bfloat16 become float32, float64 is kept) or integer token ids (int64);
    labels are a non-empty 1-D integer array with one non-negative label per input.

    Raises:
        DatasetError: Unreadable file, missing key, wrong dtype/shape, or bad labels.
        NumericalError: NaN or Inf in floating inputs.
    """
    head = read_head(path, DatasetError)
    if head.startswith(_NPY_MAGIC):
        raise DatasetError("this is a single .npy array; save inputs and labels together with np.savez")
    reader = _read_npz if head.startswith(ZIP_MAGIC) else _read_safetensors_arrays
    arrays = reader(path, _DATASET_KEYS)
    return _check_dataset(arrays["inputs"], arrays["labels"])


def save_dataset(inputs: torch.Tensor, labels: torch.Tensor, path: PathLike) -> None:
    """Validate ``inputs`` and ``labels`` (as :func:`load_dataset` would) and write them to safetensors."""
    x, y = _check_dataset(torch.as_tensor(inputs), torch.as_tensor(labels))
    tensors = {"inputs": x.detach().cpu().contiguous(), "labels": y.detach().cpu().contiguous()}
    atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, tmp))


def describe_dataset(inputs: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Summary of a dataset: size, per-sample shape and dtype, classes seen and per-class counts."""
    counts = torch.bincount(labels.reshape(-1).long()).tolist() if labels.numel() else []
    return {
        "n_samples": int(inputs.shape[0]),
        "input_shape": list(inputs.shape[1:]),
        "input_dtype": dtype_name(inputs.dtype),
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
        pairs = zip(values[:MAX_NAMES].tolist(), counts[:MAX_NAMES].tolist(), strict=True)
        found = ", ".join(f"{v} (x{c})" for v, c in pairs)
        raise DatasetError(
            f"{bad.numel()} label(s) outside [0, {num_classes}): {found}",
            count=int(bad.numel()),
            values=values.tolist(),
        )


@torch.no_grad()
def infer_num_classes(model: nn.Module, sample_input: torch.Tensor) -> int:
    """Number of classes a model predicts: the last dimension of its output on ``sample_input``.

    The forward runs in eval mode (the model's mode is restored afterwards) without gradients,
    on the model's device (the sample is moved there: datasets stay in host memory).
    """
    was_training = model.training
    device = next(itertools.chain(model.parameters(), model.buffers()), sample_input).device
    model.eval()
    try:
        with torch.no_grad():
            out = model(sample_input.to(device))
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
            for key in keys:
                _check_npz_member(npz.zip, key)
            arrays = {k: npz[k] for k in keys}
    except DatasetError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DatasetError(
                f"npz dataset holds object (pickled) arrays, which are not allowed: {exc}"
            ) from None
        raise DatasetError(f"cannot read npz dataset {os.fspath(path)!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 (bad zip, bad .npy header, ...)
        raise DatasetError(f"cannot read npz dataset {os.fspath(path)!r}: {exc}") from None
    out = {}
    for key, arr in arrays.items():
        if arr.dtype.kind not in "biuf":
            raise DatasetError(f"array {key!r} has unsupported dtype {arr.dtype}")
        out[key] = torch.from_numpy(np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("="), copy=False)))
    return out


def _check_npz_member(archive: zipfile.ZipFile, key: str) -> None:
    """Refuse a member before it is unpacked: a compression other than np.savez's (Python's zipfile
    inflates bzip2 and lzma without bound), or a size that differs from what its .npy header declares
    (a truncated member, or a bomb inflating past its array)."""
    names = archive.namelist()
    info = archive.getinfo(f"{key}.npy" if f"{key}.npy" in names else key)
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise DatasetError(
            f"npz member {info.filename!r} is compressed with "
            f"{_ZIP_METHODS.get(info.compress_type, f'method {info.compress_type}')}; only "
            "stored or deflated members (np.savez, np.savez_compressed) are read"
        )
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return  # numpy reports the version
        header = f.tell()
    if dtype.hasobject:
        return  # refused by allow_pickle=False
    declared = math.prod(shape) * dtype.itemsize
    if info.file_size - header != declared:
        raise DatasetError(
            f"npz member {info.filename!r} is corrupt: its header declares {dtype}{list(shape)} "
            f"({declared} bytes) but it holds {info.file_size - header} bytes of data"
        )


def _read_safetensors_arrays(path: PathLike, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Load only ``keys`` from a safetensors file, after validating its header."""
    _require_keys(keys, validate_header(path, DatasetError))
    try:
        with safetensors.safe_open(os.fspath(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in keys}
    except Exception as exc:  # noqa: BLE001 (the library raises several types for a corrupt file)
        raise DatasetError(f"cannot read safetensors dataset {os.fspath(path)!r}: {exc}") from None


def _require_keys(keys: tuple[str, ...], found: list[str]) -> None:
    for key in keys:
        if key not in found:
            raise DatasetError(
                f"dataset has no {key!r} array (found: {format_names(sorted(found)) or 'none'})", key=key
            )


def _check_dataset(inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if inputs.dtype.is_floating_point:
        inputs = inputs if inputs.dtype == torch.float64 else inputs.float()
    elif dtype_kind(inputs.dtype) != "integer":
        raise DatasetError(f"inputs must be floating or integer token ids, got {dtype_name(inputs.dtype)}")
    else:
        inputs = inputs.long()
    if inputs.ndim < 1 or inputs.shape[0] == 0:
        raise DatasetError(f"inputs must be a non-empty batch [n, ...], got shape {tuple(inputs.shape)}")
    if labels.ndim != 1:
        raise DatasetError(f"labels must be 1-D [n], got shape {tuple(labels.shape)}")
    if dtype_kind(labels.dtype) != "integer":
        raise DatasetError(
            f"labels must be integers (int32/int64), got {dtype_name(labels.dtype)}; cast them first"
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
