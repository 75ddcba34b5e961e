"""Safetensors header validation, done by hand so that a malformed file fails with a precise message."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import safetensors.torch
import torch

from ._files import PathLike

MAX_HEADER_BYTES = 100 * 1024 * 1024

_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip


def read_safetensors(path: PathLike, error: type[Exception]) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (on the CPU), after validating its header."""
    validate_header(path, error)
    try:
        return safetensors.torch.load_file(os.fspath(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 (the library's own checks, in case ours missed something)
        raise error(f"cannot read safetensors file {os.fspath(path)!r}: {exc}") from None


def validate_header(path: PathLike, error: type[Exception]) -> list[str]:
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
