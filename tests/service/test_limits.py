"""Admission limits: per-tenant request rate (429 rate-limited), per-tenant active jobs (429
quota-exceeded), the global queue (503 queue-full), each with Retry-After and problem+json, and
nothing created by a refused submission."""

from __future__ import annotations

import pytest

from jobs import store
from service.limits import LocalRateLimiter, RedisRateLimiter
from service.main import create_app
from tests import factories
from tests.stack import RedisServer

from .conftest import client_for, make_settings, upload


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_local_rate_limiter_allows_the_burst_then_the_rate():
    clock = FakeClock()
    limiter = LocalRateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.wait_time("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.wait_time("a") == pytest.approx(0.5)
    assert limiter.wait_time("b") == 0.0  # tenants have budgets of their own
    clock.now += 0.5
    assert limiter.wait_time("a") == 0.0
    assert limiter.wait_time("a") == pytest.approx(0.5)
    clock.now += 10  # a long pause refills to the burst, never beyond
    assert [limiter.wait_time("a") for _ in range(4)][-1] == pytest.approx(0.5)


def test_redis_rate_limiter_is_shared_between_processes(tmp_path):
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    try:
        one, two = (RedisRateLimiter(server.url, rate=1.0, burst=4) for _ in range(2))
        waits = [limiter.wait_time("t") for limiter in (one, two, one, two, one)]
        assert waits[:4] == [0.0] * 4 and 0 < waits[4] <= 1.0
        assert one.wait_time("other") == 0.0
    finally:
        server.stop()
    assert RedisRateLimiter(server.url, rate=1.0, burst=1).wait_time("t") == 0.0  # down: fail open


def _problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert int(response.headers["retry-after"]) >= 1
    body = response.json()
    assert body["code"] == code
    return body


def test_requests_over_the_rate_get_429_with_retry_after(tmp_path):
    app = create_app(make_settings(tmp_path, rate_limit_per_second=0.5, rate_limit_burst=3))
    with client_for(app, "tenantA") as a, client_for(app, "tenantB") as b:
        assert [a.get("/v1/jobs").status_code for _ in range(3)] == [200, 200, 200]
        _problem(a.get("/v1/jobs"), 429, "rate-limited")
        assert b.get("/v1/jobs").status_code == 200
        assert a.get("/livez").status_code == 200  # probes are not rate limited


@pytest.fixture(scope="module")
def limited(tmp_path_factory, files):
    app = create_app(
        make_settings(tmp_path_factory.mktemp("limits"), max_active_jobs_per_tenant=2, max_waiting_jobs=3)
    )
    with client_for(app, "tenantA") as a, client_for(app, "tenantB") as b:
        ids = {
            name: upload(a, files[name], kind).json()["id"]
            for name, kind in (("checkpoint", "checkpoint"), ("train", "dataset"))
        }
        ids_b = {
            name: upload(b, files[name], kind).json()["id"]
            for name, kind in (("checkpoint", "checkpoint"), ("train", "dataset"))
        }
        yield app, a, b, ids, ids_b


def _body(ids: dict, cls: int) -> dict:
    model = {"arch": "mlp", "config": dict(factories.MLP_CONFIG), "checkpoint": ids["checkpoint"]}
    return {"type": "remove", "model": model, "train": ids["train"], "forget": {"class": cls}}


def _job_count(app) -> int:
    with app.state.services.db.read() as session:
        return sum(store.count_by_status(session).values())


def test_active_job_quota_then_queue_backpressure(limited):
    app, a, b, ids, ids_b = limited
    for cls in (0, 1):
        assert a.post("/v1/jobs", json=_body(ids, cls)).status_code == 202
    before = _job_count(app)
    _problem(a.post("/v1/jobs", json=_body(ids, 2)), 429, "quota-exceeded")
    # a fresh Idempotency-Key does not get around the quota
    _problem(a.post("/v1/jobs", json=_body(ids, 3), headers={"Idempotency-Key": "k1"}), 429, "quota-exceeded")
    assert b.post("/v1/jobs", json=_body(ids_b, 0)).status_code == 202  # B has a quota of its own
    assert _job_count(app) == before + 1
    # three jobs wait (no executor runs them): the queue is full for everyone
    _problem(b.post("/v1/jobs", json=_body(ids_b, 1)), 503, "queue-full")
    assert _job_count(app) == before + 1
    job_id = a.get("/v1/jobs").json()["data"][0]["id"]
    assert a.post(f"/v1/jobs/{job_id}/cancel").status_code == 202  # a finished job frees a slot
    assert a.post("/v1/jobs", json=_body(ids, 4)).status_code == 202


def test_idempotent_replay_is_answered_even_at_the_quota(tmp_path, files):
    app = create_app(make_settings(tmp_path, max_active_jobs_per_tenant=1))
    with client_for(app, "tenantA") as a:
        ids = {
            name: upload(a, files[name], kind).json()["id"]
            for name, kind in (("checkpoint", "checkpoint"), ("train", "dataset"))
        }
        headers = {"Idempotency-Key": "same-key-1"}
        first = a.post("/v1/jobs", json=_body(ids, 0), headers=headers)
        again = a.post("/v1/jobs", json=_body(ids, 0), headers=headers)
        assert first.status_code == again.status_code == 202
        assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
        _problem(a.post("/v1/jobs", json=_body(ids, 1)), 429, "quota-exceeded")
