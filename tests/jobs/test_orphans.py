"""The orphaned-blob sweep: what it deletes, what it keeps, and that it cannot race a commit."""

from __future__ import annotations

import os
import threading
import time

import pytest

from jobs import artifacts, orphans
from jobs.blobs import BlobStore
from jobs.db import Database

from .conftest import TENANT

OLD = time.time() - 3 * 3600


def _blob(blobs: BlobStore, content: bytes, *, old: bool = True) -> str:
    staged = blobs.put([content])
    if old:
        os.utime(blobs.path(staged.sha256), (OLD, OLD))
    return staged.sha256


def _name(db: Database, sha: str) -> None:
    with db.begin() as session:
        artifacts.create_artifact(
            session, tenant_id=TENANT, kind="dataset", format="npz", sha256=sha, size_bytes=1
        )


@pytest.fixture
def blobs(settings) -> BlobStore:
    return BlobStore(settings.blob_root)


def test_sweeps_old_unnamed_blobs_and_temporary_files_only(db, blobs):
    named = _blob(blobs, b"named")
    _name(db, named)
    orphan = _blob(blobs, b"orphan" * 10)
    recent = _blob(blobs, b"recent orphan", old=False)
    stale_tmp, fresh_tmp = blobs.tmp_path(), blobs.tmp_path()
    stale_tmp.write_bytes(b"x" * 7)
    fresh_tmp.write_bytes(b"upload in progress")
    os.utime(stale_tmp, (OLD, OLD))

    result = orphans.sweep(db, blobs, grace_seconds=3600)

    assert (result.blobs, result.temporary, result.bytes) == (1, 1, 60 + 7)
    assert not blobs.exists(orphan) and not stale_tmp.exists()
    assert blobs.exists(named) and blobs.exists(recent) and fresh_tmp.exists()
    assert orphans.sweep(db, blobs, grace_seconds=3600) == orphans.SweepResult()  # nothing left to do


def test_a_blob_named_after_the_first_look_is_kept(db, blobs, monkeypatch):
    """The row appears between the sweep's listing and its deletion: the re-check under the
    blob's lock sees it."""
    sha = _blob(blobs, b"about to be named")
    _name(db, sha)
    monkeypatch.setattr(artifacts, "referenced", lambda session, digests: set())  # a stale first look
    assert orphans.sweep(db, blobs, grace_seconds=60).blobs == 0
    assert blobs.exists(sha)


def test_periodic_sweep_runs_when_due_and_never_raises(db, blobs, monkeypatch):
    _blob(blobs, b"one")
    periodic = orphans.PeriodicSweep(db, blobs, grace_seconds=60, every_seconds=3600)
    assert periodic().blobs == 1
    _blob(blobs, b"two")
    assert periodic() is None  # not due again for an hour
    assert orphans.PeriodicSweep(db, blobs, grace_seconds=0)() is None  # 0: off
    broken = orphans.PeriodicSweep(db, blobs, grace_seconds=60)
    monkeypatch.setattr(orphans, "sweep", lambda *a: (_ for _ in ()).throw(OSError("disk gone")))
    assert broken() is None


def test_on_postgresql_the_sweep_waits_for_a_commit_of_the_same_content(tmp_path):
    """A job stores content that already sits in the store as an orphan (its file write is a
    no-op) and names it in a transaction holding the blob's lock; a sweep that starts meanwhile
    waits for that transaction, then sees the row and keeps the file."""
    from tests.stack import PostgresDatabase

    database = PostgresDatabase()
    db = Database(database.url)
    try:
        db.create_all()
        blobs = BlobStore(tmp_path / "blobs")
        sha = _blob(blobs, b"same content")
        locked, release = threading.Event(), threading.Event()

        def commit_same_content() -> None:
            with db.begin() as session:
                artifacts.lock_blob(session, sha)
                locked.set()
                artifacts.create_artifact(session, tenant_id=TENANT, kind="weights", format="safetensors",
                                          sha256=sha, size_bytes=12)  # fmt: skip
                release.wait(10)

        job = threading.Thread(target=commit_same_content)
        job.start()
        assert locked.wait(10)
        sweeper = threading.Thread(target=lambda: setattr(sweeper, "result", orphans.sweep(db, blobs, 60)))
        sweeper.start()
        sweeper.join(timeout=1.0)
        assert sweeper.is_alive(), "the sweep did not wait for the blob's lock"
        release.set()
        job.join(10)
        sweeper.join(10)
        assert sweeper.result.blobs == 0 and blobs.exists(sha)
    finally:
        db.dispose()
        database.drop()
