"""``/v1/artifacts``: upload (multipart, streamed), metadata, download, delete."""

from __future__ import annotations

import base64
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse

from jobs import artifacts, uploads
from jobs.errors import DomainError, NotFound
from jobs.models import Artifact
from jobs.views import artifact_view

from ..deps import Services, ServicesDep, TenantDep
from ..multipart import read_upload, sanitize_filename
from ..schemas import problems

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])

_UPLOAD_BODY = {
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
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=201,
    summary="Upload a checkpoint or a dataset",
    description="multipart/form-data with a `file` part and a `kind` field (`checkpoint` | `dataset`). "
    "Checkpoints: safetensors, or a `.pt` state dict (converted to safetensors). Datasets: safetensors "
    "or `.npz` with `inputs` and `labels`. 201 for a new artifact, 200 when the tenant already has it.",
    openapi_extra=_UPLOAD_BODY,
    responses={
        200: {"description": "The tenant already had this file (dedup)."},
        **problems(401, 413, 415, 422),
    },
)
async def upload(request: Request, services: ServicesDep, tenant: TenantDep) -> JSONResponse:
    form = await read_upload(request, services.blobs, services.settings.max_upload_bytes)
    kind = form.fields.get("kind", "")
    try:
        artifact, created = await run_in_threadpool(
            uploads.store_upload,
            services.db,
            services.blobs,
            services.settings,
            tenant,
            form.staged,
            kind,
            form.filename,
        )
    except DomainError as exc:
        services.metrics.uploads_rejected.labels(exc.code).inc()
        raise
    if created:
        services.metrics.artifact_bytes.labels(kind).inc(artifact.size_bytes)
    return JSONResponse(
        artifact_view(artifact),
        status_code=201 if created else 200,
        headers={"Location": f"/v1/artifacts/{artifact.id}"},
    )


@router.get("/{artifact_id}", summary="Artifact metadata", responses=problems(401, 404))
def get_artifact(artifact_id: str, services: ServicesDep, tenant: TenantDep) -> JSONResponse:
    artifact = _require(services, tenant, artifact_id)
    return JSONResponse(artifact_view(artifact), headers={"ETag": _etag(artifact)})


@router.get(
    "/{artifact_id}/content",
    summary="Download the artifact's bytes",
    response_class=FileResponse,
    responses={304: {"description": "Not modified"}, **problems(401, 404)},
)
def download(
    artifact_id: str,
    services: ServicesDep,
    tenant: TenantDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    artifact = _require(services, tenant, artifact_id)
    etag = _etag(artifact)
    if if_none_match is not None and etag in [t.strip() for t in if_none_match.split(",")]:
        return Response(status_code=304, headers={"ETag": etag})
    digest = base64.b64encode(bytes.fromhex(artifact.sha256)).decode()
    return FileResponse(
        services.blobs.path(artifact.sha256),
        media_type=artifact.content_type,
        headers={
            "ETag": etag,
            "Content-Digest": f"sha-256=:{digest}:",
            "Content-Disposition": _disposition(artifact),
        },
    )


@router.delete(
    "/{artifact_id}", status_code=204, summary="Delete an artifact", responses=problems(401, 404, 409)
)
def delete_artifact(artifact_id: str, services: ServicesDep, tenant: TenantDep) -> Response:
    uploads.delete(services.db, services.blobs, tenant, artifact_id)
    return Response(status_code=204)


def _require(services: Services, tenant: str, artifact_id: str) -> Artifact:
    with services.db.read() as session:
        artifact = artifacts.get_artifact(session, tenant, artifact_id)
    if artifact is None:
        raise NotFound(f"artifact {artifact_id!r} not found")
    return artifact


def _etag(artifact: Artifact) -> str:
    return f'"sha256:{artifact.sha256}"'


def _disposition(artifact: Artifact) -> str:
    """RFC 6266 ``filename*`` with a sanitised name (default: the id and format)."""
    name = sanitize_filename(artifact.filename) or f"{artifact.id}.{artifact.format}"
    return f"attachment; filename*=UTF-8''{quote(name, safe='')}"
