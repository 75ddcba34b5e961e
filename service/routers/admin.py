"""Administrators' routes (keys of ``GIF_ADMIN_TENANTS``; others get 403): the terminate
backstop for a job that ignores its cancellation (workers/terminate.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from jobs import ids, store
from jobs.errors import JobNotTerminable, NotFound, ServiceUnavailable
from jobs.views import job_view

from ..deps import AdminDep, ServicesDep

router = APIRouter(prefix="/v1/admin", tags=["admin"], include_in_schema=False)


@router.post(
    "/jobs/{job_id}/terminate",
    status_code=202,
    summary="Kill the process of a job that ignores its cancellation",
)
async def terminate_job(
    job_id: str, request: Request, services: ServicesDep, _admin: AdminDep
) -> JSONResponse:
    """202 with the job (now ``cancelled``) once its worker process was killed; 409
    ``job-not-terminable`` when the job is not ``cancelling`` or its grace period
    (``GIF_CANCEL_GRACE_SECONDS``) has not passed, or when no worker holds it any more."""
    if not ids.is_valid("job", job_id):
        raise NotFound(f"job {job_id!r} not found")
    with services.db.read() as session:
        lease = store.terminable(session, job_id, services.settings.cancel_grace_seconds)
    executor = request.app.state.executor
    if executor is None:
        raise ServiceUnavailable("no executor runs in this API process", headers={"Retry-After": "60"})
    pid = await run_in_threadpool(executor.terminate, lease)
    if pid is None:
        raise JobNotTerminable(f"no worker process holds job {job_id} any more (it may have just stopped)")
    with services.db.read() as session:
        job = store.require_job(session, lease.tenant_id, job_id)
    return JSONResponse({**job_view(job), "terminated_pid": pid}, status_code=202)
