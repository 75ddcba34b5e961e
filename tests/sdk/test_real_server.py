"""The SDK against a real ``gif-service serve`` with a worker: upload, submit, wait, download."""

from __future__ import annotations

import hashlib

import pytest

from gif_client import AuthError, Client, NotFound, ValidationError

from .conftest import remove_body

pytestmark = pytest.mark.slow


def test_upload_submit_wait_download(client, uploaded, files, tmp_path):
    assert uploaded["checkpoint"]["kind"] == "checkpoint" and uploaded["train"]["kind"] == "dataset"
    again = client.upload(files["checkpoint"], "checkpoint")  # same bytes: the same artifact
    assert again["id"] == uploaded["checkpoint"]["id"]
    assert client.artifact(uploaded["train"]["id"])["sha256"] == uploaded["train"]["sha256"]

    job = client.submit(remove_body(uploaded), idempotency_key="sdk-e2e-1")
    assert client.submit(remove_body(uploaded), idempotency_key="sdk-e2e-1")["id"] == job["id"]
    seen = []
    done = client.wait(job["id"], timeout=120, poll=0.2, on_progress=lambda j: seen.append(j["status"]))
    assert done["status"] == "succeeded" and seen[-1] == "succeeded"

    weights = client.result_artifact(done, "weights")
    path = client.download(weights["id"], tmp_path / "out" / "weights.safetensors")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == weights["sha256"]
    assert [p.name for p in path.parent.iterdir()] == ["weights.safetensors"]  # no temp file left
    with pytest.raises(KeyError):
        client.result_artifact(done, "scores")

    assert job["id"] in [j["id"] for j in client.jobs(status="succeeded", limit=1)]
    events = [e["type"] for e in client.events(job["id"], limit=1)]  # one event per page
    assert events[-1] == "job.succeeded" and len(events) >= 3


def test_error_mapping(server, client, uploaded):
    with (
        Client(server.url, api_key="wrong-key-0123456789", max_retries=0) as bad,
        pytest.raises(AuthError) as auth,
    ):
        bad.job("job_x")
    assert auth.value.status == 401 and auth.value.code == "unauthenticated" and auth.value.request_id

    body = remove_body(uploaded)
    body["forget"] = {"class": 99}
    with pytest.raises(ValidationError) as invalid:
        client.submit(body)
    assert invalid.value.status == 422 and invalid.value.code == "validation-error"
    assert invalid.value.request_id

    with pytest.raises(NotFound) as missing:
        client.job("job_does_not_exist")
    assert missing.value.code == "not-found"
