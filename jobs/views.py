"""Public JSON shapes of jobs, artifacts and events (what the API returns)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .artifacts import metadata
from .clock import rfc3339, utcnow
from .errors import ValidationFailed
from .models import Artifact, Job, JobEvent
from .states import JobStatus


def job_view(job: Job) -> dict[str, Any]:
    status = JobStatus(job.status)
    return {
        "id": job.id,
        "object": "job",
        "type": job.type,
        "status": status.value,
        "created_at": rfc3339(job.created_at),
        "validated_at": rfc3339(job.validated_at),
        "started_at": rfc3339(job.started_at),
        "cancel_requested_at": rfc3339(job.cancel_requested_at),
        "finished_at": rfc3339(job.finished_at),
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "inputs": json.loads(job.inputs_json or "{}"),
        "request": request_summary(json.loads(job.request_json)),
        "progress": json.loads(job.progress_json) if job.progress_json else None,
        "result": _result(job) if status is JobStatus.SUCCEEDED else None,
        "error": json.loads(job.error_json) if status is JobStatus.FAILED and job.error_json else None,
        "webhook": json.loads(job.webhook_json) if job.webhook_json else None,
        "estimate": json.loads(job.estimate_json) if job.estimate_json else None,
        "links": {
            "self": f"/v1/jobs/{job.id}",
            "events": f"/v1/jobs/{job.id}/events",
            "cancel": f"/v1/jobs/{job.id}/cancel",
        },
    }


def _result(job: Job) -> dict[str, Any] | None:
    """The stored result, with ``expired: true`` once its artifacts' retention has passed."""
    if not job.result_json:
        return None
    result = json.loads(job.result_json)
    expiries = [entry.get("expires_at") for entry in result.get("artifacts", [])]
    if expiries and all(expiries):
        result["expires_at"] = min(expiries)
        result["expired"] = result["expires_at"] <= rfc3339(utcnow())
    return result


def request_summary(request: dict[str, Any]) -> dict[str, Any]:
    """The request as stored, with long index/label lists replaced by a count and a digest."""
    out = dict(request)
    forget = out.get("forget")
    if isinstance(forget, dict):
        out["forget"] = {k: _digest(v) if k in ("indices", "ids") else v for k, v in forget.items()}
    relabel = out.get("relabel")
    if isinstance(relabel, dict):
        out["relabel"] = {k: _digest(v) if isinstance(v, list) else v for k, v in relabel.items()}
    return out


def _digest(values: list[int]) -> dict[str, Any]:
    encoded = json.dumps(values, separators=(",", ":")).encode()
    return {"count": len(values), "sha256": hashlib.sha256(encoded).hexdigest()}


def artifact_view(artifact: Artifact) -> dict[str, Any]:
    return {
        "id": artifact.id,
        "object": "artifact",
        "kind": artifact.kind,
        "format": artifact.format,
        "sha256": artifact.sha256,
        "size_bytes": artifact.size_bytes,
        "content_type": artifact.content_type,
        "filename": artifact.filename,
        "created_at": rfc3339(artifact.created_at),
        "job_id": artifact.job_id,
        "expires_at": rfc3339(artifact.expires_at),
        "metadata": metadata(artifact),
        "links": {"self": f"/v1/artifacts/{artifact.id}", "content": f"/v1/artifacts/{artifact.id}/content"},
    }


def result_artifact_entry(artifact: Artifact) -> dict[str, Any]:
    """An artifact as listed in ``job.result.artifacts``."""
    return {
        "id": artifact.id,
        "kind": artifact.kind,
        "format": artifact.format,
        "sha256": artifact.sha256,
        "size_bytes": artifact.size_bytes,
        "expires_at": rfc3339(artifact.expires_at),
        "download_url": f"/v1/artifacts/{artifact.id}/content",
    }


def event_id(seq: int) -> str:
    return f"evt_{seq:012d}"


def parse_event_id(value: str) -> int:
    if not value.startswith("evt_") or not (value[4:].isascii() and value[4:].isdigit()):
        raise ValidationFailed.one(["query", "after"], f"not an event id: {value!r}")
    return int(value[4:])


def event_view(event: JobEvent) -> dict[str, Any]:
    return {
        "id": event_id(event.seq),
        "object": "job.event",
        "created_at": rfc3339(event.created_at),
        "type": event.type,
        "level": event.level,
        "message": event.message,
        "data": json.loads(event.data_json) if event.data_json else None,
    }


def list_view(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
