"""Bearer keys → tenants; 401 without a key; another tenant's objects are 404."""

from __future__ import annotations

import stat

import pytest

from service.auth import KeyRing, ensure_key, parse_keys

from .conftest import client_for, make_settings, remove_body

PROTECTED = [
    ("GET", "/v1/jobs"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs/job_01JD3Q7W8M6Z5K2R9T0V4X1YBC"),
    ("GET", "/v1/artifacts/art_01JD3Q7W8M6Z5K2R9T0V4X1YBC"),
    ("POST", "/v1/artifacts"),
    ("GET", "/metrics"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_no_key_is_401_with_challenge(app, method, path):
    with client_for(app, None) as anonymous:
        response = anonymous.request(method, path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "unauthenticated"


def test_wrong_key_and_query_string_key_are_401(app):
    with client_for(app, None) as anonymous:
        assert anonymous.get("/v1/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert (
            anonymous.get("/v1/jobs", headers={"Authorization": "Basic a2V5LUEtMDEyMzQ1Njc4OQ=="}).status_code
            == 401
        )
        assert anonymous.get("/v1/jobs", params={"api_key": "key-A-0123456789"}).status_code == 401


def test_probes_need_no_key(app):
    with client_for(app, None) as anonymous:
        assert anonymous.get("/livez").json() == {"status": "ok"}
        ready = anonymous.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "blobs": "ok"}
        assert "remove" in anonymous.get("/v1/version").json()["job_types"]


def test_metrics_need_the_admin_scope(client_a, client_b):
    text = client_a.get("/metrics").text  # tenantA is in GIF_ADMIN_TENANTS
    assert "gif_http_requests_total" in text and 'gif_jobs{status="queued"}' in text
    assert 'gif_webhook_deliveries{state="pending"}' in text
    assert 'gif_upload_inspections_total{start="warm"}' in text
    refused = client_b.get("/metrics")
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    assert "gif_http_requests_total" not in refused.text


def test_other_tenant_gets_404_everywhere(client_a, client_b, uploaded):
    job = client_a.post("/v1/jobs", json=remove_body(uploaded)).json()
    art = uploaded["checkpoint"]["id"]
    for method, path in [
        ("GET", f"/v1/jobs/{job['id']}"),
        ("GET", f"/v1/jobs/{job['id']}/events"),
        ("POST", f"/v1/jobs/{job['id']}/cancel"),
        ("GET", f"/v1/artifacts/{art}"),
        ("GET", f"/v1/artifacts/{art}/content"),
        ("DELETE", f"/v1/artifacts/{art}"),
    ]:
        response = client_b.request(method, path)
        assert response.status_code == 404, (method, path)
        assert response.json()["code"] == "not-found"
    assert job["id"] not in [j["id"] for j in client_b.get("/v1/jobs").json()["data"]]
    assert client_a.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"


def test_parse_keys_and_keyring():
    pairs = parse_keys("a:k1, b:k2\n# comment\nc:k:3")
    assert pairs == [("a", "k1"), ("b", "k2"), ("c", "k:3")]
    ring = KeyRing(pairs)
    assert ring.tenant_for("k2") == "b" and ring.tenant_for("k:3") == "c" and ring.tenant_for("k") is None
    with pytest.raises(ValueError):
        parse_keys("no-colon")


def test_generated_key_file_is_private(tmp_path):
    settings = make_settings(tmp_path, api_keys="")
    key = ensure_key(settings)
    assert key is not None and key.startswith("gif_local_")
    assert stat.S_IMODE(settings.key_file.stat().st_mode) == 0o600
    assert KeyRing.from_settings(settings).tenant_for(key) == "default"
    assert ensure_key(settings) is None  # a key exists now
