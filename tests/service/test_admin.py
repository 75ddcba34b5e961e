"""The admin terminate route's preconditions (the kill itself: tests/service/test_e2e.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from jobs import store
from jobs.models import Job
from service.main import create_app

from .conftest import client_for, make_settings, remove_body


@pytest.fixture
def cancelling(app, client_a, uploaded) -> str:
    """A job of tenant A claimed by a (pretend) worker and then cancelled: ``cancelling``."""
    job_id = client_a.post("/v1/jobs", json=remove_body(uploaded)).json()["id"]
    db = app.state.services.db
    with db.begin() as session:
        assert store.claim(session, job_id, "elsewhere:4242", 60) is not None
    assert client_a.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelling"
    return job_id


def _terminate(client, job_id: str):
    return client.post(f"/v1/admin/jobs/{job_id}/terminate")


def test_only_admin_keys_may_terminate(client_b, cancelling):
    for job_id in (cancelling, "job_01JD3Q7W8M6Z5K2R9T0V4X1YBC"):
        refused = _terminate(client_b, job_id)
        assert refused.status_code == 403 and refused.json()["code"] == "forbidden"


def test_unknown_and_malformed_ids_are_not_found(client_a):
    for job_id in ("job_01JD3Q7W8M6Z5K2R9T0V4X1YBC", "not-an-id"):
        assert _terminate(client_a, job_id).json()["code"] == "not-found"


def test_a_job_must_be_cancelling_and_past_its_grace_period(app, client_a, uploaded, cancelling):
    queued = client_a.post("/v1/jobs", json=remove_body(uploaded, forget={"class": 2})).json()["id"]
    refused = _terminate(client_a, queued)
    assert refused.status_code == 409 and refused.json()["code"] == "job-not-terminable"
    assert "cancel it first" in refused.json()["detail"]
    early = _terminate(client_a, cancelling)  # the grace period (120 s by default) has not passed
    assert early.status_code == 409 and "may stop on its own" in early.json()["detail"]
    assert 100 <= int(early.headers["Retry-After"]) <= 120
    with app.state.services.db.begin() as session:  # as if the cancel were asked 3 minutes ago
        asked = session.get(Job, cancelling).cancel_requested_at
        session.execute(
            update(Job).where(Job.id == cancelling).values(cancel_requested_at=asked - timedelta(minutes=3))
        )
    late = _terminate(client_a, cancelling)  # this app runs no executor: nothing could kill it
    assert late.status_code == 503 and late.json()["code"] == "service-unavailable"
    assert client_a.get(f"/v1/jobs/{cancelling}").json()["status"] == "cancelling"  # unchanged


def test_an_executor_that_holds_no_such_process_changes_nothing(tmp_path, files):
    class NoProcess:
        def terminate(self, lease):
            self.asked = lease
            return None

    app = create_app(make_settings(tmp_path, cancel_grace_seconds=0))
    with client_for(app, "tenantA") as client:
        uploaded = {}
        for name, kind in (("checkpoint", "checkpoint"), ("train", "dataset")):
            with open(files[name], "rb") as f:
                uploaded[name] = client.post("/v1/artifacts", files={"file": (files[name].name, f)},
                                             data={"kind": kind}).json()  # fmt: skip
        job_id = client.post("/v1/jobs", json=remove_body(uploaded)).json()["id"]
        with app.state.services.db.begin() as session:
            store.claim(session, job_id, "elsewhere:4242", 60)
        client.post(f"/v1/jobs/{job_id}/cancel")
        app.state.executor = executor = NoProcess()
        refused = _terminate(client, job_id)
        assert refused.status_code == 409 and "no worker process holds" in refused.json()["detail"]
        assert executor.asked.job_id == job_id and executor.asked.owner == "elsewhere:4242"
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelling"
