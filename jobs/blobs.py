"""Content-addressed blob store: ``<root>/sha256/ab/cd/<64 hex>``.

Writes stream into a temporary file under ``<root>/tmp`` (the same filesystem), hashing with
SHA-256 and stopping at a hard byte limit; ``commit`` fsyncs and ``os.replace``s the file into
place, so a blob path either holds complete content or does not exist. Paths come only from
server-computed digests (validated hex), never from client names.

:class:`BlobStore` keeps blobs in a local (or shared, NFS-style) folder;
:class:`jobs.object_store.S3BlobStore` keeps them in an S3-compatible bucket and uses the folder
for staging and as a cache of fetched copies. :func:`open_blob_store` picks one from the settings.
Readers ask for :meth:`BlobStore.fetch` (a local file with the content), never build paths.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal, Self

from . import ids
from .errors import PayloadTooLarge

if TYPE_CHECKING:
    from .config import Settings

CHUNK = 1024 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

#: The blob spaces: uploaded and result artifacts (named by artifact rows, swept when no row
#: names them) and the gradient cache's big values (named by the Redis cache index, which
#: expires them itself). Separate spaces keep the orphan sweep away from cache values.
Space = Literal["artifacts", "cache"]


@dataclass(frozen=True)
class StoredBlob:
    """A committed blob: its digest, size in bytes and last modification (unix time)."""

    sha256: str
    size: int
    modified: float


class StagedBlob:
    """A fully written temporary file with its digest, not yet visible in the store."""

    def __init__(self, store: BlobStore, tmp: Path, sha256: str, size: int) -> None:
        self.store, self.tmp, self.sha256, self.size = store, tmp, sha256, size
        #: where the same bytes already are in the store's bucket (an upload sent there directly):
        #: committing copies them there instead of sending the local file again
        self.source_key: str | None = None

    def commit(self) -> Path:
        """Store the content (a no-op when the store already has it); return a local file with it."""
        return self.store.publish(self.tmp, self.sha256, self.source_key)

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

    @property
    def location(self) -> str:
        """Where the blobs live, for logs and for redacting error messages."""
        return str(self.root)

    def path(self, sha256: str) -> Path:
        """The local file name of a blob (which may not exist: readers use :meth:`fetch`)."""
        if not _HEX64.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / "sha256" / sha256[:2] / sha256[2:4] / sha256

    def fetch(self, sha256: str) -> Path:
        """A local file holding the blob, to read; ``FileNotFoundError`` when it is not stored."""
        path = self.path(sha256)
        if not path.is_file():
            raise FileNotFoundError(f"blob {sha256} is not stored")
        return path

    def publish(self, tmp: Path, sha256: str, source_key: str | None = None) -> Path:
        """Move a staged file (content ``sha256``) into the store; return the local blob file."""
        final = self.path(sha256)
        if final.exists():
            tmp.unlink(missing_ok=True)
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        return final

    def tmp_path(self, suffix: str = "") -> Path:
        """A fresh temporary file name on the store's filesystem."""
        return self.root / "tmp" / f"{secrets.token_hex(12)}{suffix}.part"

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def open(self, sha256: str) -> BinaryIO:
        return open(self.fetch(sha256), "rb")

    def stat(self, sha256: str) -> StoredBlob | None:
        """Size and modification time of a stored blob; None when it is not stored."""
        try:
            st = self.path(sha256).stat()
        except FileNotFoundError:
            return None
        return StoredBlob(sha256, st.st_size, st.st_mtime)

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
        try:
            staged.commit()
        finally:
            staged.discard()  # gone already when committed; left over when the commit failed
        return staged

    def adopt(self, path: Path) -> StagedBlob:
        """Stage a file that was written elsewhere under ``<root>/tmp`` (hashes it; no copy)."""
        return StagedBlob(self, Path(path), file_sha256(path, fsync=True), Path(path).stat().st_size)

    def committed(self) -> Iterator[StoredBlob]:
        """Every stored blob."""
        for path in (self.root / "sha256").glob("*/*/*"):
            if _HEX64.match(path.name):
                found = self.stat(path.name)
                if found is not None:
                    yield found

    def temporary(self) -> Iterator[Path]:
        """Files under ``tmp/``: uploads being written, results not yet committed, leftovers."""
        return (path for path in (self.root / "tmp").iterdir() if path.is_file())

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def trim_copies(self) -> int:
        """Drop local copies of remote blobs over the local size cap; returns how many
        (nothing to do here: the folder is the store itself)."""
        return 0

    # -- upload sessions straight to the store (an S3 multipart upload; a folder has none) ------

    #: Whether upload-session parts can go straight to the store (presigned URLs).
    direct_uploads = False
    #: The smallest part (but the last) the store's direct uploads take.
    MIN_PART = 1

    def start_direct_upload(self, upload_id: str) -> str:
        raise NotImplementedError("a folder store takes no direct uploads")

    def presigned_part(self, upload_id: str, remote_id: str, number: int, seconds: int) -> str:
        raise NotImplementedError("a folder store takes no direct uploads")

    def put_direct_part(self, upload_id: str, remote_id: str, number: int, staged: StagedBlob) -> None:
        raise NotImplementedError("a folder store takes no direct uploads")

    def direct_parts(self, upload_id: str, remote_id: str) -> list[tuple[int, int, str]]:
        raise NotImplementedError("a folder store takes no direct uploads")

    def finish_direct_upload(
        self, upload_id: str, remote_id: str, parts: list[tuple[int, int, str]]
    ) -> Iterator[bytes]:
        raise NotImplementedError("a folder store takes no direct uploads")

    def abort_direct_upload(self, upload_id: str, remote_id: str) -> None:
        raise NotImplementedError("a folder store takes no direct uploads")

    def direct_key(self, upload_id: str) -> str:
        raise NotImplementedError("a folder store takes no direct uploads")

    def presigned_get(self, sha256: str, *, seconds: int, filename: str, content_type: str) -> str | None:
        """A URL that serves the blob without credentials for ``seconds``; None: this store has
        none (a folder), so the API serves the bytes itself."""
        return None

    # -- parts of upload sessions: ``<root>/uploads/<upload id>/<number>`` -----------------------

    def part_path(self, upload_id: str, number: int) -> Path:
        if not ids.is_valid("upload", upload_id) or not 1 <= number <= 99_999:
            raise ValueError(f"not an upload part: {upload_id!r} #{number}")
        return self.root / "uploads" / upload_id / f"{number:05d}"

    def put_part(self, upload_id: str, number: int, staged: StagedBlob) -> None:
        """Keep a staged file as part ``number`` of an upload session (replacing an earlier one)."""
        final = self.part_path(upload_id, number)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.tmp, final)

    def read_part(self, upload_id: str, number: int) -> Iterator[bytes]:
        """The bytes of a stored part, in chunks (``FileNotFoundError`` when it is not stored)."""
        with open(self.part_path(upload_id, number), "rb") as f:
            yield from iter(lambda: f.read(CHUNK), b"")

    def delete_parts(self, upload_id: str) -> None:
        """Remove every part of an upload session."""
        self.part_path(upload_id, 1)  # validates the id
        shutil.rmtree(self.root / "uploads" / upload_id, ignore_errors=True)

    def check_writable(self) -> None:
        """Raise OSError if a probe file cannot be written, read back and removed."""
        probe = self.tmp_path(".probe")
        probe.write_bytes(b"ok")
        try:
            if probe.read_bytes() != b"ok":
                raise OSError("blob store probe read back different bytes")
        finally:
            probe.unlink(missing_ok=True)


def file_sha256(path: Path, *, fsync: bool = False) -> str:
    """The SHA-256 of a file's content, read in chunks (``fsync``: flushed to disk as well)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
        if fsync:
            os.fsync(f.fileno())
    return digest.hexdigest()


def open_blob_store(settings: Settings, space: Space = "artifacts") -> BlobStore:
    """The blob store of ``settings``: the bucket of ``GIF_BLOB_URL`` (``s3://…``), else the
    folder ``<home>/blobs`` (artifacts) or ``<home>/cache-blobs`` (cache values)."""
    root = settings.blob_root if space == "artifacts" else settings.home / "cache-blobs"
    if not settings.blob_url:
        return BlobStore(root)
    from .object_store import S3BlobStore

    return S3BlobStore(
        root,
        settings.blob_url.rstrip("/") + ("/" if space == "artifacts" else "/cache/"),
        endpoint_url=settings.s3_endpoint_url,
        public_endpoint_url=settings.s3_public_endpoint_url,
        region=settings.s3_region,
        local_max_bytes=settings.blob_local_max_bytes,
    )


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
