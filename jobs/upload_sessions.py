"""Resumable uploads for files too big for one request (docs/service-design.md, "Upload sessions").

A client creates a session declaring the file's size and SHA-256, sends parts ``1..N`` (each
exactly ``part_size`` bytes but the last) in any order, in parallel, resending any that failed,
reads the session to see which arrived, and completes it: the parts are assembled in order into
a staged blob, its digest must be the declared one, and it then goes through the same use case
as a single-shot upload (inspection, per-tenant dedup, registration).

States: ``open → completing → completed | failed`` (``failed``: the assembled file is not a valid
artifact; sending it again would not help), ``completing → open`` when the digest does not match
or storing failed (a part can be resent, or the completion retried), ``open → aborted``, and
``open | completing → expired`` after ``GIF_UPLOAD_SESSION_SECONDS``. Parts live in the blob store's
part area (a folder, or the bucket, so any API process can take any part) and are removed when
the session ends; :func:`expire` deletes those of expired sessions, and purges session rows a
week after they expire.

**Direct sessions** (a bucket and ``GIF_S3_PRESIGN_SECONDS``): the session is an S3 multipart
upload; the client asks :func:`part_url` for a presigned URL per part and sends the bytes to the
bucket, so they never pass through the API (a part sent to the API anyway is passed on). S3
lists the parts (with ETags, not SHA-256s); completion has S3 assemble them, reads the result
once to check the declared SHA-256, and stores it by a server-side copy. A direct session cannot
go back to ``open`` once S3 has assembled it: a failure after that ends it ``failed``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from . import artifacts, ids, logs
from .blobs import BlobStore, StagedBlob
from .clock import later, rfc3339, utcnow
from .config import Settings
from .db import Database, rows_matched
from .errors import (
    DigestMismatch,
    DomainError,
    NotFound,
    PayloadTooLarge,
    UploadExpired,
    UploadNotDirect,
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


@dataclass(frozen=True)
class PartInfo:
    """A received part: its digest when it came through the API, S3's ETag when it went direct."""

    number: int
    size_bytes: int
    sha256: str | None = None
    etag: str | None = None


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
    db: Database,
    blobs: BlobStore,
    settings: Settings,
    tenant_id: str,
    *,
    kind: str,
    size_bytes: int,
    sha256: str,
    filename: str | None,
) -> UploadSession:
    """Open a session (direct when the store takes parts itself and presigning is on). The part
    size is ``GIF_UPLOAD_PART_BYTES``, larger when needed to keep to :data:`MAX_PARTS` parts (and,
    direct, to S3's 5 MiB minimum)."""
    if kind not in artifacts.UPLOAD_KINDS:
        raise ValidationFailed.one(["body", "kind"], f"must be one of {', '.join(artifacts.UPLOAD_KINDS)}")
    if size_bytes > settings.max_session_upload_bytes:
        raise PayloadTooLarge(
            f"the file ({size_bytes} bytes) exceeds the limit of {settings.max_session_upload_bytes} bytes"
        )
    direct = blobs.direct_uploads and settings.s3_presign_seconds > 0
    part_size = max(settings.upload_part_bytes, math.ceil(size_bytes / MAX_PARTS))  # ≤ largest_part
    if direct:
        part_size = max(part_size, blobs.MIN_PART)
    with db.begin() as session:
        active = int(session.scalar(
            select(func.count()).select_from(UploadSession)
            .where(UploadSession.tenant_id == tenant_id, UploadSession.status.in_(ACTIVE),
                   UploadSession.expires_at > utcnow())
        ) or 0)  # fmt: skip
        if active >= settings.max_open_uploads_per_tenant:
            raise UploadQuotaExceeded(
                f"{active} upload sessions are open (at most {settings.max_open_uploads_per_tenant}); "
                "complete or abort one first",
                headers={"Retry-After": "60"},
            )
        upload_id = ids.new_id("upload")
        upload = UploadSession(
            id=upload_id, tenant_id=tenant_id, kind=kind, filename=filename, size_bytes=size_bytes,
            sha256=sha256, part_size=part_size, status="open", expires_at=later(settings.upload_session_seconds),
            remote_id=blobs.start_direct_upload(upload_id) if direct else None,
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
) -> PartInfo:
    """Store part ``number`` (replacing one sent before). The staged file is consumed."""
    try:
        upload = open_session(db, tenant_id, upload_id)
        expected = expected_part_size(upload, number)
        if staged.size != expected:
            raise ValidationFailed.one(["body"], f"part {number} must be {expected} bytes, got {staged.size}")
        if declared_sha256 is not None and declared_sha256 != staged.sha256:
            raise DigestMismatch(
                f"part {number} has SHA-256 {staged.sha256}, not the declared {declared_sha256}"
            )
        if upload.remote_id is not None:  # a direct session: on to the S3 multipart upload
            blobs.put_direct_part(upload_id, upload.remote_id, number, staged)
            return PartInfo(number, staged.size, staged.sha256)
        blobs.put_part(upload_id, number, staged)
        with db.begin() as session:
            # still open? (a completion or an abort may have started meanwhile: the file stays in
            # the part area until the session's parts are deleted, at the latest when it expires)
            _require_open(session, tenant_id, upload_id)
            session.execute(
                delete(UploadPart).where(UploadPart.upload_id == upload_id, UploadPart.number == number)
            )
            part = UploadPart(
                upload_id=upload_id, number=number, size_bytes=staged.size, sha256=staged.sha256
            )
            session.add(part)
            session.execute(
                update(UploadSession).where(UploadSession.id == upload_id).values(updated_at=utcnow())
            )
        return PartInfo(part.number, part.size_bytes, part.sha256)
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
    upload = open_session(db, tenant_id, upload_id)
    expected = list(range(1, part_count(upload) + 1))
    if parts is not None and parts != expected:
        raise ValidationFailed.one(["body", "parts"], f"must list every part in order: 1 to {expected[-1]}")
    received = _parts(db, blobs, upload)
    _check_received(upload, received)
    with db.begin() as session:
        _require_open(session, tenant_id, upload_id)
        if not _move(session, upload_id, ("open",), "completing"):
            raise UploadNotOpen("the upload session is being completed by another request")
    if upload.remote_id is not None:
        staged = _assemble_direct(db, blobs, upload, upload.remote_id, received)
    else:
        staged = _assemble_here(db, blobs, upload, expected)
    try:
        artifact, created = store_upload(
            db, blobs, inspector, tenant_id, staged, upload.kind, upload.filename, upload.sha256, expires_at
        )
    except DomainError as exc:
        if exc.status >= 500 and upload.remote_id is None:  # the server's trouble: the client may retry
            _reopen(db, upload_id)
            raise
        _end(db, blobs, upload, "failed", error={"code": exc.code, "message": exc.detail})
        raise
    except BaseException:
        if upload.remote_id is None:
            _reopen(db, upload_id)
        else:
            _end(
                db, blobs, upload, "failed", error={"code": "internal", "message": "storing the file failed"}
            )
        raise
    _end(db, blobs, upload, "completed", artifact_id=artifact.id)
    log.info("upload_session_completed", upload_id=upload_id, artifact_id=artifact.id, created=created)
    return artifact, created


def part_url(
    db: Database, blobs: BlobStore, seconds: int, tenant_id: str, upload_id: str, number: int
) -> dict:
    """Where to PUT part ``number`` of a direct session: a presigned URL, valid ``seconds``."""
    upload = open_session(db, tenant_id, upload_id)
    if upload.remote_id is None:
        raise UploadNotDirect("send the parts of this session to PUT /v1/uploads/{id}/parts/{number}")
    size = expected_part_size(upload, number)
    url = blobs.presigned_part(upload_id, upload.remote_id, number, seconds)
    return {
        "number": number,
        "method": "PUT",
        "url": url,
        "size_bytes": size,
        "expires_at": rfc3339(later(seconds)),
    }


def abort(db: Database, blobs: BlobStore, tenant_id: str, upload_id: str) -> None:
    """End an open session and delete its parts (idempotent for sessions already ended)."""
    with db.begin() as session:
        upload = _require(session, tenant_id, upload_id)
        if upload.status == "completed" or upload.status == "completing":
            raise UploadNotOpen(f"the upload session is {upload.status}")
        if upload.status != "open":
            return
        _move(session, upload_id, ("open",), "aborted")
    _discard_parts(blobs, upload)


def open_session(db: Database, tenant_id: str, upload_id: str) -> UploadSession:
    """The tenant's session, if it still takes parts (404, 409 ``upload-not-open``, 410 ``upload-expired``)."""
    with db.read() as session:
        return _require_open(session, tenant_id, upload_id)


def get(
    db: Database, blobs: BlobStore, tenant_id: str, upload_id: str
) -> tuple[UploadSession, list[PartInfo]]:
    """A session and the parts received (a direct session's, while it is open, from S3)."""
    with db.read() as session:
        upload = _require(session, tenant_id, upload_id)
    return upload, (_parts(db, blobs, upload) if upload.status == "open" or upload.remote_id is None else [])


def expire(db: Database, blobs: BlobStore) -> int:
    """Expire sessions past their time and delete their parts; purge rows ended a week ago.
    Returns how many sessions expired."""
    now = utcnow()
    with db.read() as session:
        due = list(session.scalars(
            select(UploadSession).where(UploadSession.status.in_(ACTIVE), UploadSession.expires_at < now)
        ))  # fmt: skip
        old = list(
            session.scalars(select(UploadSession.id).where(UploadSession.expires_at < now - KEEP_ENDED))
        )
    expired = 0
    for upload in due:
        with db.begin() as session:
            moved = _move(session, upload.id, ACTIVE, "expired")
        if moved:
            _discard_parts(blobs, upload)
            expired += 1
    for upload_id in old:
        blobs.delete_parts(upload_id)  # again: a part stored while the session ended
        with db.begin() as session:
            session.execute(delete(UploadPart).where(UploadPart.upload_id == upload_id))
            session.execute(delete(UploadSession).where(UploadSession.id == upload_id))
    if expired or old:
        log.info("upload_sessions_expired", expired=expired, purged=len(old))
    return expired


def view(upload: UploadSession, parts: list[PartInfo]) -> dict[str, Any]:
    """The public shape of a session."""
    count = part_count(upload)
    received = {part.number for part in parts}
    base = f"/v1/uploads/{upload.id}"
    direct = upload.remote_id is not None
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
        "direct": direct,
        "received_bytes": sum(part.size_bytes for part in parts),
        "parts": [
            {"number": p.number, "size_bytes": p.size_bytes, "sha256": p.sha256, "etag": p.etag}
            for p in parts
        ],
        "missing_parts": [n for n in range(1, count + 1) if n not in received][:1000],
        "created_at": rfc3339(upload.created_at),
        "expires_at": rfc3339(upload.expires_at),
        "artifact_id": upload.artifact_id,
        "error": json.loads(upload.error_json) if upload.error_json else None,
        "links": {
            "self": base,
            "parts": f"{base}/parts/{{number}}",
            **({"part_url": f"{base}/parts/{{number}}/url"} if direct else {}),
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
    moved = rows_matched(
        session,
        update(UploadSession)
        .where(UploadSession.id == upload_id, UploadSession.status.in_(sources))
        .values(status=target, updated_at=utcnow(), **values),
    )
    return moved == 1


def _reopen(db: Database, upload_id: str) -> None:
    with db.begin() as session:
        _move(session, upload_id, ("completing",), "open")


def _end(db: Database, blobs: BlobStore, upload: UploadSession, status: str, *, error: dict | None = None,
         artifact_id: str | None = None) -> None:  # fmt: skip
    with db.begin() as session:
        _move(session, upload.id, ("completing",), status, artifact_id=artifact_id,
              error_json=json.dumps(error) if error else None)  # fmt: skip
    try:
        _discard_parts(blobs, upload)
    except Exception as exc:  # noqa: BLE001 (the outcome is recorded; leftover parts go at expiry)
        log.warning("upload_parts_not_deleted", upload_id=upload.id, error=f"{type(exc).__name__}: {exc}")


def _discard_parts(blobs: BlobStore, upload: UploadSession) -> None:
    if upload.remote_id is not None:
        blobs.abort_direct_upload(upload.id, upload.remote_id)
    blobs.delete_parts(upload.id)


def _parts(db: Database, blobs: BlobStore, upload: UploadSession) -> list[PartInfo]:
    if upload.remote_id is not None:
        listed = blobs.direct_parts(upload.id, upload.remote_id)
        return [PartInfo(number, size, etag=etag) for number, size, etag in listed]
    with db.read() as session:
        rows = session.scalars(
            select(UploadPart).where(UploadPart.upload_id == upload.id).order_by(UploadPart.number)
        )
        return [PartInfo(row.number, row.size_bytes, row.sha256) for row in rows]


def _check_received(upload: UploadSession, received: list[PartInfo]) -> None:
    """Every part is there, with its exact size (S3 takes parts of any size: checked here)."""
    count = part_count(upload)
    numbers = {part.number for part in received}
    missing = [n for n in range(1, count + 1) if n not in numbers]
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" …" if len(missing) > 20 else "")
        raise ValidationFailed.one(["body", "parts"], f"{len(missing)} parts not received: {shown}")
    wrong = [
        p.number for p in received if p.number > count or p.size_bytes != expected_part_size(upload, p.number)
    ]
    if wrong:
        raise ValidationFailed.one(
            ["body", "parts"], f"parts of the wrong size (send them again): {wrong[:20]}"
        )


def _assemble_here(db: Database, blobs: BlobStore, upload: UploadSession, numbers: list[int]) -> StagedBlob:
    """The parts, in order, into a staged blob; back to ``open`` on any failure or mismatch."""
    try:
        with blobs.writer(upload.size_bytes) as writer:
            for number in numbers:
                for chunk in blobs.read_part(upload.id, number):
                    writer.write(chunk)
            staged = writer.finish()
    except BaseException:
        _reopen(db, upload.id)
        raise
    if staged.sha256 != upload.sha256:
        staged.discard()
        _reopen(db, upload.id)
        raise DigestMismatch(
            f"the assembled file has SHA-256 {staged.sha256}, not the declared {upload.sha256}: "
            "compare each part's sha256 in GET /v1/uploads/{id} with yours and resend those that differ"
        )
    return staged


def _assemble_direct(
    db: Database, blobs: BlobStore, upload: UploadSession, remote_id: str, parts: list[PartInfo]
) -> StagedBlob:
    """S3 assembles the parts (``remote_id``: the session's S3 multipart upload); the result is
    read once (staged, to hash and inspect it). A failure before S3 assembled them reopens the
    session; after, it ends ``failed``."""
    listed = []
    for p in parts:
        assert p.etag is not None, "a direct session's parts are listed from S3, each with its ETag"
        listed.append((p.number, p.size_bytes, p.etag))
    try:
        chunks = blobs.finish_direct_upload(upload.id, remote_id, listed)
    except BaseException:
        _reopen(db, upload.id)
        raise
    try:
        staged = blobs.stage(chunks, limit=upload.size_bytes)
    except DomainError as exc:
        _end(db, blobs, upload, "failed", error={"code": exc.code, "message": exc.detail})
        raise
    except BaseException:
        _end(
            db,
            blobs,
            upload,
            "failed",
            error={"code": "storage_error", "message": "reading the assembled file failed"},
        )
        raise
    if staged.sha256 != upload.sha256:
        staged.discard()
        message = f"the assembled file has SHA-256 {staged.sha256}, not the declared {upload.sha256}; start a new session"
        _end(db, blobs, upload, "failed", error={"code": "digest-mismatch", "message": message})
        raise DigestMismatch(message)
    staged.source_key = blobs.direct_key(upload.id)  # stored by a copy
    return staged
