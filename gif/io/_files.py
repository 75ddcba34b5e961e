"""Small file and naming helpers shared by the checkpoint and dataset readers."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import InvalidArgumentError

PathLike = str | os.PathLike

ZIP_MAGIC = b"PK\x03\x04"
MAX_NAMES = 10


def read_head(path: PathLike, error: type[Exception]) -> bytes:
    """The first 16 bytes of ``path`` (for format sniffing); an unopenable file raises ``error``,
    a ``path`` that is no file path :class:`InvalidArgumentError`."""
    if not isinstance(path, (str, bytes, os.PathLike)):  # open() would take an int as a descriptor
        raise InvalidArgumentError(f"`path` must be a file path, got {type(path).__name__}")
    try:
        with open(path, "rb") as f:
            return f.read(16)
    except OSError as exc:
        raise error(f"cannot open {os.fspath(path)!r}: {exc.strerror or exc}") from None


def atomic_write(path: PathLike, write: Callable[[str], object]) -> None:
    """Call ``write`` on a temporary sibling of ``path``, then move it into place."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(os.fspath(tmp))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def format_names(items: list[str], *, quote: bool = True) -> str:
    """Comma-separated list of at most ``MAX_NAMES`` items, with a count of the rest."""
    shown = [repr(s) if quote else s for s in items[:MAX_NAMES]]
    more = f" and {len(items) - MAX_NAMES} more" if len(items) > MAX_NAMES else ""
    return ", ".join(shown) + more


def dtype_kind(dtype: torch.dtype) -> str:
    """``"floating"``, ``"complex"``, ``"bool"`` or ``"integer"``."""
    if dtype.is_floating_point:
        return "floating"
    if dtype.is_complex:
        return "complex"
    return "bool" if dtype == torch.bool else "integer"


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")
