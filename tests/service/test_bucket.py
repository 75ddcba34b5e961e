"""Blobs in an S3-compatible bucket: the service on "hosts" that share no filesystem.

A real S3-compatible server process (tests/stack.py::S3Server), the API and two Celery workers,
each with a data folder of its own, so every byte a worker reads was uploaded through the API
and every byte the API serves was stored by a worker, through the bucket.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from pathlib import Path

import httpx
import pytest
import safetensors.torch
import torch

import gif
from tests import factories
from tests.stack import Stack, wait_finished

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with Stack("distributed", tmp_path_factory.mktemp("bucket"), workers=2, bucket=True,
               extra_env={"GIF_UPLOAD_PART_BYTES": str(64 * 1024)}) as stack:  # fmt: skip
        yield stack


@pytest.fixture(scope="module")
def inputs(stack, files) -> dict[str, dict]:
    return stack.upload(files)


def _local_copy(home: Path, sha256: str) -> Path:
    return home / "blobs" / "sha256" / sha256[:2] / sha256[2:4] / sha256


def _remove_class(stack: Stack, inputs: dict, cls: int) -> dict:
    body = {
        "type": "remove", "train": inputs["train"]["id"], "forget": {"class": cls},
        "model": {"arch": "mlp", "config": dict(factories.MLP_CONFIG), "checkpoint": inputs["checkpoint"]["id"]},
        "options": {"newton_steps": 1, "hessian_samples": 256},
    }  # fmt: skip
    response = stack.client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return wait_finished(stack.client, response.json()["id"])


def test_a_removal_flows_through_the_bucket(stack, inputs, digits):
    keys = stack.s3.keys("gif/sha256/")
    for name in ("checkpoint", "train"):
        assert any(key.endswith(inputs[name]["sha256"]) for key in keys), (name, keys)

    job = _remove_class(stack, inputs, 3)

    assert job["status"] == "succeeded", job["error"]
    weights = next(a for a in job["result"]["artifacts"] if a["kind"] == "weights")
    api_home = stack.home / "data"
    worker_homes = [stack.home / f"worker{k}-data" for k in range(2)]
    ran_on = [home for home in worker_homes if _local_copy(home, weights["sha256"]).exists()]
    assert len(ran_on) == 1, "the worker that stored the weights keeps a local copy"
    assert _local_copy(ran_on[0], inputs["checkpoint"]["sha256"]).exists(), "the checkpoint was fetched"
    assert (
        f"gif/sha256/{weights['sha256'][:2]}/{weights['sha256'][2:4]}/{weights['sha256']}" in stack.s3.keys()
    )
    assert not _local_copy(api_home, weights["sha256"]).exists()

    response = stack.client.get(weights["download_url"])  # the API fetches it from the bucket

    assert response.status_code == 200 and hashlib.sha256(response.content).hexdigest() == weights["sha256"]
    assert _local_copy(api_home, weights["sha256"]).exists()
    model = gif.models.build("mlp", **factories.MLP_CONFIG)
    model.load_state_dict(safetensors.torch.load(response.content))
    assert factories.accuracy_by_class(model, digits.x_test, digits.y_test)[3] <= 0.10


def test_deleting_an_artifact_deletes_its_object(stack, files):
    response = stack.client.post("/v1/artifacts", files={"file": ("q.safetensors", files["queries"].read_bytes())},
                                 data={"kind": "dataset"})  # fmt: skip
    assert response.status_code == 201, response.text
    sha = response.json()["sha256"]
    assert any(key.endswith(sha) for key in stack.s3.keys("gif/sha256/"))
    assert stack.client.delete(f"/v1/artifacts/{response.json()['id']}").status_code == 204
    assert not any(key.endswith(sha) for key in stack.s3.keys("gif/sha256/"))


def test_upload_session_parts_wait_in_the_bucket(stack, files):
    data = files["test"].read_bytes()
    session = stack.client.post("/v1/uploads", json={
        "kind": "dataset", "size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}).json()  # fmt: skip
    size = session["part_size"]
    for number in range(1, session["part_count"] + 1):
        chunk = data[(number - 1) * size : number * size]
        response = stack.client.put(f"/v1/uploads/{session['id']}/parts/{number}", content=chunk)
        assert response.status_code == 200, response.text
    waiting = stack.s3.keys(f"gif/uploads/{session['id']}/")
    assert len(waiting) == session["part_count"] >= 3

    done = stack.client.post(f"/v1/uploads/{session['id']}/complete")

    assert done.status_code == 201, done.text
    assert done.json()["sha256"] == hashlib.sha256(data).hexdigest()
    assert stack.s3.keys(f"gif/uploads/{session['id']}/") == []
    assert any(key.endswith(done.json()["sha256"]) for key in stack.s3.keys("gif/sha256/"))


@pytest.fixture(scope="module")
def presigning(stack, tmp_path_factory):
    """A second API process on the same database and bucket, with GIF_S3_PRESIGN_SECONDS: its
    downloads redirect to the bucket and its upload sessions are direct."""
    from gif_client import Client
    from tests.stack import KEY, Process, free_port

    home = tmp_path_factory.mktemp("presigning")
    port = free_port()
    env = {
        **stack.env,
        "GIF_HOME": str(home / "data"),
        "GIF_S3_PRESIGN_SECONDS": "60",
        "GIF_EXECUTOR": "none",
    }
    api = Process(["serve", "--port", str(port), "--log-level", "warning"], env, home / "api.log").start()
    try:
        with Client(f"http://127.0.0.1:{port}", api_key=KEY, timeout=60) as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.TransportError):
                    if client._http.client.get("/readyz").status_code == 200:
                        break
                time.sleep(0.2)
            client.home = home / "data"
            yield client
    finally:
        api.stop()


def test_presigned_downloads_skip_the_api(stack, presigning, inputs, tmp_path):
    """The SDK follows the 302 (without its API key) and checks the digest."""
    art = inputs["train"]
    raw = presigning._http.client.get(f"/v1/artifacts/{art['id']}/content")
    assert raw.status_code == 302 and raw.headers["location"].startswith(stack.s3.endpoint)
    assert "X-Amz-Signature" in raw.headers["location"] and raw.headers["etag"] == f'"sha256:{art["sha256"]}"'
    path = presigning.download(art["id"], tmp_path / "train.safetensors")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == art["sha256"]
    part = httpx.get(raw.headers["location"], headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == path.read_bytes()[:10]
    assert not _local_copy(presigning.home, art["sha256"]).exists()  # never fetched by that API


@pytest.fixture(scope="module")
def big_dataset(tmp_path_factory) -> Path:
    """A valid dataset of ~11 MiB: three parts of S3's 5 MiB minimum."""
    path = tmp_path_factory.mktemp("big") / "big.safetensors"
    n = 45_000
    safetensors.torch.save_file(
        {"inputs": torch.randn(n, 1, 8, 8), "labels": torch.arange(n) % 10}, str(path)
    )
    return path


def test_a_direct_session_sends_its_parts_to_the_bucket(stack, presigning, big_dataset):
    data = big_dataset.read_bytes()
    artifact = presigning.upload_resumable(big_dataset, "dataset", parallel=3)

    assert (
        artifact["sha256"] == hashlib.sha256(data).hexdigest() and artifact["metadata"]["n_samples"] == 45_000
    )
    assert any(key.endswith(artifact["sha256"]) for key in stack.s3.keys("gif/sha256/"))
    assert stack.s3.keys("gif/uploads/") == []
    assert stack.s3.client().list_multipart_uploads(Bucket=stack.s3.bucket).get("Uploads", []) == []


def test_a_direct_session_resumes_resends_a_changed_part_and_takes_one_through_the_api(
    stack, presigning, big_dataset
):
    data = big_dataset.read_bytes()
    api = presigning._http.client
    session = api.post("/v1/uploads", json={"kind": "dataset", "size_bytes": len(data),
                                            "sha256": hashlib.sha256(data).hexdigest()}).json()  # fmt: skip
    assert (
        session["direct"] is True and session["part_size"] >= 5 * 1024 * 1024 and session["part_count"] == 3
    )
    size = session["part_size"]
    url = api.get(f"/v1/uploads/{session['id']}/parts/1/url").json()
    assert url["method"] == "PUT" and url["size_bytes"] == size
    assert httpx.put(url["url"], content=bytes(size)).status_code == 200  # the wrong bytes
    through_api = api.put(f"/v1/uploads/{session['id']}/parts/3", content=data[2 * size :])
    assert through_api.status_code == 200, through_api.text
    listed = api.get(f"/v1/uploads/{session['id']}").json()
    assert [p["number"] for p in listed["parts"]] == [1, 3] and listed["missing_parts"] == [2]
    early = api.post(f"/v1/uploads/{session['id']}/complete")
    assert early.status_code == 422 and "parts not received: 2" in early.json()["detail"]

    artifact = presigning.upload_resumable(big_dataset, "dataset", upload_id=session["id"])

    assert artifact["sha256"] == hashlib.sha256(data).hexdigest()
    assert api.get(f"/v1/uploads/{session['id']}").json()["status"] == "completed"
    beyond = api.get(f"/v1/uploads/{session['id']}/parts/1/url")
    assert beyond.status_code == 409 and beyond.json()["code"] == "upload-not-open"


def test_an_aborted_direct_session_leaves_nothing_in_the_bucket(stack, presigning):
    api = presigning._http.client
    session = api.post("/v1/uploads", json={"kind": "dataset", "size_bytes": 6 * 1024 * 1024,
                                            "sha256": "0" * 64}).json()  # fmt: skip
    url = api.get(f"/v1/uploads/{session['id']}/parts/1/url").json()
    assert httpx.put(url["url"], content=bytes(url["size_bytes"])).status_code == 200
    assert stack.s3.client().list_multipart_uploads(Bucket=stack.s3.bucket).get("Uploads")
    assert api.delete(f"/v1/uploads/{session['id']}").status_code == 204
    assert stack.s3.client().list_multipart_uploads(Bucket=stack.s3.bucket).get("Uploads", []) == []
    folder_session = stack.client.post(
        "/v1/uploads", json={"kind": "dataset", "size_bytes": 10, "sha256": "0" * 64}
    )
    not_direct = stack.client.get(f"/v1/uploads/{folder_session.json()['id']}/parts/1/url")
    assert not_direct.status_code == 409 and not_direct.json()["code"] == "upload-not-direct"


def test_an_unreachable_bucket_is_a_clear_503_and_a_storage_error(stack, inputs):
    """Last in the module: the server's objects live in memory and die with it."""
    stack.s3.kill()

    fresh = safetensors.torch.save({"inputs": torch.randn(10, 1, 8, 8), "labels": torch.arange(10)})
    upload = stack.client.post(
        "/v1/artifacts", files={"file": ("new.safetensors", fresh)}, data={"kind": "dataset"}
    )
    assert upload.status_code == 503, upload.text
    problem = upload.json()
    assert problem["code"] == "service-unavailable" and "blob store" in problem["detail"]
    assert "127.0.0.1" not in problem["detail"] and upload.headers["retry-after"]
    ready = stack.client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["blobs"].startswith("error")

    job = _remove_class(stack, inputs, 5)  # computed from local copies, or not even loaded

    assert job["status"] == "failed", job
    assert job["error"]["code"] == "storage_error" and "blob store" in job["error"]["message"], job["error"]
    assert job["result"] is None
