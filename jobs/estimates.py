"""What a job is likely to cost, from the jobs like it that this tenant has already run.

A service receives many requests against one production checkpoint: the same model, training
data and options, another set of samples to forget or relabel. Iterative solvers make a job's
work unknowable from its options alone (a Krylov solve stops when it converges, and ``max_iter``
bounds it far above what edits take), but the earlier jobs of the same kind on the same inputs
measured it. A job's ``estimate`` is their median wall time (started → finished) and median
work (gradients, Hessian-vector products: the result summary's ``work``), with how many jobs it
rests on; none before the first such job has succeeded.
"""

from __future__ import annotations

import json
import statistics
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import Job
from .states import JobStatus

#: The most recent succeeded jobs of the tenant and type scanned for ones like the new job ...
SCANNED = 200
#: ... and the most of those an estimate rests on.
BASED_ON = 20


def _contents(job: Job) -> dict[str, Any]:
    """The digest of each of ``job``'s inputs, by name."""
    return {name: entry.get("sha256") for name, entry in json.loads(job.inputs_json).items()}


def _options(job: Job) -> dict[str, Any]:
    return json.loads(job.request_json).get("options") or {}


def from_history(session: Session, tenant_id: str, job: Job) -> dict[str, Any] | None:
    """The estimate of ``job`` (a new job of ``tenant_id``) from the tenant's succeeded jobs like
    it — the same type, the same content of every input (by digest) and the same options, not
    the same samples edited —, most recent first; None when there is none."""
    contents, options = _contents(job), _options(job)
    rows = session.scalars(
        select(Job)
        .where(
            Job.tenant_id == tenant_id,
            Job.type == job.type,
            Job.status == JobStatus.SUCCEEDED.value,
            Job.id != job.id,
        )
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(SCANNED)
    )
    alike = [  # the inputs first: their JSON is short, a request's may list many samples
        row
        for row in rows
        if row.started_at is not None
        and row.finished_at is not None
        and _contents(row) == contents
        and _options(row) == options
    ][:BASED_ON]
    if not alike:
        return None
    seconds = [(row.finished_at - row.started_at).total_seconds() for row in alike]  # type: ignore[operator]
    estimate: dict[str, Any] = {"seconds": round(statistics.median(seconds), 3), "based_on": len(alike)}
    counted = [work for row in alike if (work := _work(row)) is not None]
    if counted:  # jobs stored before summaries carried their work have none
        estimate["work"] = {name: statistics.median(w.get(name, 0) for w in counted) for name in counted[0]}
    return estimate


def _work(job: Job) -> dict[str, int] | None:
    summary = (json.loads(job.result_json) if job.result_json else {}).get("summary") or {}
    work = summary.get("work")
    return work if isinstance(work, dict) else None
