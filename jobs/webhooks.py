"""Webhooks in the job store: tenants' signing secrets, and the outbox of deliveries.

Why an outbox written in the job's own transaction: the transition that makes a job terminal
(``store.transition``, whoever runs it: a worker, the reaper, a cancel) inserts the delivery row
in the same transaction, so a job is never terminal without its delivery, nor a delivery written
for a transition that rolled back; no sweep over terminal jobs is needed, and a worker does no
more than one indexed read and one insert. The API processes then deliver from the table
(service/webhook_delivery.py): each attempt is claimed by a compare-and-set on ``attempts``, the
claim being ``next_attempt_at`` pushed past the attempt's time limit, so several API processes
never send the same attempt twice and a process killed mid-attempt leaves a row that comes due
again. Retries follow ``next_attempt_at``, which a restart does not forget; ``webhook-id`` is the
row's id, the same on every attempt, for receivers to drop duplicates (delivery is at least once).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import webhook_signing
from .clock import rfc3339, utcnow
from .db import rows_matched
from .events import append_event
from .ids import ulid
from .models import Job, WebhookDelivery, WebhookSecret
from .views import job_view

#: Event names a job's ``webhook.events`` may list.
EVENTS = ("completed", "progress")
#: Attempts kept on the job object (the newest); older ones are dropped from it.
MAX_ATTEMPTS_SHOWN = 50
#: How long past its time limit an attempt's claim holds (a process killed mid-attempt).
CLAIM_MARGIN_SECONDS = 5.0


# -- the job's webhook record ------------------------------------------------------------------------


def initial_record(request: dict[str, Any]) -> str | None:
    """``jobs.webhook_json`` of a new job: the request's webhook, no deliveries yet (None: none)."""
    webhook = request.get("webhook")
    if not webhook:
        return None
    return json.dumps({"url": webhook["url"], "events": list(webhook["events"]), "deliveries": []})


# -- the outbox, written by whoever changes the job ---------------------------------------------------


def _enqueue(session: Session, job_id: str, tenant_id: str, type_: str, key: str) -> bool:
    """Insert a delivery unless the job already has one for ``key``. Select first rather than
    rely on the unique index: an integrity error would roll back the caller's transition."""
    exists = session.scalar(
        select(WebhookDelivery.id).where(WebhookDelivery.job_id == job_id, WebhookDelivery.event_key == key)
    )
    if exists is not None:
        return False
    now = utcnow()
    session.add(
        WebhookDelivery(
            id=f"msg_{ulid()}", job_id=job_id, tenant_id=tenant_id, type=type_, event_key=key,
            state="pending", attempts=0, next_attempt_at=now, created_at=now,
        )
    )  # fmt: skip
    session.flush()
    return True


def _events(session: Session, job_id: str) -> list[str]:
    record = session.scalar(select(Job.webhook_json).where(Job.id == job_id))
    return list(json.loads(record)["events"]) if record else []


def on_terminal(session: Session, job_id: str, tenant_id: str, status: str) -> None:
    """Called by ``store.transition`` when a job becomes terminal (same transaction)."""
    if "completed" in _events(session, job_id):
        _enqueue(session, job_id, tenant_id, f"job.{status}", "completed")


def on_progress(
    session: Session, job_id: str, tenant_id: str, webhook_json: str | None, progress: dict[str, Any]
) -> None:
    """Called by ``store.update_progress``: one ``job.progress`` delivery per stage the job enters
    (progress is written every fraction of a second; a receiver wants milestones)."""
    if webhook_json and "progress" in json.loads(webhook_json)["events"]:
        stage = str(progress.get("stage", ""))[:64]
        _enqueue(session, job_id, tenant_id, "job.progress", f"progress:{stage}")


# -- secrets -----------------------------------------------------------------------------------------


def secret_of(session: Session, tenant_id: str) -> WebhookSecret:
    """The tenant's secret, created on first use (a concurrent creator's row wins)."""
    found = session.get(WebhookSecret, tenant_id, populate_existing=True)
    if found is not None:
        return found
    try:
        with session.begin_nested():
            session.add(
                WebhookSecret(tenant_id=tenant_id, secret=webhook_signing.new_secret(), created_at=utcnow())
            )
    except IntegrityError:
        pass
    row = session.get(WebhookSecret, tenant_id, populate_existing=True)
    assert row is not None
    return row


def rotate(session: Session, tenant_id: str, grace_seconds: float, key: str | None = None) -> WebhookSecret:
    """Replace the tenant's secret; the former one keeps signing for ``grace_seconds``.

    ``key`` (the request's Idempotency-Key): a retry of the rotation that made the current secret
    returns it unchanged. Rotating twice would push the secret receivers still use out of the
    grace, in favour of one nobody received (the SDK retries a POST whose answer was lost).
    """
    row = secret_of(session, tenant_id)
    if key is not None and row.rotation_key == key:
        return row
    now = utcnow()
    row.previous_secret = row.secret if grace_seconds > 0 else None
    row.previous_expires_at = now + timedelta(seconds=grace_seconds) if grace_seconds > 0 else None
    row.secret, row.created_at, row.rotation_key = webhook_signing.new_secret(), now, key
    session.flush()
    return row


def signing_secrets(row: WebhookSecret, now: datetime) -> list[str]:
    """The secrets a delivery is signed with now: the current one, and the former one in its grace."""
    previous = row.previous_secret if row.previous_expires_at and row.previous_expires_at > now else None
    return [row.secret, *([previous] if previous else [])]


def secret_view(row: WebhookSecret) -> dict[str, Any]:
    previous_valid = row.previous_expires_at is not None and row.previous_expires_at > utcnow()
    return {
        "object": "webhook_secret",
        "secret": row.secret,
        "created_at": rfc3339(row.created_at),
        "previous_secret_expires_at": rfc3339(row.previous_expires_at) if previous_valid else None,
    }


# -- the outbox, read by the deliverer ----------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    """One attempt, claimed: what to send, where, signed with what."""

    id: str
    job_id: str
    tenant_id: str
    type: str
    attempt: int
    url: str
    body: bytes
    secrets: list[str]
    created_at: datetime


def due(session: Session, limit: int = 100) -> list[tuple[str, int]]:
    """``(id, attempts)`` of pending deliveries whose next attempt is due, oldest first."""
    rows = session.execute(
        select(WebhookDelivery.id, WebhookDelivery.attempts)
        .where(WebhookDelivery.state == "pending", WebhookDelivery.next_attempt_at <= utcnow())
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    ).all()
    return [(row.id, row.attempts) for row in rows]


def claim(session: Session, delivery_id: str, attempts: int, hold_seconds: float) -> Claimed | None:
    """Take attempt ``attempts + 1`` of a due delivery (None: another process took it). The
    body is fixed at the first attempt: the job as ``GET /v1/jobs/{id}`` shows it then."""
    now = utcnow()
    stmt = (
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.attempts == attempts,
            WebhookDelivery.state == "pending",
            WebhookDelivery.next_attempt_at <= now,
        )
        .values(attempts=attempts + 1, next_attempt_at=now + timedelta(seconds=hold_seconds))
        .execution_options(synchronize_session=False)
    )
    if rows_matched(session, stmt) != 1:
        return None
    row = session.get(WebhookDelivery, delivery_id, populate_existing=True)
    job = session.get(Job, row.job_id, populate_existing=True) if row is not None else None
    if row is None or job is None or not job.webhook_json:
        return None
    if row.payload_json is None:
        row.payload_json = _payload(row, job)
    secrets_ = signing_secrets(secret_of(session, row.tenant_id), now)
    url = json.loads(job.webhook_json)["url"]
    return Claimed(row.id, row.job_id, row.tenant_id, row.type, row.attempts, url,
                   row.payload_json.encode(), secrets_, row.created_at)  # fmt: skip


def _payload(row: WebhookDelivery, job: Job) -> str:
    body = {"type": row.type, "timestamp": rfc3339(row.created_at), "data": job_view(job)}
    return json.dumps(body, separators=(",", ":"))


@dataclass(frozen=True)
class Outcome:
    """What one attempt got: a status code (None: no response) and an error (None: accepted)."""

    status_code: int | None
    error: str | None

    @property
    def accepted(self) -> bool:
        return self.error is None


def next_attempt(claimed: Claimed, now: datetime, first_delay: float, horizon: float) -> datetime | None:
    """When to try again after failed attempt ``claimed.attempt``: ``first_delay`` doubling each
    time; None once that would pass ``horizon`` seconds after the event (give up)."""
    delay = first_delay * 2 ** (claimed.attempt - 1)
    at = now + timedelta(seconds=delay)
    return at if at <= claimed.created_at + timedelta(seconds=horizon) else None


def record(session: Session, claimed: Claimed, outcome: Outcome, retry_at: datetime | None) -> str:
    """Store an attempt's outcome on the delivery and on the job; returns the delivery's state."""
    now = utcnow()
    state = "delivered" if outcome.accepted else ("pending" if retry_at is not None else "failed")
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == claimed.id, WebhookDelivery.attempts == claimed.attempt)
        .values(state=state, next_attempt_at=retry_at if state == "pending" else None)
        .execution_options(synchronize_session=False)
    )
    entry = {"id": claimed.id, "type": claimed.type, "attempt": claimed.attempt, "at": rfc3339(now),
             "status_code": outcome.status_code, "error": outcome.error}  # fmt: skip
    _append_attempt(session, claimed.job_id, entry, now)
    if state == "failed":
        append_event(
            session, claimed.job_id, claimed.tenant_id, "webhook.given_up",
            f"{claimed.type} not delivered after {claimed.attempt} attempts; last: {outcome.error}",
            level="warning", data={"webhook_id": claimed.id, "attempts": claimed.attempt},
        )  # fmt: skip
    return state


def count_by_state(session: Session) -> dict[str, int]:
    """Deliveries per state (pending, delivered, failed): the service's metrics."""
    rows = session.execute(select(WebhookDelivery.state, func.count()).group_by(WebhookDelivery.state)).all()
    return {state: int(n) for state, n in rows}


def _append_attempt(session: Session, job_id: str, entry: dict[str, Any], now: datetime) -> None:
    """Add an attempt to ``jobs.webhook_json`` (row-locked on PostgreSQL: API processes deliver
    a job's progress and completion concurrently)."""
    current = session.scalar(select(Job.webhook_json).where(Job.id == job_id).with_for_update())
    if not current:
        return
    record_ = json.loads(current)
    record_["deliveries"] = [*record_["deliveries"], entry][-MAX_ATTEMPTS_SHOWN:]
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(webhook_json=json.dumps(record_), updated_at=now)
        .execution_options(synchronize_session=False)
    )
