"""Probes and service information: ``/livez``, ``/readyz``, ``/v1/version``, ``/metrics``."""

from __future__ import annotations

import importlib.metadata

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from jobs import specs
from jobs.artifacts import UPLOAD_KINDS

from ..deps import AdminDep, Services, ServicesDep
from ..errors import problem_response
from ..metrics import CONTENT_TYPE
from ..schemas import Liveness, Readiness, Version, problems

router = APIRouter(tags=["health"])


@router.get(
    "/livez",
    operation_id="livez",
    response_model=Liveness,
    summary="Liveness: the process answers (no dependency checks)",
)
async def livez() -> dict:
    return {"status": "ok"}


@router.get(
    "/readyz",
    operation_id="readyz",
    response_model=Readiness,
    summary="Readiness: database and blob storage reachable",
    responses=problems(503),
)
async def readyz(request: Request, services: ServicesDep) -> dict | JSONResponse:
    checks = await run_in_threadpool(_checks, services)
    executor = getattr(request.app.state, "executor", None)
    info = {"executor": executor.health() if executor is not None else {"executor": "none"}}
    if all(v == "ok" for v in checks.values()):
        return {"status": "ok", "checks": checks, **info}
    failed = ", ".join(k for k, v in checks.items() if v != "ok")
    return problem_response(
        request.scope,
        503,
        "service-unavailable",
        "Service unavailable",
        f"failing checks: {failed}",
        headers={"Retry-After": "5"},
        checks=checks,
    )


def _checks(services: Services) -> dict[str, str]:
    checks = {}
    for name, probe in (("database", services.db.ping), ("blobs", services.blobs.check_writable)):
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 (reported, not raised)
            checks[name] = f"error: {type(exc).__name__}"
    return checks


@router.get(
    "/v1/version",
    operation_id="version",
    response_model=Version,
    summary="API and service versions, supported job types and formats",
)
async def version(services: ServicesDep) -> dict:
    try:
        service_version = importlib.metadata.version("gif-service")
    except importlib.metadata.PackageNotFoundError:
        service_version = "unknown"
    return {
        "api": "v1",
        "service_version": service_version,
        "mode": "distributed" if services.settings.distributed else "embedded",
        "job_types": list(specs.JOB_TYPES),
        "architectures": list(specs.ARCHS),
        "methods": list(specs.METHODS),
        "solvers": list(specs.SOLVERS),
        "selection_strategies": list(specs.STRATEGIES),
        "artifact_kinds": list(UPLOAD_KINDS),
        "checkpoint_formats": ["safetensors", "pt"],
        "dataset_formats": ["safetensors", "npz"],
    }


@router.get("/metrics", summary="Prometheus metrics (needs an admin key)", include_in_schema=False)
async def metrics(services: ServicesDep, _admin: AdminDep) -> Response:
    return Response(services.metrics.render(), media_type=CONTENT_TYPE)
