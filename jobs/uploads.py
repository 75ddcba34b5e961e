"""Artifact use cases: inspect an upload (``jobs.inspector``), register it, delete one.

Nothing is stored when inspection rejects a file; a ``.pt`` checkpoint is stored as the
safetensors file the inspector converted it to, so that workers only ever read safetensors.
"""

from __future__ import annotations

from datetime import datetime

from . import artifacts
from .blobs import BlobStore, StagedBlob
from .db import Database
from .errors import ArtifactInUse, DigestMismatch, NotFound, ValidationFailed
from .inspector import Inspection, Inspector
from .models import Artifact


def find_duplicate(db: Database, tenant_id: str, source_sha256: str, kind: str) -> Artifact | None:
    with db.read() as session:
        return artifacts.find_upload(session, tenant_id, source_sha256, kind)


def register_upload(
    db: Database,
    blobs: BlobStore,
    tenant_id: str,
    staged: StagedBlob,
    kind: str,
    filename: str | None,
    inspection: Inspection,
    expires_at: datetime | None = None,
) -> tuple[Artifact, bool]:
    """Store an inspected upload; ``(artifact, created)`` — ``created`` False on per-tenant dedup."""
    stored = blobs.adopt(inspection.converted) if inspection.converted else staged
    meta = dict(inspection.metadata)
    if inspection.converted:
        meta["converted_from"] = {"format": inspection.format, "sha256": staged.sha256}
    try:
        with db.begin() as session:
            existing = artifacts.find_upload(session, tenant_id, staged.sha256, kind)
            if existing is not None:
                return existing, False
            artifacts.lock_blob(session, stored.sha256)  # serialised with deletions of the blob
            stored.commit()
            artifact = artifacts.create_artifact(
                session,
                tenant_id=tenant_id,
                kind=kind,
                format="safetensors" if inspection.converted else inspection.format,
                sha256=stored.sha256,
                source_sha256=staged.sha256,
                size_bytes=stored.size,
                filename=filename,
                metadata=meta,
                expires_at=expires_at,
            )
            return artifact, True
    finally:
        staged.discard()
        stored.discard()


def delete(db: Database, blobs: BlobStore, tenant_id: str, artifact_id: str) -> None:
    """Delete an artifact; its blob goes too when nothing else references it.

    Raises:
        NotFound: no such artifact for this tenant.
        ArtifactInUse: a queued or running job uses it.
    """
    with db.begin() as session:
        artifact = artifacts.get_artifact(session, tenant_id, artifact_id)
        if artifact is None:
            raise NotFound(f"artifact {artifact_id!r} not found")
        users = artifacts.jobs_using(session, tenant_id, artifact_id)
        if users:
            raise ArtifactInUse(
                f"artifact {artifact_id} is used by unfinished job(s): {', '.join(users[:5])}"
            )
        artifacts.lock_blob(session, artifact.sha256)
        if artifacts.delete_artifact(session, artifact):
            blobs.delete(artifact.sha256)


def store_upload(
    db: Database,
    blobs: BlobStore,
    inspector: Inspector,
    tenant_id: str,
    staged: StagedBlob,
    kind: str,
    filename: str | None,
    declared_sha256: str | None = None,
    expires_at: datetime | None = None,
) -> tuple[Artifact, bool]:
    """The upload use case: the client's digest, per-tenant dedup, inspection, registration.
    ``(artifact, created)``.

    The staged file is consumed (stored or removed) whatever happens.
    """
    convert_to = blobs.tmp_path(".safetensors")
    try:
        if declared_sha256 is not None and declared_sha256 != staged.sha256:
            raise DigestMismatch(
                f"the uploaded bytes have SHA-256 {staged.sha256}, not the declared {declared_sha256} "
                "(corrupted in transit, or a different file); nothing was stored"
            )
        if kind not in artifacts.UPLOAD_KINDS:
            raise ValidationFailed.one(
                ["body", "kind"], f"must be one of {', '.join(artifacts.UPLOAD_KINDS)}"
            )
        existing = find_duplicate(db, tenant_id, staged.sha256, kind)
        if existing is not None:
            return existing, False
        inspection = inspector.inspect(staged.tmp, kind, convert_to)
        return register_upload(db, blobs, tenant_id, staged, kind, filename, inspection, expires_at)
    finally:
        staged.discard()
        convert_to.unlink(missing_ok=True)
