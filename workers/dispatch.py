"""Publishing job messages (distributed mode): the job row is the outbox, the broker the transport.

A job in ``validating`` needs a validate message on the CPU queue, a ``queued`` job a run message
on its GPU queue. Publishing records ``dispatched_at``; a publish that fails leaves it NULL, and
the sweeper (``workers.distributed``) publishes again, as it does for messages a broker lost.
"""

from __future__ import annotations

from celery import Celery

from jobs import logs, store
from jobs.config import Settings
from jobs.db import Database
from jobs.states import JobStatus

from .celery_app import CPU_QUEUE, RUN_TASK, VALIDATE_TASK, gpu_queue

log = logs.get(__name__)

#: Fail fast when the broker is down: the sweeper retries, and submit must not hang.
RETRY_POLICY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5}


class Publisher:
    def __init__(self, app: Celery, db: Database, settings: Settings) -> None:
        self.app, self.db, self.settings = app, db, settings

    def publish(self, job_id: str, status: JobStatus) -> bool:
        """Send the message ``status`` calls for; True if the broker took it. Never raises."""
        task, queue = (
            (VALIDATE_TASK, CPU_QUEUE)
            if status is JobStatus.VALIDATING
            else (RUN_TASK, gpu_queue(self.settings.gpu_pool))
        )
        try:
            self.app.send_task(task, args=[job_id], queue=queue, retry=True, retry_policy=RETRY_POLICY)
        except Exception as exc:  # noqa: BLE001 (broker down: the sweeper publishes later)
            log.warning("publish_failed", job_id=job_id, task=task, error=f"{type(exc).__name__}: {exc}")
            return False
        with self.db.begin() as session:
            store.mark_dispatched(session, job_id, status)
        log.info("job_published", job_id=job_id, task=task, queue=queue)
        return True
