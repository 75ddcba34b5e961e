"""Typed engine progress events → the job's ``progress`` object (stage, fraction, step, message)."""

from __future__ import annotations

import json

import pytest

from gif.progress import Progress
from jobs import store
from jobs.states import JobStatus
from workers.heartbeat import JobSignals
from workers.progress import ProgressReporter


@pytest.fixture
def running(db):
    """A claimed job and its lease."""
    with db.begin() as session:
        job_id = store.create_job(
            session, tenant_id="t1", type_="remove", request={"type": "remove"}, request_sha256="0" * 64,
            inputs={}, max_attempts=3,
        ).id  # fmt: skip
        store.finish_validation(session, job_id, "t1")
        lease = store.claim(session, job_id, "w", lease_seconds=60)
    return lease


def _reporter(db, lease, newton_steps=4, signals=None):
    return ProgressReporter(db, lease, signals or JobSignals(), interval=0.0, newton_steps=newton_steps)


def _stored(db, lease) -> dict:
    with db.read() as session:
        return json.loads(store.find_job(session, lease.job_id).progress_json)


def test_an_edits_events_name_its_newton_step_and_advance_by_steps(db, running):
    report = _reporter(db, running)
    report(Progress("computing_gradients", newton_step=2))
    assert _stored(db, running) | {"updated_at": None} == {
        "stage": "computing_gradients", "fraction": 0.25, "step": None, "total_steps": None,
        "message": "newton step 2/4", "updated_at": None,
    }  # fmt: skip
    report(Progress("solving_ihvp", iteration=5, max_iter=10, residual=1.5e-3))
    progress = _stored(db, running)
    assert progress["fraction"] == pytest.approx((1 + 0.5) / 4)
    assert (progress["step"], progress["total_steps"]) == (5, 10)
    assert progress["message"] == "newton step 2/4: iteration 5/10, residual 1.500e-03"
    report(Progress("step_search", iteration=3, scale=0.125, objective=0.25))
    assert _stored(db, running)["message"] == "newton step 2/4, scale 0.125, objective 0.2500"
    report(Progress("done"))
    assert _stored(db, running)["fraction"] == 1.0


def test_an_edits_later_attempts_never_move_the_fraction_back(db, running):
    """A relabel's head attempt, then its fallback: each attempt is a share of the job."""
    report = _reporter(db, running, newton_steps=4)
    report(Progress("solving_ihvp", iteration=5, max_iter=10, newton_step=3, attempt=1, attempts=3))
    report(Progress("computing_gradients", newton_step=3, attempt=1, attempts=3))
    first = _stored(db, running)
    assert first["fraction"] == pytest.approx((2 / 4) / 3, abs=1e-4)
    assert first["message"] == "attempt 1/3: newton step 3/4"
    report(Progress("computing_gradients", newton_step=1, attempt=2, attempts=3))
    second = _stored(db, running)
    assert (
        second["fraction"] == pytest.approx(1 / 3, abs=1e-4)
        and second["message"] == "attempt 2/3: newton step 1/4"
    )
    report(Progress("solving_ihvp", iteration=1, max_iter=2, attempt=2, attempts=3))
    assert _stored(db, running)["fraction"] == pytest.approx((1 + 0.5 / 4) / 3, abs=1e-4)
    report(Progress("done"))
    assert _stored(db, running)["fraction"] == 1.0


def test_scores_events_span_the_queries_then_the_training_chunks(db, running):
    report = _reporter(db, running, newton_steps=1)
    report(Progress("solving", iteration=50, max_iter=100, residual=0.01, query=1, num_queries=4))
    progress = _stored(db, running)
    assert progress["fraction"] == pytest.approx(0.8 * (1 + 0.5) / 4)
    assert progress["message"].startswith("query 2/4: iteration 50/100")
    report(Progress("scoring", iteration=3, max_iter=4))
    progress = _stored(db, running)
    assert (
        progress["fraction"] == pytest.approx(0.8 + 0.2 * 0.75)
        and progress["message"] == "training chunk 3/4"
    )
    report(Progress("fitting_curvature", iteration=40, max_iter=20))  # past the cap: clamped
    assert _stored(db, running)["fraction"] == pytest.approx(0.8)


def test_writes_are_throttled_within_a_stage_and_feed_the_cancel_flag(db, running):
    signals = JobSignals()
    report = ProgressReporter(db, running, signals, interval=3600.0, newton_steps=1)
    report(Progress("solving", iteration=1, max_iter=10))
    report(Progress("solving", iteration=9, max_iter=10))  # same stage, within the interval: skipped
    assert _stored(db, running)["step"] == 1
    with db.begin() as session:
        assert store.request_cancel(session, "t1", running.job_id)
    report(Progress("scoring", iteration=1, max_iter=2))  # a new stage is always written
    assert _stored(db, running)["stage"] == "scoring" and signals.cancel_requested.is_set()
    with db.read() as session:
        assert store.find_job(session, running.job_id).status == JobStatus.CANCELLING.value


class _TimeLimit(Exception):
    """Stands in for Celery's SoftTimeLimitExceeded, an Exception raised asynchronously."""


class _FailingDatabase:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def begin(self):
        raise self.error


def test_a_time_limit_during_a_write_reaches_the_runner_and_other_failures_do_not(running):
    """A failed write is only a warning (progress is best effort), but the job's time limit may
    land inside one, and swallowing it let a job run past its deadline (a flaky
    test_a_job_over_the_time_limit_fails_deadline_exceeded)."""
    deadline = ProgressReporter(
        _FailingDatabase(_TimeLimit()), running, JobSignals(), interval=0.0, deadline_errors=(_TimeLimit,)
    )
    with pytest.raises(_TimeLimit):
        deadline(Progress("solving", iteration=1, max_iter=10))
    busy = ProgressReporter(
        _FailingDatabase(RuntimeError("busy")),
        running,
        JobSignals(),
        interval=0.0,
        deadline_errors=(_TimeLimit,),
    )
    busy(Progress("solving", iteration=1, max_iter=10))  # logged, not raised
