"""Retry, backoff, Retry-After, error mapping and wait logic against an httpx.MockTransport."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest

from gif_client import (
    ApiError,
    AuthError,
    Client,
    IntegrityError,
    JobCancelled,
    JobFailed,
    NetworkError,
    NotFound,
    ValidationError,
    WaitTimeout,
)
from gif_client._http import parse_retry_after


def problem(status: int, code: str, detail: str = "x", headers: dict | None = None) -> httpx.Response:
    body = {"type": f"urn:gif-service:problem:{code}", "title": code, "status": status, "detail": detail,
            "code": code, "request_id": "req-1"}  # fmt: skip
    return httpx.Response(
        status, json=body, headers={"content-type": "application/problem+json", **(headers or {})}
    )


def make(handler, max_retries: int = 2) -> tuple[Client, list[float]]:
    c = Client("http://svc", api_key="k", max_retries=max_retries, transport=httpx.MockTransport(handler))
    sleeps: list[float] = []
    c._http.sleep = sleeps.append
    return c, sleeps


def test_post_retried_on_503_with_same_idempotency_key_and_retry_after():
    seen: list[httpx.Request] = []

    def handler(request):
        seen.append(request)
        if len(seen) < 3:
            return problem(503, "service-unavailable", headers={"Retry-After": "3"})
        return httpx.Response(202, json={"id": "job_1", "status": "queued"})

    c, sleeps = make(handler)
    assert c.submit({"type": "remove"})["id"] == "job_1"
    assert len(seen) == 3
    keys = {r.headers["idempotency-key"] for r in seen}
    assert len(keys) == 1 and len(keys.pop()) == 36  # one uuid4 reused on every attempt
    assert all(r.headers["authorization"] == "Bearer k" for r in seen)
    assert sleeps and all(s >= 3 for s in sleeps)


def test_explicit_idempotency_key_is_sent():
    seen = []

    def handler(request):
        seen.append(request)
        return httpx.Response(202, json={"id": "job_1"})

    c, _ = make(handler)
    c.submit({}, idempotency_key="run-42")
    assert seen[0].headers["idempotency-key"] == "run-42"


def test_gives_up_after_max_retries_with_backoff():
    calls = []

    def handler(request):
        calls.append(1)
        return problem(500, "internal")

    c, sleeps = make(handler, max_retries=3)
    with pytest.raises(ApiError) as info:
        c.job("job_1")
    assert info.value.status == 500 and info.value.code == "internal" and info.value.request_id == "req-1"
    assert len(calls) == 4 and len(sleeps) == 3
    assert all(0 <= s <= 8 for s in sleeps)


@pytest.mark.parametrize("status", [408, 429, 502])
def test_transient_statuses_are_retried(status):
    calls = []

    def handler(request):
        calls.append(1)
        return problem(status, "x") if len(calls) == 1 else httpx.Response(200, json={"id": "j"})

    c, _ = make(handler)
    assert c.job("j") == {"id": "j"} and len(calls) == 2


def test_connection_errors_retried_then_network_error():
    calls = []

    def handler(request):
        calls.append(1)
        raise httpx.ConnectError("refused", request=request)

    c, sleeps = make(handler)
    with pytest.raises(NetworkError):
        c.job("j")
    assert len(calls) == 3 and len(sleeps) == 2


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [(401, "unauthenticated", AuthError), (404, "not-found", NotFound), (422, "validation-error", ValidationError),
     (409, "job-not-cancellable", ApiError)],
)  # fmt: skip
def test_client_errors_are_mapped_and_not_retried(status, code, cls):
    calls = []

    def handler(request):
        calls.append(1)
        return problem(status, code, "nope")

    c, sleeps = make(handler)
    with pytest.raises(cls) as info:
        c.cancel("j")
    assert type(info.value) is cls
    assert (info.value.status, info.value.code, info.value.detail) == (status, code, "nope")
    assert len(calls) == 1 and sleeps == []


def test_idempotency_in_flight_409_is_retried():
    calls = []

    def handler(request):
        calls.append(1)
        if len(calls) == 1:
            return problem(409, "idempotency-key-in-flight", headers={"Retry-After": "1"})
        return httpx.Response(202, json={"id": "j"})

    c, sleeps = make(handler)
    assert c.submit({})["id"] == "j" and sleeps[0] >= 1


def test_parse_retry_after():
    assert parse_retry_after("7") == 7
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0


def _job_handler(statuses, retry_after="5"):
    states = iter(statuses)

    def handler(request):
        status = next(states)
        job = {"id": "j", "status": status, "progress": None, "error": None}
        if status == "failed":
            job["error"] = {"code": "numerical_error", "message": "nan"}
        headers = {} if status in ("succeeded", "failed", "cancelled") else {"Retry-After": retry_after}
        return httpx.Response(200, json=job, headers=headers)

    return handler


def test_wait_honours_retry_after_and_reports_progress():
    c, sleeps = make(_job_handler(["queued", "running", "succeeded"]))
    seen = []
    assert c.wait("j", on_progress=lambda job: seen.append(job["status"]))["status"] == "succeeded"
    assert seen == ["queued", "running", "succeeded"] and sleeps == [5, 5]


def test_wait_outcomes():
    with pytest.raises(JobFailed) as info:
        make(_job_handler(["running", "failed"]))[0].wait("j", poll=0)
    assert info.value.job["error"]["code"] == "numerical_error"
    with pytest.raises(JobCancelled):
        make(_job_handler(["cancelling", "cancelled"]))[0].wait("j", poll=0)
    c, _ = make(_job_handler(["running"] * 100))
    with pytest.raises(WaitTimeout) as timeout:
        c.wait("j", timeout=0)
    assert timeout.value.job["status"] == "running"


def test_pagination_follows_last_id():
    pages = {None: (["a", "b"], True), "b": (["c"], False)}

    def handler(request):
        after = request.url.params.get("after")
        assert request.url.params["limit"] == "2" and request.url.params["status"] == "queued"
        ids, more = pages[after]
        return httpx.Response(200, json={"object": "list", "data": [{"id": i} for i in ids],
                                         "first_id": ids[0], "last_id": ids[-1], "has_more": more})  # fmt: skip

    c, _ = make(handler)
    assert [j["id"] for j in c.jobs(status="queued", limit=2)] == ["a", "b", "c"]


def test_download_rejects_a_wrong_digest(tmp_path):
    content = b"weights"

    def handler(request):
        if request.url.path.endswith("/content"):
            return httpx.Response(200, content=b"tampered")
        return httpx.Response(200, json={"id": "art", "sha256": hashlib.sha256(content).hexdigest()})

    c, _ = make(handler)
    with pytest.raises(IntegrityError):
        c.download("art", tmp_path / "w.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_env_fallbacks(monkeypatch):
    monkeypatch.setenv("GIF_BASE_URL", "http://env-host:9")
    monkeypatch.setenv("GIF_API_KEY", "env-key")
    c = Client()
    assert c.base_url == "http://env-host:9" and c.api_key == "env-key"
    monkeypatch.delenv("GIF_BASE_URL")
    assert Client().base_url == "http://127.0.0.1:8000"
    assert json.dumps(Client("http://x", api_key="k").api_key) == '"k"'
