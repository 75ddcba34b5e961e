"""Orphaned blobs: files in the blob store that no artifact row names.

They appear when a process dies between writing a file and committing the row that names it —
a worker killed while storing its results, a database that fails the transaction after the file
was moved into place — and as temporary files of interrupted uploads and jobs. :func:`sweep`
removes those older than a grace period. A stored blob is deleted only in a write transaction
that holds its lock (:func:`jobs.artifacts.lock_blob`) and has found no row naming it, so a
sweep cannot race a job or upload committing the same content.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from . import artifacts, logs, retention, upload_sessions
from .blobs import BlobStore
from .db import Database

log = logs.get(__name__)


@dataclass
class SweepResult:
    blobs: int = 0
    temporary: int = 0
    bytes: int = 0


def sweep(db: Database, blobs: BlobStore, grace_seconds: float) -> SweepResult:
    """Delete unreferenced blobs and temporary files last modified over ``grace_seconds`` ago."""
    cutoff = time.time() - grace_seconds
    result = SweepResult()
    for path in blobs.temporary():
        size = _size_if_older(path, cutoff)
        if size is not None:
            path.unlink(missing_ok=True)
            result.temporary += 1
            result.bytes += size
    old = {blob.sha256 for blob in blobs.committed() if blob.modified < cutoff}
    if not old:
        return result
    with db.read() as session:
        named = artifacts.referenced(session, sorted(old))
    for sha in sorted(set(old) - named):
        with db.begin() as session:
            artifacts.lock_blob(session, sha)
            if artifacts.blob_in_use(session, sha):
                continue  # named since the first look
            found = blobs.stat(sha)
            if found is None or found.modified >= cutoff:
                continue  # deleted or rewritten meanwhile
            blobs.delete(sha)
        result.blobs += 1
        result.bytes += found.size
    return result


def _size_if_older(path: Path, cutoff: float) -> int | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_size if stat.st_mtime < cutoff else None


class PeriodicSweep:
    """The blob store's housekeeping, at most every ``every_seconds``, for the executors' loops:
    expired upload sessions, expired artifacts (:mod:`jobs.retention`), local copies of a remote
    store, and :func:`sweep` (``grace_seconds`` 0: never)."""

    def __init__(
        self, db: Database, blobs: BlobStore, grace_seconds: float, every_seconds: float = 600.0
    ) -> None:
        self.db, self.blobs, self.grace, self.every = db, blobs, grace_seconds, every_seconds
        self._next = 0.0

    def __call__(self) -> SweepResult | None:
        """Sweep if due; failures are logged (the next interval retries), never raised."""
        if time.monotonic() < self._next:
            return None
        self._next = time.monotonic() + self.every
        try:
            upload_sessions.expire(self.db, self.blobs)
            retention.purge_expired(self.db, self.blobs)
            self.blobs.trim_copies()
            if not self.grace:
                return None
            result = sweep(self.db, self.blobs, self.grace)
        except Exception as exc:  # noqa: BLE001 (database or filesystem blip)
            log.warning("orphan_sweep_failed", error=f"{type(exc).__name__}: {exc}")
            return None
        if result.blobs or result.temporary:
            log.info("orphans_swept", blobs=result.blobs, temporary=result.temporary, bytes=result.bytes)
        return result
