"""Contract fuzzing with Schemathesis against the app's live OpenAPI.

Rationale: docs/service-design.md, "Contract fuzzing".

* ``test_stateless``: every operation of ``/openapi.json`` (one test each), schema-valid and
  schema-invalid inputs (Schemathesis' examples, coverage and fuzzing phases), as tenant A.
* ``test_stateful``: the state machine built from the OpenAPI ``links``: upload an artifact →
  read, download or delete it, or submit a job on it; submit a job → read it → list its events
  (and their next page) → cancel it → read it again; list jobs → read the first one.

Checks on every response: no 5xx; status code, content type, headers and body as the OpenAPI
document says; schema-invalid input rejected; schema-valid input accepted (but for the semantic
refusals of ``SEMANTIC_REFUSALS``); a request without the key rejected (``ignored_auth``); a deleted
artifact gone (``use_after_free``); and every error ``application/problem+json`` with a ``code``
(``fuzzing.problem_json``). ``fuzzing.map_case`` and ``fuzzing.upload_kwargs`` steer part of
the generated requests to tenant A's real artifacts and files.

By default the app runs in-process (``schemathesis.openapi.from_asgi``) with executor "none"
(jobs stay queued, so cancelling always has something to do) and a small budget.
``bench/fuzz.py`` runs this module against a real server with a large budget by setting
``GIF_FUZZ_URL`` (and the ``GIF_FUZZ_*`` budgets below).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from service.main import create_app

from . import fuzzing
from .conftest import KEYS, client_for, make_settings, remove_body, upload

#: Examples per operation in the fuzzing phase (the examples and coverage phases add their own).
MAX_EXAMPLES = int(os.environ.get("GIF_FUZZ_MAX_EXAMPLES", "25"))
#: Uploads of new files run the real inspector, a fresh interpreter importing torch (seconds).
UPLOAD_MAX_EXAMPLES = int(os.environ.get("GIF_FUZZ_UPLOAD_MAX_EXAMPLES", "3"))
STATEFUL_SCENARIOS = int(os.environ.get("GIF_FUZZ_STATEFUL_SCENARIOS", "20"))
STATEFUL_STEPS = int(os.environ.get("GIF_FUZZ_STATEFUL_STEPS", "8"))
#: A running server (bench/fuzz.py); unset: the app in-process.
URL = os.environ.get("GIF_FUZZ_URL")

#: Schema-valid requests that can still be refused, by checks that no JSON Schema can express.
SEMANTIC_REFUSALS = {
    # the artifacts must exist, be the tenant's and of the right kind; indices and labels must fit
    "POST /v1/jobs": ["422"],
    "POST /v1/artifacts": ["422"],  # the file must be a readable checkpoint or dataset
    "GET /v1/jobs": ["422"],  # the cursor must be one of the tenant's jobs
    "GET /v1/artifacts/{artifact_id}/content": ["400", "416"],  # a Range malformed or past the end
    "POST /v1/uploads": ["413"],  # the declared size is over the limit
    # a part must have its exact size and number; a session completes with every part and the
    # declared digest; either is refused once the session expired
    "PUT /v1/uploads/{upload_id}/parts/{number}": ["410", "413", "422"],
    "POST /v1/uploads/{upload_id}/complete": ["410", "422"],
    "GET /v1/uploads/{upload_id}/parts/{number}/url": ["410", "422"],
}
POSITIVE_OK = ["2xx", "3xx", "401", "403", "404", "409", "429"]
NEGATIVE_OK = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
ROLES = {"checkpoint": "checkpoint", "train": "dataset", "queries": "dataset"}


def fuzz_config() -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        # the key of the OpenAPI security scheme that ``require_tenant`` declares
        "auth": {"openapi": {"HTTPBearer": {"bearer": KEYS["tenantA"]}}},
        "generation": {"max-examples": MAX_EXAMPLES},
        "checks": {
            "positive_data_acceptance": {"expected-statuses": POSITIVE_OK},
            # a schema-violating body can also be too big (GIF_MAX_JSON_BYTES): 413 rejects it too
            "negative_data_rejection": {"expected-statuses": NEGATIVE_OK},
        },
        "operations": [
            *(
                {
                    "include-name": label,
                    "checks": {"positive_data_acceptance": {"expected-statuses": [*POSITIVE_OK, *refusals]}},
                }
                for label, refusals in SEMANTIC_REFUSALS.items()
            ),
            {"include-name": "POST /v1/artifacts", "generation": {"max-examples": UPLOAD_MAX_EXAMPLES}},
            # DELETE of an upload session aborts it; the session stays readable as "aborted" (its
            # parts are gone), so use_after_free's expected 404 does not apply to it
            {"include-name": "GET /v1/uploads/{upload_id}", "checks": {"use_after_free": {"enabled": False}}},
        ],
    })  # fmt: skip


# Schemathesis parametrizes the test when the module is collected (its fixture-based loader does
# not work with pytest 9), so the in-process app is made here, in a temporary folder of its own.
if URL is None:
    _HOME = Path(tempfile.mkdtemp(prefix="gif-fuzz-"))
    atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
    # no admission limits: the fuzzer submits many jobs, which stay queued, and opens many upload
    # sessions; a limit reached in one scenario would change the answers of the next ones, and
    # Hypothesis, replaying a scenario, fails on answers that differ (FlakyStrategyDefinition)
    APP = create_app(
        make_settings(
            _HOME, max_active_jobs_per_tenant=10**6, max_waiting_jobs=10**6, max_open_uploads_per_tenant=10**6
        )
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", APP, config=fuzz_config())
else:
    APP = None
    schema = schemathesis.openapi.from_url(f"{URL}/openapi.json", config=fuzz_config())


@pytest.fixture(scope="module")
def app():
    """The app the schema came from (for the conftest fixtures that take ``app``)."""
    return APP


@pytest.fixture(scope="module")
def client_a(app) -> Iterator:
    if URL is None:
        with client_for(app, "tenantA") as client:
            yield client
    else:
        headers = {"Authorization": f"Bearer {KEYS['tenantA']}"}
        with httpx.Client(base_url=URL, headers=headers, timeout=600) as client:
            yield client


def upload_real_files(client, files: dict[str, Path]) -> None:
    """Tenant A's checkpoint, training set and queries (the inspector runs once; later calls are
    dedup hits, or re-create what a fuzzed DELETE removed) become ``fuzzing.REAL``."""
    uploaded = {}
    for role, kind in ROLES.items():
        response = upload(client, files[role], kind)
        assert response.status_code in (200, 201), response.text
        uploaded[role] = response.json()
    fuzzing.REAL[:] = [
        fuzzing.RealInputs(
            artifact_ids={role: item["id"] for role, item in uploaded.items()},
            job_body=remove_body(uploaded),
            files=[(kind, files[role]) for role, kind in ROLES.items()],
        )
    ]


@pytest.fixture(scope="module", autouse=True)
def real_inputs(client_a, files):
    upload_real_files(client_a, files)
    yield
    fuzzing.REAL.clear()


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_stateless(case):
    case.call_and_validate(**fuzzing.upload_kwargs(case))


def test_stateful(client_a, files):
    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            # Every scenario starts from the same artifacts, so that Hypothesis, replaying one,
            # sees the same responses (e.g. an upload is a 200, not a 201 after an earlier DELETE).
            upload_real_files(client_a, files)

        def get_call_kwargs(self, case):
            # Every schema-valid upload sends a real file: random bytes are the stateless test's.
            return fuzzing.upload_kwargs(case, share=1)

    Machine.run(
        settings=settings(
            max_examples=STATEFUL_SCENARIOS,
            stateful_step_count=STATEFUL_STEPS,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
    )


# What the fuzzer found, pinned as plain examples (the fuzzer may not draw them again).


@pytest.fixture
def real(client_a, files) -> fuzzing.RealInputs:
    """Tenant A's artifacts, uploaded again if the state machine deleted them."""
    upload_real_files(client_a, files)
    return fuzzing.REAL[0]


def test_event_cursors(client_a, real):
    job = client_a.post("/v1/jobs", json=real.job_body)
    assert job.status_code == 202, job.text
    events = f"/v1/jobs/{job.json()['id']}/events"
    # past any event: an empty page (PostgreSQL, whose column is 32-bit, answered 500)
    page = client_a.get(events, params={"after": "evt_99999999999999"})
    assert page.status_code == 200 and page.json()["data"] == []
    # not event ids, some of which the schema did not rule out: 422 ("²" is a digit to str.isdigit)
    for after in ("", "evt_", "evt_²", "evt_-1", "job_1"):
        response = client_a.get(events, params={"after": after})
        assert response.status_code == 422, after
        assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "path",
    ["/v1/jobs/job_%00", "/v1/jobs/x%00/events", "/v1/artifacts/art_%00", "/v1/artifacts/%00/content"],
)
def test_ids_that_cannot_be_ids_are_not_found(client_a, path):
    """Without asking the database (PostgreSQL refuses NUL in strings: it answered 500)."""
    response = client_a.get(path)
    assert response.status_code == 404 and response.json()["code"] == "not-found"


def test_405_allows_every_method_of_the_path(client_a):
    response = client_a.request("PUT", "/v1/artifacts/art_01JD3Q7W8M6Z5K2R9T0V4X1YBC")
    assert response.status_code == 405 and response.json()["code"] == "method-not-allowed"
    assert response.headers["allow"] == "DELETE, GET, HEAD"  # Starlette named the first route's only
    assert client_a.request("PATCH", "/v1/jobs").headers["allow"] == "GET, HEAD, POST"
    post_only = client_a.request("HEAD", "/v1/jobs/job_01JD3Q7W8M6Z5K2R9T0V4X1YBC/cancel")
    assert post_only.status_code == 405 and post_only.headers["allow"] == "POST" and post_only.content == b""


def test_head_answers_what_get_would_without_the_body(client_a, real):
    for path in ("/v1/jobs", f"/v1/artifacts/{real.artifact_ids['train']}",
                 f"/v1/artifacts/{real.artifact_ids['train']}/content", "/livez"):  # fmt: skip
        get, head = client_a.get(path), client_a.request("HEAD", path)
        assert head.status_code == get.status_code == 200, path
        assert head.content == b"" and get.content
        assert head.headers["content-type"] == get.headers["content-type"]
        assert head.headers["content-length"] == get.headers["content-length"] == str(len(get.content))
    missing = client_a.request("HEAD", "/v1/jobs/job_01JD3Q7W8M6Z5K2R9T0V4X1YBC")
    assert missing.status_code == 404 and missing.content == b""
    assert missing.headers["content-type"] == "application/problem+json"


def test_bad_ranges_and_bodies_are_documented_problems(client_a, real):
    artifact = real.artifact_ids["train"]
    content = f"/v1/artifacts/{artifact}/content"
    part = client_a.get(content, headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and len(part.content) == 10
    for value, status in (("bytes=999999999-", 416), ("junk", 400), ("bytes=9-2", 400)):
        response = client_a.get(content, headers={"Range": value})  # Starlette: text/plain
        assert response.status_code == status, value
        assert response.headers["content-type"] == "application/problem+json", value
    assert response.headers.get("content-range") is None
    unsatisfiable = client_a.get(content, headers={"Range": "bytes=999999999-"})
    assert unsatisfiable.headers["content-range"].startswith("bytes */")
    # a body that is not UTF-8: FastAPI's 400 (undocumented before)
    garbled = client_a.post("/v1/jobs", content=b"\xff\xfe{", headers={"Content-Type": "application/json"})
    assert garbled.status_code == 400 and garbled.json()["code"] == "bad-request"
