"""Authorisation matrix (docs/service-design.md, "Authorisation matrix"): every route of the
app × {no key, wrong key, another tenant's key, the owner's key}.

The routes are enumerated from the app itself (not from a list kept here), so a new route is in
the matrix as soon as it exists; the routes that need no key are asserted to be exactly
``PUBLIC``. Tenant A owns real resources (the digits checkpoint and datasets, inspected by the
real subprocess, and a queued job); tenant B probes them:

* no key, a wrong key, a key in the query string or another scheme: 401 problem+json
  ``unauthenticated`` with ``WWW-Authenticate: Bearer``, whatever the body;
* another tenant's key: 404 ``not-found`` for A's job and artifact ids, answered exactly as for
  ids that do not exist (never 403, nothing that tells them apart); B's collections and
  submissions do not see A's objects;
* the owner's key: 2xx.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service.errors import PROBLEM_JSON, app_routes
from service.routers import ui

from .asgi import ASGIClient
from .conftest import KEYS, client_for, remove_body

RAW = {"content-type": "application/octet-stream"}

#: What answers without a key: probes, the version, and the OpenAPI document and its viewers.
PUBLIC = {
    ("GET", "/livez"),
    ("GET", "/readyz"),
    ("GET", "/v1/version"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    # the job page and its static files (service/routers/ui.py): no tenant data; the page asks for a key
    ("GET", "/ui"),
    ("GET", "/ui/static/{asset_version}/{name}"),
}
#: What needs the admin scope (GIF_ADMIN_TENANTS; tenant A here): 403 for tenant B, whatever the id.
ADMIN = {("GET", "/metrics"), ("POST", "/v1/admin/jobs/{job_id}/terminate")}
#: Well-formed ids that exist for nobody.
NOBODY = {
    "job_id": "job_01JD3Q7W8M6Z5K2R9T0V4X1YBC",
    "artifact_id": "art_01JD3Q7W8M6Z5K2R9T0V4X1YBC",
    "upload_id": "upl_01JD3Q7W8M6Z5K2R9T0V4X1YBC",
    "number": "1",
    # a static file of the job page that exists (the public routes must answer 200)
    "asset_version": ui.version(),
    "name": "main.js",
}

Route = tuple[str, str]  # (method, path template)


def all_routes(app) -> list[Route]:
    """Every (method, path) the app serves; HEAD mirrors GET and is left out."""
    routes = {
        (method, route.path)
        for route in app_routes(app)
        for method in (getattr(route, "methods", None) or ())
        if method != "HEAD"
    }
    assert routes, "no routes found: has the way FastAPI nests routers changed?"
    return sorted(routes, key=lambda r: (r[1], r[0]))


def protected_routes(app) -> list[Route]:
    return [route for route in all_routes(app) if route not in PUBLIC]


@pytest.fixture(scope="module")
def owned(client_a, uploaded, files) -> dict[str, Any]:
    """Tenant A's job (queued: there is no executor), artifacts and upload session."""
    job = client_a.post("/v1/jobs", json=remove_body(uploaded))
    assert job.status_code == 202, job.text
    return {
        "job_id": job.json()["id"],
        "artifact_id": uploaded["checkpoint"]["id"],  # used by the job: no one may delete it
        "upload_id": new_upload(client_a, files),
        "uploaded": uploaded,
    }


def new_upload(client: ASGIClient, files: dict[str, Path], *, with_part: bool = False) -> str:
    """An open upload session for the queries file (one part), its part sent if ``with_part``."""
    data = files["queries"].read_bytes()
    body = {"kind": "dataset", "size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    response = client.post("/v1/uploads", json=body)
    assert response.status_code == 201, response.text
    if with_part:
        part = client.put(f"/v1/uploads/{response.json()['id']}/parts/1", content=data, headers=RAW)
        assert part.status_code == 200, part.text
    return response.json()["id"]


def ids_of(owned: dict[str, Any]) -> dict[str, str]:
    return {name: owned[name] for name in ("job_id", "artifact_id", "upload_id")} | {"number": "1"}


def request_for(route: Route, ids: dict[str, str], owned: dict[str, Any], files: dict[str, Path]) -> dict:
    """The path with ``ids`` filled in, and the body the owner would send."""
    method, template = route
    names = re.findall(r"{(\w+)}", template)
    missing = [name for name in names if name not in ids]
    assert not missing, f"{method} {template}: add a sample value for {missing} to this test"
    path = template
    for name in names:
        path = path.replace("{" + name + "}", ids[name])
    kwargs: dict[str, Any] = {}
    if route == ("POST", "/v1/jobs"):
        kwargs["json"] = remove_body(owned["uploaded"])
    elif route == ("POST", "/v1/artifacts"):
        kwargs["files"] = {"file": ("train.safetensors", files["train"].read_bytes())}
        kwargs["data"] = {"kind": "dataset"}
    elif route == ("POST", "/v1/uploads"):
        data = files["queries"].read_bytes()
        kwargs["json"] = {
            "kind": "dataset",
            "size_bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    elif route == ("PUT", "/v1/uploads/{upload_id}/parts/{number}"):
        kwargs["content"], kwargs["headers"] = files["queries"].read_bytes(), RAW
    return {"method": method, "url": path, **kwargs}


def _problem(response, status: int, code: str) -> str | None:
    """None when ``response`` is the problem expected, else what is wrong."""
    if response.status_code != status:
        return f"status {response.status_code}, expected {status}: {response.text[:200]}"
    if response.headers.get("content-type") != PROBLEM_JSON:
        return f"Content-Type {response.headers.get('content-type')!r}"
    if response.json().get("code") != code:
        return f"code {response.json().get('code')!r}, expected {code!r}"
    return None


def _check_all(routes: list[Route], check: Callable[[Route], str | None]) -> None:
    failures = [f"{method} {path}: {error}" for method, path in routes if (error := check((method, path)))]
    assert not failures, "\n".join(failures)


def test_public_routes_are_exactly_the_probes_version_and_docs(app):
    """A route added without ``TenantDep`` shows up here (or is added to PUBLIC, on purpose)."""
    routes = all_routes(app)
    assert PUBLIC <= set(routes), f"gone: {PUBLIC - set(routes)}"
    with client_for(app, None) as anonymous:
        answered = {route: anonymous.request(route[0], route[1].format(**NOBODY)) for route in routes}
    public = {route for route, response in answered.items() if response.status_code != 401}
    assert public == PUBLIC
    assert all(answered[route].status_code == 200 for route in PUBLIC)


def test_openapi_security_matches_the_routes(app, client_a):
    """The document declares the bearer requirement on exactly the routes that enforce it."""
    spec = client_a.get("/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            secured = bool(operation.get("security"))
            assert secured == ((method.upper(), path) not in PUBLIC), (method, path)
            assert secured == ("401" in operation["responses"]), (method, path)


@pytest.mark.parametrize(
    "headers, params",
    [
        pytest.param({}, {}, id="no-key"),
        pytest.param({"Authorization": "Bearer "}, {}, id="empty-bearer"),
        pytest.param({}, {"api_key": KEYS["tenantA"]}, id="key-in-query-string"),
        pytest.param({"Authorization": "Bearer key-Z-0123456789"}, {}, id="wrong-key"),
        pytest.param({"Authorization": f"Basic {KEYS['tenantA']}"}, {}, id="other-scheme"),
        pytest.param({"Authorization": KEYS["tenantA"]}, {}, id="no-scheme"),
    ],
)
def test_without_a_valid_key_every_protected_route_is_401(app, owned, files, headers, params):
    with client_for(app, None) as anonymous:

        def check(route: Route) -> str | None:
            request = request_for(route, ids_of(owned), owned, files)
            request["headers"] = {**request.get("headers", {}), **headers}
            response = anonymous.request(**request, params=params)
            if error := _problem(response, 401, "unauthenticated"):
                return error
            if not response.headers.get("www-authenticate", "").startswith("Bearer"):
                return f"WWW-Authenticate {response.headers.get('www-authenticate')!r}"
            return None

        _check_all(protected_routes(app), check)


def _same_as_nonexistent(client: ASGIClient, route: Route, owned: dict, files: dict) -> str | None:
    """Another tenant's ids are answered exactly as ids that exist for nobody."""
    mine = ids_of(owned)
    theirs = client.request(**request_for(route, mine, owned, files))
    nobody = client.request(**request_for(route, NOBODY, owned, files))
    if error := _problem(theirs, 404, "not-found"):
        return error
    if _normalized(theirs.json(), mine) != _normalized(nobody.json(), NOBODY):
        return f"differs from a nonexistent id: {theirs.json()} vs {nobody.json()}"
    return None


def _normalized(body: dict, ids: dict[str, str]) -> dict:
    text = repr({k: v for k, v in body.items() if k != "request_id"})
    for name, value in ids.items():
        text = text.replace(value, f"<{name}>")
    return {"body": text}


def test_admin_routes_are_forbidden_to_other_keys_alike_for_every_id(app, client_b, owned, files):
    assert {route for route in protected_routes(app) if "/admin/" in route[1]} <= ADMIN, "add it to ADMIN"

    def check(route: Route) -> str | None:
        mine = ids_of(owned)
        theirs = client_b.request(**request_for(route, mine, owned, files))
        nobody = client_b.request(**request_for(route, NOBODY, owned, files))
        for response in (theirs, nobody):
            if error := _problem(response, 403, "forbidden"):
                return error
        return None if theirs.json()["detail"] == nobody.json()["detail"] else "the answer depends on the id"

    _check_all(sorted(ADMIN), check)


def test_another_tenants_objects_are_not_found(app, client_a, client_b, owned, files):
    routes = [route for route in protected_routes(app) if "{" in route[1] and route not in ADMIN]
    assert routes, "no routes with ids?"
    _check_all(routes, lambda route: _same_as_nonexistent(client_b, route, owned, files))
    # nothing happened to A's objects
    assert client_a.get(f"/v1/jobs/{owned['job_id']}").json()["status"] == "queued"
    assert client_a.get(f"/v1/artifacts/{owned['artifact_id']}").status_code == 200


def test_another_tenants_collections_and_submissions_do_not_see_the_owners_objects(
    app, client_b, owned, files
):
    """The routes without ids, as tenant B with A's ids in the body: each has its own check, so
    a new collection route fails here until it gets one."""

    def submit_with_a_ids(response) -> str | None:
        nobody = {"id": NOBODY["artifact_id"]}
        unknown = client_b.post("/v1/jobs", json=remove_body({"checkpoint": nobody, "train": nobody}))
        mine = {role: owned["uploaded"][role]["id"] for role in ("checkpoint", "train")}
        if error := _problem(response, 422, "validation-error"):
            return error
        seen = [(e["loc"], e["msg"].replace(mine[e["loc"][-1]], "<id>")) for e in response.json()["errors"]]
        expected = [
            (e["loc"], e["msg"].replace(NOBODY["artifact_id"], "<id>")) for e in unknown.json()["errors"]
        ]
        return None if seen == expected else f"errors {seen} differ from unknown ids' {expected}"

    def upload_a_bytes(response) -> str | None:
        # no cross-tenant dedup: B's own new artifact (201), not A's (which a 200 would reveal)
        if response.status_code != 201:
            return f"status {response.status_code}: {response.text[:200]}"
        return None if response.json()["id"] not in str(owned["uploaded"]) else "A's artifact id"

    def list_jobs(response) -> str | None:
        if response.status_code != 200:
            return f"status {response.status_code}"
        return "A's job listed" if owned["job_id"] in response.text else None

    def create_upload(response) -> str | None:  # B's own session
        if response.status_code != 201:
            return f"status {response.status_code}: {response.text[:200]}"
        return "A's session id" if response.json()["id"] == owned["upload_id"] else None

    def metrics(response) -> str | None:  # operator counters: the admin scope only
        return _problem(response, 403, "forbidden")  # (and test_admin_routes_are_forbidden_...)

    def webhook_secret(response) -> str | None:  # B's own signing secret (a rotation too), never A's
        if response.status_code != 200:
            return f"status {response.status_code}: {response.text[:200]}"
        with client_for(app, "tenantA") as client_a:
            secret_of_a = client_a.get("/v1/webhooks/secret").json()["secret"]
        return "A's webhook secret" if response.json()["secret"] == secret_of_a else None

    checks = {
        ("POST", "/v1/jobs"): submit_with_a_ids,
        ("POST", "/v1/artifacts"): upload_a_bytes,
        ("GET", "/v1/jobs"): list_jobs,
        ("POST", "/v1/uploads"): create_upload,
        ("GET", "/metrics"): metrics,
        ("GET", "/v1/webhooks/secret"): webhook_secret,
        ("POST", "/v1/webhooks/secret/rotate"): webhook_secret,
    }
    routes = [route for route in protected_routes(app) if "{" not in route[1]]
    unknown = set(routes) - set(checks)
    assert not unknown, f"add a tenant-B check for {unknown}"
    _check_all(routes, lambda route: checks[route](client_b.request(**request_for(route, {}, owned, files))))


def test_the_owner_gets_2xx_everywhere(app, client_a, owned, files):
    """With fresh objects of A's for the routes that change them (cancel, delete); A also holds
    the admin scope."""
    job = client_a.post("/v1/jobs", json=remove_body(owned["uploaded"]))
    assert job.status_code == 202, job.text
    queries = client_a.post(
        "/v1/artifacts",
        files={"file": ("queries.safetensors", files["queries"].read_bytes())},
        data={"kind": "dataset"},
    )  # a dedup hit, or a new artifact if an earlier run of this test deleted it
    assert queries.status_code in (200, 201), queries.text

    def check(route: Route) -> str | None:
        ids = {"job_id": job.json()["id"], "artifact_id": owned["artifact_id"], "number": "1"}
        if route[0] == "DELETE":
            ids["artifact_id"] = queries.json()["id"]
        if "{upload_id}" in route[1]:  # a fresh session each (an abort or a completion ends one)
            ids["upload_id"] = new_upload(client_a, files, with_part=route[1].endswith("/complete"))
        response = client_a.request(**request_for(route, ids, owned, files))
        if route == ("POST", "/v1/admin/jobs/{job_id}/terminate"):
            # authorised; a queued job fails the precondition (the 202 path: test_e2e.py)
            return _problem(response, 409, "job-not-terminable")
        if route == ("GET", "/v1/uploads/{upload_id}/parts/{number}/url"):
            # authorised; blobs in a folder take parts through the API (the 200 path: test_bucket.py)
            return _problem(response, 409, "upload-not-direct")
        ok = 200 <= response.status_code < 300
        return None if ok else f"status {response.status_code}: {response.text[:200]} (add a request here?)"

    _check_all(protected_routes(app), check)
