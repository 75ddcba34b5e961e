"""``/v1/jobs``: submit (202 + Location + Retry-After, Idempotency-Key), read, list, events, cancel."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from jobs import idempotency, ids, store
from jobs.errors import NotFound
from jobs.models import Job
from jobs.specs import EXAMPLES, JobSpec
from jobs.states import JobStatus, is_terminal
from jobs.submit import submit_job
from jobs.views import event_view, job_view, list_view, parse_event_id

from ..deps import JsonBody, ServicesDep, TenantDep
from ..openapi import links_by_id
from ..schemas import Job as JobBody
from ..schemas import JobEventList, JobList, problems

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

#: The largest event sequence number the job_events table can hold (a 32-bit INTEGER).
MAX_EVENT_SEQ = 2**31 - 1

#: Polling hints by status, in seconds (embedded-mode jobs take seconds to minutes).
RETRY_AFTER = {"validating": 2, "queued": 5, "running": 5, "cancelling": 2}


def _etag(job: Job) -> str:
    """Changes with every transition (version) and every progress write (updated_at)."""
    token = hashlib.sha256(f"{job.version}:{job.updated_at.isoformat()}".encode()).hexdigest()[:16]
    return f'"{token}"'


def _headers(status: str) -> dict[str, str]:
    return {} if is_terminal(status) else {"Retry-After": str(RETRY_AFTER[status])}


def _job_id(job_id: str) -> str:
    """A path's job id; one that cannot be an id is not found, without asking the database
    (PostgreSQL refuses strings with NUL characters, for one)."""
    if not ids.is_valid("job", job_id):
        raise NotFound(f"job {job_id!r} not found")
    return job_id


_STRING = {"schema": {"type": "string"}}
_RETRY_AFTER = {"description": "Seconds until polling again is useful (absent once terminal).", **_STRING}
#: From a job's body to what can be done with it (OpenAPI links: clients, stateful tests).
_LINKS = {
    **links_by_id("job_id", "getJob", "listJobEvents", "cancelJob"),
    "GetFirstResultArtifact": {
        "operationId": "getArtifact",
        "parameters": {"artifact_id": "$response.body#/result/artifacts/0/id"},
        "description": "Once succeeded: the first result artifact.",
    },
}


@router.post(
    "",
    status_code=202,
    operation_id="submitJob",
    response_model=JobBody,
    summary="Submit a job (remove, relabel or scores)",
    responses={
        202: {
            "description": "Accepted; poll the Location.",
            "headers": {
                "Location": {"description": "The job's URL.", "required": True, **_STRING},
                "Retry-After": {**_RETRY_AFTER, "required": True},
                "Idempotent-Replayed": {
                    "description": "`true` when an earlier request's job is returned.",
                    **_STRING,
                },
            },
            "links": _LINKS,
        },
        **problems(400, 401, 409, 413, 415, 422, 503),
    },
)
async def create_job(
    request: Request,
    services: ServicesDep,
    tenant: TenantDep,
    _json: JsonBody,
    spec: Annotated[JobSpec, Body(openapi_examples=EXAMPLES)],
    idempotency_key: Annotated[
        str | None,
        Header(
            description="Replays return the same job; reuse with another body is 422.",
            pattern=idempotency.HEADER_PATTERN,
        ),
    ] = None,
) -> JSONResponse:
    key = idempotency.normalize_key(idempotency_key) if idempotency_key is not None else None
    fingerprint = idempotency.fingerprint("POST", "/v1/jobs", json.loads(await request.body()))
    executor = request.app.state.executor
    if executor is not None:
        await run_in_threadpool(executor.check_accepting)
    submission = await run_in_threadpool(
        submit_job,
        services.db,
        services.settings,
        tenant,
        spec,
        fingerprint=fingerprint,
        idempotency_key=key,
        inspector=services.inspector,
    )
    job = submission.job
    if executor is not None and not submission.replayed:
        await run_in_threadpool(executor.submitted, job.id)
    headers = {"Location": f"/v1/jobs/{job.id}", "Retry-After": str(RETRY_AFTER.get(job.status, 5))}
    if submission.replayed:
        headers["Idempotent-Replayed"] = "true"
    else:
        services.metrics.jobs_submitted.labels(job.type).inc()
    return JSONResponse(job_view(job), status_code=202, headers=headers)


@router.get(
    "",
    operation_id="listJobs",
    response_model=JobList,
    summary="List jobs, newest first (cursor pagination)",
    responses={
        200: {
            "links": {
                "GetFirstJob": {
                    "operationId": "getJob",
                    "parameters": {"job_id": "$response.body#/data/0/id"},
                },
            }
        },
        **problems(401, 422),
    },
)
def list_jobs(
    services: ServicesDep,
    tenant: TenantDep,
    after: Annotated[
        str | None,
        Query(description="Id of the last job of the previous page.", pattern=ids.pattern("job")),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    status: Annotated[JobStatus | None, Query()] = None,
) -> JSONResponse:
    with services.db.read() as session:
        page = store.list_jobs(
            session, tenant, after=after, limit=limit, status=status.value if status else None
        )
        return JSONResponse(list_view([job_view(job) for job in page.data], page.has_more))


@router.get(
    "/{job_id}",
    operation_id="getJob",
    response_model=JobBody,
    summary="Read a job: status, progress, result or error",
    responses={
        200: {
            "headers": {
                "ETag": {"description": "Changes with every transition and progress write.", "required": True,
                         **_STRING},
                "Retry-After": _RETRY_AFTER,
            },
            "links": _LINKS,
        },
        **problems(401, 404),
    },
)  # fmt: skip
def get_job(job_id: str, services: ServicesDep, tenant: TenantDep) -> JSONResponse:
    with services.db.read() as session:
        job = store.require_job(session, tenant, _job_id(job_id))
    return JSONResponse(job_view(job), headers={**_headers(job.status), "ETag": _etag(job)})


@router.get(
    "/{job_id}/events",
    operation_id="listJobEvents",
    response_model=JobEventList,
    summary="A job's events, oldest first",
    responses={
        200: {
            "links": {
                "NextPage": {
                    "operationId": "listJobEvents",
                    "parameters": {"job_id": "$request.path.job_id", "after": "$response.body#/last_id"},
                }
            }
        },
        **problems(401, 404, 422),
    },
)
def list_events(
    job_id: str,
    services: ServicesDep,
    tenant: TenantDep,
    after: Annotated[
        str | None, Query(description="Id of the last event already seen.", pattern=r"^evt_[0-9]{1,18}$")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JSONResponse:
    # no event is numbered past the column's range (32 bits on PostgreSQL, which refuses to
    # compare with a bigger number): such a cursor is past the last event
    cursor = min(parse_event_id(after), MAX_EVENT_SEQ) if after is not None else None
    with services.db.read() as session:
        page = store.list_events(session, tenant, _job_id(job_id), after=cursor, limit=limit)
        return JSONResponse(list_view([event_view(event) for event in page.data], page.has_more))


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    operation_id="cancelJob",
    response_model=JobBody,
    summary="Request cancellation (idempotent)",
    responses={
        202: {"headers": {"Retry-After": _RETRY_AFTER}, "links": _LINKS},
        **problems(401, 404, 409),
    },
)
def cancel_job(job_id: str, services: ServicesDep, tenant: TenantDep) -> JSONResponse:
    with services.db.begin() as session:
        job = store.request_cancel(session, tenant, _job_id(job_id))
    return JSONResponse(job_view(job), status_code=202, headers=_headers(job.status))
