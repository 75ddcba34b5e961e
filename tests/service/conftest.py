"""Fixtures for API tests (httpx over ASGI): an app without executor (jobs stay queued), clients per tenant,
and a digits checkpoint + datasets uploaded once per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.config import Settings
from service.main import create_app
from tests import factories

from .asgi import ASGIClient

KEYS = {"tenantA": "key-A-0123456789", "tenantB": "key-B-0123456789"}
MAX_UPLOAD = 1024 * 1024


def make_settings(home: Path, **overrides: object) -> Settings:
    values = {
        "home": home,
        "api_keys": ",".join(f"{t}:{k}" for t, k in KEYS.items()),
        "admin_tenants": "tenantA",  # may read /metrics; tenantB may not
        "executor": "none",
        "workers": 0,
        "max_upload_bytes": MAX_UPLOAD,
        "max_json_bytes": 256 * 1024,
        "validator_timeout_seconds": 120,
        "rate_limit_per_second": 0,  # tests/service/test_limits.py turns it on
        "inspector_spares": 0,  # no interpreter left waiting by apps the test does not close
    }
    values.update(overrides)
    return Settings(**values)


def client_for(app, tenant: str | None) -> ASGIClient:
    """httpx against the ASGI app, authenticated as ``tenant`` (anonymous for None)."""
    headers = {"Authorization": f"Bearer {KEYS[tenant]}"} if tenant else {}
    return ASGIClient(app, headers=headers)


def upload(client: ASGIClient, path: Path, kind: str, filename: str | None = None):
    with open(path, "rb") as f:
        return client.post("/v1/artifacts", files={"file": (filename or path.name, f)}, data={"kind": kind})


@pytest.fixture(scope="session")
def digits():
    return factories.digits()


@pytest.fixture(scope="session")
def trained(digits):
    return factories.train_mlp(digits)


@pytest.fixture(scope="session")
def files(tmp_path_factory, digits, trained) -> dict[str, Path]:
    return factories.write_files(tmp_path_factory.mktemp("files"), digits, trained)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    app = create_app(make_settings(tmp_path_factory.mktemp("home"), inspector_spares=1))
    yield app
    app.state.services.inspector.close()


@pytest.fixture(scope="module")
def client_a(app) -> Iterator[ASGIClient]:
    with client_for(app, "tenantA") as client:
        yield client


@pytest.fixture(scope="module")
def client_b(app) -> Iterator[ASGIClient]:
    with client_for(app, "tenantB") as client:
        yield client


@pytest.fixture(scope="module")
def uploaded(client_a, files) -> dict[str, dict]:
    """Tenant A's checkpoint, training set and query set (inspected by the real subprocess)."""
    out = {}
    for name, kind in (("checkpoint", "checkpoint"), ("train", "dataset"), ("queries", "dataset")):
        response = upload(client_a, files[name], kind)
        assert response.status_code == 201, response.text
        out[name] = response.json()
    return out


def remove_body(uploaded: dict, **changes: object) -> dict:
    body = {
        "type": "remove",
        "model": {
            "arch": "mlp",
            "config": dict(factories.MLP_CONFIG),
            "checkpoint": uploaded["checkpoint"]["id"],
        },
        "train": uploaded["train"]["id"],
        "forget": {"class": 3},
        "options": {"newton_steps": 1, "hessian_samples": 256},
    }
    body.update(changes)
    return body
