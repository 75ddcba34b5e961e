"""A job's event log: one row per thing that happened to it (created, queued, failed, a webhook
given up, ...), read back oldest first by ``store.list_events``.

Its own module so that whatever records an event (the store's transitions, webhook deliveries)
needs only this, not the store.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session

from .clock import utcnow
from .models import JobEvent


def append_event(
    session: Session,
    job_id: str,
    tenant_id: str,
    type_: str,
    message: str = "",
    *,
    level: str = "info",
    data: dict[str, Any] | None = None,
) -> None:
    session.add(
        JobEvent(
            job_id=job_id,
            tenant_id=tenant_id,
            created_at=utcnow(),
            type=type_,
            level=level,
            message=message,
            data_json=None if data is None else json.dumps(data),
        )
    )
    session.flush()
