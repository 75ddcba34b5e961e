"""The submit use case: idempotency, validation against the tenant's artifacts, job creation.

Validation at submit (docs/service-design.md, "Validation at submit") uses what was recorded
when the artifacts were uploaded: kinds, dataset sizes, input shapes and label counts. The deep
checks (loading the checkpoint into the architecture, label ranges of the whole dataset) run in
the worker, which fails the job with ``checkpoint_incompatible`` / ``dataset_incompatible`` /
``invalid_input``.
A Hugging Face model is also checked against ``transformers`` before the job is created: its
model type and head, the checkpoint's tensor names and shapes, and the datasets' tensor names
against ``forward``, in the sandboxed inspector (``jobs.inspector``: the API never imports torch or
``transformers``), outside the write transaction; token ids against the vocabulary and labels
against ``num_labels`` from the recorded metadata (``jobs.huggingface``).
In embedded mode a job goes ``validating → queued`` inside the submit transaction (the local
workers load the inputs anyway). In distributed mode it stays ``validating`` until a CPU worker
has loaded the checkpoint into the architecture (``workers.validation``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import artifacts, estimates, huggingface, idempotency, store, webhook_targets
from .config import Settings
from .db import Database
from .errors import IdempotencyKeyInFlight, IdempotencyKeyReused, QueueFull, QuotaExceeded, ValidationFailed
from .inspector import Inspector
from .models import Artifact, Job
from .specs import HuggingFaceModel, ProgramModel, RegistryModel, RelabelJob, RemoveJob, Spec, dump

_DATASET_ROLES = ("train", "validation", "holdout", "queries")


@dataclass
class Submission:
    job: Job
    replayed: bool


def submit_job(
    db: Database,
    settings: Settings,
    tenant_id: str,
    spec: Spec,
    *,
    fingerprint: str,
    idempotency_key: str | None = None,
    inspector: Inspector | None = None,
) -> Submission:
    """Create a queued job, or replay the one an earlier request with the same key created.

    ``inspector`` checks a Hugging Face model's config, checkpoint and tensor names first
    (:func:`preflight`); without one those checks are left to the worker.

    Raises:
        ValidationFailed: an artifact is missing or of the wrong kind, an index or label is out of range.
        IdempotencyKeyReused: the key was used with a different request.
        IdempotencyKeyInFlight: the same request is being processed concurrently.
        InvalidWebhook, WebhookTargetForbidden: the webhook URL (jobs/webhook_targets.py).
    """
    if spec.webhook is not None:  # resolves the host: outside the write transaction
        webhook_targets.check_url(
            spec.webhook.url, webhook_targets.AllowList.parse(settings.webhook_allowed_hosts)
        )
    if inspector is not None and isinstance(spec.model, HuggingFaceModel):
        preflight(db, tenant_id, spec, inspector, idempotency_key)
    try:
        with db.begin() as session:
            if idempotency_key is not None:
                earlier = _replay(session, tenant_id, idempotency_key, fingerprint)
                if earlier is not None:
                    return Submission(earlier, replayed=True)
            job = _create(session, settings, tenant_id, spec, fingerprint)
            if idempotency_key is not None:
                idempotency.remember(
                    session, tenant_id, idempotency_key, fingerprint, job.id, settings.idempotency_ttl_seconds
                )
            return Submission(store.require_job(session, tenant_id, job.id), replayed=False)
    except IntegrityError:
        # Another transaction recorded the same key first (only possible on databases without
        # SQLite's single-writer lock): replay it if it has finished, else report it in flight.
        if idempotency_key is None:
            raise
        with db.read() as session:
            earlier = _replay(session, tenant_id, idempotency_key, fingerprint)
            if earlier is None:
                raise IdempotencyKeyInFlight("a request with this Idempotency-Key is in progress") from None
            return Submission(earlier, replayed=True)


def preflight(
    db: Database, tenant_id: str, spec: Spec, inspector: Inspector, idempotency_key: str | None = None
) -> None:
    """The checks of a Hugging Face model that need ``transformers``, in the sandboxed inspector
    and outside any write transaction (they take seconds). Skipped for a replay (its job exists)
    and when an artifact is missing or of another kind (the submit transaction says so).

    Raises:
        ValidationFailed: an unsupported model type or head, a checkpoint that does not fit,
            tensor names ``forward`` does not take.
    """
    assert isinstance(spec.model, HuggingFaceModel)
    with db.read() as session:
        if (
            idempotency_key is not None
            and idempotency.lookup(session, tenant_id, idempotency_key) is not None
        ):
            return
        checkpoint = _metadata_of(session, tenant_id, spec.model.checkpoint, "checkpoint")
        datasets = {
            role: _metadata_of(session, tenant_id, getattr(spec, role, None), "dataset")
            for role in _DATASET_ROLES
        }
    if checkpoint is None or any(
        meta is None and getattr(spec, role, None) is not None for role, meta in datasets.items()
    ):
        return
    request = huggingface.inspection_request(
        spec.model.config, checkpoint, {role: meta for role, meta in datasets.items() if meta is not None}
    )
    problems = inspector.check_huggingface(request)
    if problems:
        errors = [{**p, "loc": ["body", *p["loc"]]} for p in problems]
        raise ValidationFailed(f"{len(errors)} field(s) are invalid", errors=errors)


def _metadata_of(
    session: Session, tenant_id: str, artifact_id: str | None, kind: str
) -> dict[str, Any] | None:
    """The recorded metadata of a usable artifact of ``kind`` (None for anything else)."""
    if artifact_id is None:
        return None
    found = artifacts.get_artifact(session, tenant_id, artifact_id)
    if found is None or artifacts.is_expired(found) or found.kind != kind:
        return None
    return artifacts.metadata(found)


def _replay(session: Session, tenant_id: str, key: str, fingerprint: str) -> Job | None:
    record = idempotency.lookup(session, tenant_id, key)
    if record is None:
        return None
    if record.fingerprint != fingerprint:
        raise IdempotencyKeyReused("this Idempotency-Key was used with a different request body")
    if record.status != "done" or record.job_id is None:
        raise IdempotencyKeyInFlight("a request with this Idempotency-Key is in progress")
    return store.require_job(session, tenant_id, record.job_id)


def check_capacity(session: Session, settings: Settings, tenant_id: str) -> None:
    """Admission control: the tenant's active-job quota (429), then the global queue (503).

    On PostgreSQL a per-tenant advisory lock serialises concurrent submissions of one tenant, so
    the quota is exact (SQLite's write lock already does that).
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:tenant))"), {"tenant": tenant_id})
    quota = settings.max_active_jobs_per_tenant
    if quota and store.count_active(session, tenant_id) >= quota:
        raise QuotaExceeded(
            f"{quota} jobs are already active for this tenant; wait for one to finish",
            headers={"Retry-After": "30"},
        )
    if settings.max_waiting_jobs and store.count_waiting(session) >= settings.max_waiting_jobs:
        raise QueueFull("the job queue is full; retry later", headers={"Retry-After": "60"})


def _create(session: Session, settings: Settings, tenant_id: str, spec: Spec, fingerprint: str) -> Job:
    check_capacity(session, settings, tenant_id)
    inputs = check_inputs(session, tenant_id, spec)
    job = store.create_job(
        session,
        tenant_id=tenant_id,
        type_=spec.type,
        request=dump(spec),
        request_sha256=fingerprint,
        inputs=inputs,
        max_attempts=settings.max_attempts,
    )
    estimate = estimates.from_history(session, tenant_id, job)
    job.estimate_json = None if estimate is None else json.dumps(estimate)
    if not settings.distributed:
        store.finish_validation(session, job.id, tenant_id)
    return job


# -- validation against recorded artifact metadata --------------------------------------------------


@dataclass
class _Checker:
    session: Session
    tenant_id: str
    errors: list[dict[str, Any]] = field(default_factory=list)

    def error(self, loc: list, msg: str, type_: str) -> None:
        self.errors.append({"loc": ["body", *loc], "msg": msg, "type": type_})

    def artifact(self, loc: list, artifact_id: str | None, kind: str) -> Artifact | None:
        if artifact_id is None:
            return None
        found = artifacts.get_artifact(self.session, self.tenant_id, artifact_id)
        if found is None:
            self.error(loc, f"artifact {artifact_id} not found", "artifact_not_found")
            return None
        if artifacts.is_expired(found):
            self.error(loc, f"artifact {artifact_id} expired (retention)", "artifact_expired")
            return None
        if found.kind != kind:
            self.error(
                loc, f"artifact {artifact_id} is a {found.kind}, expected a {kind}", "artifact_wrong_kind"
            )
            return None
        return found

    def indices(self, loc: list, values: list[int], n: int | None) -> None:
        if n is None:
            return
        bad = [k for k, v in enumerate(values) if v >= n]
        for k in bad[:10]:
            self.error(
                [*loc, k], f"index {values[k]} is out of range for {n} training samples", "index_out_of_range"
            )
        if not bad and len(values) >= n:
            self.error(loc, f"covers all {n} training samples; nothing would remain", "index_out_of_range")

    def labels(self, loc: list, values: list[int], num_classes: int | None) -> None:
        if num_classes is None:
            return
        bad = [k for k, v in enumerate(values) if v >= num_classes]
        for k in bad[:10]:
            self.error(
                [*loc, k], f"label {values[k]} must be < num_classes ({num_classes})", "label_out_of_range"
            )


def check_inputs(session: Session, tenant_id: str, spec: Spec) -> dict[str, Any]:
    """Check the request against the tenant's artifacts; returns the job's ``inputs`` record.

    Raises:
        ValidationFailed: listing every problem found.
    """
    check = _Checker(session, tenant_id)
    found = {
        role: check.artifact(["model", name], getattr(spec.model, name), kind)
        for role, (name, kind) in spec.model.artifacts().items()
    }
    found |= {
        "train": check.artifact(["train"], spec.train, "dataset"),
        "validation": check.artifact(["validation"], getattr(spec, "validation", None), "dataset"),
        "holdout": check.artifact(["holdout"], getattr(spec, "holdout", None), "dataset"),
        "queries": check.artifact(["queries"], getattr(spec, "queries", None), "dataset"),
        "reference": _reference(check, spec),
    }
    train = artifacts.metadata(found["train"]) if found["train"] else {}
    n_train = train.get("n_samples")
    program_artifact = found.get("program")
    program = artifacts.metadata(program_artifact) if program_artifact else {}
    num_classes = spec.model.num_classes() or _int_or_none(program.get("num_classes"))
    _check_shapes(check, spec, found, train, program)
    _check_named_inputs(check, spec, found)
    if isinstance(spec, RemoveJob):
        if spec.forget.class_ is not None:
            _check_class(check, spec.forget.class_, num_classes, train)
        elif spec.forget.ids is not None:
            _check_ids(check, ["forget", "ids"], spec.forget.ids, train)
        else:
            check.indices(["forget", "indices"], spec.forget.indices or [], n_train)
    elif isinstance(spec, RelabelJob):
        if spec.relabel.ids is not None:
            _check_ids(check, ["relabel", "ids"], spec.relabel.ids, train)
        else:
            check.indices(["relabel", "indices"], spec.relabel.indices or [], n_train)
        check.labels(["relabel", "labels"], spec.relabel.labels, num_classes)
    if check.errors:
        raise ValidationFailed(f"{len(check.errors)} field(s) are invalid", errors=check.errors)
    inputs: dict[str, Any] = {"model": spec.model.record()}
    for role, artifact in found.items():
        if artifact is not None:
            inputs[role] = {"artifact_id": artifact.id, "sha256": artifact.sha256}
    return inputs


def _reference(check: _Checker, spec: Spec) -> Artifact | None:
    """The audit's reference checkpoint: loaded into the job's own architecture, so the model must
    be one built from a checkpoint (not an exported program)."""
    reference = getattr(spec, "reference", None)
    if reference is not None and isinstance(spec.model, ProgramModel):
        check.error(
            ["reference"], "a reference checkpoint needs a model built from a checkpoint, not a program",
            "unsupported_reference",
        )  # fmt: skip
        return None
    return check.artifact(["reference"], reference, "checkpoint")


def _check_ids(check: _Checker, loc: list, ids: list[int], train: dict[str, Any]) -> None:
    """Samples named by id need a training set that names its samples (``sample_ids``); whether
    each id is in it is checked by the worker, which reads the ids (so does a dataset whose
    metadata predates the flag)."""
    if train.get("sample_ids") is False:
        check.error(
            loc,
            "the train dataset has no `sample_ids`: upload it with them, or name samples by `indices`",
            "sample_ids_missing",
        )
    elif train.get("n_samples") is not None and len(ids) >= train["n_samples"]:
        check.error(
            loc,
            f"covers all {train['n_samples']} training samples; nothing would remain",
            "index_out_of_range",
        )


def _check_class(check: _Checker, cls: int, num_classes: int | None, train: dict[str, Any]) -> None:
    if num_classes is not None and cls >= num_classes:
        check.error(
            ["forget", "class"], f"class {cls} must be < num_classes ({num_classes})", "label_out_of_range"
        )
        return
    counts = train.get("label_counts")
    if isinstance(counts, list) and (cls >= len(counts) or counts[cls] == 0):
        check.error(
            ["forget", "class"], f"class {cls} has no samples in the training data", "class_not_found"
        )


def _int_or_none(value: Any) -> int | None:
    return value if type(value) is int else None


def _check_shapes(
    check: _Checker,
    spec: Spec,
    found: dict[str, Artifact | None],
    train: dict[str, Any],
    program: dict[str, Any],
) -> None:
    """Datasets must share the training data's sample shape (and the model's, when configured or
    recorded when its program was uploaded)."""
    shape = train.get("input_shape")
    configured = spec.model.input_shape()
    if shape is not None and configured is not None and configured != list(shape):
        check.error(
            ["model", "config", "input_shape"],
            f"is {configured} but the training samples have shape {shape}",
            "shape_mismatch",
        )
    expected = program.get("input_shape")
    if shape is not None and isinstance(expected, list) and expected != list(shape):
        check.error(
            ["model", "program"],
            f"the program takes samples of shape {expected} but the training samples have shape {shape}",
            "shape_mismatch",
        )
    for role in ("validation", "holdout", "queries"):
        other = found[role]
        other_shape = artifacts.metadata(other).get("input_shape") if other else None
        if shape is not None and other_shape is not None and list(other_shape) != list(shape):
            check.error(
                [role], f"samples have shape {other_shape}, training samples {shape}", "shape_mismatch"
            )


def _check_named_inputs(check: _Checker, spec: Spec, found: dict[str, Artifact | None]) -> None:
    """Named tensors go only to a Hugging Face model, with the training set's names in every
    dataset; token ids, sequence lengths and labels must fit its config (jobs.huggingface)."""
    metas = {role: artifacts.metadata(a) for role in _DATASET_ROLES if (a := found.get(role)) is not None}
    names = {role: huggingface.tensor_names(meta) for role, meta in metas.items()}
    for role, meta in metas.items():
        if isinstance(spec.model, HuggingFaceModel):
            for p in huggingface.dataset_problems(spec.model.config, role, meta):
                check.error(p["loc"], p["msg"], p["type"])
        elif names[role] != ["inputs"]:
            what = (
                "a registry architecture" if isinstance(spec.model, RegistryModel) else "an exported program"
            )
            check.error(
                [role],
                f"the dataset holds named tensors ({', '.join(names[role])}); {what} takes one `inputs` tensor",
                "unexpected_inputs",
            )
        if role != "train" and "train" in names and names[role] != names["train"]:
            check.error(
                [role],
                f"tensors {', '.join(names[role])} differ from the training set's ({', '.join(names['train'])})",
                "unexpected_inputs",
            )
