"""Process-wide services of the app and the ``Annotated`` dependencies routes declare."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from jobs.blobs import BlobStore, open_blob_store
from jobs.config import Settings
from jobs.db import Database
from jobs.errors import UnsupportedMediaType
from jobs.inspector import Inspector

from .auth import KeyRing, require_admin, require_tenant
from .limits import RateLimiter, make_rate_limiter
from .metrics import Metrics


@dataclass
class Services:
    """Created once by ``create_app``; reachable from every request."""

    settings: Settings
    db: Database
    blobs: BlobStore
    keys: KeyRing
    metrics: Metrics
    limiter: RateLimiter
    inspector: Inspector

    @classmethod
    def create(cls, settings: Settings) -> Services:
        settings.home.mkdir(parents=True, exist_ok=True)
        db = Database.for_settings(settings)
        db.create_all()
        inspector = Inspector(settings.validator_timeout_seconds, settings.inspector_spares)
        return cls(
            settings,
            db,
            open_blob_store(settings),
            KeyRing.from_settings(settings),
            Metrics(db, inspector),
            make_rate_limiter(settings),
            inspector,
        )


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
TenantDep = Annotated[str, Depends(require_tenant)]
AdminDep = Annotated[str, Depends(require_admin)]


def require_json(request: Request) -> None:
    """Dependency: the body is declared JSON (``application/json`` or ``application/*+json``),
    else 415 — rather than a validation error about a body the service never read as JSON."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    raise UnsupportedMediaType(
        f"send the body as JSON with `Content-Type: application/json` (got {media or 'no Content-Type'})"
    )


JsonBody = Annotated[None, Depends(require_json)]
