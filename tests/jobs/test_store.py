"""Compare-and-set transitions, leases with fencing tokens, cancellation and the reaper."""

from __future__ import annotations

import time

from jobs import store
from jobs.states import JobStatus

from .conftest import TENANT, add_job, status_of

S = JobStatus


def _claim(db, job_id=None, lease_seconds=60.0, owner="w1"):
    with db.begin() as session:
        if job_id is None:
            return store.claim_next(session, owner, lease_seconds)
        return store.claim(session, job_id, owner, lease_seconds)


def test_cas_fails_on_wrong_status_or_token(db):
    job_id = add_job(db)
    with db.begin() as session:
        assert not store.transition(session, job_id, TENANT, S.VALIDATING, S.QUEUED)  # it is queued
        assert not store.transition(session, job_id, "other-tenant", S.QUEUED, S.CANCELLED)
    lease = _claim(db, job_id)
    with db.begin() as session:
        assert not store.transition(session, job_id, TENANT, S.RUNNING, S.QUEUED, token="forged")
        version = store.require_job(session, TENANT, job_id).version
        assert store.transition(session, job_id, TENANT, S.RUNNING, S.QUEUED, token=lease.token)
        assert store.require_job(session, TENANT, job_id).version == version + 1


def test_claim_is_oldest_first_and_counts_attempts(db):
    first, second = add_job(db), add_job(db)
    lease = _claim(db)
    assert lease.job_id == first and lease.attempt == 1 and lease.tenant_id == TENANT
    assert _claim(db).job_id == second
    assert _claim(db) is None
    assert _claim(db, first) is None  # already running: a duplicate delivery is a no-op


def test_finish_is_fenced_by_the_lease_token(db):
    job_id = add_job(db)
    lease = _claim(db, job_id)
    forged = store.Lease(job_id, TENANT, "not-the-token", "w2", 1, 3)
    with db.begin() as session:
        assert not store.finish_succeeded(session, forged, {"artifacts": []})
        assert store.finish_succeeded(session, lease, {"artifacts": [], "summary": {}})
    assert status_of(db, job_id) == "succeeded"


def test_terminal_states_never_change(db):
    ids = {}
    for outcome in ("succeeded", "failed", "cancelled"):
        job_id = add_job(db)
        lease = _claim(db, job_id)
        with db.begin() as session:
            if outcome == "succeeded":
                store.finish_succeeded(session, lease, {"artifacts": []})
            elif outcome == "failed":
                store.finish_failed(session, lease, "internal_error", "boom")
            else:
                store.request_cancel(session, TENANT, job_id)
                store.finish_cancelled(session, lease)
        ids[outcome] = (job_id, lease)
    for outcome, (job_id, lease) in ids.items():
        with db.begin() as session:
            assert not store.finish_succeeded(session, lease, {})
            assert not store.finish_failed(session, lease, "x", "y")
            assert not store.finish_cancelled(session, lease)
            assert store.release(session, lease, "test") is None
            assert store.heartbeat(session, lease, 60) is None
            assert store.update_progress(session, lease, {"stage": "x"}) is None
            for new in JobStatus:
                if new.value != outcome:
                    try:
                        assert not store.transition(session, job_id, TENANT, JobStatus(outcome), new)
                    except ValueError:
                        pass  # not an edge at all
        assert status_of(db, job_id) == outcome


def test_heartbeat_reports_cancel_requests(db):
    job_id = add_job(db)
    lease = _claim(db, job_id)
    with db.begin() as session:
        assert store.heartbeat(session, lease, 60) is S.RUNNING
        assert store.request_cancel(session, TENANT, job_id).status == "cancelling"
        assert store.heartbeat(session, lease, 60) is S.CANCELLING
        assert store.update_progress(session, lease, {"stage": "solving_ihvp"}) is S.CANCELLING
        assert store.finish_cancelled(session, lease)
    with db.read() as session:
        job = store.require_job(session, TENANT, job_id)
    assert job.status == "cancelled" and job.cancel_requested_at and job.finished_at


def test_cancel_queued_is_immediate_and_terminal_is_refused(db):
    import pytest

    from jobs.errors import JobNotCancellable, NotFound

    job_id = add_job(db)
    with db.begin() as session:
        assert store.request_cancel(session, TENANT, job_id).status == "cancelled"
        assert store.request_cancel(session, TENANT, job_id).status == "cancelled"
        with pytest.raises(NotFound):
            store.request_cancel(session, "other", job_id)
    done = add_job(db)
    lease = _claim(db, done)
    with db.begin() as session:
        store.finish_failed(session, lease, "numerical_error", "NaN")
    with db.begin() as session, pytest.raises(JobNotCancellable):
        store.request_cancel(session, TENANT, done)


def test_reaper_requeues_then_fails_worker_lost(db):
    job_id = add_job(db, max_attempts=2)
    lease = _claim(db, job_id, lease_seconds=0.01)
    time.sleep(0.05)
    with db.begin() as session:
        assert store.reap_expired(session) == [(job_id, S.QUEUED)]
        assert store.heartbeat(session, lease, 60) is None  # the old worker has lost the job
        assert not store.finish_succeeded(session, lease, {})  # and cannot commit (fencing)
    second = _claim(db, job_id, lease_seconds=0.01)
    assert second.attempt == 2
    time.sleep(0.05)
    with db.begin() as session:
        assert store.reap_expired(session) == [(job_id, S.FAILED)]
        job = store.require_job(session, TENANT, job_id)
    assert job.status == "failed" and '"worker_lost"' in job.error_json
    with db.read() as session:
        events = [e.type for e in store.list_events(session, TENANT, job_id, limit=50).data]
    assert "job.retry_scheduled" in events and events[-1] == "job.failed"


def test_reaper_leaves_live_leases_and_finishes_cancelling(db):
    live, stopping = add_job(db), add_job(db)
    _claim(db, live, lease_seconds=60)
    _claim(db, stopping, lease_seconds=0.01)
    with db.begin() as session:
        store.request_cancel(session, TENANT, stopping)
    time.sleep(0.05)
    with db.begin() as session:
        assert store.reap_expired(session) == [(stopping, S.CANCELLED)]
    assert status_of(db, live) == "running"


def test_release_gives_the_attempt_back(db):
    job_id = add_job(db)
    lease = _claim(db, job_id)
    with db.begin() as session:
        assert store.release(session, lease, "shutdown") is S.QUEUED
        job = store.require_job(session, TENANT, job_id)
    assert job.status == "queued" and job.attempt == 0 and job.lease_token is None
