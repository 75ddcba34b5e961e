"""Retention: expired artifacts are gone (410), their blobs let go of when no unexpired row holds
them; and the job store gains the columns a store of an earlier version lacks."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import inspect, text, update

from jobs import artifacts, orphans, retention
from jobs.blobs import BlobStore
from jobs.clock import utcnow
from jobs.db import Database
from jobs.models import Artifact, Job
from jobs.views import job_view

from .conftest import TENANT, add_job

PAST, FUTURE = utcnow() - timedelta(hours=1), utcnow() + timedelta(days=1)


@pytest.fixture
def blobs(settings) -> BlobStore:
    return BlobStore(settings.blob_root)


def _artifact(
    db: Database, sha: str, *, tenant: str = TENANT, expires_at=None, source: str | None = None
) -> str:
    with db.begin() as session:
        return artifacts.create_artifact(session, tenant_id=tenant, kind="dataset", format="npz", sha256=sha,
                                         size_bytes=4, expires_at=expires_at, source_sha256=source).id  # fmt: skip


def _purged(db: Database, artifact_id: str) -> bool:
    with db.read() as session:
        return session.get(Artifact, artifact_id).purged_at is not None


def test_an_expired_blob_goes_once_no_unexpired_row_holds_it(db, blobs):
    sha = blobs.put([b"data"]).sha256
    mine = _artifact(db, sha, expires_at=PAST)
    theirs = _artifact(db, sha, tenant="t2", expires_at=FUTURE)  # the same content, kept longer

    first = retention.purge_expired(db, blobs)

    assert (first.artifacts, first.blobs) == (1, 0) and _purged(db, mine) and blobs.exists(sha)
    with db.begin() as session:
        session.execute(update(Artifact).where(Artifact.id == theirs).values(expires_at=PAST))
    second = retention.purge_expired(db, blobs)
    assert (second.artifacts, second.blobs, second.bytes) == (1, 1, 4) and not blobs.exists(sha)
    assert retention.purge_expired(db, blobs) == retention.PurgeResult()  # nothing left to do


def test_an_artifact_an_unfinished_job_reads_waits_for_the_job(db, blobs):
    sha = blobs.put([b"in use"]).sha256
    artifact_id = _artifact(db, sha, expires_at=PAST)
    job_id = add_job(db)
    with db.begin() as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(inputs_json=json.dumps({"train": artifact_id}))
        )
    assert retention.purge_expired(db, blobs).artifacts == 0 and blobs.exists(sha)
    with db.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status="succeeded"))
    assert retention.purge_expired(db, blobs).blobs == 1 and not blobs.exists(sha)


def test_expired_uploads_are_not_dedup_hits_and_purged_rows_hold_no_blob(db, blobs):
    sha = blobs.put([b"old upload"]).sha256
    old = _artifact(db, sha, expires_at=PAST)
    with db.read() as session:
        assert artifacts.find_upload(session, TENANT, sha, "dataset") is None
    retention.purge_expired(db, blobs)
    blobs.put([b"old upload"])  # uploaded again: the blob is back, for a new row
    fresh = _artifact(db, sha)
    with db.read() as session:
        assert artifacts.find_upload(session, TENANT, sha, "dataset").id == fresh
        assert artifacts.referenced(session, [sha]) == {sha}
    with db.begin() as session:
        session.execute(update(Artifact).where(Artifact.id == fresh).values(purged_at=utcnow()))
    with db.read() as session:  # only purged rows name it now: an orphan
        assert artifacts.referenced(session, [sha]) == set() and not artifacts.blob_in_use(session, sha)
    assert _purged(db, old)


def test_a_result_reports_its_expiry(db):
    job_id = add_job(db)
    entries = [{"id": "art_1", "kind": "weights", "expires_at": "2000-01-01T00:00:00.000000Z"},
               {"id": "art_2", "kind": "report", "expires_at": "2999-01-01T00:00:00.000000Z"}]  # fmt: skip
    with db.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(
            status="succeeded", result_json=json.dumps({"artifacts": entries, "summary": {}, "provenance": {}})))  # fmt: skip
    with db.read() as session:
        result = job_view(session.get(Job, job_id))["result"]
    assert result["expired"] is True and result["expires_at"] == "2000-01-01T00:00:00.000000Z"


def test_the_housekeeping_purges_expired_artifacts(db, blobs):
    sha = blobs.put([b"expired"]).sha256
    _artifact(db, sha, expires_at=PAST)
    orphans.PeriodicSweep(db, blobs, grace_seconds=0)()
    assert not blobs.exists(sha)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_store_of_an_earlier_version_gains_the_new_columns(backend, tmp_path):
    from tests.stack import PostgresDatabase

    pg = PostgresDatabase() if backend == "postgresql" else None
    db = Database(pg.url if pg else f"sqlite:///{tmp_path / 'old.db'}")
    try:
        db.create_all()
        with db.engine.begin() as conn:  # what a store made before retention looked like
            conn.execute(text("DROP INDEX ix_artifacts_expires"))
            conn.execute(text("ALTER TABLE artifacts DROP COLUMN expires_at"))
            conn.execute(text("ALTER TABLE artifacts DROP COLUMN purged_at"))
        assert "expires_at" not in {c["name"] for c in inspect(db.engine).get_columns("artifacts")}

        db.create_all()
        db.create_all()  # and again: nothing left to add

        columns = {c["name"] for c in inspect(db.engine).get_columns("artifacts")}
        assert {"expires_at", "purged_at"} <= columns
        assert "ix_artifacts_expires" in {i["name"] for i in inspect(db.engine).get_indexes("artifacts")}
        _artifact(db, "c" * 64, expires_at=PAST)
        with db.read() as session:
            assert [a.sha256 for a in artifacts.due_for_purge(session)] == ["c" * 64]
    finally:
        db.dispose()
        if pg:
            pg.drop()
