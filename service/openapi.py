"""Finishing touches on FastAPI's OpenAPI document, so that it states the real contract:

* every error response (4xx/5xx) is ``application/problem+json`` with the ``Problem`` schema —
  FastAPI would document it as ``application/json``, and its automatic 422 with a body shape
  (``HTTPValidationError``) that this service never sends;
* every operation that needs an API key (its ``security``, from ``require_tenant``) documents
  the 401 and its ``WWW-Authenticate`` challenge;
* every POST documents the 413 of the body-size limit.

Response bodies, headers and links between operations are declared on the routes.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI

from .errors import PROBLEM_JSON
from .schemas import Problem

_PROBLEM_REF = "#/components/schemas/Problem"
_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")
_CHALLENGE = {
    "description": '`Bearer`, or `Bearer error="invalid_token"` for an unknown key.',
    "required": True,
    "schema": {"type": "string"},
}


def links_by_id(parameter: str, *operation_ids: str) -> dict[str, dict[str, Any]]:
    """OpenAPI links from a response body's ``id`` to operations that take it as ``parameter``
    (each named after its operation: ``getJob`` → ``GetJob``); clients and the stateful
    contract tests follow them."""
    return {
        op[0].upper() + op[1:]: {"operationId": op, "parameters": {parameter: "$response.body#/id"}}
        for op in operation_ids
    }


def install(app: FastAPI) -> None:
    """Wrap ``app.openapi`` so that each document FastAPI builds is finished once."""
    build = app.openapi
    finished: list[int] = []

    def openapi() -> dict[str, Any]:
        schema = build()
        if finished != [id(schema)]:
            finish(schema)
            finished[:] = [id(schema)]
        return schema

    # FastAPI's documented way to customise the document; mypy refuses assigning to a method.
    app.openapi = openapi  # type: ignore[method-assign]


def finish(schema: dict[str, Any]) -> dict[str, Any]:
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("Problem", Problem.model_json_schema(ref_template="#/components/schemas/{model}"))
    for operations in schema.get("paths", {}).values():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            if operation.get("security"):
                responses.setdefault("401", {"description": "Missing or invalid API key"})
                responses["401"].setdefault("headers", {})["WWW-Authenticate"] = _CHALLENGE
            if method == "post":
                responses.setdefault("413", {"description": "Request body over the size limit"})
            for status, response in responses.items():
                if status[0] in "45":
                    response["content"] = {PROBLEM_JSON: {"schema": {"$ref": _PROBLEM_REF}}}
            operation["responses"] = dict(sorted(responses.items()))
    used = json.dumps(schema.get("paths"))
    for name in _FASTAPI_VALIDATION_SCHEMAS:  # unused once every 422 is a problem
        if f'"#/components/schemas/{name}"' not in used:
            schemas.pop(name, None)
    return schema
