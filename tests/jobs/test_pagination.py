"""Cursor pagination by (created_at, id): stable, no duplicates or gaps, tenant-scoped."""

from __future__ import annotations

import pytest

from jobs import store
from jobs.errors import ValidationFailed
from jobs.models import Job

from .conftest import TENANT, add_job


def _all_pages(db, limit, **kw):
    seen, after = [], None
    while True:
        with db.read() as session:
            page = store.list_jobs(session, TENANT, after=after, limit=limit, **kw)
        seen += [job.id for job in page.data]
        if not page.has_more:
            return seen
        after = page.data[-1].id


def test_pages_cover_everything_once_even_with_equal_timestamps(db):
    ids = [add_job(db) for _ in range(25)]
    with db.begin() as session:  # force ties on created_at: the id breaks them
        first = session.get(Job, ids[0]).created_at
        for job_id in ids[:10]:
            session.get(Job, job_id).created_at = first
    seen = _all_pages(db, 4)
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    assert seen[-10:] == sorted(ids[:10], reverse=True)


def test_inserts_between_pages_do_not_shift_the_cursor(db):
    old = [add_job(db) for _ in range(6)]
    with db.read() as session:
        page = store.list_jobs(session, TENANT, limit=3)
    add_job(db)  # newer than the cursor: belongs before page 1, not in page 2
    with db.read() as session:
        rest = store.list_jobs(session, TENANT, after=page.data[-1].id, limit=10)
    assert [j.id for j in page.data] + [j.id for j in rest.data] == list(reversed(old))


def test_status_filter_and_other_tenants(db):
    mine = [add_job(db) for _ in range(3)]
    add_job(db, "t2")
    with db.begin() as session:
        store.request_cancel(session, TENANT, mine[1])
    assert _all_pages(db, 2, status="cancelled") == [mine[1]]
    assert set(_all_pages(db, 10)) == set(mine)
    with db.read() as session, pytest.raises(ValidationFailed):
        store.list_jobs(session, "t2", after=mine[0])  # another tenant's id is not a cursor
