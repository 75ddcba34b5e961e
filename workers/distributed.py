"""The API side of distributed mode: publish submitted jobs, sweep leases and lost messages.

``gif-service serve`` with ``GIF_BROKER_URL`` starts this instead of local worker processes. The
sweeper (docs/service-design.md, "Outbox and sweeper") runs in every API process, one at a time
through a Redis lock:

* leases that expired (a worker died) → back to ``queued`` (republished) until the attempt cap,
  then ``failed`` with ``worker_lost``; ``cancelling`` ones → ``cancelled``;
* ``validating`` / ``queued`` jobs whose message was never published (broker down at submit) or
  was published ``redispatch_seconds`` ago and never picked up (a broker that lost it) → publish.

Importing this module imports Celery and redis-py, not torch.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis

from jobs import logs, store
from jobs.blobs import open_blob_store
from jobs.config import Settings
from jobs.db import Database
from jobs.errors import ServiceUnavailable
from jobs.orphans import PeriodicSweep
from jobs.states import JobStatus

from .celery_app import TERMINATE_COMMAND, make_app
from .dispatch import Publisher

log = logs.get(__name__)

SWEEPER_LOCK = "gif:sweeper"


class CeleryExecutor:
    """Publishes to Celery; the job table stays the only source of truth."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = make_app(settings)
        self.db = Database.for_settings(settings)
        self.publisher = Publisher(self.app, self.db, settings)
        self._orphans = PeriodicSweep(self.db, open_blob_store(settings), settings.orphan_grace_seconds)
        if settings.broker_url is None:
            raise ValueError("the Celery executor needs a broker URL (GIF_BROKER_URL)")
        self.redis = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=2, socket_timeout=5)
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self.sweeps = 0
        self.last_sweep: float | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gif-sweeper", daemon=True)
        self._thread.start()
        log.info("executor_started", executor="celery", broker=_redacted(self.settings.broker_url))

    def stop(self, timeout: float = 10.0) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        self.db.dispose()
        self.redis.close()
        log.info("executor_stopped", executor="celery")

    def submitted(self, job_id: str) -> None:
        """Publish the new job's validate message now (the sweeper retries if the broker is down)."""
        self.publisher.publish(job_id, JobStatus.VALIDATING)

    def check_accepting(self) -> None:
        """Strict dispatch: refuse submissions while the broker is down (503 + Retry-After)."""
        if self.settings.strict_dispatch and not self._broker_ok():
            raise ServiceUnavailable(
                "the job broker is unreachable; retry later", headers={"Retry-After": "10"}
            )

    def terminate(self, lease: store.Lease) -> int | None:
        """Ask every worker node (``gif_terminate`` control command) to kill the pool process
        holding ``lease``; the node that has it checks the lease, kills and finishes the job."""
        replies = self.app.control.broadcast(
            TERMINATE_COMMAND,
            arguments={
                "job_id": lease.job_id,
                "tenant_id": lease.tenant_id,
                "token": lease.token,
                "owner": lease.owner,
            },
            reply=True,
            timeout=3.0,  # the node holding the process answers in milliseconds
        )
        for reply in replies or []:
            for answer in reply.values():
                if isinstance(answer, dict) and answer.get("ok") and answer.get("pid"):
                    return int(answer["pid"])
        return None

    def health(self) -> dict[str, Any]:
        return {
            "executor": "celery",
            "broker": "ok" if self._broker_ok() else "unreachable",
            "sweeps": self.sweeps,
            "last_sweep_age_s": None
            if self.last_sweep is None
            else round(time.monotonic() - self.last_sweep, 1),
        }

    def sweep(self) -> dict[str, int]:
        """One pass (when this process holds the sweeper lock): reap, purge, republish."""
        lock = self.redis.lock(SWEEPER_LOCK, timeout=max(30.0, 4 * self.settings.reaper_seconds))
        if not lock.acquire(blocking=False):
            return {"skipped": 1}
        try:
            with self.db.begin() as session:
                reaped = store.housekeeping(
                    session, queue_deadline_seconds=self.settings.queue_deadline_seconds
                )
            for job_id, status in reaped:
                log.warning("lease_expired", job_id=job_id, status=status.value)
            with self.db.read() as session:
                pending = store.due_for_dispatch(session, self.settings.redispatch_seconds)
            published = sum(self.publisher.publish(p.job_id, p.status) for p in pending)
            self._orphans()
            return {"reaped": len(reaped), "pending": len(pending), "published": published}
        finally:
            try:
                lock.release()
            except redis.exceptions.LockError:
                pass  # expired meanwhile: another API process may sweep next

    def _run(self) -> None:
        while not self._halt.wait(self.settings.reaper_seconds):
            try:
                self.sweep()
                self.sweeps += 1
                self.last_sweep = time.monotonic()
            except Exception as exc:  # noqa: BLE001 (broker or database blip: next interval)
                log.warning("sweep_failed", error=f"{type(exc).__name__}: {exc}")

    def _broker_ok(self) -> bool:
        try:
            return bool(self.redis.ping())
        except redis.exceptions.RedisError:
            return False


def _redacted(url: str | None) -> str:
    """The broker URL without its password."""
    if not url or "@" not in url:
        return url or ""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
