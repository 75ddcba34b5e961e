"""Response shapes for the OpenAPI document (the handlers return plain JSON built by ``jobs.views``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Problem(BaseModel):
    """RFC 9457 problem details; every error response has this shape."""

    type: str = Field(examples=["urn:gif-service:problem:validation-error"])
    title: str
    status: int
    detail: str
    instance: str | None = None
    code: str = Field(description="Stable machine-readable error code.", examples=["validation-error"])
    request_id: str | None = None
    errors: list[dict[str, Any]] | None = Field(None, description="Validation failures: {loc, msg, type}.")


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries documenting problem+json errors (an authenticated route, one that
    can answer 401, can also answer 429 when the tenant is over its request rate)."""
    if 401 in statuses and 429 not in statuses:
        statuses = (*statuses, 429)
    return {
        status: {
            "model": Problem,
            "content": {"application/problem+json": {}},
            "description": "Problem details",
        }
        for status in statuses
    }
