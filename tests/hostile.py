"""Hostile files built in code, cheaply: decompression bombs crafted from repeated compressed
blocks (gigabytes from a few KB, in well under a second), pickle bombs written opcode by opcode,
broken safetensors headers, and multipart bodies with arbitrary bytes in the file name.
"""

from __future__ import annotations

import bz2
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
from numpy.lib import format as npy

STORED, DEFLATED, BZIP2 = 0, 8, 12


# -- CRC-32 of long runs of zeros, without touching them ----------------------------------------


def _gf2_times(matrix: list[int], vector: int) -> int:
    total, i = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[i]
        vector >>= 1
        i += 1
    return total


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, row) for row in matrix]


def crc32_zeros(crc: int, n: int) -> int:
    """``zlib.crc32(bytes(n), crc)`` in O(log n) (zlib's crc32_combine operator powers)."""
    odd = [0xEDB88320] + [1 << i for i in range(31)]  # one zero bit
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four zero bits
    crc ^= 0xFFFFFFFF
    while n:
        even = _gf2_square(odd)
        if n & 1:
            crc = _gf2_times(even, crc)
        n >>= 1
        if not n:
            break
        odd = _gf2_square(even)
        if n & 1:
            crc = _gf2_times(odd, crc)
        n >>= 1
    return crc ^ 0xFFFFFFFF


# -- compressed streams of a prefix followed by gigabytes of zeros ------------------------------

_BZ2_BLOCK, _BZ2_END = f"{0x314159265359:048b}", f"{0x177245385090:048b}"
#: Zeros in one full level-9 bzip2 block: 900k bytes after run-length coding, 5 bytes per 255 zeros.
BZ2_ZERO_BLOCK = 179_997 * 255
_zero_block: tuple[str, int] | None = None


def _bz2_blocks(data: bytes) -> list[tuple[str, int]]:
    """The blocks of ``bz2.compress(data)`` as bit strings, with their CRCs."""
    bits = "".join(f"{b:08b}" for b in bz2.compress(data, 9))
    end = bits.rindex(_BZ2_END)
    starts = [i for i in range(32, end) if bits.startswith(_BZ2_BLOCK, i)]
    ends = [*starts[1:], end]
    return [(bits[s:e], int(bits[s + 48 : s + 80], 2)) for s, e in zip(starts, ends, strict=True)]


def bz2_zeros_after(prefix: bytes, n_blocks: int) -> bytes:
    """A bzip2 stream of ``prefix`` + ``n_blocks`` × :data:`BZ2_ZERO_BLOCK` zeros (about 32 bytes a
    block: 4 GiB in 3 KB). bzip2 blocks are independent, so one compressed block of zeros is repeated."""
    global _zero_block
    if _zero_block is None:
        blocks = _bz2_blocks(bytes(BZ2_ZERO_BLOCK))
        assert len(blocks) == 1
        _zero_block = blocks[0]
    blocks = [*_bz2_blocks(prefix), *[_zero_block] * n_blocks]
    combined = 0
    for _, crc in blocks:
        combined = (((combined << 1) | (combined >> 31)) & 0xFFFFFFFF) ^ crc
    bits = "".join(b for b, _ in blocks) + _BZ2_END + f"{combined:032b}"
    bits += "0" * (-len(bits) % 8)
    return b"BZh9" + int(bits, 2).to_bytes(len(bits) // 8, "big")


def deflate_zeros_after(prefix: bytes, n_zeros: int) -> bytes:
    """A raw deflate stream of ``prefix`` + ``n_zeros`` zeros (about 1 KB per MiB): one fully
    flushed compressed MiB of zeros, repeated."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    mib = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    count, rest = divmod(n_zeros, 1 << 20)
    return head + mib * count + c.compress(bytes(rest)) + c.flush(zlib.Z_FINISH)


def write_zip(path: Path, members: list[tuple[str, int, bytes, int, int]]) -> Path:
    """A zip of already compressed members ``(name, method, data, crc32, uncompressed size)``
    (sizes below 4 GiB: no zip64)."""
    out, central = bytearray(), bytearray()
    for name, method, data, crc, size in members:
        assert size < 2**32 and len(data) < 2**32
        raw = name.encode()
        version = 46 if method == BZIP2 else 20
        offset = len(out)
        out += struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, version, 0, method, 0, 0x21, crc, len(data), size, len(raw), 0
        )
        out += raw + data
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, version, version, 0, method, 0, 0x21, crc, len(data), size,
            len(raw), 0, 0, 0, 0, 0, offset,
        ) + raw  # fmt: skip
    start = len(out)
    out += central
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), start, 0)
    path.write_bytes(bytes(out))
    return path


def _stored(name: str, data: bytes) -> tuple[str, int, bytes, int, int]:
    return name, STORED, data, zlib.crc32(data), len(data)


def _npy(array: np.ndarray) -> bytes:
    f = io.BytesIO()
    np.save(f, array)
    return f.getvalue()


def npz_bz2_bomb(path: Path, n_blocks: int = 92) -> Path:
    """An npz whose ``inputs.npy`` (an honest float32 array header and zeros) inflates to about
    4 GiB (``n_blocks`` bzip2 blocks) from about 3 KB."""
    n_bytes = n_blocks * BZ2_ZERO_BLOCK
    f = io.BytesIO()
    npy.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n_bytes // 4,)})
    header = f.getvalue()
    assert n_bytes % 4 == 0
    inputs = (
        "inputs.npy", BZIP2, bz2_zeros_after(header, n_blocks), crc32_zeros(zlib.crc32(header), n_bytes),
        len(header) + n_bytes,
    )  # fmt: skip
    return write_zip(path, [inputs, _stored("labels.npy", _npy(np.zeros(8, np.int64)))])


# -- PyTorch zip checkpoints and pickles -----------------------------------------------------------


def _unicode(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def state_dict_pickle(numel: int) -> bytes:
    """``data.pkl`` of ``torch.save({"w": float32 tensor of numel elements in storage "0"})``."""
    n = b"J" + struct.pack("<i", numel)
    return (
        b"\x80\x02}" + _unicode("w") + b"ctorch._utils\n_rebuild_tensor_v2\n(("
        + _unicode("storage") + b"ctorch\nFloatStorage\n" + _unicode("0") + _unicode("cpu") + n + b"tQ"
        + b"K\x00" + n + b"\x85K\x01\x85\x89ccollections\nOrderedDict\n)Rt" + b"Rs."
    )  # fmt: skip


def pt_zip(path: Path, pickle_member: tuple, storage_member: tuple) -> Path:
    """A torch.save-style zip: ``archive/data.pkl``, ``archive/data/0`` and the small records."""
    return write_zip(path, [
        ("archive/data.pkl", *pickle_member), _stored("archive/.format_version", b"1"),
        _stored("archive/.storage_alignment", b"64"), _stored("archive/byteorder", b"little"),
        ("archive/data/0", *storage_member), _stored("archive/version", b"3\n"),
    ])  # fmt: skip


def pt_storage_bomb(path: Path, gib: float = 3.5) -> Path:
    """A ``.pt`` whose tensor storage is ``gib`` GiB of deflated zeros (about 1 KB per MiB)."""
    numel = int(gib * 2**30) // 4
    n = numel * 4
    pkl = state_dict_pickle(numel)
    storage = (DEFLATED, deflate_zeros_after(b"", n), crc32_zeros(0, n), n)
    return pt_zip(path, (STORED, pkl, zlib.crc32(pkl), len(pkl)), storage)


def pt_pickle_bomb(path: Path, gib: float = 3.5) -> Path:
    """A ``.pt`` whose ``data.pkl`` (a valid pickle followed by zeros) inflates to ``gib`` GiB."""
    pkl, n = state_dict_pickle(2), int(gib * 2**30)
    data = deflate_zeros_after(pkl, n)
    storage = (STORED, bytes(8), zlib.crc32(bytes(8)), 8)
    return pt_zip(path, (DEFLATED, data, crc32_zeros(zlib.crc32(pkl), n), len(pkl) + n), storage)


def hash_bomb_pickle(path: Path, depth: int = 64) -> Path:
    """``{t: 1}`` where ``t0 = ()`` and ``t(k+1) = (t(k), t(k))``, shared through the memo: about
    ``4 * depth`` bytes, but hashing the key (when the dict is built) takes ``2**depth`` steps."""
    out = bytearray(b"\x80\x02})q\x00")  # {}  ()  memo[0] = ()
    for k in range(depth):
        out += b"h" + bytes([k]) + b"\x86q" + bytes([k + 1])  # (top, memo[k]) -> memo[k+1]
    out += b"K\x01s."
    path.write_bytes(bytes(out))
    return path


def deep_tuple_pickle(path: Path, depth: int = 200_000) -> Path:
    """``{((((...),),),): 1}``: a tuple key nested ``depth`` deep (hashing it recurses in C)."""
    path.write_bytes(b"\x80\x02})" + b"\x85" * depth + b"K\x01s.")
    return path


# -- safetensors -----------------------------------------------------------------------------------


def safetensors_bytes(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file from a header (dict, or raw bytes) and data; ``length`` overrides the
    8-byte header length."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


# -- multipart bodies --------------------------------------------------------------------------------

BOUNDARY = b"hostile-7b1e5c"


def multipart(
    *parts: tuple[str, bytes | None, bytes], boundary: bytes = BOUNDARY, close: bool = True
) -> bytes:
    """A multipart/form-data body from ``(name, filename bytes or None, content)`` parts, the file
    name written as raw bytes; ``close=False`` leaves out the closing boundary."""
    out = bytearray()
    for name, filename, content in parts:
        disposition = b'form-data; name="' + name.encode() + b'"'
        if filename is not None:
            disposition += b'; filename="' + filename + b'"'
        out += b"--" + boundary + b"\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + content + b"\r\n"
    if close:
        out += b"--" + boundary + b"--\r\n"
    return bytes(out)


def multipart_type(boundary: bytes = BOUNDARY) -> str:
    return "multipart/form-data; boundary=" + boundary.decode()
