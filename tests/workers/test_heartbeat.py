"""The lease heartbeat: renewals, cancel and lease-loss signals, and self-fencing when the
database stays out of reach for a whole lease."""

from __future__ import annotations

import time
from contextlib import contextmanager

import pytest
from sqlalchemy.exc import OperationalError

from jobs import store
from jobs.db import Database
from jobs.states import JobStatus
from tests.jobs.conftest import TENANT, add_job
from workers.heartbeat import Heartbeat, JobSignals

LEASE = 0.6


class Flaky:
    """The job store, except that ``begin`` fails while ``down`` (a network partition)."""

    def __init__(self, db: Database) -> None:
        self.db, self.down = db, False

    @contextmanager
    def begin(self):
        if self.down:
            raise OperationalError("SELECT 1", {}, ConnectionRefusedError("database unreachable"))
        with self.db.begin() as session:
            yield session


@pytest.fixture
def lease(db) -> store.Lease:
    job_id = add_job(db)
    with db.begin() as session:
        return store.claim(session, job_id, "host:1", LEASE)


def _expires_at(db: Database, job_id: str):
    with db.read() as session:
        return store.find_job(session, job_id).lease_expires_at


def test_renewals_extend_the_lease_and_carry_the_cancel_flag(db, lease):
    signals = JobSignals()
    first = _expires_at(db, lease.job_id)
    with Heartbeat(db, lease, signals, interval=0.05, lease_seconds=LEASE):
        time.sleep(0.3)
        assert _expires_at(db, lease.job_id) > first
        with db.begin() as session:
            store.request_cancel(session, TENANT, lease.job_id)
        time.sleep(0.3)
    assert signals.cancel_requested.is_set() and not signals.lease_lost.is_set()


def test_a_short_outage_is_ridden_out(db, lease):
    flaky, signals = Flaky(db), JobSignals()
    with Heartbeat(flaky, lease, signals, interval=0.05, lease_seconds=LEASE):  # type: ignore[arg-type]
        flaky.down = True
        time.sleep(LEASE / 3)
        flaky.down = False
        time.sleep(LEASE)
    assert not signals.should_stop()
    with db.read() as session:
        assert store.find_job(session, lease.job_id).status == JobStatus.RUNNING.value


def test_a_worker_cut_off_for_a_whole_lease_stops(db, lease):
    """Self-fencing: by then the reaper may have handed the job on; the worker stops computing
    (and, reconnected, still writes nothing: its token is stale)."""
    flaky, signals = Flaky(db), JobSignals()
    started = time.monotonic()
    with Heartbeat(flaky, lease, signals, interval=0.05, lease_seconds=LEASE):  # type: ignore[arg-type]
        flaky.down = True
        assert signals.lease_lost.wait(LEASE * 3)
        waited = time.monotonic() - started
    assert waited >= LEASE  # never before the lease could have expired
    assert signals.should_stop() and not signals.cancel_requested.is_set()
