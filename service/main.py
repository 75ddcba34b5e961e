"""The application factory: ``create_app(settings)``.

Composition root: settings → database, blob store, keys, metrics; middleware; error handlers;
routers; and a lifespan that starts the executor named by ``GIF_EXECUTOR`` (the embedded
``workers.local`` executor by default) and the webhook deliverer (service/webhook_delivery.py, in
both modes), and stops them on shutdown.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from jobs import logs, upload_sessions
from jobs.config import Settings
from jobs.executor import load_executor

from . import errors, openapi
from .deps import Services
from .middleware import (
    BodyLimitMiddleware,
    HeadMiddleware,
    MetricsMiddleware,
    PageHeadersMiddleware,
    RequestIdMiddleware,
)
from .routers import admin, artifacts, health, jobs, ui, uploads, webhooks
from .webhook_delivery import WebhookDeliverer

log = logs.get(__name__)

DESCRIPTION = """Edit trained PyTorch classifiers with (generalized) influence functions.

Upload a checkpoint and its training data (`POST /v1/artifacts`), submit a `remove`, `relabel`
or `scores` job (`POST /v1/jobs`), poll it (`GET /v1/jobs/{id}`) and download the result
artifacts. Every error is `application/problem+json` with a stable `code`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    services = Services.create(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        executor = load_executor(settings)
        if executor is not None:
            await run_in_threadpool(executor.start)
        app.state.executor = executor
        await run_in_threadpool(services.inspector.prestart)
        deliverer = WebhookDeliverer(settings, services.db)
        deliverer.start()
        try:
            yield
        finally:
            deliverer.stop()
            services.inspector.close()
            if executor is not None:
                await run_in_threadpool(executor.stop)
            services.db.dispose()

    app = FastAPI(
        title="gif-service",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "jobs", "description": "Influence-function jobs."},
            {"name": "artifacts", "description": "Checkpoints, datasets and results."},
            {"name": "uploads", "description": "Resumable upload sessions for large files."},
            {"name": "webhooks", "description": "The secret that signs webhook deliveries."},
            {"name": "health", "description": "Probes and versions."},
        ],
    )
    app.state.services = services
    app.state.executor = None
    errors.install(app)
    app.add_middleware(HeadMiddleware)
    app.add_middleware(PageHeadersMiddleware, prefix=ui.PREFIX, headers=ui.PAGE_HEADERS)
    app.add_middleware(MetricsMiddleware, metrics=services.metrics)
    app.add_middleware(
        BodyLimitMiddleware,
        max_json_bytes=settings.max_json_bytes,
        upload_limits={
            "/v1/artifacts": settings.max_upload_bytes,
            "/v1/uploads/[^/]+/parts/[^/]+": upload_sessions.largest_part(settings),
        },
    )
    app.add_middleware(RequestIdMiddleware)
    for module in (health, artifacts, uploads, jobs, webhooks, admin, ui):
        app.include_router(module.router)
    openapi.install(app)
    return app


def _version() -> str:
    try:
        return importlib.metadata.version("gif-service")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"
