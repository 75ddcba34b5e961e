"""Webhooks at the API: targets refused at submit (no allow-list here), the secret routes, and
the OpenAPI document. The app of tests/service/conftest.py (no executor: jobs stay queued)."""

from __future__ import annotations

import pytest

from .conftest import remove_body


@pytest.mark.parametrize(
    "url",
    ["http://169.254.169.254/latest/meta-data/", "https://10.0.0.1/hook", "http://localhost:8080/hook",
     "https://LOCALHOST./hook", "http://[::1]/hook", "http://[::ffff:127.0.0.1]/", "http://0.0.0.0/"],
)  # fmt: skip
def test_forbidden_targets_are_refused_at_submit(client_a, uploaded, url):
    response = client_a.post("/v1/jobs", json=remove_body(uploaded, webhook={"url": url}))
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "webhook-target-forbidden"
    assert response.headers["content-type"].startswith("application/problem+json")
    assert problem["errors"][0]["loc"] == ["body", "webhook", "url"]
    assert "GIF_WEBHOOK_ALLOWED_HOSTS" in problem["detail"]


@pytest.mark.parametrize(
    "url", ["ftp://example.com/", "not a url", "https://user:pw@example.com/", "https://"]
)
def test_malformed_urls_are_invalid_webhook(client_a, uploaded, url):
    response = client_a.post("/v1/jobs", json=remove_body(uploaded, webhook={"url": url}))
    assert response.status_code == 422 and response.json()["code"] == "invalid-webhook", response.text


def test_unknown_events_are_a_validation_error(client_a, uploaded):
    body = remove_body(uploaded, webhook={"url": "https://example.com/", "events": ["finished"]})
    response = client_a.post("/v1/jobs", json=body)
    assert response.status_code == 422 and response.json()["code"] == "validation-error"


def test_a_job_without_webhook_shows_none(client_a, uploaded):
    response = client_a.post("/v1/jobs", json=remove_body(uploaded))
    assert response.status_code == 202 and response.json()["webhook"] is None


def test_secret_is_per_tenant_created_once_and_rotated(client_a, client_b):
    first = client_a.get("/v1/webhooks/secret")
    assert first.status_code == 200 and first.headers["cache-control"] == "no-store"
    secret = first.json()["secret"]
    assert secret.startswith("whsec_") and client_a.get("/v1/webhooks/secret").json()["secret"] == secret
    assert client_b.get("/v1/webhooks/secret").json()["secret"] != secret
    rotated = client_a.post("/v1/webhooks/secret/rotate").json()
    assert rotated["secret"] != secret and rotated["previous_secret_expires_at"] is not None
    assert client_a.get("/v1/webhooks/secret").json()["secret"] == rotated["secret"]


def test_a_retried_rotation_does_not_rotate_again(client_b):
    before = client_b.get("/v1/webhooks/secret").json()["secret"]
    first = client_b.post("/v1/webhooks/secret/rotate", headers={"Idempotency-Key": "rot-1"}).json()
    again = client_b.post("/v1/webhooks/secret/rotate", headers={"Idempotency-Key": "rot-1"}).json()
    assert first["secret"] == again["secret"] != before
    other = client_b.post("/v1/webhooks/secret/rotate", headers={"Idempotency-Key": "rot-2"}).json()
    assert other["secret"] != first["secret"]


def test_secret_needs_a_key(app):
    from .conftest import client_for

    with client_for(app, None) as anonymous:
        assert anonymous.get("/v1/webhooks/secret").status_code == 401


def test_openapi_shows_the_webhook_field_and_routes(client_a):
    document = client_a.get("/openapi.json").json()
    assert {"/v1/webhooks/secret", "/v1/webhooks/secret/rotate"} <= set(document["paths"])
    schemas = document["components"]["schemas"]
    assert "webhook" in schemas["RemoveJob"]["properties"]
    assert set(schemas["Webhook"]["properties"]) == {"url", "events"}
    assert "webhook" in schemas["Job"]["properties"]
