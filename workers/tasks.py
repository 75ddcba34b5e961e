"""Celery tasks: thin wrappers that call the validator and the job runner with this process's context.

Both take only a job id (JSON), both are idempotent: a duplicate or redelivered message finds the
job no longer in the state it expects and returns. Failures are recorded in the job row, never
raised to Celery (which would only log them): the attempt cap lives in the database.
"""

from __future__ import annotations

import os
import socket

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init
from celery.worker.control import control_command

from jobs import logs
from jobs.states import JobStatus

from .celery_app import RUN_TASK, TERMINATE_COMMAND, VALIDATE_TASK, app
from .dispatch import Publisher

log = logs.get(__name__)
_context = None


@worker_process_init.connect
def _init_child(**_: object) -> None:
    """In each pool child (never the parent): logging, torch threads and the engine's modules
    (``preload``: out of the first job's time); CUDA stays lazy."""
    logs.configure()
    settings = app.conf.gif_settings
    threads = str(settings.torch_threads)
    os.environ.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    import torch

    from gif._util import preload

    torch.set_num_threads(settings.torch_threads)
    preload()


def context():
    """This child's worker context (database engine, blob store), created on first use."""
    global _context
    if _context is None:
        from .runner import WorkerContext

        _context = WorkerContext.create(
            app.conf.gif_settings,
            owner=f"{socket.gethostname()}:{os.getpid()}:celery",
            deadline_errors=(SoftTimeLimitExceeded,),
        )
    return _context


@control_command(
    name=TERMINATE_COMMAND,
    args=[("job_id", str), ("tenant_id", str), ("token", str), ("owner", str)],
    signature="<job_id> <tenant_id> <token> <owner>",
)
def terminate_job(state, job_id: str, tenant_id: str, token: str, owner: str) -> dict:
    """In the worker node's main process: kill the pool process holding this lease, if it is
    one of ours and the lease still holds the job (workers/terminate.py); the pool replaces it."""
    from jobs.db import Database
    from jobs.store import Lease

    from .terminate import kill_job_process

    pids = state.consumer.pool.info.get("processes", []) if state.consumer.pool else []
    db = Database.for_settings(app.conf.gif_settings)
    try:
        pid = kill_job_process(db, Lease(job_id, tenant_id, token, owner, 0, 0), pids)
    finally:
        db.dispose()
    return {"ok": pid is not None, "pid": pid}


@app.task(name=VALIDATE_TASK)
def validate_job(job_id: str) -> str | None:
    from .validation import validate_job as validate

    ctx = context()
    status = validate(job_id, ctx.db, ctx.blobs, ctx.settings.max_memory_bytes)
    if status is JobStatus.QUEUED:
        Publisher(app, ctx.db, ctx.settings).publish(job_id, JobStatus.QUEUED)
    return None if status is None else status.value


@app.task(name=RUN_TASK)
def run_job(job_id: str) -> str | None:
    from .runner import run_job as run

    ctx = context()
    status = run(job_id, ctx.settings, ctx)
    return None if status is None else status.value
