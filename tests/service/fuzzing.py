"""Schemathesis extensions for the contract fuzzing of tests/service/test_contract_fuzz.py (which
bench/fuzz.py also runs, against a real server and with a large budget).

* check ``problem_json`` (registered globally, so every ``call_and_validate`` and state machine
  step runs it): every 4xx/5xx is ``application/problem+json`` whose ``code`` is set and whose
  ``status`` is the response's; a 401 carries ``WWW-Authenticate: Bearer``.
* hook ``map_case``: points a quarter of the schema-valid job bodies at a whole valid body, and half
  at the tenant's real artifacts (the rest of the body as generated), so that fuzzing gets past
  "artifact not found" into the semantic checks of a submission and the state machine gets queued
  jobs to read, list events of and cancel.
* ``upload_kwargs``: sends one of the tenant's files (a dedup 200, without running the inspector
  again) instead of a share of the schema-valid uploads; the others stay random bytes.

The choices are a digest of the generated body, so Hypothesis replays and shrinks the same requests.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import schemathesis

PROBLEM_JSON = "application/problem+json"


@dataclass
class RealInputs:
    """What the tenant has uploaded: artifact ids by role (``checkpoint``, ``train``, ``queries``),
    the files behind them by kind, and a job body that is valid with them."""

    artifact_ids: dict[str, str]
    job_body: dict[str, Any]
    files: list[tuple[str, Path]] = field(default_factory=list)  # (kind, path)


#: Set by the test module's fixture once the uploads are done; None: bodies stay as generated.
REAL: list[RealInputs] = []


@schemathesis.check
def problem_json(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    if response.status_code < 400:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    assert content_type.split(";")[0].strip() == PROBLEM_JSON, (
        f"{response.status_code} answered with Content-Type {content_type!r}, not {PROBLEM_JSON}"
    )
    body = response.json()
    assert isinstance(body, dict) and body.get("code"), f"problem without a code: {body!r}"
    assert body.get("status") == response.status_code, f"problem with status {body.get('status')!r}"
    if response.status_code == 401:
        challenge = (response.headers.get("www-authenticate") or [""])[0]
        assert challenge.startswith("Bearer"), f"401 with WWW-Authenticate {challenge!r}"
    return True


@schemathesis.hook
def map_case(context: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    # Only schema-valid cases: a replaced invalid body would leave Schemathesis expecting a rejection.
    if REAL and case.meta is not None and not case.meta.generation.mode.is_negative:
        if case.operation.label == "POST /v1/jobs" and isinstance(case.body, dict):
            case.body = _job_body(REAL[0], case.body)
    return case


def upload_kwargs(case: schemathesis.Case, share: int = 4) -> dict[str, Any]:
    """``case.call`` arguments that send one of the tenant's files instead of one in ``share``
    schema-valid uploads (a changed multipart body would read as schema-invalid to Schemathesis,
    whose validator cannot see binary parts; a body passed at call time is known to be the
    caller's)."""
    if not REAL or not REAL[0].files or case.operation.label != "POST /v1/artifacts":
        return {}
    if case.meta is None or case.meta.generation.mode.is_negative or not isinstance(case.body, dict):
        return {}
    roll = _roll(case.body)
    if roll % share:
        return {}
    kind, path = REAL[0].files[roll // share % len(REAL[0].files)]
    return {"files": {"file": (path.name, path.read_bytes())}, "data": {"kind": kind}}


def _job_body(real: RealInputs, body: dict[str, Any]) -> dict[str, Any]:
    roll = _roll(body) % 4
    if roll == 0:
        return json.loads(json.dumps(real.job_body))
    if roll == 3:
        return body
    body = dict(body)
    model = body.get("model")
    if isinstance(model, dict) and "checkpoint" in model:
        body["model"] = {**model, "checkpoint": real.artifact_ids["checkpoint"]}
    for name, role in (("train", "train"), ("validation", "train"), ("queries", "queries")):
        if name in body:
            body[name] = real.artifact_ids[role]
    return body


def _roll(body: Any) -> int:
    digest = hashlib.sha256(json.dumps(_plain(body), sort_keys=True, default=repr).encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _plain(value: Any) -> Any:
    """JSON-ready, with the bytes of binary parts (Schemathesis' ``Binary`` is an empty ``str``)."""
    data = getattr(value, "data", value)
    if isinstance(data, bytes):
        return hashlib.sha256(data).hexdigest()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
