"""Time in one place: naive UTC datetimes in the database, RFC 3339 strings in JSON."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def utcnow() -> datetime:
    """Now, as a naive UTC datetime (what the database columns hold)."""
    return datetime.now(UTC).replace(tzinfo=None)


def later(seconds: float) -> datetime:
    return utcnow() + timedelta(seconds=seconds)


def rfc3339(value: datetime | None) -> str | None:
    """``2026-11-29T10:15:02.123456Z`` (or None)."""
    return None if value is None else value.isoformat(timespec="microseconds") + "Z"
