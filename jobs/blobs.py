"""Content-addressed local blob store: ``<root>/sha256/ab/cd/<64 hex>``.

Writes stream into a temporary file under ``<root>/tmp`` (the same filesystem), hashing with
SHA-256 and stopping at a hard byte limit; ``commit`` fsyncs and ``os.replace``s the file into
place, so a blob path either holds complete content or does not exist. Paths come only from
server-computed digests (validated hex), never from client names.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Self

from .errors import PayloadTooLarge

CHUNK = 1024 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class StagedBlob:
    """A fully written temporary file with its digest, not yet visible in the store."""

    def __init__(self, store: BlobStore, tmp: Path, sha256: str, size: int) -> None:
        self.store, self.tmp, self.sha256, self.size = store, tmp, sha256, size

    def commit(self) -> Path:
        """Move into place (a no-op when the store already has this content); return the blob path."""
        final = self.store.path(self.sha256)
        if final.exists():
            self.discard()
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.tmp, final)
        _fsync_dir(final.parent)
        return final

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


class BlobWriter:
    """Incremental writer: ``write`` chunks, then ``finish`` → :class:`StagedBlob`.

    Used as a context manager, the temporary file is removed if the block raises.
    """

    def __init__(self, store: BlobStore, limit: int | None) -> None:
        self.store, self.limit = store, limit
        self.tmp = store.tmp_path()
        self._file: BinaryIO | None = open(self.tmp, "xb")  # noqa: SIM115 (closed in finish/abort)
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        assert self._file is not None, "writer already finished"
        self.size += len(chunk)
        if self.limit is not None and self.size > self.limit:
            self.abort()
            raise PayloadTooLarge(f"content exceeds the limit of {self.limit} bytes")
        self._hash.update(chunk)
        self._file.write(chunk)

    def finish(self) -> StagedBlob:
        assert self._file is not None, "writer already finished"
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        return StagedBlob(self.store, self.tmp, self._hash.hexdigest(), self.size)

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


class BlobStore:
    """The blob folder; every path it hands out is inside ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if not _HEX64.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / "sha256" / sha256[:2] / sha256[2:4] / sha256

    def tmp_path(self, suffix: str = "") -> Path:
        """A fresh temporary file name on the store's filesystem."""
        return self.root / "tmp" / f"{secrets.token_hex(12)}{suffix}.part"

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def open(self, sha256: str) -> BinaryIO:
        return open(self.path(sha256), "rb")

    def writer(self, limit: int | None = None) -> BlobWriter:
        return BlobWriter(self, limit)

    def stage(self, chunks: Iterable[bytes] | BinaryIO, limit: int | None = None) -> StagedBlob:
        """Write a stream (an iterable of chunks or a binary file) to a staged blob."""
        source = iter(lambda: chunks.read(CHUNK), b"") if hasattr(chunks, "read") else chunks
        with self.writer(limit) as w:
            for chunk in source:
                w.write(chunk)
            return w.finish()

    def put(self, chunks: Iterable[bytes] | BinaryIO, limit: int | None = None) -> StagedBlob:
        """Stage and commit; returns the (committed) staged blob for its digest and size."""
        staged = self.stage(chunks, limit)
        staged.commit()
        return staged

    def adopt(self, path: Path) -> StagedBlob:
        """Stage a file that was written elsewhere under ``<root>/tmp`` (hashes it; no copy)."""
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                digest.update(chunk)
            os.fsync(f.fileno())
        return StagedBlob(self, Path(path), digest.hexdigest(), Path(path).stat().st_size)

    def committed(self) -> Iterator[tuple[str, Path]]:
        """Every stored blob as ``(sha256, path)``."""
        for path in (self.root / "sha256").glob("*/*/*"):
            if _HEX64.match(path.name) and path.is_file():
                yield path.name, path

    def temporary(self) -> Iterator[Path]:
        """Files under ``tmp/``: uploads being written, results not yet committed, leftovers."""
        return (path for path in (self.root / "tmp").iterdir() if path.is_file())

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def check_writable(self) -> None:
        """Raise OSError if a probe file cannot be written, read back and removed."""
        probe = self.tmp_path(".probe")
        probe.write_bytes(b"ok")
        try:
            if probe.read_bytes() != b"ok":
                raise OSError("blob store probe read back different bytes")
        finally:
            probe.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
