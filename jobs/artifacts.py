"""Artifact repository: every function takes the tenant and never sees another tenant's rows."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import delete, func, or_, select, text
from sqlalchemy.orm import Session

from .clock import later, utcnow
from .ids import new_id
from .models import Artifact, Job
from .states import TERMINAL

#: First key of the PostgreSQL advisory locks on blobs ("blob"); the second is from the digest.
BLOB_LOCK_SPACE = 0x626C_6F62

CONTENT_TYPES = {
    "safetensors": "application/octet-stream",
    "npz": "application/octet-stream",
    "pt": "application/octet-stream",
    "json": "application/json",
    "png": "image/png",
    "pt2": "application/zip",
}

#: Kinds a client may upload; the others are produced by jobs.
#: ``program``: the ``.pt2`` archive of ``torch.export.save`` (gif/io/programs.py checks it).
UploadKind = Literal["checkpoint", "dataset", "program"]
#: ``program``: an edited exported program, the input ``.pt2`` with the new weights.
ResultKind = Literal["weights", "report", "plot", "scores", "top_k", "program"]
UPLOAD_KINDS: tuple[str, ...] = get_args(UploadKind)
RESULT_KINDS: tuple[str, ...] = get_args(ResultKind)


def create_artifact(
    session: Session,
    *,
    tenant_id: str,
    kind: str,
    format: str,
    sha256: str,
    size_bytes: int,
    source_sha256: str | None = None,
    filename: str | None = None,
    metadata: dict[str, Any] | None = None,
    job_id: str | None = None,
    expires_at: datetime | None = None,
) -> Artifact:
    """Insert an artifact row for a blob that is (or is about to be, in this transaction) stored."""
    artifact = Artifact(
        id=new_id("artifact"),
        tenant_id=tenant_id,
        kind=kind,
        format=format,
        sha256=sha256,
        source_sha256=source_sha256 or sha256,
        size_bytes=size_bytes,
        content_type=CONTENT_TYPES.get(format, "application/octet-stream"),
        filename=filename,
        metadata_json=json.dumps(metadata or {}, sort_keys=True),
        job_id=job_id,
        expires_at=expires_at,
    )
    session.add(artifact)
    session.flush()
    return artifact


def expiry(seconds: float) -> datetime | None:
    """When an artifact kept ``seconds`` from now expires (None: ``seconds`` 0, kept until deleted)."""
    return later(seconds) if seconds > 0 else None


def is_expired(artifact: Artifact) -> bool:
    return artifact.expires_at is not None and artifact.expires_at <= utcnow()


def _unexpired():
    return or_(Artifact.expires_at.is_(None), Artifact.expires_at > utcnow())


def get_artifact(session: Session, tenant_id: str, artifact_id: str) -> Artifact | None:
    return session.scalar(select(Artifact).where(Artifact.id == artifact_id, Artifact.tenant_id == tenant_id))


def find_upload(session: Session, tenant_id: str, source_sha256: str, kind: str) -> Artifact | None:
    """The tenant's earlier upload of the same bytes as the same kind (per-tenant dedup)."""
    return session.scalar(
        select(Artifact)
        .where(
            Artifact.tenant_id == tenant_id,
            Artifact.source_sha256 == source_sha256,
            Artifact.kind == kind,
            Artifact.job_id.is_(None),
            _unexpired(),
        )
        .order_by(Artifact.created_at)
        .limit(1)
    )


def jobs_using(session: Session, tenant_id: str, artifact_id: str) -> list[str]:
    """Ids of the tenant's non-terminal jobs whose inputs include the artifact."""
    rows = session.scalars(
        select(Job.id).where(
            Job.tenant_id == tenant_id,
            Job.status.not_in([s.value for s in TERMINAL]),
            Job.inputs_json.contains(f'"{artifact_id}"', autoescape=True),
        )
    )
    return list(rows)


def lock_blob(session: Session, sha256: str) -> None:
    """Serialise, until the transaction ends, everything that commits, deletes or sweeps this
    blob: storing a file whose content already exists is a no-op, so without it a deletion that
    found no reference could remove the file just as a new row starts to name it. SQLite's write
    transactions are serial already; PostgreSQL takes a transaction-scoped advisory lock."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:space, :key)"),
                        {"space": BLOB_LOCK_SPACE, "key": int(sha256[:7], 16)})  # fmt: skip


def referenced(session: Session, digests: list[str]) -> set[str]:
    """The digests among ``digests`` that some artifact row holds (one whose blob the retention
    sweep has not let go of)."""
    found: set[str] = set()
    for start in range(0, len(digests), 500):
        chunk = digests[start : start + 500]
        query = select(Artifact.sha256).where(Artifact.sha256.in_(chunk), Artifact.purged_at.is_(None))
        found.update(session.scalars(query.distinct()))
    return found


def blob_in_use(session: Session, sha256: str) -> bool:
    """Whether any artifact row (of any tenant) still holds the blob."""
    query = (
        select(func.count())
        .select_from(Artifact)
        .where(Artifact.sha256 == sha256, Artifact.purged_at.is_(None))
    )
    return bool(session.scalar(query))


def blob_kept(session: Session, sha256: str) -> bool:
    """Whether an unexpired artifact row (of any tenant) holds the blob."""
    query = (
        select(func.count())
        .select_from(Artifact)
        .where(Artifact.sha256 == sha256, Artifact.purged_at.is_(None), _unexpired())
    )
    return bool(session.scalar(query))


def due_for_purge(session: Session, limit: int = 500) -> list[Artifact]:
    """Expired artifacts whose blob the retention sweep has not let go of yet, oldest first."""
    query = select(Artifact).where(Artifact.expires_at <= utcnow(), Artifact.purged_at.is_(None))
    return list(session.scalars(query.order_by(Artifact.expires_at).limit(limit)))


def delete_artifact(session: Session, artifact: Artifact) -> bool:
    """Delete the row; True when no other row references its blob (the caller removes the file)."""
    session.execute(
        delete(Artifact).where(Artifact.id == artifact.id, Artifact.tenant_id == artifact.tenant_id)
    )
    return not blob_in_use(session, artifact.sha256)


def metadata(artifact: Artifact) -> dict[str, Any]:
    return json.loads(artifact.metadata_json or "{}")
