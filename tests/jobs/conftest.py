"""A fresh SQLite job store per test, and helpers to put jobs in a given state."""

from __future__ import annotations

import pytest

from jobs import artifacts, store
from jobs.config import Settings
from jobs.db import Database

TENANT = "t1"


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path, api_keys="t1:k1", executor="none", workers=0)


@pytest.fixture
def db(settings) -> Database:
    database = Database(settings.db_url)
    database.create_all()
    yield database
    database.dispose()


def add_job(db: Database, tenant: str = TENANT, *, queued: bool = True, max_attempts: int = 3) -> str:
    from jobs.states import JobStatus

    with db.begin() as session:
        job = store.create_job(
            session,
            tenant_id=tenant,
            type_="remove",
            request={"type": "remove"},
            request_sha256="0" * 64,
            inputs={},
            max_attempts=max_attempts,
        )
        if queued:
            assert store.transition(session, job.id, tenant, JobStatus.VALIDATING, JobStatus.QUEUED)
        return job.id


def add_dataset(db: Database, tenant: str = TENANT, n: int = 100, counts: list[int] | None = None) -> str:
    with db.begin() as session:
        return artifacts.create_artifact(
            session,
            tenant_id=tenant,
            kind="dataset",
            format="safetensors",
            sha256="a" * 64,
            size_bytes=1,
            metadata={"n_samples": n, "input_shape": [1, 8, 8], "label_counts": counts or [10] * 10},
        ).id


def add_checkpoint(db: Database, tenant: str = TENANT) -> str:
    with db.begin() as session:
        return artifacts.create_artifact(
            session,
            tenant_id=tenant,
            kind="checkpoint",
            format="safetensors",
            sha256="b" * 64,
            size_bytes=1,
        ).id


def status_of(db: Database, job_id: str, tenant: str = TENANT) -> str:
    with db.read() as session:
        return store.require_job(session, tenant, job_id).status
