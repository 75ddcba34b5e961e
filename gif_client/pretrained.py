"""``save_pretrained`` folders on the client side, with the standard library only (no torch).

A Hugging Face classifier saved with ``save_pretrained`` is a folder holding ``config.json`` and
its weights: ``model.safetensors``, or, for a large model, shards
``model-0000k-of-0000n.safetensors`` listed by ``model.safetensors.index.json``. The service takes
one checkpoint per model, so :func:`checkpoint_file` merges shards into one safetensors file. A
safetensors file is an 8-byte little-endian header length, a JSON header (each tensor's dtype,
shape and byte range in the data) and the data; merging rewrites the header with new byte ranges
and copies each tensor's bytes, whatever its dtype, without interpreting them.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, BinaryIO

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
#: Largest safetensors header read (the server's limit too: gif/io/_safetensors.py).
MAX_HEADER_BYTES = 100 * 1024 * 1024


def is_pretrained_folder(path: Path) -> bool:
    """A folder with a ``config.json`` (what ``save_pretrained`` writes)."""
    return path.is_dir() and (path / CONFIG).is_file()


def read_config(folder: Path) -> dict[str, Any]:
    """The object in ``config.json``.

    Raises:
        ValueError: no ``config.json``, or not a JSON object.
    """
    path = folder / CONFIG
    if not path.is_file():
        raise ValueError(f"{folder} has no {CONFIG}: save the model with save_pretrained")
    config = json.loads(path.read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a JSON object")
    return config


def checkpoint_file(folder: Path, scratch: Path) -> Path:
    """The folder's weights as one safetensors file: ``model.safetensors`` itself, or its shards
    merged into ``scratch``.

    Raises:
        ValueError: no safetensors weights (``pytorch_model.bin`` only), or an index that names
            shards or tensors that are not there.
    """
    if (folder / SINGLE).is_file():
        return folder / SINGLE
    if (folder / INDEX).is_file():
        merge_shards(folder / INDEX, scratch)
        return scratch
    raise ValueError(
        f"{folder} has neither {SINGLE} nor {INDEX}; save the model with "
        "save_pretrained(..., safe_serialization=True) (pickled .bin weights are not accepted)"
    )


def merge_shards(index_path: Path, out: Path) -> None:
    """Write the tensors of every shard an index lists into the one safetensors file ``out``."""
    index = json.loads(index_path.read_text())
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index_path} has no weight_map")
    shards = {shard: _read_header(index_path.parent / shard) for shard in _shards(weight_map, index_path)}
    entries, size = {}, 0
    for shard, header in shards.items():
        for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            if weight_map.get(name) != shard:
                raise ValueError(
                    f"tensor {name!r} is in {shard} but the index puts it in {weight_map.get(name)}"
                )
            begin, end = info["data_offsets"]
            entries[name] = {
                "dtype": info["dtype"],
                "shape": info["shape"],
                "data_offsets": [size, size + end - begin],
            }
            size += end - begin
    missing = sorted(set(weight_map) - set(entries))
    if missing:
        raise ValueError(f"the index lists tensors no shard holds: {', '.join(missing[:5])}")
    with open(out, "wb") as f:
        _write_header(f, {"__metadata__": {"format": "pt"}, **entries})
        for shard, header in shards.items():
            _copy_data(index_path.parent / shard, header, f)


def _shards(weight_map: dict[str, Any], index_path: Path) -> list[str]:
    """The shard files, in order; each a plain file name beside the index."""
    names = sorted(set(weight_map.values()))
    for name in names:
        if not isinstance(name, str) or Path(name).name != name or not (index_path.parent / name).is_file():
            raise ValueError(f"{index_path} names shard {name!r}, which is not a file beside it")
    return names


def _read_header(path: Path) -> dict[str, Any]:
    """The tensors of a safetensors file's header (``__metadata__`` left out), offsets checked."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > MAX_HEADER_BYTES:
            raise ValueError(f"{path.name}: safetensors header of {length} bytes")
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    data = path.stat().st_size - 8 - length
    for name, info in header.items():
        begin, end = info["data_offsets"]
        if not 0 <= begin <= end <= data:
            raise ValueError(f"{path.name}: tensor {name!r} lies outside the file")
    return {name: {**info, "header_bytes": 8 + length} for name, info in header.items()}


def _write_header(f: BinaryIO, header: dict[str, Any]) -> None:
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)


def _copy_data(path: Path, header: dict[str, Any], out: BinaryIO) -> None:
    """Each tensor's bytes, in the order of their offsets (the order the merged header uses)."""
    with open(path, "rb") as f:
        for info in sorted(header.values(), key=lambda info: info["data_offsets"][0]):
            begin, end = info["data_offsets"]
            f.seek(info["header_bytes"] + begin)
            _copy_exactly(f, out, end - begin)


def _copy_exactly(src: BinaryIO, dst: BinaryIO, count: int) -> None:
    while count > 0:
        chunk = src.read(min(count, 16 * 1024 * 1024))
        if not chunk:
            raise ValueError("a shard ended before its data")
        dst.write(chunk)
        count -= len(chunk)
