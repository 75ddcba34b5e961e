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


def test_a_resumable_upload_in_parallel_parts(client, files):
    from .conftest import PART

    data = files["train"].read_bytes()
    assert len(data) > 3 * PART
    artifact = client.upload_resumable(files["train"], "dataset", parallel=3)
    assert artifact["sha256"] == hashlib.sha256(data).hexdigest() and artifact["kind"] == "dataset"
    assert artifact["filename"] == files["train"].name


def test_resuming_sends_what_is_missing_or_changed(server, client, files, tmp_path):
    """A session left half done (one part missing, one sent with other bytes) is finished by
    ``upload_resumable(upload_id=...)``; resuming a finished one returns its artifact."""
    import httpx

    from tests.stack import KEY

    data = files["test"].read_bytes()
    raw = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"})
    session = raw.post("/v1/uploads", json={"kind": "dataset", "size_bytes": len(data),
                                            "sha256": hashlib.sha256(data).hexdigest()}).json()  # fmt: skip
    size = session["part_size"]
    parts = [data[i : i + size] for i in range(0, len(data), size)]
    assert len(parts) >= 3
    for number, chunk in enumerate(parts, start=1):
        if number == 2:
            continue  # never sent
        body = bytes(len(chunk)) if number == 1 else chunk  # part 1: the wrong bytes
        assert raw.put(f"/v1/uploads/{session['id']}/parts/{number}", content=body).status_code == 200

    artifact = client.upload_resumable(files["test"], "dataset", upload_id=session["id"])

    assert artifact["sha256"] == hashlib.sha256(data).hexdigest()
    status = client.upload_status(session["id"])
    assert status["status"] == "completed" and status["artifact_id"] == artifact["id"]
    assert client.upload_resumable(files["test"], "dataset", upload_id=session["id"])["id"] == artifact["id"]
    raw.close()


def test_a_changed_file_is_refused_by_its_declared_digest(server, files, tmp_path):
    """The SDK declares the digest it computed; bytes that differ (here: a proxy that corrupts
    the body, simulated by a transport) are refused and nothing is stored."""
    import httpx

    from gif_client import Client
    from gif_client.errors import ApiError
    from tests.stack import KEY

    class Corrupting(httpx.HTTPTransport):
        def handle_request(self, request):
            if request.method == "POST" and request.url.path == "/v1/artifacts":
                body = request.read()
                marker = body.find(b"\r\n\r\n", body.find(b'name="file"')) + 4
                corrupted = body[:marker] + bytes([body[marker] ^ 0xFF]) + body[marker + 1 :]
                request = httpx.Request(
                    request.method, request.url, headers=request.headers, content=corrupted
                )
            return super().handle_request(request)

    with Client(server.url, api_key=KEY, max_retries=0, transport=Corrupting()) as corrupting:
        with pytest.raises(ApiError) as refused:
            corrupting.upload(files["queries"], "dataset")
    assert refused.value.status == 422 and refused.value.code == "digest-mismatch"


def test_a_dataset_with_sample_ids_gets_rankings_by_id(client, uploaded, digits):
    """``upload_dataset(..., sample_ids=)`` through a real server: a self-influence job's top-k
    names each sample by the caller's id as well as its row."""
    x, y = digits.x_train, digits.y_train
    train = client.upload_dataset({"inputs": x}, y, sample_ids=[i * 10 + 1 for i in range(len(y))])
    assert client.artifact(train["id"])["metadata"]["sample_ids"] is True
    body = {
        "type": "self_influence",
        "model": remove_body(uploaded)["model"],
        "train": train["id"],
        "top_k": 5,
    }
    done = client.wait(client.submit(body)["id"], timeout=120, poll=0.2)
    assert done["status"] == "succeeded", done.get("error")
    top = done["result"]["summary"]["self_influence"]
    assert len(top) == 5 and all(e["id"] == e["index"] * 10 + 1 for e in top)
    with pytest.raises(ValueError, match="sample_ids"):
        client.upload_dataset({"inputs": x, "sample_ids": y}, y)
