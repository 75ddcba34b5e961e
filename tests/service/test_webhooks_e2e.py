"""Webhooks through real processes: ``gif-service serve`` (embedded, then distributed with a
Celery worker, Redis and PostgreSQL) delivering to a real receiver on 127.0.0.1, which
``GIF_WEBHOOK_ALLOWED_HOSTS`` opens; signatures checked with the reference ``standardwebhooks``.

Backoff, timeouts and the rotation grace are shrunk to fractions of seconds so the module runs in
well under a minute. Jobs that need not compute are cancelled right after submit (a terminal
event like any other); one job per mode runs to success.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest
import standardwebhooks

from gif_client import Client
from tests.stack import KEY, ROOT, Stack, free_port

from .conftest import remove_body
from .webhook_receiver import Receiver

pytestmark = pytest.mark.slow

FAST_WEBHOOKS = {
    "GIF_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1/32",
    "GIF_WEBHOOK_POLL_SECONDS": "0.1",
    "GIF_WEBHOOK_TIMEOUT_SECONDS": "1",
    "GIF_WEBHOOK_RETRY_SECONDS": "0.3",
    "GIF_WEBHOOK_SECRET_GRACE_SECONDS": "4",
}


@pytest.fixture(scope="module")
def receiver():
    with Receiver() as running:
        yield running


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, files):
    with Stack("embedded", tmp_path_factory.mktemp("webhooks"), extra_env=FAST_WEBHOOKS) as stack:
        stack.inputs = stack.upload(files, ("checkpoint", "train"))  # type: ignore[attr-defined]
        yield stack


def _body(inputs: dict, url: str, **webhook: object) -> dict:
    return remove_body(inputs, webhook={"url": url, **webhook})


def _submit(client: httpx.Client, body: dict) -> dict:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def _cancelled_job(stack: Stack, url: str) -> str:
    job = _submit(stack.client, _body(stack.inputs, url))  # type: ignore[attr-defined]
    assert stack.client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    return job["id"]


def _attempts(client: httpx.Client, job_id: str, count: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deliveries = client.get(f"/v1/jobs/{job_id}").json()["webhook"]["deliveries"]
        if len(deliveries) >= count:
            return deliveries
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} shows {deliveries} after {timeout} s")


def _verify(secret: str, request) -> dict:
    return standardwebhooks.Webhook(secret).verify(request.body, request.headers)


def test_a_finished_job_is_delivered_signed_with_the_job_object(embedded, receiver):
    secret = embedded.client.get("/v1/webhooks/secret").json()["secret"]
    job = _submit(embedded.client, _body(embedded.inputs, receiver.url("/done")))
    assert job["webhook"] == {"url": receiver.url("/done"), "events": ["completed"], "deliveries": []}
    receiver.wait(lambda got: any(job["id"].encode() in r.body for r in got), timeout=120)
    request = receiver.for_job(job["id"])[-1]
    payload = _verify(secret, request)
    assert payload["type"] == "job.succeeded" and request.path == "/done"
    assert payload["data"]["id"] == job["id"] and payload["data"]["status"] == "succeeded"
    served = embedded.client.get(f"/v1/jobs/{job['id']}").json()
    assert payload["data"]["result"] == served["result"]
    assert request.headers["webhook-id"].startswith("msg_")
    [attempt] = _attempts(embedded.client, job["id"], 1)
    assert (
        attempt["status_code"] == 204
        and attempt["error"] is None
        and attempt["id"] == request.headers["webhook-id"]
    )


def test_retries_after_a_500_and_a_timeout_with_the_same_webhook_id(embedded, receiver):
    receiver.script[:] = [500, ("sleep", 2.0)]
    job_id = _cancelled_job(embedded, receiver.url("/flaky"))
    attempts = _attempts(embedded.client, job_id, 3)
    assert [(a["attempt"], a["status_code"]) for a in attempts] == [(1, 500), (2, None), (3, 204)]
    assert attempts[0]["error"] == "HTTP 500" and "timed out" in attempts[1]["error"]
    assert attempts[2]["error"] is None and attempts[0]["type"] == "job.cancelled"
    requests = receiver.for_job(job_id)
    assert len({r.headers["webhook-id"] for r in requests}) == 1 and len(requests) == 3
    assert len({r.body for r in requests}) == 1  # the same bytes on every retry


def test_a_redirect_is_not_followed(embedded, receiver):
    receiver.script[:] = [("redirect", receiver.url("/elsewhere")), 204]
    job_id = _cancelled_job(embedded, receiver.url("/moved"))
    attempts = _attempts(embedded.client, job_id, 2)
    assert attempts[0]["status_code"] == 302 and "not followed" in attempts[0]["error"]
    assert attempts[1]["status_code"] == 204
    assert [r.path for r in receiver.for_job(job_id)] == ["/moved", "/moved"]


def test_rotation_signs_with_both_secrets_during_the_grace_then_the_new_only(embedded, receiver):
    """Through the SDK: ``webhook_secret``, ``rotate_webhook_secret`` and ``submit(webhook=...)``."""
    with Client(f"http://127.0.0.1:{embedded.port}", KEY) as sdk:
        old = sdk.webhook_secret()
        new = sdk.rotate_webhook_secret()
        rotated_at = time.monotonic()
        assert new != old and sdk.webhook_secret() == new
        body = _body(embedded.inputs, "unused")
        del body["webhook"]
        during = sdk.submit(body, webhook=receiver.url("/rotation"))["id"]
        sdk.cancel(during)
        receiver.wait(lambda got: any(during.encode() in r.body for r in got))
        request = receiver.for_job(during)[-1]
        assert _verify(old, request)["data"]["id"] == during and _verify(new, request)["data"]["id"] == during
        time.sleep(max(0.0, rotated_at + 4.2 - time.monotonic()))  # GIF_WEBHOOK_SECRET_GRACE_SECONDS
        after = sdk.submit(body, webhook={"url": receiver.url("/rotation"), "events": ["completed"]})["id"]
        sdk.cancel(after)
    receiver.wait(lambda got: any(after.encode() in r.body for r in got))
    request = receiver.for_job(after)[-1]
    assert _verify(new, request)["data"]["id"] == after
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        _verify(old, request)


def test_the_example_receiver_verifies_and_prints_a_delivery(embedded, tmp_path):
    """examples/pipelines/webhook_receiver.py, run as documented, against the real server."""
    port = free_port()
    secret = embedded.client.get("/v1/webhooks/secret").json()["secret"]
    log = tmp_path / "receiver.log"
    script = ROOT / "examples" / "pipelines" / "webhook_receiver.py"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(script), "--host", "127.0.0.1", "--port", str(port)],
                                env={**os.environ, "GIF_WEBHOOK_SECRET": secret}, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while b"listening" not in log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)
        job_id = _cancelled_job(embedded, f"http://127.0.0.1:{port}/hook")
        [attempt] = _attempts(embedded.client, job_id, 1)
        assert attempt["status_code"] == 204, attempt
        deadline = time.monotonic() + 5
        while job_id.encode() not in log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)
        printed = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        # "stage" is printed too when a worker had started the job before the cancellation landed
        facts = [{k: line[k] for k in ("type", "job", "status")} for line in printed]
        assert {"type": "job.cancelled", "job": job_id, "status": "cancelled"} in facts
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_restart_mid_backoff_still_delivers_with_the_same_webhook_id(embedded, receiver):
    receiver.script[:] = [500] * 1000  # fails until the API process is killed
    job_id = _cancelled_job(embedded, receiver.url("/restart"))
    _attempts(embedded.client, job_id, 1)
    first_id = receiver.for_job(job_id)[0].headers["webhook-id"]
    embedded.restart_api(wait=False)  # SIGKILL, then a new process on the same store
    receiver.script[:] = []  # so an accepted attempt can only come from the new process
    embedded._wait_ready()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        attempts = embedded.client.get(f"/v1/jobs/{job_id}").json()["webhook"]["deliveries"]
        if attempts[-1]["status_code"] == 204:
            break
        time.sleep(0.1)
    assert attempts[-1]["status_code"] == 204 and attempts[-1]["id"] == first_id
    assert {r.headers["webhook-id"] for r in receiver.for_job(job_id)} == {first_id}


def test_distributed_mode_delivers_from_the_api_after_the_worker_is_gone(tmp_path_factory, files, receiver):
    """The job runs on a Celery worker; the receiver refuses until that worker is killed, so the
    accepted delivery cannot have come from it."""
    env = {**FAST_WEBHOOKS, "GIF_WEBHOOK_RETRY_SECONDS": "0.5"}
    with Stack("distributed", tmp_path_factory.mktemp("webhooks-dist"), extra_env=env) as stack:
        inputs = stack.upload(files, ("checkpoint", "train"))
        secret = stack.client.get("/v1/webhooks/secret").json()["secret"]
        receiver.script[:] = [503] * 1000
        job = _submit(stack.client, _body(inputs, receiver.url("/dist"), events=["completed", "progress"]))
        receiver.wait(
            lambda got: any(b"job.succeeded" in r.body and job["id"].encode() in r.body for r in got), 120
        )
        for worker in stack.workers:
            worker.kill()
        receiver.script[:] = []
        time_killed = time.monotonic()
        accepted = receiver.wait(
            lambda got: any(
                r.at > time_killed and b"job.succeeded" in r.body and job["id"].encode() in r.body
                for r in got
            )
        )
        request = next(r for r in accepted if r.at > time_killed and b"job.succeeded" in r.body)
        assert _verify(secret, request)["data"]["status"] == "succeeded"
        types = {json.loads(r.body)["type"] for r in receiver.for_job(job["id"])}
        assert types == {"job.progress", "job.succeeded"}
