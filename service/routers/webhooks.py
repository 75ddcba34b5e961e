"""``/v1/webhooks``: the tenant's signing secret for webhook deliveries (docs/service.md, "Webhooks")."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse

from jobs import idempotency, webhooks

from ..deps import ServicesDep, TenantDep
from ..schemas import WebhookSecret, problems

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.get(
    "/secret",
    operation_id="getWebhookSecret",
    response_model=WebhookSecret,
    summary="The secret that signs this tenant's webhook deliveries (created on first use)",
    responses=problems(401),
)
def get_secret(services: ServicesDep, tenant: TenantDep) -> JSONResponse:
    with services.db.begin() as session:
        row = webhooks.secret_of(session, tenant)
        return JSONResponse(webhooks.secret_view(row), headers={"Cache-Control": "no-store"})


@router.post(
    "/secret/rotate",
    operation_id="rotateWebhookSecret",
    response_model=WebhookSecret,
    summary="Replace the secret; the former one keeps signing during GIF_WEBHOOK_SECRET_GRACE_SECONDS",
    responses=problems(401, 422),
)
def rotate_secret(
    services: ServicesDep,
    tenant: TenantDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            description="A retry with the key of the last rotation returns its secret.",
            pattern=idempotency.HEADER_PATTERN,
        ),
    ] = None,
) -> JSONResponse:
    grace = services.settings.webhook_secret_grace_seconds
    key = idempotency.normalize_key(idempotency_key) if idempotency_key is not None else None
    with services.db.begin() as session:
        row = webhooks.rotate(session, tenant, grace, key)
        return JSONResponse(webhooks.secret_view(row), headers={"Cache-Control": "no-store"})
