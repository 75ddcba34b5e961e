"""``Idempotency-Key`` handling: key format, fingerprints, lookup, record.

Rationale and the answers it leads to: docs/service-design.md, "Idempotency".

The key is scoped to the tenant. The fingerprint is SHA-256 over the method, the path and the
canonical JSON of the body (sorted keys, no whitespace), so formatting changes don't matter.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta
from typing import Any

from sqlalchemy import delete
from sqlalchemy.orm import Session

from .clock import utcnow
from .db import rows_matched
from .errors import ValidationFailed
from .models import IdempotencyKey

_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces
#: What :func:`normalize_key` accepts, as the routes' OpenAPI pattern for the header: a key, or a
#: key in RFC 8941 sf-string quotes, but not "" (no look-ahead: pydantic's regex engine has none)
HEADER_PATTERN = r'^(?:[!-~]|[!#-~][!-~]|[!-~][!#-~]|[!-~]{3,255}|"[!-~]{1,255}")$'


def normalize_key(raw: str) -> str:
    """Strip RFC 8941 sf-string quotes (``"abc"`` and ``abc`` are the same key) and validate."""
    key = raw.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not _KEY.match(key):
        raise ValidationFailed.one(
            ["header", "Idempotency-Key"], "must be 1 to 255 printable ASCII characters without spaces"
        )
    return key


def fingerprint(method: str, path: str, body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{method.upper()} {path}\n{canonical}".encode()).hexdigest()


def lookup(session: Session, tenant_id: str, key: str) -> IdempotencyKey | None:
    """The live record of ``(tenant, key)``; an expired one is deleted and None returned."""
    record = session.get(IdempotencyKey, (tenant_id, key))
    if record is not None and record.expires_at <= utcnow():
        session.execute(
            delete(IdempotencyKey).where(IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key)
        )
        return None
    return record


def remember(session: Session, tenant_id: str, key: str, fp: str, job_id: str, ttl_seconds: float) -> None:
    """Record a completed request (same transaction as the job it created)."""
    now = utcnow()
    session.add(
        IdempotencyKey(
            tenant_id=tenant_id,
            key=key,
            fingerprint=fp,
            status="done",
            job_id=job_id,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_seconds),
        )
    )
    session.flush()


def purge_expired(session: Session) -> int:
    """Delete expired records; returns how many."""
    return rows_matched(session, delete(IdempotencyKey).where(IdempotencyKey.expires_at <= utcnow())) or 0
