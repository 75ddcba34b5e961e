"""The job state machine (docs/service-design.md, "Job state machine").

    validating → queued | failed | cancelled
    queued     → running | cancelled | failed
    running    → succeeded | failed | queued (retry) | cancelling
    cancelling → cancelled | succeeded | failed

Terminal states never change. Stages inside ``running`` are progress, not states.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    VALIDATING = "validating"
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL: frozenset[JobStatus] = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

#: States a worker holds a lease in.
LEASED: frozenset[JobStatus] = frozenset({JobStatus.RUNNING, JobStatus.CANCELLING})

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.VALIDATING: frozenset({JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.QUEUED, JobStatus.CANCELLING}
    ),
    JobStatus.CANCELLING: frozenset({JobStatus.CANCELLED, JobStatus.SUCCEEDED, JobStatus.FAILED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def is_terminal(status: str) -> bool:
    return JobStatus(status) in TERMINAL


def can_transition(old: str, new: str) -> bool:
    """Whether ``old → new`` is an edge of the state machine."""
    return JobStatus(new) in TRANSITIONS[JobStatus(old)]


class IllegalTransition(ValueError):
    """A transition that is not an edge of the state machine (a bug in the caller)."""


def check_transition(old: str, new: str) -> None:
    if not can_transition(old, new):
        raise IllegalTransition(f"job status cannot go from {old!r} to {new!r}")
