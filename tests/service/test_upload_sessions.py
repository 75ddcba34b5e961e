"""Resumable upload sessions through the API: parts in any order, resent, checked, assembled."""

from __future__ import annotations

import hashlib
import random
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from jobs.clock import utcnow
from jobs.models import UploadSession
from service.main import create_app

from .conftest import client_for, make_settings, upload

PART = 64 * 1024
RAW = {"content-type": "application/octet-stream"}


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def app(home):
    app = create_app(make_settings(home, upload_part_bytes=PART, max_session_upload_bytes=8 * 1024 * 1024,
                                   max_open_uploads_per_tenant=3))  # fmt: skip
    yield app
    app.state.services.inspector.close()


@pytest.fixture
def client(app):
    with client_for(app, "tenantA") as client:
        yield client


def _parts(data: bytes) -> list[bytes]:
    return [data[i : i + PART] for i in range(0, len(data), PART)]


def _create(client, data: bytes, kind: str = "dataset", **extra) -> dict:
    body = {"kind": kind, "size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), **extra}
    response = client.post("/v1/uploads", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def _put(client, upload_id: str, number: int, chunk: bytes, **headers):
    return client.put(f"/v1/uploads/{upload_id}/parts/{number}", content=chunk, headers={**RAW, **headers})


def _part_files(home: Path) -> list[Path]:
    return [p for p in (home / "blobs" / "uploads").rglob("*") if p.is_file()]


def test_parts_in_any_order_make_the_same_artifact_as_a_single_shot_upload(client, files, home):
    data = files["train"].read_bytes()
    chunks = _parts(data)
    assert len(chunks) >= 4  # the fixture dataset spans several parts
    session = _create(client, data, filename="../train.safetensors")
    assert (
        session["part_size"] == PART and session["part_count"] == len(chunks) and session["status"] == "open"
    )
    assert session["filename"] == "train.safetensors" and session["missing_parts"] == list(
        range(1, len(chunks) + 1)
    )

    order = list(range(1, len(chunks) + 1))
    random.Random(3).shuffle(order)
    for number in order[:-1]:
        response = _put(client, session["id"], number, chunks[number - 1],
                        **{"X-Part-SHA256": hashlib.sha256(chunks[number - 1]).hexdigest()})  # fmt: skip
        assert response.status_code == 200, response.text
        assert response.json() == {"number": number, "size_bytes": len(chunks[number - 1]),
                                   "sha256": hashlib.sha256(chunks[number - 1]).hexdigest()}  # fmt: skip
    status = client.get(f"/v1/uploads/{session['id']}").json()
    assert status["missing_parts"] == [order[-1]] and status["received_bytes"] == len(data) - len(
        chunks[order[-1] - 1]
    )

    early = client.post(f"/v1/uploads/{session['id']}/complete")
    assert early.status_code == 422 and f"1 parts not received: {order[-1]}" in early.json()["detail"]
    assert _put(client, session["id"], order[-1], chunks[order[-1] - 1]).status_code == 200

    done = client.post(
        f"/v1/uploads/{session['id']}/complete", json={"parts": list(range(1, len(chunks) + 1))}
    )

    assert done.status_code == 201, done.text
    artifact = done.json()
    assert artifact["sha256"] == hashlib.sha256(data).hexdigest() and artifact["kind"] == "dataset"
    assert (
        artifact["metadata"]["n_samples"] > 0
        and done.headers["location"] == f"/v1/artifacts/{artifact['id']}"
    )
    assert client.get(artifact["links"]["content"]).content == data
    ended = client.get(f"/v1/uploads/{session['id']}").json()
    assert ended["status"] == "completed" and ended["artifact_id"] == artifact["id"]
    assert _part_files(home) == []
    again = upload(client, files["train"], "dataset")
    assert again.status_code == 200 and again.json()["id"] == artifact["id"]  # same bytes: dedup
    assert client.post(f"/v1/uploads/{session['id']}/complete").status_code == 409
    assert _put(client, session["id"], 1, chunks[0]).json()["code"] == "upload-not-open"


def test_a_resent_part_replaces_the_first_and_a_wrong_file_is_a_digest_mismatch(client, files, home):
    data = files["test"].read_bytes()
    chunks = _parts(data)
    session = _create(client, data)
    corrupt = bytes(len(chunks[0]))
    for number, chunk in enumerate([corrupt, *chunks[1:]], start=1):
        assert _put(client, session["id"], number, chunk).status_code == 200

    mismatch = client.post(f"/v1/uploads/{session['id']}/complete")

    assert mismatch.status_code == 422 and mismatch.json()["code"] == "digest-mismatch"
    status = client.get(f"/v1/uploads/{session['id']}").json()
    assert status["status"] == "open"  # resend what differs
    theirs = {p["number"]: p["sha256"] for p in status["parts"]}
    wrong = [n for n, chunk in enumerate(chunks, start=1) if hashlib.sha256(chunk).hexdigest() != theirs[n]]
    assert wrong == [1]
    assert _put(client, session["id"], 1, chunks[0]).status_code == 200
    assert client.post(f"/v1/uploads/{session['id']}/complete").status_code == 201


def test_bad_parts_are_refused_before_anything_is_kept(client, files, home):
    data = files["test"].read_bytes()
    chunks = _parts(data)
    session = _create(client, data)
    url = f"/v1/uploads/{session['id']}/parts"
    beyond = client.put(f"{url}/{len(chunks) + 1}", content=b"x", headers=RAW)
    assert beyond.status_code == 422 and beyond.json()["errors"][0]["loc"] == ["path", "number"]
    assert beyond.headers["connection"] == "close"
    assert client.put(f"{url}/0", content=b"x", headers=RAW).status_code == 422
    short = _put(client, session["id"], 1, chunks[0][:-1])
    assert short.status_code == 422 and f"must be {PART} bytes" in short.json()["detail"]
    long = _put(client, session["id"], 1, chunks[0] + b"x")
    assert long.status_code == 413
    lying = _put(client, session["id"], 1, chunks[0], **{"X-Part-SHA256": "0" * 64})
    assert lying.status_code == 422 and lying.json()["code"] == "digest-mismatch"
    text = client.put(f"{url}/1", content=chunks[0], headers={"content-type": "text/plain"})
    assert text.status_code == 415
    assert client.get(f"/v1/uploads/{session['id']}").json()["parts"] == []
    assert _part_files(home) == [] and not any((home / "blobs" / "tmp").iterdir())


def test_a_file_that_is_not_an_artifact_ends_the_session_failed(client, home):
    data = b"\x00" * (PART + 10)
    session = _create(client, data, kind="checkpoint")
    for number, chunk in enumerate(_parts(data), start=1):
        assert _put(client, session["id"], number, chunk).status_code == 200
    refused = client.post(f"/v1/uploads/{session['id']}/complete")
    assert refused.status_code == 422 and refused.json()["code"] == "invalid-artifact"
    status = client.get(f"/v1/uploads/{session['id']}").json()
    assert status["status"] == "failed" and status["error"]["code"] == "invalid-artifact"
    assert _part_files(home) == [] and not any((home / "blobs" / "sha256").rglob("*[0-9a-f]"))


def test_sessions_are_declared_properly_and_counted_per_tenant(client, app):
    good = {"kind": "dataset", "size_bytes": 10, "sha256": "a" * 64}
    for bad, loc in (
        ({"kind": "weights"}, "kind"),
        ({"size_bytes": 0}, "size_bytes"),
        ({"sha256": "A" * 64}, "sha256"),
    ):
        response = client.post("/v1/uploads", json={**good, **bad})
        assert response.status_code == 422 and loc in str(response.json()["errors"][0]["loc"]), response.text
    too_big = client.post("/v1/uploads", json={**good, "size_bytes": 8 * 1024 * 1024 + 1})
    assert too_big.status_code == 413 and too_big.json()["code"] == "payload-too-large"
    assert (
        client.post("/v1/uploads", content=b"{}", headers={"content-type": "text/plain"}).status_code == 415
    )
    alias = client.post("/v1/uploads", json={"kind": "dataset", "bytes": 10, "sha256": "a" * 64})
    assert alias.status_code == 201 and alias.json()["size_bytes"] == 10
    opened = [alias.json()["id"]] + [client.post("/v1/uploads", json=good).json()["id"] for _ in range(2)]
    over = client.post("/v1/uploads", json=good)
    assert over.status_code == 429 and over.json()["code"] == "quota-exceeded"
    assert client.delete(f"/v1/uploads/{opened[0]}").status_code == 204
    assert client.delete(f"/v1/uploads/{opened[0]}").status_code == 204  # idempotent
    assert client.get(f"/v1/uploads/{opened[0]}").json()["status"] == "aborted"
    assert client.put(f"/v1/uploads/{opened[0]}/parts/1", content=b"x" * 10, headers=RAW).status_code == 409
    assert client.post("/v1/uploads", json=good).status_code == 201  # room again
    with client_for(app, "tenantB") as other:
        assert other.get(f"/v1/uploads/{opened[1]}").status_code == 404
        assert (
            other.put(f"/v1/uploads/{opened[1]}/parts/1", content=b"x" * 10, headers=RAW).status_code == 404
        )
        assert other.delete(f"/v1/uploads/{opened[1]}").status_code == 404
    assert client.get("/v1/uploads/upl_nope").status_code == 404


def test_an_expired_session_is_410_and_the_sweep_removes_its_parts(client, app, home, files):
    from jobs import upload_sessions

    data = files["test"].read_bytes()
    session = _create(client, data)
    assert _put(client, session["id"], 1, _parts(data)[0]).status_code == 200
    assert _part_files(home)
    services = app.state.services
    with services.db.begin() as db:
        db.execute(update(UploadSession).where(UploadSession.id == session["id"])
                   .values(expires_at=utcnow() - timedelta(seconds=1)))  # fmt: skip

    gone = _put(client, session["id"], 2, _parts(data)[1])
    assert gone.status_code == 410 and gone.json()["code"] == "upload-expired"
    assert client.post(f"/v1/uploads/{session['id']}/complete").status_code == 410

    assert upload_sessions.expire(services.db, services.blobs) == 1
    assert (
        _part_files(home) == [] and client.get(f"/v1/uploads/{session['id']}").json()["status"] == "expired"
    )
    with services.db.begin() as db:
        db.execute(update(UploadSession).where(UploadSession.id == session["id"])
                   .values(expires_at=utcnow() - timedelta(days=8)))  # fmt: skip
    upload_sessions.expire(services.db, services.blobs)
    assert client.get(f"/v1/uploads/{session['id']}").status_code == 404  # purged a week after
