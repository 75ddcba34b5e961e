"""Job repository: creation, reads, compare-and-set transitions, leases, progress, events, reaper.

Every state change is one ``UPDATE … WHERE id = :id AND status = :old [AND lease_token = :tok]``
with ``version = version + 1``; it reports whether it applied, and a failed CAS changes nothing.
API-side functions take the tenant; worker-side functions take a :class:`Lease`, which carries it.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from . import idempotency, webhooks
from .clock import later, utcnow
from .db import rows_matched
from .errors import JobNotCancellable, JobNotTerminable, NotFound, ValidationFailed
from .events import append_event
from .ids import new_id
from .models import Job, JobEvent
from .states import LEASED, TERMINAL, JobStatus, check_transition

S = JobStatus


@dataclass(frozen=True)
class Lease:
    """A worker's claim on a running job; ``token`` fences every write the worker makes."""

    job_id: str
    tenant_id: str
    token: str
    owner: str
    attempt: int
    max_attempts: int


@dataclass(frozen=True)
class Page:
    """One page of a cursor-paginated list."""

    data: list[Any]
    has_more: bool


# -- creation and reads ----------------------------------------------------------------------------


def create_job(
    session: Session,
    *,
    tenant_id: str,
    type_: str,
    request: dict[str, Any],
    request_sha256: str,
    inputs: dict[str, Any],
    max_attempts: int,
) -> Job:
    """Insert a job in ``validating`` with a ``job.created`` event."""
    now = utcnow()
    job = Job(
        id=new_id("job"),
        tenant_id=tenant_id,
        type=type_,
        status=S.VALIDATING.value,
        version=1,
        attempt=0,
        max_attempts=max_attempts,
        request_json=json.dumps(request, sort_keys=True),
        request_sha256=request_sha256,
        inputs_json=json.dumps(inputs, sort_keys=True),
        webhook_json=webhooks.initial_record(request),
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    session.flush()
    append_event(session, job.id, tenant_id, "job.created", f"{type_} job created")
    return job


def get_job(session: Session, tenant_id: str, job_id: str) -> Job | None:
    return session.scalar(
        select(Job)
        .where(Job.id == job_id, Job.tenant_id == tenant_id)
        .execution_options(populate_existing=True)
    )


def find_job(session: Session, job_id: str) -> Job | None:
    """A job by id over all tenants (workers, which get ids from trusted messages, and the
    admin routes)."""
    return session.scalar(select(Job).where(Job.id == job_id).execution_options(populate_existing=True))


def require_job(session: Session, tenant_id: str, job_id: str) -> Job:
    job = get_job(session, tenant_id, job_id)
    if job is None:
        raise NotFound(f"job {job_id!r} not found")
    return job


def list_jobs(
    session: Session, tenant_id: str, *, after: str | None = None, limit: int = 20, status: str | None = None
) -> Page:
    """Newest first; ``after`` is the id of the last job of the previous page."""
    query = select(Job).where(Job.tenant_id == tenant_id)
    if status is not None:
        query = query.where(Job.status == status)
    if after is not None:
        cursor = get_job(session, tenant_id, after)
        if cursor is None:
            raise ValidationFailed.one(["query", "after"], f"unknown cursor {after!r}")
        query = query.where(
            or_(
                Job.created_at < cursor.created_at,
                and_(Job.created_at == cursor.created_at, Job.id < cursor.id),
            )
        )
    rows = list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    return Page(rows[:limit], len(rows) > limit)


# -- compare-and-set -------------------------------------------------------------------------------


def transition(
    session: Session,
    job_id: str,
    tenant_id: str,
    old: JobStatus,
    new: JobStatus,
    *,
    token: str | None = None,
    where: tuple[Any, ...] = (),
    **values: Any,
) -> bool:
    """CAS ``old → new`` (fenced by ``token`` and extra ``where`` conditions); True if the row changed."""
    check_transition(old, new)
    stmt = update(Job).where(Job.id == job_id, Job.tenant_id == tenant_id, Job.status == old.value, *where)
    if token is not None:
        stmt = stmt.where(Job.lease_token == token)
    stmt = stmt.values(status=new.value, version=Job.version + 1, updated_at=utcnow(), **values)
    changed = rows_matched(session, stmt.execution_options(synchronize_session=False)) == 1
    if changed and new in TERMINAL:  # the webhook's outbox row, in the same transaction
        webhooks.on_terminal(session, job_id, tenant_id, new.value)
    return changed


def _finish(
    session: Session,
    lease: Lease,
    new: JobStatus,
    olds: Iterable[JobStatus],
    where: tuple[Any, ...] = (),
    **values: Any,
) -> bool:
    """Move a leased job to ``new`` from whichever of ``olds`` it is in (fenced by the lease)."""
    now = utcnow()
    for old in olds:
        if transition(
            session,
            lease.job_id,
            lease.tenant_id,
            old,
            new,
            token=lease.token,
            where=where,
            finished_at=now,
            lease_expires_at=None,
            **values,
        ):
            return True
    return False


# -- worker side: claim, heartbeat, progress, finish -------------------------------------------------


def _claim(session: Session, job_filter: Any, owner: str, lease_seconds: float) -> Lease | None:
    now, token = utcnow(), secrets.token_hex(16)
    stmt = (
        update(Job)
        .where(job_filter, Job.status == S.QUEUED.value)
        .values(
            status=S.RUNNING.value,
            version=Job.version + 1,
            attempt=Job.attempt + 1,
            lease_owner=owner,
            lease_token=token,
            lease_expires_at=later(lease_seconds),
            started_at=func.coalesce(Job.started_at, now),
            updated_at=now,
        )
        .returning(Job.id, Job.tenant_id, Job.attempt, Job.max_attempts)
        .execution_options(synchronize_session=False)
    )
    row = session.execute(stmt).first()
    if row is None:
        return None
    lease = Lease(row.id, row.tenant_id, token, owner, row.attempt, row.max_attempts)
    append_event(
        session,
        lease.job_id,
        lease.tenant_id,
        "job.running",
        f"attempt {lease.attempt} started by {owner}",
        data={"attempt": lease.attempt, "worker": owner},
    )
    return lease


def claim(session: Session, job_id: str, owner: str, lease_seconds: float) -> Lease | None:
    """Claim one queued job (None if it is not queued any more)."""
    return _claim(session, Job.id == job_id, owner, lease_seconds)


def claim_next(session: Session, owner: str, lease_seconds: float) -> Lease | None:
    """Atomically claim the oldest queued job, if any."""
    oldest = (
        select(Job.id).where(Job.status == S.QUEUED.value).order_by(Job.created_at, Job.id).limit(1)
    ).scalar_subquery()
    return _claim(session, Job.id == oldest, owner, lease_seconds)


def has_queued(session: Session) -> bool:
    return session.scalar(select(Job.id).where(Job.status == S.QUEUED.value).limit(1)) is not None


def heartbeat(session: Session, lease: Lease, lease_seconds: float) -> JobStatus | None:
    """Renew the lease; returns the job's status, or None if the lease is lost (reaped, finished)."""
    stmt = (
        update(Job)
        .where(
            Job.id == lease.job_id,
            Job.lease_token == lease.token,
            Job.status.in_([s.value for s in LEASED]),
        )
        .values(lease_expires_at=later(lease_seconds))
        .returning(Job.status)
        .execution_options(synchronize_session=False)
    )
    status = session.execute(stmt).scalar()
    return None if status is None else JobStatus(status)


def update_progress(session: Session, lease: Lease, progress: dict[str, Any]) -> JobStatus | None:
    """Store the progress object; returns the job's status, or None if the lease is lost."""
    stmt = (
        update(Job)
        .where(
            Job.id == lease.job_id,
            Job.lease_token == lease.token,
            Job.status.in_([s.value for s in LEASED]),
        )
        .values(progress_json=json.dumps(progress), updated_at=utcnow())
        .returning(Job.status, Job.webhook_json)
        .execution_options(synchronize_session=False)
    )
    row = session.execute(stmt).first()
    if row is None:
        return None
    webhooks.on_progress(session, lease.job_id, lease.tenant_id, row.webhook_json, progress)
    return JobStatus(row.status)


def hold_lease(session: Session, lease: Lease) -> bool:
    """Whether ``lease`` still holds its job, keeping it so until the transaction ends (a row
    lock on PostgreSQL, which the reaper's update waits for; SQLite's writes are serial). A
    worker checks this before it moves result files into the blob store, so an attempt that
    lost its lease (frozen past it, say) leaves no file behind."""
    query = select(Job.id).where(
        Job.id == lease.job_id, Job.lease_token == lease.token, Job.status.in_([s.value for s in LEASED])
    )
    return session.scalar(query.with_for_update()) is not None


def finish_succeeded(session: Session, lease: Lease, result: dict[str, Any]) -> bool:
    """``running | cancelling → succeeded`` with the result (fenced)."""
    done = _finish(session, lease, S.SUCCEEDED, (S.RUNNING, S.CANCELLING), result_json=json.dumps(result))
    if done:
        append_event(session, lease.job_id, lease.tenant_id, "job.succeeded", "job succeeded")
    return done


def finish_failed(
    session: Session, lease: Lease, code: str, message: str, *, where: tuple[Any, ...] = (), **details: Any
) -> bool:
    """``running | cancelling → failed`` with ``error {code, message}`` (fenced)."""
    error = {
        "code": code,
        "message": message,
        "retryable": False,
        **({"details": details} if details else {}),
    }
    done = _finish(session, lease, S.FAILED, (S.RUNNING, S.CANCELLING), where, error_json=json.dumps(error))
    if done:
        append_event(
            session, lease.job_id, lease.tenant_id, "job.failed", f"{code}: {message}", level="error"
        )
    return done


def finish_cancelled(session: Session, lease: Lease) -> bool:
    """``cancelling → cancelled`` once the worker has stopped (fenced)."""
    done = _finish(session, lease, S.CANCELLED, (S.CANCELLING,))
    if done:
        append_event(session, lease.job_id, lease.tenant_id, "job.cancelled", "worker stopped on request")
    return done


def terminable(session: Session, job_id: str, grace_seconds: float) -> Lease:
    """The lease of a job an admin may terminate: cancel requested over ``grace_seconds`` ago and
    still not stopped (any tenant's job: this is the admin scope).

    Raises:
        NotFound: no such job.
        JobNotTerminable: not ``cancelling``, or still inside the grace period (``Retry-After``).
    """
    job = find_job(session, job_id)
    if job is None:
        raise NotFound(f"job {job_id!r} not found")
    if job.status != S.CANCELLING.value or not job.lease_owner or not job.lease_token:
        raise JobNotTerminable(
            f"job {job_id} is {job.status}; only a cancelling job can be terminated (cancel it first)"
        )
    waited = (utcnow() - (job.cancel_requested_at or utcnow())).total_seconds()
    if waited < grace_seconds:
        left = math.ceil(grace_seconds - waited)
        raise JobNotTerminable(
            f"job {job_id} was asked to stop {waited:.0f} s ago; it may stop on its own for {left} s more",
            headers={"Retry-After": str(left)},
        )
    return Lease(job.id, job.tenant_id, job.lease_token, job.lease_owner, job.attempt, job.max_attempts)


def finish_terminated(session: Session, lease: Lease, pid: int) -> bool:
    """``cancelling → cancelled`` after its worker process was killed (fenced: the lease must be
    the one whose process died)."""
    done = _finish(session, lease, S.CANCELLED, (S.CANCELLING,))
    if done:
        append_event(session, lease.job_id, lease.tenant_id, "job.cancelled",
                     f"worker process {pid} terminated by an administrator", level="warning")  # fmt: skip
    return done


def release(session: Session, lease: Lease, reason: str) -> JobStatus | None:
    """Give a job back without a result (worker shutdown): ``running → queued`` with the attempt
    refunded, or ``cancelling → cancelled``. Returns the new status, or None if the lease is lost."""
    if transition(
        session,
        lease.job_id,
        lease.tenant_id,
        S.RUNNING,
        S.QUEUED,
        token=lease.token,
        attempt=lease.attempt - 1,
        lease_owner=None,
        lease_token=None,
        lease_expires_at=None,
        dispatched_at=None,
    ):
        append_event(
            session, lease.job_id, lease.tenant_id, "job.requeued", f"released by the worker: {reason}"
        )
        return S.QUEUED
    if _finish(session, lease, S.CANCELLED, (S.CANCELLING,)):
        append_event(session, lease.job_id, lease.tenant_id, "job.cancelled", "worker stopped on request")
        return S.CANCELLED
    return None


# -- validation (distributed mode: a CPU worker checks the inputs before the job is queued) ----------


def finish_validation(session: Session, job_id: str, tenant_id: str) -> bool:
    """``validating → queued``; False if the job left ``validating`` meanwhile (cancelled, done)."""
    if not transition(
        session, job_id, tenant_id, S.VALIDATING, S.QUEUED, validated_at=utcnow(), dispatched_at=None
    ):
        return False
    append_event(session, job_id, tenant_id, "job.queued", "inputs validated; queued")
    return True


def fail_validation(session: Session, job_id: str, tenant_id: str, code: str, message: str) -> bool:
    """``validating → failed`` with ``error {code, message}``."""
    error = {"code": code, "message": message, "retryable": False}
    if not transition(
        session, job_id, tenant_id, S.VALIDATING, S.FAILED, finished_at=utcnow(), error_json=json.dumps(error)
    ):
        return False
    append_event(session, job_id, tenant_id, "job.failed", f"{code}: {message}", level="error")
    return True


# -- dispatch (distributed mode: the job row is the outbox of broker messages) ------------------------


@dataclass(frozen=True)
class Pending:
    """A job that needs a broker message: ``validating`` → validate task, ``queued`` → run task."""

    job_id: str
    tenant_id: str
    status: JobStatus


def mark_dispatched(session: Session, job_id: str, status: JobStatus) -> bool:
    """Record that the message for ``job_id`` in ``status`` was published."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status == status.value)
        .values(dispatched_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return rows_matched(session, stmt) == 1


def due_for_dispatch(session: Session, redispatch_seconds: float, limit: int = 500) -> list[Pending]:
    """Jobs never published (or whose publish was lost), and jobs published ``redispatch_seconds``
    ago that no worker has picked up yet, oldest first."""
    stale = later(-redispatch_seconds)
    rows = session.execute(
        select(Job.id, Job.tenant_id, Job.status)
        .where(
            Job.status.in_([S.VALIDATING.value, S.QUEUED.value]),
            or_(Job.dispatched_at.is_(None), Job.dispatched_at < stale),
        )
        .order_by(Job.created_at, Job.id)
        .limit(limit)
    ).all()
    return [Pending(row.id, row.tenant_id, JobStatus(row.status)) for row in rows]


# -- API side: cancel ------------------------------------------------------------------------------


def request_cancel(session: Session, tenant_id: str, job_id: str) -> Job:
    """Cancel: queued/validating → cancelled now; running → cancelling; idempotent otherwise.

    Raises:
        NotFound: no such job for this tenant.
        JobNotCancellable: the job already succeeded or failed.
    """
    for _ in range(5):  # a concurrent CAS (claim, finish) can win; look again
        job = require_job(session, tenant_id, job_id)
        status, now = JobStatus(job.status), utcnow()
        if status in (S.CANCELLING, S.CANCELLED):
            return job
        if status in (S.SUCCEEDED, S.FAILED):
            raise JobNotCancellable(f"job {job_id} already {status.value}")
        if status in (S.VALIDATING, S.QUEUED):
            if transition(
                session, job_id, tenant_id, status, S.CANCELLED, cancel_requested_at=now, finished_at=now
            ):
                append_event(session, job_id, tenant_id, "job.cancelled", f"cancelled while {status.value}")
                return require_job(session, tenant_id, job_id)
        elif transition(session, job_id, tenant_id, S.RUNNING, S.CANCELLING, cancel_requested_at=now):
            append_event(session, job_id, tenant_id, "job.cancel_requested", "cancellation requested")
            return require_job(session, tenant_id, job_id)
    raise RuntimeError(f"job {job_id} kept changing state during cancel")


# -- reaper ----------------------------------------------------------------------------------------


def reap_expired(session: Session) -> list[tuple[str, JobStatus]]:
    """Recover jobs whose worker lease expired: cancelling → cancelled; running → queued while
    ``attempt < max_attempts``, else failed ``worker_lost``. Returns ``(job_id, new status)``."""
    now = utcnow()
    expired = session.scalars(
        select(Job).where(Job.status.in_([s.value for s in LEASED]), Job.lease_expires_at < now)
    ).all()
    outcomes = []
    for job in expired:
        lease = Lease(
            job.id, job.tenant_id, job.lease_token or "", job.lease_owner or "", job.attempt, job.max_attempts
        )
        outcome = _reap_one(session, job, lease, (Job.lease_expires_at < now,))
        if outcome is not None:
            outcomes.append((job.id, outcome))
    return outcomes


def _reap_one(session: Session, job: Job, lease: Lease, expired: tuple[Any, ...]) -> JobStatus | None:
    """Apply the reaper's rule to one job; every CAS re-checks that the lease is still expired."""
    if job.status == S.CANCELLING.value:
        if _finish(session, lease, S.CANCELLED, (S.CANCELLING,), expired):
            append_event(session, job.id, job.tenant_id, "job.cancelled", "worker lost while cancelling")
            return S.CANCELLED
        return None
    if job.attempt < job.max_attempts:
        if transition(
            session,
            job.id,
            job.tenant_id,
            S.RUNNING,
            S.QUEUED,
            token=lease.token,
            where=expired,
            lease_owner=None,
            lease_token=None,
            lease_expires_at=None,
            dispatched_at=None,
        ):
            append_event(
                session,
                job.id,
                job.tenant_id,
                "job.retry_scheduled",
                f"worker lost (lease expired) on attempt {job.attempt}; requeued",
                level="warning",
                data={"reason": "worker_lost", "attempt": job.attempt},
            )
            return S.QUEUED
        return None
    message = f"worker lost on each of {job.attempt} attempts"
    if finish_failed(session, lease, "worker_lost", message, where=expired):
        return S.FAILED
    return None


def expire_waiting(session: Session, deadline_seconds: float) -> list[str]:
    """Fail ``deadline_exceeded`` every job still validating or queued ``deadline_seconds`` after
    it was submitted; returns their ids."""
    cutoff = later(-deadline_seconds)
    waiting = session.execute(
        select(Job.id, Job.tenant_id, Job.status).where(
            Job.status.in_([S.VALIDATING.value, S.QUEUED.value]), Job.created_at < cutoff
        )
    ).all()
    message = f"not started within {deadline_seconds:g} s of submission"
    error = {"code": "deadline_exceeded", "message": message, "retryable": True}
    expired = []
    for row in waiting:
        if transition(session, row.id, row.tenant_id, JobStatus(row.status), S.FAILED,
                      where=(Job.created_at < cutoff,), finished_at=utcnow(), error_json=json.dumps(error)):  # fmt: skip
            append_event(session, row.id, row.tenant_id, "job.failed", message, level="error")
            expired.append(row.id)
    return expired


def housekeeping(session: Session, *, queue_deadline_seconds: float = 0.0) -> list[tuple[str, JobStatus]]:
    """One sweeper pass over the table (both executors run it): reap expired leases, forget
    expired idempotency keys, fail jobs waiting past the queue deadline. Returns the reaped jobs."""
    reaped = reap_expired(session)
    idempotency.purge_expired(session)
    if queue_deadline_seconds:
        expire_waiting(session, queue_deadline_seconds)
    return reaped


# -- events ----------------------------------------------------------------------------------------


def list_events(
    session: Session, tenant_id: str, job_id: str, *, after: int | None = None, limit: int = 20
) -> Page:
    """Oldest first; ``after`` is the sequence number of the last event already seen."""
    require_job(session, tenant_id, job_id)
    query = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.tenant_id == tenant_id)
    if after is not None:
        query = query.where(JobEvent.seq > after)
    rows = list(session.scalars(query.order_by(JobEvent.seq).limit(limit + 1)))
    return Page(rows[:limit], len(rows) > limit)


def finished_jobs(session: Session) -> list[tuple]:
    """(type, status, created_at, started_at, finished_at, result_json) of every terminal job,
    over all tenants (for metrics computed from the job table, which every process shares)."""
    terminal = [status.value for status in TERMINAL]
    query = select(Job.type, Job.status, Job.created_at, Job.started_at, Job.finished_at, Job.result_json)
    return [tuple(row) for row in session.execute(query.where(Job.status.in_(terminal))).all()]


def count_active(session: Session, tenant_id: str) -> int:
    """The tenant's jobs that are not finished."""
    terminal = [status.value for status in TERMINAL]
    query = (
        select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id, Job.status.not_in(terminal))
    )
    return int(session.scalar(query) or 0)


def count_waiting(session: Session) -> int:
    """Jobs validating or queued, over all tenants."""
    waiting = [S.VALIDATING.value, S.QUEUED.value]
    return int(session.scalar(select(func.count()).select_from(Job).where(Job.status.in_(waiting))) or 0)


def count_by_status(session: Session) -> dict[str, int]:
    """Jobs per status over all tenants (for metrics)."""
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    return dict(rows)
