"""Lease heartbeat: a thread that renews the lease and reads the cancel flag.

The flags it sets are what the engine's ``should_stop`` polls every solver iteration: a
requested cancellation, a lost lease (the job was reaped or finished elsewhere: stop and write
nothing), or the worker shutting down. A worker that cannot reach the database for a whole
lease period counts its lease as lost too (self-fencing): by then the reaper may have given the
job to another worker, so computing on would only waste the machine (its writes would be
refused anyway).
"""

from __future__ import annotations

import threading
import time
from typing import Self

from jobs import logs, store
from jobs.db import Database
from jobs.states import JobStatus

log = logs.get(__name__)


class JobSignals:
    """Why a running job should stop, if it should."""

    def __init__(self, shutdown: threading.Event | None = None) -> None:
        self.cancel_requested = threading.Event()
        self.lease_lost = threading.Event()
        self.shutdown = shutdown or threading.Event()

    def observe(self, status: JobStatus | None) -> None:
        """Record the status returned by a fenced write (None: the lease is gone)."""
        if status is None:
            self.lease_lost.set()
        elif status is JobStatus.CANCELLING:
            self.cancel_requested.set()

    def should_stop(self) -> bool:
        return self.cancel_requested.is_set() or self.lease_lost.is_set() or self.shutdown.is_set()


class Heartbeat:
    """Context manager: renews ``lease`` every ``interval`` seconds until the block ends."""

    def __init__(
        self, db: Database, lease: store.Lease, signals: JobSignals, *, interval: float, lease_seconds: float
    ) -> None:
        self.db, self.lease, self.signals = db, lease, signals
        self.interval, self.lease_seconds = interval, lease_seconds
        self.renewed_at = time.monotonic()  # the claim, just before, was the first renewal
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{lease.job_id}", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=self.interval + 5)

    def beat(self) -> None:
        """One renewal (also called directly by tests)."""
        with self.db.begin() as session:
            status = store.heartbeat(session, self.lease, self.lease_seconds)
        self.signals.observe(status)
        self.renewed_at = time.monotonic()

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 (a busy database must not kill the heartbeat)
                if time.monotonic() - self.renewed_at >= self.lease_seconds:
                    self.signals.lease_lost.set()  # before logging, which could fail too
                    log.warning("lease_expired_unrenewed", job_id=self.lease.job_id, error=str(exc))
                else:
                    log.warning("heartbeat_failed", job_id=self.lease.job_id, error=str(exc))
            if self.signals.lease_lost.is_set():
                return
