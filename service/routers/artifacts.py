"""``/v1/artifacts``: upload (multipart or raw body, streamed), metadata, download, delete."""

from __future__ import annotations

import base64
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable

from jobs import artifacts, ids, uploads
from jobs.clock import rfc3339
from jobs.errors import DomainError, Gone, NotFound
from jobs.models import Artifact
from jobs.views import artifact_view

from ..deps import Services, ServicesDep, TenantDep
from ..errors import ProblemError
from ..openapi import links_by_id
from ..schemas import Artifact as ArtifactBody
from ..schemas import problems
from ..upload_body import RAW, declared_sha256, read_upload, sanitize_filename

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])

_SHA256_HEX = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_UPLOAD_BODY = {
    "parameters": [
        {"name": "X-Artifact-Kind", "in": "header", "required": False,
         "description": "Raw-body uploads: `checkpoint`, `dataset` or `program` (or the `kind` query parameter).",
         "schema": {"type": "string", "enum": list(artifacts.UPLOAD_KINDS)}},
        {"name": "kind", "in": "query", "required": False, "description": "Raw-body uploads: as `X-Artifact-Kind`.",
         "schema": {"type": "string", "enum": list(artifacts.UPLOAD_KINDS)}},
        {"name": "X-Content-SHA256", "in": "header", "required": False,
         "description": "The SHA-256 the client computed (hex); a different upload is refused with 422 "
         "`digest-mismatch` and nothing is stored. `Repr-Digest: sha-256=:<base64>:` (RFC 9530) works too.",
         "schema": _SHA256_HEX},
    ],
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "kind"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "kind": {"type": "string", "enum": list(artifacts.UPLOAD_KINDS)},
                        "sha256": {**_SHA256_HEX, "description": "As the X-Content-SHA256 header."},
                    },
                }
            },
            RAW: {"schema": {"type": "string", "format": "binary"}},
        },
    },
}  # fmt: skip

#: From an artifact's body to what can be done with it (OpenAPI links: clients, stateful tests).
_LINKS = {
    **links_by_id("artifact_id", "getArtifact", "downloadArtifact", "deleteArtifact"),
    "UseAsTrainingSet": {
        "operationId": "submitJob",
        "requestBody": {"train": "$response.body#/id"},
        "description": "A dataset's id as the `train` of a job (the rest of the body as usual).",
    },
}
_STRING = {"schema": {"type": "string"}}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_CONTENT: dict[str, dict[str, Any]] = {  # what downloads are served as (jobs.artifacts.CONTENT_TYPES)
    content_type: ({"schema": {}} if content_type == "application/json" else _BINARY)
    for content_type in sorted(set(artifacts.CONTENT_TYPES.values()))
}
_DOWNLOAD_HEADERS = {
    "ETag": {"description": '`"sha256:<hex>"`', "required": True, **_STRING},
    "Content-Digest": {"description": "RFC 9530 `sha-256=:<base64>:`", "required": True, **_STRING},
}


@router.post(
    "",
    status_code=201,
    operation_id="uploadArtifact",
    response_model=ArtifactBody,
    summary="Upload a checkpoint, a dataset or an exported program",
    description="multipart/form-data with a `file` part and a `kind` field (`checkpoint` | `dataset` | "
    "`program`), "
    "or the raw bytes as `application/octet-stream` with `X-Artifact-Kind` (a filename in "
    "`Content-Disposition`). Checkpoints: safetensors, or a `.pt` state dict (converted to "
    "safetensors). Datasets: safetensors or `.npz` with `labels` and either `inputs` or named tensors "
    "(`input_ids`, `attention_mask`, `pixel_values`, ...: keyword arguments of a Hugging Face model). "
    "Programs: the `.pt2` "
    "file of `torch.export.save`, with a dynamic batch dimension (docs/models.md). 201 for a new artifact, "
    "200 when the tenant already has it. Larger files: an upload session (`POST /v1/uploads`).",
    openapi_extra=_UPLOAD_BODY,
    responses={
        201: {
            "description": "A new artifact.",
            "headers": {"Location": {"description": "The artifact's URL.", "required": True, **_STRING}},
            "links": _LINKS,
        },
        200: {
            "model": ArtifactBody,
            "description": "The tenant already had this file (dedup).",
            "links": _LINKS,
        },
        **problems(400, 401, 413, 415, 422, 503, 507),
    },
)
async def upload(request: Request, services: ServicesDep, tenant: TenantDep) -> JSONResponse:
    form = await read_upload(request, services.blobs, services.settings.max_upload_bytes)
    kind = form.fields.get("kind", "")
    try:
        declared = declared_sha256(request.headers, form.fields.get("sha256"))
        artifact, created = await run_in_threadpool(
            uploads.store_upload,
            services.db,
            services.blobs,
            services.inspector,
            tenant,
            form.staged,
            kind,
            form.filename,
            declared,
            artifacts.expiry(services.settings.upload_ttl_seconds),
        )
    except DomainError as exc:
        services.metrics.uploads_rejected.labels(exc.code).inc()
        raise
    if created:
        services.metrics.artifact_bytes.labels(kind).inc(artifact.size_bytes)
    return stored_response(artifact, created)


def stored_response(artifact: Artifact, created: bool) -> JSONResponse:
    """An upload's answer: 201 + ``Location`` for a new artifact, 200 when the tenant had it."""
    return JSONResponse(
        artifact_view(artifact),
        status_code=201 if created else 200,
        headers={"Location": f"/v1/artifacts/{artifact.id}"},
    )


@router.get(
    "/{artifact_id}",
    operation_id="getArtifact",
    response_model=ArtifactBody,
    summary="Artifact metadata",
    responses={
        200: {"headers": {"ETag": _DOWNLOAD_HEADERS["ETag"]}, "links": _LINKS},
        **problems(401, 404, 410),
    },
)
def get_artifact(artifact_id: str, services: ServicesDep, tenant: TenantDep) -> JSONResponse:
    artifact = _require(services, tenant, artifact_id)
    return JSONResponse(artifact_view(artifact), headers={"ETag": _etag(artifact)})


@router.get(
    "/{artifact_id}/content",
    operation_id="downloadArtifact",
    summary="Download the artifact's bytes",
    description="Supports `If-None-Match` (304) and one or several `Range`s (206; 416 past the end).",
    response_class=FileResponse,
    responses={
        200: {"description": "The bytes.", "content": _CONTENT, "headers": _DOWNLOAD_HEADERS},
        206: {
            "description": "The requested range (or `multipart/byteranges` for several).",
            "content": {**dict.fromkeys(_CONTENT, _BINARY), "multipart/byteranges": _BINARY},
        },
        302: {
            "description": "With `GIF_S3_PRESIGN_SECONDS`: the bytes are at `Location`, a presigned URL of the "
            "bucket (send no Authorization header there; `Range` works the same).",
            "headers": {"Location": {"schema": {"type": "string"}}},
        },
        304: {"description": "Not modified (the `If-None-Match` ETag matches)."},
        **problems(400, 401, 404, 410, 416),
    },
)
def download(
    artifact_id: str,
    services: ServicesDep,
    tenant: TenantDep,
    if_none_match: Annotated[str | None, Header()] = None,
    range_: Annotated[
        str | None, Header(alias="Range", description="`bytes=<first>-<last>`, comma-separated; RFC 9110.")
    ] = None,
) -> Response:
    artifact = _require(services, tenant, artifact_id)
    etag = _etag(artifact)
    if if_none_match is not None and etag in [t.strip() for t in if_none_match.split(",")]:
        return Response(status_code=304, headers={"ETag": etag})
    digest = base64.b64encode(bytes.fromhex(artifact.sha256)).decode()
    headers = {"ETag": etag, "Content-Digest": f"sha-256=:{digest}:"}
    if seconds := services.settings.s3_presign_seconds:
        url = services.blobs.presigned_get(
            artifact.sha256,
            seconds=seconds,
            filename=_disposition(artifact),
            content_type=artifact.content_type,
        )
        if url is not None:  # the bucket serves the bytes (and the Range)
            return RedirectResponse(url, status_code=302, headers={**headers, "Cache-Control": "no-store"})
    path = services.blobs.fetch(artifact.sha256)
    if range_ is not None:
        _check_range(range_, path.stat().st_size)
    return FileResponse(
        path,
        media_type=artifact.content_type,
        headers={**headers, "Content-Disposition": _disposition(artifact)},
    )


@router.delete(
    "/{artifact_id}",
    status_code=204,
    operation_id="deleteArtifact",
    summary="Delete an artifact",
    responses=problems(401, 404, 409),
)
def delete_artifact(artifact_id: str, services: ServicesDep, tenant: TenantDep) -> Response:
    uploads.delete(services.db, services.blobs, tenant, _artifact_id(artifact_id))
    return Response(status_code=204)


def _artifact_id(artifact_id: str) -> str:
    """A path's artifact id; one that cannot be an id is not found, without asking the database
    (PostgreSQL refuses strings with NUL characters, for one)."""
    if not ids.is_valid("artifact", artifact_id):
        raise NotFound(f"artifact {artifact_id!r} not found")
    return artifact_id


def _require(services: Services, tenant: str, artifact_id: str) -> Artifact:
    with services.db.read() as session:
        artifact = artifacts.get_artifact(session, tenant, _artifact_id(artifact_id))
    if artifact is None:
        raise NotFound(f"artifact {artifact_id!r} not found")
    if artifacts.is_expired(artifact):
        raise Gone(f"artifact {artifact_id} expired at {rfc3339(artifact.expires_at)} (retention)")
    return artifact


def _check_range(value: str, size: int) -> None:
    """Starlette's FileResponse answers a Range it cannot serve in text/plain; this answers
    problem+json (400 malformed, 416 unsatisfiable) before it gets there, with its own parser."""
    parse = getattr(FileResponse, "_parse_range_header", None)
    if parse is None:  # pragma: no cover (another Starlette)
        return
    try:
        parse(value, size)
    except RangeNotSatisfiable:
        raise ProblemError(
            416, f"range {value!r} starts past the {size} bytes of the file",
            headers={"Content-Range": f"bytes */{size}"},
        ) from None  # fmt: skip
    except MalformedRangeHeader as exc:
        raise ProblemError(400, f"malformed Range header {value!r}: {exc.content}") from None


def _etag(artifact: Artifact) -> str:
    return f'"sha256:{artifact.sha256}"'


def _disposition(artifact: Artifact) -> str:
    """RFC 6266 ``filename*`` with a sanitised name (default: the id and format)."""
    name = sanitize_filename(artifact.filename) or f"{artifact.id}.{artifact.format}"
    return f"attachment; filename*=UTF-8''{quote(name, safe='')}"
