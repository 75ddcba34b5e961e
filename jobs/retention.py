"""Retention: artifacts past their ``expires_at`` (``GIF_RESULT_TTL_SECONDS``, ``GIF_UPLOAD_TTL_SECONDS``)
answer 410 ``gone``; :func:`purge_expired` lets go of their blobs.

An expired artifact keeps its row, marked ``purged_at``, so that it is told apart from one that
never existed. Its blob is deleted once no unexpired row of any tenant holds the same content,
under the blob's lock, like deletions and the orphan sweep. An artifact that an unfinished job
reads is left until that job has ended.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import update

from . import artifacts, logs
from .blobs import BlobStore
from .clock import utcnow
from .db import Database, rows_matched
from .models import Artifact

log = logs.get(__name__)


@dataclass
class PurgeResult:
    artifacts: int = 0
    blobs: int = 0
    bytes: int = 0


def purge_expired(db: Database, blobs: BlobStore, limit: int = 500) -> PurgeResult:
    """Purge up to ``limit`` expired artifacts (oldest expiry first)."""
    result = PurgeResult()
    with db.read() as session:
        due = artifacts.due_for_purge(session, limit)
    for artifact in due:
        with db.begin() as session:
            if artifacts.jobs_using(session, artifact.tenant_id, artifact.id):
                continue  # an unfinished job reads it: after that job
            artifacts.lock_blob(session, artifact.sha256)
            marked = rows_matched(
                session,
                update(Artifact)
                .where(Artifact.id == artifact.id, Artifact.purged_at.is_(None))
                .values(purged_at=utcnow()),
            )
            if not marked:
                continue  # purged meanwhile by another process
            result.artifacts += 1
            if not artifacts.blob_kept(session, artifact.sha256):
                blobs.delete(artifact.sha256)
                result.blobs += 1
                result.bytes += artifact.size_bytes
    if result.artifacts:
        log.info("artifacts_expired", artifacts=result.artifacts, blobs=result.blobs, bytes=result.bytes)
    return result
