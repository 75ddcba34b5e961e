"""Tables. Every row carries ``tenant_id``; JSON documents are stored as text."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .clock import utcnow


class Base(DeclarativeBase):
    pass


class Artifact(Base):
    """An immutable blob owned by a tenant: an upload or a job's result."""

    __tablename__ = "artifacts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(128), nullable=False)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    format: Mapped[str] = mapped_column(String(32), nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    #: digest of the bytes as uploaded (differs from sha256 when a .pt was converted to safetensors)
    source_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    content_type: Mapped[str] = mapped_column(String(128), nullable=False)
    filename: Mapped[str | None] = mapped_column(String(255))
    metadata_json: Mapped[str] = mapped_column(Text, nullable=False, default="{}")
    job_id: Mapped[str | None] = mapped_column(String(40))  # the job that produced it, if any
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    #: retention (GIF_RESULT_TTL_SECONDS, GIF_UPLOAD_TTL_SECONDS): after it, 410 gone; NULL: kept
    expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    #: when the retention sweep let go of its blob (the row stays, to answer 410)
    purged_at: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (
        Index("ix_artifacts_tenant_source", "tenant_id", "source_sha256"),
        Index("ix_artifacts_sha256", "sha256"),
        Index("ix_artifacts_expires", "expires_at"),
    )


class UploadSession(Base):
    """A resumable upload: parts arrive in any order, in parallel, over hours; ``complete``
    assembles them, checks the declared digest and stores an artifact."""

    __tablename__ = "upload_sessions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(128), nullable=False)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    filename: Mapped[str | None] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    #: the digest the client declared for the whole file
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    part_size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    #: open | completing | completed | failed | aborted | expired
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    artifact_id: Mapped[str | None] = mapped_column(String(40))
    error_json: Mapped[str | None] = mapped_column(Text)
    #: a direct session's S3 multipart upload id (parts go to the bucket through presigned URLs)
    remote_id: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)

    __table_args__ = (
        Index("ix_upload_sessions_tenant_status", "tenant_id", "status"),
        Index("ix_upload_sessions_expires", "expires_at"),
    )


class UploadPart(Base):
    """A received part of an upload session (its bytes are in the blob store's part area)."""

    __tablename__ = "upload_parts"

    upload_id: Mapped[str] = mapped_column(
        ForeignKey("upload_sessions.id", ondelete="CASCADE"), primary_key=True
    )
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)


class Job(Base):
    """A job row: the source of truth for its state.

    See docs/service-design.md, "The job row is the source of truth".
    """

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(128), nullable=False)
    type: Mapped[str] = mapped_column(String(32), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=3)
    request_json: Mapped[str] = mapped_column(Text, nullable=False)
    request_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    inputs_json: Mapped[str] = mapped_column(Text, nullable=False, default="{}")
    progress_json: Mapped[str | None] = mapped_column(Text)
    result_json: Mapped[str | None] = mapped_column(Text)
    error_json: Mapped[str | None] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_token: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    validated_at: Mapped[datetime | None] = mapped_column(DateTime)
    #: distributed mode: when the job's current message was published (NULL: not yet, or lost)
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    #: the request's webhook ``{url, events, deliveries}``, attempts appended (jobs/webhooks.py); NULL: none
    webhook_json: Mapped[str | None] = mapped_column(Text)
    #: what the job is likely to cost, from the tenant's jobs like it (jobs/estimates.py); NULL: none
    estimate_json: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_jobs_status_created", "status", "created_at"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_jobs_lease", "lease_expires_at"),
    )


class JobEvent(Base):
    """Append-only milestones of a job (``GET /v1/jobs/{id}/events``)."""

    __tablename__ = "job_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False)
    tenant_id: Mapped[str] = mapped_column(String(128), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    type: Mapped[str] = mapped_column(String(64), nullable=False)
    level: Mapped[str] = mapped_column(String(16), nullable=False, default="info")
    message: Mapped[str] = mapped_column(Text, nullable=False, default="")
    data_json: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_job_events_job", "job_id", "seq"),)


class IdempotencyKey(Base):
    """``(tenant_id, key)`` → the job a request created, with the request's fingerprint."""

    __tablename__ = "idempotency_keys"

    tenant_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)  # in_progress | done
    job_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class WebhookSecret(Base):
    """A tenant's webhook signing secret; after a rotation the former one stays valid a while."""

    __tablename__ = "webhook_secrets"

    tenant_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    secret: Mapped[str] = mapped_column(String(128), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    previous_secret: Mapped[str | None] = mapped_column(String(128))
    #: until when deliveries are signed with ``previous_secret`` too
    previous_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    #: the Idempotency-Key of the rotation that made ``secret`` (a retried rotation is a no-op)
    rotation_key: Mapped[str | None] = mapped_column(String(255))


class WebhookDelivery(Base):
    """The outbox: one event to deliver to a job's webhook, retried until it is accepted or the
    retry horizon passes. ``id`` is the ``webhook-id`` header, the same on every attempt."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False)
    tenant_id: Mapped[str] = mapped_column(String(128), nullable=False)
    #: job.succeeded | job.failed | job.cancelled | job.progress
    type: Mapped[str] = mapped_column(String(32), nullable=False)
    #: "completed", or "progress:<stage>": one delivery per job and key
    event_key: Mapped[str] = mapped_column(String(80), nullable=False)
    #: pending | delivered | failed (given up)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    #: when the next attempt may start (also the claim of the attempt under way); NULL once done
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime)
    #: the body, fixed at the first attempt so that every retry sends the same bytes
    payload_json: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)

    __table_args__ = (
        Index("ux_webhook_deliveries_job_event", "job_id", "event_key", unique=True),
        Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
    )
