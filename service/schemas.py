"""Response shapes for the OpenAPI document (the handlers return plain JSON built by ``jobs.views``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from jobs.artifacts import ResultKind, UploadKind
from jobs.specs import JOB_TYPES
from jobs.states import JobStatus


class Problem(BaseModel):
    """RFC 9457 problem details; every error response has this shape."""

    type: str = Field(examples=["urn:gif-service:problem:validation-error"])
    title: str
    status: int
    detail: str
    instance: str | None = None
    code: str = Field(description="Stable machine-readable error code.", examples=["validation-error"])
    request_id: str | None = None
    errors: list[dict[str, Any]] | None = Field(None, description="Validation failures: {loc, msg, type}.")


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries documenting problem+json errors (an authenticated route, one that
    can answer 401, can also answer 429 when the tenant is over its request rate)."""
    if 401 in statuses and 429 not in statuses:
        statuses = (*statuses, 429)
    return {
        status: {
            "model": Problem,
            "content": {"application/problem+json": {}},
            "description": "Problem details",
        }
        for status in statuses
    }


# Success bodies: documentation of what ``jobs.views`` and the probes build (tests/service/
# test_contract_fuzz.py checks that real responses conform). Open models: a new field is an
# addition, not a break, and FastAPI's response filtering (for the handlers that return a dict
# rather than a JSONResponse) keeps it.


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


_ID = {"artifact": r"^art_[0-9A-HJKMNP-TV-Z]{26}$", "job": r"^job_[0-9A-HJKMNP-TV-Z]{26}$"}
_TIMESTAMP = Field(description="RFC 3339, UTC.", examples=["2026-11-29T10:15:02.123456Z"])
_OPTIONAL_TIMESTAMP = Field(None, description="RFC 3339, UTC; null until it happened.")


class ArtifactLinks(_Open):
    self: str
    content: str


class Artifact(_Open):
    """An uploaded checkpoint or dataset, or a file a job produced."""

    id: str = Field(pattern=_ID["artifact"])
    object: Literal["artifact"]
    kind: Literal[UploadKind, ResultKind]
    format: str = Field(examples=["safetensors"])
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Digest of the stored bytes.")
    size_bytes: int = Field(ge=0)
    content_type: str
    filename: str | None = Field(description="The client's file name, sanitised (metadata only).")
    created_at: str = _TIMESTAMP
    job_id: str | None = Field(description="The job that produced it (result artifacts).")
    expires_at: str | None = Field(
        None, description="RFC 3339: when retention ends (then 410 gone); null: kept until deleted."
    )
    metadata: dict[str, Any] = Field(
        description="Datasets: n_samples, input_shape, label_counts…; checkpoints: tensor names and shapes."
    )
    links: ArtifactLinks


class NewUpload(BaseModel):
    """A resumable upload session for a file too big for one request."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    kind: UploadKind
    size_bytes: int = Field(ge=1, validation_alias=AliasChoices("size_bytes", "bytes"),
                            description="The whole file's size (`bytes` is accepted too).")  # fmt: skip
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="The whole file's SHA-256, checked at completion."
    )
    filename: str | None = Field(None, max_length=1024, description="Display name (metadata only).")


class CompleteUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parts: list[int] | None = Field(
        None, max_length=10_000, description="Optional: every part number, 1 to N."
    )


class UploadPart(_Open):
    number: int = Field(ge=1)
    size_bytes: int = Field(ge=0)
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="Parts sent through the API.")
    etag: str | None = Field(None, description="Parts of a direct session: the bucket's ETag.")


class PartUrl(_Open):
    """Where to send a part of a direct session: PUT the bytes there, without credentials."""

    number: int = Field(ge=1)
    method: Literal["PUT"]
    url: str
    size_bytes: int = Field(ge=0, description="The part's exact size.")
    expires_at: str = _TIMESTAMP


class Upload(_Open):
    """A resumable upload session: which parts arrived, and the artifact once completed."""

    id: str = Field(pattern=r"^upl_[0-9A-HJKMNP-TV-Z]{26}$")
    object: Literal["upload"]
    status: Literal["open", "completing", "completed", "failed", "aborted", "expired"]
    kind: UploadKind
    filename: str | None
    size_bytes: int = Field(ge=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    part_size: int = Field(ge=1, description="Every part but the last has exactly this size.")
    part_count: int = Field(ge=1)
    max_parts: int
    direct: bool = Field(description="Parts go straight to the bucket: ask `parts/{number}/url` for each.")
    received_bytes: int = Field(ge=0)
    parts: list[UploadPart]
    missing_parts: list[int] = Field(description="Part numbers not received yet (the first 1000).")
    created_at: str = _TIMESTAMP
    expires_at: str = _TIMESTAMP
    artifact_id: str | None = Field(description="Once completed: the stored artifact.")
    error: dict[str, Any] | None = Field(description="Once failed: why the file was refused.")
    links: dict[str, str]


class JobLinks(_Open):
    self: str
    events: str
    cancel: str


class WebhookAttempt(_Open):
    """One attempt to deliver one event (a delivery's ``id`` is its ``webhook-id`` header)."""

    id: str = Field(pattern=r"^msg_[0-9A-HJKMNP-TV-Z]{26}$")
    type: Literal["job.succeeded", "job.failed", "job.cancelled", "job.progress"]
    attempt: int = Field(ge=1)
    at: str = _TIMESTAMP
    status_code: int | None = Field(description="The receiver's HTTP status (null: no response).")
    error: str | None = Field(description="Why the attempt failed (null: delivered).")


class JobWebhook(_Open):
    url: str
    events: list[Literal["completed", "progress"]]
    deliveries: list[WebhookAttempt] = Field(description="Attempts, oldest first (the latest 50).")


class JobEstimate(_Open):
    """What the job is likely to cost: the median of the tenant's succeeded jobs of the same type,
    inputs and options (whatever samples they edited), the most recent ones first."""

    seconds: float = Field(ge=0, description="Median wall time, started to finished.")
    based_on: int = Field(ge=1, description="How many earlier jobs it rests on (at most 20).")
    work: dict[str, float] | None = Field(
        None, description="Median work of those jobs' reports: gradients, hvps, forward_evaluations."
    )


class Job(_Open):
    """A job and everything known about it; ``result`` once succeeded, ``error`` once failed."""

    id: str = Field(pattern=_ID["job"])
    object: Literal["job"]
    type: Literal[JOB_TYPES]  # type: ignore[valid-type]
    status: JobStatus
    created_at: str = _TIMESTAMP
    validated_at: str | None = _OPTIONAL_TIMESTAMP
    started_at: str | None = _OPTIONAL_TIMESTAMP
    cancel_requested_at: str | None = _OPTIONAL_TIMESTAMP
    finished_at: str | None = _OPTIONAL_TIMESTAMP
    attempt: int = Field(ge=0)
    max_attempts: int = Field(ge=1)
    inputs: dict[str, Any] = Field(description="Digests of the input artifacts.")
    request: dict[str, Any] = Field(description="The request, long index lists replaced by count + digest.")
    progress: dict[str, Any] | None = Field(
        description="{stage, fraction, step, total_steps, message, updated_at} while running."
    )
    result: dict[str, Any] | None = Field(description="{artifacts, summary, provenance} once succeeded.")
    error: dict[str, Any] | None = Field(description="{code, message, …} once failed.")
    webhook: JobWebhook | None = Field(None, description="The request's webhook and its delivery attempts.")
    estimate: JobEstimate | None = Field(
        None,
        description="What the job is likely to cost, from the tenant's jobs like it; null before the first.",
    )
    links: JobLinks


class JobEvent(_Open):
    id: str = Field(pattern=r"^evt_[0-9]+$")
    object: Literal["job.event"]
    created_at: str = _TIMESTAMP
    type: str = Field(examples=["job.created"])
    level: str = Field(examples=["info"])
    message: str
    data: dict[str, Any] | None


class JobList(_Open):
    """A page of jobs, newest first; pass ``last_id`` as ``after`` for the next one."""

    object: Literal["list"]
    data: list[Job]
    first_id: str | None
    last_id: str | None
    has_more: bool


class JobEventList(_Open):
    """A page of events, oldest first; pass ``last_id`` as ``after`` for the next one."""

    object: Literal["list"]
    data: list[JobEvent]
    first_id: str | None
    last_id: str | None
    has_more: bool


class Liveness(_Open):
    status: Literal["ok"]


class Readiness(_Open):
    status: Literal["ok"]
    checks: dict[str, str]
    executor: dict[str, Any]


class Version(_Open):
    api: str
    service_version: str
    mode: str
    job_types: list[str]
    architectures: list[str]
    methods: list[str]
    solvers: list[str]
    selection_strategies: list[str]
    artifact_kinds: list[str]
    checkpoint_formats: list[str]
    dataset_formats: list[str]


class WebhookSecret(_Open):
    """Verify deliveries with it (Standard Webhooks; e.g. the `standardwebhooks` package)."""

    object: Literal["webhook_secret"]
    secret: str = Field(pattern=r"^whsec_[A-Za-z0-9+/=]+$")
    created_at: str = _TIMESTAMP
    previous_secret_expires_at: str | None = Field(
        description="After a rotation: until when deliveries are also signed with the former secret."
    )
