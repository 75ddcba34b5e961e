"""A fresh SQLite job store per test, and a worker context over a fresh home for the in-process
job tests (the runner without a server or executor): the context, registering input files as
artifacts, submitting a job."""

from __future__ import annotations

import threading

import pytest

from jobs import artifacts, specs
from jobs.config import Settings
from jobs.db import Database
from jobs.submit import submit_job
from workers.runner import WorkerContext

#: The tenant every in-process job test submits as.
TENANT = "t1"


@pytest.fixture
def db(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'gif.db'}")
    database.create_all()
    yield database
    database.dispose()


@pytest.fixture
def ctx(tmp_path):
    """A worker's context over ``tmp_path`` (SQLite, local blobs, no executor: jobs run when a test
    calls ``run_job``), with fast heartbeats and every progress event written."""
    settings = Settings(
        home=tmp_path, executor="none", workers=0, heartbeat_seconds=0.2, progress_seconds=0.0
    )
    context = WorkerContext.create(settings, owner="test-worker", shutdown=threading.Event())
    yield context
    context.db.dispose()


def register(ctx: WorkerContext, path, kind: str, metadata: dict | None = None) -> str:
    """The file at ``path`` stored as a ``kind`` artifact (safetensors) of :data:`TENANT`: its id."""
    with open(path, "rb") as f:
        blob = ctx.blobs.put(f)
    with ctx.db.begin() as session:
        return artifacts.create_artifact(
            session, tenant_id=TENANT, kind=kind, format="safetensors", sha256=blob.sha256, size_bytes=blob.size,
            metadata=metadata or {},
        ).id  # fmt: skip


def submit(ctx: WorkerContext, body: dict) -> str:
    """The job of request ``body`` submitted as :data:`TENANT` (queued, not run): its id."""
    return submit_job(ctx.db, ctx.settings, TENANT, specs.parse(body), fingerprint="f").job.id
