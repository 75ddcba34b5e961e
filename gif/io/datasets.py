"""Datasets: load, save, describe and check ``(inputs, labels)`` pairs in safetensors or ``.npz`` files.

A dataset file holds ``labels`` and either one ``inputs`` tensor (passed to the model
positionally) or several named tensors (``input_ids``, ``attention_mask``, ``pixel_values``, …)
passed as keyword arguments; the named form loads as a dict (gif/inputs.py). An optional
``sample_ids`` tensor (one distinct integer per sample: the caller's own key, e.g. a database
row id) is never given to the model; rankings name samples by it (:func:`load_sample_ids`).
"""

from __future__ import annotations

import itertools
import math
import os
import re
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from .._util import as_tensor, eval_mode
from ..errors import DatasetError, InvalidArgumentError, NumericalError
from ..inputs import Inputs, call, to
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
#: The optional per-sample key of a dataset: not an input of the model.
SAMPLE_IDS = "sample_ids"
#: Most named input tensors a dataset may hold (besides ``labels``).
MAX_INPUT_TENSORS = 16
#: A named tensor becomes a keyword argument: an identifier, not private, at most 64 characters.
_TENSOR_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_ZIP_METHODS = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}
#: Reads the named arrays of a dataset file (npz or safetensors).
_Read = Callable[[PathLike, tuple[str, ...]], dict[str, torch.Tensor]]


def load_dataset(path: PathLike) -> tuple[Inputs, torch.Tensor]:
    """Read ``(inputs, labels)`` from a safetensors or ``.npz`` file (format detected by content).

    The file holds ``labels`` and either ``inputs`` (returned as one tensor; other keys are then
    ignored) or up to :data:`MAX_INPUT_TENSORS` named tensors (every key but ``labels``, returned
    as a dict, for models called with keyword arguments). Inputs are floating (float16/bfloat16
    become float32, float64 is kept) or integers (int64: token ids, masks); labels are a non-empty
    1-D integer array with one non-negative label per sample.

    Raises:
        DatasetError: Unreadable file, missing key, wrong dtype/shape, bad labels, or named
            tensors of different lengths, with floating-point ids or negative ids.
        NumericalError: NaN or Inf in floating inputs.
    """
    if read_head(path, DatasetError).startswith(_NPY_MAGIC):
        raise DatasetError("this is a single .npy array; save inputs and labels together with np.savez")
    found, read = _contents(path)
    names = [n for n in found if n != SAMPLE_IDS]
    keys = ("inputs", "labels") if "inputs" in names or "labels" not in names else _named_keys(names)
    for key in keys:
        if key not in found:
            raise DatasetError(
                f"dataset has no {key!r} array (found: {format_names(sorted(found)) or 'none'})", key=key
            )
    arrays = read(path, keys)
    labels = arrays.pop("labels")
    if "inputs" in arrays:
        return _check_dataset(arrays["inputs"], labels)
    return _check_named(arrays, labels)


def load_sample_ids(path: PathLike, num_samples: int) -> torch.Tensor | None:
    """The dataset's ``sample_ids`` (int64 [n]), or None when it has none.

    ``num_samples`` is the dataset's length (its labels'), which the ids must match.

    Raises:
        DatasetError: ids that are not a 1-D integer array, one per sample, all distinct.
    """
    names, read = _contents(path)
    if SAMPLE_IDS not in names:
        return None
    return check_sample_ids(read(path, (SAMPLE_IDS,))[SAMPLE_IDS], num_samples)


def check_sample_ids(ids: torch.Tensor, num_samples: int) -> torch.Tensor:
    """``ids`` as int64 [num_samples] if they are one distinct integer per sample, else a
    :class:`DatasetError` naming what is wrong (a repeated id is shown with its rows)."""
    if ids.ndim != 1 or dtype_kind(ids.dtype) != "integer":
        raise DatasetError(
            f"`{SAMPLE_IDS}` must be a 1-D integer array, got {dtype_name(ids.dtype)} of shape {tuple(ids.shape)}"
        )
    if ids.shape[0] != num_samples:
        raise DatasetError(f"`{SAMPLE_IDS}` holds {ids.shape[0]} ids for {num_samples} samples")
    ids = ids.long()
    values, counts = torch.unique(ids, return_counts=True)
    if values.numel() != ids.numel():
        repeated = int(values[counts > 1][0])
        rows = torch.nonzero(ids == repeated).flatten()[:MAX_NAMES].tolist()
        raise DatasetError(
            f"`{SAMPLE_IDS}` must be distinct: {repeated} appears {int(counts.max())} times (rows {rows})",
            id=repeated,
        )
    return ids


def save_dataset(
    inputs: Inputs, labels: torch.Tensor, path: PathLike, *, sample_ids: torch.Tensor | None = None
) -> None:
    """Validate ``inputs`` (a tensor or a dict of named tensors), ``labels`` and the optional
    ``sample_ids`` (as :func:`load_dataset` and :func:`load_sample_ids` would) and write them to
    safetensors."""
    labels = as_tensor(labels, "`labels` must be a tensor or an array of integers", DatasetError)
    if isinstance(inputs, Mapping):
        if SAMPLE_IDS in inputs:
            raise DatasetError(f"pass `{SAMPLE_IDS}` as `sample_ids=`, not as an input tensor")
        named = {
            k: as_tensor(v, f"input `{k}` must be a tensor or an array", DatasetError)
            for k, v in inputs.items()
        }
        tensors, y = _check_named(named, labels)
    else:
        x, y = _check_dataset(
            as_tensor(inputs, "`inputs` must be a tensor or an array", DatasetError), labels
        )
        tensors = {"inputs": x}
    tensors["labels"] = y
    if sample_ids is not None:
        ids = as_tensor(sample_ids, "`sample_ids` must be a tensor or an array of integers", DatasetError)
        tensors[SAMPLE_IDS] = check_sample_ids(ids, len(y))
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, tmp))


def describe_dataset(
    inputs: Inputs, labels: torch.Tensor, sample_ids: torch.Tensor | None = None
) -> dict[str, Any]:
    """Summary of a dataset: size, per-sample shape and dtype (each named tensor's, with the range
    of integer ones: token ids are checked against a model's vocabulary at submit), classes seen,
    per-class counts, and whether it names its samples (``sample_ids``)."""
    counts = torch.bincount(labels.reshape(-1).long()).tolist() if labels.numel() else []
    summary: dict[str, Any] = {"n_samples": int(labels.shape[0])}
    if isinstance(inputs, torch.Tensor):
        summary.update(input_shape=list(inputs.shape[1:]), input_dtype=dtype_name(inputs.dtype))
    else:
        summary["inputs"] = {name: _describe_tensor(t) for name, t in inputs.items()}
    summary.update(num_classes_seen=len(counts), label_counts=counts, sample_ids=sample_ids is not None)
    return summary


def _describe_tensor(t: torch.Tensor) -> dict[str, Any]:
    entry: dict[str, Any] = {"shape": list(t.shape[1:]), "dtype": dtype_name(t.dtype)}
    if not t.dtype.is_floating_point and t.numel():
        entry.update(min=int(t.min()), max=int(t.max()))
    return entry


def check_labels(labels: torch.Tensor, num_classes: int) -> None:
    """Raise :class:`DatasetError` if any label lies outside ``[0, num_classes)``."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise InvalidArgumentError(f"`num_classes` must be a positive integer, got {num_classes!r}")
    labels = as_tensor(labels, "`labels` must be a tensor or an array of integers", DatasetError).reshape(-1)
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
def infer_num_classes(model: nn.Module, sample_input: Inputs) -> int:
    """Number of classes a model predicts: the last dimension of its logits on ``sample_input``
    (a tensor, or named tensors passed as keyword arguments; an output with ``.logits`` counts).

    The forward runs in eval mode (the model's mode is restored afterwards) without gradients,
    on the model's device (the sample is moved there: datasets stay in host memory).
    """
    first = sample_input if isinstance(sample_input, torch.Tensor) else next(iter(sample_input.values()))
    moved = to(sample_input, next(itertools.chain(model.parameters(), model.buffers()), first).device)
    expected = "model output must be a logits tensor [batch, classes]"
    try:
        with eval_mode(model):
            out = call(model, moved)
    except InvalidArgumentError:
        raise InvalidArgumentError(f"{expected} or have `.logits`") from None
    if not isinstance(out, torch.Tensor) or out.ndim < 1:
        raise InvalidArgumentError(f"{expected}, got {type(out).__name__}")
    return int(out.shape[-1])


def _contents(path: PathLike) -> tuple[list[str], _Read]:
    """The array names of an npz archive (nothing unpacked) or a safetensors file (its header
    validated), and the reader of the format (which loads the given names, all present)."""
    if not read_head(path, DatasetError).startswith(ZIP_MAGIC):
        return validate_header(path, DatasetError), _read_safetensors_arrays
    try:
        with zipfile.ZipFile(path) as archive:
            return [n.removesuffix(".npy") for n in archive.namelist()], _read_npz
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"cannot read npz dataset {os.fspath(path)!r}: {exc}") from None


def _named_keys(names: list[str]) -> tuple[str, ...]:
    """``labels`` and the named input tensors of a dataset without ``inputs``."""
    named = [n for n in names if n != "labels"]
    if not named:
        raise DatasetError(
            "dataset has labels but no inputs: add `inputs` or named tensors such as `input_ids`"
        )
    if len(named) > MAX_INPUT_TENSORS:
        raise DatasetError(
            f"dataset holds {len(named)} named tensors; at most {MAX_INPUT_TENSORS} are accepted"
        )
    bad = [n for n in named if not _TENSOR_NAME.match(n)]
    if bad:
        raise DatasetError(
            f"tensor name(s) {format_names(bad)} cannot be keyword arguments (letters, digits and "
            "underscores, starting with a letter, at most 64 characters)"
        )
    return ("labels", *named)


def _read_npz(path: PathLike, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Load only ``keys`` from an npz archive (extra arrays are never unpacked)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in keys:
                _check_npz_member(npz.zip, key)
            arrays = {k: npz[k] for k in keys}
    except DatasetError:
        raise
    except Exception as exc:  # noqa: BLE001 (bad zip, bad .npy header, object arrays, ...)
        if isinstance(exc, ValueError) and "allow_pickle" in str(exc):
            raise DatasetError(
                f"npz dataset holds object (pickled) arrays, which are not allowed: {exc}"
            ) from None
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
    info = archive.getinfo(f"{key}.npy" if f"{key}.npy" in archive.namelist() else key)
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
    """Load only ``keys`` from a safetensors file (its header validated by :func:`_contents`)."""
    try:
        with safetensors.safe_open(os.fspath(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in keys}
    except Exception as exc:  # noqa: BLE001 (the library raises several types for a corrupt file)
        raise DatasetError(f"cannot read safetensors dataset {os.fspath(path)!r}: {exc}") from None


def _check_dataset(inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if inputs.dtype.is_floating_point:
        inputs = inputs if inputs.dtype == torch.float64 else inputs.float()
    elif dtype_kind(inputs.dtype) != "integer":
        raise DatasetError(f"inputs must be floating or integer token ids, got {dtype_name(inputs.dtype)}")
    else:
        inputs = inputs.long()
    if inputs.ndim < 1 or inputs.shape[0] == 0:
        raise DatasetError(f"inputs must be a non-empty batch [n, ...], got shape {tuple(inputs.shape)}")
    labels = _check_labels(labels, int(inputs.shape[0]))
    if inputs.dtype.is_floating_point:
        bad = int((~torch.isfinite(inputs)).sum())
        if bad:
            raise NumericalError(f"inputs hold {bad} NaN/Inf value(s)")
    return inputs, labels


def _check_labels(labels: torch.Tensor, samples: int) -> torch.Tensor:
    """1-D non-negative integer labels, one per sample (as int64)."""
    if labels.ndim != 1:
        raise DatasetError(f"labels must be 1-D [n], got shape {tuple(labels.shape)}")
    if dtype_kind(labels.dtype) != "integer":
        raise DatasetError(
            f"labels must be integers (int32/int64), got {dtype_name(labels.dtype)}; cast them first"
        )
    labels = labels.long()
    if labels.shape[0] != samples:
        raise DatasetError(f"inputs have {samples} samples but labels have {labels.shape[0]}")
    negative = labels[labels < 0]
    if negative.numel():
        raise DatasetError(f"{negative.numel()} label(s) are negative, e.g. {int(negative[0])}")
    return labels


def _check_named(
    tensors: dict[str, torch.Tensor], labels: torch.Tensor
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Named inputs: one sample per label in every tensor, integer ids, finite floats."""
    if not tensors:
        raise DatasetError("named inputs are empty")
    _named_keys(list(tensors))
    lengths = {k: (int(v.shape[0]) if v.ndim else None) for k, v in tensors.items()}
    if labels.ndim == 1 and any(n != labels.shape[0] for n in lengths.values()):
        found = ", ".join(f"{k}: {n if n is not None else 'a scalar'}" for k, n in lengths.items())
        raise DatasetError(
            f"named tensors must all have one row per label ({labels.shape[0]} labels); first dimensions: {found}"
        )
    out = {k: _check_named_tensor(k, v) for k, v in tensors.items()}
    return out, _check_labels(labels, int(next(iter(out.values())).shape[0]))


def _check_named_tensor(name: str, t: torch.Tensor) -> torch.Tensor:
    if t.ndim < 1 or t.shape[0] == 0:
        raise DatasetError(f"tensor {name!r} must be a non-empty batch [n, ...], got shape {tuple(t.shape)}")
    kind = dtype_kind(t.dtype)
    if name.endswith("_ids") and kind != "integer":
        raise DatasetError(f"tensor {name!r} holds {dtype_name(t.dtype)} values; token ids must be integers")
    if kind == "floating":
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise NumericalError(f"tensor {name!r} holds {bad} NaN/Inf value(s)", tensor=name)
        return t if t.dtype == torch.float64 else t.float()
    if kind not in ("integer", "bool"):
        raise DatasetError(f"tensor {name!r} has unsupported dtype {dtype_name(t.dtype)}")
    t = t.long()
    if name.endswith("_ids") and t.numel() and int(t.min()) < 0:
        raise DatasetError(f"tensor {name!r} holds negative ids, e.g. {int(t.min())}")
    return t
