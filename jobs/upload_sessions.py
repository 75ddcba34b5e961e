"""Resumable uploads for files too big for one request (service-bar.md §2.2).

A client creates a session declaring the file's size and SHA-256, sends parts ``1..N`` (each
exactly ``part_size`` bytes but the last) in any order, in parallel, resending any that failed,
reads the session to see which arrived, and completes it: the parts are assembled in order into
a staged blob, its digest must be the declared one, and it then goes through the same use case
as a single-shot upload (inspection, per-tenant dedup, registration).

States: ``open → completing → completed | failed`` (``failed``: the assembled file is not a valid
artifact; sending it again would not help), ``completing → open`` when the digest does not match
or storing failed (a part can be resent, or the completion retried), ``open → aborted``, and
``open | completing → expired`` after ``GIF_UPLOAD_SESSION_HOURS``. Parts live in the blob store's
part area (a folder, or the bucket, so any API process can take any part) and are removed when
the session ends; :func:`expire` deletes those of expired sessions, and purges session rows a
week after they expire.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from . import artifacts, ids, logs
from .blobs import BlobStore, StagedBlob
from .clock import later, rfc3339, utcnow
from .config import Settings
from .db import Database
from .errors import (
    DigestMismatch,
    DomainError,
    NotFound,
    PayloadTooLarge,
    UploadExpired,
    UploadNotOpen,
    UploadQuotaExceeded,
    ValidationFailed,
)
from .inspector import Inspector
from .models import Artifact, UploadPart, UploadSession
from .uploads import store_upload

log = logs.get(__name__)

MAX_PARTS = 10_000
ACTIVE = ("open", "completing")
#: Ended and expired sessions stay readable this long, then their rows go.
KEEP_ENDED = timedelta(days=7)


def part_count(upload: UploadSession) -> int:
    return max(1, math.ceil(upload.size_bytes / upload.part_size))


def expected_part_size(upload: UploadSession, number: int) -> int:
    """Part ``number``'s exact size: ``part_size``, except the last, which holds the rest
    (422 for a number outside 1 to ``part_count``)."""
    count = part_count(upload)
    if not 1 <= number <= count:
        raise ValidationFailed.one(["path", "number"], f"parts are numbered 1 to {count}")
    return upload.part_size if number < count else upload.size_bytes - upload.part_size * (count - 1)


def largest_part(settings: Settings) -> int:
    """The largest part any session of these settings can have."""
    return max(settings.upload_part_bytes, math.ceil(settings.max_session_upload_bytes / MAX_PARTS))


def create(
    db: Database, settings: Settings, tenant_id: str, *, kind: str, size_bytes: int, sha256: str, filename: str | None
) -> UploadSession:
    """Open a session. The part size is ``GIF_UPLOAD_PART_BYTES``, larger when needed to keep
    to :data:`MAX_PARTS` parts."""
    if kind not in artifacts.UPLOAD_KINDS:
        raise ValidationFailed.one(["body", "kind"], f"must be one of {', '.join(artifacts.UPLOAD_KINDS)}")
    if size_bytes > settings.max_session_upload_bytes:
        raise PayloadTooLarge(f"the file ({size_bytes} bytes) exceeds the limit of {settings.max_session_upload_bytes} bytes")
    part_size = max(settings.upload_part_bytes, math.ceil(size_bytes / MAX_PARTS))  # ≤ largest_part
    with db.begin() as session:
        active = session.scalar(
            select(func.count()).select_from(UploadSession)
            .where(UploadSession.tenant_id == tenant_id, UploadSession.status.in_(ACTIVE),
                   UploadSession.expires_at > utcnow())
        )  # fmt: skip
        if active >= settings.max_open_uploads_per_tenant:
            raise UploadQuotaExceeded(
                f"{active} upload sessions are open (at most {settings.max_open_uploads_per_tenant}); "
                "complete or abort one first",
                headers={"Retry-After": "60"},
            )
        upload = UploadSession(
            id=ids.new_id("upload"), tenant_id=tenant_id, kind=kind, filename=filename, size_bytes=size_bytes,
            sha256=sha256, part_size=part_size, status="open", expires_at=later(settings.upload_session_hours * 3600),
        )  # fmt: skip
        session.add(upload)
    log.info("upload_session_created", upload_id=upload.id, size_bytes=size_bytes, parts=part_count(upload))
    return upload


def put_part(
    db: Database,
    blobs: BlobStore,
    tenant_id: str,
    upload_id: str,
    number: int,
    staged: StagedBlob,
    declared_sha256: str | None = None,
) -> UploadPart:
    """Store part ``number`` (replacing one sent before). The staged file is consumed."""
    try:
        expected = expected_part_size(open_session(db, tenant_id, upload_id), number)
        if staged.size != expected:
            raise ValidationFailed.one(["body"], f"part {number} must be {expected} bytes, got {staged.size}")
        if declared_sha256 is not None and declared_sha256 != staged.sha256:
            raise DigestMismatch(f"part {number} has SHA-256 {staged.sha256}, not the declared {declared_sha256}")
        blobs.put_part(upload_id, number, staged)
        with db.begin() as session:
            # still open? (a completion or an abort may have started meanwhile: the file stays in
            # the part area until the session's parts are deleted, at the latest when it expires)
            _require_open(session, tenant_id, upload_id)
            session.execute(delete(UploadPart).where(UploadPart.upload_id == upload_id, UploadPart.number == number))
            part = UploadPart(upload_id=upload_id, number=number, size_bytes=staged.size, sha256=staged.sha256)
            session.add(part)
            session.execute(update(UploadSession).where(UploadSession.id == upload_id).values(updated_at=utcnow()))
        return part
    finally:
        staged.discard()


def complete(
    db: Database,
    blobs: BlobStore,
    inspector: Inspector,
    tenant_id: str,
    upload_id: str,
    parts: list[int] | None = None,
    expires_at: datetime | None = None,
) -> tuple[Artifact, bool]:
    """Assemble the parts, check the declared digest, store the artifact: ``(artifact, created)``
    (``created`` False when the tenant already had this content)."""
    with db.begin() as session:
        upload = _require_open(session, tenant_id, upload_id)
        expected = list(range(1, part_count(upload) + 1))
        if parts is not None and parts != expected:
            raise ValidationFailed.one(["body", "parts"], f"must list every part in order: 1 to {expected[-1]}")
        received = set(session.scalars(select(UploadPart.number).where(UploadPart.upload_id == upload_id)))
        missing = [n for n in expected if n not in received]
        if missing:
            shown = ", ".join(map(str, missing[:20])) + (" …" if len(missing) > 20 else "")
            raise ValidationFailed.one(["body", "parts"], f"{len(missing)} parts not received: {shown}")
        if not _move(session, upload_id, ("open",), "completing"):
            raise UploadNotOpen("the upload session is being completed by another request")
    try:
        staged = _assemble(blobs, upload, expected)
    except BaseException:
        _reopen(db, upload_id)
        raise
    if staged.sha256 != upload.sha256:
        staged.discard()
        _reopen(db, upload_id)
        raise DigestMismatch(
            f"the assembled file has SHA-256 {staged.sha256}, not the declared {upload.sha256}: "
            "compare each part's sha256 in GET /v1/uploads/{id} with yours and resend those that differ"
        )
    try:
        artifact, created = store_upload(
            db, blobs, inspector, tenant_id, staged, upload.kind, upload.filename, upload.sha256, expires_at
        )
    except DomainError as exc:
        if exc.status >= 500:  # the server's trouble (storage): the client may retry the completion
            _reopen(db, upload_id)
            raise
        _end(db, blobs, upload_id, "failed", error={"code": exc.code, "message": exc.detail})
        raise
    except BaseException:
        _reopen(db, upload_id)
        raise
    _end(db, blobs, upload_id, "completed", artifact_id=artifact.id)
    log.info("upload_session_completed", upload_id=upload_id, artifact_id=artifact.id, created=created)
    return artifact, created


def abort(db: Database, blobs: BlobStore, tenant_id: str, upload_id: str) -> None:
    """End an open session and delete its parts (idempotent for sessions already ended)."""
    with db.begin() as session:
        upload = _require(session, tenant_id, upload_id)
        if upload.status == "completed" or upload.status == "completing":
            raise UploadNotOpen(f"the upload session is {upload.status}")
        if upload.status != "open":
            return
        _move(session, upload_id, ("open",), "aborted")
    blobs.delete_parts(upload_id)


def open_session(db: Database, tenant_id: str, upload_id: str) -> UploadSession:
    """The tenant's session, if it still takes parts (404, 409 ``upload-not-open``, 410 ``upload-expired``)."""
    with db.read() as session:
        return _require_open(session, tenant_id, upload_id)


def get(db: Database, tenant_id: str, upload_id: str) -> tuple[UploadSession, list[UploadPart]]:
    with db.read() as session:
        upload = _require(session, tenant_id, upload_id)
        parts = list(
            session.scalars(select(UploadPart).where(UploadPart.upload_id == upload_id).order_by(UploadPart.number))
        )
    return upload, parts


def expire(db: Database, blobs: BlobStore) -> int:
    """Expire sessions past their time and delete their parts; purge rows ended a week ago.
    Returns how many sessions expired."""
    now = utcnow()
    with db.read() as session:
        due = list(session.scalars(
            select(UploadSession.id).where(UploadSession.status.in_(ACTIVE), UploadSession.expires_at < now)
        ))  # fmt: skip
        old = list(session.scalars(select(UploadSession.id).where(UploadSession.expires_at < now - KEEP_ENDED)))
    expired = 0
    for upload_id in due:
        with db.begin() as session:
            moved = _move(session, upload_id, ACTIVE, "expired")
        if moved:
            blobs.delete_parts(upload_id)
            expired += 1
    for upload_id in old:
        blobs.delete_parts(upload_id)  # again: a part stored while the session ended
        with db.begin() as session:
            session.execute(delete(UploadPart).where(UploadPart.upload_id == upload_id))
            session.execute(delete(UploadSession).where(UploadSession.id == upload_id))
    if expired or old:
        log.info("upload_sessions_expired", expired=expired, purged=len(old))
    return expired


def view(upload: UploadSession, parts: list[UploadPart]) -> dict[str, Any]:
    """The public shape of a session."""
    count = part_count(upload)
    received = {part.number for part in parts}
    base = f"/v1/uploads/{upload.id}"
    return {
        "id": upload.id,
        "object": "upload",
        "status": upload.status,
        "kind": upload.kind,
        "filename": upload.filename,
        "size_bytes": upload.size_bytes,
        "sha256": upload.sha256,
        "part_size": upload.part_size,
        "part_count": count,
        "max_parts": MAX_PARTS,
        "received_bytes": sum(part.size_bytes for part in parts),
        "parts": [{"number": p.number, "size_bytes": p.size_bytes, "sha256": p.sha256} for p in parts],
        "missing_parts": [n for n in range(1, count + 1) if n not in received][:1000],
        "created_at": rfc3339(upload.created_at),
        "expires_at": rfc3339(upload.expires_at),
        "artifact_id": upload.artifact_id,
        "error": json.loads(upload.error_json) if upload.error_json else None,
        "links": {
            "self": base,
            "parts": f"{base}/parts/{{number}}",
            "complete": f"{base}/complete",
            **({"artifact": f"/v1/artifacts/{upload.artifact_id}"} if upload.artifact_id else {}),
        },
    }


# -- internals -------------------------------------------------------------------------------------


def _require(session: Session, tenant_id: str, upload_id: str) -> UploadSession:
    upload = session.get(UploadSession, upload_id) if ids.is_valid("upload", upload_id) else None
    if upload is None or upload.tenant_id != tenant_id:
        raise NotFound("upload session not found")
    return upload


def _require_open(session: Session, tenant_id: str, upload_id: str) -> UploadSession:
    upload = _require(session, tenant_id, upload_id)
    if upload.status == "expired" or (upload.status in ACTIVE and upload.expires_at < utcnow()):
        raise UploadExpired(f"the upload session expired at {rfc3339(upload.expires_at)}; start a new one")
    if upload.status != "open":
        raise UploadNotOpen(f"the upload session is {upload.status}")
    return upload


def _move(session: Session, upload_id: str, sources: tuple[str, ...], target: str, **values: Any) -> bool:
    """Compare-and-set of the session's status; True when it moved."""
    result = session.execute(
        update(UploadSession)
        .where(UploadSession.id == upload_id, UploadSession.status.in_(sources))
        .values(status=target, updated_at=utcnow(), **values)
    )
    return result.rowcount == 1


def _reopen(db: Database, upload_id: str) -> None:
    with db.begin() as session:
        _move(session, upload_id, ("completing",), "open")


def _end(db: Database, blobs: BlobStore, upload_id: str, status: str, *, error: dict | None = None,
         artifact_id: str | None = None) -> None:  # fmt: skip
    with db.begin() as session:
        _move(session, upload_id, ("completing",), status, artifact_id=artifact_id,
              error_json=json.dumps(error) if error else None)  # fmt: skip
    try:
        blobs.delete_parts(upload_id)
    except Exception as exc:  # noqa: BLE001 (the artifact is stored; leftover parts go at expiry)
        log.warning("upload_parts_not_deleted", upload_id=upload_id, error=f"{type(exc).__name__}: {exc}")


def _assemble(blobs: BlobStore, upload: UploadSession, numbers: list[int]) -> StagedBlob:
    with blobs.writer(upload.size_bytes) as writer:
        for number in numbers:
            for chunk in blobs.read_part(upload.id, number):
                writer.write(chunk)
        return writer.finish()
