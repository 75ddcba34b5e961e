"""Single-shot uploads as a raw body, and the digests a client declares for what it sends."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from service.main import create_app

from .conftest import MAX_UPLOAD, client_for, make_settings, upload

RAW = {"content-type": "application/octet-stream"}


def _blob_files(home: Path) -> list[Path]:
    return [p for p in (home / "blobs").rglob("*") if p.is_file()]


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def client(home):
    app = create_app(make_settings(home))
    with client_for(app, "tenantA") as client:
        yield client
    app.state.services.inspector.close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_raw_body_upload_is_the_same_artifact_as_a_form_upload(client, files):
    headers = {
        **RAW,
        "X-Artifact-Kind": "dataset",
        "Content-Disposition": 'attachment; filename="train set.safetensors"',
    }
    raw = client.post("/v1/artifacts", content=files["train"].read_bytes(), headers=headers)
    assert raw.status_code == 201, raw.text
    body = raw.json()
    assert body["sha256"] == _sha(files["train"]) and body["filename"] == "train set.safetensors"
    assert body["metadata"]["n_samples"] > 0 and raw.headers["location"] == f"/v1/artifacts/{body['id']}"
    form = upload(client, files["train"], "dataset")
    assert form.status_code == 200 and form.json()["id"] == body["id"]  # the same content: dedup


def test_a_raw_body_takes_its_kind_from_the_query_and_a_utf8_filename(client, files):
    headers = {**RAW, "Content-Disposition": "attachment; filename*=UTF-8''mod%C3%A8le.safetensors"}
    response = client.post(
        "/v1/artifacts?kind=checkpoint", content=files["checkpoint"].read_bytes(), headers=headers
    )
    assert response.status_code == 201, response.text
    assert response.json()["kind"] == "checkpoint" and response.json()["filename"] == "modèle.safetensors"


@pytest.mark.parametrize("how", ["x-content-sha256", "repr-digest", "form-field"])
def test_a_matching_declared_digest_is_accepted(client, files, how):
    digest = _sha(files["queries"])
    if how == "form-field":
        with open(files["queries"], "rb") as f:
            response = client.post(
                "/v1/artifacts", files={"file": ("q", f)}, data={"kind": "dataset", "sha256": digest}
            )
    else:
        value = (
            digest
            if how == "x-content-sha256"
            else f"sha-256=:{base64.b64encode(bytes.fromhex(digest)).decode()}:"
        )
        header = "X-Content-SHA256" if how == "x-content-sha256" else "Repr-Digest"
        response = client.post("/v1/artifacts", content=files["queries"].read_bytes(),
                               headers={**RAW, "X-Artifact-Kind": "dataset", header: value})  # fmt: skip
    assert response.status_code == 201, response.text
    assert response.json()["sha256"] == digest


def test_a_different_digest_is_422_and_stores_nothing(client, files, home):
    wrong = hashlib.sha256(b"another file").hexdigest()
    raw = client.post("/v1/artifacts", content=files["test"].read_bytes(),
                      headers={**RAW, "X-Artifact-Kind": "dataset", "X-Content-SHA256": wrong})  # fmt: skip
    assert raw.status_code == 422 and raw.json()["code"] == "digest-mismatch"
    assert _sha(files["test"]) in raw.json()["detail"] and wrong in raw.json()["detail"]
    with open(files["test"], "rb") as f:
        form = client.post(
            "/v1/artifacts", files={"file": ("t", f)}, data={"kind": "dataset", "sha256": wrong}
        )
    assert form.status_code == 422 and form.json()["code"] == "digest-mismatch"
    assert _blob_files(home) == []


@pytest.mark.parametrize(
    "headers, detail",
    [
        ({"X-Content-SHA256": "abc"}, "64 hexadecimal"),
        ({"Repr-Digest": "md5=:AAAA:"}, "no `sha-256"),
        ({"Repr-Digest": "sha-256=:AAAA:"}, "32 bytes"),
        ({"Repr-Digest": "sha-256=:not base64!:"}, "no `sha-256"),
        (
            {
                "X-Content-SHA256": "0" * 64,
                "Repr-Digest": f"sha-256=:{base64.b64encode(bytes(31) + b'1').decode()}:",
            },
            "disagree",
        ),
    ],
)
def test_malformed_digest_declarations_are_400(client, files, headers, detail):
    response = client.post("/v1/artifacts", content=files["test"].read_bytes(),
                           headers={**RAW, "X-Artifact-Kind": "dataset", **headers})  # fmt: skip
    assert response.status_code == 400, response.text
    assert detail in response.json()["detail"]


def test_a_raw_body_over_the_limit_is_413_at_once_or_while_streaming(client, home):
    declared = client.post(
        "/v1/artifacts", content=b"x" * (MAX_UPLOAD + 1), headers={**RAW, "X-Artifact-Kind": "dataset"}
    )
    assert declared.status_code == 413 and declared.headers["connection"] == "close"

    async def chunks():  # no Content-Length (chunked): the writer stops it at the limit
        for _ in range(MAX_UPLOAD // 65536 + 2):
            yield b"y" * 65536

    streamed = client.post("/v1/artifacts", content=chunks(), headers={**RAW, "X-Artifact-Kind": "dataset"})
    assert streamed.status_code == 413 and streamed.json()["code"] == "payload-too-large"
    assert _blob_files(home) == []


def test_a_raw_body_that_is_not_an_artifact_is_refused_like_a_form_upload(client, home):
    response = client.post(
        "/v1/artifacts", content=b"\x00" * 1000, headers={**RAW, "X-Artifact-Kind": "checkpoint"}
    )
    assert response.status_code == 422 and response.json()["code"] == "invalid-artifact"
    assert _blob_files(home) == []
