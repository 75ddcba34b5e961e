"""A fresh SQLite job store per test, and a worker context over a fresh home for the in-process
job tests (the runner without a server or executor): the context, registering input files as
artifacts, submitting a job; the digits data and MLP most job tests edit (a module may override
``model``), and their files registered as inputs."""

from __future__ import annotations

import threading

import pytest

from jobs import artifacts, specs
from jobs.config import Settings
from jobs.db import Database
from jobs.submit import submit_job
from tests import factories
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


#: The shape of one digits sample, as an uploaded dataset's metadata gives it.
DIGITS_SHAPE = [1, 8, 8]


@pytest.fixture(scope="module")
def data():
    return factories.digits()


@pytest.fixture(scope="module")
def model(data):
    return factories.train_mlp(data)


def register_digits(ctx: WorkerContext, folder, data, model, *splits: str) -> dict[str, str]:
    """The checkpoint and the training set (and each of ``splits``: ``queries``, ``test``)
    written under ``folder`` and registered: artifact ids by name."""
    paths = factories.write_files(folder, data, model)
    ids = {"checkpoint": register(ctx, paths["checkpoint"], "checkpoint")}
    sizes = {"train": len(data.y_train), "test": len(data.y_test), "queries": 4}
    for name in ("train", *splits):
        ids[name] = register(
            ctx, paths[name], "dataset", {"n_samples": sizes[name], "input_shape": DIGITS_SHAPE}
        )
    return ids
