"""``/v1/uploads``: resumable upload sessions (create, send parts, read, complete, abort)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from jobs import artifacts, upload_sessions
from jobs.errors import DomainError

from ..deps import JsonBody, ServicesDep, TenantDep
from ..openapi import links_by_id
from ..schemas import Artifact as ArtifactBody
from ..schemas import CompleteUpload, NewUpload, problems
from ..schemas import PartUrl as PartUrlBody
from ..schemas import Upload as UploadBody
from ..schemas import UploadPart as UploadPartBody
from ..upload_body import CLOSE, RAW, declared_sha256, read_body, require_raw, sanitize_filename
from .artifacts import stored_response

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])

UploadId = Annotated[str, Path(description="The session's id (`upl_…`).")]
PartNumber = Annotated[
    int, Path(ge=1, le=upload_sessions.MAX_PARTS, description="1 to the session's part_count.")
]
_PART_BODY = {
    "parameters": [
        {"name": "X-Part-SHA256", "in": "header", "required": False,
         "description": "The part's SHA-256 (hex): a different part is refused with 422 `digest-mismatch`.",
         "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
    ],
    "requestBody": {"required": True, "content": {RAW: {"schema": {"type": "string", "format": "binary"}}}},
}  # fmt: skip


@router.post(
    "",
    status_code=201,
    operation_id="createUpload",
    response_model=UploadBody,
    summary="Start a resumable upload of a large file",
    description="Declare the file's kind, size and SHA-256; send its parts with `PUT /v1/uploads/{id}/parts/{n}` "
    "(any order, in parallel, resending any that failed) and finish with `POST /v1/uploads/{id}/complete`. "
    "`part_size` is in the answer; the session expires after `GIF_UPLOAD_SESSION_SECONDS`.",
    responses={
        201: {
            "headers": {"Location": {"schema": {"type": "string"}}},
            "links": links_by_id("upload_id", "getUpload", "uploadPart", "completeUpload", "abortUpload"),
        },
        **problems(400, 401, 413, 415, 422),
    },
)
def create_upload(body: NewUpload, services: ServicesDep, tenant: TenantDep, _json: JsonBody) -> JSONResponse:
    upload = upload_sessions.create(
        services.db, services.blobs, services.settings, tenant,
        kind=body.kind, size_bytes=body.size_bytes, sha256=body.sha256, filename=sanitize_filename(body.filename),
    )  # fmt: skip
    services.metrics.upload_sessions.labels("created").inc()
    return JSONResponse(
        upload_sessions.view(upload, []), status_code=201, headers={"Location": f"/v1/uploads/{upload.id}"}
    )


@router.put(
    "/{upload_id}/parts/{number}",
    operation_id="uploadPart",
    response_model=UploadPartBody,
    summary="Send (or resend) one part",
    description="The raw bytes of part `number` (`application/octet-stream`, or no Content-Type): exactly "
    "`part_size` bytes, the last part the rest.",
    openapi_extra=_PART_BODY,
    responses=problems(400, 401, 404, 409, 410, 413, 415, 422, 503, 507),
)
async def put_part(
    upload_id: UploadId, number: PartNumber, request: Request, services: ServicesDep, tenant: TenantDep
) -> JSONResponse:
    try:  # refused before a byte of the body is read: the connection cannot carry another request
        require_raw(request.headers)
        upload = await run_in_threadpool(upload_sessions.open_session, services.db, tenant, upload_id)
        limit = upload_sessions.expected_part_size(upload, number)
        declared = declared_sha256(request.headers, request.headers.get("x-part-sha256"))
    except DomainError as exc:
        exc.headers = {**exc.headers, **CLOSE}
        raise
    staged = await read_body(request, services.blobs, limit)
    part = await run_in_threadpool(
        upload_sessions.put_part, services.db, services.blobs, tenant, upload_id, number, staged, declared
    )
    return JSONResponse({"number": part.number, "size_bytes": part.size_bytes, "sha256": part.sha256})


@router.get(
    "/{upload_id}/parts/{number}/url",
    operation_id="getUploadPartUrl",
    response_model=PartUrlBody,
    summary="A presigned URL for one part of a direct session",
    description="Direct sessions (`direct: true`: blobs in a bucket and `GIF_S3_PRESIGN_SECONDS`): PUT the "
    "part's bytes to `url`, with no Authorization header, before `expires_at`; the bytes never pass through "
    "the API. 409 `upload-not-direct` for a session that takes its parts at `PUT /v1/uploads/{id}/parts/{n}`.",
    responses=problems(401, 404, 409, 410, 422),
)
def get_part_url(
    upload_id: UploadId, number: PartNumber, services: ServicesDep, tenant: TenantDep
) -> JSONResponse:
    seconds = services.settings.s3_presign_seconds
    return JSONResponse(
        upload_sessions.part_url(services.db, services.blobs, seconds, tenant, upload_id, number)
    )


@router.get(
    "/{upload_id}",
    operation_id="getUpload",
    response_model=UploadBody,
    summary="A session: which parts arrived, its status, the artifact once completed",
    responses=problems(401, 404),
)
def get_upload(upload_id: UploadId, services: ServicesDep, tenant: TenantDep) -> JSONResponse:
    return JSONResponse(
        upload_sessions.view(*upload_sessions.get(services.db, services.blobs, tenant, upload_id))
    )


@router.post(
    "/{upload_id}/complete",
    status_code=201,
    operation_id="completeUpload",
    response_model=ArtifactBody,
    summary="Assemble the parts and store the artifact",
    description="Checks that every part arrived and that the assembled file has the declared SHA-256, then "
    "inspects and stores it like a single-shot upload: 201 with the artifact (200 when the tenant already "
    "had it). A digest mismatch leaves the session open (resend the parts whose sha256 differs); a file that "
    "is not a valid artifact ends it `failed`.",
    responses={
        200: {"model": ArtifactBody, "description": "The tenant already had this file."},
        **problems(400, 401, 404, 409, 410, 413, 415, 422, 503, 507),
    },
)
def complete_upload(
    upload_id: UploadId,
    services: ServicesDep,
    tenant: TenantDep,
    body: Annotated[CompleteUpload | None, Body()] = None,
) -> JSONResponse:
    try:
        artifact, created = upload_sessions.complete(
            services.db, services.blobs, services.inspector, tenant, upload_id, body.parts if body else None,
            artifacts.expiry(services.settings.upload_ttl_seconds),
        )  # fmt: skip
    except Exception:
        services.metrics.upload_sessions.labels("refused").inc()
        raise
    services.metrics.upload_sessions.labels("completed").inc()
    return stored_response(artifact, created)


@router.delete(
    "/{upload_id}",
    status_code=204,
    operation_id="abortUpload",
    summary="Abort a session and delete its parts",
    responses=problems(401, 404, 409),
)
def abort_upload(upload_id: UploadId, services: ServicesDep, tenant: TenantDep) -> Response:
    upload_sessions.abort(services.db, services.blobs, tenant, upload_id)
    return Response(status_code=204)
