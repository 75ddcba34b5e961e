"""Every error is application/problem+json with code, title, status, detail, request_id."""

from __future__ import annotations

import pytest

from service.main import create_app

from .conftest import client_for, make_settings


def _is_problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["code"] == code
    assert body["type"].endswith(code) and body["title"] and body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def test_unknown_route_and_method(client_a):
    _is_problem(client_a.get("/v2/nothing"), 404, "not-found")
    _is_problem(client_a.put("/v1/jobs"), 405, "method-not-allowed")


def test_validation_error_lists_every_field(client_a):
    body = _is_problem(client_a.post("/v1/jobs", json={"type": "remove", "x": 1}), 422, "validation-error")
    locs = {tuple(e["loc"]) for e in body["errors"]}
    assert {("body", "x"), ("body", "model"), ("body", "train"), ("body", "forget")} <= locs
    assert all({"loc", "msg", "type"} <= set(e) for e in body["errors"])
    _is_problem(
        client_a.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}),
        422,
        "validation-error",
    )
    _is_problem(client_a.get("/v1/jobs", params={"status": "done"}), 422, "validation-error")


def test_request_id_is_echoed_or_generated(client_a):
    given = client_a.get("/v1/jobs/job_01JD3Q7W8M6Z5K2R9T0V4X1YBC", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123" and given.json()["request_id"] == "abc-123"
    made = client_a.get("/livez")
    assert made.headers["x-request-id"].startswith("req_")


def test_json_body_over_limit_is_413(tmp_path):
    app = create_app(make_settings(tmp_path, max_json_bytes=1000))
    with client_for(app, "tenantA") as client:
        big = {"type": "remove", "forget": {"indices": list(range(2000))}}
        _is_problem(client.post("/v1/jobs", json=big), 413, "payload-too-large")

        async def chunks():  # no Content-Length: the limit is enforced on the bytes received
            for part in (b'{"type": "remove", "pad": "', b"x" * 2000, b'"}'):
                yield part

        chunked = client.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
        _is_problem(chunked, 413, "payload-too-large")


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/jobs"), ("DELETE", "/v1/artifacts/art_x"), ("POST", "/v1/jobs/job_x/cancel"),
     ("GET", "/livez"), ("PUT", "/v1/jobs"), ("POST", "/v1/artifacts")],
)  # fmt: skip
def test_every_route_and_method_limits_the_body(tmp_path, method, path):
    app = create_app(make_settings(tmp_path, max_json_bytes=1000, max_upload_bytes=1000))
    limit = 1000 + (64 * 1024 if path == "/v1/artifacts" else 0)
    with client_for(app, "tenantA") as client:
        response = client.request(method, path, content=b"x" * (limit + 1))
        _is_problem(response, 413, "payload-too-large")


def test_unhandled_error_is_500_problem(tmp_path):
    app = create_app(make_settings(tmp_path))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret detail")

    with client_for(app, None) as client:
        body = _is_problem(client.get("/boom"), 500, "internal")
    assert "secret" not in body["detail"]


@pytest.mark.parametrize("code", ["ENOSPC", "EDQUOT", "EFBIG"])
def test_a_full_disk_during_an_upload_is_507_and_leaves_nothing(tmp_path, monkeypatch, code):
    """The storage fills up while an upload streams in (the OS error is injected in the blob
    writer: no disk here can be filled safely)."""
    import errno

    from sqlalchemy import func, select

    from jobs.blobs import BlobWriter
    from jobs.models import Artifact

    app = create_app(make_settings(tmp_path))
    real_write = BlobWriter.write

    def write(self, chunk: bytes) -> None:
        if self.size + len(chunk) > 4096:
            raise OSError(getattr(errno, code), "No space left on device")
        real_write(self, chunk)

    monkeypatch.setattr(BlobWriter, "write", write)
    with client_for(app, "tenantA") as client:
        response = client.post(
            "/v1/artifacts", files={"file": ("big.npz", b"x" * 100_000)}, data={"kind": "dataset"}
        )
        body = _is_problem(response, 507, "insufficient-storage")
        assert response.headers["retry-after"] == "300" and "storage is full" in body["detail"]
    blobs = app.state.services.blobs
    assert list(blobs.temporary()) == [] and list(blobs.committed()) == []
    with app.state.services.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Artifact)) == 0


def test_a_write_blocked_by_a_held_sqlite_lock_is_503_database_busy(tmp_path, monkeypatch):
    """Another process holding the job table's write lock past the busy timeout (a worker stopped
    inside a transaction, say) makes a write answer 503 ``database-busy`` with Retry-After, not
    500; nothing is written, and the same request succeeds once the lock is released."""
    import hashlib
    import sqlite3

    import jobs.db

    monkeypatch.setattr(jobs.db, "BUSY_TIMEOUT_MS", 200)
    app = create_app(make_settings(tmp_path))
    body = {"kind": "dataset", "size_bytes": 10, "sha256": hashlib.sha256(b"0123456789").hexdigest()}
    with client_for(app, "tenantA") as client:
        holder = sqlite3.connect(tmp_path / "gif.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            busy = client.post("/v1/uploads", json=body)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        problem = _is_problem(busy, 503, "database-busy")
        assert busy.headers["retry-after"] == "2" and "retry" in problem["detail"]
        sessions = sqlite3.connect(tmp_path / "gif.db")
        try:
            written = sessions.execute("SELECT count(*) FROM upload_sessions").fetchone()
            assert written == (0,)  # nothing written
        finally:
            sessions.close()
        assert client.post("/v1/uploads", json=body).status_code == 201
