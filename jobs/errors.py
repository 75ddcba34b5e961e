"""Domain errors with a stable ``code`` (the problem+json slug) and the HTTP status they map to.

The API turns every one of these into an RFC 9457 problem; the job core raises them without
knowing about HTTP frameworks.
"""

from __future__ import annotations

import errno
import re


class DomainError(Exception):
    """Base: ``code``, ``status`` and ``title`` are per class; ``detail`` per instance."""

    code = "internal"
    status = 500
    title = "Internal error"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[dict] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}


class NotFound(DomainError):
    code, status, title = "not-found", 404, "Not found"


class ValidationFailed(DomainError):
    """Invalid request; ``errors`` lists every problem as ``{loc, msg, type}``."""

    code, status, title = "validation-error", 422, "Request validation failed"

    @classmethod
    def one(cls, loc: list, msg: str, type_: str = "value_error") -> ValidationFailed:
        return cls(msg, errors=[{"loc": loc, "msg": msg, "type": type_}])


class IdempotencyKeyReused(DomainError):
    code, status, title = "idempotency-key-reused", 422, "Idempotency-Key reused with a different request"


class IdempotencyKeyInFlight(DomainError):
    code, status, title = (
        "idempotency-key-in-flight",
        409,
        "A request with this Idempotency-Key is in progress",
    )


class JobNotCancellable(DomainError):
    code, status, title = "job-not-cancellable", 409, "Job cannot be cancelled"


class JobNotTerminable(DomainError):
    code, status, title = "job-not-terminable", 409, "Job cannot be terminated"


class ArtifactInUse(DomainError):
    code, status, title = "artifact-in-use", 409, "Artifact is used by a job"


class PayloadTooLarge(DomainError):
    code, status, title = "payload-too-large", 413, "Payload too large"


class DigestMismatch(DomainError):
    code, status, title = "digest-mismatch", 422, "Digest mismatch"


class UnsupportedMediaType(DomainError):
    code, status, title = "unsupported-media-type", 415, "Unsupported media type"


class InvalidArtifact(DomainError):
    code, status, title = "invalid-artifact", 422, "Artifact is not a valid checkpoint or dataset"


class CheckpointUnsafe(DomainError):
    code, status, title = "checkpoint-unsafe", 422, "Checkpoint would execute code when loaded"


class Unauthenticated(DomainError):
    code, status, title = "unauthenticated", 401, "Authentication required"


class Gone(DomainError):
    code, status, title = "gone", 410, "Gone"


class Forbidden(DomainError):
    code, status, title = "forbidden", 403, "Forbidden"


#: OS errors that mean "the storage is full" (a full disk, a quota, a file-size limit).
STORAGE_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


#: How libraries written in Rust (safetensors) report an OS error in their exception's text.
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def is_storage_full(exc: BaseException) -> bool:
    """An ``OSError`` with a storage-full errno, or a library error that wraps one."""
    if isinstance(exc, OSError):
        return exc.errno in STORAGE_FULL
    found = _RUST_OS_ERROR.search(str(exc))
    return found is not None and int(found.group(1)) in STORAGE_FULL


class InsufficientStorage(DomainError):
    code, status, title = "insufficient-storage", 507, "Insufficient storage"

    @classmethod
    def disk_full(cls, headers: dict[str, str] | None = None) -> InsufficientStorage:
        """The server's disk is full: retry later (``Retry-After``, plus ``headers``)."""
        return cls(
            "the server's storage is full; retry later", headers={"Retry-After": "300", **(headers or {})}
        )


class ServiceUnavailable(DomainError):
    code, status, title = "service-unavailable", 503, "Service unavailable"


class DatabaseBusy(ServiceUnavailable):
    """SQLite's write lock was held by another process for longer than the connection waits
    (``jobs.db.BUSY_TIMEOUT_MS``): nothing was written, and a retry shortly after may succeed."""

    code, title = "database-busy", "The job table is busy"

    @classmethod
    def locked(cls) -> DatabaseBusy:
        return cls(
            "another process held the job table's write lock too long; nothing was changed, retry shortly",
            headers={"Retry-After": "2"},
        )


def is_database_busy(exc: BaseException) -> bool:
    """SQLite's "database is locked", as the driver or SQLAlchemy's ``OperationalError`` raises it."""
    return type(exc).__name__ == "OperationalError" and "database is locked" in str(exc)


class StorageUnavailable(ServiceUnavailable):
    """The blob store (an S3-compatible bucket) could not be reached or refused a request.

    ``detail`` is for clients (the operation and the service's error code, no addresses);
    ``reason`` is the whole story, for the server's log."""

    def __init__(self, detail: str, reason: str = "") -> None:
        super().__init__(f"{detail}; retry later", headers={"Retry-After": "30"})
        self.reason = reason or detail


class BlobCorrupted(Exception):
    """A fetched blob's content does not match its digest (changed or truncated in the bucket)."""


class RateLimited(DomainError):
    code, status, title = "rate-limited", 429, "Too many requests"


class QuotaExceeded(DomainError):
    code, status, title = "quota-exceeded", 429, "Too many active jobs"


class UploadQuotaExceeded(QuotaExceeded):
    title = "Too many open upload sessions"


class UploadNotOpen(DomainError):
    code, status, title = "upload-not-open", 409, "The upload session is not open"


class UploadNotDirect(DomainError):
    code, status, title = "upload-not-direct", 409, "The upload session takes its parts through the API"


class UploadExpired(DomainError):
    code, status, title = "upload-expired", 410, "The upload session expired"


class QueueFull(DomainError):
    code, status, title = "queue-full", 503, "The job queue is full"
